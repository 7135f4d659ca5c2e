"""``--mode=config``: every field with its comment, then the checks of a run's start (config values,
devices, data, parameter counts), without training or writing a workdir.

The listing and the counts are checked in-process (:mod:`ganjax.config_report`); the command line
in a subprocess each: success, a misspelt field, a bad value, a missing data folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from cli_errors_test import _error_lines
from conftest import REPO_ROOT, load_config

from ganjax import config_comments, config_fields, config_report, errors
from ganjax import main as cli
from ganjax.models import dcgan

DCGAN = "configs/dcgan.py:runlocal"


@pytest.fixture(scope="module")
def listing() -> str:
  config = load_config("dcgan", "runlocal")
  return config_report.report(config, os.path.join(REPO_ROOT, DCGAN))


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "ganjax.main", "--mode=config", *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def test_every_field_is_listed_once_with_its_value(listing):
  config = load_config("dcgan", "runlocal")
  for field in config_fields.dotted_fields(config):
    value = config
    for part in field.split("."):
      value = value[part]
    if not config_fields.is_mapping(value):
      pattern = rf"^ *{re.escape(field)} = {re.escape(repr(value))}(  #|$)"
      assert len(re.findall(pattern, listing, re.MULTILINE)) == 1, field


@pytest.mark.parametrize(
  "line",
  [
    # A field of ganjax.config_base, its comment on the same line.
    "seed = 0  # The one seed: parameters, latents, dropout and data order all derive from it.",
    "  data.name = 'embedded_mnist'  # Dataset name: embedded_mnist, mnist, fashion_mnist,",
    # config.resume is built by resume_config() and assigned to config.resume.
    "  resume.skip_damaged_checkpoints = False  # When the latest checkpoint is damaged, resume",
    # A section: its comment is that of the ConfigDict({...}) assignment.
    "optim.g:  # Generator optimizer: any optax optimizer by name, with its keyword arguments, and",
    # A field the config file adds, with the config file's comment and the runlocal value.
    "  model.generator.width = 8  # Base channel count w (ngf/ndf): 28x28 uses 4w-2w-w in G and",
  ],
)
def test_fields_appear_with_their_comments(listing, line):
  """``line`` begins a line of the listing (long comments wrap)."""
  assert any(text.startswith(line) for text in listing.splitlines()), line


def test_parameter_counts_are_those_of_the_initialised_networks(listing):
  """The counts of the listing (from jax.eval_shape) against flax's init of the same networks."""
  match = re.search(r"^  parameters  generator ([\d,]+), discriminator ([\d,]+)", listing, re.M)
  assert match, listing
  listed = [int(n.replace(",", "")) for n in match.groups()]
  rng = jax.random.key(0)
  # configs/dcgan.py:runlocal: 28x28x1 embedded digits, z of 100, width 8 in both networks.
  generator = dcgan.Generator(image_shape=(28, 28, 1), width=8)
  discriminator = dcgan.Discriminator(width=8)
  g_params = generator.init(rng, jnp.zeros((2, 100)), None, train=False)["params"]
  d_params = discriminator.init(rng, jnp.zeros((2, 28, 28, 1)), None, train=False)["params"]
  counted = [sum(x.size for x in jax.tree.leaves(p)) for p in (g_params, d_params)]
  assert listed == counted


def test_checks_name_the_data_and_the_devices(listing):
  assert "  config      valid (ganjax.systems.gan.validate_config)" in listing
  assert "  data        embedded_mnist: 5,000 examples of shape (28, 28, 1), 10 classes" in listing
  assert f"  devices     {jax.device_count()} cpu device" in listing


def test_a_bad_model_name_fails_as_the_run_would():
  config = load_config("dcgan", "runlocal")
  config.model.name = "dcgn"
  with pytest.raises(errors.ConfigError) as raised:
    config_report.check(config)
  assert cli.exit_code(raised.value) == errors.USER_ERROR_EXIT_CODE
  assert "Unknown model name 'dcgn'; valid choices: dcgan" in str(raised.value)


def test_comments_of_loops_dicts_and_returned_sections(tmp_path):
  source = tmp_path / "config.py"
  source.write_text(
    "def part():\n"
    "  part = ConfigDict()\n"
    "  # P's x.\n"
    "  part.x = 1\n"
    "  return part\n"
    "\n"
    "def get_config():\n"
    "  config.part = part()\n"
    "  for o in (config.a, config.b):\n"
    "    o.y = 2  # Y of a and b.\n"
    "  # Section c.\n"
    "  config.c = dict(\n"
    "    # Entry d.\n"
    "    d=1,\n"
    "    e={'f': 2},  # Entry e.\n"
    "  )\n"
    "  config.g = 3  # noqa: E501\n"
  )
  assert config_comments.field_comments(str(source)) == {
    "part.x": "P's x.",
    "a.y": "Y of a and b.",
    "b.y": "Y of a and b.",
    "c": "Section c.",
    "c.d": "Entry d.",
    "c.e": "Entry e.",
  }


def test_command_line_lists_and_checks_without_a_workdir(tmp_path):
  workdir = tmp_path / "workdir"
  proc = _run(f"--config={DCGAN}", f"--workdir={workdir}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.startswith(f"Config {DCGAN} (task gan)")
  assert re.search(r"^  parameters  generator [\d,]+, discriminator [\d,]+", proc.stdout, re.M)
  assert not workdir.exists()


@pytest.mark.parametrize(
  "args, fragment",
  [
    (("--config.optim.g.lr=1e-4",), "no field 'optim.g.lr'; did you mean optim.g.learning_rate?"),
    (
      ("--config.loss.name=hinged",),
      "Unknown loss.name 'hinged'; valid choices: hinge, least_squares, minimax, non_saturating",
    ),
    (
      ("--config.data.name=folder", "--config.data.dir={tmp}/no_data"),
      "Image folder data.dir '{tmp}/no_data' does not exist.",
    ),
  ],
  ids=["misspelt_field", "unknown_loss", "missing_data_dir"],
)
def test_command_line_errors_are_one_line(tmp_path, args, fragment):
  proc = _run(f"--config={DCGAN}", *(arg.format(tmp=tmp_path) for arg in args))
  lines = _error_lines(proc.stderr)
  assert proc.returncode == errors.USER_ERROR_EXIT_CODE, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert len(lines) == 1 and lines[0].startswith("ganjax: error: "), lines
  assert fragment.format(tmp=tmp_path) in lines[0]
  assert not proc.stdout


def test_command_line_needs_a_config():
  proc = _run()
  assert proc.returncode == errors.USER_ERROR_EXIT_CODE
  assert _error_lines(proc.stderr) == [
    "ganjax: error: --mode=config needs --config, e.g. --config=configs/dcgan.py"
  ]


def test_a_system_without_describe_run_is_still_checked(monkeypatch):
  from ganjax import systems

  monkeypatch.delattr(systems.get_system("vae"), "describe_run")
  lines = config_report.check(load_config("vae", "runlocal"))
  assert any("valid" in line for line in lines)
  assert lines[-1].strip().endswith("has no describe_run"), lines
