"""The SRGAN system end to end: training, resume, both parallel modes, upscale, evaluation and
the clear errors.

Cost (CI runs on 2 CPU cores): one tiny run (2 SRResNet + 2 SRGAN steps, 32 px HR crops at x4,
1 residual block, 8 features, D width 4, 2 devices) is trained once per module and shared; it
compiles the two steps. The resume and parallel-mode tests reuse those compilations (the former
checks that it does; the latter adds the shard_map pair), and the upscale / tile tests use image
sizes that share the generator's compilations.
"""

import dataclasses
import json
import os
from typing import NamedTuple

import jax
import numpy as np
import pytest
import tolerances
from PIL import Image

import ganjax
from ganjax import checkpoint, errors, parallel, systems
from ganjax.data import super_resolution as sr_data
from ganjax.systems import srgan
from tests.conftest import load_config
from tests.load_contract import check_refusals

# 2 x 3 tiles of 11 LR pixels with the default margin (the receptive radius, 10 here): tiles of
# 21x21 and 21x31 pixels with context (the middle column has context on both sides), so only two
# tile shapes (compilations) besides the whole image.
TILE_TEST_SIZE = (22, 33)


def _tiny_config(**overrides):
  config = load_config("srgan", "runlocal")  # 2 + 2 steps, 32 px crops at x4, tiny networks.
  # Two of the 8 simulated devices: the batch is still sharded, at a fraction of the compile time.
  config.parallel.num_devices = 2
  config.update_from_flattened_dict(overrides)  # Dotted keys: {"model.name": ...}.
  return config


class Trained(NamedTuple):
  workdir: str
  state: srgan.SRGANState  # the final state of the uninterrupted run


# The shared run: no checkpoint, log or evaluation cadence hits the end of pre-training (step 2),
# so what happens there is the phase end's doing; the best PSNR is kept.
TRAINED_OVERRIDES = {"checkpoint_every_steps": 0, "log_every_steps": 3, "eval_best_metric": "psnr"}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Trained:
  workdir = str(tmp_path_factory.mktemp("srgan"))
  state = srgan.train_and_evaluate(_tiny_config(**TRAINED_OVERRIDES), workdir)
  return Trained(workdir, state)


@pytest.fixture(scope="module")
def trained(trained_run) -> str:
  return trained_run.workdir


def _compiled_steps(config):
  """The run's step pair (memoized: the same functions ``train_and_evaluate`` uses)."""
  generator, discriminator = srgan.build_networks(config)
  loss = srgan.LossSettings.from_config(config)
  mesh = parallel.make_mesh(config.parallel.num_devices)
  return srgan.compiled_steps(generator, discriminator, loss, mesh, config.parallel.mode)


def _step_compilations():
  return tuple(step._cache_size() for step in _compiled_steps(_tiny_config()))


def test_dispatch():
  assert systems.get_system("srgan") is srgan


def test_trains_both_phases_end_to_end(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert all(r["phase"] == srgan.phase(_tiny_config(), r["step"]) for r in records)
  assert {r["phase"] for r in records} == {"srresnet", "srgan"}
  # Logs at 3 (log_every_steps) and 4 (the end), and at 2, where the pre-training ends.
  logs = [r for r in records if "content_loss" in r]
  assert [(r["step"], r["phase"]) for r in logs] == [(2, "srresnet"), (3, "srgan"), (4, "srgan")]
  assert all(r["images_per_sec"] > 0 for r in logs)
  evals = [r for r in records if "psnr" in r]
  assert [r["step"] for r in evals] == [2, 4]  # end of pre-training and end of the run
  for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "sharpness", "bicubic_sharpness"):
    assert np.isfinite(evals[-1][key])
  assert any("d_loss" in r for r in records)
  assert os.path.exists(os.path.join(trained, "samples", "step_000004.png"))
  with open(os.path.join(trained, "eval", "step_000004.json")) as f:
    assert "protocol" in json.load(f)
  assert systems.workdir_task(trained) == "srgan"


def test_python_api_upscales_like_the_command_line(trained):
  run = ganjax.load(trained)
  image = np.random.default_rng(0).integers(0, 256, (10, 13, 3), dtype=np.uint8)
  upscaled = run.upscale(image)
  scale = run.config.scale
  assert upscaled.shape == (10 * scale, 13 * scale, 3) and upscaled.dtype == np.uint8
  config, state, _ = srgan.load_trained(trained)
  np.testing.assert_array_equal(upscaled, srgan.upscale_array(config, state.generator, image))
  with pytest.raises(errors.ConfigError, match="uint8 RGB image"):
    run.upscale(image.astype(np.float32))
  check_refusals(trained, "srgan")


def test_phase_end_checkpoint_and_best_psnr(trained):
  """checkpoint_every_steps=0: only the end of pre-training (2) and of the run (4) are saved."""
  ckpt = checkpoint.Checkpointer(os.path.join(trained, "checkpoints"), async_save=False)
  try:
    assert ckpt.all_steps() == [2, 4]
  finally:
    ckpt.close()
  best = checkpoint.read_best(trained)
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    psnr = {r["step"]: r["psnr"] for r in map(json.loads, f) if "psnr" in r}
  assert best == {"metric": "psnr", "value": max(psnr.values()), "step": max(psnr, key=psnr.get)}
  _, state, step = srgan.load_trained(trained, "best")
  assert step == best["step"] and int(state.step) == step
  result = srgan.evaluate_workdir(trained, step="best")
  assert result["step"] == best["step"]
  assert result["phase"] == srgan.phase(_tiny_config(), best["step"])
  assert result["values"]["psnr"] == best["value"]  # The same generator on the same parameters.


def test_resume_equals_uninterrupted_without_recompiling(trained_run, tmp_path):
  config = _tiny_config()
  assert (config.srgan.pretrain_steps, config.num_train_steps) == (2, 4)
  compiled = _step_compilations()
  # Stop at the end of pre-training, then resume into the adversarial phase.
  srgan.train_and_evaluate(_tiny_config(num_train_steps=2), str(tmp_path))
  resumed = srgan.train_and_evaluate(config, str(tmp_path))
  assert int(resumed.step) == 4
  straight = trained_run.state
  for a, b in (
    (straight.generator, resumed.generator),
    (straight.discriminator, resumed.discriminator),
  ):
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)
    jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
  # Two more runs with an equal config (one of them resumed from a checkpoint) reuse the steps
  # compiled by the first: the states carry no per-run static values (such as a bound
  # module.apply, which compares by identity).
  assert _step_compilations() == compiled


def _duplicated_halves(create_pair_source):
  """The pair source, with every host batch made of its first half twice: each of 2 devices then
  normalises the same rows, so shard_map's per-device BatchNorm statistics equal the global ones."""

  def create(*args, **kwargs):
    source = create_pair_source(*args, **kwargs)

    def batches(start_step):
      for batch in source.batches(start_step):
        half = len(batch["hr"]) // 2
        yield {k: np.concatenate([v[:half], v[:half]]) for k, v in batch.items()}

    return dataclasses.replace(source, batches=batches)

  return create


def test_shard_map_and_global_modes_train_alike(tmp_path, monkeypatch):
  """Both parallel modes through loop.run on 2 devices, on batches whose halves are equal: there
  the modes compute the same function (elsewhere per-device BatchNorm, the pmap semantics, makes
  shard_map another one), so only round-off separates their states."""
  monkeypatch.setattr(sr_data, "create_pair_source", _duplicated_halves(sr_data.create_pair_source))
  states = {}
  for mode in parallel.MODES:
    config = _tiny_config(**{"parallel.mode": mode})
    states[mode] = srgan.train_and_evaluate(config, str(tmp_path / mode))
  with open(tmp_path / "shard_map" / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert {r["phase"] for r in records} == {"srresnet", "srgan"}
  assert all(r["images_per_sec"] > 0 for r in records if "content_loss" in r)
  # Adam amplifies the round-off of the reductions (over the batch and every HR pixel, for
  # convolutions and BatchNorm; D sees a real and a fake batch) in entries with near-zero gradients.
  pixels = config.batch_size * config.data.crop_size**2
  g, d = config.optim.g, config.optim.d
  adversarial_steps = config.num_train_steps - config.srgan.pretrain_steps
  g_lr = max(g.learning_rate, g.gan_learning_rate)
  _assert_adam_close(states, "generator", config.num_train_steps, g, g_lr, pixels)
  _assert_adam_close(states, "discriminator", adversarial_steps, d, d.learning_rate, 2 * pixels)


def _assert_adam_close(states, network, steps, optim, learning_rate, reduction):
  """The shard_map run's ``network`` params against the global run's after ``steps`` updates."""
  desired = getattr(states["global"], network).params
  tolerances.assert_adam_trajectories_close(
    getattr(states["shard_map"], network).params,
    desired,
    steps=steps,
    learning_rate=learning_rate,
    b1=optim.b1,
    b2=optim.b2,
    length=tolerances.gradient_length(desired, reduction),
    err_msg=network,
  )


def test_shard_map_averages_over_the_devices():
  """Swapping the devices' halves of a batch changes nothing, bit for bit: gradients, BatchNorm
  statistics and metrics are averaged over both devices (a sum of two terms commutes), where
  device 0's values alone would differ."""
  config = _tiny_config(**{"parallel.mode": "shard_map"})
  mesh = parallel.make_mesh(config.parallel.num_devices)
  source = sr_data.create_pair_source(
    config.data, scale=config.scale, seed=config.seed, batch_size=config.batch_size
  )
  batch = next(source.batches(0))
  half = config.batch_size // 2
  swapped = {k: np.concatenate([v[half:], v[:half]]) for k, v in batch.items()}
  results = []
  for host_batch in (batch, swapped):
    state = srgan.create_state(config, mesh)
    for step in _compiled_steps(config):  # One SRResNet, then one SRGAN update.
      state, metrics = step(state, parallel.host_batch_to_global(host_batch, mesh), {})
    results.append(jax.device_get((state, metrics)))
  tolerances.assert_bitwise_equal(*results)


def test_upscale_writes_both_pngs(trained, tmp_path):
  rng = np.random.default_rng(0)
  source = tmp_path / "photo.jpg"
  h, w = TILE_TEST_SIZE  # Non-square; the whole-image pass shares test_tiles_have_no_seams's.
  Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(source)
  out = tmp_path / "out" / "photo_x4.png"
  paths = srgan.upscale_file(trained, str(source), str(out))
  with Image.open(out) as image:
    assert image.size == (w * 4, h * 4)
  with Image.open(paths["compare"]) as image:
    assert image.size == (2 * w * 4 + 4, h * 4)
  assert paths["compare"].endswith("photo_x4_compare.png")


def test_tiles_have_no_seams(trained):
  config, state, _ = srgan.load_trained(trained)
  assert srgan.receptive_radius(config) == 10
  image = np.random.default_rng(1).integers(0, 256, (*TILE_TEST_SIZE, 3), dtype=np.uint8)
  tiled = srgan.upscale_array(config, state.generator, image, tile=11)
  whole = srgan.upscale_array(config, state.generator, image, tile=64)
  assert np.abs(tiled.astype(int) - whole.astype(int)).max() <= 1  # float rounding only


def test_upscale_bad_inputs(trained, tmp_path):
  missing = tmp_path / "nope.png"
  with pytest.raises(FileNotFoundError, match="nope.png"):
    srgan.upscale_file(trained, str(missing), str(tmp_path / "o.png"))
  text = tmp_path / "notes.png"
  text.write_text("not an image")
  with pytest.raises(ValueError, match="notes.png"):
    srgan.upscale_file(trained, str(text), str(tmp_path / "o.png"))
  good = tmp_path / "ok.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
  with pytest.raises(ValueError, match=r"trained for x4; x2 was requested"):
    srgan.upscale_file(trained, str(good), str(tmp_path / "o.png"), scale=2)


def test_evaluate_workdir(trained):
  result = srgan.evaluate_workdir(trained)
  assert result["path"].endswith("step_000004.json")
  assert {"psnr", "ssim", "bicubic_psnr", "bicubic_ssim"} <= set(result["values"])


def test_config_errors(tmp_path):
  with pytest.raises(ValueError, match=r"scale 3.*valid choices: 2, 4"):
    srgan.validate_config(_tiny_config(scale=3))
  with pytest.raises(ValueError, match="not divisible by the scale 4"):
    srgan.validate_config(_tiny_config(**{"data.crop_size": 50}))
  missing = str(tmp_path / "vgg19.npz")
  with pytest.raises(FileNotFoundError, match=r"vgg19.npz.*convB_I/kernel"):
    srgan.validate_config(_tiny_config(**{"srgan.content_features_path": missing}))


def test_feature_content_loss_with_a_user_file(tmp_path):
  rng = np.random.default_rng(0)
  arrays, cin = {}, 3
  for name, cout in (("conv1_1", 4), ("conv1_2", 4), ("conv2_1", 5), ("conv2_2", 5)):
    arrays[f"{name}/kernel"] = rng.normal(size=(3, 3, cin, cout)).astype(np.float32)
    arrays[f"{name}/bias"] = np.zeros(cout, np.float32)
    cin = cout
  path = str(tmp_path / "vgg.npz")
  np.savez(path, **arrays)
  config = _tiny_config(**{"srgan.content_features_path": path, "srgan.content_layer": "conv2_2"})
  params = srgan.load_content_features(config)
  x = jax.random.uniform(jax.random.key(0), (2, 16, 16, 3), minval=-1, maxval=1)
  assert srgan.vgg19_features(params, x).shape == (2, 8, 8, 5)
  loss = srgan.LossSettings.from_config(config)
  assert float(srgan.content_loss(loss, params, x, x)) == 0.0
  assert float(srgan.content_loss(loss, params, x, -x)) > 0.0
  with pytest.raises(ValueError, match="conv3_1"):
    srgan.load_vgg19(path, "conv3_1")
