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
* ``"fast"`` (2-D): the custom-gradient kernels of :mod:`ganjax.models.conv_kernels`, whose
  output, input gradient and kernel gradient all run on XLA:CPU's fast kernels.
* ``"auto"``: ``"fast"`` when ``jax.default_backend() == "cpu"``, ``"xla"`` otherwise.

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
from jax import lax

from ganjax.errors import ConfigError
from ganjax.models.conv_kernels import dilated_conv, strided_conv, subpixel_conv

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
  ``"fast"`` a strided 2-D convolution is :func:`ganjax.models.conv_kernels.strided_conv` (its
  gradients avoid XLA:CPU's slow convolutions of dilated inputs) and a ``"VALID"`` kernel
  covering the whole input is a dense layer; everything else (and ``impl="xla"``) is flax's own
  path.
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
    features`` output channels, rearranged depth-to-space
    (:func:`ganjax.models.conv_kernels.subpixel_conv`); gradients by
    autodiff. It multiplies some zero taps (5x5 stride 2: 36 taps per input pixel instead of 25;
    4x4 stride 2: 36 instead of 16) but runs on XLA:CPU's fast stride-1 kernels. Any rank.
  * ``"fast"`` (2-D): :func:`ganjax.models.conv_kernels.dilated_conv`, whose forward pass picks
    the sub-pixel form, one convolution per output phase or a GEMM + col2im, and whose gradients
    are a strided convolution and :func:`ganjax.models.conv_kernels.weight_grad`. A ``"VALID"``
    layer on a 1x1 input (the DCGAN generator's first layer) is a dense layer.

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
      y = subpixel_conv(inputs, kernel, strides, pads, self.precision, self.preferred_element_type)
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
