"""k-nearest-neighbour manifold metrics: improved precision/recall, density/coverage.

Both estimate each feature manifold by the union of balls around its samples, every ball's radius
being the Euclidean distance from the sample to its k-th nearest neighbour in the same set (the
sample itself excluded). With real samples ``X_1..X_N``, fake samples ``Y_1..Y_M``, radii
``r(X_i)`` and ``r(Y_j)``:

* Kynkäänniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative Models":
  ``precision = mean_j 1[exists i: ||Y_j - X_i|| <= r(X_i)]`` (the fraction of fakes on the real
  manifold) and ``recall = mean_i 1[exists j: ||X_i - Y_j|| <= r(Y_j)]`` (the fraction of reals on
  the fake manifold). Closed balls (``<=``), as in the authors' code; default k = 3.
* Naeem et al. 2020, "Reliable Fidelity and Diversity Metrics for Generative Models":
  ``density = 1 / (k M) sum_j #{i : ||Y_j - X_i|| < r(X_i)}`` (can exceed 1) and
  ``coverage = mean_i 1[min_j ||X_i - Y_j|| < r(X_i)]``. Open balls (``<``), as in the authors'
  ``prdc`` code; default k = 5. Only the real radii are used, so k needs only N > k.

Ties are decided exactly: a sample at distance exactly equal to a radius is inside a closed ball
and outside an open one. Discrete features (integers, fixed-point or otherwise quantized values)
tie often, so the squared distances are computed exactly whenever they can be: the features are
converted to float64 and centred on the coordinate-wise lower median of the real features, which
is one of the real values, so the subtraction is exact for features on a common grid (centring on
the mean, as this module once did, rounds ``x - mean`` and moves tied distances to either side of
a radius). The squared distances ``||a||^2 + ||b||^2 - 2 a.b`` are then sums of products of grid
values: every partial sum is an integer multiple of the grid spacing squared, and float64 holds it
exactly, whatever the summation order (matmul kernel, blocking, FMA), while it stays below 2^53
spacings squared. So the results are exact when all features (as float64) are integer multiples
of one power of two ``2^e`` and ``2 D R^2 <= 2^53``, ``R`` being the largest ``|x - median|`` in
units of ``2^e``: for 8-bit features (``R <= 255``) any ``D`` up to 6e10, for 16-bit ones up to
1e6. Generic float features keep float64 round-off, relative to the squared norms of the centred
features, as before; ties are then improbable.

The pairwise distances are computed with jax (x64 is enabled only around the computation) in
``batch_size x batch_size`` blocks, with the reductions running over the blocks (the k smallest
distances of every row; ball counts and "inside some ball" flags), so memory stays
``O(batch_size^2 + (N + M) D)`` and no N x M matrix is ever built. Each metric pair makes one pass
over the real-fake distances, plus one within-set pass per set of radii. Comparisons use squared
distances, so no square root is taken (it would round tied and untied distances alike).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ganjax.metrics import _checks

__all__ = ["DensityCoverage", "PrecisionRecall", "density_coverage", "precision_recall"]


class PrecisionRecall(NamedTuple):
  """Improved precision (fidelity) and recall (diversity), both in [0, 1]."""

  precision: float
  recall: float


class DensityCoverage(NamedTuple):
  """Density (fidelity, >= 0, about 1 for matching distributions) and coverage (in [0, 1])."""

  density: float
  coverage: float


def _squared_distances(rows: jax.Array, cols: jax.Array) -> jax.Array:
  """(b, c) squared Euclidean distances, clipped at 0 against round-off.

  Exact, in any summation order, when the features are on a common power-of-two grid and the sums
  stay below 2^53 grid spacings squared (module docstring); one matmul, so fast on large ``d``.
  """
  cross = jnp.matmul(rows, cols.T, precision=jax.lax.Precision.HIGHEST)
  squared = jnp.sum(rows * rows, axis=1)[:, None] + jnp.sum(cols * cols, axis=1)[None, :]
  return jnp.maximum(squared - 2.0 * cross, 0.0)


def _k_smallest(values: jax.Array, k: int) -> jax.Array:
  """The k smallest entries of every row of (b, n) ``values``, ascending, with multiplicity.

  k rounds of "take the row minimum, then remove that one entry": O(k n) per row, several times
  faster on CPU than ``lax.top_k`` or a sort for the small k these metrics use.
  """
  columns = jnp.arange(values.shape[1])[None, :]
  ranks = jnp.arange(k)[None, :]

  def extract(i, carry):
    remaining, smallest = carry
    position = jnp.argmin(remaining, axis=1)
    smallest = jnp.where(ranks == i, jnp.min(remaining, axis=1)[:, None], smallest)
    return jnp.where(columns == position[:, None], jnp.inf, remaining), smallest

  initial = jnp.zeros((values.shape[0], k), dtype=values.dtype)
  return jax.lax.fori_loop(0, k, extract, (values, initial))[1]


@functools.partial(jax.jit, static_argnames=("k",))
def _kth_neighbour(points: jax.Array, valid: jax.Array, *, k: int) -> jax.Array:
  """Squared distance from every point to its k-th nearest neighbour in the set, self excluded.

  Args:
    points: (B, b, d) blocks of rows.
    valid: (B, b) False for padding rows.
    k: Which neighbour (1 = nearest).

  Returns:
    (B * b,) squared distances (padding rows included).
  """
  num_blocks, block = valid.shape
  starts = jnp.arange(num_blocks) * block

  def row_block(args):
    rows, row_start = args
    row_ids = row_start + jnp.arange(block)

    def scan_columns(smallest, col_args):
      cols, col_valid, col_start = col_args
      is_self = row_ids[:, None] == col_start + jnp.arange(block)[None, :]
      skip = ~col_valid[None, :] | is_self
      squared = jnp.where(skip, jnp.inf, _squared_distances(rows, cols))
      return _k_smallest(jnp.concatenate([smallest, squared], axis=1), k), None

    initial = jnp.full((block, k), jnp.inf, dtype=points.dtype)
    smallest, _ = jax.lax.scan(scan_columns, initial, (points, valid, starts))
    return smallest[:, k - 1]

  return jax.lax.map(row_block, (points, starts)).reshape(-1)


@jax.jit
def _cross_balls(
  rows: jax.Array,
  row_radii: jax.Array,
  row_valid: jax.Array,
  cols: jax.Array,
  col_radii: jax.Array,
  col_valid: jax.Array,
  closed: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Ball memberships between two sets, in one pass over their distances.

  A ball is a point of one set with its squared radius; with ``closed`` its boundary belongs to it.

  Args:
    rows: (R, b, d) blocks of the first set.
    row_radii: (R, b) squared radii of the first set's balls.
    row_valid: (R, b) False for padding rows.
    cols: (C, b, d) blocks of the second set.
    col_radii: (C, b) squared radii of the second set's balls.
    col_valid: (C, b) False for padding columns.
    closed: Scalar bool: closed balls (``<=``) or open balls (``<``). Traced, not static.

  Returns:
    ``row_counts``: (R * b,) int32, the number of column balls containing each row point;
    ``col_in_row_ball``: (C * b,) bool, whether each column point lies in some row ball;
    ``col_ball_hit``: (C * b,) bool, whether each column ball contains some row point.
  """

  def inside(squared, radii):
    return (squared < radii) | (closed & (squared == radii))

  def row_block(col_flags, row_args):
    block, radii_r, valid_r = row_args

    def scan_columns(count, col_args):
      block_c, radii_c, valid_c = col_args
      squared = _squared_distances(block, block_c)
      pair_valid = valid_r[:, None] & valid_c[None, :]
      in_col_ball = inside(squared, radii_c[None, :]) & pair_valid
      in_row_ball = inside(squared, radii_r[:, None]) & pair_valid
      count = count + jnp.sum(in_col_ball, axis=1, dtype=jnp.int32)
      return count, (jnp.any(in_row_ball, axis=0), jnp.any(in_col_ball, axis=0))

    initial = jnp.zeros(block.shape[0], dtype=jnp.int32)
    count, (in_row_ball, ball_hit) = jax.lax.scan(
      scan_columns, initial, (cols, col_radii, col_valid)
    )
    return (col_flags[0] | in_row_ball, col_flags[1] | ball_hit), count

  no_flags = jnp.zeros(col_valid.shape, dtype=bool)
  (col_in_row_ball, col_ball_hit), row_counts = jax.lax.scan(
    row_block, (no_flags, no_flags), (rows, row_radii, row_valid)
  )
  return row_counts.reshape(-1), col_in_row_ball.reshape(-1), col_ball_hit.reshape(-1)


class _Blocks(NamedTuple):
  """A feature set cut into zero-padded blocks of rows, on the device in float64."""

  points: jax.Array  # (num_blocks, block, d).
  valid: jax.Array  # (num_blocks, block) bool, False for padding.
  count: int  # Rows before padding.


def _blocks(features: np.ndarray, block: int, num_blocks: int) -> _Blocks:
  """Call under ``jax.enable_x64(True)`` to keep float64."""
  count, dim = features.shape
  padded = np.zeros((num_blocks * block, dim))
  padded[:count] = features
  valid = np.arange(num_blocks * block) < count
  return _Blocks(
    jnp.asarray(padded.reshape(num_blocks, block, dim)),
    jnp.asarray(valid.reshape(num_blocks, block)),
    count,
  )


def _centre(real: np.ndarray) -> np.ndarray:
  """(D,) coordinate-wise lower median of the real features: a shift that keeps ties exact.

  Each coordinate of the centre is one of the real values, so on a common power-of-two grid
  ``x - centre`` is exact (the mean is not on the grid: it would round ``x - mean``); like the
  mean, it keeps the centred norms, hence the round-off of generic features, small.
  """
  middle = (len(real) - 1) // 2
  return np.partition(real, middle, axis=0)[middle]


def _prepare(
  real_features: Any, fake_features: Any, k: int, batch_size: int, fake_radii: bool
) -> tuple[_Blocks, _Blocks, int]:
  """Validates the arguments; returns the real and fake blocks (centred by ``_centre``) and k."""
  real = _checks.check_features("real_features", real_features, min_samples=2)
  fake = _checks.check_features(
    "fake_features",
    fake_features,
    num_features=real.shape[1],
    other="real_features",
    min_samples=2 if fake_radii else 1,
  )
  k = _checks.check_int("k", k, minimum=1)
  batch_size = _checks.check_int("batch_size", batch_size, minimum=1)
  for name, features in [("real_features", real), ("fake_features", fake)][: 1 + fake_radii]:
    if k >= len(features):
      raise ValueError(
        f"k must be smaller than the number of samples in {name} ({len(features)}: the k-th "
        f"neighbour excludes the sample itself), got k={k}."
      )
  real = real.astype(np.float64)
  centre = _centre(real)
  block = min(batch_size, max(len(real), len(fake)))
  return (
    _blocks(real - centre, block, -(-len(real) // block)),
    _blocks(fake.astype(np.float64) - centre, block, -(-len(fake) // block)),
    k,
  )


def _radii(blocks: _Blocks, k: int) -> jax.Array:
  """(num_blocks, block) squared k-NN radii within the set (meaningless on padding rows)."""
  return _kth_neighbour(blocks.points, blocks.valid, k=k).reshape(blocks.valid.shape)


def precision_recall(
  real_features: Any, fake_features: Any, k: int = 3, *, batch_size: int = 1024
) -> PrecisionRecall:
  """Improved precision and recall of generated features (Kynkäänniemi et al. 2019).

  See the module docstring for the definitions (k-NN balls, self excluded). The balls are closed,
  as in the authors' code: a sample at distance exactly equal to a k-NN radius is inside the ball.
  Ties are decided exactly on integer and quantized features (module docstring), so discrete
  features give the exact-arithmetic result.

  Args:
    real_features: (N, D) features of real samples, N > k.
    fake_features: (M, D) features of generated samples, M > k.
    k: Neighbourhood size of the radii (the paper's default 3).
    batch_size: Rows and columns per block of the distance computation (memory ~
      ``batch_size^2`` float64 values); the result does not depend on it.

  Returns:
    ``PrecisionRecall(precision, recall)`` as floats in [0, 1].

  Raises:
    ValueError: features not 2-D, with different D, or not finite; ``k < 1`` or k not smaller
      than both sample counts; ``batch_size < 1``.
    TypeError: non-integer ``k`` or ``batch_size``.
  """
  with jax.enable_x64(True):
    real, fake, k = _prepare(real_features, fake_features, k, batch_size, True)
    fakes_in_real_balls, reals_in_fake_balls, _ = _cross_balls(
      fake.points, _radii(fake, k), fake.valid, real.points, _radii(real, k), real.valid, True
    )
    precise = np.asarray(fakes_in_real_balls[: fake.count] > 0)
    recalled = np.asarray(reals_in_fake_balls[: real.count])
  return PrecisionRecall(float(np.mean(precise)), float(np.mean(recalled)))


def density_coverage(
  real_features: Any, fake_features: Any, k: int = 5, *, batch_size: int = 1024
) -> DensityCoverage:
  """Density and coverage of generated features (Naeem et al. 2020).

  See the module docstring for the definitions (k-NN balls of the real samples, self excluded).
  The balls are open, as in the authors' ``prdc`` code: a sample at distance exactly equal to a
  radius is outside the ball (so a real sample with k exact duplicates among the reals has radius
  0 and covers nothing). Ties are decided exactly on integer and quantized features (module
  docstring), so discrete features give the exact-arithmetic result.

  Args:
    real_features: (N, D) features of real samples, N > k.
    fake_features: (M, D) features of generated samples, M >= 1.
    k: Neighbourhood size of the real radii (the paper's default 5).
    batch_size: Rows and columns per block of the distance computation (memory ~
      ``batch_size^2`` float64 values); the result does not depend on it.

  Returns:
    ``DensityCoverage(density, coverage)`` as floats: density >= 0 (1 on average for matching
    distributions, up to N / k), coverage in [0, 1].

  Raises:
    ValueError: features not 2-D, with different D, empty, or not finite; ``k < 1`` or
      ``k >= N``; ``batch_size < 1``.
    TypeError: non-integer ``k`` or ``batch_size``.
  """
  with jax.enable_x64(True):
    real, fake, k = _prepare(real_features, fake_features, k, batch_size, False)
    no_radii = jnp.zeros(fake.valid.shape, dtype=fake.points.dtype)  # Fake balls are not used.
    counts, _, covered = _cross_balls(
      fake.points, no_radii, fake.valid, real.points, _radii(real, k), real.valid, False
    )
    counts = np.asarray(counts[: fake.count])
    covered = np.asarray(covered[: real.count])
  return DensityCoverage(
    float(np.sum(counts, dtype=np.int64) / (k * len(counts))), float(np.mean(covered))
  )
