"""Architectures: the model contract for every ganjax.models module, seed sizes, initialisation."""

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances

from ganjax import models
from ganjax.models import dcgan, layers, mlp

BATCH = 4
LATENT = 8


class Case(NamedTuple):
  """A tiny configuration of one architecture at one supported resolution / channel count."""

  name: str
  shape: tuple[int, ...]
  g_kwargs: dict
  d_kwargs: dict
  dropout: bool  # Whether the discriminator drops units in train mode.


# Every architecture at every supported resolution / channel count. A new module in ganjax/models
# must add its cases here (test_every_model_is_covered enforces it).
# Each architecture runs its default convolutions (conv_impl="auto": the fast kernels on CPU) at
# one resolution; its other resolutions use XLA's own (the contract does not depend on the kernels,
# conv_impl_test compares them, and XLA's compile several times faster).
XLA = "xla"
CASES = [
  Case("mlp", (28, 28, 1), dict(hidden=(16, 16)), dict(hidden=(16, 16)), True),
  Case("mlp", (2,), dict(hidden=(16,), output_activation="linear"), dict(hidden=(16,)), True),
  Case("dcgan", (28, 28, 1), dict(width=8), dict(width=8), True),  # Tutorial: dropout 0.3.
  Case("dcgan", (32, 32, 3), dict(width=8), dict(width=8), False),  # Radford: no dropout.
  Case(
    "dcgan",
    (64, 64, 3),
    dict(width=8, conv_impl=XLA),
    dict(width=8, dropout=0.25, conv_impl=XLA),
    True,
  ),
  # SNGAN ResNet / standard CNN: spectral norm (power-iteration state) in D, BatchNorm in G.
  Case("resnet", (32, 32, 3), dict(width=8), dict(width=8), False),
  Case("resnet", (48, 48, 3), dict(width=2, conv_impl=XLA), dict(width=2, conv_impl=XLA), False),
  Case("resnet", (64, 64, 1), dict(width=2, conv_impl=XLA), dict(width=2, conv_impl=XLA), False),
  Case("sndcgan", (32, 32, 3), dict(width=4), dict(width=4), False),
  Case("sndcgan", (48, 48, 3), dict(width=4, conv_impl=XLA), dict(width=4, conv_impl=XLA), False),
  # InfoGAN (Chen et al. 2016), the MNIST networks of Lucic et al. 2018: BatchNorm in G and D.
  Case("infogan", (28, 28, 1), dict(hidden=16, width=4), dict(hidden=16, width=4), False),
]
CASE_IDS = [f"{c.name}-{'x'.join(map(str, c.shape))}" for c in CASES]
DCGAN_64 = CASE_IDS.index("dcgan-64x64x3")


def _num(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _run(net, variables, inputs, labels=None, *, train, dropout_seed=0):
  """Applies a network the way the training step does; returns (output, new batch_stats)."""
  out, updates = net.apply(
    variables,
    inputs,
    labels,
    train=train,
    rngs={"dropout": jax.random.key(dropout_seed)},
    mutable=["batch_stats"],
  )
  return out, updates.get("batch_stats", {})


def _networks(index: int):
  """The (Generator, Discriminator) of CASES[index]."""
  case = CASES[index]
  module = models.get_model_module(case.name)
  return module.Generator(image_shape=case.shape, **case.g_kwargs), module.Discriminator(
    **case.d_kwargs
  )


@functools.cache
def _outputs(index: int) -> dict:
  """Initial variables and every network call the contract tests look at, for CASES[index].

  One compiled function per case: on the CPU, compiling dominates the cost of these tiny networks.
  """
  generator, discriminator = _networks(index)
  z = jax.random.normal(jax.random.key(1), (BATCH, LATENT))
  x = jax.random.uniform(jax.random.key(2), (BATCH, *CASES[index].shape), minval=-1.0, maxval=1.0)
  labels = jnp.arange(BATCH, dtype=jnp.int32)

  @jax.jit
  def run(z, x, labels):
    g_vars = generator.init(jax.random.key(3), z, train=False)
    d_vars = discriminator.init(jax.random.key(4), x, train=False)
    out = {"g_vars": g_vars, "d_vars": d_vars}
    out["g_eval"], out["g_eval_stats"] = _run(generator, g_vars, z, train=False)
    out["g_eval_labels"], _ = _run(generator, g_vars, z, labels, train=False)
    # Far-out latents drive the output layer into saturation (BN uses running statistics).
    out["g_eval_far"], _ = _run(generator, g_vars, 1000.0 * z, train=False)
    out["g_train"], out["g_train_stats"] = _run(generator, g_vars, z, train=True)
    out["d_eval"], out["d_eval_stats"] = _run(discriminator, d_vars, x, train=False)
    out["d_eval_rng1"], _ = _run(discriminator, d_vars, x, train=False, dropout_seed=1)
    out["d_eval_no_rng"] = discriminator.apply(d_vars, x, train=False)
    out["d_eval_labels"], _ = _run(discriminator, d_vars, x, labels, train=False)
    out["d_train"], out["d_train_stats"] = _run(discriminator, d_vars, x, train=True)
    out["d_train_rng1"], _ = _run(discriminator, d_vars, x, train=True, dropout_seed=1)
    out["d_fake_eval"], _ = _run(discriminator, d_vars, out["g_eval"], train=False)
    out["d_fake_train"], _ = _run(discriminator, d_vars, out["g_train"], train=True)
    return out

  return jax.tree.map(np.asarray, run(z, x, labels))


def test_every_model_is_covered():
  assert models.available_models() == sorted({c.name for c in CASES})


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_output_shapes_and_range(index):
  case = CASES[index]
  out = _outputs(index)
  for key in ("g_eval", "g_eval_far", "g_train"):
    assert out[key].shape == (BATCH, *case.shape) and out[key].dtype == np.float32
    assert np.all(np.isfinite(out[key]))
  if case.g_kwargs.get("output_activation", "tanh") == "tanh":
    for key in ("g_eval", "g_eval_far", "g_train"):
      assert np.all(np.abs(out[key]) <= 1.0)
  else:  # "linear": unbounded, for 2-D points.
    assert np.max(np.abs(out["g_eval_far"])) > 1.0
  for key in ("d_eval", "d_train", "d_fake_eval", "d_fake_train"):
    assert out[key].shape == (BATCH,) and np.all(np.isfinite(out[key]))
  # Labels are accepted and (for now) ignored.
  np.testing.assert_array_equal(out["g_eval_labels"], out["g_eval"])
  np.testing.assert_array_equal(out["d_eval_labels"], out["d_eval"])


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_batch_norm_statistics_update_only_in_train_mode(index):
  out = _outputs(index)
  g_vars, d_vars = out["g_vars"], out["d_vars"]
  for net, variables in (("g", g_vars), ("d", d_vars)):
    if "batch_stats" not in variables:
      assert not out[f"{net}_train_stats"]
      continue
    old = variables["batch_stats"]
    jax.tree.map(np.testing.assert_array_equal, out[f"{net}_eval_stats"], old)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), out[f"{net}_train_stats"], old)
    assert all(jax.tree.leaves(moved)), "every running mean/variance moves in train mode"
  # Train mode normalises with the batch's own statistics, eval mode with the running ones: the
  # samples differ far beyond the round-off of G's fan-ins (and of the batch's statistics).
  if "batch_stats" in g_vars:
    length = tolerances.summed_fan_in(g_vars["params"]) + BATCH
    tolerances.assert_differ_beyond_roundoff(out["g_train"], out["g_eval"], length=length)


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASE_IDS)
def test_dropout_only_in_train_mode(index):
  out = _outputs(index)
  if CASES[index].dropout:  # Other masks: a real difference, not D's round-off.
    length = tolerances.summed_fan_in(out["d_vars"]["params"])
    tolerances.assert_differ_beyond_roundoff(out["d_train_rng1"], out["d_train"], length=length)
  else:  # Without dropout the rng is unused: the same computation in the same program.
    np.testing.assert_array_equal(out["d_train_rng1"], out["d_train"])
  np.testing.assert_array_equal(out["d_eval_rng1"], out["d_eval"])
  np.testing.assert_array_equal(out["d_eval_no_rng"], out["d_eval"])


# --- Seed-size networks: parameter counts from each reference's layer list (shapes only). ---


def _abstract_counts(generator, discriminator, shape, latent_dim):
  """(G params, G statistics, D params, D statistics) via jax.eval_shape; checks output shapes."""
  z = jax.ShapeDtypeStruct((2, latent_dim), jnp.float32)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  key = jax.random.key(0)
  g_vars = jax.eval_shape(lambda k, z: generator.init(k, z, train=False), key, z)
  d_vars = jax.eval_shape(lambda k, x: discriminator.init(k, x, train=False), key, x)
  fake = jax.eval_shape(lambda v, z: generator.apply(v, z, train=False), g_vars, z)
  logits = jax.eval_shape(lambda v, x: discriminator.apply(v, x, train=False), d_vars, x)
  assert fake.shape == (2, *shape) and logits.shape == (2,)
  return (
    _num(g_vars["params"]),
    _num(g_vars.get("batch_stats", {})),
    _num(d_vars["params"]),
    _num(d_vars.get("batch_stats", {})),
  )


def test_mlp_seed_parameter_counts():
  shape = (28, 28, 1)
  counts = _abstract_counts(mlp.Generator(image_shape=shape), mlp.Discriminator(), shape, 64)
  # Dense layers are (in * out + out); each generator BatchNorm adds a scale and an offset
  # (2 * out parameters) and a running mean and variance (2 * out statistics).
  g_params = (
    (64 * 256 + 256 + 2 * 256)
    + (256 * 512 + 512 + 2 * 512)
    + (512 * 1024 + 1024 + 2 * 1024)
    + (1024 * 784 + 784)
  )
  g_stats = 2 * (256 + 512 + 1024)
  d_params = (784 * 512 + 512) + (512 * 256 + 256) + (256 * 128 + 128) + (128 * 1 + 1)
  assert counts == (g_params, g_stats, d_params, 0)


def test_mlp_for_2d_points():
  generator = mlp.Generator(
    image_shape=(2,), hidden=(400, 400), batch_norm=False, output_activation="linear"
  )
  counts = _abstract_counts(generator, mlp.Discriminator(hidden=(200,), dropout=0.0), (2,), 2)
  g_params = (2 * 400 + 400) + (400 * 400 + 400) + (400 * 2 + 2)
  d_params = (2 * 200 + 200) + (200 * 1 + 1)
  assert counts == (g_params, 0, d_params, 0)


def test_mlp_maxout_discriminator():
  # The PacGAN/VEEGAN 2-D discriminator: 3 x 200 maxout units of 5 pieces, N(0, 0.02) kernels.
  discriminator = mlp.Discriminator(
    hidden=(200, 200, 200), dropout=0.0, maxout_pieces=5, kernel_init_std=0.02
  )
  counts = _abstract_counts(mlp.Generator(image_shape=(2,), hidden=(8,)), discriminator, (2,), 2)
  assert counts[2] == (2 * 1000 + 1000) + 2 * (200 * 1000 + 1000) + (200 + 1)
  # The forward pass equals a numpy maxout network with the same parameters.
  small = mlp.Discriminator(hidden=(3,), dropout=0.0, maxout_pieces=4, kernel_init_std=0.5)
  x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
  variables = small.init(jax.random.key(1), x, train=False)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  x64 = x.astype(np.float64)
  hidden = (x64 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]).reshape(5, 3, 4).max(-1)
  expected = (hidden @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"])[:, 0]
  # Round-off of both layers' fan-ins and biases, at the scale of the absolute terms: the pieces'
  # sums |x| |W0| + |b0| bound |hidden| and its error, then through |W1|.
  pieces = np.abs(x64) @ np.abs(p["Dense_0"]["kernel"]) + np.abs(p["Dense_0"]["bias"])
  hidden_abs = pieces.reshape(5, 3, 4).max(-1)
  magnitude = np.max(hidden_abs @ np.abs(p["Dense_1"]["kernel"]) + np.abs(p["Dense_1"]["bias"]))
  tolerances.assert_float32_close(
    small.apply(variables, x, train=False),
    expected,
    length=tolerances.summed_fan_in(p) + 2,
    magnitude=magnitude,
  )
  # N(0, 0.5^2) kernels (not the default LeCun 1 / sqrt(2) = 0.71): 2,000 draws of a wider layer,
  # their std within 5 standard errors.
  wide = mlp.Discriminator(hidden=(200,), dropout=0.0, maxout_pieces=5, kernel_init_std=0.5)
  kernel = np.asarray(wide.init(jax.random.key(1), x, train=False)["params"]["Dense_0"]["kernel"])
  assert abs(np.std(kernel) / 0.5 - 1) < tolerances.std_rtol(kernel.size), np.std(kernel)
  with pytest.raises(ValueError, match="maxout_pieces must be >= 1, got 0"):
    mlp.Discriminator(hidden=(3,), maxout_pieces=0).init(jax.random.key(0), x, train=False)


def test_mlp_reshapes_to_any_sample_shape():
  generator = mlp.Generator(image_shape=(4, 5, 3), hidden=(8,))
  counts = _abstract_counts(generator, mlp.Discriminator(hidden=(8,)), (4, 5, 3), 3)
  assert counts[2] == (60 * 8 + 8) + (8 + 1)


def test_dcgan_28_seed_parameter_counts():
  # TensorFlow DCGAN tutorial: nz = 100, w = 64 (256/128/64 channels), MNIST; 5x5 kernels.
  nz, w, c = 100, 64, 1
  generator = dcgan.Generator(image_shape=(28, 28, c), width=w)
  counts = _abstract_counts(generator, dcgan.Discriminator(width=w), (28, 28, c), nz)
  g_params = (
    (nz * 7 * 7 * 4 * w + 2 * 7 * 7 * 4 * w)  # Dense (no bias) + BN
    + (25 * 4 * w * 2 * w + 2 * 2 * w)  # ConvT 5x5 s1 (no bias) + BN
    + (25 * 2 * w * w + 2 * w)  # ConvT 5x5 s2 (no bias) + BN
    + (25 * w * c)  # ConvT 5x5 s2 to C channels (no bias)
  )
  g_stats = 2 * (7 * 7 * 4 * w + 2 * w + w)
  d_params = (25 * c * w + w) + (25 * w * 2 * w + 2 * w) + (7 * 7 * 2 * w * 1 + 1)
  assert counts == (g_params, g_stats, d_params, 0)
  # The totals Keras' model.summary() prints for the tutorial's models (statistics included).
  assert (g_params + g_stats, d_params) == (2_330_944, 212_865)


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_radford_seed_parameter_counts(size):
  nz, w, c = 100, 64, 3
  generator = dcgan.Generator(image_shape=(size, size, c), width=w)
  counts = _abstract_counts(generator, dcgan.Discriminator(width=w), (size, size, c), nz)
  # All convolutions 4x4 (16 taps) without bias; BN: scale + offset (params), mean + var (stats).
  if size == 64:
    g_convs = 16 * (nz * 8 * w + 8 * w * 4 * w + 4 * w * 2 * w + 2 * w * w + w * c)
    g_bn = 8 * w + 4 * w + 2 * w + w
    d_convs = 16 * (c * w + w * 2 * w + 2 * w * 4 * w + 4 * w * 8 * w + 8 * w * 1)
    d_bn = 2 * w + 4 * w + 8 * w  # None after the input layer.
  else:
    g_convs = 16 * (nz * 4 * w + 4 * w * 2 * w + 2 * w * w + w * c)
    g_bn = 4 * w + 2 * w + w
    d_convs = 16 * (c * w + w * 2 * w + 2 * w * 4 * w + 4 * w * 1)
    d_bn = 2 * w + 4 * w
  assert counts == (g_convs + 2 * g_bn, 2 * g_bn, d_convs + 2 * d_bn, 2 * d_bn)
  if size == 64:  # What the PyTorch DCGAN example reports for netG / netD.
    assert (g_convs + 2 * g_bn, d_convs + 2 * d_bn) == (3_576_704, 2_765_568)


# --- Initialisation ---


def test_dcgan_radford_initialisation():
  out = _outputs(DCGAN_64)
  g_vars, d_vars = out["g_vars"], out["d_vars"]
  kernels, scales, offsets = [], [], []
  for variables in (g_vars, d_vars):
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"]):
      kind = path[-1].key
      assert kind in ("kernel", "scale", "bias"), path
      {"kernel": kernels, "scale": scales, "bias": offsets}[kind].append(np.ravel(leaf))
      if kind == "kernel":  # N(0, 0.02^2): the std within 5 standard errors of its draws.
        assert abs(float(np.std(leaf)) / 0.02 - 1) < tolerances.std_rtol(leaf.size), path
  # All kernels, and the BatchNorm scales (N(1, 0.02^2)): mean and std within 5 standard errors.
  kernels = np.concatenate(kernels).astype(np.float64)
  assert abs(kernels.mean()) < tolerances.mean_atol(0.02, kernels.size)
  assert abs(kernels.std() / 0.02 - 1) < tolerances.std_rtol(kernels.size)
  scales = np.concatenate(scales).astype(np.float64)
  assert abs(scales.mean() - 1.0) < tolerances.mean_atol(0.02, scales.size)
  assert abs(scales.std() / 0.02 - 1) < tolerances.std_rtol(scales.size)
  # The only biases are BatchNorm offsets (the convolutions have none): all zero.
  np.testing.assert_array_equal(np.concatenate(offsets), 0.0)


def test_variance_scaling_initialisers():
  key = jax.random.key(0)
  shape = (5, 5, 32, 64)  # fan_in = 800, fan_out = 1600
  glorot = layers.glorot_uniform()(key, shape)
  limit = math.sqrt(6 / (800 + 1600))
  assert glorot.shape == shape and float(jnp.max(jnp.abs(glorot))) <= limit
  # Sample stds of 51,200 draws within 5 standard errors (a normal's: a uniform's is smaller).
  rtol = tolerances.std_rtol(glorot.size)
  assert abs(np.std(np.asarray(glorot, np.float64)) / (limit / math.sqrt(3)) - 1) < rtol
  lecun = layers.lecun_normal()(key, shape)
  assert abs(np.std(np.asarray(lecun, np.float64)) / math.sqrt(1 / 800) - 1) < rtol


# --- Layers ---


@pytest.mark.parametrize(
  "size, kernel, stride, padding, expected",
  [
    (7, 5, 1, "SAME", 7),
    (7, 5, 2, "SAME", 14),
    (14, 5, 2, "SAME", 28),
    (1, 4, 1, "VALID", 4),
    (4, 4, 2, "SAME", 8),
    (16, 4, 2, "SAME", 32),
    (32, 4, 2, "SAME", 64),
  ],
)
def test_conv_transpose_sizes(size, kernel, stride, padding, expected):
  class Up(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.conv_transpose(2, kernel, stride, padding)(x)

  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda x: Up().init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (1, expected, expected, 2)


@pytest.mark.parametrize("size, kernel, expected", [(64, 4, 32), (28, 5, 14), (14, 5, 7)])
def test_conv_stride_two_halves(size, kernel, expected):
  class Down(nn.Module):
    @nn.compact
    def __call__(self, x):
      return layers.conv(2, kernel, 2, "SAME")(x)

  x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  out = jax.eval_shape(lambda x: Down().init_with_output(jax.random.key(0), x)[0], x)
  assert out.shape == (1, expected, expected, 2)


# --- Errors ---


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(ValueError, match=r"'resnett'.*dcgan, .*mlp") as info:
    models.get_model_module("resnett")
  assert "layers" not in str(info.value)
  with pytest.raises(ValueError, match="valid choices"):
    models.get_model_module("layers")  # Shared code, not an architecture.
  assert models.get_model_module("dcgan") is dcgan
  assert models.get_model_module("mlp") is mlp


@pytest.mark.parametrize("shape", [(48, 48, 3), (32, 28, 3), (16, 16, 1)])
def test_dcgan_unsupported_resolution(shape):
  size = rf"{shape[0]}x{shape[1]}"
  z = jax.ShapeDtypeStruct((1, LATENT), jnp.float32)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  generator = dcgan.Generator(image_shape=shape, width=4)
  with pytest.raises(ValueError, match=rf"28, 32, 64.*{size}"):
    jax.eval_shape(lambda z: generator.init(jax.random.key(0), z, train=False), z)
  discriminator = dcgan.Discriminator(width=4)
  with pytest.raises(ValueError, match=rf"28, 32, 64.*{size}"):
    jax.eval_shape(lambda x: discriminator.init(jax.random.key(0), x, train=False), x)


def test_invalid_choices_list_the_valid_ones():
  def init(module, shape):
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)

  with pytest.raises(ValueError, match=r"conv_impl 'cuda'.*valid choices: xla"):
    init(dcgan.Generator(image_shape=(32, 32, 3), width=4, conv_impl="cuda"), (1, LATENT))
  with pytest.raises(ValueError, match=r"conv_impl 'cuda'.*valid choices: xla"):
    init(dcgan.Discriminator(width=4, conv_impl="cuda"), (1, 28, 28, 1))
  with pytest.raises(ValueError, match=r"output_activation 'sigmoid'.*tanh, linear"):
    init(mlp.Generator(image_shape=(2,), output_activation="sigmoid"), (1, LATENT))
