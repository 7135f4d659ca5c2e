"""SNGAN architectures (ganjax.models.resnet, ganjax.models.sndcgan) and configs/sngan.py.

References: Miyato et al. 2018, "Spectral Normalization for Generative Adversarial Networks"
(Tables 3-6); Miyato & Koyama 2018, "cGANs with Projection Discriminator". Everything that runs
uses tiny widths; the paper-size networks are only traced (jax.eval_shape).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from ganjax import losses, steps
from ganjax.models import resnet, sndcgan
from ganjax.state import create_gan_state
from ganjax.systems import gan

BATCH = 4
LATENT = 8
CLASSES = 5


def _num(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _changed(a, b) -> bool:
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return any(not np.array_equal(x, y) for x, y in pairs)


def _randomize_conditional_bn(params, key):
  """Replaces the ConditionalBatchNorm gains / biases (initialised to 1 / 0) by random values."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
  out = []
  for i, (path, leaf) in enumerate(leaves):
    if path[-1].key in ("gain", "bias") and leaf.ndim == 2:  # (num_classes, C)
      leaf = leaf + 0.5 * jax.random.normal(jax.random.fold_in(key, i), leaf.shape)
    out.append(leaf)
  return jax.tree_util.tree_unflatten(treedef, out)


# --- Shapes, ranges and conditioning at every supported size -------------------------------


# XLA's own convolutions where the subject is the architecture, not the kernels: models_test runs
# the ResNet with its default (fast) kernels, conv_impl_test compares the two.
XLA = "xla"


@functools.cache
def _outputs(size: int) -> dict:
  shape = (size, size, 3)
  g = resnet.Generator(image_shape=shape, width=2, conv_impl=XLA)
  d = resnet.Discriminator(width=2, conv_impl=XLA)
  g_cond = resnet.Generator(image_shape=shape, width=2, num_classes=CLASSES, conv_impl=XLA)
  d_cond = resnet.Discriminator(width=2, num_classes=CLASSES, conv_impl=XLA)
  z = jax.random.normal(jax.random.key(1), (BATCH, LATENT))
  x = jax.random.uniform(jax.random.key(2), (BATCH, *shape), minval=-1.0, maxval=1.0)
  labels = jnp.arange(BATCH, dtype=jnp.int32) % CLASSES
  other = (labels + 1) % CLASSES

  @jax.jit
  def run(z, x, labels, other):
    out = {}
    gc_vars = g_cond.init(jax.random.key(5), z, labels, train=False)
    gc_vars = {**gc_vars, "params": _randomize_conditional_bn(gc_vars["params"], jax.random.key(6))}
    dc_vars = d_cond.init(jax.random.key(7), x, labels, train=False)
    if size == 32:  # models_test's CASES cover the unconditional models at 48 and 64 pixels.
      g_vars = g.init(jax.random.key(3), z, train=False)
      d_vars = d.init(jax.random.key(4), x, train=False)
      out["g"] = g.apply(g_vars, z, train=False)
      out["g_labels_ignored"] = g.apply(g_vars, z, labels, train=False)
      out["g_train"], _ = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
      out["d"] = d.apply(d_vars, x, train=False)
      out["d_labels_ignored"] = d.apply(d_vars, x, labels, train=False)
    out["gc"] = g_cond.apply(gc_vars, z, labels, train=False)
    out["gc_other"] = g_cond.apply(gc_vars, z, other, train=False)
    out["dc"] = d_cond.apply(dc_vars, x, labels, train=False)
    out["dc_other"] = d_cond.apply(dc_vars, x, other, train=False)
    return out

  return jax.tree.map(np.asarray, run(z, x, labels, other))


@pytest.mark.parametrize(
  "size",
  # 48 and 64 add residual blocks of the same code; models_test checks their shapes unconditioned.
  [s if s == 32 else pytest.param(s, marks=pytest.mark.slow) for s in resnet.SUPPORTED_SIZES],
)
def test_output_shapes_ranges_and_conditioning(size):
  out = _outputs(size)
  for key in ("g", "g_train", "gc", "gc_other"):
    if key in out:
      assert out[key].shape == (BATCH, size, size, 3) and out[key].dtype == np.float32
      assert np.all(np.isfinite(out[key])) and np.all(np.abs(out[key]) <= 1.0)
  for key in ("d", "dc", "dc_other"):
    if key in out:
      assert out[key].shape == (BATCH,) and out[key].dtype == np.float32
      assert np.all(np.isfinite(out[key]))
  if size == 32:  # Unconditional models ignore labels.
    np.testing.assert_array_equal(out["g_labels_ignored"], out["g"])
    np.testing.assert_array_equal(out["d_labels_ignored"], out["d"])
  # Conditional models: every example's output depends on its label (CBN in G, projection in D).
  per_example = np.abs(out["gc"] - out["gc_other"]).reshape(BATCH, -1).max(axis=1)
  assert np.all(per_example > 1e-4)
  assert np.all(np.abs(out["dc"] - out["dc_other"]) > 1e-6)


def test_conditional_models_require_labels():
  z = jax.ShapeDtypeStruct((2, LATENT), jnp.float32)
  x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  g = resnet.Generator(image_shape=(32, 32, 3), width=2, num_classes=CLASSES)
  d = resnet.Discriminator(width=2, num_classes=CLASSES)
  with pytest.raises(ValueError, match="needs labels"):
    jax.eval_shape(lambda z: g.init(jax.random.key(0), z, train=False), z)
  with pytest.raises(ValueError, match="needs labels"):
    jax.eval_shape(lambda x: d.init(jax.random.key(0), x, train=False), x)
  with pytest.raises(ValueError, match="label 7 is outside"):
    g.init(jax.random.key(0), jnp.zeros((2, LATENT)), jnp.array([0, 7]), train=False)


@pytest.mark.parametrize(
  "module, shape, supported",
  [
    (resnet, (16, 16, 3), "32, 48, 64"),
    (resnet, (128, 128, 3), "32, 48, 64"),
    (resnet, (32, 28, 3), "32, 48, 64"),
    (sndcgan, (64, 64, 3), "32, 48"),
    (sndcgan, (28, 28, 1), "32, 48"),
  ],
)
def test_unsupported_sizes_raise(module, shape, supported):
  message = rf"{supported} pixels, got {shape[0]}x{shape[1]}"
  z = jax.ShapeDtypeStruct((1, LATENT), jnp.float32)
  x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
  g = module.Generator(image_shape=shape, width=2)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda z: g.init(jax.random.key(0), z, train=False), z)
  d = module.Discriminator(width=2)
  with pytest.raises(ValueError, match=message):
    jax.eval_shape(lambda x: d.init(jax.random.key(0), x, train=False), x)


def test_invalid_choices_list_the_valid_ones():
  z = jax.ShapeDtypeStruct((1, LATENT), jnp.float32)
  g = resnet.Generator(image_shape=(32, 32, 3), width=2, conv_impl="cuda")
  with pytest.raises(ValueError, match=r"conv_impl 'cuda'.*valid choices: xla"):
    jax.eval_shape(lambda z: g.init(jax.random.key(0), z, train=False), z)
  d = sndcgan.Discriminator(width=2, dtype="float16")
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  with pytest.raises(ValueError, match=r"dtype 'float16'.*float32, bfloat16"):
    jax.eval_shape(lambda x: d.init(jax.random.key(0), x, train=False), x)


# --- Parameter counts at the paper's sizes, from the layer lists ----------------------------


def _abstract_counts(generator, discriminator, shape, latent_dim, labels=None):
  """(G params, G batch_stats, D params, D batch_stats) of the traced networks."""
  z = jax.ShapeDtypeStruct((2, latent_dim), jnp.float32)
  x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  y = None if labels is None else jnp.zeros((2,), jnp.int32)
  key = jax.random.key(0)
  g_vars = jax.eval_shape(lambda k, z: generator.init(k, z, y, train=False), key, z)
  d_vars = jax.eval_shape(lambda k, x: discriminator.init(k, x, y, train=False), key, x)
  fake = jax.eval_shape(lambda v, z: generator.apply(v, z, y, train=False), g_vars, z)
  logits = jax.eval_shape(lambda v, x: discriminator.apply(v, x, y, train=False), d_vars, x)
  assert fake.shape == (2, *shape) and logits.shape == (2,)
  return (
    _num(g_vars["params"]),
    _num(g_vars.get("batch_stats", {})),
    _num(d_vars["params"]),
    _num(d_vars.get("batch_stats", {})),
  )


def _conv(k, c_in, c_out):  # k x k convolution with bias.
  return k * k * c_in * c_out + c_out


@pytest.mark.parametrize("num_classes", [None, 10])
def test_resnet_32_paper_parameter_counts(num_classes):
  # Table 4 (CIFAR-10): z = 128, G ch = 256, D ch = 128, RGB; the reference widths (width=None).
  nz, g_ch, d_ch, c, n = 128, 256, 128, 3, num_classes
  shape = (32, 32, c)
  counts = _abstract_counts(
    resnet.Generator(image_shape=shape, num_classes=n),
    resnet.Discriminator(num_classes=n),
    shape,
    nz,
    labels=n,
  )
  # BatchNorm: scale + offset per channel; conditional BN: a gain and a bias per class and channel.
  block_bn = 2 * g_ch if n is None else 2 * n * g_ch
  g_block = 2 * block_bn + 2 * _conv(3, g_ch, g_ch) + _conv(1, g_ch, g_ch)  # 1x1: upsampling.
  g_params = (nz * 4 * 4 * g_ch + 4 * 4 * g_ch) + 3 * g_block + 2 * g_ch + _conv(3, g_ch, c)
  g_stats = 2 * g_ch * (2 * 3 + 1)  # Running mean + variance of 7 BatchNorms.
  d_params = (
    _conv(3, c, d_ch)
    + _conv(3, d_ch, d_ch)
    + _conv(1, c, d_ch)  # optimized block
    + 2 * _conv(3, d_ch, d_ch)
    + _conv(1, d_ch, d_ch)  # down block: learnable shortcut
    + 2 * 2 * _conv(3, d_ch, d_ch)  # two plain blocks: identity shortcuts
    + (d_ch + 1)  # dense -> 1
    + (0 if n is None else n * d_ch)  # projection embedding V
  )
  # Spectral norm state: u of shape (1, out) and a scalar sigma per normalised weight.
  sn_layers = [d_ch] * 10 + [1] + ([] if n is None else [d_ch])
  d_stats = sum(sn_layers) + len(sn_layers)
  assert counts == (g_params, g_stats, d_params, d_stats)
  if n is None:  # The totals quoted in resnet.py's docstring.
    assert (g_params, d_params) == (4_276_739, 1_053_825)


def test_sndcgan_32_paper_parameter_counts():
  # Table 3: z = 128, w = 64 (G 512-256-128-64, D 64-64-128-128-256-256-512), RGB.
  nz, w, c = 128, 64, 3
  counts = _abstract_counts(
    sndcgan.Generator(image_shape=(32, 32, c)), sndcgan.Discriminator(), (32, 32, c), nz
  )
  dense = 4 * 4 * 8 * w
  g_params = (
    (nz * dense + dense)
    + 2 * dense  # dense + BatchNorm over its units
    + _conv(4, 8 * w, 4 * w)
    + 2 * 4 * w
    + _conv(4, 4 * w, 2 * w)
    + 2 * 2 * w
    + _conv(4, 2 * w, w)
    + 2 * w
    + _conv(3, w, c)
  )
  g_stats = 2 * (dense + 4 * w + 2 * w + w)
  channels = [c, w, w, 2 * w, 2 * w, 4 * w, 4 * w, 8 * w]
  kernels = [3, 4, 3, 4, 3, 4, 3]
  layer_list = zip(kernels, channels[:-1], channels[1:], strict=True)
  d_params = sum(_conv(k, c_in, c_out) for k, c_in, c_out in layer_list)
  d_params += 4 * 4 * 8 * w + 1
  d_stats = sum(channels[1:]) + 1 + 8  # u per layer (7 convs + dense) and 8 sigmas.
  assert counts == (g_params, g_stats, d_params, d_stats)
  assert (g_params, d_params) == (3_828_739, 2_935_873)


# --- Spectral normalisation ----------------------------------------------------------------


def test_spectral_norm_state_and_initialisation():
  x = jax.random.uniform(jax.random.key(0), (BATCH, 32, 32, 3), minval=-1.0, maxval=1.0)
  d = resnet.Discriminator(width=16)

  @jax.jit
  def run(x):
    variables = d.init(jax.random.key(1), x, train=False)
    _, eval_updates = d.apply(variables, x, train=False, mutable=["batch_stats"])
    _, train_updates = d.apply(variables, x, train=True, mutable=["batch_stats"])
    return variables, eval_updates["batch_stats"], train_updates["batch_stats"]

  variables, after_eval, after_train = jax.device_get(run(x))
  stats = variables["batch_stats"]
  kernels = [p for p, _ in jax.tree_util.tree_leaves_with_path(variables["params"])]
  us = [p for p, _ in jax.tree_util.tree_leaves_with_path(stats) if p[-1].key.endswith("/u")]
  assert len(kernels) == 2 * 11 and len(us) == 11  # Every conv and the dense layer: (W, b, u).
  jax.tree.map(np.testing.assert_array_equal, after_eval, stats)
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), after_train, stats)
  assert all(jax.tree.leaves(moved))
  # Kernels are stored as drawn: Glorot uniform with gain sqrt(2) on the residual 3x3 convs.
  kernel = variables["params"]["block2"]["Conv_1"]["kernel"]  # 3x3x16x16
  limit = math.sqrt(2.0) * math.sqrt(6.0 / (9 * 16 + 9 * 16))
  assert np.max(np.abs(kernel)) <= limit
  assert abs(float(np.std(kernel)) - limit / math.sqrt(3.0)) < 0.05 * limit / math.sqrt(3.0)
  # The generator: BatchNorm only, unless asked for spectral norm too.
  g_plain = resnet.Generator(image_shape=(32, 32, 3), width=2)
  g_sn = resnet.Generator(image_shape=(32, 32, 3), width=2, spectral_norm=True)
  z = jax.ShapeDtypeStruct((2, LATENT), jnp.float32)
  for g, expected in ((g_plain, 0), (g_sn, 1 + 3 * 3 + 1)):
    g_vars = jax.eval_shape(lambda z, g=g: g.init(jax.random.key(0), z, train=False), z)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(g_vars)]
    assert sum(name.endswith("/u']") for name in names) == expected


# --- Training --------------------------------------------------------------------------------


def test_jitted_hinge_train_step_changes_both_networks():
  module = resnet
  shape, n_critic = (32, 32, 3), 1  # n_critic > 1 is steps_test's; here: the ResNet trains.
  state = create_gan_state(
    jax.random.key(0),
    generator=module.Generator(image_shape=shape, width=4, conv_impl=XLA),
    discriminator=module.Discriminator(width=4, conv_impl=XLA),
    latent_dim=LATENT,
    element_shape=shape,
    generator_optimizer=optax.adam(2e-4, b1=0.0, b2=0.9),
    discriminator_optimizer=optax.adam(2e-4, b1=0.0, b2=0.9),
  )
  step = jax.jit(
    functools.partial(
      steps.train_step, objective=losses.hinge, latent_dim=LATENT, n_critic=n_critic
    )
  )
  real = jax.random.uniform(jax.random.key(1), (n_critic * BATCH, *shape), minval=-1, maxval=1)
  new = state
  for i in range(2):
    new, metrics = step(new, {"image": real}, jax.random.key(2 + i))
  assert int(new.step) == 2
  assert int(new.discriminator.opt_state[0].count) == 2 * n_critic
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  assert _changed(state.generator.params, new.generator.params)
  assert _changed(state.discriminator.params, new.discriminator.params)
  assert _changed(state.generator.batch_stats, new.generator.batch_stats)  # BatchNorm
  assert _changed(state.discriminator.batch_stats, new.discriminator.batch_stats)  # SN u, sigma


# --- Config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "arg, model", [("runlocal", "resnet"), ("arch=sndcgan,runlocal", "sndcgan")]
)
def test_config_loads_and_builds(arg, model):
  config = load_config("sngan", arg)
  gan.validate_config(config)
  assert config.model.name == model and config.loss.name == "hinge"
  assert config.n_critic == 5 and config.model.latent_dim == 128
  for optim in (config.optim.g, config.optim.d):
    assert (optim.name, optim.learning_rate, optim.b1, optim.b2) == ("adam", 2e-4, 0.0, 0.9)
  assert config.batch_size == 8 and config.model.generator.width <= 16
  networks = gan.build_networks(config, (32, 32, 3), None)
  counts = _abstract_counts(
    networks.generator, networks.discriminator, (32, 32, 3), config.model.latent_dim
  )
  assert counts[3] > 0  # Spectral norm state in D.
  full = load_config("sngan", arg.replace("runlocal", "dataset=folder").strip(","))
  assert (full.data.name, full.data.image_size, full.num_train_steps) == ("folder", 32, 50000)
  assert full.batch_size == 64


def test_config_rejects_unknown_arch():
  with pytest.raises(ValueError, match="resnet, sndcgan"):
    load_config("sngan", "arch=biggan")
