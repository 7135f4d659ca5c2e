"""The public Python API (ganjax.load_config / train / load) and the README's snippet.

``ganjax.load`` of every system (``run.sample`` equal to --mode=sample, labels, ``run.upscale``,
refusals) is checked by each system's own test module on the run it trains anyway
(``load_contract.py``): conditional_test (cgan), lapgan_test, vae_test, srgan_test, train_test
(gan)."""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

import ganjax
from ganjax import errors


def _config(name: str, arg: str = "runlocal", **overrides):
  return ganjax.load_config(
    os.path.join(REPO_ROOT, "configs", f"{name}.py:{arg}"),
    **{"parallel.num_devices": 1, **overrides},
  )


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
