"""ganjax.models.lapgan: the Laplacian pyramid, the latent layout and the LAPGAN networks."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances

from ganjax import models
from ganjax.models import lapgan
from ganjax.state import parameter_count

# Round-off of one pyramid level's x - u(x') and u(x') + h: bilinear upsampling sums 2 x 2 taps,
# then a subtraction and an addition (Denton et al.'s pyramid is exact up to this rounding).
LEVEL_LENGTH = 4 + 2


def _images(shape, seed=0):
  """Uniform [-1, 1) images, drawn by numpy (no XLA compilation per shape)."""
  return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape), jnp.float32)


@functools.partial(jax.jit, static_argnums=1)
def _decompose_all(x, num_levels):
  """One compilation per case: the pyramid, its reconstruction, the Gaussian pyramid's top and
  the finest band plus u(coarser)."""
  pyramid = lapgan.decompose(x, num_levels)
  gauss = lapgan.gaussian_pyramid(x, num_levels)
  finest = pyramid[0] + lapgan.upsample(gauss[1], x.shape)
  return pyramid, lapgan.reconstruct(pyramid), gauss[-1], finest


@pytest.mark.parametrize(
  "shape, num_levels, sizes",
  [
    ((3, 28, 28, 1), 2, [28, 14, 7]),
    ((2, 32, 32, 3), 2, [32, 16, 8]),
    ((2, 32, 32, 3), 3, [32, 16, 8, 4]),
    ((2, 16, 24, 2), 3, [(16, 24), (8, 12), (4, 6), (2, 3)]),
  ],
)
def test_pyramid_decomposes_and_reconstructs_exactly(shape, num_levels, sizes):
  x = _images(shape)
  pyramid, reconstructed, top, finest = _decompose_all(x, num_levels)
  assert len(pyramid) == num_levels + 1
  for level, size in zip(pyramid, sizes, strict=True):
    size = size if isinstance(size, tuple) else (size, size)
    assert level.shape == (shape[0], *size, shape[3])
  # Images in [-1, 1): every level's round-off, at that scale.
  tolerances.assert_float32_close(reconstructed, x, length=num_levels * LEVEL_LENGTH, magnitude=1.0)
  # The coarsest level is the Gaussian pyramid's top; a band is what u(coarser) misses.
  np.testing.assert_array_equal(pyramid[-1], top)
  tolerances.assert_float32_close(finest, x, length=LEVEL_LENGTH, magnitude=1.0)


def test_pyramid_operators():
  x = _images((2, 4, 6, 1))

  @jax.jit
  def operators(x, constant):
    down = lapgan.downsample(x)
    return down, lapgan.upsample(down, (4, 6)), lapgan.decompose(constant, 2)

  down, up, bands = operators(x, jnp.full((1, 8, 8, 3), 0.25))
  x64 = np.asarray(x, np.float64)
  tolerances.assert_float32_close(  # The mean of 4 values in [-1, 1).
    down[0, 0, 0, 0], x64[0, :2, :2, 0].mean(), length=4, magnitude=1.0
  )
  assert up.shape == x.shape
  # A constant image has no band-pass content: d and u both preserve constants, u up to the
  # rounding of its 2 x 2 interpolation weights times 0.25.
  for band in bands[:-1]:
    tolerances.assert_float32_close(band, np.zeros(band.shape), length=4, magnitude=0.25)
  # The 2 x 2 mean of 0.25s: 1.0 / 4, exact in float32.
  np.testing.assert_array_equal(bands[-1], np.full(bands[-1].shape, 0.25, np.float32))


@pytest.mark.parametrize(
  "size, num_levels, message",
  [
    (28, 3, "28x28 image does not halve evenly 3 times: level 2 is 7x7.*1..2"),
    (30, 2, "30x30 image does not halve evenly 2 times.*1..1"),
    (7, 1, "7x7 image does not halve evenly 1 times.*none"),
  ],
)
def test_pyramid_sizes_that_do_not_halve_raise(size, num_levels, message):
  with pytest.raises(ValueError, match=message):
    lapgan.decompose(jnp.zeros((1, size, size, 1)), num_levels)
  with pytest.raises(ValueError, match=message):
    lapgan.latent_shapes((size, size, 1), num_levels, 10)


def test_bad_level_counts_and_inputs_raise():
  with pytest.raises(ValueError, match="num_levels >= 1"):
    lapgan.pyramid_shapes(28, 28, 0)
  with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
    lapgan.decompose(jnp.zeros((28, 28, 1)), 2)
  with pytest.raises(ValueError, match=r"have shape \(B, 1080\)"):
    lapgan.split_latents(jnp.zeros((2, 100)), (28, 28, 1), 2, 100)


def test_latent_layout_and_chain_invert_the_pyramid():
  shape, num_levels, latent_dim = (28, 28, 1), 2, 100
  assert lapgan.latent_shapes(shape, num_levels, latent_dim) == [(100,), (14, 14, 1), (28, 28, 1)]
  assert lapgan.latent_size(shape, num_levels, latent_dim) == 100 + 14 * 14 + 28 * 28
  z = _images((2, 1080))
  coarse = _images((2, 7, 7, 1), seed=1)

  @jax.jit
  def chain_and_reconstruct(z, coarse):
    # A "generator" that returns the latent pieces themselves: chaining is reconstruction.
    levels = lapgan.chain(lambda zc: coarse, lambda k, low, noise: noise, z, shape, 2, 100)
    pieces = lapgan.split_latents(z, shape, 2, 100)
    return levels, lapgan.reconstruct([pieces[2], pieces[1], coarse])

  levels, expected = chain_and_reconstruct(z, coarse)
  assert [x.shape for x in levels] == [(2, 7, 7, 1), (2, 14, 14, 1), (2, 28, 28, 1)]
  # The same upsamplings and sums in another fusion: two levels' round-off, at the scale of a sum
  # of three pieces in [-1, 1).
  tolerances.assert_float32_close(levels[-1], expected, length=2 * LEVEL_LENGTH, magnitude=3.0)


def _init(module, *inputs):
  """``(variables, outputs)`` of ``module`` on ``inputs``: one compilation."""

  @jax.jit
  def run(*inputs):
    variables = module.init(jax.random.key(0), *inputs, train=False)
    return variables, module.apply(variables, *inputs, train=False)

  return run(*inputs)


def _shapes(module, *inputs):
  """``(variables, outputs)`` as shapes, traced without compiling."""
  return jax.eval_shape(lambda *a: _init(module, *a), *inputs)


def test_coarse_networks_shapes_and_parameter_counts():
  z, x = jnp.zeros((3, 100)), _images((3, 7, 7, 1))
  g = lapgan.CoarseGenerator(image_shape=(7, 7, 1), hidden=(256, 256))
  variables, out = _init(g, z)
  assert out.shape == (3, 7, 7, 1) and float(jnp.abs(out).max()) <= 1.0
  # Dense 100 -> 256 -> 256 -> 49 (kernels + biases).
  assert parameter_count(variables) == (100 * 256 + 256) + (256 * 256 + 256) + (256 * 49 + 49)
  d = lapgan.CoarseDiscriminator(hidden=(256, 256))
  variables, logits = _shapes(d, x)
  assert logits.shape == (3,)
  assert parameter_count(variables) == (49 * 256 + 256) + (256 * 256 + 256) + (256 + 1)
  # Conditional: the one-hot label (10) widens the first layer's input.
  labels = jnp.array([0, 1, 2])
  g10 = lapgan.CoarseGenerator(image_shape=(7, 7, 1), hidden=(256, 256), num_classes=10)
  assert parameter_count(_shapes(g10, z, labels)[0]) == (
    (110 * 256 + 256) + (256 * 256 + 256) + (256 * 49 + 49)
  )
  d10 = lapgan.CoarseDiscriminator(hidden=(256, 256), num_classes=10)
  assert parameter_count(_shapes(d10, x, labels)[0]) == (
    (59 * 256 + 256) + (256 * 256 + 256) + (256 + 1)
  )


@pytest.mark.parametrize("size, channels, width", [(28, 1, 16), (14, 1, 16), (32, 3, 64)])
def test_level_networks_shapes_and_parameter_counts(size, channels, width):
  low, noise = _images((2, size, size, channels)), _images((2, size, size, 1), seed=1)
  g = lapgan.LevelGenerator(width=width, num_layers=3, kernel_size=5)
  # 5x5 convs: (C + 1 noise plane) -> w -> w -> C, each with biases.
  expected = (25 * (channels + 1) * width + width) + (25 * width * width + width)
  expected += 25 * width * channels + channels
  d = lapgan.LevelDiscriminator(widths=(32, 64), kernel_size=5)
  d_variables, logits = _shapes(d, low, low)
  assert logits.shape == (2,)
  # Stride-2 5x5 convs on [h, l] (2C channels) -> 32 -> 64, then Dense from ceil(size/4)^2 * 64.
  final = -(-size // 4)
  d_expected = (25 * 2 * channels * 32 + 32) + (25 * 32 * 64 + 64) + (final * final * 64 + 1)
  assert parameter_count(d_variables) == d_expected
  if size != 14:  # Values at one size (one compilation); shapes and counts at every size.
    variables, band = _shapes(g, low, noise)
    assert band.shape == low.shape and parameter_count(variables) == expected
    return

  @jax.jit
  def run(low, noise):
    variables = g.init(jax.random.key(0), low, noise, train=False)
    flat = g.apply(variables, low, noise.reshape(2, -1), train=False)
    return variables, g.apply(variables, low, noise, train=False), flat

  variables, band, flat = run(low, noise)
  assert band.shape == low.shape
  assert float(jnp.abs(band).max()) > 0  # Linear output: no tanh, any sign.
  assert parameter_count(variables) == expected
  # Flat noise is accepted too: reshaped to the same plane, the same convolutions (another call
  # in the program, so compared to their round-off: the summed fan-ins, at the output's scale).
  tolerances.assert_float32_close(flat, band, length=tolerances.summed_fan_in(variables["params"]))


def test_level_networks_conditional_path_changes_outputs():
  low, noise = _images((2, 14, 14, 1)), _images((2, 14, 14, 1), seed=1)
  g = lapgan.LevelGenerator(width=8, num_classes=10)
  d = lapgan.LevelDiscriminator(widths=(8, 16), num_classes=10)
  a, b = jnp.array([0, 0]), jnp.array([3, 3])

  @jax.jit
  def run(low, noise, a, b):
    g_vars = g.init(jax.random.key(0), low, noise, a, train=False)
    out_a = g.apply(g_vars, low, noise, a, train=False)
    out_b = g.apply(g_vars, low, noise, b, train=False)
    d_vars = d.init(jax.random.key(0), out_a, low, a, train=False)
    logits_a = d.apply(d_vars, out_a, low, a, train=False)
    logits_b = d.apply(d_vars, out_a, low, b, train=False)
    return g_vars, d_vars, out_a, out_b, logits_a, logits_b

  g_vars, d_vars, out_a, out_b, logits_a, logits_b = run(low, noise, a, b)
  # 10 one-hot label planes join the C + 1 input channels.
  assert g_vars["params"]["Conv_0"]["kernel"].shape == (5, 5, 12, 8)
  # Another label, another output: far beyond the round-off of each network's fan-ins.
  g_length = tolerances.summed_fan_in(g_vars["params"])
  tolerances.assert_differ_beyond_roundoff(out_a, out_b, length=g_length)
  assert d_vars["params"]["Conv_0"]["kernel"].shape == (5, 5, 12, 8)
  d_length = tolerances.summed_fan_in(d_vars["params"])
  tolerances.assert_differ_beyond_roundoff(logits_a, logits_b, length=d_length)
  with pytest.raises(ValueError, match="needs labels"):
    jax.eval_shape(lambda: g.apply(g_vars, low, noise, None, train=False))


def test_network_input_errors():
  g = lapgan.LevelGenerator(width=4)
  with pytest.raises(ValueError, match="must cover the image"):
    _shapes(g, jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 4, 4, 1)))
  d = lapgan.LevelDiscriminator(widths=(4,))
  with pytest.raises(ValueError, match="same shape"):
    _shapes(d, jnp.zeros((2, 8, 8, 1)), jnp.zeros((2, 8, 8, 3)))


def test_lapgan_is_a_system_not_a_gan_loop_architecture():
  assert lapgan.SYSTEM == "lapgan"
  assert "lapgan" not in models.available_models()
  with pytest.raises(ValueError, match="Unknown model name 'lapgan'"):
    models.get_model_module("lapgan")
