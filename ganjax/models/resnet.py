"""ResNet generator and discriminator of SNGAN for square 32, 48 and 64 pixel images.

References:
  Miyato, Kataoka, Koyama, Yoshida, "Spectral Normalization for Generative Adversarial Networks",
  ICLR 2018, arXiv:1802.05957, Appendix B.4, Tables 4 (CIFAR-10), 5 (STL-10) and 6 (ImageNet).
  Gulrajani, Ahmed, Arjovsky, Dumoulin, Courville, "Improved Training of Wasserstein GANs",
  NeurIPS 2017, arXiv:1704.00028, Appendix F (the residual blocks).
  Miyato, Koyama, "cGANs with Projection Discriminator", ICLR 2018, arXiv:1802.05637 (the
  class-conditional variants and the 64x64 layout).

Residual blocks (``3x3`` convolutions with "SAME" padding, ``1x1`` shortcut convolutions):

* generator block ``GBlock(c_out)``: residual ``BN - ReLU - upsample - conv3x3(c_out) - BN - ReLU -
  conv3x3(c_out)``; shortcut ``upsample - conv1x1(c_out)`` (learnable because the block upsamples;
  the identity for a block that neither upsamples nor changes channels). Upsampling is 2x
  nearest-neighbour. The shortcut computes ``conv1x1`` *before* the upsampling: both are linear
  and act per pixel, so the order does not change the result, and the convolution sees 4x fewer
  pixels.
* discriminator block ``DBlock(c_out, down)``: residual ``ReLU - conv3x3(c_in) - ReLU -
  conv3x3(c_out) [- avgpool2x2]`` (the hidden width is the input's, as in the authors' code);
  shortcut ``[avgpool2x2 -] conv1x1(c_out)`` when the block downsamples or changes channels,
  else the identity. (Average pooling and a 1x1 convolution commute; pooling first is cheaper.)
* the "optimized" first discriminator block ``OptBlock(c_out)``: residual ``conv3x3(c_out) - ReLU
  - conv3x3(c_out) - avgpool2x2`` (no activation before the first convolution, which sees the
  image); shortcut ``avgpool2x2 - conv1x1(c_out)``.

Layouts (``w`` = the ``width`` field, ``C`` = image channels; the generator picks its layout from
``image_shape``, the discriminator from its input's shape). Each generator ends with
``BN - ReLU - conv3x3(C) - tanh``; each discriminator with ``ReLU - global sum pooling - dense 1``:

* 32x32, Table 4 (CIFAR-10), reference widths G ``w = 256``, D ``w = 128``. G: ``z -> dense
  4*4*w``, reshape ``4x4xw``, ``GBlock(w)`` x 3 (8, 16, 32). D: ``OptBlock(w)`` (16),
  ``DBlock(w, down)`` (8), ``DBlock(w)``, ``DBlock(w)``. At the reference widths with ``z = 128``
  and ``C = 3``: G has 4,276,739 parameters (+ 3,584 BatchNorm statistics), D 1,053,825.
* 48x48, Table 5 (STL-10), reference ``w = 64`` for both. G: ``z -> dense 6*6*8w``, ``GBlock(4w)``
  (12), ``GBlock(2w)`` (24), ``GBlock(w)`` (48). D: ``OptBlock(w)`` (24), ``DBlock(2w, down)``
  (12), ``DBlock(4w, down)`` (6), ``DBlock(8w, down)`` (3), ``DBlock(16w)`` (3).
* 64x64, the 128x128 ImageNet layout of Table 6 with one stage fewer, as in Miyato & Koyama's
  64x64 models; reference ``w = 64`` for both. G: ``z -> dense 4*4*16w``, ``GBlock(8w)`` (8),
  ``GBlock(4w)`` (16), ``GBlock(2w)`` (32), ``GBlock(w)`` (64). D: ``OptBlock(w)`` (32),
  ``DBlock(2w, down)`` (16), ``DBlock(4w, down)`` (8), ``DBlock(8w, down)`` (4),
  ``DBlock(16w, down)`` (2).

Spectral normalisation (:func:`ganjax.models.blocks.spectral_norm`: power iteration with ``u``
and ``sigma`` in ``"batch_stats"``, updated only when ``train=True``, initial weights stored as
drawn) wraps every convolution and dense layer (and the
projection embedding) of the discriminator (``spectral_norm=True``, the default) and optionally
every convolution and dense layer of the generator (``spectral_norm=False`` by default, as in the
paper). BatchNorm (generator only) uses momentum 0.9
and eps 1e-5 (:mod:`ganjax.models.layers`).

Class conditioning (``num_classes`` set; Miyato & Koyama 2018): the generator's residual blocks
use :class:`~ganjax.models.blocks.ConditionalBatchNorm` (per-class gain and bias; the final BN
before the output convolution stays unconditional, as in the authors' code), and the
discriminator adds the projection term of Miyato & Koyama's Eq. (3), ``logit = w.phi + b +
<V[y], phi>`` for the pooled features ``phi`` and a class embedding ``V`` (``(num_classes,
16w)``, or ``w`` at 32 pixels), spectrally normalised with the rest (the formula of
:class:`~ganjax.models.blocks.ProjectionHead`, built here from spectrally normalised layers:
parameters ``Dense_0`` and ``Embed_0/embedding``). Labels are then required (``ValueError``
when missing); with ``num_classes=None`` labels are ignored.

Initialisation, as in the authors' Chainer code: Glorot (Xavier) uniform everywhere, with gain
``sqrt(2)`` on the residual ``3x3`` convolutions (``U(-a, a)``, ``a = sqrt(2) * sqrt(6 / (fan_in
+ fan_out))``, i.e. variance ``4 / (fan_in + fan_out)``) and gain 1 on the shortcut ``1x1``
convolutions, the dense layers, the output convolution and the projection embedding; zero biases;
BatchNorm scales 1. All convolutions and dense layers have biases.

``dtype="bfloat16"`` computes in bfloat16 (parameters, statistics and the returned images /
logits stay float32).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import blocks, layers

SUPPORTED_SIZES = (32, 48, 64)

# Reference widths (generator, discriminator) of each layout.
REFERENCE_WIDTHS = {32: (256, 128), 48: (64, 64), 64: (64, 64)}

# Glorot uniform with gain sqrt(2) (variance scale 2) on the residual 3x3 convolutions; gain 1
# elsewhere (Miyato et al.'s code: GlorotUniform(math.sqrt(2)) and GlorotUniform()).
_RESIDUAL_INIT = layers.variance_scaling(2.0, "fan_avg", "uniform")
_GLOROT = layers.glorot_uniform()


def check_image_size(height: int, width: int) -> int:
  """Returns the image size; raises ``ValueError`` unless the image is square and supported."""
  if height != width or height not in SUPPORTED_SIZES:
    raise ConfigError(
      f"The SNGAN ResNet supports square images of {', '.join(map(str, SUPPORTED_SIZES))} "
      f"pixels, got {height}x{width}; resize the data (config.data.image_size)."
    )
  return height


def generator_layout(size: int, width: int) -> tuple[int, list[int]]:
  """``(start, channels)``: the dense layer's ``start x start`` map has ``channels[0]`` channels,
  and upsampling block ``i`` outputs ``channels[i + 1]``."""
  if size == 32:
    return 4, [width] * 4
  if size == 48:
    return 6, [8 * width, 4 * width, 2 * width, width]
  return 4, [16 * width, 8 * width, 4 * width, 2 * width, width]


def discriminator_layout(size: int, width: int) -> list[tuple[int, bool]]:
  """``(channels, downsample)`` of each discriminator block; the first is the optimized block."""
  if size == 32:
    return [(width, True), (width, True), (width, False), (width, False)]
  if size == 48:
    return [
      (width, True),
      (2 * width, True),
      (4 * width, True),
      (8 * width, True),
      (16 * width, False),
    ]
  return [
    (width, True),
    (2 * width, True),
    (4 * width, True),
    (8 * width, True),
    (16 * width, True),
  ]


def _upsample(x: jax.Array) -> jax.Array:
  """2x nearest-neighbour upsampling of NHWC maps."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def _avg_pool(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2 of NHWC maps (even sizes)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _check_common(conv_impl: str, dtype: str) -> None:
  layers.check_choice("conv_impl", conv_impl, layers.CONV_IMPLS)
  layers.check_choice("dtype", dtype, layers.DTYPES)


class GeneratorBlock(nn.Module):
  """Up-sampling residual block of the generator (see the module docstring).

  Attributes:
    features: output channels (also the hidden width).
    upsample: double the resolution (2x nearest-neighbour).
    num_classes: ``None``: BatchNorm; else class-conditional BatchNorm (labels required).
    spectral_norm: spectrally normalise the convolutions.
    conv_impl: convolution implementation (:data:`ganjax.models.layers.CONV_IMPLS`).
    dtype: computation dtype.
  """

  features: int
  upsample: bool = True
  num_classes: int | None = None
  spectral_norm: bool = False
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    def norm(h):
      if self.num_classes is None:
        return layers.batch_norm(train, dtype=self.dtype)(h)
      return blocks.ConditionalBatchNorm(self.num_classes, dtype=self.dtype)(h, labels, train=train)

    def conv(features, kernel_size, init):
      return blocks.sn_conv(
        features,
        kernel_size,
        kernel_init=init,
        impl=self.conv_impl,
        dtype=self.dtype,
        enabled=self.spectral_norm,
      )

    h = nn.relu(norm(x))
    if self.upsample:
      h = _upsample(h)
    h = conv(self.features, 3, _RESIDUAL_INIT)(h, update_stats=train)
    h = nn.relu(norm(h))
    h = conv(self.features, 3, _RESIDUAL_INIT)(h, update_stats=train)
    shortcut = x
    if self.upsample or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, _GLOROT)(shortcut, update_stats=train)
    if self.upsample:
      shortcut = _upsample(shortcut)
    return h + shortcut.astype(h.dtype)


class DiscriminatorBlock(nn.Module):
  """Residual block of the discriminator, optionally down-sampling (see the module docstring).

  Attributes:
    features: output channels.
    downsample: halve the resolution (2x2 average pooling).
    optimized: the first block's form (no ReLU before the first convolution, hidden width =
      ``features``, shortcut avgpool - conv1x1); it always downsamples.
    spectral_norm: spectrally normalise the convolutions.
    conv_impl: convolution implementation (:data:`ganjax.models.layers.CONV_IMPLS`).
    dtype: computation dtype.
  """

  features: int
  downsample: bool = True
  optimized: bool = False
  spectral_norm: bool = True
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    def conv(features, kernel_size, init):
      return blocks.sn_conv(
        features,
        kernel_size,
        kernel_init=init,
        impl=self.conv_impl,
        dtype=self.dtype,
        enabled=self.spectral_norm,
      )

    downsample = self.downsample or self.optimized
    hidden = self.features if self.optimized else x.shape[-1]
    h = x if self.optimized else nn.relu(x)
    h = conv(hidden, 3, _RESIDUAL_INIT)(h, update_stats=train)
    h = nn.relu(h)
    h = conv(self.features, 3, _RESIDUAL_INIT)(h, update_stats=train)
    if downsample:
      h = _avg_pool(h)
    shortcut = _avg_pool(x) if downsample else x
    if downsample or x.shape[-1] != self.features:
      shortcut = conv(self.features, 1, _GLOROT)(shortcut, update_stats=train)
    return h + shortcut.astype(h.dtype)


class Generator(nn.Module):
  """SNGAN ResNet generator: latents ``(B, Z)`` -> images ``(B, H, W, C)`` in [-1, 1].

  Attributes:
    image_shape: ``(H, W, C)`` with H == W in :data:`SUPPORTED_SIZES`; selects the layout.
    width: channel multiplier w (see the module docstring); ``None`` = the layout's reference
      (256 at 32 pixels, 64 at 48 and 64 pixels).
    num_classes: ``None`` for an unconditional generator (labels ignored); else the number of
      classes of the conditional BatchNorms, and labels ``(B,)`` are required.
    spectral_norm: spectrally normalise every convolution and dense layer (off in the paper).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`);
      parameters do not depend on it.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32; the
      images are returned as float32).
  """

  image_shape: tuple[int, int, int]
  width: int | None = None
  num_classes: int | None = None
  spectral_norm: bool = False
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    if len(self.image_shape) != 3:
      raise ConfigError(f"The SNGAN ResNet needs image_shape (H, W, C), got {self.image_shape}.")
    height, width, channels = self.image_shape
    size = check_image_size(height, width)
    _check_common(self.conv_impl, self.dtype)
    if self.num_classes is None:
      labels = None
    else:
      labels = blocks.check_labels(
        labels, z.shape[0], self.num_classes, "ResNet Generator", soft=True
      )
    w = REFERENCE_WIDTHS[size][0] if self.width is None else self.width
    start, stage_channels = generator_layout(size, w)
    common = dict(conv_impl=self.conv_impl, dtype=self.dtype)

    x = blocks.sn_dense(
      start * start * stage_channels[0],
      kernel_init=_GLOROT,
      dtype=self.dtype,
      enabled=self.spectral_norm,
    )(z, update_stats=train)
    x = x.reshape(z.shape[0], start, start, stage_channels[0])
    for i, features in enumerate(stage_channels[1:]):
      x = GeneratorBlock(
        features,
        num_classes=self.num_classes,
        spectral_norm=self.spectral_norm,
        name=f"block{i + 1}",
        **common,
      )(x, labels, train=train)
    x = nn.relu(layers.batch_norm(train, dtype=self.dtype)(x))
    x = blocks.sn_conv(
      channels,
      3,
      kernel_init=_GLOROT,
      impl=self.conv_impl,
      dtype=self.dtype,
      enabled=self.spectral_norm,
    )(x, update_stats=train)
    return jnp.tanh(x).astype(jnp.float32)


class Discriminator(nn.Module):
  """SNGAN ResNet discriminator: images ``(B, H, W, C)`` -> logits ``(B,)``; the layout follows H.

  Attributes:
    width: channel multiplier w (see the module docstring); ``None`` = the layout's reference
      (128 at 32 pixels, 64 at 48 and 64 pixels).
    num_classes: ``None`` for an unconditional discriminator (labels ignored); else the number of
      classes of the projection head, and labels ``(B,)`` are required.
    spectral_norm: spectrally normalise every convolution, the dense layer and the projection
      embedding (on in the paper).
    conv_impl: convolution implementation (see :data:`ganjax.models.layers.CONV_IMPLS`);
      parameters do not depend on it.
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32; the
      pooled features, the output layer and the logits are float32).
  """

  width: int | None = None
  num_classes: int | None = None
  spectral_norm: bool = True
  conv_impl: str = "auto"
  dtype: str = "float32"

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(
        f"The SNGAN ResNet discriminator needs (B, H, W, C) images, got shape {x.shape}."
      )
    size = check_image_size(x.shape[1], x.shape[2])
    _check_common(self.conv_impl, self.dtype)
    if self.num_classes is not None:
      labels = blocks.check_labels(labels, x.shape[0], self.num_classes, "ResNet Discriminator")
    w = REFERENCE_WIDTHS[size][1] if self.width is None else self.width
    h = x.astype(layers.resolve_dtype(self.dtype))
    for i, (features, downsample) in enumerate(discriminator_layout(size, w)):
      h = DiscriminatorBlock(
        features,
        downsample=downsample,
        optimized=i == 0,
        spectral_norm=self.spectral_norm,
        conv_impl=self.conv_impl,
        dtype=self.dtype,
        name=f"block{i + 1}",
      )(h, train=train)
    phi = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))  # Global sum pooling.
    out = blocks.sn_dense(1, kernel_init=_GLOROT, enabled=self.spectral_norm)(
      phi, update_stats=train
    )[:, 0]
    if self.num_classes is None:
      return out
    # Projection (Miyato & Koyama 2018, Eq. 3): + <V[y], phi>, V spectrally normalised too.
    embed = nn.Embed(self.num_classes, phi.shape[-1], embedding_init=_GLOROT)
    v = blocks.spectral_norm(embed, enabled=self.spectral_norm)(labels, update_stats=train)
    return out + jnp.sum(v * phi, axis=-1)
