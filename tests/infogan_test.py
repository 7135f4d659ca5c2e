"""The InfoGAN networks (ganjax.models.infogan) and the loss study's config
(configs/gans_created_equal.py, Lucic et al. 2018)."""

import json
import math
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_config

from ganjax.errors import ConfigError
from ganjax.models import infogan
from ganjax.systems import gan

CONFIG = "gans_created_equal"
LOSSES = ("mm", "ns", "lsgan", "wgan", "wgan_gp", "dragan")


def _num(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _counts(generator, discriminator, shape, latent_dim):
  """(G params, G statistics, D params, D statistics), from shapes only."""
  key = jax.random.key(0)
  z, x = jnp.zeros((2, latent_dim)), jnp.zeros((2, *shape))
  g_vars = jax.eval_shape(lambda k: generator.init(k, z, train=False), key)
  d_vars = jax.eval_shape(lambda k: discriminator.init(k, x, train=False), key)
  return (
    _num(g_vars["params"]),
    _num(g_vars.get("batch_stats", {})),
    _num(d_vars["params"]),
    _num(d_vars.get("batch_stats", {})),
  )


@pytest.mark.parametrize("normalization", infogan.NORMALIZATIONS)
def test_parameter_counts_from_the_layer_list(normalization):
  # Chen et al. 2016, Appendix C.1 / compare_gan: z 64, MNIST 28x28x1, n = 1024, w = 64.
  z, n, w, c, h = 64, 1024, 64, 1, 7  # h: the side of the 7x7 map (28 / 4).
  counts = _counts(
    infogan.Generator(image_shape=(28, 28, c)),
    infogan.Discriminator(normalization=normalization),
    (28, 28, c),
    z,
  )
  # Dense and conv layers: kernel (fan-in x units) + bias; BN: scale + offset (params), running
  # mean + variance (statistics).
  g_params = (
    (z * n + n + 2 * n)  # Dense 1024 + BN
    + (n * h * h * 2 * w + h * h * 2 * w + 2 * h * h * 2 * w)  # Dense 7x7x128 + BN
    + (16 * 2 * w * w + w + 2 * w)  # ConvT 4x4 128 -> 64 + BN
    + (16 * w * c + c)  # ConvT 4x4 64 -> 1
  )
  g_stats = 2 * (n + h * h * 2 * w + w)
  d_layers = (16 * c * w + w) + (16 * w * 2 * w + 2 * w) + (h * h * 2 * w * n + n) + (n + 1)
  d_norm = 2 * (2 * w + n)  # After conv 2 and the hidden dense layer.
  expected_d = {
    "batch_norm": (d_layers + d_norm, d_norm),
    "layer_norm": (d_layers + d_norm, 0),
    "none": (d_layers, 0),
  }[normalization]
  assert counts == (g_params, g_stats, *expected_d)
  assert (g_params, g_params + g_stats) == (6_642_241, 6_656_961)


def test_any_size_divisible_by_four():
  z, n, w, c = 5, 16, 4, 3  # 12x20x3 images: 3x5 and 6x10 maps.
  generator = infogan.Generator(image_shape=(12, 20, c), hidden=n, width=w)
  counts = _counts(generator, infogan.Discriminator(hidden=n, width=w), (12, 20, c), z)
  g_params = (z * n + 3 * n) + (n + 3) * 3 * 5 * 2 * w + (16 * 2 * w * w + 3 * w) + 16 * w * c + c
  d_params = (16 * c * w + w) + (16 * w * 2 * w + 3 * 2 * w) + (3 * 5 * 2 * w * n + 3 * n) + n + 1
  assert counts == (g_params, 2 * (n + 3 * 5 * 2 * w + w), d_params, 2 * (2 * w + n))
  with pytest.raises(ConfigError, match="multiples of 4, got 30x28"):
    _counts(infogan.Generator(image_shape=(30, 28, 1)), infogan.Discriminator(), (28, 28, 1), z)


@pytest.fixture(scope="module")
def outputs():
  """Small networks' outputs on one batch (and its first example alone) in both modes."""
  g = infogan.Generator(image_shape=(28, 28, 1), hidden=16, width=4, conv_impl="xla")
  z = jax.random.normal(jax.random.key(1), (6, 8))
  x = jax.random.uniform(jax.random.key(2), (6, 28, 28, 1), minval=-1.0, maxval=1.0)

  @jax.jit
  def run(z, x):
    out = {}
    g_vars = g.init(jax.random.key(3), z, train=False)
    out["g_eval"] = g.apply(g_vars, z, train=False)
    out["g_train"], _ = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
    # Weights 30 times larger drive the output layer into saturation.
    out["g_far"] = g.apply(jax.tree.map(lambda v: 30.0 * v, g_vars), z, train=False)
    for name in infogan.NORMALIZATIONS:
      d = infogan.Discriminator(hidden=16, width=4, normalization=name, conv_impl="xla")
      d_vars = d.init(jax.random.key(4), x, train=False)
      out[f"{name}_eval"] = d.apply(d_vars, x, train=False)
      out[f"{name}_train"], _ = d.apply(d_vars, x, train=True, mutable=["batch_stats"])
      out[f"{name}_train_one"], _ = d.apply(d_vars, x[:1], train=True, mutable=["batch_stats"])
    return out

  return jax.tree.map(np.asarray, run(z, x))


def test_output_shapes_and_ranges(outputs):
  for key in ("g_eval", "g_train", "g_far"):
    assert outputs[key].shape == (6, 28, 28, 1) and outputs[key].dtype == np.float32
    assert np.all(np.abs(outputs[key]) <= 1.0)
  assert np.max(np.abs(outputs["g_far"])) > 0.99  # tanh saturates: the range is [-1, 1].
  for name in infogan.NORMALIZATIONS:
    for mode in ("eval", "train"):
      logits = outputs[f"{name}_{mode}"]
      assert logits.shape == (6,) and logits.dtype == np.float32 and np.all(np.isfinite(logits))


def test_discriminator_normalization(outputs):
  # Batch norm in train mode normalises with the batch's statistics: an example's logit depends
  # on the other examples, and differs from eval mode (running statistics).
  assert abs(outputs["batch_norm_train_one"][0] - outputs["batch_norm_train"][0]) > 1e-3
  assert np.max(np.abs(outputs["batch_norm_train"] - outputs["batch_norm_eval"])) > 1e-3
  # Layer norm and no normalisation treat each example alone, the same in both modes.
  for name in ("layer_norm", "none"):
    np.testing.assert_allclose(
      outputs[f"{name}_train_one"][0], outputs[f"{name}_train"][0], rtol=1e-4
    )
    np.testing.assert_array_equal(outputs[f"{name}_train"], outputs[f"{name}_eval"])
  with pytest.raises(ConfigError, match="valid choices: batch_norm, layer_norm, none"):
    infogan.Discriminator(normalization="spectral").init(
      jax.random.key(0), jnp.zeros((2, 28, 28, 1)), train=False
    )


def test_config_defaults_and_choices():
  wgan = load_config(CONFIG, "loss=wgan")
  assert (wgan.loss.name, wgan.n_critic, wgan.regularizer.weight_clip) == ("wgan", 5, 0.01)
  # 20 epochs of 60,000 images at batch 64: 18,750 discriminator updates for every loss.
  for loss in LOSSES:
    config = load_config(CONFIG, f"loss={loss}")
    assert config.num_train_steps * config.n_critic * config.batch_size == 20 * 60_000
    assert (config.batch_size, config.model.latent_dim) == (64, 64)
  gp = load_config(CONFIG, "loss=wgan_gp")
  assert gp.model.discriminator.normalization == "none"
  assert gp.regularizer.gradient_penalty == 10.0
  # compare_gan's lambda 10 on a D loss that sums the real and fake terms; ganjax averages them.
  assert load_config(CONFIG, "loss=dragan").regularizer.dragan == 5.0
  assert load_config(CONFIG, "dataset=fashion_mnist").data.name == "fashion_mnist"
  with pytest.raises(ConfigError, match="valid choices: mm, ns, lsgan, wgan, wgan_gp, dragan"):
    load_config(CONFIG, "loss=hinge")
  with pytest.raises(ConfigError, match="valid choices: mnist, fashion_mnist"):
    load_config(CONFIG, "dataset=cifar10")


@pytest.fixture(scope="module")
def idx_folder(tmp_path_factory):
  """A small MNIST-format training split: 64 random 28x28 images, labels 0..9."""
  folder = tmp_path_factory.mktemp("idx")
  rng = np.random.default_rng(0)
  arrays = {
    "images-idx3-ubyte": rng.integers(0, 256, (64, 28, 28)),
    "labels-idx1-ubyte": (np.arange(64) % 10),
  }
  for suffix, array in arrays.items():
    array = np.asarray(array, np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    (folder / f"train-{suffix}").write_bytes(header + array.tobytes())
  return str(folder)


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains(tmp_path, idx_folder, loss):
  config = load_config(CONFIG, f"loss={loss},runlocal")
  config.data.dir = idx_folder
  config.parallel.num_devices = 1
  # XLA's own convolutions: the same parameters and results, compiled faster than the CPU path.
  config.model.generator.conv_impl = config.model.discriminator.conv_impl = "xla"
  workdir = str(tmp_path / "run")
  state = gan.train_and_evaluate(config, workdir)
  assert int(state.step) == 3
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [r for r in map(json.loads, f) if "d_loss" in r]
  assert [r["step"] for r in lines] == [1, 2, 3]
  assert all(np.isfinite([r["d_loss"], r["g_loss"]]).all() for r in lines)
  # Batch norm in D for MM, NS, LSGAN and WGAN; none with the gradient penalties.
  with_bn = loss not in ("wgan_gp", "dragan")
  assert bool(jax.tree.leaves(state.discriminator.batch_stats)) == with_bn
  if loss == "wgan":  # Every critic parameter stays clipped.
    leaves = jax.tree.leaves(state.discriminator.params)
    assert max(float(jnp.max(jnp.abs(p))) for p in leaves) <= 0.01
  if not with_bn:  # The penalty's metrics are logged.
    assert {"gp" if loss == "wgan_gp" else "dragan"} <= set(lines[-1])
