"""Deep convolutional GANs for square 28, 32 and 64 pixel images with any number of channels.

References:
  Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
  Generative Adversarial Networks", ICLR 2016, arXiv:1511.06434.
  The TensorFlow "Deep Convolutional Generative Adversarial Network" tutorial (MNIST).

The generator chooses its layout from ``image_shape``, the discriminator from its input's shape
(``w`` = the ``width`` field, ``C`` = channels):

* 28x28, the TensorFlow tutorial's layout. G: Dense(z -> 7*7*4w) BN LeakyReLU, reshape, then 5x5
  "SAME" transposed convs 2w (stride 1, 7 -> 7), w (stride 2, -> 14), each with BN LeakyReLU, and C
  (stride 2, -> 28) + tanh. D: 5x5 stride-2 convs w (-> 14) and 2w (-> 7), each LeakyReLU +
  Dropout(0.3), flatten, Dense 1. As in the tutorial: LeakyReLU slope 0.3 (Keras' default), Keras'
  default initialisation (Glorot-uniform kernels, zero biases), no biases in G, biases in D. With
  w = 64 the generator has 256/128/64 channels and 2,305,472 parameters (+25,472 BN statistics:
  2,330,944 in all, as Keras reports) for MNIST; the discriminator 212,865.
* 64x64, Radford et al. G: z as a (B, 1, 1, nz) map -> 4x4 "VALID" transposed conv to 8w channels
  (4x4 map), then 4x4 stride-2 transposed convs 4w (8x8), 2w (16x16), w (32x32), each with BN ReLU,
  and C (64x64) + tanh. D: 4x4 stride-2 convs w (32x32, no BN), 2w, 4w, 8w (16, 8, 4) with BN, each
  LeakyReLU(0.2), then a 4x4 "VALID" conv to one logit. Weights N(0, 0.02), BN scales N(1, 0.02),
  BN offsets 0, and no biases, like the PyTorch reference example (for w = 64, nz = 100, C = 3:
  3,576,704 G and 2,765,568 D parameters, plus 1,920 and 1,792 BN statistics).
* 32x32: the 64x64 pattern with one stage fewer: G 4x4x4w -> 8x8x2w -> 16x16xw -> 32x32xC;
  D 32 -> 16 (w) -> 8 (2w) -> 4 (4w) -> 4x4 "VALID" conv -> 1.

``leaky_slope`` and ``dropout`` default to ``None``, meaning "the layout's reference value" (slope
0.3 and dropout 0.3 at 28 pixels; at 32/64 pixels ReLU, i.e. slope 0, in G, slope 0.2 in D and no
dropout). A number overrides them in every layout; dropout then follows each LeakyReLU of D.
BatchNorm uses momentum 0.9 and eps 1e-5 (see :mod:`ganjax.models.layers`).

Class-conditional variants (``num_classes`` set): G conditions by a label code concatenated to z
(``conditioning="concat"``, Mirza & Osindero 2014) or by conditional BatchNorm in place of every
BatchNorm (``"batchnorm"``); D by one-hot label maps concatenated to the input channels
(``"concat"``), a projection head on the flattened last features (``"projection"``, Miyato &
Koyama 2018; it replaces the final layer) or an auxiliary classifier next to the final layer
(``"acgan"``, Odena et al. 2017; D then returns ``(logits, class_logits)``).

``dtype="bfloat16"`` computes in bfloat16 (mixed precision): parameters, BatchNorm statistics and
the returned images / logits stay float32.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import blocks, layers

SUPPORTED_SIZES = (28, 32, 64)

# Layout defaults: (generator slope, discriminator slope, discriminator dropout).
_TUTORIAL_DEFAULTS = (0.3, 0.3, 0.3)  # 28 pixels: Keras' LeakyReLU default, Dropout(0.3).
_RADFORD_DEFAULTS = (0.0, 0.2, 0.0)  # 32/64 pixels: ReLU in G, LeakyReLU(0.2) in D.

# Keras' default initialisation, used by the 28-pixel (tutorial) layout.
_keras_init = layers.glorot_uniform()


def check_image_size(height: int, width: int) -> int:
  """Returns the image size; raises ``ValueError`` unless the image is square and supported."""
  if height != width or height not in SUPPORTED_SIZES:
    raise ConfigError(
      f"DCGAN supports square images of {', '.join(map(str, SUPPORTED_SIZES))} pixels, got "
      f"{height}x{width}; resize the data (config.data.image_size)."
    )
  return height


def radford_channels(size: int, width: int) -> list[int]:
  """Channels of the generator's 4x4, 8x8, ... feature maps (8w, 4w, 2w, w at 64 pixels).

  The discriminator uses them in reverse order for its 1/2, 1/4, ... resolution maps.
  """
  stages = size.bit_length() - 3  # log2(size / 4): 4 at 64 pixels, 3 at 32.
  return [width * 2 ** (stages - 1 - i) for i in range(stages)]


def _pick(value: float | None, default: float) -> float:
  return default if value is None else value


class Generator(nn.Module):
  """DCGAN generator: latents ``(B, Z)`` -> images ``(B, H, W, C)`` in [-1, 1].

  Attributes:
    image_shape: ``(H, W, C)`` with H == W in :data:`SUPPORTED_SIZES`; selects the layout.
    width: channel multiplier w (Radford's ngf).
    leaky_slope: negative slope of the hidden activations; ``None`` = the layout's reference (0.3
      at 28 pixels, 0 = ReLU at 32/64 pixels).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`); the
      default ``"auto"`` uses the fast CPU formulations (``"fast"``) on the CPU and XLA's own
      lowering elsewhere. Parameters do not depend on it.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32; the
      images are returned as float32).
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes; labels
      ``(B,)`` are then required.
    conditioning: ``"concat"`` (label code concatenated to z) or ``"batchnorm"`` (conditional
      BatchNorm).
    label_dim: size of the learned label embedding of ``"concat"``; ``None`` = one-hot.
  """

  image_shape: tuple[int, int, int]
  width: int = 64
  leaky_slope: float | None = None
  conv_impl: str = "auto"
  dtype: str = "float32"
  num_classes: int | None = None
  conditioning: str = "concat"
  label_dim: int | None = None

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    conditional = blocks.check_conditioning(
      "DCGAN Generator", self.num_classes, self.conditioning, blocks.GENERATOR_CONDITIONING
    )
    if conditional and self.conditioning == "concat":
      z = blocks.LabelEmbedding(self.num_classes, self.label_dim)(z, labels)
    cbn_classes = self.num_classes if conditional and self.conditioning == "batchnorm" else None

    def norm(h, **kw):
      return blocks.generator_norm(
        h, labels, train=train, num_classes=cbn_classes, dtype=self.dtype, **kw
      )

    if len(self.image_shape) != 3:
      raise ConfigError(f"DCGAN needs image_shape (H, W, C), got {self.image_shape}.")
    height, width, channels = self.image_shape
    size = check_image_size(height, width)
    w, impl, dtype = self.width, self.conv_impl, self.dtype
    layers.check_choice("conv_impl", impl, layers.CONV_IMPLS)
    layers.check_choice("dtype", dtype, layers.DTYPES)

    if size == 28:
      slope = _pick(self.leaky_slope, _TUTORIAL_DEFAULTS[0])
      kw = dict(use_bias=False, kernel_init=_keras_init, impl=impl, dtype=dtype)
      x = layers.dense(7 * 7 * 4 * w, use_bias=False, kernel_init=_keras_init, dtype=dtype)(z)
      x = nn.leaky_relu(norm(x), slope)
      x = x.reshape(z.shape[0], 7, 7, 4 * w)
      x = layers.conv_transpose(2 * w, 5, 1, "SAME", **kw)(x)  # 7x7
      x = nn.leaky_relu(norm(x), slope)
      x = layers.conv_transpose(w, 5, 2, "SAME", **kw)(x)  # 14x14
      x = nn.leaky_relu(norm(x), slope)
      x = layers.conv_transpose(channels, 5, 2, "SAME", **kw)(x)  # 28x28
      return jnp.tanh(x).astype(jnp.float32)

    slope = _pick(self.leaky_slope, _RADFORD_DEFAULTS[0])
    kw = dict(use_bias=False, kernel_init=layers.dcgan_init(), impl=impl, dtype=dtype)
    scale_init = layers.dcgan_scale_init()
    stage_channels = radford_channels(size, w)
    x = z.reshape(z.shape[0], 1, 1, z.shape[-1])
    x = layers.conv_transpose(stage_channels[0], 4, 1, "VALID", **kw)(x)  # 4x4
    x = nn.leaky_relu(norm(x, scale_init=scale_init), slope)
    for features in stage_channels[1:]:
      x = layers.conv_transpose(features, 4, 2, "SAME", **kw)(x)  # doubles H and W
      x = nn.leaky_relu(norm(x, scale_init=scale_init), slope)
    x = layers.conv_transpose(channels, 4, 2, "SAME", **kw)(x)  # size x size
    return jnp.tanh(x).astype(jnp.float32)


class Discriminator(nn.Module):
  """DCGAN discriminator: images ``(B, H, W, C)`` -> logits ``(B,)``; the layout follows H.

  Attributes:
    width: channel multiplier w (Radford's ndf).
    leaky_slope: negative slope of the LeakyReLUs; ``None`` = the layout's reference (0.3 at 28
      pixels, 0.2 at 32/64 pixels).
    dropout: dropout rate after each LeakyReLU; ``None`` = the layout's reference (0.3 at 28
      pixels, none at 32/64 pixels).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`);
      parameters do not depend on it.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32; the
      logits are returned as float32).
    spectral_norm: spectrally normalise every convolution and the dense layer (Miyato et al.
      2018; :func:`ganjax.models.blocks.spectral_norm`, one power iteration per call, state in
      ``batch_stats``). Parameter names and shapes do not depend on it.
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes; labels
      ``(B,)`` are then required.
    conditioning: ``"concat"`` (one-hot label maps as extra input channels), ``"projection"``
      (projection head) or ``"acgan"`` (auxiliary classifier; returns ``(logits,
      class_logits)``).
  """

  width: int = 64
  leaky_slope: float | None = None
  dropout: float | None = None
  conv_impl: str = "auto"
  dtype: str = "float32"
  spectral_norm: bool = False
  num_classes: int | None = None
  conditioning: str = "projection"

  @nn.compact
  def __call__(
    self, x: jax.Array, labels: jax.Array | None = None, *, train: bool
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    if x.ndim != 4:
      raise ValueError(f"DCGAN discriminator needs (B, H, W, C) images, got shape {x.shape}.")
    conditional = blocks.check_conditioning(
      "DCGAN Discriminator",
      self.num_classes,
      self.conditioning,
      blocks.DISCRIMINATOR_CONDITIONING,
    )
    if conditional and self.conditioning == "concat":
      x = blocks.LabelEmbedding(self.num_classes)(x, labels)

    def head(h, linear):
      return blocks.discriminator_head(
        h,
        labels,
        linear,
        train=train,
        num_classes=self.num_classes if conditional else None,
        conditioning=self.conditioning,
        spectral_norm=self.spectral_norm,
      )

    size = check_image_size(x.shape[1], x.shape[2])
    w, impl, dtype = self.width, self.conv_impl, self.dtype
    layers.check_choice("conv_impl", impl, layers.CONV_IMPLS)
    layers.check_choice("dtype", dtype, layers.DTYPES)
    defaults = _TUTORIAL_DEFAULTS if size == 28 else _RADFORD_DEFAULTS
    slope = _pick(self.leaky_slope, defaults[1])
    rate = _pick(self.dropout, defaults[2])

    def activate(h):
      h = nn.leaky_relu(h, slope)
      return layers.Dropout(rate)(h, deterministic=not train) if rate > 0 else h

    def apply(layer, h):
      if not self.spectral_norm:
        return layer(h)
      return blocks.spectral_norm(layer)(h, update_stats=train)

    if size == 28:
      kw = dict(use_bias=True, kernel_init=_keras_init, impl=impl, dtype=dtype)
      x = activate(apply(layers.conv(w, 5, 2, "SAME", **kw), x))  # 14x14
      x = activate(apply(layers.conv(2 * w, 5, 2, "SAME", **kw), x))  # 7x7
      x = x.reshape(x.shape[0], -1)
      dense = layers.dense(1, kernel_init=_keras_init, dtype=dtype)
      return head(x, lambda h: apply(dense, h)[:, 0].astype(jnp.float32))

    kw = dict(use_bias=False, kernel_init=layers.dcgan_init(), impl=impl, dtype=dtype)
    bn = dict(scale_init=layers.dcgan_scale_init(), dtype=dtype)
    for i, features in enumerate(reversed(radford_channels(size, w))):
      x = apply(layers.conv(features, 4, 2, "SAME", **kw), x)  # halves H and W
      if i > 0:  # Radford: no BatchNorm on the discriminator's input layer.
        x = layers.batch_norm(train, **bn)(x)
      x = activate(x)
    final = layers.conv(1, 4, 1, "VALID", **kw)  # 4x4 -> 1x1

    def logits(h):
      return apply(final, h).reshape(h.shape[0]).astype(jnp.float32)

    # The projection head works on the flattened 4x4 features (a linear map, like the final conv).
    if conditional and self.conditioning == "projection":
      x = x.reshape(x.shape[0], -1)
    return head(x, logits)
