"""Building blocks shared by the architectures in ``ganjax.models``.

Convolutions are built through :func:`conv` and :func:`conv_transpose` (never ``nn.Conv``
directly in a model) so that another formulation of the same layer, e.g. a faster one for the
CPU, can be swapped in here, in one place, selected by a model's ``conv_impl`` field
(:data:`CONV_IMPLS`):

* ``"xla"``: flax's ``nn.Conv`` / ``nn.ConvTranspose``, lowered by XLA (cuDNN on GPU).
* ``"subpixel"``: transposed convolutions with stride > 1 are computed as one stride-1 convolution
  over the undilated input with ``prod(strides) * features`` output channels, followed by
  depth-to-space (:class:`ConvTranspose`). Same parameters, same outputs. XLA:CPU computes the
  kernel gradient of a stride-2 transposed convolution (a convolution of the stride-dilated input)
  at ~10 GFLOP/s; the stride-1 form runs on its fast convolution kernels. Plain convolutions and
  stride-1 transposed convolutions use the ``"xla"`` path.
* ``"auto"``: ``"subpixel"`` when ``jax.default_backend() == "cpu"``, ``"xla"`` otherwise.

The implementations share parameter names and shapes, so ``conv_impl`` can be switched freely
between initialisation, training and restoring a checkpoint.

All helpers must be called from inside a ``@nn.compact`` method: the modules they return are
attached to (and auto-named by) the calling module.

Random draws (initialisers, dropout masks) are made as flat vectors and reshaped. With JAX's default
partitionable Threefry, XLA:CPU takes seconds to compile a draw of a 4-d shape (e.g. a conv kernel)
but a fraction of a second for the same number of values in 1-d; the distribution is the same.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ganjax.errors import ConfigError

Initializer = Callable[..., jax.Array]
Padding = str | Sequence[tuple[int, int]]

# Implementations of conv / conv_transpose (see the module docstring). Add a name here together
# with its code below.
CONV_IMPLS = ("xla", "subpixel", "fast", "auto")

# Computation dtypes of the models (``dtype`` fields); parameters are always float32.
DTYPES = ("float32", "bfloat16")

# BatchNorm hyperparameters used by every model: flax's defaults, which equal PyTorch's
# (momentum 0.1 in PyTorch's convention = 0.9 here; eps 1e-5), the framework of the DCGAN reference
# code. Keras (the TensorFlow DCGAN tutorial) uses momentum 0.99 and eps 1e-3; the difference only
# affects the running averages used at evaluation time.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_choice(what: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ``ValueError`` naming ``value`` and the valid ``choices`` when it is not one of them."""
  if value not in choices:
    raise ConfigError(f"Unknown {what} {value!r}; valid choices: {', '.join(map(str, choices))}.")


def normal(stddev: float, mean: float = 0.0) -> Initializer:
  """Initialiser N(mean, stddev^2), drawn flat (see the module docstring)."""

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    values = jax.random.normal(key, (math.prod(shape),), dtype)
    return (mean + stddev * values).reshape(shape)

  return init


def variance_scaling(scale: float, mode: str, distribution: str) -> Initializer:
  """Kernel initialiser with variance ``scale / fan``, drawn flat; flax's conventions.

  For a kernel of shape ``(*receptive_field, fan_in_features, fan_out_features)`` the fans are the
  feature counts times the receptive field size; ``mode`` picks ``fan_in``, ``fan_out`` or their
  mean (``fan_avg``); ``distribution`` is ``truncated_normal`` (at two standard deviations,
  rescaled to keep the variance), ``normal`` or ``uniform``.
  """
  check_choice("mode", mode, ("fan_in", "fan_out", "fan_avg"))
  check_choice("distribution", distribution, ("truncated_normal", "normal", "uniform"))

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    if len(shape) < 2:
      raise ValueError(f"variance_scaling needs a kernel of rank >= 2, got shape {tuple(shape)}.")
    receptive_field = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive_field, shape[-1] * receptive_field
    fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
    variance = scale / fan
    size = (math.prod(shape),)
    if distribution == "truncated_normal":
      # Standard deviation of a unit normal truncated to [-2, 2].
      stddev = math.sqrt(variance) / 0.87962566103423978
      values = stddev * jax.random.truncated_normal(key, -2.0, 2.0, size, dtype)
    elif distribution == "normal":
      values = math.sqrt(variance) * jax.random.normal(key, size, dtype)
    else:
      limit = math.sqrt(3.0 * variance)
      values = jax.random.uniform(key, size, dtype, -limit, limit)
    return values.reshape(shape)

  return init


def lecun_normal() -> Initializer:
  """flax's default kernel initialiser (truncated normal, variance 1 / fan_in), drawn flat."""
  return variance_scaling(1.0, "fan_in", "truncated_normal")


def glorot_uniform() -> Initializer:
  """Keras' default kernel initialiser (Glorot & Bengio 2010, uniform, variance 1 / fan_avg)."""
  return variance_scaling(1.0, "fan_avg", "uniform")


def dcgan_init(stddev: float = 0.02) -> Initializer:
  """Weight initialiser N(0, stddev^2) of Radford et al. 2016 (DCGAN), section 4.

  Reference: Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
  Generative Adversarial Networks", ICLR 2016, arXiv:1511.06434.
  """
  return normal(stddev)


def dcgan_scale_init(stddev: float = 0.02) -> Initializer:
  """BatchNorm scale initialiser N(1, stddev^2), the companion of :func:`dcgan_init`."""
  return normal(stddev, mean=1.0)


# Defaults of the helpers below.
_LECUN_NORMAL = lecun_normal()
_ZEROS = nn.initializers.zeros_init()
_ONES = nn.initializers.ones_init()


class Dropout(nn.Module):
  """Inverted dropout, as ``nn.Dropout``, with its mask drawn flat (see the module docstring).

  Zeroes each value with probability ``rate`` and scales the rest by ``1 / (1 - rate)``; the mask
  comes from the ``"dropout"`` rng stream. The identity when ``deterministic`` or ``rate == 0``.
  """

  rate: float

  @nn.compact
  def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep_prob = 1.0 - self.rate
    keep = jax.random.bernoulli(self.make_rng("dropout"), keep_prob, (x.size,)).reshape(x.shape)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))


def resolve_conv_impl(impl: str) -> str:
  """Validates ``impl`` and resolves ``"auto"``: ``"fast"`` on the CPU, ``"xla"`` elsewhere."""
  check_choice("conv_impl", impl, CONV_IMPLS)
  if impl == "auto":
    return "fast" if jax.default_backend() == "cpu" else "xla"
  return impl


def resolve_dtype(dtype: Any) -> Any:
  """The computation dtype named by ``dtype`` (one of :data:`DTYPES`); ``None`` stays ``None``."""
  if dtype is None:
    return None
  name = jnp.dtype(dtype).name if not isinstance(dtype, str) else dtype
  check_choice("dtype", name, DTYPES)
  return jnp.dtype(name)


def conv_transpose_padding(
  kernel: int, stride: int, padding: str | tuple[int, int]
) -> tuple[int, int]:
  """Padding (low, high) of the stride-dilated input that ``lax.conv_transpose`` uses.

  A copy of ``jax._src.lax.convolution._conv_transpose_padding`` for ``"SAME"`` and ``"VALID"``;
  explicit ``(low, high)`` pairs are used as given (``lax.conv_transpose``'s default
  ``use_consistent_padding=False``), as ``nn.ConvTranspose`` passes them.
  """
  if isinstance(padding, str):
    if padding == "SAME":
      pad_len = kernel + stride - 2
      pad_lo = kernel - 1 if stride > kernel - 1 else math.ceil(pad_len / 2)
    elif padding == "VALID":
      pad_len = kernel + stride - 2 + max(kernel - stride, 0)
      pad_lo = kernel - 1
    else:
      raise ValueError(f"Invalid padding {padding!r}; expected 'SAME', 'VALID' or (lo, hi) pairs.")
    return pad_lo, pad_len - pad_lo
  lo, hi = padding
  return int(lo), int(hi)


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


def _subpixel_conv(x, kernel, strides, pads, precision, preferred_element_type=None) -> jax.Array:
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
    return _subpixel_conv(x, kernel, strides, pads, precision)
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


def _flatten_batch(inputs: jax.Array, n: int):
  """Inputs with exactly one batch axis, and the function restoring the original batch axes."""
  batch_shape = inputs.shape[: inputs.ndim - n - 1]
  if len(batch_shape) == 1:
    return inputs, lambda y: y
  flat = jnp.reshape(inputs, (-1, *inputs.shape[len(batch_shape) :]))
  return flat, lambda y: jnp.reshape(y, (*batch_shape, *y.shape[1:]))


def _tuple(value, n: int) -> tuple[int, ...]:
  value = 1 if value is None else value
  return (value,) * n if isinstance(value, int) else tuple(value)


class Conv(nn.Conv):
  """``nn.Conv`` with the fast CPU formulations of ``impl="fast"`` (see :data:`CONV_IMPLS`).

  Same attributes, parameters and outputs as ``nn.Conv``; the class is named like flax's so that
  auto-named submodules (``Conv_0``, ...) and hence checkpoints do not depend on ``impl``. With
  ``"fast"`` a strided 2-D convolution is :func:`strided_conv` (its gradients avoid XLA:CPU's slow
  convolutions of dilated inputs) and a ``"VALID"`` kernel covering the whole input is a dense
  layer; everything else (and ``impl="xla"``) is flax's own path.
  """

  impl: str = "fast"

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = _tuple(self.kernel_size, 1)
    n = len(kernel_size)
    strides = _tuple(self.strides, n)
    padding = nn.linear.canonicalize_padding(self.padding, n)
    if (
      self.impl != "fast"
      or n != 2
      or any(d != 1 for d in _tuple(self.input_dilation, n) + _tuple(self.kernel_dilation, n))
      or self.feature_group_count != 1
      or padding in ("CIRCULAR", "REFLECT", "CAUSAL")
      or self.conv_general_dilated is not None
      or self.conv_general_dilated_cls is not None
    ):
      return super().__call__(inputs)
    inputs, restore = _flatten_batch(inputs, n)
    spatial = inputs.shape[1:3]
    if isinstance(padding, str):
      pads = tuple(lax.padtype_to_pads(spatial, kernel_size, strides, padding))
    else:
      pads = tuple(padding)
    pads = tuple((int(lo), int(hi)) for lo, hi in pads)
    dense = padding == "VALID" and tuple(spatial) == kernel_size
    if not dense and all(s == 1 for s in strides):
      return restore(super().__call__(inputs))

    kernel, bias, inputs = _params(self, inputs, (*kernel_size, inputs.shape[-1], self.features))
    if dense:  # One output pixel: a matrix product.
      y = jnp.dot(
        inputs.reshape(inputs.shape[0], -1),
        kernel.reshape(-1, self.features),
        precision=self.precision,
      )
      y = y.reshape(inputs.shape[0], 1, 1, self.features)
    else:
      y = strided_conv(inputs, kernel, strides, pads, self.precision)
    if bias is not None:
      y += bias.reshape(1, 1, 1, -1)
    return restore(y)


def _params(module, inputs, kernel_shape):
  """The kernel (masked) and bias of a conv module, promoted with the inputs to its dtype."""
  if module.mask is not None and module.mask.shape != kernel_shape:
    raise ValueError(
      "Mask needs to have the same shape as weights. "
      f"Shapes are: {module.mask.shape}, {kernel_shape}"
    )
  kernel = module.param("kernel", module.kernel_init, kernel_shape, module.param_dtype)
  if module.mask is not None:
    kernel *= module.mask
  bias = (
    module.param("bias", module.bias_init, (module.features,), module.param_dtype)
    if module.use_bias
    else None
  )
  inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias, dtype=module.dtype)
  return kernel, bias, inputs


class ConvTranspose(nn.ConvTranspose):
  """``nn.ConvTranspose`` computed by a faster formulation when a stride exceeds 1.

  Same attributes, parameters (``kernel`` of shape ``(*kernel_size, in_features, features)``,
  ``bias``) and outputs as ``nn.ConvTranspose`` with ``transpose_kernel=False``; padding
  ``"SAME"``, ``"VALID"`` or explicit pairs. The class is named like flax's so that auto-named
  submodules (``ConvTranspose_0``, ...) and hence checkpoints do not depend on ``impl``:

  * ``"subpixel"``: one stride-1 convolution over the undilated input with ``prod(strides) *
    features`` output channels, rearranged depth-to-space (:func:`_subpixel_taps`); gradients by
    autodiff. It multiplies some zero taps (5x5 stride 2: 36 taps per input pixel instead of 25;
    4x4 stride 2: 36 instead of 16) but runs on XLA:CPU's fast stride-1 kernels. Any rank.
  * ``"fast"`` (2-D): :func:`dilated_conv`, whose forward pass picks the sub-pixel form, one
    convolution per output phase or a GEMM + col2im, and whose gradients are a strided
    convolution and :func:`weight_grad`. A ``"VALID"`` layer on a 1x1 input (the DCGAN
    generator's first layer) is a dense layer.

  Stride 1, kernel dilation, ``"CIRCULAR"`` padding, ``transpose_kernel=True`` and
  ``impl="xla"`` use flax's own path.
  """

  impl: str = "subpixel"

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = _tuple(self.kernel_size, 1)
    n = len(kernel_size)
    strides, dilation = _tuple(self.strides, n), _tuple(self.kernel_dilation, n)
    padding = nn.linear.canonicalize_padding(self.padding, n)
    size = inputs.shape[inputs.ndim - n - 1 : -1]
    fast = self.impl == "fast" and n == 2 and self.preferred_element_type is None
    dense = fast and padding == "VALID" and all(d == 1 for d in size)
    if (
      self.impl not in ("subpixel", "fast")
      or (all(s == 1 for s in strides) and not dense)
      or n > 3
      or any(d != 1 for d in dilation)
      or self.transpose_kernel
      or padding == "CIRCULAR"
    ):
      return super().__call__(inputs)

    inputs, restore = _flatten_batch(inputs, n)
    kernel, bias, inputs = _params(self, inputs, (*kernel_size, inputs.shape[-1], self.features))
    pads = [padding] * n if isinstance(padding, str) else padding
    dims = zip(kernel_size, strides, pads, strict=True)
    pads = tuple(conv_transpose_padding(k, s, p) for k, s, p in dims)
    if dense:  # y[o] = k[K - 1 - o] x: a matrix product with the flipped kernel.
      flipped = jnp.transpose(kernel[::-1, ::-1], (2, 0, 1, 3)).reshape(inputs.shape[-1], -1)
      y = jnp.dot(inputs.reshape(inputs.shape[0], -1), flipped, precision=self.precision)
      y = y.reshape(inputs.shape[0], *kernel_size, self.features)
    elif fast:
      y = dilated_conv(inputs, kernel, strides, pads, self.precision)
    else:
      y = _subpixel_conv(inputs, kernel, strides, pads, self.precision, self.preferred_element_type)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return restore(y)


def conv(
  features: int,
  kernel_size: int,
  stride: int = 1,
  padding: Padding = "SAME",
  *,
  use_bias: bool = True,
  kernel_init: Initializer = _LECUN_NORMAL,
  bias_init: Initializer = _ZEROS,
  impl: str = "xla",
  dtype: Any = None,
) -> nn.Module:
  """A square 2-D convolution over NHWC inputs.

  With ``padding="SAME"`` the output size is ``ceil(input / stride)``; e.g. kernel 4, stride 2 pads
  one pixel on each side (PyTorch's ``padding=1``) and halves even sizes exactly.

  ``impl`` (see :data:`CONV_IMPLS`): ``"fast"`` (and ``"auto"`` on the CPU) is :class:`Conv`,
  ``"xla"`` and ``"subpixel"`` are ``nn.Conv``; parameters and outputs are the same. ``dtype`` is
  the computation dtype (see :data:`DTYPES`; parameters stay float32).
  """
  impl = resolve_conv_impl(impl)
  kw = dict(impl="fast") if impl == "fast" else {}
  return (Conv if impl == "fast" else nn.Conv)(
    features,
    kernel_size=(kernel_size, kernel_size),
    strides=(stride, stride),
    padding=padding,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=bias_init,
    dtype=resolve_dtype(dtype),
    **kw,
  )


def conv_transpose(
  features: int,
  kernel_size: int,
  stride: int = 1,
  padding: Padding = "SAME",
  *,
  use_bias: bool = True,
  kernel_init: Initializer = _LECUN_NORMAL,
  bias_init: Initializer = _ZEROS,
  impl: str = "xla",
  dtype: Any = None,
) -> nn.Module:
  """A square 2-D transposed ("fractionally strided") convolution over NHWC inputs.

  flax's ``nn.ConvTranspose`` follows ``jax.lax.conv_transpose``: ``"SAME"`` gives an output of
  exactly ``input * stride`` (for kernel 4, stride 2 it pads the dilated input by 2 on each side,
  which is PyTorch's ``ConvTranspose2d(k=4, s=2, padding=1)``; for kernel 5, stride 2 by (3, 2)),
  and ``"VALID"`` gives ``(input - 1) * stride + kernel`` (1x1 -> 4x4 for kernel 4). Integer padding
  pairs are *not* PyTorch's: they pad the stride-dilated input directly. The kernel is not flipped
  (``transpose_kernel=False``), a reparametrisation that does not matter for learned weights.

  ``impl`` (see :data:`CONV_IMPLS`): ``"subpixel"`` and ``"fast"`` are :class:`ConvTranspose`,
  ``"xla"`` is ``nn.ConvTranspose`` (``lax.conv_transpose``); ``"auto"`` picks ``"fast"`` on the
  CPU. Parameters and outputs are the same. ``dtype``: the computation dtype, as for :func:`conv`.
  """
  impl = resolve_conv_impl(impl)
  kw = dict(impl=impl) if impl != "xla" else {}
  return (nn.ConvTranspose if impl == "xla" else ConvTranspose)(
    features,
    kernel_size=(kernel_size, kernel_size),
    strides=(stride, stride),
    padding=padding,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=bias_init,
    dtype=resolve_dtype(dtype),
    **kw,
  )


def dense(
  features: int,
  *,
  use_bias: bool = True,
  kernel_init: Initializer = _LECUN_NORMAL,
  bias_init: Initializer = _ZEROS,
  dtype: Any = None,
) -> nn.Dense:
  """A dense layer (``nn.Dense``) computing in ``dtype`` (see :data:`DTYPES`)."""
  return nn.Dense(
    features,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=bias_init,
    dtype=resolve_dtype(dtype),
  )


def batch_norm(train: bool, *, scale_init: Initializer = _ONES, dtype: Any = None) -> nn.BatchNorm:
  """BatchNorm over all but the last axis; batch statistics in train mode, running ones otherwise.

  Running averages live in the ``"batch_stats"`` collection (momentum :data:`BN_MOMENTUM`), which
  the caller marks mutable in train mode. With a ``dtype`` of bfloat16 the output is bfloat16;
  flax computes the statistics in float32 and keeps parameters and running averages float32.
  """
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=BN_MOMENTUM,
    epsilon=BN_EPSILON,
    scale_init=scale_init,
    dtype=resolve_dtype(dtype),
  )
