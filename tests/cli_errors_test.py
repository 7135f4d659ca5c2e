"""User errors on the command line end with one line and exit status 2, without a traceback.

Each case runs ``python -m ganjax.main`` in a subprocess. The error output is
stderr without the log lines (absl's ``I``/``W`` prefixed lines, TensorFlow's start-up notes):
what is left must be at most two lines, the last one ``ganjax: error: ...`` with the expected
fragment, and nothing anywhere may say ``Traceback``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, load_config
from data_checks_test import write_idx_folder

from ganjax import errors
from ganjax import main as cli

RING = "--config=configs/gaussian_mixture.py:dataset=ring,runlocal"
DCGAN = "--config=configs/dcgan.py:runlocal"

# Lines of stderr that are logs or library start-up notes, not error output.
_LOG_LINE = re.compile(r"^[IW]\d{4} \S+\s+\d+ \S+:\d+\]")  # absl / glog INFO and WARNING.
_LIBRARY_NOTES = (
  "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
  "To enable the following instructions:",  # TensorFlow's CPU-feature note (2nd line).
)


@dataclasses.dataclass(frozen=True)
class Case:
  name: str
  args: tuple[str, ...]  # {tmp}, {file}, {read_only}, {no_checkpoint}: see _paths.
  fragment: str
  code: int = errors.USER_ERROR_EXIT_CODE
  env: tuple[tuple[str, str], ...] = ()
  as_non_root: bool = False


CASES = [
  # Flag parsing (no jax import: under a second each).
  Case("unknown_override", (DCGAN, "--config.modle.name=x"), "did you mean model.name?"),
  Case(
    "misspelt_nested_override",
    (DCGAN, "--config.optim.g.lr=1e-4"),
    "no field 'optim.g.lr'; did you mean optim.g.learning_rate?",
  ),
  Case("bad_override_value", (DCGAN, "--config.seed=abc"), "--config.seed=abc"),
  Case(
    "missing_config_file",
    ("--config=configs/dcgn.py",),
    "'configs/dcgn.py' does not exist; did you mean configs/dcgan.py",
  ),
  Case(
    "unknown_config_argument",
    ("--config=configs/dcgan.py:datset=x",),
    "Unknown config argument 'datset' in 'datset=x'; did you mean dataset?",
  ),
  Case(
    "unknown_config_dataset",
    ("--config=configs/dcgan.py:dataset=imagenet",),
    "Unknown dataset 'imagenet'; valid: embedded_mnist",
  ),
  Case("unknown_mode", ("--mode=draw",), "--mode=draw"),
  Case("no_workdir", (DCGAN,), "--workdir"),
  Case("empty_workdir", (DCGAN, "--workdir="), "--workdir is required"),
  Case("no_config", (), "--config is required"),
  Case("fid_needs_a_reference", ("--mode=fid", "--input={tmp}"), "--mode=fid needs --reference"),
  Case("positional_argument", (DCGAN, "oops"), "Unexpected arguments: oops"),
  # Checks of the flags before any heavy import.
  Case("zero_samples", ("--mode=sample", "--num_samples=0"), "--num_samples must be >= 1, got 0"),
  Case(
    "negative_samples",
    ("--mode=sample", "--num_samples=-3"),
    "--num_samples must be >= 1, got -3",
  ),
  Case("negative_step", ("--mode=evaluate", "--step=-3"), "--step must be >= 0"),
  Case(
    "process_layout_outside_training",
    ("--mode=sample", "--process_id=1"),
    "--process_id: multi-process runs train; --mode=sample does not",
  ),
  Case(
    "process_layout_of_a_one_process_task",
    ("--config=configs/classifier.py", "--num_processes=2"),
    "--num_processes: this config trains on one process",
  ),
  Case("not_a_workdir", ("--mode=sample",), "is not a ganjax workdir"),
  Case("missing_workdir", ("--mode=sample", "--workdir={tmp}/nowhere"), "does not exist"),
  Case("workdir_is_a_file", (DCGAN, "--workdir={file}"), "is a file, not a directory"),
  Case(
    "upscale_input_is_a_directory",
    ("--mode=upscale", "--input={tmp}", "--output={tmp}/out.png"),
    "is a directory, not an image file",
  ),
  Case(
    "unknown_task",
    ("--config=configs/lapgan.py:runlocal", "--config.task=gann"),
    "Unknown task 'gann'; valid choices: classifier, gan",
  ),
  Case(
    "read_only_workdir",
    (DCGAN, "--workdir={read_only}"),
    "is not writable",
    as_non_root=True,
  ),
  # Config values the run checks after importing jax (5-15 s each).
  Case("unknown_model", (RING, "--config.model.name=mpl"), "Unknown model name 'mpl'"),
  Case("unknown_loss", (RING, "--config.loss.name=hinged"), "Unknown loss.name 'hinged'"),
  Case(
    "negative_steps",
    (RING, "--config.num_train_steps=-5"),
    "config.num_train_steps must be >= 1, got -5",
  ),
  Case(
    "batch_not_divisible_by_devices",
    (RING, "--config.batch_size=5"),
    "batch_size=5 does not divide by the number of devices (2)",
    env=(("XLA_FLAGS", "--xla_force_host_platform_device_count=2"),),
  ),
  Case(
    "label_smoothing_of_wgan",
    (RING, "--config.loss.name=wgan", "--config.loss.label_smoothing=0.1"),
    "Objective 'wgan' does not support label_smoothing=0.1",
  ),
  Case(
    "no_checkpoint",
    ("--mode=sample", "--workdir={no_checkpoint}"),
    "No checkpoint in",
  ),
  Case(
    "cifar10_over_mnist_files",
    (
      "--config=configs/dcgan.py:dataset=cifar10",
      "--config.data.dir={mnist_idx}",
      "--config.num_train_steps=1",
    ),
    "data.name='cifar10' expects 32x32x3 images",
  ),
  Case(
    "missing_data_dir",
    (DCGAN, "--config.data.name=folder", "--config.data.dir={tmp}/no_data"),
    "no_data' does not exist",
  ),
  Case("workdir_locked", (RING, "--workdir={locked}"), "is in use by another run"),
  # Relaunches on a trained workdir (ring GAN, checkpoints at steps 2 and 4; one copy each).
  Case(
    "resume_with_another_loss",
    (RING, "--workdir={trained_loss}", "--config.loss.name=hinge"),
    "changes the trained model or its data: loss.name",
  ),
  Case(
    "resume_below_the_checkpoint",
    (RING, "--workdir={trained_steps}", "--config.num_train_steps=2"),
    "holds a checkpoint at step 4, beyond --config.num_train_steps=2",
  ),
  Case(
    "damaged_latest_checkpoint",
    (RING, "--workdir={trained_damaged}", "--config.num_train_steps=6"),
    "The checkpoint at step 4",
  ),
  Case(
    "disk_full_while_training",
    (RING, "--workdir={disk_full}", "--config.num_train_steps=2"),
    "No space left on device",
  ),
  Case(
    "non_finite_loss",
    (RING, "--config.optim.g.learning_rate=1e30", "--config.optim.d.learning_rate=1e30"),
    "Non-finite values at step",
    code=1,
  ),
]


def _error_lines(stderr: str) -> list[str]:
  """The lines of ``stderr`` that are neither logs nor library start-up notes."""
  return [
    line
    for line in stderr.splitlines()
    if line.strip() and not _LOG_LINE.match(line) and not line.startswith(_LIBRARY_NOTES)
  ]


def _paths(root) -> dict[str, str]:
  """The folders and files the cases name, made under ``root``."""
  a_file = root / "a_file"
  a_file.write_text("not a workdir")
  read_only = root / "read_only"
  read_only.mkdir()
  read_only.chmod(0o555)
  no_checkpoint = root / "no_checkpoint"
  (no_checkpoint / "checkpoints").mkdir(parents=True)
  config = load_config("gaussian_mixture", "dataset=ring,runlocal")
  (no_checkpoint / "config.json").write_text(config.to_json())
  (no_checkpoint / "run_info.json").write_text(
    json.dumps({"data": {"element_shape": [2], "num_classes": None}})
  )
  write_idx_folder(root / "mnist_idx")
  locked = root / "locked"
  locked.mkdir()
  # A live process of this host (the test itself) holds the lock.
  holder = {"host": socket.gethostname(), "pid": os.getpid(), "started": "now", "command": []}
  (locked / ".lock").write_text(json.dumps(holder))
  disk_full = root / "disk_full"
  (disk_full / "samples").mkdir(parents=True)
  # The last step's sample grid is written into /dev/full: every write fails with ENOSPC.
  (disk_full / "samples" / "step_000002.png").symlink_to("/dev/full")
  return dict(
    tmp=str(root),
    file=str(a_file),
    read_only=str(read_only),
    no_checkpoint=str(no_checkpoint),
    mnist_idx=str(root / "mnist_idx"),
    locked=str(locked),
    disk_full=str(disk_full),
    **_trained_copies(root, ("trained_loss", "trained_steps", "trained_damaged")),
  )


def _trained_copies(root, names: tuple[str, ...]) -> dict[str, str]:
  """Trains the ring GAN for 4 steps (checkpoints at 2 and 4) and copies the workdir per name;
  ``trained_damaged`` loses the ``state`` folder of its checkpoint at step 4."""
  trained = root / "trained"
  proc = _run(
    [
      RING,
      f"--workdir={trained}",
      "--config.num_train_steps=4",
      "--config.checkpoint_every_steps=2",
      "--config.keep_checkpoints=2",
    ]
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  paths = {}
  for name in names:
    shutil.copytree(trained, root / name)
    paths[name] = str(root / name)
  shutil.rmtree(root / "trained_damaged" / "checkpoints" / "4" / "state")
  return paths


def _run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "ganjax.main", *args],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, **(env or {})},
  )


def _case_args(case: Case, paths: dict[str, str]) -> list[str]:
  """The case's flags; cases without ``--workdir`` get an empty folder of their own."""
  args = [arg.format(**paths) for arg in case.args]
  if not any(arg.startswith("--workdir") for arg in args) and case.name != "no_workdir":
    workdir = os.path.join(paths["tmp"], f"workdir_{case.name}")
    os.makedirs(workdir)
    args.append(f"--workdir={workdir}")
  return args


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
  """The folders the cases name (made once per test worker); see :func:`_paths`."""
  return _paths(tmp_path_factory.mktemp("cli_errors"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_user_error_is_one_line(case, paths):
  if case.as_non_root and os.geteuid() == 0:
    pytest.skip("root may write into a read-only folder")
  proc = _run(_case_args(case, paths), dict(case.env))
  output = proc.stdout + proc.stderr
  lines = _error_lines(proc.stderr)
  assert "Traceback" not in output, output[-3000:]
  assert proc.returncode == case.code, output[-3000:]
  assert 1 <= len(lines) <= 2, lines
  assert lines[-1].startswith("ganjax: error: "), lines
  assert case.fragment in lines[-1], lines


def test_traceback_flag_prints_the_traceback():
  proc = _run([DCGAN, "--config.modle.name=x", "--workdir=unused", "--traceback"])
  assert proc.returncode == errors.USER_ERROR_EXIT_CODE
  assert "Traceback" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1].startswith("ganjax.errors.ConfigError: --config.")


def _report(expression: str) -> subprocess.CompletedProcess:
  """``ganjax.main.report_and_exit`` of the exception ``expression`` raises, in a subprocess."""
  code = (
    "from ganjax import errors, main\n"
    f"try:\n  {expression}\n"
    "except Exception as e:\n  main.report_and_exit(e, ['ganjax'])\n"
  )
  return subprocess.run(
    [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
  )


def test_a_programming_error_keeps_its_traceback():
  proc = _report("{}['missing']")
  assert proc.returncode == cli.BUG_EXIT_CODE
  assert "Traceback (most recent call last)" in proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == "KeyError: 'missing'"


def test_a_user_error_prints_only_its_message():
  proc = _report("raise errors.ConfigError('config.batch_size must be >= 1, got 0.')")
  assert proc.returncode == errors.USER_ERROR_EXIT_CODE
  assert proc.stderr == "ganjax: error: config.batch_size must be >= 1, got 0.\n"


@pytest.mark.parametrize(
  "error, code",
  [
    (errors.ConfigError("bad value"), 2),
    (errors.MissingPathError("no such file"), 2),
    (errors.WorkdirError("locked"), 2),
    (errors.CheckpointError("damaged"), 2),
    (cli.FlagError("--num_samples must be >= 1"), 2),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/x/config.json"), 2),
    (OSError(errno.EROFS, "Read-only file system", "/runs/x"), 2),
    (PermissionError(errno.EACCES, "Permission denied", "/runs/x"), 2),
    # tensorstore's error under orbax: a ValueError whose message has the OS error.
    (ValueError('RESOURCE_EXHAUSTED: writing "/runs/x/ckpt": No space left on device'), 2),
    (RuntimeError("save failed"), None),
    (ValueError("operands could not be broadcast together"), None),
    (KeyError("params"), None),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/site-packages/x"), None),
    (ZeroDivisionError("division by zero"), None),
    (FloatingPointError("invalid value (nan) encountered in jit(step)"), None),  # debug_nans.
  ],
)
def test_exit_code_tells_user_errors_from_bugs(error, code):
  assert cli.exit_code(error) == code


def test_exit_code_of_the_run_stopping_on_nan_is_1():
  from ganjax import checkpoint, loop

  assert cli.exit_code(loop.NonFiniteLossError("Non-finite values at step 3")) == 1
  assert cli.exit_code(checkpoint.CheckpointMismatchError("params/b: (64,) vs (32,)")) == 2
  if hasattr(checkpoint, "NonFiniteStateError"):
    assert cli.exit_code(checkpoint.NonFiniteStateError("NaN state at step 2")) == 1


def test_an_os_error_wrapped_by_a_library_counts_through_its_cause():
  try:
    try:
      raise OSError(errno.EDQUOT, "Disk quota exceeded", "/runs/x/events")
    except OSError as e:
      raise RuntimeError("Writer failed") from e
  except RuntimeError as e:
    assert cli.exit_code(e) == 2
    assert cli.error_message(e) == (
      "Disk quota exceeded: /runs/x/events; free some space or use a --workdir on another disk."
    )


def test_disk_full_message_names_the_path_and_the_fix():
  error = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "step/0" in OCDBT database at local file '
    '"/runs/x/checkpoints/3.orbax-checkpoint-tmp/": No space left on device [os_error_code=28]'
  )
  assert cli.error_message(error) == (
    "No space left on device: /runs/x/checkpoints/3.orbax-checkpoint-tmp/; free some space or "
    "use a --workdir on another disk."
  )


@pytest.mark.parametrize(
  "argv, wanted",
  [
    (["ganjax", "--traceback"], True),
    (["ganjax", "--traceback=true"], True),
    (["ganjax", "--verbosity=1"], True),
    (["ganjax", "-v", "2"], True),
    (["ganjax", "--verbosity=0"], False),
    (["ganjax", "--notraceback"], False),
    (["ganjax", "--config.traceback=1"], False),
  ],
)
def test_wants_traceback_reads_argv_when_parsing_failed(argv, wanted):
  assert cli.wants_traceback(argv) is wanted
