"""SRResNet / SRGAN networks for single-image super-resolution.

Reference:
  Ledig, Theis, Huszar, Caballero, Cunningham, Acosta, Aitken, Tejani, Totz, Wang, Shi,
  "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial Network",
  CVPR 2017, arXiv:1609.04802 (Figure 4).
  Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
  Convolutional Neural Network", CVPR 2016, arXiv:1609.05158 (the pixel shuffle).

* :class:`Generator` (SRResNet): low-resolution images ``(B, h, w, C)`` in [-1, 1] ->
  ``(B, s*h, s*w, C)`` in [-1, 1] (``s = scale``, 2 or 4). 9x9 conv (F) + PReLU; ``num_blocks``
  residual blocks conv3x3-BN-PReLU-conv3x3-BN + skip; conv3x3-BN + the long skip from the first
  layer; ``log2(s)`` upsampling stages conv3x3(4F) -> pixel_shuffle(2) -> PReLU; 9x9 conv to C.
  The paper's network: F = 64, 16 blocks. The output is not squashed (no tanh, as in the paper's
  Figure 4); callers clip to [-1, 1] when they make pictures. PReLU slopes are per channel,
  initialised to 0.25 (He et al. 2015).
* :class:`Discriminator`: images ``(B, H, W, C)`` -> logits ``(B,)``. Eight 3x3 convs with
  64, 64 (stride 2), 128, 128 (s2), 256, 256 (s2), 512, 512 (s2) channels (times ``width / 64``),
  each followed by BatchNorm (all but the first) and LeakyReLU(0.2), then Dense 1024, LeakyReLU,
  Dense 1 (the paper's final sigmoid is folded into the logistic losses).

This module names the system that trains it (``SYSTEM``), so the GAN loop's model list skips it.
Convolutions go through :func:`ganjax.models.layers.conv` (the fast CPU formulations).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import layers

# The system of ganjax.systems that trains these networks (config.task = "srgan").
SYSTEM = "srgan"

# Upscaling factors the generator supports (each a power of two: log2(scale) x2 stages).
SCALES = (2, 4)


def check_scale(scale: int) -> int:
  """Returns ``scale``; raises ``ValueError`` naming the valid factors otherwise."""
  if scale not in SCALES:
    raise ConfigError(
      f"Unsupported super-resolution scale {scale!r}; valid choices: {', '.join(map(str, SCALES))}."
    )
  return int(scale)


def pixel_shuffle(x: jax.Array, scale: int) -> jax.Array:
  """Depth-to-space (sub-pixel rearrangement; Shi et al. 2016), NHWC.

  ``(B, H, W, C * r^2) -> (B, H * r, W * r, C)`` with output pixel ``(h*r + i, w*r + j, c)`` taken
  from input channel ``(i * r + j) * C + c`` (TensorFlow's ``depth_to_space`` order).
  """
  b, h, w, c = x.shape
  r = int(scale)
  if c % (r * r):
    raise ValueError(f"pixel_shuffle: {c} channels do not divide by scale^2 = {r * r}.")
  out = c // (r * r)
  x = x.reshape(b, h, w, r, r, out)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h * r, w * r, out)


def space_to_depth(x: jax.Array, scale: int) -> jax.Array:
  """The inverse of :func:`pixel_shuffle`: ``(B, H, W, C) -> (B, H / r, W / r, C * r^2)``."""
  b, h, w, c = x.shape
  r = int(scale)
  if h % r or w % r:
    raise ValueError(f"space_to_depth: a {h}x{w} image does not divide by scale {r}.")
  x = x.reshape(b, h // r, r, w // r, r, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, h // r, w // r, r * r * c)


class PReLU(nn.Module):
  """Parametric ReLU with one learned slope per channel (He et al. 2015), initialised to 0.25."""

  init_slope: float = 0.25

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    slope = self.param("slope", nn.initializers.constant(self.init_slope), (x.shape[-1],))
    return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)


class ResidualBlock(nn.Module):
  """conv3x3-BN-PReLU-conv3x3-BN + identity skip (Ledig et al. 2017, Figure 4)."""

  features: int
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = layers.conv(self.features, 3, impl=self.conv_impl)(x)
    y = layers.batch_norm(train)(y)
    y = PReLU()(y)
    y = layers.conv(self.features, 3, impl=self.conv_impl)(y)
    y = layers.batch_norm(train)(y)
    return x + y


class Generator(nn.Module):
  """SRResNet: low-resolution images in [-1, 1] -> ``scale`` x larger images in [-1, 1].

  Attributes:
    scale: upscaling factor, 2 or 4 (:data:`SCALES`).
    features: channels F of every hidden layer (paper: 64).
    num_blocks: residual blocks B (paper: 16).
    channels: output channels; None = the input's.
    conv_impl: convolution implementation (:data:`ganjax.models.layers.CONV_IMPLS`).
    upsample_skip: add the bicubic upsampling of the input (``jax.image.resize``) to the output
      and zero-initialise the last conv, so the network starts at bicubic and learns the residual
      (global residual learning, Kim et al. 2016 "VDSR", arXiv:1511.04587). Not part of Ledig et
      al.'s SRResNet (default off); it adds no parameters and lets the short CPU runs of
      configs/srgan.py pass bicubic within minutes.
  """

  scale: int = 4
  features: int = 64
  num_blocks: int = 16
  channels: int | None = None
  conv_impl: str = "auto"
  upsample_skip: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    check_scale(self.scale)
    channels = self.channels or x.shape[-1]
    f = self.features
    lr = x
    x = layers.conv(f, 9, impl=self.conv_impl)(x)
    x = PReLU()(x)
    skip = x
    for _ in range(self.num_blocks):
      x = ResidualBlock(f, self.conv_impl)(x, train=train)
    x = layers.conv(f, 3, impl=self.conv_impl)(x)
    x = layers.batch_norm(train)(x)
    x = x + skip
    for _ in range(int(math.log2(self.scale))):
      x = layers.conv(4 * f, 3, impl=self.conv_impl)(x)
      x = pixel_shuffle(x, 2)
      x = PReLU()(x)
    if not self.upsample_skip:
      return layers.conv(channels, 9, impl=self.conv_impl)(x)
    x = layers.conv(channels, 9, kernel_init=nn.initializers.zeros, impl=self.conv_impl)(x)
    b, h, w, c = lr.shape
    return x + jax.image.resize(lr, (b, h * self.scale, w * self.scale, c), "bicubic")


class Discriminator(nn.Module):
  """The VGG-style SRGAN discriminator: images -> logits ``(B,)``.

  Attributes:
    width: channels of the first two convs (paper: 64); the others are 2x, 4x, 8x of it.
    dense_features: width of the hidden dense layer (paper: 1024).
    leaky_slope: LeakyReLU slope (paper: 0.2).
    conv_impl: convolution implementation (:data:`ganjax.models.layers.CONV_IMPLS`).
  """

  width: int = 64
  dense_features: int = 1024
  leaky_slope: float = 0.2
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    for i in range(8):
      features = self.width * 2 ** (i // 2)
      stride = 2 if i % 2 else 1
      x = layers.conv(features, 3, stride, impl=self.conv_impl)(x)
      if i > 0:
        x = layers.batch_norm(train)(x)
      x = nn.leaky_relu(x, self.leaky_slope)
    x = x.reshape(x.shape[0], -1)
    x = layers.dense(self.dense_features)(x)
    x = nn.leaky_relu(x, self.leaky_slope)
    return layers.dense(1)(x)[:, 0]
