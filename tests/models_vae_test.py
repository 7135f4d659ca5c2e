"""ganjax.models.vae: shapes, parameter counts by hand, the ELBO's terms against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from ganjax import models
from ganjax.models import dcgan, vae


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


def _init(model, shape, batch=2):
  x = jnp.zeros((batch, *shape), jnp.float32)
  noise = jnp.zeros((batch, model.encoder.latent_dim), jnp.float32)
  return model.init(jax.random.key(0), x, noise, train=False)


def _shapes(model, shape, batch=2):
  """The variables' shapes, traced without compiling (fast on the CPU)."""
  return jax.eval_shape(lambda: _init(model, shape, batch))


def _encoder_count(shape, w, latent):
  """Hand count: DCGAN discriminator convs, then Dense(flattened -> 2L) with bias."""
  size, channels = shape[0], shape[-1]
  if size == 28:  # 5x5 convs w, 2w with biases; 7x7x2w features.
    convs = (25 * channels * w + w) + (25 * w * 2 * w + 2 * w)
    return convs + 7 * 7 * 2 * w * 2 * latent + 2 * latent
  stages = dcgan.radford_channels(size, w)[::-1]  # w, 2w, ... (4x4 kernels, no biases).
  total, previous = 0, channels
  for i, features in enumerate(stages):
    total += 16 * previous * features + (2 * features if i > 0 else 0)  # + BN scale, offset.
    previous = features
  return total + 4 * 4 * previous * 2 * latent + 2 * latent


def _decoder_count(shape, w, latent):
  """Hand count: the DCGAN generator's layers, plus a bias on the output layer."""
  size, channels = shape[0], shape[-1]
  if size == 28:
    return (
        latent * 196 * w + 2 * 196 * w  # Dense (no bias) + BN.
        + 25 * 4 * w * 2 * w + 2 * 2 * w  # 5x5 4w -> 2w + BN.
        + 25 * 2 * w * w + 2 * w  # 5x5 2w -> w + BN.
        + 25 * w * channels + channels  # 5x5 w -> C, with bias.
    )
  stages = dcgan.radford_channels(size, w)  # ..., 2w, w.
  total, previous = 0, latent
  for features in stages:
    total += 16 * previous * features + 2 * features
    previous = features
  return total + 16 * previous * channels + channels


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (64, 64, 3), (28, 28, 3)])
def test_shapes_and_parameter_counts(shape):
  w, latent, batch = 4, 5, 3
  model = vae.build(shape, latent, encoder={"width": w}, decoder={"width": w})
  variables = _shapes(model, shape)
  params = variables["params"]
  assert _count(params["encoder"]) == _encoder_count(shape, w, latent)
  assert _count(params["decoder"]) == _decoder_count(shape, w, latent)
  # The decoder is the DCGAN generator of the same width with an output bias.
  generator = dcgan.Generator(image_shape=shape, width=w)
  g_params = jax.eval_shape(
      lambda: generator.init(jax.random.key(0), jnp.zeros((2, latent)), train=False)
  )["params"]
  assert _count(params["decoder"]) == _count(g_params) + shape[-1]

  x = jax.ShapeDtypeStruct((batch, *shape), jnp.float32)
  noise = jax.ShapeDtypeStruct((batch, latent), jnp.float32)
  (output, mean, logvar), _ = jax.eval_shape(
      lambda v, x, n: model.apply(v, x, n, train=True, mutable=["batch_stats"]),
      variables, x, noise,
  )
  assert output.shape == (batch, *shape) and mean.shape == logvar.shape == (batch, latent)
  generate = jax.eval_shape(lambda v, z: model.apply(v, z, method=vae.VAE.generate),
                            variables, noise)
  assert generate.shape == (batch, *shape)
  reconstruct = jax.eval_shape(lambda v, x: model.apply(v, x, method=vae.VAE.reconstruct),
                               variables, x)
  assert reconstruct.shape == (batch, *shape)


def test_generated_images_are_in_range():
  model = vae.build((28, 28, 1), 5, encoder={"width": 2}, decoder={"width": 2})
  z = 10 * np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
  # One compilation: initialise, then decode far-out latents.
  images = jax.jit(
      lambda z: model.apply(_init(model, (28, 28, 1)), z, method=vae.VAE.generate)
  )(z)
  assert images.shape == (4, 28, 28, 1)
  assert float(jnp.min(images)) >= -1 and float(jnp.max(images)) <= 1


def test_seed_width_parameter_counts_for_mnist():
  model = vae.build((28, 28, 1), 32, encoder={"width": 32}, decoder={"width": 32})
  params = _shapes(model, (28, 28, 1))["params"]
  # Encoder: 5x5 convs 1->32 (832), 32->64 (51,264); Dense 3136 -> 64 (200,768).
  assert _count(params["encoder"]) == 832 + 51_264 + 200_768
  # Decoder: Dense 32 -> 6272 (200,704) + BN (12,544); 5x5 128->64 (204,800) + BN (128);
  # 5x5 64->32 (51,200) + BN (64); 5x5 32->1 + bias (801).
  assert _count(params["decoder"]) == 200_704 + 12_544 + 204_800 + 128 + 51_200 + 64 + 801


def test_is_a_system_not_a_gan_architecture():
  assert vae.SYSTEM == "vae"
  assert "vae" not in models.available_models()
  with pytest.raises(ValueError, match="valid choices"):
    models.get_model_module("vae")


def test_unknown_likelihood_and_bad_sizes_name_the_choices():
  with pytest.raises(ValueError, match="bernoulli, gaussian"):
    vae.build((28, 28, 1), 4, likelihood="poisson")
  with pytest.raises(ValueError, match="bernoulli, gaussian"):
    vae.reconstruction_nll(jnp.zeros((1, 2)), jnp.zeros((1, 2)), "laplace")
  with pytest.raises(ValueError, match="28, 32, 64"):
    _shapes(vae.build((16, 16, 1), 4, encoder={"width": 2}, decoder={"width": 2}), (16, 16, 1))


def test_gaussian_kl_closed_form():
  mean = jnp.array([[0.0, 0.0], [1.0, -2.0], [0.5, 0.3]])
  logvar = jnp.array([[0.0, 0.0], [0.0, 0.0], [math.log(4.0), math.log(0.25)]])
  kl = np.asarray(vae.gaussian_kl(mean, logvar))
  assert kl.shape == (3,)
  # KL(N(mu, s^2) || N(0, 1)) = log(1/s) + (s^2 + mu^2) / 2 - 1/2 per dimension.
  def one(mu, s):
    return math.log(1 / s) + (s * s + mu * mu) / 2 - 0.5

  expected = [0.0, 0.5 + 2.0, one(0.5, 2.0) + one(0.3, 0.5)]
  np.testing.assert_allclose(kl, expected, rtol=1e-6, atol=1e-7)


def test_gaussian_kl_against_quadrature_and_monte_carlo():
  mu, s = 0.7, 0.6
  # Numerical integral of q log(q / p) for one dimension.
  quad, _ = integrate.quad(
      lambda z: stats.norm.pdf(z, mu, s) * (stats.norm.logpdf(z, mu, s) - stats.norm.logpdf(z)),
      -12, 12,
  )
  closed = float(vae.gaussian_kl(jnp.array([[mu]]), jnp.array([[2 * math.log(s)]]))[0])
  np.testing.assert_allclose(closed, quad, rtol=1e-6)
  # Monte Carlo over 3 dimensions with samples of the reparameterized posterior.
  mean = jnp.array([0.7, -1.2, 0.1])
  logvar = jnp.array([2 * math.log(0.6), 0.5, -1.0])
  z = vae.reparameterize(jax.random.key(3), jnp.tile(mean, (200_000, 1)),
                         jnp.tile(logvar, (200_000, 1)))
  std = np.exp(0.5 * np.asarray(logvar))
  log_ratio = stats.norm.logpdf(np.asarray(z), np.asarray(mean), std) - stats.norm.logpdf(
      np.asarray(z))
  estimate = log_ratio.sum(axis=1).mean()
  closed = float(vae.gaussian_kl(mean[None], logvar[None])[0])
  assert abs(estimate - closed) < 0.02, (estimate, closed)


def test_reparameterize_statistics_and_gradients():
  mean = jnp.full((100_000, 2), jnp.array([1.5, -0.5]))
  logvar = jnp.full((100_000, 2), jnp.array([math.log(4.0), math.log(0.01)]))
  z = np.asarray(vae.reparameterize(jax.random.key(0), mean, logvar))
  np.testing.assert_allclose(z.mean(axis=0), [1.5, -0.5], atol=0.02)
  np.testing.assert_allclose(z.std(axis=0), [2.0, 0.1], rtol=0.02)
  # d z / d mean = 1; d z / d logvar = (z - mean) / 2.
  key = jax.random.key(1)
  m, lv = jnp.array([0.3]), jnp.array([0.2])
  dz_dm = jax.grad(lambda a: vae.reparameterize(key, a, lv).sum())(m)
  dz_dlv = jax.grad(lambda b: vae.reparameterize(key, m, b).sum())(lv)
  draw = vae.reparameterize(key, m, lv)
  np.testing.assert_allclose(dz_dm, [1.0], rtol=1e-6)
  np.testing.assert_allclose(dz_dlv, (draw - m) / 2, rtol=1e-5)


def test_bernoulli_nll_against_scipy_and_by_hand():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 4, 1)).astype(np.float32) * 3
  binary = rng.integers(0, 2, size=(3, 4, 4, 1))
  images = binary * 2.0 - 1.0  # {0, 1} pixels as ganjax images in {-1, 1}.
  nll = np.asarray(vae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(images)))
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  expected = -stats.bernoulli.logpmf(binary, p).reshape(3, -1).sum(axis=1)
  np.testing.assert_allclose(nll, expected, rtol=1e-5)
  # Grey levels: the cross-entropy -t log p - (1 - t) log(1 - p) of t = (x + 1) / 2.
  grey = rng.uniform(-1, 1, size=(3, 4, 4, 1))
  t = (grey + 1) / 2
  expected = -(t * np.log(p) + (1 - t) * np.log1p(-p)).reshape(3, -1).sum(axis=1)
  nll = np.asarray(vae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(grey, jnp.float32)))
  np.testing.assert_allclose(nll, expected, rtol=1e-5)
  # Stable for large logits.
  big = jnp.array([[100.0, -100.0]])
  np.testing.assert_allclose(vae.reconstruction_nll(big, jnp.array([[1.0, -1.0]])), [0.0],
                             atol=1e-6)


def test_gaussian_nll_against_scipy():
  rng = np.random.default_rng(1)
  means = rng.uniform(0, 1, size=(2, 3, 3, 2)).astype(np.float32)
  images = rng.uniform(-1, 1, size=(2, 3, 3, 2)).astype(np.float32)
  nll = np.asarray(vae.reconstruction_nll(jnp.asarray(means), jnp.asarray(images), "gaussian",
                                          gaussian_std=0.2))
  expected = -stats.norm.logpdf((images + 1) / 2, means, 0.2).reshape(2, -1).sum(axis=1)
  np.testing.assert_allclose(nll, expected, rtol=1e-5)
  with pytest.raises(ValueError, match="gaussian_std"):
    vae.reconstruction_nll(jnp.asarray(means), jnp.asarray(images), "gaussian", gaussian_std=0)


def test_elbo_terms_and_beta_loss():
  images = jnp.array([[1.0, -1.0], [0.0, 1.0]])
  output = jnp.zeros((2, 2))  # sigmoid(0) = 1/2: every pixel costs log 2.
  mean = jnp.array([[0.0], [2.0]])
  logvar = jnp.zeros((2, 1))
  terms = vae.elbo_terms(output, images, mean, logvar)
  np.testing.assert_allclose(terms["reconstruction"], [2 * math.log(2)] * 2, rtol=1e-6)
  np.testing.assert_allclose(terms["kl"], [0.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(vae.loss(terms), 2 * math.log(2) + 1.0, rtol=1e-6)
  np.testing.assert_allclose(vae.loss(terms, beta=4.0), 2 * math.log(2) + 4.0, rtol=1e-6)


def test_decoded_images_are_the_likelihood_means():
  logits = jnp.array([-3.0, 0.0, 2.0])
  np.testing.assert_allclose(
      vae.output_to_images(logits, "bernoulli"), 2 / (1 + np.exp(-np.asarray(logits))) - 1,
      rtol=1e-6,
  )
  np.testing.assert_allclose(
      vae.output_to_images(jnp.array([-0.1, 0.25, 1.2]), "gaussian"), [-1.0, -0.5, 1.0]
  )
