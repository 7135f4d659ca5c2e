"""The SRGAN system end to end: training, resume, upscale, evaluation and the clear errors.

Cost (CI runs on 2 CPU cores): one tiny run (2 SRResNet + 2 SRGAN steps, 32 px HR crops at x4,
1 residual block, 8 features, D width 4, 2 devices) is trained once per module and shared; it
compiles the two steps. The resume test reuses those compilations (and checks that it does), and
the upscale / tile tests use image sizes that share the generator's compilations.
"""

import json
import os
from typing import NamedTuple

import jax
import numpy as np
import pytest
from PIL import Image

from ganjax import systems
from ganjax.systems import srgan
from tests.conftest import load_config

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


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Trained:
  workdir = str(tmp_path_factory.mktemp("srgan"))
  state = srgan.train_and_evaluate(_tiny_config(), workdir)
  return Trained(workdir, state)


@pytest.fixture(scope="module")
def trained(trained_run) -> str:
  return trained_run.workdir


def _step_compilations():
  return srgan.pretrain_step._cache_size(), srgan.adversarial_step._cache_size()


def test_dispatch():
  assert systems.get_system("srgan") is srgan


def test_trains_both_phases_end_to_end(trained):
  with open(os.path.join(trained, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert {r["phase"] for r in records} == {"srresnet", "srgan"}
  evals = [r for r in records if "psnr" in r]
  assert [r["step"] for r in evals] == [2, 4]  # end of pre-training and end of the run
  for key in ("psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "sharpness", "bicubic_sharpness"):
    assert np.isfinite(evals[-1][key])
  assert any("d_loss" in r for r in records)
  assert os.path.exists(os.path.join(trained, "samples", "step_000004.png"))
  with open(os.path.join(trained, "eval", "step_000004.json")) as f:
    assert "protocol" in json.load(f)
  assert systems.workdir_task(trained) == "srgan"


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
