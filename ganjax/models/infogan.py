"""The InfoGAN networks for MNIST-like images, the architecture of Lucic et al. 2018 on MNIST and
Fashion-MNIST.

References:
  Chen, Duan, Houthooft, Schulman, Sutskever, Abbeel, "InfoGAN: Interpretable Representation
  Learning by Information Maximizing Generative Adversarial Nets", NeurIPS 2016,
  arXiv:1606.03657, Appendix C.1 (MNIST).
  Lucic, Kurach, Michalski, Gelly, Bousquet, "Are GANs Created Equal? A Large-Scale Study",
  NeurIPS 2018, arXiv:1711.10337; its code, google/compare_gan (``AbstractGAN.generator`` /
  ``discriminator`` of its first release, later ``architectures/infogan.py``).

Layers for ``(H, W, C)`` images, H and W divisible by 4 (28x28x1: 7x7 and 14x14 maps); ``n`` =
``hidden`` (1024), ``w`` = ``width`` (64); LeakyReLU(0.2) throughout:

* G: z -> Dense n - BN - LReLU -> Dense 2w*(H/4)*(W/4) - BN - LReLU -> reshape (H/4, W/4, 2w) ->
  4x4 stride-2 transposed conv w - BN - LReLU -> 4x4 stride-2 transposed conv C -> tanh.
* D: 4x4 stride-2 conv w - LReLU -> 4x4 stride-2 conv 2w - norm - LReLU -> flatten -> Dense n -
  norm - LReLU -> Dense 1 (the logit). ``normalization`` picks "norm": ``"batch_norm"`` (InfoGAN's,
  compare_gan's ``discriminator_batchnorm=True``), ``"none"`` (compare_gan's ``False``, which its
  narrowed search fixes for WGAN-GP and DRAGAN) or ``"layer_norm"`` (Ba et al. 2016, over all of an
  example's features with a scale and offset per channel, as ``tf.contrib.layers.layer_norm``;
  Gulrajani et al. 2017 suggest it for a critic with a gradient penalty).

As compare_gan: every layer has a bias; weights are N(0, 0.02^2), except D's convolutions,
N(0, 0.02^2) truncated at two standard deviations (TensorFlow's ``truncated_normal_initializer``);
biases and BN offsets 0, BN scales 1; LeakyReLU in G too (InfoGAN's G uses ReLU:
``leaky_slope=0``). Unlike compare_gan: tanh instead of sigmoid, for ganjax's data in [-1, 1];
BatchNorm with :mod:`ganjax.models.layers`' momentum 0.9 and eps 1e-5 (compare_gan: 0.999, 1e-3;
the momentum only changes the running averages used at evaluation time).

At the defaults, z of 64 and 28x28x1, G has 6,642,241 parameters (+14,720 BN statistics) and D
6,559,169 (+2,304) with batch norm. Unconditional: ``labels`` is accepted and ignored.
``dtype="bfloat16"`` computes in bfloat16 (parameters, statistics, images and logits stay float32).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import layers

# D's normalisation after its second and third layers (``Discriminator.normalization``).
NORMALIZATIONS = ("batch_norm", "layer_norm", "none")

_INIT = layers.normal(0.02)


def truncated_normal(stddev: float) -> layers.Initializer:
  """TensorFlow's ``truncated_normal_initializer``: N(0, stddev^2) redrawn beyond 2 stddev.

  Unlike :func:`ganjax.models.layers.variance_scaling`, the draw is not rescaled, so its standard
  deviation is 0.88 ``stddev``. Drawn flat (see :mod:`ganjax.models.layers`).
  """

  def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
    values = jax.random.truncated_normal(key, -2.0, 2.0, (math.prod(shape),), dtype)
    return (stddev * values).reshape(shape)

  return init


_CONV_INIT = truncated_normal(0.02)


def first_map(image_shape: Sequence[int]) -> tuple[int, int, int]:
  """``(H / 4, W / 4, C)``: the generator's first feature map and the image channels.

  Raises:
    ConfigError: ``image_shape`` is not ``(H, W, C)`` with H and W multiples of 4.
  """
  if len(image_shape) != 3:
    raise ConfigError(f"InfoGAN needs image_shape (H, W, C), got {tuple(image_shape)}.")
  height, width, channels = image_shape
  if height % 4 or width % 4 or not height or not width:
    raise ConfigError(
      f"The InfoGAN generator upsamples twice by 2: H and W must be multiples of 4, got "
      f"{height}x{width}; resize the data (config.data.image_size)."
    )
  return height // 4, width // 4, channels


class Generator(nn.Module):
  """InfoGAN generator: latents ``(B, Z)`` -> images ``(B, H, W, C)`` in [-1, 1].

  Attributes:
    image_shape: ``(H, W, C)`` with H and W divisible by 4.
    hidden: units of the first dense layer (1024).
    width: channels w of the H/2 x W/2 map; the H/4 x W/4 map has 2w (64: 128 and 64).
    leaky_slope: negative slope of the hidden activations (compare_gan 0.2; InfoGAN's ReLU: 0).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`); parameters
      do not depend on it.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
  """

  image_shape: tuple[int, int, int]
  hidden: int = 1024
  width: int = 64
  leaky_slope: float = 0.2
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    del labels  # Unconditional.
    rows, cols, channels = first_map(self.image_shape)
    layers.check_choice("conv_impl", self.conv_impl, layers.CONV_IMPLS)
    layers.check_choice("dtype", self.dtype, layers.DTYPES)
    w, dtype, slope = self.width, self.dtype, self.leaky_slope

    def norm_act(h):
      return nn.leaky_relu(layers.batch_norm(train, dtype=dtype)(h), slope)

    x = norm_act(layers.dense(self.hidden, kernel_init=_INIT, dtype=dtype)(z))
    x = norm_act(layers.dense(rows * cols * 2 * w, kernel_init=_INIT, dtype=dtype)(x))
    x = x.reshape(z.shape[0], rows, cols, 2 * w)
    kw = dict(kernel_init=_INIT, impl=self.conv_impl, dtype=dtype)
    x = norm_act(layers.conv_transpose(w, 4, 2, "SAME", **kw)(x))  # H/2 x W/2
    x = layers.conv_transpose(channels, 4, 2, "SAME", **kw)(x)  # H x W
    return jnp.tanh(x).astype(jnp.float32)


class Discriminator(nn.Module):
  """InfoGAN discriminator: images ``(B, H, W, C)`` -> logits ``(B,)``.

  Attributes:
    hidden: units of the hidden dense layer (1024).
    width: channels w of the first convolution; the second has 2w (64: 64 and 128).
    leaky_slope: negative slope of the LeakyReLUs (0.2).
    normalization: after the second convolution and the hidden dense layer: one of
      :data:`NORMALIZATIONS`. Batch norm couples the examples of a batch, so a gradient penalty
      is then not per example (see :mod:`ganjax.regularizers`).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`).
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
  """

  hidden: int = 1024
  width: int = 64
  leaky_slope: float = 0.2
  normalization: str = "batch_norm"
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    del labels  # Unconditional.
    layers.check_choice("discriminator normalization", self.normalization, NORMALIZATIONS)
    layers.check_choice("conv_impl", self.conv_impl, layers.CONV_IMPLS)
    layers.check_choice("dtype", self.dtype, layers.DTYPES)
    if x.ndim != 4:
      raise ValueError(f"InfoGAN discriminator needs (B, H, W, C) images, got shape {x.shape}.")
    w, dtype, slope = self.width, self.dtype, self.leaky_slope

    def norm(h):
      if self.normalization == "batch_norm":
        return layers.batch_norm(train, dtype=dtype)(h)
      if self.normalization == "layer_norm":
        axes = tuple(range(1, h.ndim))
        return nn.LayerNorm(reduction_axes=axes, dtype=layers.resolve_dtype(dtype))(h)
      return h

    kw = dict(kernel_init=_CONV_INIT, impl=self.conv_impl, dtype=dtype)
    x = nn.leaky_relu(layers.conv(w, 4, 2, "SAME", **kw)(x), slope)  # H/2 x W/2
    x = nn.leaky_relu(norm(layers.conv(2 * w, 4, 2, "SAME", **kw)(x)), slope)  # H/4 x W/4
    x = x.reshape(x.shape[0], -1)
    x = nn.leaky_relu(norm(layers.dense(self.hidden, kernel_init=_INIT, dtype=dtype)(x)), slope)
    return layers.dense(1, kernel_init=_INIT, dtype=dtype)(x)[:, 0].astype(jnp.float32)
