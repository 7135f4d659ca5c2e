"""How close two results must be, derived from what is compared; every test uses these.

XLA:CPU picks other kernels on other instruction sets (AVX2, AVX-512), other batch positions run in
other vector lanes, and other device counts split reductions differently, so float32 results move
in their last bits between machines. The suite compares in three ways:

* :func:`assert_bitwise_equal`: the same jitted program on the same inputs, device count and
  machine (a resumed run against an uninterrupted one, one call twice). XLA:CPU is deterministic
  there, so anything but equality is a bug.
* :func:`assert_float32_close`: the same mathematics evaluated in another order (another kernel,
  batch position, device count or formulation, or float32 against a float64 reference). Each
  float32 operation rounds by at most half an ulp; a sum of ``n`` terms in another order moves by
  at most about ``n * eps * sum|terms|`` (Higham, "Accuracy and Stability of Numerical
  Algorithms", 2002, Sec. 4.2), and typically by ``sqrt(n) * eps`` of that. :func:`float32_atol`
  is the tolerance ``ulps * eps * length * magnitude`` for a result of size ``magnitude`` that
  went through ``length`` accumulated terms (summed over the layers of a network).
* :func:`assert_adam_trajectories_close`: parameters after several Adam steps from computations
  that differ by round-off. Most entries stay within round-off; an entry whose gradient is near
  zero can step the other way, and Adam's step is bounded by the learning rate whatever the
  gradient (Kingma & Ba 2015, Sec. 2.1), which bounds those few entries.

Claims about training outcomes (mode counts, sample quality) are not tolerances: they are measured
over seeds in ``experiments/`` or asserted with a margin in ``slow`` tests.
"""

from __future__ import annotations

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7: one ulp at 1.0.


def float32_atol(length: int, magnitude: float = 1.0, ulps: float = 4.0) -> float:
  """Absolute tolerance of a float32 result of size ``magnitude`` reached through ``length``
  accumulated terms (a dot product's length, a network's summed fan-ins), in any order."""
  return ulps * EPS32 * max(int(length), 1) * float(magnitude)


def _arrays(tree):
  return [np.asarray(x, dtype=np.float64) for x in jax.tree.leaves(jax.device_get(tree))]


def assert_bitwise_equal(actual, desired, err_msg: str = "") -> None:
  """Equal bit for bit (pytrees allowed): same program, same inputs, same device count."""
  a_leaves, d_leaves = (
    jax.tree.leaves(jax.device_get(actual)),
    jax.tree.leaves(jax.device_get(desired)),
  )
  assert len(a_leaves) == len(d_leaves), (len(a_leaves), len(d_leaves), err_msg)
  for i, (a, d) in enumerate(zip(a_leaves, d_leaves, strict=True)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(d), err_msg=f"leaf {i} {err_msg}")


def assert_float32_close(
  actual,
  desired,
  *,
  length: int,
  magnitude: float | None = None,
  ulps: float = 4.0,
  err_msg: str = "",
) -> None:
  """Equal up to float32 round-off of ``length`` accumulated terms (pytrees allowed).

  ``magnitude`` defaults to the largest absolute value of each leaf of ``desired`` (at least 1e-30,
  so an all-zero leaf must be exactly zero up to that).
  """
  _assert_close(actual, desired, float32_atol, length, magnitude, ulps, 1e-30, err_msg)


def _assert_close(actual, desired, atol_fn, length, magnitude, ulps, smallest, err_msg) -> None:
  """Leaf by leaf, ``|actual - desired| <= atol_fn(length, magnitude or the leaf's max, ulps)``."""
  a_leaves, d_leaves = _arrays(actual), _arrays(desired)
  assert len(a_leaves) == len(d_leaves), (len(a_leaves), len(d_leaves), err_msg)
  for i, (a, d) in enumerate(zip(a_leaves, d_leaves, strict=True)):
    largest = max(float(np.max(np.abs(d), initial=0)), smallest)
    scale = magnitude if magnitude is not None else largest
    atol = atol_fn(length, scale, ulps)
    np.testing.assert_allclose(
      a, d, rtol=0, atol=atol, err_msg=f"leaf {i} (atol {atol:.3g}) {err_msg}"
    )


def adam_step_bound(learning_rate: float, b1: float = 0.9, b2: float = 0.999) -> float:
  """The largest change of one parameter in one Adam step (Kingma & Ba 2015, Sec. 2.1)."""
  return learning_rate * max(1.0, (1.0 - b1) / np.sqrt(1.0 - b2))


def assert_adam_trajectories_close(
  actual,
  desired,
  *,
  steps: int,
  learning_rate: float,
  b1: float = 0.9,
  b2: float = 0.999,
  length: int,
  outlier_fraction: float = 0.01,
  err_msg: str = "",
) -> None:
  """Parameters after ``steps`` Adam updates of round-off-different but equal computations.

  All but ``outlier_fraction`` of the entries (at least one entry may) agree within
  :func:`float32_atol` ``(length * steps)`` at their leaf's scale, where ``length`` is the longest
  reduction behind a gradient entry (batch size times the largest fan-in); every entry agrees
  within twice Adam's step bound times ``steps``. A real difference (another batch, other noise, a
  wrong reduction) moves most entries by about the learning rate and fails the first condition.
  """
  bound = 2.0 * steps * adam_step_bound(learning_rate, b1, b2)
  a_leaves, d_leaves = _arrays(actual), _arrays(desired)
  assert len(a_leaves) == len(d_leaves), (len(a_leaves), len(d_leaves), err_msg)
  total = sum(d.size for d in d_leaves)
  outliers = 0
  for i, (a, d) in enumerate(zip(a_leaves, d_leaves, strict=True)):
    assert a.shape == d.shape, (i, a.shape, d.shape, err_msg)
    diff = np.abs(a - d)
    assert np.all(np.isfinite(diff)), f"leaf {i}: non-finite entries {err_msg}"
    worst = float(np.max(diff, initial=0))
    assert worst <= bound, f"leaf {i}: max |diff| {worst:.3g} > Adam bound {bound:.3g} {err_msg}"
    scale = max(float(np.max(np.abs(d), initial=0)), 1e-30)
    outliers += int(np.sum(diff > float32_atol(length * steps, scale)))
  allowed = max(1, int(outlier_fraction * total))
  assert outliers <= allowed, (
    f"{outliers} of {total} entries differ by more than float32 round-off "
    f"(allowed {allowed}) {err_msg}"
  )


# Lengths of the computations behind a result, derived from a network's parameters. A product of
# factors with relative errors e1 and e2 has relative error e1 + e2, so the lengths of the chained
# reductions add (Higham 2002, Sec. 3.1): the forward pass, the backward pass, the batch sum.


def _kernel_shapes(params):
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):
    name = getattr(path[-1], "key", getattr(path[-1], "name", None))
    if name == "kernel" and len(leaf.shape) >= 2:
      yield tuple(leaf.shape)


def summed_fan_in(params) -> int:
  """Terms accumulated along a forward pass of a network with ``params``: the summed fan-ins of
  its kernels (dense (in, out): in; convolution (..., in, out): its taps times in). Biases,
  normalisation parameters and embedding tables (gathers) add no accumulated terms."""
  return sum(int(np.prod(shape[:-1])) for shape in _kernel_shapes(params))


def summed_fan_out(params) -> int:
  """Terms accumulated along a backward pass to the inputs: each kernel's taps times its outputs
  (dense (in, out): out)."""
  return sum(int(np.prod(shape[:-2])) * shape[-1] for shape in _kernel_shapes(params))


def gradient_length(params, reduction: int) -> int:
  """Terms behind one gradient entry of a network with ``params``: the forward pass, the backward
  pass and the ``reduction`` over the batch (batch size, times the output positions of a
  convolution, or the positions a BatchNorm averages over: the largest such sum)."""
  return summed_fan_in(params) + summed_fan_out(params) + int(reduction)


def argmax_ambiguous(logits, atol: float) -> np.ndarray:
  """Rows of ``logits`` whose best entry leads the second by at most ``2 * atol``: their argmax
  may differ between two evaluations that each deviate by up to ``atol``."""
  logits = np.asarray(logits, np.float64)
  top2 = -np.partition(-logits, 1, axis=-1)[..., :2]
  return top2[..., 0] - top2[..., 1] <= 2 * atol


def assert_same_argmax(indices, logits, *, atol: float, err_msg: str = "") -> None:
  """``indices`` is the argmax over the last axis of another evaluation of ``logits``, where the
  two evaluations each deviate from the exact values by at most ``atol``: the chosen entry is
  within ``2 * atol`` of the row's maximum. Where the best entry leads by more than that, the
  index must therefore equal ``argmax(logits)``; a wrong class is off by the gap between logits."""
  logits = np.asarray(logits, np.float64)
  indices = np.asarray(indices)
  assert indices.shape == logits.shape[:-1], (indices.shape, logits.shape, err_msg)
  chosen = np.take_along_axis(logits, indices[..., None].astype(np.int64), axis=-1)[..., 0]
  shortfall = logits.max(axis=-1) - chosen
  bad = shortfall > 2 * atol
  assert not np.any(bad), (
    f"{int(np.sum(bad))} of {indices.size} indices are not the argmax within round-off "
    f"(2 atol = {2 * atol:.3g}; worst shortfall {float(shortfall.max()):.3g}) {err_msg}"
  )


def assert_updates_close(
  actual, desired, initial, *, steps: int, length: int, err_msg: str = ""
) -> None:
  """``actual`` and ``desired`` (pytrees) reached from ``initial`` by ``steps`` updates that are
  linear in what they add (SGD, an EMA, BatchNorm's running averages), computed with the float32
  round-off of ``length`` accumulated terms each: their updates ``x - initial`` agree within
  :func:`float32_atol` ``(length * steps)`` at the scale of the largest update in ``desired``,
  plus one ulp of the values per step (the rounding of ``x + update``).

  One scale for the whole tree, not one per leaf: a bias followed by BatchNorm has an exactly zero
  gradient, so its update is round-off of gradient terms the size of the other biases'. Pass each
  network (and each kind of state) separately, so that each has its own scale.
  """
  a_leaves, d_leaves, i_leaves = _arrays(actual), _arrays(desired), _arrays(initial)
  assert len(a_leaves) == len(d_leaves) == len(i_leaves), (len(a_leaves), len(d_leaves), err_msg)
  pairs = zip(d_leaves, i_leaves, strict=True)
  update = max((float(np.max(np.abs(d - i), initial=0)) for d, i in pairs), default=0.0)
  value = max((float(np.max(np.abs(d), initial=0)) for d in d_leaves), default=0.0)
  atol = float32_atol(length * steps, update) + steps * EPS32 * value
  for k, (a, d, i) in enumerate(zip(a_leaves, d_leaves, i_leaves, strict=True)):
    assert a.shape == d.shape == i.shape, (k, a.shape, d.shape, i.shape, err_msg)
    np.testing.assert_allclose(
      a - i, d - i, rtol=0, atol=atol, err_msg=f"leaf {k} (atol {atol:.3g}) {err_msg}"
    )


# ----------------------------------------------------------------------------------------------
# Float64 references and the magnitude of a dot product.

EPS64 = float(np.finfo(np.float64).eps)  # 2.22e-16: one ulp at 1.0.


def float64_atol(length: int, magnitude: float = 1.0, ulps: float = 4.0) -> float:
  """:func:`float32_atol` for float64: a float64 result (numpy, scipy, LAPACK, jax with x64) against
  a float64 reference that sums its ``length`` terms in another order. OpenBLAS and numpy pick
  their kernels by CPU as XLA does, so float64 results move in their last bits between machines
  too."""
  return ulps * EPS64 * max(int(length), 1) * float(magnitude)


def assert_float64_close(
  actual,
  desired,
  *,
  length: int,
  magnitude: float | None = None,
  ulps: float = 4.0,
  err_msg: str = "",
) -> None:
  """:func:`assert_float32_close` with :func:`float64_atol`: equal up to float64 round-off."""
  _assert_close(actual, desired, float64_atol, length, magnitude, ulps, 1e-300, err_msg)


def dot_magnitude(a, b) -> float:
  """The largest ``sum_k |a_ik| |b_kj|`` of ``a @ b`` (``a`` ``(..., K)``, ``b`` ``(K, ...)``).

  The ``magnitude`` of a dot product for :func:`float32_atol`: round-off scales with the sum of the
  absolute terms (Higham 2002, Sec. 3.1), not with the result, which may cancel.
  """
  a = np.abs(np.asarray(a, np.float64))
  b = np.abs(np.asarray(b, np.float64))
  return float(np.max(a.reshape(-1, a.shape[-1]) @ b.reshape(b.shape[0], -1), initial=0.0))


# ----------------------------------------------------------------------------------------------
# Real differences, power iteration, and sampling error.


def assert_differ_beyond_roundoff(
  actual,
  other,
  *,
  length: int,
  magnitude: float | None = None,
  factor: float = 100.0,
  err_msg: str = "",
) -> None:
  """``actual`` and ``other`` (pytrees) differ somewhere by more than ``factor`` times
  :func:`float32_atol` ``(length, magnitude)``: a real difference (another label, dropout mask,
  normalisation mode), not the round-off of ``length`` accumulated terms. ``magnitude`` defaults
  to the largest absolute value in ``other``."""
  a_leaves, o_leaves = _arrays(actual), _arrays(other)
  assert len(a_leaves) == len(o_leaves), (len(a_leaves), len(o_leaves), err_msg)
  if magnitude is None:
    magnitude = max((float(np.max(np.abs(o), initial=0)) for o in o_leaves), default=0.0)
  atol = factor * float32_atol(length, magnitude)
  worst = max(
    (float(np.max(np.abs(a - o), initial=0)) for a, o in zip(a_leaves, o_leaves, strict=True)),
    default=0.0,
  )
  assert worst > atol, (
    f"largest difference {worst:.3g} <= {factor:g} x round-off {atol:.3g} {err_msg}"
  )


def power_iteration_rtol(matrix, u, steps: int) -> float:
  """Relative error, in exact arithmetic, of the largest singular value of ``matrix`` (reshaped to
  ``(-1, out)``) estimated by ``steps`` power iterations from ``u`` ``(1, out)`` as flax's
  ``SpectralNorm`` does: ``v <- normalize(u W^T)``, ``u <- normalize(v W)``, ``sigma = v W u^T``.

  With ``u = sum_i c_i r_i`` over the right singular vectors ``r_i`` of ``W`` (singular values
  ``s_i``), ``sigma^2 = sum c_i^2 s_i^(4n) / sum c_i^2 s_i^(4n-2)``, so
  ``0 <= 1 - sigma / s_1 <= sum_{i>1} (c_i / c_1)^2 (s_i / s_1)^(4n-2)``, the value returned
  (Golub & Van Loan, "Matrix Computations", 4th ed., 2013, Sec. 8.2.1). Its square root bounds
  the tangent of the angle between ``v`` and the top left singular vector (and ``u``'s). Add
  :func:`float32_atol` for the round-off of the last iteration.
  """
  w = np.asarray(matrix, np.float64)
  w = w.reshape(-1, w.shape[-1])
  _, s, vt = np.linalg.svd(w, full_matrices=False)
  c = vt @ np.asarray(u, np.float64).reshape(-1)
  if s[0] == 0 or c[0] == 0:
    return float("inf")
  exponent = 4 * int(steps) - 2
  return float(np.sum((c[1:] / c[0]) ** 2 * (s[1:] / s[0]) ** exponent))


def mean_atol(std: float, n: int, sigmas: float = 5.0) -> float:
  """``sigmas`` standard errors of the mean of ``n`` independent draws of standard deviation
  ``std``: a sampling tolerance, not a round-off one (5 sigma: a correct sampler fails about
  once in 1.7 million seeds)."""
  return sigmas * float(std) / np.sqrt(n)


def std_rtol(n: int, sigmas: float = 5.0) -> float:
  """``sigmas`` relative standard errors of the sample standard deviation of ``n`` normal draws
  (``1 / sqrt(2 (n - 1))``, to first order)."""
  return sigmas / np.sqrt(2.0 * (n - 1))


def proportion_atol(p: float, n: int, sigmas: float = 5.0) -> float:
  """``sigmas`` standard errors of the frequency of an outcome of probability ``p`` in ``n``
  independent draws (``sqrt(p (1 - p) / n)``)."""
  return sigmas * float(np.sqrt(p * (1.0 - p) / n))


def power_iteration_error(matrix, u, steps: int) -> float:
  """``1 - sigma / s_1`` for the estimate of :func:`power_iteration_rtol` in exact arithmetic:
  with ``r_i = s_i / s_1``, ``q = 1 - sigma^2 / s_1^2 = sum_i c_i^2 r_i^(4n-2) (1 - r_i^2) /
  sum_i c_i^2 r_i^(4n-2)`` and ``1 - sigma / s_1 = q / (1 + sqrt(1 - q))``; at most
  :func:`power_iteration_rtol`, and tighter by about ``1 - r_2^2`` when the top singular values
  are close. A float32 iteration differs from it by the round-off of its last iteration."""
  w = np.asarray(matrix, np.float64)
  w = w.reshape(-1, w.shape[-1])
  _, s, vt = np.linalg.svd(w, full_matrices=False)
  c = vt @ np.asarray(u, np.float64).reshape(-1)
  if s[0] == 0 or c[0] == 0:
    return float("inf")
  r = s / s[0]
  weights = c**2 * r ** (4 * int(steps) - 2)
  q = float(np.sum(weights[1:] * (1 - r[1:] ** 2)) / np.sum(weights))
  return q / (1 + np.sqrt(1 - q))
