"""Tests for ganjax.metrics.frechet: FID from features and statistics, and intra-class FID."""

from __future__ import annotations

import math
import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import tolerances

from ganjax import metrics
from ganjax.metrics import frechet


def random_spd(rng, dim, condition=100.0):
  """A random symmetric positive definite matrix with eigenvalues in [1, condition]."""
  rotation = scipy.stats.special_ortho_group.rvs(dim, random_state=rng)
  eigenvalues = np.exp(rng.uniform(0.0, math.log(condition), size=dim))
  return (rotation * eigenvalues) @ rotation.T


def sqrtm_reference(mu_a, sigma_a, mu_b, sigma_b):
  """The formula of pytorch-fid / TTUR, with scipy.linalg.sqrtm of the product."""
  covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b)
  difference = mu_a - mu_b
  return (
    difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean).real
  )


def diagonal_closed_form(mu_a, var_a, mu_b, var_b):
  return np.sum((mu_a - mu_b) ** 2) + np.sum(var_a + var_b - 2 * np.sqrt(var_a * var_b))


def _sqrt_spread(eigenvalues, delta):
  """How far sqrt(lambda) moves at each eigenvalue ``lambda >= 0`` that moves by up to ``delta``:
  delta / sqrt(lambda) well above delta, sqrt(delta) at 0 (square roots are 1/2-Hölder)."""
  eigenvalues = np.clip(eigenvalues, 0.0, None)
  return np.sqrt(eigenvalues + delta) - np.sqrt(np.clip(eigenvalues - delta, 0.0, None))


def statistics_errors(features) -> tuple[float, float]:
  """Bounds on the entries' float64 round-off of a feature set's mean and covariance, in any
  summation order: the mean sums N terms at the size of the mean |x|; the covariance's two passes
  sum N centred products, and the mean's round-off (N eps |x|) enters every centred value: both
  at most the size of the uncentred products |x_i| |x_j| / (N - 1)."""
  x = np.asarray(features, np.float64)
  n = len(x)
  mean_error = tolerances.float64_atol(n, float(np.abs(x).mean(0).max()))
  return mean_error, tolerances.float64_atol(2 * n, tolerances.dot_magnitude(x.T, x) / (n - 1))


def fid_atol(mu_a, sigma_a, mu_b, sigma_b, input_errors=(0.0, 0.0)) -> float:
  """Float64 round-off of ``frechet_distance_from_statistics`` (or of scipy's sqrtm formula).

  The symmetric eigensolver is backward stable: its eigenvalues are those of the matrix plus a
  perturbation of norm up to ``D eps`` times its norm (Golub & Van Loan, 2013, Sec. 8.3), and
  (Weyl) each eigenvalue moves by at most as much. ``A^(1/2)`` comes from ``eigh(A)``,
  ``M = A^(1/2) B A^(1/2)`` from two products of length D, and ``tr((A B)^(1/2))`` is the sum of
  the square roots of M's eigenvalues: each step's error goes through the square roots with
  :func:`_sqrt_spread`. Plus the round-off of the traces and of the squared mean difference.
  ``input_errors``: bounds on the entries' errors of the means and of the covariances (e.g.
  :func:`statistics_errors`), which move the eigenvalues by up to D times as much (Weyl).
  """
  mu_a, mu_b = np.asarray(mu_a, np.float64), np.asarray(mu_b, np.float64)
  sigma_a, sigma_b = np.asarray(sigma_a, np.float64), np.asarray(sigma_b, np.float64)
  dim = len(mu_a)
  mean_error, covariance_error = input_errors
  covariance_error *= dim  # A bound on the spectral norm of a D x D error.
  eigenvalues_a, eigenvectors_a = np.linalg.eigh(sigma_a)
  norm_a = float(np.max(np.abs(eigenvalues_a)))
  norm_b = float(np.max(np.abs(np.linalg.eigvalsh(sigma_b))))
  delta_a = tolerances.float64_atol(dim, norm_a) + covariance_error
  sqrt_error = float(np.max(_sqrt_spread(eigenvalues_a, delta_a)))
  sqrt_a = (eigenvectors_a * np.sqrt(np.clip(eigenvalues_a, 0.0, None))) @ eigenvectors_a.T
  middle = sqrt_a @ sigma_b @ sqrt_a
  eigenvalues_m = np.linalg.eigvalsh((middle + middle.T) / 2)
  norm_m = float(np.max(np.abs(eigenvalues_m)))
  delta_m = (
    tolerances.float64_atol(2 * dim, norm_a * norm_b)  # The two products.
    + (2 * sqrt_error * np.sqrt(norm_a) + sqrt_error**2) * norm_b  # A^(1/2)'s error.
    + norm_a * covariance_error  # B's error.
    + tolerances.float64_atol(dim, norm_m)  # M's eigensolver.
  )
  difference = mu_a - mu_b
  terms = difference @ difference + abs(np.trace(sigma_a)) + abs(np.trace(sigma_b))
  terms += 2 * float(np.sum(np.sqrt(np.clip(eigenvalues_m, 0.0, None))))
  inputs = 2 * covariance_error + 2 * mean_error * np.sum(np.abs(difference)) + dim * mean_error**2
  square_roots = 2 * float(np.sum(_sqrt_spread(eigenvalues_m, delta_m)))
  return tolerances.float64_atol(dim, terms) + inputs + square_roots


def assert_fid_close(value, expected, mu_a, sigma_a, mu_b, sigma_b, input_errors=(0.0, 0.0)):
  """``value`` equals ``expected`` up to :func:`fid_atol` (both computed in float64 from these
  statistics, in different ways)."""
  atol = fid_atol(mu_a, sigma_a, mu_b, sigma_b, input_errors)
  assert abs(value - expected) <= atol, (value, expected, atol)


def assert_statistics_close(statistics, features):
  """``statistics`` are numpy's float64 mean and covariance of ``features`` up to
  :func:`statistics_errors`."""
  x = np.asarray(features, np.float64)
  mean_error, covariance_error = statistics_errors(x)
  np.testing.assert_allclose(statistics[0], np.mean(x, axis=0), rtol=0, atol=mean_error)
  np.testing.assert_allclose(statistics[1], np.cov(x, rowvar=False), rtol=0, atol=covariance_error)


def test_package_exports():
  assert metrics.frechet_distance is frechet.frechet_distance
  assert metrics.frechet_distance_from_statistics is frechet.frechet_distance_from_statistics
  assert metrics.feature_statistics is frechet.feature_statistics
  assert metrics.intra_class_frechet_distance is frechet.intra_class_frechet_distance
  assert issubclass(metrics.RankDeficientWarning, UserWarning)
  for module in ("frechet", "kernel", "classifier_score", "manifold", "stacked_mnist", "modes"):
    assert f"ganjax.metrics.{module}" in metrics.__doc__


def test_feature_statistics_match_numpy(monkeypatch):
  features = np.random.default_rng(0).normal(3.0, 2.0, size=(101, 7)).astype(np.float32)
  mean, covariance = metrics.feature_statistics(features)
  assert mean.dtype == covariance.dtype == np.float64
  assert mean.shape == (7,) and covariance.shape == (7, 7)
  assert_statistics_close((mean, covariance), features)
  np.testing.assert_array_equal(covariance, covariance.T)
  monkeypatch.setattr(frechet, "_BLOCK", 8)  # Blocks of 8 rows, the last one partial.
  assert_statistics_close(metrics.feature_statistics(jnp.asarray(features)), features)


@pytest.mark.parametrize("seed", range(3))
def test_diagonal_gaussians_closed_form(seed):
  rng = np.random.default_rng(seed)
  mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
  var_a, var_b = rng.uniform(0.1, 4.0, size=6), rng.uniform(0.1, 4.0, size=6)
  expected = diagonal_closed_form(mu_a, var_a, mu_b, var_b)
  value = metrics.frechet_distance_from_statistics(mu_a, np.diag(var_a), mu_b, np.diag(var_b))
  assert isinstance(value, float)
  assert_fid_close(value, expected, mu_a, np.diag(var_a), mu_b, np.diag(var_b))
  # The distance is invariant under a common rotation: non-diagonal covariances, same value.
  rotation = scipy.stats.special_ortho_group.rvs(6, random_state=rng)
  rotated_statistics = (
    rotation @ mu_a,
    rotation @ np.diag(var_a) @ rotation.T,
    rotation @ mu_b,
    rotation @ np.diag(var_b) @ rotation.T,
  )
  rotated = metrics.frechet_distance_from_statistics(*rotated_statistics)
  # The rotated statistics round too: products of length 6 (twice for the covariances) at the
  # size of the means and of the variances.
  errors = (
    tolerances.float64_atol(6, max(np.abs(mu_a).max(), np.abs(mu_b).max())),
    tolerances.float64_atol(2 * 6, max(var_a.max(), var_b.max())),
  )
  assert_fid_close(rotated, expected, *rotated_statistics, input_errors=errors)


def test_one_dimensional_gaussians():
  # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
  value = metrics.frechet_distance_from_statistics([1.0], [[4.0]], [-2.0], [[9.0]])
  assert_fid_close(value, 9.0 + 1.0, [1.0], [[4.0]], [-2.0], [[9.0]])


@pytest.mark.parametrize("dim", [2, 16, 64])
@pytest.mark.parametrize("seed", range(3))
def test_matches_sqrtm_reference_on_random_spd_pairs(dim, seed):
  rng = np.random.default_rng(seed)
  sigma_a, sigma_b = random_spd(rng, dim), random_spd(rng, dim)
  mu_a, mu_b = rng.normal(size=dim), rng.normal(size=dim)
  expected = sqrtm_reference(mu_a, sigma_a, mu_b, sigma_b)
  value = metrics.frechet_distance_from_statistics(mu_a, sigma_a, mu_b, sigma_b)
  # scipy's sqrtm (a Schur method) of the non-symmetric A B is accurate to the same order as the
  # eigendecompositions here: fid_atol bounds both (measured: below 1e-4 of it).
  assert_fid_close(value, expected, mu_a, sigma_a, mu_b, sigma_b)
  # The covariance term alone (equal means), where round-off matters most.
  expected = sqrtm_reference(mu_a, sigma_a, mu_a, sigma_b)
  value = metrics.frechet_distance_from_statistics(mu_a, sigma_a, mu_a, sigma_b)
  assert_fid_close(value, expected, mu_a, sigma_a, mu_a, sigma_b)


def test_matches_sqrtm_reference_from_features():
  rng = np.random.default_rng(4)
  features_a = rng.normal(size=(300, 20)) @ rng.normal(size=(20, 20))
  features_b = rng.normal(0.3, 1.0, size=(250, 20)) @ rng.normal(size=(20, 20))

  def reference(a, b):
    """The sqrtm formula on numpy's statistics, and the tolerance: round-off of those statistics
    (another summation order than feature_statistics') and of the FID computed from them."""
    statistics = (a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    errors = np.maximum(statistics_errors(a), statistics_errors(b))
    return sqrtm_reference(*statistics), fid_atol(*statistics, input_errors=errors)

  with warnings.catch_warnings():
    warnings.simplefilter("error")  # Full rank: no warning.
    value = metrics.frechet_distance(features_a.astype(np.float32), jnp.asarray(features_b))
  # float32 and jax (float32) inputs round the features: the reference sees the same rounding.
  expected, atol = reference(
    features_a.astype(np.float32).astype(np.float64),
    features_b.astype(np.float32).astype(np.float64),
  )
  assert abs(value - expected) <= atol, (value, expected, atol)
  expected, atol = reference(features_a, features_b)
  assert abs(metrics.frechet_distance(features_a, features_b) - expected) <= atol
  assert abs(metrics.frechet_distance(features_b, features_a) - expected) <= atol


def test_same_features_give_zero():
  rng = np.random.default_rng(5)
  features = rng.normal(2.0, 3.0, size=(500, 32)) @ rng.normal(size=(32, 32))
  statistics = metrics.feature_statistics(features)
  atol = fid_atol(*statistics, *statistics)
  assert 0.0 <= metrics.frechet_distance(features, features) <= atol
  assert metrics.frechet_distance_from_statistics(*statistics, *statistics) <= atol
  # A permutation of the samples has the same statistics up to round-off, and FID is stationary
  # (its minimum) at equal statistics: the difference enters to second order only.
  assert metrics.frechet_distance(features, features[::-1]) <= atol


def test_sample_estimate_approaches_closed_form():
  rng = np.random.default_rng(6)
  mu_a, mu_b = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 0.0])
  var_a, var_b = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 0.5, 0.5, 3.0])
  n = 20_000
  features_a = mu_a + np.sqrt(var_a) * rng.normal(size=(n, 4))
  features_b = mu_b + np.sqrt(var_b) * rng.normal(size=(n, 4))
  expected = diagonal_closed_form(mu_a, var_a, mu_b, var_b)
  # Statistical: the delta method's standard error of the estimate (sample means with variance
  # var / n, sample variances with variance 2 var^2 / n, through FID's partial derivatives), and
  # the bias of ||mean_a - mean_b||^2, sum(var_a + var_b) / n; 5 standard errors.
  ratio = np.sqrt(var_b / var_a)
  variance = (
    np.sum(
      4 * (mu_a - mu_b) ** 2 * (var_a + var_b)
      + 2 * ((1 - ratio) * var_a) ** 2
      + 2 * ((1 - 1 / ratio) * var_b) ** 2
    )
    / n
  )
  bias = np.sum(var_a + var_b) / n
  value = metrics.frechet_distance(features_a, features_b)
  assert abs(value - expected) <= 5 * np.sqrt(variance) + bias, (value, expected)


def test_fewer_samples_than_dimensions_warns_and_stays_finite():
  rng = np.random.default_rng(7)
  features_a, features_b = rng.normal(size=(10, 32)), rng.normal(0.5, 1.0, size=(12, 32))
  with pytest.warns(metrics.RankDeficientWarning, match=r"sigma_a has rank 9; sigma_b has rank 11"):
    value = metrics.frechet_distance(features_a, features_b)
  assert isinstance(value, float) and math.isfinite(value) and value > 0
  with pytest.warns(metrics.RankDeficientWarning, match=r"< 32 feature dimensions"):
    same = metrics.frechet_distance(features_a, features_a)
  statistics = metrics.feature_statistics(features_a)
  # Singular: round-off of the zero eigenvalues enters through their square roots.
  assert 0.0 <= same <= fid_atol(*statistics, *statistics)


def test_warnings_point_at_the_caller():
  features = np.random.default_rng(7).normal(size=(4, 6))
  with pytest.warns(metrics.RankDeficientWarning) as record:
    metrics.frechet_distance(features, features)
    mean, covariance = metrics.feature_statistics(features)
    metrics.frechet_distance_from_statistics(mean, covariance, np.zeros(6), np.eye(6))
    metrics.intra_class_frechet_distance(features, [0, 0, 1, 1], features, [0, 1, 0, 1])
  assert len(record) == 4  # One per call, and one per class.
  assert {warning.filename for warning in record} == {__file__}


def test_collapsed_generator_warns_and_matches_closed_form():
  rng = np.random.default_rng(8)
  real = rng.normal(size=(200, 8)) @ rng.normal(size=(8, 8))
  point = rng.normal(size=8)
  collapsed = np.tile(point, (50, 1))
  with pytest.warns(metrics.RankDeficientWarning, match=r"sigma_b has rank 0 <"):
    value = metrics.frechet_distance(real, collapsed)
  # sigma_b = 0, so tr((sigma_a sigma_b)^(1/2)) = 0.
  mean, covariance = metrics.feature_statistics(real)
  expected = np.sum((mean - point) ** 2) + np.trace(covariance)
  assert_fid_close(value, expected, mean, covariance, *metrics.feature_statistics(collapsed))
  # A generator collapsed onto a line: rank 1.
  line = point + rng.normal(size=(50, 1)) * rng.normal(size=(1, 8))
  with pytest.warns(metrics.RankDeficientWarning, match=r"sigma_a has rank 1 <"):
    value = metrics.frechet_distance(line, real)
  assert math.isfinite(value) and value > 0


def test_statistics_validation():
  mu, sigma = np.zeros(3), np.eye(3)
  with pytest.raises(ValueError, match=r"mu_a must be a 1-D array of shape \(D,\), got shape"):
    metrics.frechet_distance_from_statistics(np.zeros((3, 1)), sigma, mu, sigma)
  with pytest.raises(ValueError, match=r"mu_b must have the same dimension as mu_a \(3\), got"):
    metrics.frechet_distance_from_statistics(mu, sigma, np.zeros(4), np.eye(4))
  with pytest.raises(ValueError, match=r"sigma_b must have shape \(3, 3\) to match mu_b, got"):
    metrics.frechet_distance_from_statistics(mu, sigma, mu, np.eye(2))
  with pytest.raises(ValueError, match="sigma_a must be finite"):
    metrics.frechet_distance_from_statistics(mu, np.full((3, 3), np.nan), mu, sigma)
  with pytest.raises(ValueError, match="mu_b must be finite"):
    metrics.frechet_distance_from_statistics(mu, sigma, [0.0, np.inf, 0.0], sigma)
  asymmetric = np.eye(3)
  asymmetric[0, 1] = 0.5
  with pytest.raises(ValueError, match=r"sigma_a must be a symmetric covariance matrix, got max"):
    metrics.frechet_distance_from_statistics(mu, asymmetric, mu, sigma)
  with pytest.raises(ValueError, match=r"sigma_b must be positive semi-definite, got smallest"):
    metrics.frechet_distance_from_statistics(mu, sigma, mu, np.diag([1.0, -0.5, 1.0]))
  with pytest.raises(TypeError, match="mu_a must be a real numeric array"):
    metrics.frechet_distance_from_statistics(["a", "b", "c"], sigma, mu, sigma)
  # Round-off asymmetry and tiny negative eigenvalues are accepted.
  almost = np.eye(3) + np.array([[0.0, 1e-12, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
  # Symmetrised, almost is I up to 5e-13, which moves FID to second order only (~1e-25).
  value = metrics.frechet_distance_from_statistics(mu, almost, mu, sigma)
  assert 0.0 <= value <= fid_atol(mu, (almost + almost.T) / 2, mu, sigma)


def test_feature_validation():
  good = np.zeros((5, 3))
  with pytest.raises(ValueError, match=r"features_a must be a 2-D array .* got shape \(5,\)"):
    metrics.frechet_distance(np.zeros(5), good)
  with pytest.raises(
    ValueError, match=r"features_b must have the same number of features as features_a \(3\)"
  ):
    metrics.frechet_distance(good, np.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"features_b needs at least 2 samples to estimate a cov"):
    metrics.frechet_distance(good, np.zeros((1, 3)))
  with pytest.raises(ValueError, match="features_a must be finite"):
    metrics.frechet_distance(np.full((5, 3), np.nan), good)
  with pytest.raises(ValueError, match=r"features needs at least 2 samples"):
    metrics.feature_statistics(np.zeros((1, 3)))
  with pytest.raises(TypeError, match="features must be a real numeric array, got dtype bool"):
    metrics.feature_statistics(np.zeros((4, 3), bool))


def labelled_features(rng, counts, shift):
  features = np.concatenate(
    [rng.normal(label, 1.0, size=(count, 3)) + shift for label, count in counts.items()]
  )
  labels = np.concatenate([np.full(count, label) for label, count in counts.items()])
  order = rng.permutation(len(labels))
  return features[order], labels[order]


def test_intra_class_frechet_distance():
  rng = np.random.default_rng(9)
  real, real_labels = labelled_features(rng, {0: 40, 3: 30, 7: 50}, 0.0)
  fake, fake_labels = labelled_features(rng, {7: 20, 0: 25, 3: 35}, 0.5)
  result = metrics.intra_class_frechet_distance(real, real_labels, fake, jnp.asarray(fake_labels))
  assert list(result.per_class) == [0, 3, 7]
  for label, value in result.per_class.items():
    real_class, fake_class = real[real_labels == label], fake[fake_labels == label]
    expected = metrics.frechet_distance(real_class, fake_class)
    statistics = (*metrics.feature_statistics(real_class), *metrics.feature_statistics(fake_class))
    assert_fid_close(value, expected, *statistics)
  # The same numpy expression on the same floats.
  assert result.mean == float(np.mean(list(result.per_class.values())))
  mean, per_class = result  # A NamedTuple.
  assert isinstance(mean, float) and 0.5 < mean < 2.0


def test_intra_class_frechet_distance_validation():
  rng = np.random.default_rng(10)
  real, real_labels = labelled_features(rng, {0: 10, 1: 10, 2: 10}, 0.0)
  fake, fake_labels = labelled_features(rng, {0: 10, 1: 10}, 0.0)
  with pytest.raises(ValueError, match=r"Classes \[2\] occur in real_labels but not in fake_lab"):
    metrics.intra_class_frechet_distance(real, real_labels, fake, fake_labels)
  fake, fake_labels = labelled_features(rng, {0: 10, 1: 10, 2: 10, 5: 3, 6: 3}, 0.0)
  with pytest.raises(ValueError, match=r"Classes \[5, 6\] occur in fake_labels but not in real"):
    metrics.intra_class_frechet_distance(real, real_labels, fake, fake_labels)
  fake, fake_labels = labelled_features(rng, {0: 10, 1: 1, 2: 10}, 0.0)
  with pytest.raises(ValueError, match=r"Class 1 has 1 sample\(s\) in fake_features; every cl"):
    metrics.intra_class_frechet_distance(real, real_labels, fake, fake_labels)
  with pytest.raises(ValueError, match=r"real_labels must have shape \(30,\), one label per row"):
    metrics.intra_class_frechet_distance(real, real_labels[:-1], fake, fake_labels)
  with pytest.raises(TypeError, match="fake_labels must be an integer array, got dtype float64"):
    metrics.intra_class_frechet_distance(real, real_labels, fake, fake_labels.astype(float))
  with pytest.raises(ValueError, match=r"fake_features must have the same number of features"):
    metrics.intra_class_frechet_distance(real, real_labels, fake[:, :2], fake_labels)
