"""Kernel Inception Distance (KID): unbiased squared MMD with a cubic polynomial kernel.

Binkowski et al. 2018, "Demystifying MMD GANs". With the kernel ``k(x, y) = (x . y / D + 1)^3``
(``D`` the feature dimension) and two samples ``X = x_1..x_m``, ``Y = y_1..y_m`` of equal size,
the unbiased estimator of the squared maximum mean discrepancy is::

  MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
            - 2 sum_{i, j} k(x_i, y_j) / m^2

KID is its mean over ``num_subsets`` random subsets: each subset draws ``subset_size`` rows of
each feature set without replacement (subsets are independent of one another, as in the authors'
reference code), and the standard deviation over subsets (``ddof = 0``) is reported beside it.
Unlike FID the estimator is unbiased, so it is comparable across sample sizes and can be negative
when the two distributions are (nearly) equal.

The per-subset estimator is jit-compiled and runs in float64 (x64 is enabled only around the
computation), sequentially over subsets with ``lax.map`` so that memory holds one subset's
``m x m`` kernel matrices at a time. The subsets are drawn on the host with
``numpy.random.default_rng(seed)``: for every subset, ``rng.choice(N_a, m, replace=False)`` then
``rng.choice(N_b, m, replace=False)``.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ganjax.metrics import _checks

__all__ = ["KernelInceptionDistance", "kernel_inception_distance"]


class KernelInceptionDistance(NamedTuple):
  """KID: the mean and standard deviation (``ddof = 0``) of MMD^2_u over the subsets."""

  mean: float
  std: float


def _polynomial_kernel(x: jax.Array, y: jax.Array) -> jax.Array:
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: jax.Array, y: jax.Array) -> jax.Array:
  """MMD^2_u of two equally sized samples (the module docstring's formula)."""
  m = x.shape[0]
  k_xx = _polynomial_kernel(x, x)
  k_yy = _polynomial_kernel(y, y)
  k_xy = _polynomial_kernel(x, y)
  within = (jnp.sum(k_xx) - jnp.trace(k_xx) + jnp.sum(k_yy) - jnp.trace(k_yy)) / (m * (m - 1))
  return within - 2.0 * jnp.mean(k_xy)


@jax.jit
def _subset_mmd2(
  features_a: jax.Array, features_b: jax.Array, indices_a: jax.Array, indices_b: jax.Array
) -> jax.Array:
  """MMD^2_u of every subset: (S,) from (N_a, D), (N_b, D) features and (S, m) row indices."""

  def one_subset(indices):
    rows_a, rows_b = indices
    return _unbiased_mmd2(features_a[rows_a], features_b[rows_b])

  return jax.lax.map(one_subset, (indices_a, indices_b))


def _draw_subsets(
  num_a: int, num_b: int, num_subsets: int, subset_size: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
  """(S, m) row indices of each feature set, without replacement within a subset."""
  rng = np.random.default_rng(seed)
  indices_a = np.empty((num_subsets, subset_size), dtype=np.int64)
  indices_b = np.empty((num_subsets, subset_size), dtype=np.int64)
  for subset in range(num_subsets):
    indices_a[subset] = rng.choice(num_a, subset_size, replace=False)
    indices_b[subset] = rng.choice(num_b, subset_size, replace=False)
  return indices_a, indices_b


def _mmd2_of_subsets(
  features_a: np.ndarray, features_b: np.ndarray, indices_a: np.ndarray, indices_b: np.ndarray
) -> np.ndarray:
  """Float64 MMD^2_u of the given subsets, as a (S,) numpy array."""
  with jax.enable_x64(True):
    values = _subset_mmd2(
      jnp.asarray(features_a, jnp.float64),
      jnp.asarray(features_b, jnp.float64),
      jnp.asarray(indices_a),
      jnp.asarray(indices_b),
    )
    return np.asarray(values, dtype=np.float64)


def kernel_inception_distance(
  features_a: Any,
  features_b: Any,
  num_subsets: int = 100,
  subset_size: int = 1000,
  seed: int = 0,
) -> KernelInceptionDistance:
  """Kernel Inception Distance between two feature sets (Binkowski et al. 2018).

  The mean and std over ``num_subsets`` random subsets of the unbiased MMD^2 with the kernel
  ``(x . y / D + 1)^3`` (see the module docstring). The defaults (100 subsets of 1000) are those
  of the paper's reference code.

  Args:
    features_a: (N_a, D) features, e.g. of real images; N_a >= 2.
    features_b: (N_b, D) features, e.g. of generated images; N_b >= 2.
    num_subsets: Number of random subsets (>= 1).
    subset_size: Rows drawn from each set per subset (>= 2). When larger than ``min(N_a, N_b)`` it
      is clipped to that, with a warning.
    seed: Seed of the subset draws (numpy ``default_rng``); same seed, same result.

  Returns:
    ``KernelInceptionDistance(mean, std)`` as floats. Multiply by 1000 for the "KID x 10^3" of
    most tables.

  Raises:
    ValueError: features not 2-D, with different D, fewer than 2 rows or not finite;
      ``num_subsets < 1`` or ``subset_size < 2``.
    TypeError: non-integer ``num_subsets``, ``subset_size`` or ``seed``.
  """
  why = "for the unbiased MMD estimator"
  features_a = _checks.check_features("features_a", features_a, min_samples=2, why=why)
  features_b = _checks.check_features(
    "features_b",
    features_b,
    num_features=features_a.shape[1],
    other="features_a",
    min_samples=2,
    why=why,
  )
  num_subsets = _checks.check_int("num_subsets", num_subsets, minimum=1)
  subset_size = _checks.check_int("subset_size", subset_size, minimum=2)
  seed = _checks.check_int("seed", seed, minimum=0)
  available = min(len(features_a), len(features_b))
  if subset_size > available:
    warnings.warn(
      f"subset_size={subset_size} is larger than the smaller feature set ({available} rows "
      f"in features_a: {len(features_a)}, features_b: {len(features_b)}); using "
      f"subset_size={available}.",
      UserWarning,
      stacklevel=2,
    )
    subset_size = available
  indices_a, indices_b = _draw_subsets(
    len(features_a), len(features_b), num_subsets, subset_size, seed
  )
  values = _mmd2_of_subsets(features_a, features_b, indices_a, indices_b)
  return KernelInceptionDistance(float(np.mean(values)), float(np.std(values)))
