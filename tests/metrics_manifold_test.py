"""Tests for ganjax.metrics.manifold: improved precision/recall and density/coverage."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import tolerances

from ganjax import metrics
from ganjax.metrics import manifold


def radii_reference(features, k):
  distances = scipy.spatial.distance.cdist(features, features)
  np.fill_diagonal(distances, np.inf)  # Exclude the sample itself.
  return np.sort(distances, axis=1)[:, k - 1]


def precision_recall_reference(real, fake, k):
  """Kynkäänniemi et al. 2019 by brute force: closed k-NN balls."""
  distances = scipy.spatial.distance.cdist(real, fake)  # (N, M)
  precision = np.mean(np.any(distances <= radii_reference(real, k)[:, None], axis=0))
  recall = np.mean(np.any(distances <= radii_reference(fake, k)[None, :], axis=1))
  return precision, recall


def density_coverage_reference(real, fake, k):
  """Naeem et al. 2020 by brute force (as in their prdc code): open k-NN balls of the reals."""
  distances = scipy.spatial.distance.cdist(real, fake)  # (N, M)
  radii = radii_reference(real, k)
  density = np.sum(distances < radii[:, None]) / (k * len(fake))
  coverage = np.mean(np.min(distances, axis=1) < radii)
  return density, coverage


def exact_squared_distances(a, b):
  """(len(a), len(b)) squared distances of integer features, exact in int64."""
  differences = np.asarray(a, np.int64)[:, None, :] - np.asarray(b, np.int64)[None, :, :]
  return np.sum(differences * differences, axis=2)


def exact_radii(features, k):
  squared = exact_squared_distances(features, features)
  np.fill_diagonal(squared, np.iinfo(np.int64).max)  # Exclude the sample itself.
  return np.sort(squared, axis=1)[:, k - 1]


def exact_reference(real, fake, k_pr=3, k_dc=5):
  """All four metrics of integer features in exact arithmetic: integer squared distances and
  radii, integer counts, one correctly rounded division each (as the metrics compute them).

  Returns the metrics and the number of (real, fake) pairs exactly on a real radius, for each k.
  """
  squared = exact_squared_distances(real, fake)  # (N, M)
  real_pr, fake_pr = exact_radii(real, k_pr), exact_radii(fake, k_pr)
  real_dc = exact_radii(real, k_dc)
  n, m = squared.shape
  precision = int(np.sum(np.any(squared <= real_pr[:, None], axis=0))) / m  # Closed balls.
  recall = int(np.sum(np.any(squared <= fake_pr[None, :], axis=1))) / n
  density = int(np.sum(squared < real_dc[:, None])) / (k_dc * m)  # Open balls.
  coverage = int(np.sum(np.min(squared, axis=1) < real_dc)) / n
  ties = (int(np.sum(squared == real_pr[:, None])), int(np.sum(squared == real_dc[:, None])))
  return (precision, recall), (density, coverage), ties


def clusters(rng, centres, per_cluster, scale=1.0):
  return np.concatenate([c + scale * rng.normal(size=(per_cluster, len(c))) for c in centres])


def test_package_exports():
  assert metrics.precision_recall is manifold.precision_recall
  assert metrics.density_coverage is manifold.density_coverage


def test_hand_computed_one_dimensional_example():
  # k = 1. Real radii: 0 -> 1, 1 -> 1, 3 -> 2, 7 -> 4. Fake radii: -1 -> 1.5, 0.5 -> 1.5,
  # 5 -> 4.5, 11.5 -> 6.5. All values are exact in float64, so the ball boundaries are exact too.
  real = np.array([[0.0], [1.0], [3.0], [7.0]])
  fake = np.array([[0.5], [5.0], [11.5], [-1.0]])
  # Precision (closed balls): 0.5 in B(0, 1); 5 on the boundary of B(3, 2); -1 on the boundary of
  # B(0, 1); 11.5 outside B(7, 4). Recall: every real is within 4.5 of 5 or 1.5 of 0.5.
  assert metrics.precision_recall(real, fake, k=1) == (0.75, 1.0)
  # Density (open balls): 0.5 lies in B(0, 1) and B(1, 1); 5 in B(7, 4) only (the boundary of
  # B(3, 2) does not count); -1 and 11.5 in none: 3 / (1 * 4). Coverage: the nearest fake of 3 is
  # at distance 2 = its radius, so 3 is not covered; 0, 1 and 7 are.
  assert metrics.density_coverage(real, fake, k=1) == (0.75, 0.75)
  assert precision_recall_reference(real, fake, 1) == (0.75, 1.0)
  assert density_coverage_reference(real, fake, 1) == (0.75, 0.75)


@pytest.mark.parametrize("batch_size", [7, 1024])
@pytest.mark.parametrize("seed", range(3))
def test_matches_brute_force_reference(seed, batch_size):
  rng = np.random.default_rng(seed)
  # With batch_size 7 both sets take 9 blocks (the kernels compile once for both); the last fake
  # block is mostly padding.
  real = rng.normal(size=(63, 5)).astype(np.float32)
  fake = rng.normal(0.3, 1.2, size=(57, 5)).astype(np.float32)
  # Each k compiles the kernels anew: the defaults (3 and 5) only, to keep the test fast.
  # Counts of points inside balls, each divided once in float64 as the references do: equal,
  # since no generic point lies within round-off of a ball's boundary.
  precision, recall = metrics.precision_recall(real, fake, batch_size=batch_size)
  expected = precision_recall_reference(real.astype(np.float64), fake.astype(np.float64), 3)
  assert (precision, recall) == expected
  assert isinstance(precision, float) and isinstance(recall, float)
  assert 0.0 < precision < 1.0 and 0.0 < recall < 1.0
  result = metrics.density_coverage(jnp.asarray(real), fake, batch_size=batch_size)
  expected = density_coverage_reference(real.astype(np.float64), fake.astype(np.float64), 5)
  assert tuple(result) == expected
  assert 0.0 < result.coverage < 1.0 and 0.0 < result.density


@pytest.mark.parametrize("batch_size", [16, 1024])
@pytest.mark.parametrize("seed", range(3))
def test_exact_on_tied_integer_and_quantized_features(seed, batch_size):
  # Coordinates in {0, 1, 2} (reals) and {0, .., 3} (fakes) in 4 dimensions: squared distances
  # take only the values 0..36, so about a hundred real-fake distances equal a radius exactly. Any
  # round-off moves some of them across it (centring on the real mean did: issue 13).
  rng = np.random.default_rng(10 + seed)
  real = rng.integers(0, 3, size=(60, 4))
  fake = rng.integers(0, 4, size=(50, 4))
  expected_pr, expected_dc, ties = exact_reference(real, fake)
  assert min(ties) > 50
  # The same points quantized (a 1/8 grid) and far from the origin, as float32: squared
  # distances scale by 1/64, so the exact metrics do not change; every value is a float32.
  offset = np.array([1000.25, -3.5, 0.0, 77.0])
  quantized = [(x * 0.125 + offset).astype(np.float32) for x in (real, fake)]
  for q, x in zip(quantized, (real, fake), strict=True):
    np.testing.assert_array_equal((q.astype(np.float64) - offset) * 8, x)  # No value rounded.
  for real_features, fake_features in [(real, fake), quantized]:
    # Exact by construction: equal counts divided in the same way, so compare for equality.
    pr = metrics.precision_recall(real_features, fake_features, batch_size=batch_size)
    dc = metrics.density_coverage(real_features, fake_features, batch_size=batch_size)
    assert tuple(pr) == expected_pr
    assert tuple(dc) == expected_dc


def test_radii_are_exact_integers_on_integer_features():
  rng = np.random.default_rng(13)
  features = rng.integers(-3, 4, size=(23, 6)) + 10**6  # Far from 0, so the centre matters.
  for k in (1, 3, 22):
    with manifold.jax.enable_x64(True):
      blocks, _, _ = manifold._prepare(features, features, k, 5, True)
      squared = np.asarray(manifold._radii(blocks, k)).reshape(-1)[:23]
    np.testing.assert_array_equal(squared, exact_radii(features, k))


def test_radii_match_reference_for_every_block_size():
  rng = np.random.default_rng(3)
  features = rng.normal(size=(23, 4))
  # Squared distances as |x|^2 + |y|^2 - 2 x.y in float64: 4-term dot products and two sums, at
  # the size of the terms that cancel, (|x| + |y|)^2 <= 4 max |x|^2; a k-th smallest value moves
  # by at most as much as the values it is chosen from.
  magnitude = 4 * float(np.max(np.sum(features**2, axis=1)))
  for block, num_blocks, k in [(4, 8, 1), (4, 8, 22), (23, 1, 4)]:
    with manifold.jax.enable_x64(True):
      blocks = manifold._blocks(features, block, num_blocks)
      squared = np.asarray(manifold._radii(blocks, k)).reshape(-1)[:23]
    tolerances.assert_float64_close(
      squared,
      radii_reference(features, k) ** 2,
      length=features.shape[1] + 2,
      magnitude=magnitude,
    )


def test_identical_sets():
  rng = np.random.default_rng(4)
  features = clusters(rng, [np.zeros(4), np.full(4, 5.0)], 50)
  assert metrics.precision_recall(features, features) == (1.0, 1.0)
  density, coverage = metrics.density_coverage(features, features)
  assert coverage == 1.0
  # A count divided once, as the reference divides it: equal counts give equal floats, and one
  # point more or less moves the density by 1 / (5 * 100).
  assert density == density_coverage_reference(features, features, 5)[0]


def test_disjoint_far_apart_clouds_score_zero():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(100, 4))
  fake = rng.normal(size=(80, 4)) + 1000.0
  assert metrics.precision_recall(real, fake) == (0.0, 0.0)
  assert metrics.density_coverage(real, fake) == (0.0, 0.0)


def test_fake_copies_half_of_the_real_clusters():
  rng = np.random.default_rng(6)
  centres = [np.array([100.0 * i, 0.0, -50.0 * i, 0.0]) for i in range(4)]
  real = clusters(rng, centres, 25)
  fake = real[:50]  # Exact copies of the samples of clusters 0 and 1.
  # Every fake is in the ball of its copy; a real is in a fake ball iff its cluster is copied.
  assert metrics.precision_recall(real, fake) == (1.0, 0.5)
  density, coverage = metrics.density_coverage(real, fake)
  assert coverage == 0.5
  assert density == density_coverage_reference(real, fake, 5)[0]  # Counts, as above.


def test_fresh_fake_samples_of_half_of_the_clusters():
  rng = np.random.default_rng(7)
  centres = [np.array([100.0 * i, 0.0, -50.0 * i, 0.0]) for i in range(4)]
  real = clusters(rng, centres, 25)
  fake = clusters(rng, centres[:2], 50)
  precision, recall = metrics.precision_recall(real, fake)
  density, coverage = metrics.density_coverage(real, fake)
  # Counts divided once, as the references divide them: exact.
  assert (precision, recall) == precision_recall_reference(real, fake, 3)
  assert (density, coverage) == density_coverage_reference(real, fake, 5)
  # With 25 reals per cluster the k-NN balls leave gaps, so precision is below 1 (0.81 here).
  assert precision > 0.7
  # Only the 50 reals of the 2 sampled clusters can be recalled or covered, and the 100 fakes
  # there reach most of them (not a round-off claim: counts of this seed's samples).
  assert 0.4 <= recall <= 0.5
  assert 0.4 <= coverage <= 0.5
  # Density: ~1 for matching distributions; here every fake sits in a real cluster.
  assert 0.8 < density < 1.2


def test_density_coverage_allows_a_single_fake():
  real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
  assert metrics.density_coverage(real, [[0.1, 0.1]], k=1) == (3.0, 1.0)


def test_validation():
  good = np.zeros((10, 3))
  with pytest.raises(ValueError, match=r"real_features must be a 2-D array .*got shape \(10,\)"):
    metrics.precision_recall(np.zeros(10), good)
  with pytest.raises(ValueError, match=r"fake_features must have the same number of features as"):
    metrics.density_coverage(good, np.zeros((10, 4)))
  with pytest.raises(ValueError, match="fake_features must be finite"):
    metrics.precision_recall(good, np.full((10, 3), np.nan))
  with pytest.raises(
    ValueError, match=r"k must be smaller than the number of samples in real_features \(10"
  ):
    metrics.density_coverage(good, good, k=10)
  with pytest.raises(
    ValueError, match=r"k must be smaller than the number of samples in fake_features \(3: the"
  ):
    metrics.precision_recall(good, np.zeros((3, 3)), k=3)
  with pytest.raises(ValueError, match=r"fake_features must not|fake_features needs at least 1"):
    metrics.density_coverage(good, np.zeros((0, 3)))
  with pytest.raises(ValueError, match="k must be >= 1, got 0"):
    metrics.precision_recall(good, good, k=0)
  with pytest.raises(TypeError, match="k must be an int, got float"):
    metrics.density_coverage(good, good, k=2.0)
  with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
    metrics.precision_recall(good, good, batch_size=0)
