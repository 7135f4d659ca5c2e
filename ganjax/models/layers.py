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

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Initializer = Callable[..., jax.Array]
Padding = str | Sequence[tuple[int, int]]

# Implementations of conv / conv_transpose (see the module docstring). Add a name here together
# with its code below.
CONV_IMPLS = ("xla", "subpixel", "auto")

# BatchNorm hyperparameters used by every model: flax's defaults, which equal PyTorch's
# (momentum 0.1 in PyTorch's convention = 0.9 here; eps 1e-5), the framework of the DCGAN reference
# code. Keras (the TensorFlow DCGAN tutorial) uses momentum 0.99 and eps 1e-3; the difference only
# affects the running averages used at evaluation time.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def check_choice(what: str, value: Any, choices: Sequence[Any]) -> None:
  """Raises ``ValueError`` naming ``value`` and the valid ``choices`` when it is not one of them."""
  if value not in choices:
    raise ValueError(f"Unknown {what} {value!r}; valid choices: {', '.join(map(str, choices))}.")


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
  """Validates ``impl`` and resolves ``"auto"``: ``"subpixel"`` on the CPU, ``"xla"`` elsewhere."""
  check_choice("conv_impl", impl, CONV_IMPLS)
  if impl == "auto":
    return "subpixel" if jax.default_backend() == "cpu" else "xla"
  return impl


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


class ConvTranspose(nn.ConvTranspose):
  """``nn.ConvTranspose`` computed by the sub-pixel decomposition when a stride exceeds 1.

  Same attributes, parameters (``kernel`` of shape ``(*kernel_size, in_features, features)``,
  ``bias``) and outputs as ``nn.ConvTranspose`` with ``transpose_kernel=False``; padding
  ``"SAME"``, ``"VALID"`` or explicit pairs. The class is named like flax's so that auto-named
  submodules (``ConvTranspose_0``, ...) and hence checkpoints do not depend on ``conv_impl``.

  With strides ``s`` the layer runs one stride-1 ``lax.conv_general_dilated`` over the undilated
  input with ``prod(s) * features`` output channels and rearranges them depth-to-space (see
  :func:`_subpixel_taps`). The kernel of that convolution is gathered from the parameter inside
  the forward pass (a static gather of a few thousand values). Compared with the direct form it
  multiplies some zero taps (for 5x5 stride 2: 36 taps per input pixel instead of 25; 4x4 stride
  2: 36 instead of 16), but XLA:CPU runs its forward and both gradients with fast stride-1
  kernels. Stride 1, kernel dilation, ``"CIRCULAR"`` padding and ``transpose_kernel=True`` use
  flax's own path.
  """

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    kernel_size = (
        (self.kernel_size,) if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    )
    n = len(kernel_size)

    def broadcast(x):
      x = 1 if x is None else x
      return (x,) * n if isinstance(x, int) else tuple(x)

    strides, dilation = broadcast(self.strides), broadcast(self.kernel_dilation)
    padding = nn.linear.canonicalize_padding(self.padding, n)
    if (
        all(s == 1 for s in strides)
        or n > 3
        or any(d != 1 for d in dilation)
        or self.transpose_kernel
        or padding == "CIRCULAR"
    ):
      return super().__call__(inputs)

    batch_shape = inputs.shape[: inputs.ndim - n - 1]
    if len(batch_shape) != 1:
      inputs = jnp.reshape(inputs, (-1, *inputs.shape[len(batch_shape) :]))
    in_features = inputs.shape[-1]
    kernel_shape = (*kernel_size, in_features, self.features)
    if self.mask is not None and self.mask.shape != kernel_shape:
      raise ValueError(
          "Mask needs to have the same shape as weights. "
          f"Shapes are: {self.mask.shape}, {kernel_shape}"
      )
    kernel = self.param("kernel", self.kernel_init, kernel_shape, self.param_dtype)
    if self.mask is not None:
      kernel *= self.mask
    bias = (
        self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        if self.use_bias
        else None
    )
    inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)

    pads = [padding] * n if isinstance(padding, str) else padding
    taps = [
        _subpixel_taps(k, s, *conv_transpose_padding(k, s, p), size)
        for k, s, p, size in zip(kernel_size, strides, pads, inputs.shape[1:-1])
    ]
    # kc[u_1, a_1, ..., u_n, a_n, in, out] = kernel[index_1[u_1, a_1], ...], zero past the kernel.
    kc = jnp.pad(kernel, [(0, 1)] * n + [(0, 0), (0, 0)])
    for axis, (index, *_) in enumerate(taps):
      kc = jnp.take(kc, index.reshape(-1), axis=2 * axis)
      kc = kc.reshape(*kc.shape[: 2 * axis], *index.shape, *kc.shape[2 * axis + 1 :])
    # -> (u_1, ..., u_n, in, a_1, ..., a_n, out) -> (u_1, ..., u_n, in, prod(strides) * out).
    perm = (*range(0, 2 * n, 2), 2 * n, *range(1, 2 * n, 2), 2 * n + 1)
    kc = jnp.transpose(kc, perm).reshape(
        *(index.shape[0] for index, *_ in taps), in_features, math.prod(strides) * self.features
    )
    spatial = "DHW"[3 - n :]
    dimension_numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    conv_pads = [pad for _, pad, _, _ in taps]
    if any(lo < 0 or hi < 0 for lo, hi in conv_pads):
      config = [(0, 0, 0), *((lo, hi, 0) for lo, hi in conv_pads), (0, 0, 0)]
      inputs = lax.pad(inputs, jnp.zeros((), inputs.dtype), config)
      conv_pads = [(0, 0)] * n
    y = lax.conv_general_dilated(
        inputs,
        kc,
        (1,) * n,
        conv_pads,
        dimension_numbers=dimension_numbers,
        precision=self.precision,
        preferred_element_type=self.preferred_element_type,
    )
    # Depth to space: (B, q_1, ..., q_n, a_1, ..., a_n, out) -> (B, q_1 a_1, ..., q_n a_n, out).
    batch = y.shape[0]
    y = y.reshape(batch, *y.shape[1 : n + 1], *strides, self.features)
    perm = (0, *(i for d in range(n) for i in (1 + d, 1 + n + d)), 2 * n + 1)
    y = jnp.transpose(y, perm).reshape(
        batch, *(q * s for (_, _, q, _), s in zip(taps, strides)), self.features
    )
    y = y[(slice(None), *(slice(0, out) for *_, out in taps))]
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    if len(batch_shape) != 1:
      y = jnp.reshape(y, (*batch_shape, *y.shape[1:]))
    return y


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
) -> nn.Module:
  """A square 2-D convolution over NHWC inputs.

  With ``padding="SAME"`` the output size is ``ceil(input / stride)``; e.g. kernel 4, stride 2 pads
  one pixel on each side (PyTorch's ``padding=1``) and halves even sizes exactly.

  ``impl`` (see :data:`CONV_IMPLS`) is validated; every implementation uses ``nn.Conv``.
  """
  resolve_conv_impl(impl)
  return nn.Conv(
      features,
      kernel_size=(kernel_size, kernel_size),
      strides=(stride, stride),
      padding=padding,
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=bias_init,
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
) -> nn.Module:
  """A square 2-D transposed ("fractionally strided") convolution over NHWC inputs.

  flax's ``nn.ConvTranspose`` follows ``jax.lax.conv_transpose``: ``"SAME"`` gives an output of
  exactly ``input * stride`` (for kernel 4, stride 2 it pads the dilated input by 2 on each side,
  which is PyTorch's ``ConvTranspose2d(k=4, s=2, padding=1)``; for kernel 5, stride 2 by (3, 2)),
  and ``"VALID"`` gives ``(input - 1) * stride + kernel`` (1x1 -> 4x4 for kernel 4). Integer padding
  pairs are *not* PyTorch's: they pad the stride-dilated input directly. The kernel is not flipped
  (``transpose_kernel=False``), a reparametrisation that does not matter for learned weights.

  ``impl`` (see :data:`CONV_IMPLS`): ``"subpixel"`` computes a strided layer by the sub-pixel
  decomposition (:class:`ConvTranspose`), ``"xla"`` with ``lax.conv_transpose``, ``"auto"`` picks
  ``"subpixel"`` on the CPU. Parameters and outputs are the same.
  """
  impl = resolve_conv_impl(impl)
  module = ConvTranspose if impl == "subpixel" else nn.ConvTranspose
  return module(
      features,
      kernel_size=(kernel_size, kernel_size),
      strides=(stride, stride),
      padding=padding,
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=bias_init,
  )


def batch_norm(
    train: bool, *, scale_init: Initializer = _ONES
) -> nn.BatchNorm:
  """BatchNorm over all but the last axis; batch statistics in train mode, running ones otherwise.

  Running averages live in the ``"batch_stats"`` collection (momentum :data:`BN_MOMENTUM`), which
  the caller marks mutable in train mode.
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=BN_MOMENTUM,
      epsilon=BN_EPSILON,
      scale_init=scale_init,
  )
