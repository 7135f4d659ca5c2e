"""The variational autoencoder baseline: a DCGAN-shaped encoder and decoder, the ELBO's terms.

References:
  Kingma, Welling, "Auto-Encoding Variational Bayes", ICLR 2014, arXiv:1312.6114.
  Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a Constrained Variational
  Framework", ICLR 2017 (the weight ``beta`` on the KL term).
  Radford, Metz, Chintala, ICLR 2016, arXiv:1511.06434 (the layouts: :mod:`ganjax.models.dcgan`).

The networks mirror the DCGAN of :mod:`ganjax.models.dcgan`, so that a GAN and a VAE of the same
width can be compared on the same data and budget (``w`` = the ``width`` field, ``L`` = the latent
size, ``C`` = channels):

* :class:`Encoder` mirrors the discriminator: at 28 pixels 5x5 stride-2 convs w (-> 14) and 2w
  (-> 7) with biases and LeakyReLU(0.3) (the tutorial's Dropout(0.3) is left out: it would only
  add noise to the posterior); at 32/64 pixels 4x4 stride-2 convs (w, 2w, ... down to 4x4) without
  biases, BatchNorm after all but the first, LeakyReLU(0.2). The discriminator's final one-logit
  layer becomes a Dense layer (with bias) from the flattened features to ``2 L`` outputs: the mean
  and the log-variance of the diagonal Gaussian posterior q(z | x).
* :class:`Decoder` is the generator's layout (Dense or 4x4 "VALID" transposed conv from z, then
  transposed convs with BatchNorm), but its last layer has a bias and no tanh: it returns the
  parameters of the pixel likelihood p(x | z).

Likelihood (``likelihood`` of the decoder). ganjax images are in [-1, 1]; the decoder models the
pixels ``t = (x + 1) / 2`` in [0, 1]:

* ``"bernoulli"`` (default, the usual choice for MNIST since Kingma & Welling): the decoder returns
  logits ``l``, ``p(t | z) = prod sigmoid(l)^t (1 - sigmoid(l))^(1 - t)``, the binary cross-entropy
  of the grey levels (for non-binary t this is not a normalised density, as in most VAE code);
  the decoded image is the mean ``2 sigmoid(l) - 1 = tanh(l / 2)``.
* ``"gaussian"``: the decoder returns the mean ``m`` of ``N(t; m, gaussian_std^2)`` per pixel
  (a fixed standard deviation, in units of [0, 1] pixels); the decoded image is ``clip(2 m - 1)``.

Images returned by :meth:`VAE.generate` and :meth:`VAE.reconstruct` are in [-1, 1] like every
ganjax generator's, so VAE samples are measured exactly like GAN samples.

``SYSTEM = "vae"``: these networks are trained by :mod:`ganjax.systems.vae` (``config.task =
"vae"``), not by the GAN loop.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganjax.errors import ConfigError
from ganjax.models import dcgan, layers

# The system of ganjax.systems that trains these networks (config.task).
SYSTEM = "vae"

SUPPORTED_SIZES = dcgan.SUPPORTED_SIZES
# Pixel likelihoods p(x | z) of the decoder (see the module docstring).
LIKELIHOODS = ("bernoulli", "gaussian")

# Layout defaults, as in DCGAN: (decoder slope, encoder slope).
_TUTORIAL_SLOPES = (0.3, 0.3)  # 28 pixels: Keras' LeakyReLU default.
_RADFORD_SLOPES = (0.0, 0.2)  # 32/64 pixels: ReLU in the decoder, LeakyReLU(0.2) in the encoder.

_keras_init = layers.glorot_uniform()


def check_likelihood(likelihood: str) -> str:
  """Returns ``likelihood``; raises ``ValueError`` naming the valid choices otherwise."""
  if likelihood not in LIKELIHOODS:
    raise ConfigError(
      f"Unknown likelihood {likelihood!r}; valid choices: {', '.join(LIKELIHOODS)}."
    )
  return likelihood


def _pick(value: float | None, default: float) -> float:
  return default if value is None else value


class Encoder(nn.Module):
  """Images ``(B, H, W, C)`` in [-1, 1] -> ``(mean, logvar)`` of q(z | x), each ``(B, L)``.

  Attributes:
    latent_dim: L, the size of z.
    width: channel multiplier w (as the DCGAN discriminator's).
    leaky_slope: negative slope of the LeakyReLUs; ``None`` = the layout's (0.3 at 28 pixels, 0.2
      at 32/64 pixels).
    conv_impl: convolution implementation (:data:`ganjax.models.layers.CONV_IMPLS`); ``"auto"``
      picks the fast CPU formulation on the CPU. Parameters do not depend on it.
  """

  latent_dim: int
  width: int = 64
  leaky_slope: float | None = None
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
    if x.ndim != 4:
      raise ValueError(f"The VAE encoder needs (B, H, W, C) images, got shape {x.shape}.")
    size = dcgan.check_image_size(x.shape[1], x.shape[2])
    w, impl = self.width, self.conv_impl
    layers.check_choice("conv_impl", impl, layers.CONV_IMPLS)
    if size == 28:
      slope = _pick(self.leaky_slope, _TUTORIAL_SLOPES[1])
      kw = dict(use_bias=True, kernel_init=_keras_init, impl=impl)
      x = nn.leaky_relu(layers.conv(w, 5, 2, "SAME", **kw)(x), slope)  # 14x14
      x = nn.leaky_relu(layers.conv(2 * w, 5, 2, "SAME", **kw)(x), slope)  # 7x7
      head_init = _keras_init
    else:
      slope = _pick(self.leaky_slope, _RADFORD_SLOPES[1])
      kw = dict(use_bias=False, kernel_init=layers.dcgan_init(), impl=impl)
      for i, features in enumerate(reversed(dcgan.radford_channels(size, w))):
        x = layers.conv(features, 4, 2, "SAME", **kw)(x)  # halves H and W
        if i > 0:  # As Radford's discriminator: no BatchNorm on the input layer.
          x = layers.batch_norm(train, scale_init=layers.dcgan_scale_init())(x)
        x = nn.leaky_relu(x, slope)
      head_init = layers.dcgan_init()
    x = x.reshape(x.shape[0], -1)
    out = layers.dense(2 * self.latent_dim, kernel_init=head_init)(x)
    mean, logvar = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    return mean, logvar


class Decoder(nn.Module):
  """Latents ``(B, L)`` -> the likelihood's parameters ``(B, H, W, C)`` (see :data:`LIKELIHOODS`).

  Attributes:
    image_shape: ``(H, W, C)`` with H == W in :data:`SUPPORTED_SIZES`; selects the layout.
    width: channel multiplier w (as the DCGAN generator's).
    leaky_slope: negative slope of the hidden activations; ``None`` = the layout's (0.3 at 28
      pixels, 0 = ReLU at 32/64 pixels).
    likelihood: ``"bernoulli"`` (outputs are logits) or ``"gaussian"`` (outputs are means of the
      [0, 1] pixels).
    conv_impl: convolution implementation (:data:`ganjax.models.layers.CONV_IMPLS`).
  """

  image_shape: tuple[int, int, int]
  width: int = 64
  leaky_slope: float | None = None
  likelihood: str = "bernoulli"
  conv_impl: str = "auto"

  @nn.compact
  def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
    check_likelihood(self.likelihood)
    if len(self.image_shape) != 3:
      raise ConfigError(f"The VAE decoder needs image_shape (H, W, C), got {self.image_shape}.")
    height, width, channels = self.image_shape
    size = dcgan.check_image_size(height, width)
    w, impl = self.width, self.conv_impl
    layers.check_choice("conv_impl", impl, layers.CONV_IMPLS)

    if size == 28:
      slope = _pick(self.leaky_slope, _TUTORIAL_SLOPES[0])
      kw = dict(use_bias=False, kernel_init=_keras_init, impl=impl)
      x = layers.dense(7 * 7 * 4 * w, use_bias=False, kernel_init=_keras_init)(z)
      x = nn.leaky_relu(layers.batch_norm(train)(x), slope)
      x = x.reshape(z.shape[0], 7, 7, 4 * w)
      x = layers.conv_transpose(2 * w, 5, 1, "SAME", **kw)(x)  # 7x7
      x = nn.leaky_relu(layers.batch_norm(train)(x), slope)
      x = layers.conv_transpose(w, 5, 2, "SAME", **kw)(x)  # 14x14
      x = nn.leaky_relu(layers.batch_norm(train)(x), slope)
      kw["use_bias"] = True  # The output layer's bias: the pixels' mean logit (or mean).
      return layers.conv_transpose(channels, 5, 2, "SAME", **kw)(x).astype(jnp.float32)

    slope = _pick(self.leaky_slope, _RADFORD_SLOPES[0])
    kw = dict(use_bias=False, kernel_init=layers.dcgan_init(), impl=impl)
    scale_init = layers.dcgan_scale_init()
    stage_channels = dcgan.radford_channels(size, w)
    x = z.reshape(z.shape[0], 1, 1, z.shape[-1])
    x = layers.conv_transpose(stage_channels[0], 4, 1, "VALID", **kw)(x)  # 4x4
    x = nn.leaky_relu(layers.batch_norm(train, scale_init=scale_init)(x), slope)
    for features in stage_channels[1:]:
      x = layers.conv_transpose(features, 4, 2, "SAME", **kw)(x)  # doubles H and W
      x = nn.leaky_relu(layers.batch_norm(train, scale_init=scale_init)(x), slope)
    kw["use_bias"] = True
    return layers.conv_transpose(channels, 4, 2, "SAME", **kw)(x).astype(jnp.float32)


class VAE(nn.Module):
  """An encoder and a decoder; parameters ``{"encoder": ..., "decoder": ...}``.

  ``__call__(x, noise, train=...)`` returns ``(decoder_output, mean, logvar)`` for the
  reparameterized draw ``z = mean + exp(logvar / 2) * noise`` from q(z | x), where ``noise`` is
  standard normal ``(B, L)`` drawn by the caller (so that a data-parallel step can draw the global
  batch's noise and give the same result on any number of devices); :meth:`generate` decodes given
  latents to images in [-1, 1].
  """

  encoder: Encoder
  decoder: Decoder

  def __call__(
    self, x: jax.Array, noise: jax.Array, *, train: bool
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    mean, logvar = self.encoder(x, train=train)
    z = shift_and_scale(noise, mean, logvar)
    return self.decoder(z, train=train), mean, logvar

  def encode(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    return self.encoder(x, train=train)

  def generate(self, z: jax.Array, *, train: bool = False) -> jax.Array:
    """Decoded images in [-1, 1]: the mean of p(x | z), mapped back from [0, 1]."""
    return output_to_images(self.decoder(z, train=train), self.decoder.likelihood)

  def reconstruct(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    """Images in [-1, 1] decoded from the posterior mean of each input."""
    mean, _ = self.encoder(x, train=train)
    return self.generate(mean, train=train)


def build(
  image_shape: tuple[int, int, int],
  latent_dim: int,
  *,
  encoder: dict | None = None,
  decoder: dict | None = None,
  likelihood: str = "bernoulli",
) -> VAE:
  """The :class:`VAE` for ``image_shape``; ``encoder`` / ``decoder`` are the networks' kwargs."""
  check_likelihood(likelihood)
  if latent_dim < 1:
    raise ConfigError(f"latent_dim must be >= 1, got {latent_dim}.")
  return VAE(
    encoder=Encoder(latent_dim=latent_dim, **(encoder or {})),
    decoder=Decoder(image_shape=tuple(image_shape), likelihood=likelihood, **(decoder or {})),
  )


# ---------------------------------------------------------------------------------------------
# The pieces of the objective: pure functions, per example.


def to_unit(images: jax.Array) -> jax.Array:
  """[-1, 1] images -> the [0, 1] pixels ``t = (x + 1) / 2`` the likelihood models."""
  return (images + 1.0) / 2.0


def output_to_images(output: jax.Array, likelihood: str) -> jax.Array:
  """The mean image of the decoder's likelihood, in [-1, 1].

  Bernoulli: ``2 sigmoid(l) - 1 = tanh(l / 2)``; Gaussian: ``clip(2 m - 1, -1, 1)``.
  """
  check_likelihood(likelihood)
  if likelihood == "bernoulli":
    return jnp.tanh(output / 2.0)
  return jnp.clip(2.0 * output - 1.0, -1.0, 1.0)


def reparameterize(rng: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """A draw ``z = mean + exp(logvar / 2) * eps``, eps ~ N(0, I): differentiable in mean, logvar.

  Kingma & Welling 2014, Sec. 2.4 (the reparameterization trick).
  """
  return shift_and_scale(jax.random.normal(rng, mean.shape, mean.dtype), mean, logvar)


def shift_and_scale(noise: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """``mean + exp(logvar / 2) * noise``: standard normal ``noise`` as a draw from the posterior."""
  return mean + jnp.exp(0.5 * logvar) * noise


def gaussian_kl(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, diag(exp(logvar))) || N(0, I)) per example, summed over the last axis.

  ``0.5 * sum(exp(logvar) + mean^2 - 1 - logvar)`` (Kingma & Welling 2014, Appendix B).
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar, axis=-1)


def reconstruction_nll(
  output: jax.Array,
  images: jax.Array,
  likelihood: str = "bernoulli",
  gaussian_std: float = 0.1,
) -> jax.Array:
  """``-log p(x | z)`` per example (nats, summed over pixels) of [-1, 1] ``images``.

  Args:
    output: The decoder's output ``(B, H, W, C)``: logits (Bernoulli) or means of the [0, 1]
      pixels (Gaussian).
    images: ``(B, H, W, C)`` in [-1, 1]; the likelihood is of ``t = (images + 1) / 2``.
    likelihood: ``"bernoulli"``: ``sum(softplus(l) - t l)``, the binary cross-entropy of
      ``sigmoid(l)`` against t; ``"gaussian"``: ``sum((t - m)^2 / (2 s^2) + log s + log(2 pi)/2)``
      with ``s = gaussian_std``.
    gaussian_std: The Gaussian likelihood's fixed standard deviation (in [0, 1] pixel units).

  Returns:
    ``(B,)``.
  """
  check_likelihood(likelihood)
  target = to_unit(images)
  if likelihood == "bernoulli":
    nll = jax.nn.softplus(output) - target * output
  else:
    if gaussian_std <= 0:
      raise ConfigError(f"gaussian_std must be > 0, got {gaussian_std}.")
    nll = (
      0.5 * jnp.square((target - output) / gaussian_std)
      + math.log(gaussian_std)
      + 0.5 * math.log(2 * math.pi)
    )
  return jnp.sum(nll.reshape(nll.shape[0], -1), axis=-1)


def elbo_terms(
  output: jax.Array,
  images: jax.Array,
  mean: jax.Array,
  logvar: jax.Array,
  likelihood: str = "bernoulli",
  gaussian_std: float = 0.1,
) -> dict[str, jax.Array]:
  """The negative ELBO's two terms per example: ``{"reconstruction": (B,), "kl": (B,)}``.

  ``-ELBO(x) = E_q[-log p(x | z)] + KL(q(z | x) || p(z))``; the reconstruction term is the
  one-sample estimate at the decoder ``output`` of a reparameterized draw, the KL is exact.
  """
  return {
    "reconstruction": reconstruction_nll(output, images, likelihood, gaussian_std),
    "kl": gaussian_kl(mean, logvar),
  }


def loss(terms: dict[str, jax.Array], beta: float = 1.0) -> jax.Array:
  """The batch mean of ``reconstruction + beta * kl`` (beta = 1: the negative ELBO; Higgins et
  al. 2017's beta-VAE otherwise)."""
  return jnp.mean(terms["reconstruction"] + beta * terms["kl"])
