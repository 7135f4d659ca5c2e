"""Custom-gradient convolution kernels behind the ``"fast"`` ``conv_impl`` of
:mod:`ganjax.models.layers`: a strided convolution and a transposed (input-dilated) convolution
whose output, input gradient and kernel gradient each run on XLA:CPU's fast convolution and GEMM
kernels, never on a convolution of a dilated input.

2-D only, NHWC inputs and HWIO kernels; the layers in :mod:`ganjax.models.layers` flatten extra
batch axes and choose between these and flax's convolutions.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# --- Formulations (2-D, NHWC inputs, HWIO kernels) --------------------------------------------
#
# Two linear maps and their weight gradient cover every strided layer:
#   strided:  y[o] = sum_t k[t] x_pad[s o + t]                 (a convolution with stride s)
#   dilated:  y[o] = sum_t k[t] xd_pad[o + t], xd = x dilated by s (a transposed convolution)
# and each is the other's input gradient (with the kernel flipped and its features swapped):
#   d strided / dx = dilated(g, flip(k)^T),   d dilated / dx = strided(g, flip(k)^T),
#   d strided / dk = weight_grad(x, g),       d dilated / dk = flip(weight_grad(g, x))^T.
# XLA:CPU runs plain and strided convolutions, and the kernel gradient of small feature maps, in
# YNNPACK at near GEMM speed, but convolutions of a dilated input (what autodiff of either map
# produces) in slow generic kernels. `strided_conv` and `dilated_conv` are custom-VJP functions
# whose three passes (output, input gradient, kernel gradient) use only the fast forms.

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
Pads = tuple[tuple[int, int], ...]

# dilated_conv: the sub-pixel form (one convolution) when it multiplies at most this many taps per
# useful one (5x5 stride 2: 36 / 25), else one convolution per output phase (4x4 stride 2: 4 x 4
# taps instead of 36); a GEMM + col2im for at most this many output features.
_SUBPIXEL_MAX_WASTE = 1.5
_COL2IM_MAX_FEATURES = 4
# weight_grad: YNNPACK's convolution for outputs of at most this many pixels with at least this many
# input features; otherwise patches @ cotangent (GEMM) over batch chunks of at most this many
# bytes of patches (smaller temporaries: fewer page faults, better cache use).
_WEIGHT_GRAD_CONV_MAX_PIXELS = 64
_WEIGHT_GRAD_CONV_MIN_FEATURES = 16
_PATCH_CHUNK_BYTES = 8 << 20


def _pad(x: jax.Array, pads: Sequence[tuple[int, int]], interior: Sequence[int] = (0, 0)):
  """Pads (negative: crops) the two spatial axes of ``x``; ``interior`` zeros between pixels."""
  spatial = ((lo, hi, i) for (lo, hi), i in zip(pads, interior, strict=True))
  config = [(0, 0, 0), *spatial, (0, 0, 0)]
  return lax.pad(x, jnp.zeros((), x.dtype), config)


def _plain_conv(x, kernel, strides, pads, precision) -> jax.Array:
  """``lax.conv_general_dilated`` with (possibly negative) padding."""
  if any(lo < 0 or hi < 0 for lo, hi in pads):
    x = _pad(x, [(min(lo, 0), min(hi, 0)) for lo, hi in pads])
    pads = [(max(lo, 0), max(hi, 0)) for lo, hi in pads]
  return lax.conv_general_dilated(
    x, kernel, strides, pads, dimension_numbers=_DIMENSION_NUMBERS, precision=precision
  )


def _flip(kernel: jax.Array) -> jax.Array:
  """The kernel of the input gradient: spatially reversed, input and output features swapped."""
  return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)


def _strided_out(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - kernel) // stride + 1


def _dilated_out(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
  return (size - 1) * stride + 1 + pad[0] + pad[1] - kernel + 1


def _phases(kernel: int, stride: int, pad: tuple[int, int], size: int):
  """One spatial dimension of ``dilated`` split by output phase ``o = stride * q + a``.

  Phase ``a`` meets the taps ``t0, t0 + stride, ...`` with ``t0 = (pad_lo - a) mod stride``, and
  ``y[stride * q + a] = sum_j k[t0 + j * stride] x[q + d0 + j]``: a stride-1 correlation of ``x``
  with the taps. Returns ``([(t0, (lo, hi)) or None per phase], q, out)``: the first tap and the
  padding of each phase's convolution (None where no tap meets an input pixel), the number of
  outputs per phase and the output size (``stride * q`` cropped to it).
  """
  lo = pad[0]
  out = _dilated_out(size, kernel, stride, pad)
  q = -(-out // stride)
  phases = []
  for a in range(stride):
    t0 = (lo - a) % stride
    n = len(range(t0, kernel, stride))
    if n == 0:
      phases.append(None)
      continue
    d0 = (a + t0 - lo) // stride
    phases.append((t0, (-d0, q - 1 + d0 + n - size)))
  return phases, q, out


def _dilated_phase(x, kernel, strides, pads, precision) -> jax.Array:
  """``dilated`` as one stride-1 convolution per output phase (only real taps) + interleave."""
  dims = zip(kernel.shape[:2], strides, pads, x.shape[1:3], strict=True)
  (ph, qh, out_h), (pw, qw, out_w) = (_phases(k, s, p, n) for k, s, p, n in dims)
  batch, features = x.shape[0], kernel.shape[-1]
  rows = []
  for a in ph:
    cols = []
    for b in pw:
      if a is None or b is None:
        cols.append(jnp.zeros((batch, qh, qw, features), x.dtype))
        continue
      taps = kernel[a[0] :: strides[0], b[0] :: strides[1]]
      cols.append(_plain_conv(x, taps, (1, 1), (a[1], b[1]), precision))
    rows.append(jnp.stack(cols, axis=3))  # (B, qh, qw, sw, C)
  y = jnp.stack(rows, axis=2)  # (B, qh, sh, qw, sw, C)
  y = y.reshape(batch, qh * strides[0], qw * strides[1], features)
  return y[:, :out_h, :out_w]


def _subpixel_taps(
  kernel: int, stride: int, pad_lo: int, pad_hi: int, size: int
) -> tuple[np.ndarray, tuple[int, int], int, int]:
  """The sub-pixel decomposition of one spatial dimension of a transposed convolution.

  ``lax.conv_transpose`` computes ``y[o] = sum_t k[t] xd[o + t - pad_lo]`` where ``xd`` is the
  input dilated by ``stride``. For output phase ``a`` (``o = stride * q + a``) only taps
  ``t = (pad_lo - a) mod stride + j * stride`` meet an input pixel, ``x[q + (a + t - pad_lo) /
  stride]``. All phases together read input offsets ``d_min .. d_min + taps - 1``, so
  ``y[stride * q + a] = sum_u kc[u, a] x[q + d_min + u]``: a stride-1 correlation of the undilated
  input with the kernel ``kc``, whose ``stride`` phases become output channels.

  Returns ``(index, (pad_lo, pad_hi), q, out)``: ``index[u, a]`` is the tap of ``k`` at ``kc[u, a]``
  (``kernel`` where no tap contributes: a zero appended to the kernel), the stride-1 convolution's
  input padding (possibly negative), the number of output rows per phase ``q`` and the output size
  ``out`` (``stride * q`` rows are cropped to it).
  """
  out = (size - 1) * stride + 1 + pad_lo + pad_hi - kernel + 1
  q = -(-out // stride)
  offsets = {}  # (phase, tap) -> input offset.
  for a in range(stride):
    for t in range((pad_lo - a) % stride, kernel, stride):
      offsets[a, t] = (a + t - pad_lo) // stride
  d_min, d_max = min(offsets.values()), max(offsets.values())
  index = np.full((d_max - d_min + 1, stride), kernel, np.int32)
  for (a, t), d in offsets.items():
    index[d - d_min, a] = t
  lo = -d_min
  hi = q - 1 + index.shape[0] - size - lo
  return index, (lo, hi), q, out


def subpixel_conv(x, kernel, strides, pads, precision, preferred_element_type=None) -> jax.Array:
  """``dilated`` (any number of spatial dimensions) as one stride-1 convolution + depth-to-space.

  The stride-1 convolution reads the undilated input with ``prod(strides) * features`` output
  channels (see :func:`_subpixel_taps`); its kernel is gathered from ``kernel`` (a static gather of
  a few thousand values).
  """
  n = kernel.ndim - 2
  in_features, features = kernel.shape[-2:]
  taps = [
    _subpixel_taps(k, s, lo, hi, size)
    for k, s, (lo, hi), size in zip(kernel.shape[:n], strides, pads, x.shape[1:-1], strict=True)
  ]
  # kc[u_1, a_1, ..., u_n, a_n, in, out] = kernel[index_1[u_1, a_1], ...], zero past the kernel.
  kc = jnp.pad(kernel, [(0, 1)] * n + [(0, 0), (0, 0)])
  for axis, (index, *_) in enumerate(taps):
    kc = jnp.take(kc, index.reshape(-1), axis=2 * axis)
    kc = kc.reshape(*kc.shape[: 2 * axis], *index.shape, *kc.shape[2 * axis + 1 :])
  # -> (u_1, ..., u_n, in, a_1, ..., a_n, out) -> (u_1, ..., u_n, in, prod(strides) * out).
  perm = (*range(0, 2 * n, 2), 2 * n, *range(1, 2 * n, 2), 2 * n + 1)
  kc = jnp.transpose(kc, perm).reshape(
    *(index.shape[0] for index, *_ in taps), in_features, math.prod(strides) * features
  )
  spatial = "DHW"[3 - n :]
  dimension_numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
  conv_pads = [pad for _, pad, _, _ in taps]
  if any(lo < 0 or hi < 0 for lo, hi in conv_pads):
    config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in conv_pads), (0, 0, 0)]
    x = lax.pad(x, jnp.zeros((), x.dtype), config)
    conv_pads = [(0, 0)] * n
  y = lax.conv_general_dilated(
    x,
    kc,
    (1,) * n,
    conv_pads,
    dimension_numbers=dimension_numbers,
    precision=precision,
    preferred_element_type=preferred_element_type,
  )
  # Depth to space: (B, q_1, ..., q_n, a_1, ..., a_n, out) -> (B, q_1 a_1, ..., q_n a_n, out).
  batch = y.shape[0]
  y = y.reshape(batch, *y.shape[1 : n + 1], *strides, features)
  perm = (0, *(i for d in range(n) for i in (1 + d, 1 + n + d)), 2 * n + 1)
  y = jnp.transpose(y, perm).reshape(
    batch, *(q * s for (_, _, q, _), s in zip(taps, strides, strict=True)), features
  )
  return y[(slice(None), *(slice(0, out) for *_, out in taps))]


def _dilated_col2im(x, kernel, strides, pads, precision) -> jax.Array:
  """``dilated`` as one GEMM ``x @ kernel`` (every tap) + col2im (a sum of strided pads)."""
  batch, height, width, in_features = x.shape
  kh, kw, _, features = kernel.shape
  sizes = zip((height, width), (kh, kw), strides, pads, strict=True)
  out = [_dilated_out(n, k, s, p) for n, k, s, p in sizes]
  # Contractions keep the batch axis apart (no reshape merges a possibly sharded batch axis).
  cols = jnp.einsum(
    "bhwc,cf->bhwf",
    x,
    jnp.transpose(kernel, (2, 0, 1, 3)).reshape(in_features, kh * kw * features),
    precision=precision,
  ).reshape(batch, height, width, kh, kw, features)
  y = None
  for i in range(kh):
    for j in range(kw):
      # x[h] * k[i] lands on o = s h + pad_lo - i.
      placed = []
      for n, t, s, (lo, _), o in zip((height, width), (i, j), strides, pads, out, strict=True):
        placed.append((lo - t, o - (s * (n - 1) + 1) - (lo - t)))
      term = _pad(cols[:, :, :, i, j], placed, (strides[0] - 1, strides[1] - 1))
      y = term if y is None else y + term
  return y


def _dilated_forward(x, kernel, strides, pads, precision) -> jax.Array:
  """``dilated`` by the fastest formulation on XLA:CPU (see the constants above)."""
  if kernel.shape[-1] <= _COL2IM_MAX_FEATURES:
    return _dilated_col2im(x, kernel, strides, pads, precision)
  dims = zip(kernel.shape[:2], strides, pads, x.shape[1:3], strict=True)
  subpixel_taps = math.prod(_subpixel_taps(k, s, *p, n)[0].size for k, s, p, n in dims)
  if subpixel_taps <= _SUBPIXEL_MAX_WASTE * kernel.shape[0] * kernel.shape[1]:
    return subpixel_conv(x, kernel, strides, pads, precision)
  return _dilated_phase(x, kernel, strides, pads, precision)


def _weight_grad_gemm(x, g, kernel_size, strides, pads, precision) -> jax.Array:
  """``weight_grad`` as patches(x)^T @ g, accumulated over batch chunks (``lax.scan``)."""
  kh, kw = kernel_size
  batch, in_features, features = x.shape[0], x.shape[-1], g.shape[-1]
  out_h, out_w = g.shape[1:3]
  patch_bytes = g[..., :1].size * kh * kw * in_features * x.dtype.itemsize
  chunks = 1
  while patch_bytes // chunks > _PATCH_CHUNK_BYTES and batch % (2 * chunks) == 0:
    chunks *= 2
  if _explicitly_sharded_batch(x):  # Splitting the batch axis would need a resharding.
    chunks = 1

  def chunk_grad(xc, gc):
    xp = _pad(xc, pads)
    cols = [
      xp[
        :,
        i : i + strides[0] * (out_h - 1) + 1 : strides[0],
        j : j + strides[1] * (out_w - 1) + 1 : strides[1],
      ]
      for i in range(kh)
      for j in range(kw)
    ]
    cols = jnp.concatenate(cols, axis=-1)
    contract = (0, 1, 2)
    return lax.dot_general(cols, gc, ((contract, contract), ((), ())), precision=precision)

  if chunks == 1:
    dk = chunk_grad(x, g)
  else:
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)

    def body(acc, xg):
      return acc + chunk_grad(*xg).astype(acc_dtype), None

    xs = x.reshape(chunks, batch // chunks, *x.shape[1:])
    gs = g.reshape(chunks, batch // chunks, *g.shape[1:])
    # The first chunk starts the sum (so it has the type of the others, e.g. in shard_map).
    acc = chunk_grad(xs[0], gs[0]).astype(acc_dtype)
    dk = lax.scan(body, acc, (xs[1:], gs[1:]))[0].astype(x.dtype)
  return dk.reshape(kh, kw, in_features, features)


def _explicitly_sharded_batch(x) -> bool:
  """Whether ``x``'s batch axis is sharded over an explicit mesh axis (sharding in types)."""
  sharding = getattr(jax.typeof(x), "sharding", None)
  spec = getattr(sharding, "spec", None)
  return bool(spec) and spec[0] is not None


def weight_grad(x, g, kernel_size, strides, pads, precision=None) -> jax.Array:
  """Kernel gradient of ``strided``: ``dk[t] = sum_{b, o} x_pad[b, s o + t] (x) g[b, o]``."""
  out_pixels = g.shape[1] * g.shape[2]
  if out_pixels <= _WEIGHT_GRAD_CONV_MAX_PIXELS and x.shape[-1] >= _WEIGHT_GRAD_CONV_MIN_FEATURES:
    shape = (*kernel_size, x.shape[-1], g.shape[-1])
    zeros = jnp.zeros(shape, x.dtype)
    _, vjp = jax.vjp(lambda k: _plain_conv(x, k, strides, pads, precision), zeros)
    return vjp(g)[0]
  return _weight_grad_gemm(x, g, kernel_size, strides, pads, precision)


def _like(grad: jax.Array, primal: jax.Array) -> jax.Array:
  """``grad`` summed over the manual mesh axes it varies over but ``primal`` does not.

  Inside ``jax.shard_map`` with ``check_vma=True``, the gradient of a replicated kernel applied to
  per-device data is summed over devices (the transpose of the implicit ``pvary``), as lax's own
  convolution gradients are.
  """
  extra = _varying(grad) - _varying(primal)
  return lax.psum(grad, tuple(sorted(extra))) if extra else grad


def _varying(x: jax.Array) -> frozenset:
  """The manual mesh axes over which ``x`` varies (empty outside ``shard_map``)."""
  aval = jax.typeof(x)
  axis_type = getattr(aval, "manual_axis_type", None)
  return frozenset(getattr(axis_type, "varying", None) or getattr(aval, "vma", ()))


def _transpose_of_strided(size, kernel, stride, pad, out) -> tuple[int, int]:
  """Padding of ``dilated`` computing the input gradient of ``strided`` (lax's own rule)."""
  lo = kernel - 1 - pad[0]
  return lo, size - 1 + pad[0] - stride * (out - 1)


def _transpose_of_dilated(size, kernel, stride, pad, out) -> tuple[int, int]:
  """Padding of ``strided`` computing the input gradient of ``dilated``."""
  lo = kernel - 1 - pad[0]
  return lo, stride * (size - 1) + 1 + pad[0] - out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def strided_conv(x, kernel, strides: tuple[int, int], pads: Pads, precision=None) -> jax.Array:
  """``lax.conv_general_dilated(x, kernel, strides, pads)`` (NHWC, HWIO) with fast gradients."""
  return _plain_conv(x, kernel, strides, pads, precision)


def _strided_conv_fwd(x, kernel, strides, pads, precision):
  return strided_conv(x, kernel, strides, pads, precision), (x, kernel)


def _strided_conv_bwd(strides, pads, precision, residuals, g):
  x, kernel = residuals
  dims = zip(x.shape[1:3], kernel.shape[:2], strides, pads, g.shape[1:3], strict=True)
  pads_t = tuple(_transpose_of_strided(*dim) for dim in dims)
  dx = dilated_conv(g, _flip(kernel), strides, pads_t, precision)
  dk = weight_grad(x, g, kernel.shape[:2], strides, pads, precision)
  return _like(dx, x), _like(dk, kernel)


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def dilated_conv(x, kernel, strides: tuple[int, int], pads: Pads, precision=None) -> jax.Array:
  """``lax.conv_general_dilated(x, kernel, 1, pads, lhs_dilation=strides)``, fast on XLA:CPU.

  With ``pads`` from :func:`conv_transpose_padding` this is ``lax.conv_transpose``.
  """
  return _dilated_forward(x, kernel, strides, pads, precision)


def _dilated_conv_fwd(x, kernel, strides, pads, precision):
  return dilated_conv(x, kernel, strides, pads, precision), (x, kernel)


def _dilated_conv_bwd(strides, pads, precision, residuals, g):
  x, kernel = residuals
  dims = zip(x.shape[1:3], kernel.shape[:2], strides, pads, g.shape[1:3], strict=True)
  pads_t = tuple(_transpose_of_dilated(*dim) for dim in dims)
  dx = strided_conv(g, _flip(kernel), strides, pads_t, precision)
  dk = _flip(weight_grad(g, x, kernel.shape[:2], strides, pads_t, precision))
  return _like(dx, x), _like(dk, kernel)


dilated_conv.defvjp(_dilated_conv_fwd, _dilated_conv_bwd)


# --- Modules ---------------------------------------------------------------------------------
