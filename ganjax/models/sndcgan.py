"""The "standard CNN" of SNGAN for square 32 and 48 pixel images.

Reference:
  Miyato, Kataoka, Koyama, Yoshida, "Spectral Normalization for Generative Adversarial Networks",
  ICLR 2018, arXiv:1802.05957, Appendix B.4, Table 3 (used there for CIFAR-10, SVHN at 32x32 and
  STL-10 at 48x48); the authors' Chainer code (chainer-gan-lib, ``DCGANGenerator``) for the
  details the table leaves out.

Layers (``w`` = the ``width`` field, 64 in the paper; ``C`` = image channels; ``M`` = the image
size, 32 or 48; ``Mg = M / 8`` = 4 or 6; 4x4 stride-2 layers use "SAME" padding, i.e. PyTorch's
``padding=1``, and exactly double / halve the size):

* generator: ``z -> dense Mg*Mg*8w - BN - ReLU``, reshape ``Mg x Mg x 8w``, 4x4 stride-2
  transposed convolutions ``4w``, ``2w``, ``w``, each followed by ``BN - ReLU``, then a 3x3
  stride-1 convolution to ``C`` channels and ``tanh``. Table 3 lists no normalisation after the
  dense layer; the BatchNorm (over the ``Mg*Mg*8w`` units of the dense output) and ReLU there are
  the authors' code's.
* discriminator: 3x3 stride-1 conv ``w``, 4x4 stride-2 conv ``w``, 3x3 conv ``2w``, 4x4 stride-2
  conv ``2w``, 3x3 conv ``4w``, 4x4 stride-2 conv ``4w``, 3x3 conv ``8w``, each followed by
  LeakyReLU(0.1); flatten (``M/8 x M/8 x 8w``) and dense 1. No BatchNorm. (This is the channel
  list of Table 3; chainer-gan-lib's ``DCGANDiscriminator`` doubles the channels one layer
  earlier.)

Spectral normalisation (:class:`ganjax.models.blocks.SpectralNorm`: ``blocks.spectral_norm``'s
power iteration and variables, ``u`` and ``sigma`` in ``"batch_stats"``, updated only when
``train=True``, with the initial weights stored as drawn) wraps every layer of the discriminator
(``spectral_norm=True``) and optionally every convolution and dense layer of the generator
(``spectral_norm=False`` by default, as in the paper).

Initialisation, as in chainer-gan-lib: weights N(0, 0.02^2), zero biases, BatchNorm scales 1;
every convolution and dense layer has a bias. At ``w = 64``, ``z = 128``, ``C = 3`` and 32x32 the
generator has 3,828,739 parameters (+ 17,280 BatchNorm statistics), the discriminator 2,935,873.

Only unconditional models: ``labels`` is accepted and ignored. ``dtype="bfloat16"`` computes in
bfloat16 (parameters, statistics and the returned images / logits stay float32).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import layers
from ganjax.models.blocks import spectral_norm

SUPPORTED_SIZES = (32, 48)

_INIT = layers.dcgan_init(0.02)


def check_image_size(height: int, width: int) -> int:
  """Returns the image size; raises ``ValueError`` unless the image is square and supported."""
  if height != width or height not in SUPPORTED_SIZES:
    raise ConfigError(
      f"The SNGAN standard CNN supports square images of "
      f"{', '.join(map(str, SUPPORTED_SIZES))} pixels, got {height}x{width}; resize the data "
      "(config.data.image_size)."
    )
  return height


def discriminator_layers(width: int) -> list[tuple[int, int, int]]:
  """``(channels, kernel, stride)`` of the discriminator's convolutions (Table 3)."""
  w = width
  return [
    (w, 3, 1),
    (w, 4, 2),
    (2 * w, 3, 1),
    (2 * w, 4, 2),
    (4 * w, 3, 1),
    (4 * w, 4, 2),
    (8 * w, 3, 1),
  ]


class Generator(nn.Module):
  """SNGAN standard-CNN generator: latents ``(B, Z)`` -> images ``(B, H, W, C)`` in [-1, 1].

  Attributes:
    image_shape: ``(H, W, C)`` with H == W in :data:`SUPPORTED_SIZES` (the first map is H/8).
    width: channel multiplier w (8w, 4w, 2w, w channels; 64 in the paper).
    spectral_norm: spectrally normalise every convolution and the dense layer (off in the paper).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`); the
      default ``"auto"`` uses the fast CPU formulations on the CPU. Parameters do not depend on it.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32; the
      images are returned as float32).
  """

  image_shape: tuple[int, int, int]
  width: int = 64
  spectral_norm: bool = False
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    del labels  # Unconditional.
    if len(self.image_shape) != 3:
      raise ConfigError(f"SNDCGAN needs image_shape (H, W, C), got {self.image_shape}.")
    height, width, channels = self.image_shape
    size = check_image_size(height, width)
    layers.check_choice("conv_impl", self.conv_impl, layers.CONV_IMPLS)
    layers.check_choice("dtype", self.dtype, layers.DTYPES)
    w, start, dtype, sn = self.width, size // 8, self.dtype, self.spectral_norm
    kw = dict(kernel_init=_INIT, impl=self.conv_impl, dtype=dtype)

    x = spectral_norm(
      layers.dense(start * start * 8 * w, kernel_init=_INIT, dtype=dtype), enabled=sn
    )(z, update_stats=train)
    x = nn.relu(layers.batch_norm(train, dtype=dtype)(x))
    x = x.reshape(z.shape[0], start, start, 8 * w)
    for features in (4 * w, 2 * w, w):
      up = layers.conv_transpose(features, 4, 2, "SAME", **kw)
      x = spectral_norm(up, enabled=sn)(x, update_stats=train)
      x = nn.relu(layers.batch_norm(train, dtype=dtype)(x))
    out = layers.conv(channels, 3, 1, "SAME", **kw)
    x = spectral_norm(out, enabled=sn)(x, update_stats=train)
    return jnp.tanh(x).astype(jnp.float32)


class Discriminator(nn.Module):
  """SNGAN standard-CNN discriminator: images ``(B, H, W, C)`` -> logits ``(B,)``.

  Attributes:
    width: channel multiplier w (w, w, 2w, 2w, 4w, 4w, 8w channels; 64 in the paper).
    leaky_slope: negative slope of the LeakyReLUs (0.1 in the paper).
    spectral_norm: spectrally normalise every convolution and the dense layer (on in the paper).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`);
      parameters do not depend on it.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32; the
      logits are returned as float32).
  """

  width: int = 64
  leaky_slope: float = 0.1
  spectral_norm: bool = True
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    del labels  # Unconditional.
    if x.ndim != 4:
      raise ValueError(f"SNDCGAN discriminator needs (B, H, W, C) images, got shape {x.shape}.")
    check_image_size(x.shape[1], x.shape[2])
    layers.check_choice("conv_impl", self.conv_impl, layers.CONV_IMPLS)
    layers.check_choice("dtype", self.dtype, layers.DTYPES)
    kw = dict(kernel_init=_INIT, impl=self.conv_impl, dtype=self.dtype)
    for features, kernel, stride in discriminator_layers(self.width):
      conv = layers.conv(features, kernel, stride, "SAME", **kw)
      x = spectral_norm(conv, enabled=self.spectral_norm)(x, update_stats=train)
      x = nn.leaky_relu(x, self.leaky_slope)
    x = x.reshape(x.shape[0], -1)
    dense = layers.dense(1, kernel_init=_INIT, dtype=self.dtype)
    out = spectral_norm(dense, enabled=self.spectral_norm)(x, update_stats=train)
    return out[:, 0].astype(jnp.float32)
