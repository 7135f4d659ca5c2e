"""LAPGAN: a Laplacian pyramid of generative adversarial networks.

Reference: Denton, Chintala, Szlam, Fergus, "Deep Generative Image Models using a Laplacian
Pyramid of Adversarial Networks", NeurIPS 2015, arXiv:1506.05751.

**The pyramid** (Sec. 3.1). A Gaussian pyramid ``[x_0, ..., x_K]`` of an image ``x_0`` repeats a
fixed downsampling ``x_{k+1} = d(x_k)``; the Laplacian pyramid keeps the band-pass images
``h_k = x_k - u(x_{k+1})`` for ``k < K`` and the low-pass residual ``x_K``. It is invertible:
``x_k = u(x_{k+1}) + h_k`` (Eq. 1-2). The paper blurs and decimates; here the fixed pair is

* :func:`downsample` ``d``: 2x2 average pooling (a box blur + decimation by 2),
* :func:`upsample` ``u``: bilinear interpolation to twice the size (``jax.image.resize``, "linear",
  half-pixel centres),

and :func:`reconstruct` (``decompose``) is exact up to float rounding for any ``u``, because each
``h_k`` is defined as the difference. Image sides must halve evenly ``K`` times (28 -> 14 -> 7 and
32 -> 16 -> 8 for ``K = 2``); :func:`pyramid_shapes` names the bad size otherwise.

**The networks** (Sec. 3.2, 4). The coarsest level is an unconditional GAN on ``x_K`` (the paper
uses MLPs at 8x8 for CIFAR-10): :class:`CoarseGenerator` / :class:`CoarseDiscriminator`. Every
finer level ``k`` is a conditional GAN: :class:`LevelGenerator` ``G_k(l_k, z_k)`` maps the
upsampled coarser image ``l_k = u(x_{k+1})`` and a noise plane ``z_k`` (presented as an extra
colour channel, as the paper's CIFAR-10 model does) to a band-pass image ``h~_k`` (linear output:
residuals are small signed values), and :class:`LevelDiscriminator` ``D_k(h, l_k)`` judges a real
or generated band-pass image together with ``l_k`` (concatenated as channels; the paper adds
``l_k`` to ``h`` before the first layer, which the first convolution can learn). With
``num_classes`` set, labels enter as one-hot planes (level networks) or a one-hot code
concatenated to the input vector (coarse networks), as in the paper's class-conditional CIFAR-10
model. Widths are small by default so the CPU can train the pyramid.

**Sampling** (Sec. 3.3, Fig. 1) chains the levels: ``x~_K = G_K(z_K)``, then
``x~_k = u(x~_{k+1}) + G_k(u(x~_{k+1}), z_k)`` down to ``x~_0``. The whole pyramid is a function of
one flat latent vector (:func:`latent_shapes`: the coarse latent, then one noise plane per level,
coarsest first), so it can be evaluated like any generator.

This module's networks are trained by :mod:`ganjax.systems.lapgan` (``config.task = "lapgan"``),
not by the GAN loop of :mod:`ganjax.systems.gan` (see :data:`SYSTEM`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import blocks, layers

# The system of ganjax.systems that trains these networks; it also keeps this module out of the
# GAN loop's architectures (ganjax.models.available_models).
SYSTEM = "lapgan"

# Noise channels of a level generator's input (the paper's "4th colour plane" for RGB data).
NOISE_CHANNELS = 1


# --------------------------------------------------------------------------------------------
# The Laplacian pyramid.
# --------------------------------------------------------------------------------------------


def pyramid_shapes(height: int, width: int, num_levels: int) -> list[tuple[int, int]]:
  """The ``(H, W)`` of ``x_0, ..., x_K`` for ``K = num_levels`` halvings.

  Raises:
    ValueError: ``num_levels < 1``, or a side that does not halve evenly ``num_levels`` times (the
      message names the size, the level count and the level counts that work).
  """
  if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
    raise ConfigError(f"The pyramid needs num_levels >= 1 (an integer), got {num_levels!r}.")
  shapes = [(height, width)]
  for level in range(num_levels):
    h, w = shapes[-1]
    if h % 2 or w % 2 or h < 2 or w < 2:
      valid = max_levels(height, width)
      raise ConfigError(
        f"A {height}x{width} image does not halve evenly {num_levels} times: level {level} is "
        f"{h}x{w}. Valid num_levels for {height}x{width}: "
        f"{'1..' + str(valid) if valid else 'none (resize the data to an even size)'}."
      )
    shapes.append((h // 2, w // 2))
  return shapes


def max_levels(height: int, width: int) -> int:
  """How many times both sides halve evenly (the largest valid ``num_levels``)."""
  levels = 0
  while height % 2 == 0 and width % 2 == 0 and height >= 2 and width >= 2:
    height, width, levels = height // 2, width // 2, levels + 1
  return levels


def downsample(x: jax.Array) -> jax.Array:
  """``d``: 2x2 average pooling, ``(B, H, W, C) -> (B, H/2, W/2, C)`` (H and W even)."""
  b, h, w, c = x.shape
  if h % 2 or w % 2:
    raise ValueError(f"downsample needs even sides, got {h}x{w}.")
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x: jax.Array, shape: Sequence[int]) -> jax.Array:
  """``u``: bilinear interpolation of ``(B, h, w, C)`` to ``shape``: ``(H, W)`` or ``(B, H, W, C)``.

  Also accepts a 3-tuple ``(H, W, C)``.
  """
  shape = tuple(shape)
  height, width = shape[-3:-1] if len(shape) >= 3 else shape
  return jax.image.resize(x, (x.shape[0], height, width, x.shape[-1]), method="linear")


def gaussian_pyramid(images: jax.Array, num_levels: int) -> list[jax.Array]:
  """``[x_0, ..., x_K]``: the images and ``K = num_levels`` successive :func:`downsample`\\ s."""
  if images.ndim != 4:
    raise ValueError(f"The pyramid needs (B, H, W, C) images, got shape {images.shape}.")
  pyramid_shapes(images.shape[1], images.shape[2], num_levels)
  out = [images]
  for _ in range(num_levels):
    out.append(downsample(out[-1]))
  return out


def decompose(images: jax.Array, num_levels: int) -> list[jax.Array]:
  """The Laplacian pyramid ``[h_0 (finest band-pass), ..., h_{K-1}, x_K (coarsest low-pass)]``.

  ``h_k = x_k - u(x_{k+1})`` (Denton et al. 2015, Eq. 1), ``K = num_levels``.

  Raises:
    ValueError: the image sides do not halve evenly ``num_levels`` times (see
      :func:`pyramid_shapes`).
  """
  gauss = gaussian_pyramid(images, num_levels)
  bands = [gauss[k] - upsample(gauss[k + 1], gauss[k].shape) for k in range(num_levels)]
  return [*bands, gauss[-1]]


def reconstruct(pyramid: Sequence[jax.Array]) -> jax.Array:
  """Inverts :func:`decompose`: ``x_k = u(x_{k+1}) + h_k`` from ``x_K`` down to ``x_0`` (Eq. 2)."""
  if len(pyramid) < 1:
    raise ValueError("reconstruct needs at least the low-pass image.")
  x = pyramid[-1]
  for band in reversed(pyramid[:-1]):
    x = upsample(x, band.shape) + band
  return x


# --------------------------------------------------------------------------------------------
# The flat latent of the whole pyramid, and sampling by chaining the levels.
# --------------------------------------------------------------------------------------------


def latent_shapes(
  image_shape: Sequence[int], num_levels: int, latent_dim: int
) -> list[tuple[int, ...]]:
  """Shapes of the pieces of the pyramid's flat latent, in order.

  ``[(latent_dim,), noise plane of level K-1, ..., noise plane of level 0]``: the coarse GAN's
  latent, then ``(H_k, W_k, NOISE_CHANNELS)`` per finer level, coarsest first.
  """
  height, width, _ = image_shape
  shapes = pyramid_shapes(height, width, num_levels)
  planes = [(*shapes[k], NOISE_CHANNELS) for k in reversed(range(num_levels))]
  return [(latent_dim,), *planes]


def latent_size(image_shape: Sequence[int], num_levels: int, latent_dim: int) -> int:
  """The length of the pyramid's flat latent vector (the sum of :func:`latent_shapes`)."""
  return sum(math.prod(s) for s in latent_shapes(image_shape, num_levels, latent_dim))


def split_latents(
  z: jax.Array, image_shape: Sequence[int], num_levels: int, latent_dim: int
) -> list[jax.Array]:
  """Splits flat latents ``(B, latent_size)`` into the pieces of :func:`latent_shapes`."""
  shapes = latent_shapes(image_shape, num_levels, latent_dim)
  total = sum(math.prod(s) for s in shapes)
  if z.ndim != 2 or z.shape[1] != total:
    raise ValueError(
      f"LAPGAN latents for images {tuple(image_shape)} with {num_levels} levels and "
      f"latent_dim {latent_dim} have shape (B, {total}), got {z.shape}."
    )
  pieces, start = [], 0
  for shape in shapes:
    size = math.prod(shape)
    pieces.append(z[:, start : start + size].reshape(z.shape[0], *shape))
    start += size
  return pieces


def chain(
  coarse: Callable[[jax.Array], jax.Array],
  level: Callable[[int, jax.Array, jax.Array], jax.Array],
  z: jax.Array,
  image_shape: Sequence[int],
  num_levels: int,
  latent_dim: int,
) -> list[jax.Array]:
  """Samples the pyramid coarse to fine (Denton et al. 2015, Sec. 3.3, Fig. 1).

  Args:
    coarse: ``coarse(z_K) -> x~_K``, the coarse generator (labels bound by the caller).
    level: ``level(k, l_k, z_k) -> h~_k``, the generator of level ``k``.
    z: flat latents ``(B, latent_size(...))`` (see :func:`latent_shapes`).
    image_shape: ``(H, W, C)`` of ``x_0``.
    num_levels: ``K``.
    latent_dim: the coarse GAN's latent size.

  Returns:
    ``[x~_K, ..., x~_0]``, the generated low-pass image of every level, coarsest first (not
    clipped; ``x~_0`` is the sample).
  """
  pieces = split_latents(z, image_shape, num_levels, latent_dim)
  x = coarse(pieces[0])
  images = [x]
  for noise, k in zip(pieces[1:], reversed(range(num_levels)), strict=True):
    low = upsample(x, noise.shape[1:3])
    x = low + level(k, low, noise)
    images.append(x)
  return images


# --------------------------------------------------------------------------------------------
# Networks.
# --------------------------------------------------------------------------------------------


def _check_inputs(who: str, x: jax.Array) -> None:
  if x.ndim != 4:
    raise ValueError(f"{who} needs (B, H, W, C) inputs, got shape {x.shape}.")


class CoarseGenerator(nn.Module):
  """The coarsest level's generator: an MLP ``z (B, Z) -> x~_K (B, H, W, C)`` in [-1, 1].

  Denton et al. 2015, Sec. 4 (an MLP at 8x8 for CIFAR-10): Dense layers of ``hidden`` units with
  ReLU, then a Dense layer to ``H * W * C`` and tanh (the low-pass image of [-1, 1] data stays in
  [-1, 1]). Conditional (``num_classes`` set): the one-hot label is concatenated to ``z``.

  Attributes:
    image_shape: ``(H, W, C)`` of the coarse image.
    hidden: widths of the hidden layers.
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes.
  """

  image_shape: tuple[int, int, int]
  hidden: tuple[int, ...] = (256, 256)
  num_classes: int | None = None

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    del train  # No BatchNorm or dropout.
    if z.ndim != 2:
      raise ValueError(f"CoarseGenerator needs latents (B, Z), got shape {z.shape}.")
    if self.num_classes is not None:
      z = blocks.LabelEmbedding(self.num_classes)(z, labels)
    x = z
    for features in self.hidden:
      x = nn.relu(layers.dense(features)(x))
    x = layers.dense(math.prod(self.image_shape))(x)
    return jnp.tanh(x).reshape(z.shape[0], *self.image_shape)


class CoarseDiscriminator(nn.Module):
  """The coarsest level's discriminator: an MLP ``x_K (B, H, W, C) -> logits (B,)``.

  Denton et al. 2015, Sec. 4: Dense layers of ``hidden`` units with LeakyReLU(``leaky_slope``),
  then one logit. Conditional: the one-hot label is concatenated to the flattened image.

  Attributes:
    hidden: widths of the hidden layers.
    leaky_slope: negative slope of the LeakyReLUs.
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes.
  """

  hidden: tuple[int, ...] = (256, 256)
  leaky_slope: float = 0.2
  num_classes: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    del train
    _check_inputs("CoarseDiscriminator", x)
    h = x.reshape(x.shape[0], -1)
    if self.num_classes is not None:
      h = blocks.LabelEmbedding(self.num_classes)(h, labels)
    for features in self.hidden:
      h = nn.leaky_relu(layers.dense(features)(h), self.leaky_slope)
    return layers.dense(1)(h)[:, 0]


class LevelGenerator(nn.Module):
  """A finer level's generator ``G_k(l_k, z_k) -> h~_k``: a band-pass image, linear output.

  Denton et al. 2015, Sec. 3.2 and 4: a convnet on the upsampled coarser image ``l_k (B, H, W,
  C)`` with the noise ``z_k (B, H, W, 1)`` (or flat ``(B, H * W)``) as an extra input plane
  (and, when conditional, ``num_classes`` one-hot label planes): ``num_layers - 1`` stride-1
  ``kernel_size`` convolutions of ``width`` channels with ReLU, then one to ``C`` channels with no
  activation (residuals are small signed values).

  Attributes:
    width: channels of the hidden convolutions.
    num_layers: convolutions in all (>= 2).
    kernel_size: their kernel size.
    conv_impl: convolution implementation (:data:`ganjax.models.layers.CONV_IMPLS`); parameters
      do not depend on it.
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes.
  """

  width: int = 32
  num_layers: int = 3
  kernel_size: int = 5
  conv_impl: str = "auto"
  num_classes: int | None = None

  @nn.compact
  def __call__(
    self,
    low: jax.Array,
    noise: jax.Array,
    labels: jax.Array | None = None,
    *,
    train: bool,
  ) -> jax.Array:
    del train
    _check_inputs("LevelGenerator", low)
    layers.check_choice("conv_impl", self.conv_impl, layers.CONV_IMPLS)
    if self.num_layers < 2:
      raise ConfigError(f"LevelGenerator needs num_layers >= 2, got {self.num_layers}.")
    b, h, w, c = low.shape
    if noise.ndim == 2:
      noise = noise.reshape(b, h, w, -1)
    if noise.shape[:3] != (b, h, w):
      raise ValueError(
        f"LevelGenerator: the noise {noise.shape} must cover the image {low.shape} (a plane "
        f"(B, {h}, {w}, {NOISE_CHANNELS}) or flat (B, {h * w * NOISE_CHANNELS}))."
      )
    x = jnp.concatenate([low, noise.astype(low.dtype)], axis=-1)
    if self.num_classes is not None:
      x = blocks.LabelEmbedding(self.num_classes)(x, labels)
    for _ in range(self.num_layers - 1):
      x = nn.relu(layers.conv(self.width, self.kernel_size, 1, "SAME", impl=self.conv_impl)(x))
    return layers.conv(c, self.kernel_size, 1, "SAME", impl=self.conv_impl)(x)


class LevelDiscriminator(nn.Module):
  """A finer level's discriminator ``D_k(h, l_k) -> logits (B,)``.

  Denton et al. 2015, Sec. 3.2 and 4: the band-pass image ``h`` (real ``h_k`` or generated
  ``h~_k``) and the low-pass image ``l_k`` it refines, concatenated as channels (with one-hot
  label planes when conditional), go through ``len(widths)`` stride-2 ``kernel_size``
  convolutions with LeakyReLU(``leaky_slope``), then a Dense layer to one logit.

  Attributes:
    widths: channels of the stride-2 convolutions.
    kernel_size: their kernel size.
    leaky_slope: negative slope of the LeakyReLUs.
    conv_impl: convolution implementation; parameters do not depend on it.
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes.
  """

  widths: tuple[int, ...] = (32, 64)
  kernel_size: int = 5
  leaky_slope: float = 0.2
  conv_impl: str = "auto"
  num_classes: int | None = None

  @nn.compact
  def __call__(
    self,
    band: jax.Array,
    low: jax.Array,
    labels: jax.Array | None = None,
    *,
    train: bool,
  ) -> jax.Array:
    del train
    _check_inputs("LevelDiscriminator", band)
    layers.check_choice("conv_impl", self.conv_impl, layers.CONV_IMPLS)
    if band.shape != low.shape:
      raise ValueError(
        f"LevelDiscriminator: the band-pass image {band.shape} and the low-pass image "
        f"{low.shape} must have the same shape."
      )
    x = jnp.concatenate([band, low], axis=-1)
    if self.num_classes is not None:
      x = blocks.LabelEmbedding(self.num_classes)(x, labels)
    for features in self.widths:
      x = layers.conv(features, self.kernel_size, 2, "SAME", impl=self.conv_impl)(x)
      x = nn.leaky_relu(x, self.leaky_slope)
    return layers.dense(1)(x.reshape(x.shape[0], -1))[:, 0]
