"""ganjax.systems.lapgan end to end on tiny settings: outputs, resume, sampling, evaluation."""

import glob
import hashlib
import json
import os
import shutil

import flax
import jax
import load_contract
import numpy as np
import pytest
from conftest import load_config

from ganjax import checkpoint, systems
from ganjax.evaluation import domain_classifier as classifier
from ganjax.systems import lapgan as lapgan_system

# A random-weight classifier has dead ReLU features: singular covariances are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::ganjax.metrics.RankDeficientWarning")


def _tiny(arg="runlocal", **overrides):
  config = load_config("lapgan", arg)
  config.parallel.num_devices = 1
  # XLA's own convolutions compile several times faster than the CPU fast path (same parameters
  # and outputs; ganjax.models.layers), which dominates these tiny runs.
  config.model.level.generator.conv_impl = "xla"
  config.model.level.discriminator.conv_impl = "xla"
  config.update_from_flattened_dict(overrides)  # Dotted keys: {"model.name": ...}.
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The runlocal config trained uninterrupted (6 steps): (config, workdir, final state)."""
  config = _tiny()
  workdir = str(tmp_path_factory.mktemp("lapgan") / "run")
  state = lapgan_system.train_and_evaluate(config, workdir)
  return config, workdir, state


def test_config_selects_the_system():
  config = load_config("lapgan")
  assert config.task == "lapgan" and systems.get_system("lapgan") is lapgan_system
  assert config.data.name == "embedded_mnist" and config.num_train_steps == 3500
  assert load_config("lapgan", "dataset=cifar10_folder").data.name == "folder"
  with pytest.raises(ValueError, match="Unknown dataset 'svhn'; valid: mnist, mnist_idx"):
    load_config("lapgan", "dataset=svhn")


def test_runlocal_trains_and_writes_every_output(trained):
  config, workdir, state = trained
  assert sorted(state) == ["level_0", "level_1", "level_2"]
  assert all(int(s.step) == config.num_train_steps for s in state.values())
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["task"] == "lapgan"
  with open(os.path.join(workdir, "run_info.json")) as f:
    info = json.load(f)
  assert info["data"]["element_shape"] == [28, 28, 1]
  assert info["pyramid"]["shapes"] == [[28, 28, 1], [14, 14, 1], [7, 7, 1]]
  assert info["pyramid"]["latent_size"] == 8 + 14 * 14 + 28 * 28
  assert set(info["parameters"]) == {"level_0", "level_1", "level_2"}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [json.loads(line) for line in f]
  assert [r["step"] for r in lines] == [2, 4, 6]
  for k in range(3):
    assert {f"level_{k}/d_loss", f"level_{k}/g_loss", f"level_{k}/d_real"} <= set(lines[-1])
  assert "steps_per_sec" in lines[-1]
  for name in ("real.png", "step_000003.png", "step_000006.png"):
    assert os.path.exists(os.path.join(workdir, "samples", name))
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  assert ckpt.latest_step() == config.num_train_steps
  ckpt.close()


def test_resume_gives_the_uninterrupted_result(trained, tmp_path):
  config, trained_workdir, uninterrupted = trained
  # The uninterrupted run also saved step 3 (checkpoint_every_steps): drop the later one, as if
  # the run had been killed after step 3, and resume.
  workdir = str(tmp_path / "resumed")
  shutil.copytree(trained_workdir, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "6"))
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 3
  resumed = lapgan_system.train_and_evaluate(config, workdir)
  for a, b in zip(_leaves(uninterrupted), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)


def test_sample_from_workdir(trained, tmp_path):
  _, workdir, _ = trained
  output = str(tmp_path / "grid.png")
  # The run's sample count (runlocal: 8): the generator compiled for training is reused.
  samples = lapgan_system.sample_from_workdir(workdir, 8, output)
  assert samples.shape == (8, 28, 28, 1) and np.abs(samples).max() <= 1.0
  for path in (output, str(tmp_path / "grid_final.png"), str(tmp_path / "grid.npz")):
    assert os.path.exists(path)
  with np.load(str(tmp_path / "grid.npz")) as npz:
    assert npz["level_2"].shape == (8, 7, 7, 1) and npz["level_0"].shape == (8, 28, 28, 1)
    np.testing.assert_array_equal(npz["samples"], samples)
  # The same latents give the same samples.
  again = lapgan_system.sample_from_workdir(workdir, 8, str(tmp_path / "again.png"))
  np.testing.assert_array_equal(samples, again)


def test_python_api_loads_and_samples_like_the_command_line(trained, tmp_path):
  _, workdir, _ = trained
  load_contract.check_sample(workdir, tmp_path, "lapgan", (28, 28, 1))
  load_contract.check_refusals(workdir, "lapgan")


def _classifier_workdir(path):
  """A classifier with random weights, saved as its training saves one."""
  params = jax.device_get(classifier.init_params(jax.random.key(0)))
  params_bytes = flax.serialization.to_bytes(params)
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, classifier.PARAMS_FILE), "wb") as f:
    f.write(params_bytes)
  with open(os.path.join(path, classifier.EVAL_FILE), "w") as f:
    json.dump(
      {
        "test_accuracy": 0.1,
        "params_file": classifier.PARAMS_FILE,
        "params_sha256": hashlib.sha256(params_bytes).hexdigest(),
        "model": {"num_classes": classifier.NUM_CLASSES},
      },
      f,
    )
  return path


def test_evaluate_workdir_scores_the_chained_pyramid(trained, tmp_path):
  _, workdir, _ = trained
  overrides = {
    "eval_classifier_workdir": _classifier_workdir(str(tmp_path / "classifier")),
    "eval_num_real": 200,
    "eval_batch_size": 50,
    "eval_reference_dir": str(tmp_path / "reference"),
  }
  result = lapgan_system.evaluate_workdir(
    workdir, metrics="classifier_fid,is", num_samples=120, config_overrides=overrides
  )
  assert result["path"] == os.path.join(workdir, "eval", "step_000006.json")
  with open(result["path"]) as f:
    written = json.load(f)
  assert set(written["values"]) == {"classifier_fid", "is", "is_std"}
  assert np.isfinite(written["values"]["classifier_fid"])
  protocol = written["protocol"]
  assert protocol["system"] == "lapgan" and protocol["step"] == 6
  assert protocol["num_generated"] == 120 and protocol["generator"] == "ema"
  assert protocol["reference"]["dataset"] == "embedded_mnist"
  assert written["workdir"] == os.path.abspath(workdir)


def test_conditional_trains_and_samples_one_class_per_block(tmp_path):
  # One band-pass level (28 -> 14) and one step: the conditional paths, at half the compile cost.
  config = _tiny("conditional,runlocal", num_train_steps=1, **{"model.num_levels": 1})
  workdir = str(tmp_path / "run")
  state = lapgan_system.train_and_evaluate(config, workdir)
  assert sorted(state) == ["level_0", "level_1"]
  # One-hot label planes: level 0's generator sees C + 1 + 10 channels.
  assert state["level_0"].generator.params["Conv_0"]["kernel"].shape[2] == 12
  samples = lapgan_system.sample_from_workdir(workdir, 20, str(tmp_path / "grid.png"))
  assert samples.shape == (20, 28, 28, 1)
  with np.load(str(tmp_path / "grid.npz")) as npz:
    np.testing.assert_array_equal(npz["labels"], np.repeat(np.arange(10), 2))


def test_bad_settings_fail_clearly(tmp_path):
  with pytest.raises(ValueError, match="28x28 image does not halve evenly 3 times"):
    lapgan_system.train_and_evaluate(_tiny(**{"model.num_levels": 3}), str(tmp_path / "a"))
  with pytest.raises(ValueError, match="num_levels must be an integer >= 1, got 0"):
    lapgan_system.train_and_evaluate(_tiny(**{"model.num_levels": 0}), str(tmp_path / "b"))
  with pytest.raises(ValueError, match="Unknown parallel.mode 'pmap'"):
    lapgan_system.train_and_evaluate(_tiny(**{"parallel.mode": "pmap"}), str(tmp_path / "c"))
