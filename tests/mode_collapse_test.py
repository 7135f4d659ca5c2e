"""The 2-D mode-collapse methods: PacGAN packing, minibatch features in the MLP D, the configs."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import load_config

from ganjax import losses, parallel, state, steps, train
from ganjax.models import blocks, mlp

METHODS = (
    "gan",
    "pacgan2",
    "pacgan3",
    "pacgan4",
    "unrolled5",
    "minibatch_discrimination",
    "mbstd",
    "wgan_gp",
)


def _count(tree) -> int:
  return sum(x.size for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------------------------
# PacGAN packing.


@pytest.mark.parametrize(
    "shape, pack", [((6, 3), 1), ((6, 3), 2), ((6, 3), 3), ((4, 5, 3, 2), 2), ((6, 2, 2, 1), 3)]
)
def test_pack_samples_concatenates_consecutive_rows(shape, pack):
  x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
  expected = np.stack(
      [
          np.concatenate([x[i * pack + j] for j in range(pack)], axis=-1)
          for i in range(shape[0] // pack)
      ]
  )
  got = np.asarray(blocks.pack_samples(jnp.asarray(x), pack))
  assert got.shape == (shape[0] // pack, *shape[1:-1], pack * shape[-1])
  np.testing.assert_array_equal(got, expected)


def test_pack_samples_rejects_a_batch_that_does_not_divide():
  with pytest.raises(ValueError, match=r"B=5 .* m=2"):
    blocks.pack_samples(jnp.zeros((5, 2)), 2)
  with pytest.raises(ValueError, match="pack must be >= 1"):
    blocks.pack_samples(jnp.zeros((4, 2)), 0)


def test_packed_discriminator_returns_one_logit_per_pack():
  inner = mlp.Discriminator(hidden=(8,), dropout=0.0)
  packed = blocks.Packed(inner, pack=3)
  # Initialisation with a batch of 2 (as create_gan_state does) pads to one pack.
  variables = packed.init(jax.random.key(0), jnp.zeros((2, 2)), train=False)
  assert variables["params"]["discriminator"]["Dense_0"]["kernel"].shape == (6, 8)
  x = jax.random.normal(jax.random.key(1), (9, 2))
  logits = packed.apply(variables, x, train=True)
  assert logits.shape == (3,)
  inner_vars = {"params": variables["params"]["discriminator"]}
  expected = inner.apply(inner_vars, x.reshape(3, 6), train=True)
  np.testing.assert_allclose(logits, expected, rtol=1e-6)
  with pytest.raises(ValueError, match=r"B=8 .* m=3"):
    packed.apply(variables, x[:8], train=True)


def test_pack_is_validated_against_batch_size_and_devices():
  config = load_config("gaussian_mixture", "dataset=ring,method=pacgan2,runlocal")
  config.batch_size = 31
  with pytest.raises(ValueError, match=r"batch_size=31 .*model.pack=2"):
    train.validate_config(config)
  train.check_pack(2, 16, 8)
  with pytest.raises(ValueError, match=r"batch_size=12 .*model.pack=2.* 4 device"):
    train.check_pack(2, 12, 4)


# ----------------------------------------------------------------------------------------------
# Minibatch discrimination / minibatch stddev in the MLP discriminator.


@pytest.mark.parametrize(
    "minibatch, extra",
    [("none", 0), ("minibatch_discrimination", 16 * 3 * 2 + 3), ("mbstd", 1)],
)
def test_mlp_discriminator_minibatch_options(minibatch, extra):
  d = mlp.Discriminator(
      hidden=(16,),
      dropout=0.0,
      minibatch=minibatch,
      minibatch_kernels=3,
      minibatch_kernel_dim=2,
      mbstd_group_size=4,
  )
  x = jax.random.normal(jax.random.key(0), (8, 2))
  variables = d.init(jax.random.key(1), x[:2], train=False)
  base = mlp.Discriminator(hidden=(16,), dropout=0.0).init(jax.random.key(1), x, train=False)
  assert _count(variables) == _count(base) + extra
  logits = d.apply(variables, x, train=True)
  assert logits.shape == (8,) and np.all(np.isfinite(logits))
  if minibatch != "none":  # A batch feature: one example's logit depends on the others.
    other = d.apply(variables, x.at[1:].multiply(3.0), train=True)
    assert not np.allclose(logits[0], other[0])


def test_mlp_discriminator_invalid_minibatch_lists_the_choices():
  d = mlp.Discriminator(hidden=(4,), minibatch="minibatch_std")
  with pytest.raises(ValueError, match="none, minibatch_discrimination, mbstd"):
    d.init(jax.random.key(0), jnp.zeros((2, 2)), train=False)


# ----------------------------------------------------------------------------------------------
# configs/gaussian_mixture.py


@pytest.mark.parametrize("method", METHODS)
def test_gaussian_mixture_config_methods(method):
  config = load_config("gaussian_mixture", f"dataset=grid,method={method},runlocal")
  train.validate_config(config)
  full = load_config("gaussian_mixture", f"dataset=ring,method={method}")
  train.validate_config(full)
  assert full.eval_num_samples == 2500 and 0 < full.eval_every_steps < full.num_train_steps
  expected = {
      "pacgan2": ("model.pack", 2),
      "pacgan3": ("model.pack", 3),
      "pacgan4": ("model.pack", 4),
      "unrolled5": ("unrolled_steps", 5),
      "minibatch_discrimination": ("model.discriminator.minibatch", method),
      "mbstd": ("model.discriminator.minibatch", method),
      "wgan_gp": ("loss.name", "wgan_gp"),
  }
  if method in expected:
    key, value = expected[method]
    node = full
    for part in key.split("."):
      node = node[part]
    assert node == value
  if method == "wgan_gp":
    assert full.n_critic == 5
    assert full.optim.d.to_dict() == dict(
        name="adam", learning_rate=1e-3, b1=0.5, b2=0.9, schedule="linear"
    )
    assert full.optim.g.to_dict() == full.optim.d.to_dict()
  assert full.batch_size % full.model.pack == 0
  # The costlier methods train for fewer steps (every study run stays within 3 minutes).
  if method in ("unrolled5", "minibatch_discrimination", "wgan_gp"):
    assert full.num_train_steps < load_config("gaussian_mixture", "dataset=ring").num_train_steps
  step_fn = steps.make_train_step(full, train.get_objective(full))
  assert step_fn.keywords["unrolled_steps"] == full.unrolled_steps
  # The networks build and initialise (shapes only).
  networks = train.build_networks(config, (2,), 25)
  shapes = train.abstract_state(config, networks)
  assert _count(shapes.discriminator.params) > 0


def test_gaussian_mixture_default_method_is_gan():
  default = load_config("gaussian_mixture", "dataset=ring")
  gan = load_config("gaussian_mixture", "dataset=ring,method=gan")
  assert default.to_dict() == gan.to_dict()
  assert default.model.pack == 1 and default.unrolled_steps == 0
  assert default.loss.name == "non_saturating" and default.n_critic == 1
  assert default.batch_size == 100 and default.ema.decay == 0.999
  # The VEEGAN/PacGAN discriminator: maxout units of 5 pieces, N(0, 0.02^2) kernels.
  assert default.model.discriminator.maxout_pieces == 5
  assert default.model.discriminator.kernel_init_std == 0.02
  with pytest.raises(ValueError, match="gan, pacgan2, pacgan3, pacgan4, unrolled5"):
    load_config("gaussian_mixture", "method=veegan")


# ----------------------------------------------------------------------------------------------
# Packing and unrolling are parallel-mode independent.


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_packed_unrolled_step_on_8_devices_equals_1_device():
  shape, latent = (2,), 2
  generator = mlp.Generator(
      image_shape=shape, hidden=(8,), batch_norm=False, output_activation="linear"
  )
  discriminator = blocks.Packed(mlp.Discriminator(hidden=(8,), dropout=0.0), pack=2)
  images = np.random.RandomState(0).normal(size=(16, *shape)).astype(np.float32)

  def run(mode, num_devices):
    mesh = parallel.make_mesh(num_devices)
    init = functools.partial(
        state.create_gan_state,
        generator=generator,
        discriminator=discriminator,
        latent_dim=latent,
        element_shape=shape,
        generator_optimizer=optax.sgd(0.1),
        discriminator_optimizer=optax.sgd(0.1),
    )
    s = jax.jit(init, out_shardings=parallel.replicated(mesh))(jax.random.key(0))
    step = parallel.compile_step(
        functools.partial(
            steps.train_step,
            objective=losses.non_saturating,
            latent_dim=latent,
            unrolled_steps=2,
        ),
        mesh,
        mode,
    )
    batch = parallel.host_batch_to_global({"image": images}, mesh)
    for _ in range(2):
      s, metrics = step(s, batch, jax.random.key(1))
    return jax.device_get((s, metrics))

  one = run("global", 1)
  for mode in ("global", "shard_map"):
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(run(mode, 8)), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# PacGAN against the plain GAN on the ring (CI-sized; experiments/mode_collapse_2d is the study).


def _mean_modes_over_training(tmp_path, method: str, seed: int) -> float:
  """Mean of the modes captured at the 6 evaluations of a short, collapse-prone ring run."""
  config = load_config("gaussian_mixture", f"dataset=ring,method={method}")
  config.parallel.num_devices = 1
  config.seed = seed
  # Small networks, a high constant learning rate and no EMA: the plain GAN hops between a few
  # modes (Metz et al. 2017, Fig. 1), which is what packing is meant to prevent.
  config.model.generator.hidden = (128, 128)
  config.model.discriminator.hidden = (128, 128)
  config.model.discriminator.maxout_pieces = 1  # LeakyReLU units: 5x cheaper than maxout.
  config.model.discriminator.kernel_init_std = None
  config.batch_size = 256
  config.optim.g.learning_rate = config.optim.d.learning_rate = 1e-3
  config.optim.g.schedule = config.optim.d.schedule = "constant"
  config.ema.decay = 0.0
  config.num_train_steps = 1500
  config.log_every_steps = 1500
  config.eval_every_steps = 250
  config.sample_every_steps = config.checkpoint_every_steps = 0
  workdir = tmp_path / f"{method}_{seed}"
  train.train_and_evaluate(config, str(workdir))
  with open(workdir / "metrics.jsonl") as f:
    evaluations = [r for r in map(json.loads, f) if "modes" in r]
  assert [r["step"] for r in evaluations] == list(range(250, 1501, 250))
  return float(np.mean([r["modes"] for r in evaluations]))


@pytest.mark.slow
def test_pacgan_covers_more_modes_than_gan_over_seeds(tmp_path):
  """A claim about training outcomes, so over several seeds and outside the default suite: one
  trajectory is sent elsewhere by the last-bit differences between CPUs (AVX2 vs AVX-512). The
  5-seed study with the paper's protocol is experiments/mode_collapse_2d (ring: GAN 6.2, PacGAN2
  8.0 modes)."""
  seeds = (0, 1, 2)
  gan = [_mean_modes_over_training(tmp_path, "gan", seed) for seed in seeds]
  pacgan = [_mean_modes_over_training(tmp_path, "pacgan4", seed) for seed in seeds]
  # Measured (mean modes over the 6 evaluations, seeds 0-2): see the README's test section.
  assert np.mean(pacgan) > np.mean(gan) + 0.5, (gan, pacgan)


@pytest.mark.parametrize("eps_root, finite", [(None, True), (0.0, False)])
def test_unrolled_step_through_maxout_d_has_finite_generator_gradients(eps_root, finite):
  """unrolled5 with the maxout D: G differentiates through D's Adam updates.

  A maxout piece that no input selects has an exactly zero gradient, where d sqrt(v) / dv is
  infinite; the config's ``optim.d.eps_root`` keeps the generator's gradient finite (with 0 it is
  NaN, which is what the study's first unrolled run hit).
  """
  config = load_config("gaussian_mixture", "dataset=ring,method=unrolled5,runlocal")
  config.parallel.num_devices = 1
  assert config.optim.d.eps_root > 0
  if eps_root is not None:
    config.optim.d.eps_root = eps_root
  mesh = parallel.make_mesh(1)
  networks = train.build_networks(config, (2,), None)
  s = train.create_state(config, networks, mesh)
  step = parallel.compile_step(
      steps.make_train_step(config, train.get_objective(config)), mesh, config.parallel.mode
  )
  rng = np.random.default_rng(0)
  real = rng.normal(size=(config.batch_size, 2)).astype(np.float32)
  _, metrics = step(s, parallel.host_batch_to_global({"image": real}, mesh), jax.random.key(0))
  assert bool(np.isfinite(float(metrics["g_grad_norm"]))) == finite
