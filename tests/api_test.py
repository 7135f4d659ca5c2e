"""The public Python API (ganjax.load_config / train / load): every system trains and loads the
same way, and the command line's --mode=sample draws what ``run.sample`` draws."""

import functools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT

import ganjax
from ganjax import errors, sampling, systems
from ganjax.systems import srgan


def _config(name: str, arg: str = "runlocal", **overrides):
  return ganjax.load_config(
    os.path.join(REPO_ROOT, "configs", f"{name}.py:{arg}"),
    **{"parallel.num_devices": 1, **overrides},
  )


# The model sections with a conv_impl field, per config.
XLA_CONV_SECTIONS = {
  "cgan": ("model.generator", "model.discriminator"),
  "lapgan": ("model.level.generator", "model.level.discriminator"),
  "vae": ("model.encoder", "model.decoder"),
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """``{name: workdir}``: runlocal trainings of the conditional GAN, LAPGAN, VAE and SRGAN, cut to
  what loading needs (two steps, a checkpoint after each; no samples or evaluations: each system's
  own tests train it with those)."""
  root = tmp_path_factory.mktemp("api")
  workdirs = {}
  short = {
    "num_train_steps": 2,
    "checkpoint_every_steps": 1,
    "sample_every_steps": 0,
    "eval_every_steps": 0,
  }
  for name in ("cgan", "lapgan", "vae", "srgan"):
    workdirs[name] = str(root / name)
    # SRGAN on 2 devices, as srgan_test trains it: the same compiled steps (compilation cache).
    config = _config(name, **short, **({"parallel.num_devices": 2} if name == "srgan" else {}))
    # XLA's own convolutions: the same parameters and results, compiled several times faster
    # than the CPU fast path (conv_impl_test checks the two agree), as the systems' tests do.
    for section in XLA_CONV_SECTIONS.get(name, ()):
      functools.reduce(getattr, section.split("."), config).conv_impl = "xla"
    ganjax.train(config, workdirs[name])
  return workdirs


def test_load_config_applies_overrides_by_name_and_dotted_path():
  config = _config("dcgan", num_train_steps=7, **{"optim.g.learning_rate": 1e-3})
  assert config.num_train_steps == 7 and config.optim.g.learning_rate == 1e-3
  assert config.parallel.num_devices == 1


def test_load_config_names_a_misspelt_field():
  with pytest.raises(errors.ConfigError, match=r"no field 'optim.g.lr'; did you mean optim.g."):
    _config("dcgan", **{"optim.g.lr": 1e-3})
  with pytest.raises(errors.ConfigError, match="num_train_step"):
    _config("dcgan", num_train_step=5)
  with pytest.raises(errors.MissingPathError, match="nowhere.py"):
    ganjax.load_config("configs/nowhere.py")


@pytest.mark.parametrize("name", ["cgan", "lapgan", "vae"])
def test_load_samples_like_the_command_line(trained, tmp_path, name):
  workdir = trained[name]
  run = ganjax.load(workdir)
  assert run.task == name.replace("cgan", "gan") and run.step == run.config.num_train_steps
  samples = run.sample(5, seed=0)
  height, width, channels = (28, 28, 1) if name != "lapgan" else samples.shape[1:]
  assert samples.shape == (5, height, width, channels) and samples.dtype == np.float32
  assert np.all(np.abs(samples) <= 1.0) and np.all(np.isfinite(samples))
  # The same program on the same inputs: bit for bit; another seed, other samples.
  np.testing.assert_array_equal(run.sample(5, seed=0), samples)
  assert not np.array_equal(run.sample(5, seed=1), samples)
  # --mode=sample is run.sample with the run's seed and a whole grid of classes.
  output = str(tmp_path / "grid.png")
  system = systems.get_system(run.task)
  written = system.sample_from_workdir(workdir, 12, output)
  expected = run.sample(sampling.grid_size(12, run.num_classes), seed=run.config.seed)
  np.testing.assert_array_equal(written, expected)
  np.testing.assert_array_equal(np.load(str(tmp_path / "grid.npz"))["samples"], expected)
  # An earlier checkpoint loads by its step.
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  if len(steps) > 1:
    assert ganjax.load(workdir, step=steps[0]).step == steps[0]


def test_conditional_labels(trained):
  run = ganjax.load(trained["cgan"])
  assert run.num_classes == 10
  same = run.sample(4, seed=0, labels=3)
  per_sample = run.sample(4, seed=0, labels=[3, 3, 3, 3])
  np.testing.assert_array_equal(same, per_sample)
  # The label changes the sample made from the same latent.
  assert not np.array_equal(run.sample(4, seed=0, labels=[0, 1, 2, 3]), same)
  with pytest.raises(errors.ConfigError, match=r"Label 10 is out of range: the run has 10"):
    run.sample(2, labels=10)
  with pytest.raises(errors.ConfigError, match="num_samples must be >= 1, got 0"):
    run.sample(0)


def test_unconditional_and_srgan_refuse_what_they_cannot_do(trained):
  with pytest.raises(errors.ConfigError, match="'vae' run is unconditional"):
    ganjax.load(trained["vae"]).sample(2, labels=1)
  with pytest.raises(errors.ConfigError, match="'vae' run does not upscale"):
    ganjax.load(trained["vae"]).upscale(np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(errors.ConfigError, match="'srgan' run does not generate samples"):
    ganjax.load(trained["srgan"]).sample(2)


def test_srgan_upscale(trained):
  run = ganjax.load(trained["srgan"])
  image = np.random.default_rng(0).integers(0, 256, (10, 13, 3), dtype=np.uint8)
  upscaled = run.upscale(image)
  scale = run.config.scale
  assert upscaled.shape == (10 * scale, 13 * scale, 3) and upscaled.dtype == np.uint8
  config, state, _ = srgan.load_trained(trained["srgan"])
  np.testing.assert_array_equal(upscaled, srgan.upscale_array(config, state.generator, image))
  with pytest.raises(errors.ConfigError, match="uint8 RGB image"):
    run.upscale(image.astype(np.float32))


def _readme_snippet() -> str:
  with open(os.path.join(REPO_ROOT, "README.md")) as f:
    readme = f.read()
  match = re.search(r"<!-- python-api -->\s*```python\n(.*?)```", readme, re.DOTALL)
  assert match, "README.md lost its Python API snippet"
  return match.group(1)


def test_readme_python_snippet_runs_and_shows_progress(tmp_path):
  """The README's snippet, as a notebook would run it (the repo's configs/ beside it), on a
  machine's one CPU device rather than the suite's 8 simulated ones."""
  os.symlink(os.path.join(REPO_ROOT, "configs"), tmp_path / "configs")
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ["XLA_FLAGS"])
  proc = subprocess.run(
    [sys.executable, "-c", _readme_snippet()],
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "PYTHONPATH": REPO_ROOT, "XLA_FLAGS": flags.strip()},
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert re.search(r"step \d+/\d+ \|.*steps/s", proc.stderr), proc.stderr[-3000:]
  assert "(16, 28, 28, 1)" in proc.stdout, proc.stdout
  assert os.path.exists(tmp_path / "runs" / "notebook" / "checkpoints")
