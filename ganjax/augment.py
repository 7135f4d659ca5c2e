"""Differentiable augmentation (DiffAugment) for data-efficient GAN training.

Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training". The same random,
differentiable transformation T is applied to *every* image D sees -- real and generated, in the
discriminator step and in the generator step:

  D step:  D(T(x)),  D(T(G(z)))
  G step:  D(T(G(z)))   (G's gradients flow through T)

Augmenting only the real images would teach G to produce augmented images; the caller must augment
both. Images are NHWC in [-1, 1]; every op draws its parameters per example, is differentiable
with respect to ``x`` and is jit-friendly (no Python loops over the batch, integer shifts done with
gathers). The policy string is parsed at trace time, so it is a static argument under ``jit``.
The public ops are jitted themselves (for eager use); inside a jitted step they are inlined.

Policies (the paper's, Section 3):

* ``color``: :func:`brightness`, then :func:`saturation`, then :func:`contrast`.
* ``translation``: :func:`translation`, shifts of up to 1/8 of the image size, zero padding.
* ``cutout``: :func:`cutout`, a zeroed square of half the image size.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


def _per_example(rng: jax.Array, x: jax.Array, minval: float, maxval: float) -> jax.Array:
  """U[minval, maxval) per example, shaped ``(B, 1, 1, 1)``."""
  return jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype, minval, maxval)


# ----------------------------------------------------------------------------------------------
# Color.


@jax.jit
def brightness(x: jax.Array, rng: jax.Array) -> jax.Array:
  """Random brightness: ``x + b`` with ``b ~ U[-0.5, 0.5)`` per image (the same for all pixels).

  Args:
    x: images ``(B, H, W, C)``.
    rng: key.

  Returns:
    The shifted images (not clipped), same shape and dtype.
  """
  return x + _per_example(rng, x, -0.5, 0.5)


@jax.jit
def saturation(x: jax.Array, rng: jax.Array) -> jax.Array:
  """Random saturation: ``m + s * (x - m)``, ``m`` the per-pixel mean over channels.

  ``s ~ U[0, 2)`` is drawn per image; ``s = 0`` gives grey, ``s > 1`` exaggerates colours.
  Identity on single-channel images.

  Args:
    x: images ``(B, H, W, C)``.
    rng: key.

  Returns:
    The re-saturated images, same shape and dtype.
  """
  mean = jnp.mean(x, axis=3, keepdims=True)
  return mean + _per_example(rng, x, 0.0, 2.0) * (x - mean)


@jax.jit
def contrast(x: jax.Array, rng: jax.Array) -> jax.Array:
  """Random contrast: ``m + s * (x - m)``, ``m`` the mean of the image, ``s ~ U[0.5, 1.5)``.

  ``m`` is the mean over height, width and channels of each image; ``s`` is drawn per image.

  Args:
    x: images ``(B, H, W, C)``.
    rng: key.

  Returns:
    The re-contrasted images, same shape and dtype.
  """
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return mean + _per_example(rng, x, 0.5, 1.5) * (x - mean)


# ----------------------------------------------------------------------------------------------
# Translation.


def _max_shift(size: int, ratio: float) -> int:
  return int(size * ratio + 0.5)


@jax.jit
def translate_by(x: jax.Array, shift_y: jax.Array, shift_x: jax.Array) -> jax.Array:
  """Shifts each image by integer offsets, filling with zeros.

  ``out[b, i, j] = x[b, i - shift_y[b], j - shift_x[b]]`` where that index lies inside the image,
  else 0: positive shifts move the content down and to the right. Implemented as a gather, so the
  gradient with respect to ``x`` is exact.

  Args:
    x: images ``(B, H, W, C)``.
    shift_y: integer shifts ``(B,)`` along the height.
    shift_x: integer shifts ``(B,)`` along the width.

  Returns:
    The shifted images, same shape and dtype.
  """
  b, h, w, _ = x.shape
  rows = jnp.arange(h)[None, :] - jnp.asarray(shift_y)[:, None]  # (B, H)
  cols = jnp.arange(w)[None, :] - jnp.asarray(shift_x)[:, None]  # (B, W)
  valid = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
  gathered = x[
    jnp.arange(b)[:, None, None],
    jnp.clip(rows, 0, h - 1)[:, :, None],
    jnp.clip(cols, 0, w - 1)[:, None, :],
  ]
  return jnp.where(valid[..., None], gathered, jnp.zeros((), x.dtype))


@functools.partial(jax.jit, static_argnames="ratio")
def translation(x: jax.Array, rng: jax.Array, ratio: float = 0.125) -> jax.Array:
  """Random translation by up to ``ratio`` of the image size, with zero padding.

  Shifts are integers drawn uniformly from ``[-m, m]`` with ``m = round(size * ratio)`` (rounding
  halves up), independently per image and per axis; see :func:`translate_by`.

  Args:
    x: images ``(B, H, W, C)``.
    rng: key.
    ratio: the largest shift as a fraction of the image's height (width).

  Returns:
    The translated images, same shape and dtype.
  """
  b, h, w, _ = x.shape
  my, mx = _max_shift(h, ratio), _max_shift(w, ratio)
  ry, rx = jax.random.split(rng)
  shift_y = jax.random.randint(ry, (b,), -my, my + 1)
  shift_x = jax.random.randint(rx, (b,), -mx, mx + 1)
  return translate_by(x, shift_y, shift_x)


# ----------------------------------------------------------------------------------------------
# Cutout.


@functools.partial(jax.jit, static_argnames="size")
def cutout_at(x: jax.Array, top: jax.Array, left: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Zeroes the rectangle ``[top, top + size_h) x [left, left + size_w)`` of each image.

  The part of the rectangle outside the image is ignored (fewer pixels are zeroed when it sticks
  out).

  Args:
    x: images ``(B, H, W, C)``.
    top: integer top rows ``(B,)`` (may be negative).
    left: integer left columns ``(B,)`` (may be negative).
    size: ``(size_h, size_w)``.

  Returns:
    The images with the rectangle set to 0, same shape and dtype.
  """
  _, h, w, _ = x.shape
  top = jnp.asarray(top)[:, None]
  left = jnp.asarray(left)[:, None]
  ys = jnp.arange(h)[None, :]
  xs = jnp.arange(w)[None, :]
  in_rows = (ys >= top) & (ys < top + size[0])  # (B, H)
  in_cols = (xs >= left) & (xs < left + size[1])  # (B, W)
  cut = in_rows[:, :, None] & in_cols[:, None, :]
  return jnp.where(cut[..., None], jnp.zeros((), x.dtype), x)


@functools.partial(jax.jit, static_argnames="ratio")
def cutout(x: jax.Array, rng: jax.Array, ratio: float = 0.5) -> jax.Array:
  """Random cutout: zeroes a square of ``ratio`` of the image size at a random position.

  The square is ``s_h x s_w`` with ``s = round(size * ratio)`` (rounding halves up). Its top-left
  corner is drawn uniformly per image from ``[-(s // 2), size - s + s // 2]`` per axis, i.e. its
  centre lies anywhere in the image, so the square may stick out of the image by up to half its
  size and then zeroes fewer pixels (as in the paper's implementation). See :func:`cutout_at`.

  Args:
    x: images ``(B, H, W, C)``.
    rng: key.
    ratio: the square's side as a fraction of the image's height (width).

  Returns:
    The images with the square zeroed, same shape and dtype.
  """
  b, h, w, _ = x.shape
  sh, sw = _max_shift(h, ratio), _max_shift(w, ratio)
  ry, rx = jax.random.split(rng)
  top = jax.random.randint(ry, (b,), -(sh // 2), h - sh + sh // 2 + 1)
  left = jax.random.randint(rx, (b,), -(sw // 2), w - sw + sw // 2 + 1)
  return cutout_at(x, top, left, (sh, sw))


# ----------------------------------------------------------------------------------------------
# Policies.

POLICIES: dict[str, tuple[AugmentFn, ...]] = {
  "color": (brightness, saturation, contrast),
  "translation": (translation,),
  "cutout": (cutout,),
}
"""The ops each policy name stands for, applied in this order."""


def parse_policy(policy: str) -> tuple[AugmentFn, ...]:
  """The ops of a comma-separated policy (``""`` is the identity); unknown names raise."""
  names = [name.strip() for name in policy.split(",") if name.strip()]
  unknown = [name for name in names if name not in POLICIES]
  if unknown:
    raise ConfigError(
      f"Unknown DiffAugment policy {', '.join(map(repr, unknown))}; "
      f"valid choices: {', '.join(sorted(POLICIES))}."
    )
  return tuple(op for name in names for op in POLICIES[name])


@functools.partial(jax.jit, static_argnames="policy")
def diff_augment(
  x: jax.Array, rng: jax.Array, policy: str = "color,translation,cutout"
) -> jax.Array:
  """DiffAugment: a random, differentiable augmentation T of a batch of images.

  ``T`` is the composition of the policy's ops (see the module docstring), in the order written,
  with parameters drawn independently per example and per op. Apply it to both the real and the
  generated images, in both the D and the G step (Zhao et al. 2020, Section 3.2); use a fresh key
  per call.

  Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training".

  Args:
    x: images ``(B, H, W, C)``, nominally in [-1, 1] (the output is not clipped).
    rng: key.
    policy: comma-separated policy names from ``color``, ``translation``, ``cutout``; ``""`` for
      none. Static under ``jit``.

  Returns:
    The augmented images, same shape and dtype.
  """
  if x.ndim != 4:
    raise ValueError(f"diff_augment expects NHWC images, got shape {x.shape}.")
  ops = parse_policy(policy)
  for i, op in enumerate(ops):
    x = op(x, jax.random.fold_in(rng, i))
  return x
