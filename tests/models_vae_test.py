"""ganjax.models.vae: shapes, parameter counts by hand, the ELBO's terms against closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances
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
      latent * 196 * w
      + 2 * 196 * w  # Dense (no bias) + BN.
      + 25 * 4 * w * 2 * w
      + 2 * 2 * w  # 5x5 4w -> 2w + BN.
      + 25 * 2 * w * w
      + 2 * w  # 5x5 2w -> w + BN.
      + 25 * w * channels
      + channels  # 5x5 w -> C, with bias.
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
    variables,
    x,
    noise,
  )
  assert output.shape == (batch, *shape) and mean.shape == logvar.shape == (batch, latent)
  generate = jax.eval_shape(
    lambda v, z: model.apply(v, z, method=vae.VAE.generate), variables, noise
  )
  assert generate.shape == (batch, *shape)
  reconstruct = jax.eval_shape(
    lambda v, x: model.apply(v, x, method=vae.VAE.reconstruct), variables, x
  )
  assert reconstruct.shape == (batch, *shape)


def test_generated_images_are_in_range():
  model = vae.build((28, 28, 1), 5, encoder={"width": 2}, decoder={"width": 2})
  z = 10 * np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
  # One compilation: initialise, then decode far-out latents.
  images = jax.jit(lambda z: model.apply(_init(model, (28, 28, 1)), z, method=vae.VAE.generate))(z)
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


def _kl_magnitude(mean, logvar) -> float:
  """The largest sum of the absolute terms of 0.5 sum(exp(lv) + mu^2 - 1 - lv): the scale of the
  round-off of the closed form (five operations per dimension)."""
  mean, logvar = np.asarray(mean, np.float64), np.asarray(logvar, np.float64)
  return float(np.max(0.5 * np.sum(np.exp(logvar) + mean**2 + 1 + np.abs(logvar), axis=-1)))


def test_gaussian_kl_closed_form():
  mean = jnp.array([[0.0, 0.0], [1.0, -2.0], [0.5, 0.3]])
  logvar = jnp.array([[0.0, 0.0], [0.0, 0.0], [math.log(4.0), math.log(0.25)]])
  kl = np.asarray(vae.gaussian_kl(mean, logvar))
  assert kl.shape == (3,)

  # KL(N(mu, s^2) || N(0, 1)) = log(1/s) + (s^2 + mu^2) / 2 - 1/2 per dimension.
  def one(mu, s):
    return math.log(1 / s) + (s * s + mu * mu) / 2 - 0.5

  expected = np.array([0.0, 0.5 + 2.0, one(0.5, 2.0) + one(0.3, 0.5)])
  tolerances.assert_float32_close(kl, expected, length=2 * 5, magnitude=_kl_magnitude(mean, logvar))


def test_gaussian_kl_against_quadrature_and_monte_carlo():
  mu, s = 0.7, 0.6
  # Numerical integral of q log(q / p) for one dimension.
  quad, quad_error = integrate.quad(
    lambda z: stats.norm.pdf(z, mu, s) * (stats.norm.logpdf(z, mu, s) - stats.norm.logpdf(z)),
    -12,
    12,
  )
  closed = float(vae.gaussian_kl(jnp.array([[mu]]), jnp.array([[2 * math.log(s)]]))[0])
  # float32 round-off of one dimension's closed form, plus quad's own error estimate.
  atol = tolerances.float32_atol(5, _kl_magnitude([mu], [2 * math.log(s)])) + quad_error
  np.testing.assert_allclose(closed, quad, rtol=0, atol=atol)
  # Monte Carlo over 3 dimensions with samples of the reparameterized posterior.
  mean = jnp.array([0.7, -1.2, 0.1])
  logvar = jnp.array([2 * math.log(0.6), 0.5, -1.0])
  z = vae.reparameterize(
    jax.random.key(3), jnp.tile(mean, (200_000, 1)), jnp.tile(logvar, (200_000, 1))
  )
  std = np.exp(0.5 * np.asarray(logvar))
  log_ratio = stats.norm.logpdf(np.asarray(z), np.asarray(mean), std) - stats.norm.logpdf(
    np.asarray(z)
  )
  per_draw = log_ratio.sum(axis=1)
  estimate = per_draw.mean()
  closed = float(vae.gaussian_kl(mean[None], logvar[None])[0])
  # A Monte Carlo mean of 200,000 draws: 5 standard errors (the closed form's round-off, about
  # 1e-6, is negligible next to them).
  atol = tolerances.mean_atol(per_draw.std(), len(per_draw))
  assert abs(estimate - closed) < atol, (estimate, closed, atol)


def test_reparameterize_statistics_and_gradients():
  mean = jnp.full((100_000, 2), jnp.array([1.5, -0.5]))
  logvar = jnp.full((100_000, 2), jnp.array([math.log(4.0), math.log(0.01)]))
  z = np.asarray(vae.reparameterize(jax.random.key(0), mean, logvar), np.float64)
  # Sampling tolerances of 100,000 draws: 5 standard errors of the mean and of the std.
  for dim, (mu, std) in enumerate([(1.5, 2.0), (-0.5, 0.1)]):
    assert abs(z[:, dim].mean() - mu) < tolerances.mean_atol(std, len(z)), dim
    assert abs(z[:, dim].std() / std - 1) < tolerances.std_rtol(len(z)), dim
  # d z / d mean = 1; d z / d logvar = (z - mean) / 2.
  key = jax.random.key(1)
  m, lv = jnp.array([0.3]), jnp.array([0.2])
  dz_dm = jax.grad(lambda a: vae.reparameterize(key, a, lv).sum())(m)
  dz_dlv = jax.grad(lambda b: vae.reparameterize(key, m, b).sum())(lv)
  draw = vae.reparameterize(key, m, lv)
  # z = mean + exp(logvar / 2) eps: the sum passes its cotangent 1 to mean unchanged.
  np.testing.assert_array_equal(dz_dm, [1.0])
  # exp(lv / 2) eps / 2 against (draw - m) / 2, whose draw was rounded at the scale of |draw|.
  tolerances.assert_float32_close(
    dz_dlv, (np.float64(draw[0]) - 0.3) / 2, length=3, magnitude=abs(float(draw[0])) + 0.3
  )


def test_bernoulli_nll_against_scipy_and_by_hand():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 4, 4, 1)).astype(np.float32) * 3
  binary = rng.integers(0, 2, size=(3, 4, 4, 1))
  images = binary * 2.0 - 1.0  # {0, 1} pixels as ganjax images in {-1, 1}.
  nll = np.asarray(vae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(images)))
  l64 = logits.astype(np.float64)
  p = 1 / (1 + np.exp(-l64))

  def magnitude(t):
    """The largest sum over an example's 16 pixels of softplus(l) + |t l|: the absolute terms of
    softplus(l) - t l, evaluated in four operations per pixel."""
    return float(np.max(np.sum(np.logaddexp(0, l64) + np.abs(t * l64), axis=(1, 2, 3))))

  expected = -stats.bernoulli.logpmf(binary, p).reshape(3, -1).sum(axis=1)
  tolerances.assert_float32_close(nll, expected, length=16 + 4, magnitude=magnitude(binary))
  # Grey levels: the cross-entropy -t log p - (1 - t) log(1 - p) of t = (x + 1) / 2.
  grey = rng.uniform(-1, 1, size=(3, 4, 4, 1)).astype(np.float32)
  t = (grey.astype(np.float64) + 1) / 2
  expected = -(t * np.log(p) + (1 - t) * np.log1p(-p)).reshape(3, -1).sum(axis=1)
  nll = np.asarray(vae.reconstruction_nll(jnp.asarray(logits), jnp.asarray(grey)))
  tolerances.assert_float32_close(nll, expected, length=16 + 4, magnitude=magnitude(t))
  # Stable for large logits: softplus(100) - 100 cancels to round-off of terms of size 100 (a naive
  # log(1 + exp(100)) overflows to inf).
  big = jnp.array([[100.0, -100.0]])
  tolerances.assert_float32_close(
    vae.reconstruction_nll(big, jnp.array([[1.0, -1.0]])),
    np.zeros(1),
    length=2 * 4,
    magnitude=100.0,
  )


def test_gaussian_nll_against_scipy():
  rng = np.random.default_rng(1)
  means = rng.uniform(0, 1, size=(2, 3, 3, 2)).astype(np.float32)
  images = rng.uniform(-1, 1, size=(2, 3, 3, 2)).astype(np.float32)
  nll = np.asarray(
    vae.reconstruction_nll(jnp.asarray(means), jnp.asarray(images), "gaussian", gaussian_std=0.2)
  )
  t = (images.astype(np.float64) + 1) / 2
  expected = -stats.norm.logpdf(t, means, 0.2).reshape(2, -1).sum(axis=1)
  # 18 pixels of 0.5 ((t - m) / s)^2 + log s + log(2 pi) / 2, six operations each.
  terms = 0.5 * ((t - means) / 0.2) ** 2 + abs(math.log(0.2)) + 0.5 * math.log(2 * math.pi)
  magnitude = float(np.max(terms.reshape(2, -1).sum(axis=1)))
  tolerances.assert_float32_close(nll, expected, length=18 + 6, magnitude=magnitude)
  with pytest.raises(ValueError, match="gaussian_std"):
    vae.reconstruction_nll(jnp.asarray(means), jnp.asarray(images), "gaussian", gaussian_std=0)


def test_elbo_terms_and_beta_loss():
  images = jnp.array([[1.0, -1.0], [0.0, 1.0]])
  output = jnp.zeros((2, 2))  # sigmoid(0) = 1/2: every pixel costs log 2.
  mean = jnp.array([[0.0], [2.0]])
  logvar = jnp.zeros((2, 1))
  terms = vae.elbo_terms(output, images, mean, logvar)
  # Round-off: two pixels of four operations (terms of size log 2), one dimension of the KL's
  # five; the loss adds them, scales the KL by beta and averages two examples.
  recon, kl = 2 * math.log(2), _kl_magnitude(mean, logvar)
  tolerances.assert_float32_close(
    terms["reconstruction"], np.full(2, 2 * math.log(2)), length=2 * 4, magnitude=recon
  )
  tolerances.assert_float32_close(terms["kl"], np.array([0.0, 2.0]), length=5, magnitude=kl)
  for beta in (1.0, 4.0):
    tolerances.assert_float32_close(
      vae.loss(terms, beta=beta),
      2 * math.log(2) + beta,
      length=2 * 4 + 5 + 3,
      magnitude=recon + beta * kl,
      err_msg=f"beta={beta}",
    )
  np.testing.assert_array_equal(vae.loss(terms), vae.loss(terms, beta=1.0))  # The default.


def test_decoded_images_are_the_likelihood_means():
  logits = jnp.array([-3.0, 0.0, 2.0])
  tolerances.assert_float32_close(  # tanh(l / 2): a halving and a tanh, in [-1, 1].
    vae.output_to_images(logits, "bernoulli"),
    2 / (1 + np.exp(-np.asarray(logits, np.float64))) - 1,
    length=2,
    magnitude=1.0,
  )
  # clip(2 m - 1, -1, 1): 2 * 0.25 - 1 = -0.5 is exact in float32, the others clip to +-1.
  np.testing.assert_array_equal(
    vae.output_to_images(jnp.array([-0.1, 0.25, 1.2]), "gaussian"), [-1.0, -0.5, 1.0]
  )
