"""train_and_evaluate end to end on tiny settings: outputs, exact resume, failures."""

import glob
import json
import os

import jax
import load_contract
import numpy as np
import pytest
from conftest import load_config

from ganjax import checkpoint
from ganjax.systems import gan


def _tiny(name, arg="runlocal", **overrides):
  config = load_config(name, arg)
  config.parallel.num_devices = 1
  config.update_from_flattened_dict(overrides)  # Dotted keys: {"model.name": ...}.
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.mark.parametrize(
  "name, arg",
  [
    ("dcgan", "runlocal"),
    ("vanilla_gan", "runlocal"),
    ("gaussian_mixture", "dataset=ring,runlocal"),
    ("gaussian_mixture", "dataset=grid,runlocal"),
  ],
)
def test_train_writes_every_output(tmp_path, name, arg):
  config = _tiny(name, arg)
  workdir = str(tmp_path / "run")
  state = gan.train_and_evaluate(config, workdir)
  assert int(state.step) == config.num_train_steps
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["name"] == config.model.name
  with open(os.path.join(workdir, "run_info.json")) as f:
    info = json.load(f)
  assert info["data"]["name"] and info["data"]["element_shape"]
  assert info["devices"]["count"] == 1 and "jax" in info["versions"]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  lines = [r for r in records if "d_loss" in r]  # Training scalars; evaluations have own lines.
  assert [r["step"] for r in lines] == list(
    range(config.log_every_steps, config.num_train_steps + 1, config.log_every_steps)
  )
  assert {"d_loss", "g_loss", "d_real", "d_fake", "steps_per_sec", "wall_time"} <= set(lines[-1])
  evaluations = [r for r in records if "modes" in r]
  if config.data.name in ("ring", "grid"):  # Mode coverage every eval_every_steps and at the end.
    assert [r["step"] for r in evaluations] == list(
      range(config.eval_every_steps, config.num_train_steps + 1, config.eval_every_steps)
    )
  else:
    assert not evaluations
  assert os.path.exists(os.path.join(workdir, "samples", f"step_{config.num_train_steps:06d}.png"))
  assert os.path.exists(os.path.join(workdir, "samples", "real.png"))
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == config.num_train_steps


def test_pacgan_on_ring_writes_mode_coverage(tmp_path):
  config = _tiny("gaussian_mixture", "dataset=ring,method=pacgan2,runlocal", num_train_steps=4)
  config.eval_every_steps = 2
  config.eval_num_samples = 500
  workdir = str(tmp_path / "run")
  state = gan.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  # PacGAN's D takes packs of 2 points: its first layer sees 4 inputs.
  assert state.discriminator.params["discriminator"]["Dense_0"]["kernel"].shape[0] == 4
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evaluations = [r for r in map(json.loads, f) if "modes" in r]
  assert [r["step"] for r in evaluations] == [2, 4]
  for r in evaluations:
    assert {"wall_time", "modes", "hq_fraction", "reverse_kl"} <= set(r)
    assert 0 <= r["modes"] <= 8 and 0.0 <= r["hq_fraction"] <= 1.0
    assert r["reverse_kl"] >= 0.0  # +inf (written as Infinity) when no sample is HQ.


def test_evaluate_modes_uses_fixed_latents_and_the_mixture():
  config = _tiny("gaussian_mixture", "dataset=ring,runlocal")
  modes = gan.gaussian_mixture.mixture_modes("ring")

  def generate(params, batch_stats, z, labels=None):  # Puts sample i on mode i mod 8.
    del params, batch_stats, labels
    return modes[np.arange(len(z)) % len(modes)]

  z = gan.eval_latents(config)
  assert z.shape == (2500, config.model.latent_dim)
  np.testing.assert_array_equal(z, gan.eval_latents(config))
  result = gan.evaluate_modes(generate, None, None, z[:16], "ring")
  assert result == {"modes": 8, "hq_fraction": 1.0, "reverse_kl": 0.0}


def test_resume_is_bit_identical(tmp_path):
  full = _tiny("dcgan", num_train_steps=6, checkpoint_every_steps=3)
  uninterrupted = gan.train_and_evaluate(full, str(tmp_path / "a"))
  # An interrupted run: stops after the checkpoint at step 3, then the same command again.
  interrupted = str(tmp_path / "b")
  gan.train_and_evaluate(_tiny("dcgan", num_train_steps=3, checkpoint_every_steps=3), interrupted)
  resumed = gan.train_and_evaluate(full, interrupted)
  for a, b in zip(_leaves(uninterrupted), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  with open(os.path.join(interrupted, "run_info.json")) as f:
    assert json.load(f)["resumed_from_step"] == 3


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / "run")
  gan.train_and_evaluate(_tiny("vanilla_gan", num_train_steps=3), workdir)
  exploding = _tiny("vanilla_gan", num_train_steps=12)
  exploding.optim.d.learning_rate = 1e30  # Same optimizer structure, so the checkpoint restores.
  exploding.resume.allow_config_changes = True  # A guarded change (ganjax.workdir).
  with pytest.raises(gan.NonFiniteLossError, match=r"at step \d+"):
    gan.train_and_evaluate(exploding, workdir)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == 3
  config = _tiny("vanilla_gan")
  networks = gan.build_networks(config, (28, 28, 1), 10)
  state, position = ckpt.restore(3, gan.abstract_state(config, networks))
  assert position["step"] == 3
  assert all(np.all(np.isfinite(x)) for x in _leaves(state))


def test_checkpoint_shape_mismatch_names_the_arrays(tmp_path):
  workdir = str(tmp_path / "run")
  gan.train_and_evaluate(_tiny("vanilla_gan", num_train_steps=3), workdir)
  wider = _tiny(
    "vanilla_gan",
    num_train_steps=6,
    **{"model.generator.hidden": (48, 32), "resume.allow_config_changes": True},
  )
  expected = r"generator/params/Dense_0/kernel: checkpoint \(64, 32\), config \(64, 48\)"
  with pytest.raises(checkpoint.CheckpointMismatchError, match=expected):
    gan.train_and_evaluate(wider, workdir)


def test_sample_mode_writes_grid_and_npz(tmp_path):
  workdir = str(tmp_path / "run")
  config = _tiny("dcgan", **{"ema.decay": 0.9})
  # XLA's own convolutions (same parameters and results, several times faster to compile; the
  # default fast path trains in test_train_writes_every_output).
  config.model.generator.conv_impl = config.model.discriminator.conv_impl = "xla"
  gan.train_and_evaluate(config, workdir)
  output = str(tmp_path / "grid.png")
  samples = gan.sample_from_workdir(workdir, 10, output)
  assert samples.shape == (10, 28, 28, 1)
  assert samples.min() >= -1 and samples.max() <= 1
  data = np.load(str(tmp_path / "grid.npz"))
  np.testing.assert_array_equal(data["samples"], samples)
  assert bool(data["ema"])
  from PIL import Image

  assert Image.open(output).size[0] > 28
  load_contract.check_sample(workdir, tmp_path, "gan", (28, 28, 1))
  load_contract.check_refusals(workdir, "gan")


@pytest.mark.parametrize(
  "override, message",
  [
    ({"data.name": "no_such_data"}, "no_such_data"),
    ({"model.name": "no_such_model"}, "no_such_model"),
    ({"loss.name": "no_such_loss"}, "no_such_loss"),
    ({"parallel.mode": "pmap"}, "global, shard_map"),
    ({"batch_size": 0}, "batch_size"),
  ],
)
def test_bad_config_values_fail_with_the_choices(tmp_path, override, message):
  with pytest.raises(ValueError, match=message):
    gan.train_and_evaluate(_tiny("dcgan", **override), str(tmp_path / "run"))


def test_progress_line_shows_probabilities_or_critic_outputs():
  bce = {"d_real": 0.75, "d_fake": 0.25}
  assert gan._discriminator_outputs(bce) == "D(x) 0.750 D(G(z)) 0.250"
  hinge = {"d_real_logit": 1.5, "d_fake_logit": -0.5}  # WGAN / hinge / LSGAN report no sigmoid.
  assert gan._discriminator_outputs(hinge) == "C(x) 1.500 C(G(z)) -0.500"


@pytest.mark.parametrize("metric, pick", [("hq_fraction", max), ("modes", max)])
def test_best_checkpoint_follows_the_chosen_metric(tmp_path, metric, pick):
  config = _tiny("gaussian_mixture", "dataset=ring,runlocal")
  config.num_train_steps = 8
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 4
  config.eval_best_metric = metric
  workdir = str(tmp_path / "run")
  gan.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evaluations = [r for r in map(json.loads, f) if "modes" in r]
  values = [r[metric] for r in evaluations if np.isfinite(r[metric])]
  best = checkpoint.read_best(workdir)
  assert best["metric"] == metric and best["value"] == pick(values)
  # The first evaluation reaching the best value is kept; its checkpoint is the only one there.
  first = next(r["step"] for r in evaluations if r[metric] == best["value"])
  assert best["step"] == first
  best_dir = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints_best"), async_save=False)
  assert best_dir.all_steps() == [first]
  best_dir.close()


def test_best_checkpoint_direction_and_non_finite_values(tmp_path):
  fid = checkpoint.BestCheckpoint(str(tmp_path / "a"), "fid")
  assert fid.is_better(50.0) and not fid.is_better(float("nan"))
  fid.record = {"metric": "fid", "value": 50.0, "step": 1}
  assert fid.is_better(49.9) and not fid.is_better(50.0) and not fid.is_better(60.0)
  precision = checkpoint.BestCheckpoint(str(tmp_path / "b"), "precision")
  precision.record = {"metric": "precision", "value": 0.5, "step": 1}
  assert precision.is_better(0.6) and not precision.is_better(0.4)
  with pytest.raises(KeyError, match="eval_best_metric='fid' is not among"):
    fid.update(2, {"kid": 1.0}, None, {})
  fid.close()
  precision.close()
