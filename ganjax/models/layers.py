"""Building blocks shared by the architectures in ``ganjax.models``.

Convolutions are built through :func:`conv` and :func:`conv_transpose` (never ``nn.Conv``
directly in a model) so that another formulation of the same layer, e.g. a faster one for the
CPU, can later be swapped in here, in one place, selected by a model's ``conv_impl`` field. Only
``"xla"`` (flax's ``nn.Conv`` / ``nn.ConvTranspose``, lowered by XLA) exists today.

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

Initializer = Callable[..., jax.Array]
Padding = str | Sequence[tuple[int, int]]

# Implementations of conv / conv_transpose. Add a name here together with its code below.
CONV_IMPLS = ("xla",)

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
  """
  check_choice("conv_impl", impl, CONV_IMPLS)
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
  """
  check_choice("conv_impl", impl, CONV_IMPLS)
  return nn.ConvTranspose(
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
