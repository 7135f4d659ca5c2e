"""Fully connected GAN networks, after Goodfellow et al. 2014.

Reference: Goodfellow et al., "Generative Adversarial Nets", NeurIPS 2014, arXiv:1406.2661.

The defaults are the seed tutorials' vanilla GAN for 28x28 MNIST with a 64-d latent:

* G: z(64) -> 256 -> 512 -> 1024 -> 784, each hidden layer Dense (with bias) -> BatchNorm ->
  LeakyReLU(0.2), then tanh, reshaped to ``image_shape``;
* D: 784 -> 512 -> 256 -> 128 -> 1, each hidden layer Dense -> LeakyReLU(0.1) -> Dropout(0.2).
  ``maxout_pieces=k`` (k > 1) makes every hidden unit a maxout unit of k linear pieces instead
  (Goodfellow et al. 2013, arXiv:1302.4389), the discriminator of the 2-D mode-collapse studies of
  VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018: 3 x 200 units of 5 pieces).
  ``minibatch`` inserts a batch-statistics block before the final Dense layer (off by default):
  minibatch discrimination (Salimans et al. 2016, arXiv:1606.03498) or the minibatch standard
  deviation (Karras et al. 2018, arXiv:1710.10196), from :mod:`ganjax.models.blocks`.

Class-conditional variants (``num_classes`` set; Mirza & Osindero 2014, arXiv:1411.1784): G
conditions by concatenating a label code to z (``conditioning="concat"``) or by conditional
BatchNorm (``"batchnorm"``); D by concatenating the one-hot label to its input (``"concat"``), a
projection head (``"projection"``, Miyato & Koyama 2018) or an auxiliary classifier (``"acgan"``,
Odena et al. 2017; D then returns ``(logits, class_logits)``). See
:mod:`ganjax.models.blocks`.

For 2-D point data (``image_shape=(2,)``, the Gaussian-mixture mode-collapse studies) set
``output_activation="linear"`` so the generator can reach points outside [-1, 1].

Dense layers use flax's default initialisation (LeCun normal kernels, zero biases); BatchNorm uses
:func:`ganjax.models.layers.batch_norm` (momentum 0.9, eps 1e-5, PyTorch's defaults).
``dtype="bfloat16"`` computes in bfloat16; parameters and the returned samples / logits stay
float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import blocks, layers

# Generator output activations by name.
OUTPUT_ACTIVATIONS = {"tanh": jnp.tanh, "linear": lambda x: x}
# Batch-statistics features of the discriminator (``Discriminator.minibatch``).
MINIBATCH_CHOICES = ("none", "minibatch_discrimination", "mbstd")


class Generator(nn.Module):
  """MLP generator: latents ``(B, Z)`` -> samples ``(B, *image_shape)``.

  Attributes:
    image_shape: shape of one sample, e.g. ``(28, 28, 1)`` or ``(2,)``.
    hidden: widths of the hidden layers.
    batch_norm: BatchNorm after each hidden Dense layer.
    leaky_slope: negative slope of the hidden LeakyReLUs.
    output_activation: ``"tanh"`` (images in [-1, 1]) or ``"linear"`` (unbounded points).
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes; labels
      ``(B,)`` are then required.
    conditioning: how labels reach G: ``"concat"`` (a label code concatenated to z) or
      ``"batchnorm"`` (conditional BatchNorm in every hidden layer; needs ``batch_norm``).
    label_dim: size of the learned label embedding of ``"concat"``; ``None`` = one-hot.
  """

  image_shape: tuple[int, ...]
  hidden: tuple[int, ...] = (256, 512, 1024)
  batch_norm: bool = True
  leaky_slope: float = 0.2
  output_activation: str = "tanh"
  dtype: str = "float32"
  num_classes: int | None = None
  conditioning: str = "concat"
  label_dim: int | None = None

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    layers.check_choice("output_activation", self.output_activation, tuple(OUTPUT_ACTIVATIONS))
    layers.check_choice("dtype", self.dtype, layers.DTYPES)
    conditional = blocks.check_conditioning(
      "MLP Generator", self.num_classes, self.conditioning, blocks.GENERATOR_CONDITIONING
    )
    num_classes = None
    x = z
    if conditional and self.conditioning == "concat":
      x = blocks.LabelEmbedding(self.num_classes, self.label_dim)(x, labels)
    elif conditional:
      if not self.batch_norm:
        raise ConfigError(
          "MLP Generator: conditioning='batchnorm' needs batch_norm=True; use "
          "conditioning='concat' for a generator without BatchNorm."
        )
      num_classes = self.num_classes
    for features in self.hidden:
      x = layers.dense(features, dtype=self.dtype)(x)
      if self.batch_norm:
        x = blocks.generator_norm(x, labels, train=train, num_classes=num_classes, dtype=self.dtype)
      x = nn.leaky_relu(x, self.leaky_slope)
    x = layers.dense(math.prod(self.image_shape), dtype=self.dtype)(x)
    x = OUTPUT_ACTIVATIONS[self.output_activation](x)
    return x.reshape(z.shape[0], *self.image_shape).astype(jnp.float32)


class Discriminator(nn.Module):
  """MLP discriminator: samples ``(B, ...)`` (flattened) -> logits ``(B,)``.

  Attributes:
    hidden: widths of the hidden layers.
    leaky_slope: negative slope of the hidden LeakyReLUs.
    dropout: dropout rate after each hidden activation (0 disables it).
    minibatch: features of the whole batch appended before the final Dense layer:
      ``"none"``, ``"minibatch_discrimination"`` (:class:`blocks.MinibatchDiscrimination`, Salimans
      et al. 2016, Sec. 3.2) or ``"mbstd"`` (:class:`blocks.MinibatchStdDev`, Karras et al. 2018).
    minibatch_kernels: number of kernels B of minibatch discrimination.
    minibatch_kernel_dim: dimension C of each minibatch-discrimination kernel.
    mbstd_group_size: group size of the minibatch standard deviation (must divide the batch).
    dtype: computation dtype, ``"float32"`` or ``"bfloat16"`` (parameters stay float32).
    spectral_norm: spectrally normalise every Dense layer (Miyato et al. 2018;
      :func:`ganjax.models.blocks.spectral_norm`, state in ``batch_stats``). Parameter names and
      shapes do not depend on it.
    num_classes: ``None`` (unconditional; labels ignored) or the number of classes; labels
      ``(B,)`` are then required.
    maxout_pieces: 1 = Dense -> LeakyReLU hidden layers; k > 1 = maxout units of k pieces
      (:func:`ganjax.models.blocks.maxout`; a hidden layer of width w then has k * w outputs).
    kernel_init_std: ``None`` = LeCun-normal Dense kernels; a number = N(0, std^2) kernels (the
      PacGAN/VEEGAN 2-D discriminator uses 0.02).
    conditioning: how labels reach D: ``"concat"`` (one-hot label concatenated to the input),
      ``"projection"`` (projection head) or ``"acgan"`` (auxiliary classifier; returns
      ``(logits, class_logits)``).
  """

  hidden: tuple[int, ...] = (512, 256, 128)
  leaky_slope: float = 0.1
  dropout: float = 0.2
  minibatch: str = "none"
  minibatch_kernels: int = 100
  minibatch_kernel_dim: int = 5
  mbstd_group_size: int = 4
  dtype: str = "float32"
  spectral_norm: bool = False
  num_classes: int | None = None
  conditioning: str = "projection"
  maxout_pieces: int = 1
  kernel_init_std: float | None = None

  @nn.compact
  def __call__(
    self, x: jax.Array, labels: jax.Array | None = None, *, train: bool
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    layers.check_choice("dtype", self.dtype, layers.DTYPES)
    layers.check_choice("minibatch", self.minibatch, MINIBATCH_CHOICES)
    conditional = blocks.check_conditioning(
      "MLP Discriminator", self.num_classes, self.conditioning, blocks.DISCRIMINATOR_CONDITIONING
    )
    if self.maxout_pieces < 1:
      raise ConfigError(f"MLP Discriminator: maxout_pieces must be >= 1, got {self.maxout_pieces}.")
    x = x.reshape(x.shape[0], -1)
    if conditional and self.conditioning == "concat":
      x = blocks.LabelEmbedding(self.num_classes)(x, labels)
    init = {}
    if self.kernel_init_std is not None:
      init["kernel_init"] = layers.normal(self.kernel_init_std)

    def dense(features, h):
      layer = layers.dense(features, dtype=self.dtype, **init)
      if not self.spectral_norm:
        return layer(h)
      return blocks.spectral_norm(layer)(h, update_stats=train)

    for features in self.hidden:
      if self.maxout_pieces > 1:
        x = blocks.maxout(dense(features * self.maxout_pieces, x), self.maxout_pieces)
      else:
        x = nn.leaky_relu(dense(features, x), self.leaky_slope)
      if self.dropout > 0:
        x = layers.Dropout(self.dropout)(x, deterministic=not train)
    if self.minibatch == "minibatch_discrimination":
      x = blocks.MinibatchDiscrimination(self.minibatch_kernels, self.minibatch_kernel_dim)(x)
    elif self.minibatch == "mbstd":
      x = blocks.MinibatchStdDev(group_size=self.mbstd_group_size)(x)
    return blocks.discriminator_head(
      x,
      labels,
      lambda h: dense(1, h)[:, 0].astype(jnp.float32),
      train=train,
      num_classes=self.num_classes if conditional else None,
      conditioning=self.conditioning,
      spectral_norm=self.spectral_norm,
    )
