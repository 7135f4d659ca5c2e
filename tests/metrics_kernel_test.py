"""Tests for ganjax.metrics.kernel: the Kernel Inception Distance (unbiased MMD^2)."""

from __future__ import annotations

import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import tolerances

from ganjax import metrics
from ganjax.metrics import kernel


def unbiased_mmd2_reference(x, y):
  """Independent numpy MMD^2_u with k(x, y) = (x . y / d + 1)^3 (masks, not traces)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  m, d = x.shape
  off_diagonal = ~np.eye(m, dtype=bool)
  k_xx = (np.einsum("id,jd->ij", x, x) / d + 1) ** 3
  k_yy = (np.einsum("id,jd->ij", y, y) / d + 1) ** 3
  k_xy = (np.einsum("id,jd->ij", x, y) / d + 1) ** 3
  return k_xx[off_diagonal].mean() + k_yy[off_diagonal].mean() - 2 * k_xy.mean()


def explicit_sum_reference(x, y):
  """The textbook double sums, term by term, for tiny inputs."""
  m, d = x.shape
  k = lambda u, v: (float(np.dot(u, v)) / d + 1) ** 3  # noqa: E731
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
  return xx + yy - 2 * xy


def mmd_atol(x, y) -> float:
  """Float64 round-off of MMD^2_u of ``x`` and ``y`` computed in two ways: every kernel value
  ``(x . y / d + 1)^3`` carries the round-off of its dot product, the division and the sum (d + 2
  terms at the size of ``|x| . |y| / d + 1``), tripled by the cube; the three means add m^2 terms
  each. All at the size of the means of ``(|x| . |y| / d + 1)^3``, the terms' largest possible
  |values| (the estimator's three means cancel)."""
  x, y = np.abs(np.asarray(x, np.float64)), np.abs(np.asarray(y, np.float64))
  m, d = x.shape

  def size(u, v):
    return np.sum((u @ v.T / d + 1) ** 3)

  magnitude = (size(x, x) + size(y, y)) / (m * (m - 1)) + 2 * size(x, y) / m**2
  return tolerances.float64_atol(3 * (d + 2) + m * m, magnitude)


def test_package_exports():
  assert metrics.kernel_inception_distance is kernel.kernel_inception_distance
  assert metrics.KernelInceptionDistance is kernel.KernelInceptionDistance


def test_references_agree():
  rng = np.random.default_rng(0)
  x, y = rng.normal(size=(6, 3)), rng.normal(0.5, 1.0, size=(6, 3))
  assert abs(unbiased_mmd2_reference(x, y) - explicit_sum_reference(x, y)) <= mmd_atol(x, y)


@pytest.mark.parametrize("seed", range(3))
def test_full_subsets_equal_the_whole_sample_estimate(seed):
  # With subset_size = N every subset is a permutation of all rows: MMD^2_u does not change.
  rng = np.random.default_rng(seed)
  x, y = rng.normal(size=(40, 16)), rng.normal(0.2, 1.2, size=(40, 16))
  result = metrics.kernel_inception_distance(x, y, num_subsets=4, subset_size=40, seed=seed)
  assert isinstance(result.mean, float) and isinstance(result.std, float)
  # Each subset's value is the reference's up to round-off in another order, so their mean is
  # too, and their standard deviation is at most that round-off.
  atol = mmd_atol(x, y)
  assert abs(result.mean - unbiased_mmd2_reference(x, y)) <= atol
  assert 0.0 <= result.std <= atol


def test_subsets_match_reference():
  rng = np.random.default_rng(1)
  x = np.abs(rng.normal(size=(50, 16))).astype(np.float32)  # Inception-like: non-negative.
  y = np.abs(rng.normal(0.1, 1.0, size=(37, 16))).astype(np.float32)
  indices_x, indices_y = kernel._draw_subsets(50, 37, 5, 20, seed=3)
  assert indices_x.shape == indices_y.shape == (5, 20)
  for rows_x, rows_y in zip(indices_x, indices_y, strict=True):
    # Without replacement within a subset.
    assert len(set(rows_x)) == len(set(rows_y)) == 20
    assert rows_x.max() < 50 and rows_y.max() < 37
  expected = [
    unbiased_mmd2_reference(x[i], y[j]) for i, j in zip(indices_x, indices_y, strict=True)
  ]
  values = kernel._mmd2_of_subsets(x, y, indices_x, indices_y)
  assert values.dtype == np.float64
  # The float32 features are exact in float64: both sides start from the same numbers.
  atol = max(mmd_atol(x[i], y[j]) for i, j in zip(indices_x, indices_y, strict=True))
  np.testing.assert_allclose(values, expected, rtol=0, atol=atol)
  result = metrics.kernel_inception_distance(
    jnp.asarray(x), y, num_subsets=5, subset_size=20, seed=3
  )
  # A mean and a standard deviation move by at most the values' largest error (plus their own
  # round-off over 5 values, far below it).
  assert abs(result.mean - np.mean(expected)) <= 2 * atol
  assert abs(result.std - np.std(expected)) <= 2 * atol
  assert result.std > 100 * atol
  # Same seed, same result; another seed, other subsets.
  assert metrics.kernel_inception_distance(x, y, 5, 20, seed=3) == result
  assert metrics.kernel_inception_distance(x, y, 5, 20, seed=4).mean != result.mean


def test_unbiased_for_equal_distributions():
  # The mean of the whole-sample MMD^2_u over independent draws is ~0; the biased (V-statistic)
  # estimate would be positive by (E k(x, x) - E k(x, x')) * 2 / m.
  rng = np.random.default_rng(0)
  estimates, biased_offsets = [], []
  for _ in range(200):
    x, y = rng.normal(size=(25, 4)), rng.normal(size=(25, 4))
    estimates.append(metrics.kernel_inception_distance(x, y, 1, 25).mean)
    k_xx = (x @ x.T / 4 + 1) ** 3
    biased_offsets.append((np.mean(np.diag(k_xx)) - np.mean(k_xx)) * 2 / 25)
  standard_error = np.std(estimates) / np.sqrt(len(estimates))
  # Statistical: 5 standard errors (~0.7 with this seed); the biased estimator's offset is over
  # 10 of them, so the test can tell the difference.
  assert abs(np.mean(estimates)) < 5 * standard_error
  assert np.mean(biased_offsets) > 10 * standard_error
  assert min(estimates) < 0 < max(estimates)  # Unbiased: negative values occur.


def test_shifted_distributions_are_clearly_positive():
  rng = np.random.default_rng(3)
  x = rng.normal(size=(200, 8))
  same = metrics.kernel_inception_distance(x, rng.normal(size=(200, 8)), 20, 100)
  shifted = metrics.kernel_inception_distance(x, rng.normal(1.0, 1.0, size=(200, 8)), 20, 100)
  assert shifted.mean > 10 * shifted.std > 0
  assert abs(same.mean) < 0.1 * shifted.mean
  assert abs(same.mean) < 3 * same.std


def test_subset_size_larger_than_data_is_clipped_with_warning():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(30, 5)), rng.normal(size=(12, 5))
  with pytest.warns(UserWarning, match=r"subset_size=1000 is larger than the smaller feature set"):
    result = metrics.kernel_inception_distance(x, y, num_subsets=3)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    assert metrics.kernel_inception_distance(x, y, num_subsets=3, subset_size=12) == result


def test_validation():
  good = np.zeros((5, 3))
  with pytest.raises(ValueError, match=r"features_a must be a 2-D array .*got shape \(5,\)"):
    metrics.kernel_inception_distance(np.zeros(5), good)
  with pytest.raises(ValueError, match=r"features_b must have the same number of features as"):
    metrics.kernel_inception_distance(good, np.zeros((5, 4)))
  with pytest.raises(ValueError, match=r"features_b needs at least 2 samples for the unbiased"):
    metrics.kernel_inception_distance(good, np.zeros((1, 3)))
  with pytest.raises(ValueError, match="features_a must be finite"):
    metrics.kernel_inception_distance(np.full((5, 3), np.inf), good)
  with pytest.raises(ValueError, match="num_subsets must be >= 1, got 0"):
    metrics.kernel_inception_distance(good, good, num_subsets=0)
  with pytest.raises(ValueError, match="subset_size must be >= 2, got 1"):
    metrics.kernel_inception_distance(good, good, subset_size=1)
  with pytest.raises(TypeError, match="subset_size must be an int, got float"):
    metrics.kernel_inception_distance(good, good, subset_size=10.0)
  with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
    metrics.kernel_inception_distance(good, good, seed=-1)
