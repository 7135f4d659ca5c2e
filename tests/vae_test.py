"""The VAE system end to end on tiny settings: outputs, evaluation, sampling, exact resume."""

import functools
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
import tolerances
from conftest import load_config
from PIL import Image

from ganjax import checkpoint, parallel, systems
from ganjax.evaluation import domain_classifier as classifier
from ganjax.systems import vae as vae_system

# A random-weight classifier has dead ReLU features: singular covariances are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::ganjax.metrics.RankDeficientWarning")


def _tiny(arg="runlocal", **overrides):
  config = load_config("vae", arg)
  config.parallel.num_devices = 1
  # XLA's own convolutions compile faster; parameters and results do not depend on conv_impl.
  config.model.encoder.conv_impl = config.model.decoder.conv_impl = "xla"
  config.update_from_flattened_dict(overrides)  # Dotted keys: {"model.name": ...}.
  return config


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory):
  """A classifier with random weights, saved as its training saves one."""
  workdir = str(tmp_path_factory.mktemp("classifier"))
  params_bytes = flax.serialization.to_bytes(
    jax.device_get(classifier.init_params(jax.random.key(0)))
  )
  with open(os.path.join(workdir, classifier.PARAMS_FILE), "wb") as f:
    f.write(params_bytes)
  with open(os.path.join(workdir, classifier.EVAL_FILE), "w") as f:
    json.dump(
      {
        "test_accuracy": 0.1,
        "params_file": classifier.PARAMS_FILE,
        "params_sha256": hashlib.sha256(params_bytes).hexdigest(),
        "model": {"num_classes": classifier.NUM_CLASSES},
      },
      f,
    )
  return workdir


def test_runlocal_trains_evaluates_samples_and_resumes_exactly(tmp_path, classifier_workdir):
  config = _tiny(**{"loss.beta": 2.0})
  config.eval_classifier_workdir = classifier_workdir
  config.eval_metrics = ("classifier_fid", "precision_recall")
  config.eval_num_samples = 100
  config.eval_num_real = 300
  config.eval_batch_size = 50  # --mode=evaluate below reuses this run's compiled shapes.
  workdir = str(tmp_path / "run")
  state = vae_system.train_and_evaluate(config, workdir)
  assert int(state.step) == config.num_train_steps

  assert systems.workdir_task(workdir) == "vae"
  with open(os.path.join(workdir, "run_info.json")) as f:
    info = json.load(f)
  assert info["data"]["element_shape"] == [28, 28, 1] and info["devices"]["count"] == 1
  assert info["parameters"]["encoder"] > 0 and info["parameters"]["decoder"] > 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  lines = [r for r in records if "loss" in r]
  assert [r["step"] for r in lines] == [2, 4, 6]
  # Float32 means: the loss averages reconstruction + 2 kl over the batch where the terms are
  # averaged separately; the log averages log_every_steps steps; a product and a sum. The terms
  # are non-negative (a Bernoulli negative log-likelihood, a KL divergence): round-off at their
  # size.
  length = config.batch_size + config.log_every_steps + 2
  for r in lines:
    assert {"reconstruction", "kl", "elbo", "grad_norm", "steps_per_sec", "wall_time"} <= set(r)
    tolerances.assert_float32_close(
      r["loss"],
      r["reconstruction"] + 2.0 * r["kl"],
      length=length,
      magnitude=r["reconstruction"] + 2.0 * r["kl"],
    )
    tolerances.assert_float32_close(
      r["elbo"],
      -(r["reconstruction"] + r["kl"]),
      length=config.log_every_steps + 2,
      magnitude=r["reconstruction"] + r["kl"],
    )
  evaluations = [r for r in records if "classifier_fid" in r]
  assert [r["step"] for r in evaluations] == [6]
  assert {"precision", "recall"} <= set(evaluations[0])
  with open(os.path.join(workdir, "eval", "step_000006.json")) as f:
    during = json.load(f)
  assert during["protocol"]["generator"] == "raw" and during["protocol"]["system"] == "vae"
  assert during["workdir"] == os.path.abspath(workdir)  # The one format (save_evaluation).
  for name in ("step_000003.png", "step_000006.png", "reconstruction_step_000006.png", "real.png"):
    assert os.path.exists(os.path.join(workdir, "samples", name)), name
  # 16 sample images: 4 columns; the reconstruction grid: 4 rows of reals + 4 of reconstructions.
  assert Image.open(os.path.join(workdir, "samples", "reconstruction_step_000006.png")).size == (
    4 * 30 + 2,
    8 * 30 + 2,
  )
  assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 6

  # --mode=sample and --mode=evaluate through the system's functions (as ganjax.main calls them).
  sample = systems.mode_function("vae", "sample", "sample_from_workdir")
  output = str(tmp_path / "grid.png")
  samples = sample(workdir, 16, output)  # The run's sample count: no new compilation.
  assert samples.shape == (16, 28, 28, 1) and samples.min() >= -1 and samples.max() <= 1
  assert Image.open(output).size[0] > 28
  np.testing.assert_array_equal(np.load(str(tmp_path / "grid.npz"))["samples"], samples)
  evaluate = systems.mode_function("vae", "evaluate", "evaluate_workdir")
  result = evaluate(
    workdir,
    step=None,
    metrics=["classifier_fid"],
    num_samples=120,
    config_overrides={"eval_classifier_workdir": classifier_workdir},
  )
  assert result["path"] == os.path.join(workdir, "eval", "step_000006.json")
  assert np.isfinite(result["values"]["classifier_fid"])
  assert result["protocol"]["num_generated"] == 120 and result["protocol"]["step"] == 6

  # ganjax.load of the trained workdir (load_contract.py).
  load_contract.check_sample(workdir, tmp_path / "api", "vae", (28, 28, 1))
  load_contract.check_refusals(workdir, "vae")

  # Resuming from the step-3 checkpoint (an interrupted run) ends bit-identical to the full run
  # (evaluation does not touch the training state; it is left out here to save time).
  interrupted = tmp_path / "interrupted"
  shutil.copytree(os.path.join(workdir, "checkpoints", "3"), interrupted / "checkpoints" / "3")
  config.eval_classifier_workdir = None
  resumed = vae_system.train_and_evaluate(config, str(interrupted))
  for a, b in zip(_leaves(state), _leaves(resumed), strict=True):
    np.testing.assert_array_equal(a, b)
  with open(interrupted / "run_info.json") as f:
    assert json.load(f)["resumed_from_step"] == 3
  with open(interrupted / "metrics.jsonl") as f:
    resumed_lines = [r for r in map(json.loads, f) if "loss" in r]
  assert [r["step"] for r in resumed_lines] == [4, 6]
  # Steps 5 and 6 of the same program on the same states: the logged mean is the same float.
  assert resumed_lines[-1]["loss"] == lines[-1]["loss"]


@functools.cache
def _initial_state():
  """The runlocal VAE's initial state, created (compiled) once for every mesh."""
  config = _tiny()
  model = vae_system.build_model(config, (28, 28, 1))
  return config, jax.device_get(
    vae_system.create_state(config, model, (28, 28, 1), parallel.make_mesh(1))
  )


def _run_steps(num_devices, mode, num_steps=2):
  """``num_steps`` compiled train steps on a fixed batch over ``num_devices`` devices."""
  config, initial = _initial_state()
  images = np.random.default_rng(0).uniform(-1, 1, (8, 28, 28, 1)).astype(np.float32)
  mesh = parallel.make_mesh(num_devices)
  state = jax.device_put(initial, parallel.replicated(mesh))
  step = parallel.compile_step(vae_system.make_train_step(config), mesh, mode)
  for _ in range(num_steps):
    batch = parallel.host_batch_to_global({"image": images}, mesh)
    state, metrics = step(state, batch, jax.random.key(0))
  return jax.device_get(state), jax.device_get(metrics)


def test_global_mode_on_2_devices_equals_1_device():
  one, m1 = _run_steps(1, "global")
  two, m2 = _run_steps(2, "global")
  config, _ = _initial_state()
  # Two devices split the batch reductions differently: round-off, amplified by Adam on entries
  # with near-zero gradients (and, through them, in BatchNorm's statistics and Adam's moments).
  # The longest reduction is a conv kernel's gradient, over the batch of 8 and 28x28 positions.
  tolerances.assert_adam_trajectories_close(
    two,
    one,
    steps=2,
    learning_rate=config.optim.learning_rate,
    b1=config.optim.b1,
    b2=config.optim.b2,
    length=8 * 28 * 28,
  )
  # The loss of the last step is a sum over the batch and 784 pixels each.
  tolerances.assert_float32_close(m2["loss"], m1["loss"], length=8 * 28 * 28)


@pytest.mark.slow
def test_shard_map_mode_runs_and_stays_close_to_1_device():
  one, m1 = _run_steps(1, "global")
  # Per-device BatchNorm statistics (the pmap semantics): close to one device, not equal.
  per_device, m2 = _run_steps(2, "shard_map")
  assert all(np.all(np.isfinite(x)) for x in _leaves(per_device))
  # Not round-off: each device normalises its half of the batch by its own statistics, another
  # function of the parameters. Measured 0.2% on this loss; 5% leaves 25x.
  np.testing.assert_allclose(m1["loss"], m2["loss"], rtol=0.05)


@pytest.mark.parametrize(
  "override, message",
  [
    ({"model.likelihood": "poisson"}, "bernoulli, gaussian"),
    ({"loss.beta": -1.0}, "beta"),
    ({"parallel.mode": "pmap"}, "global, shard_map"),
    ({"model.latent_dim": 0}, "latent_dim"),
    ({"data.name": "ring"}, "image data"),
  ],
)
def test_bad_config_values_fail_with_the_choices(tmp_path, override, message):
  with pytest.raises(ValueError, match=message):
    vae_system.train_and_evaluate(_tiny(**override), str(tmp_path / "run"))


def test_config_arguments_and_unknown_dataset():
  config = load_config("vae", "beta=4,latent_dim=8")
  assert config.task == "vae" and config.loss.beta == 4.0 and config.model.latent_dim == 8
  assert config.num_train_steps == 3500 and config.batch_size == 64  # The DCGAN budget.
  assert "ema" not in config and "discriminator" not in config.model
  with pytest.raises(ValueError, match="embedded_mnist"):
    load_config("vae", "dataset=imagenet")
