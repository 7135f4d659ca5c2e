"""Command line: train a GAN from a config, or sample from a trained workdir.

  python -m ganjax.main --config=configs/dcgan.py --workdir=runs/dcgan
  python -m ganjax.main --mode=sample --workdir=runs/dcgan --num_samples=64 --output=grid.png
  python -m ganjax.main --mode=sample --workdir=runs/cgan --seeds=0-7 --labels=3,7 \
      --truncation=1.0 [--step=best] [--format=png|npz|folder]
  python -m ganjax.main --mode=interpolate --workdir=runs/dcgan --seeds=1,2,3 --frames=10
  python -m ganjax.main --mode=nearest --workdir=runs/dcgan [--num_samples=1000]
  python -m ganjax.main --mode=report --workdir=runs/dcgan    # WORKDIR/report/report.html
  python -m ganjax.main --mode=config --config=configs/dcgan.py   # fields, checks; no training
  python -m ganjax.main --mode=evaluate --workdir=runs/dcgan [--step=N] [--metrics=kid,is] \
      [--eval_classifier_workdir=runs/classifier_mnist | --eval_inception_weights=PATH]
  python -m ganjax.main --config=configs/classifier.py:dataset=mnist \
      --config.data.dir=../shared/data/mnist --workdir=runs/classifier_mnist

  python -m ganjax.main --mode=upscale --workdir=runs/srgan --input=photo.png --output=photo_x4.png

  # FID / KID / precision-recall of any two sets of images (folders, .npz, tfds:NAME[:SPLIT]):
  python -m ganjax.main --mode=fid --input=samples/ --reference=tfds:cifar10:test \
      [--output=fid.json]

  # Several processes (hosts) training one run: the same command on each, with its --process_id
  # (0 serves the coordinator). Inside a Slurm step or a submitit job, the three are found alone.
  python -m ganjax.main --config=configs/dcgan.py --workdir=runs/dcgan \
      --coordinator_address=host0:12345 --num_processes=2 --process_id=0

``config.task`` selects what a config trains: ``"gan"`` (the default, :mod:`ganjax.systems.gan`),
``"classifier"`` (training the domain classifier, :mod:`ganjax.systems.classifier`,
configs/classifier.py) or another system of :mod:`ganjax.systems` (e.g. ``"srgan"``).
``--mode=sample|interpolate|nearest|evaluate|upscale`` read the task from the workdir's
``config.json``.

Errors: a user error (:mod:`ganjax.errors`: a bad flag, config field or value, missing path,
unusable workdir, bad checkpoint; also a full disk and a read-only or forbidden path) ends with one
line ``ganjax: error: MESSAGE`` on stderr and exit status 2; a training run stopped by NaN/inf ends
with one line and exit status 1. ``--traceback`` (or ``--verbosity=1``) prints the traceback too.
Any other exception is a bug: its traceback is printed and the exit status is 1.
"""

from __future__ import annotations

import difflib
import errno
import gc
import logging as std_logging
import os
import re
import sys
import threading
import time
import traceback

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from ganjax import config_fields, errors, logs

logs.quiet_tensorflow()

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:args]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum(
  "mode",
  "train",
  ["train", "sample", "interpolate", "nearest", "evaluate", "upscale", "fid", "report", "config"],
  "train: train (resuming); sample: draw; interpolate: walk the latent space between --seeds; "
  "nearest: samples beside their nearest training images (is it copying?); evaluate: measure a "
  "checkpoint (WORKDIR/eval/); upscale: super-resolve --input into --output (super-resolution "
  "tasks); fid: score the images of --input against --reference (no workdir); report: write "
  "WORKDIR/report/report.html (curves, evaluations, samples, config; training writes it too); "
  "config: list --config's fields with their comments and check them, its data and networks "
  "(parameter counts), as training would, without training (no workdir).",
)
flags.DEFINE_integer(
  "num_samples", None, "--mode=sample: number of samples (64); --mode=nearest: (1000)."
)
flags.DEFINE_string(
  "seeds",
  None,
  "--mode=sample|interpolate: latent seeds, one image each, e.g. 0,1,5-9 (ranges inclusive); the "
  "same seed gives the same image in any list, on any machine.",
)
flags.DEFINE_string(
  "labels",
  None,
  "--mode=sample|interpolate: classes of a conditional run, e.g. 3,7 or all (sample: one row "
  "each; interpolate: one for all frames, or one per seed, interpolated).",
)
flags.DEFINE_float(
  "truncation",
  None,
  "--mode=sample|interpolate: the truncation trick: with --truncation_mode=resample (Brock et "
  "al. 2019) latent components beyond +-T are redrawn; with scale, latents are multiplied by "
  "psi in [0, 1].",
)
flags.DEFINE_enum(
  "truncation_mode",
  "resample",
  ["resample", "scale"],
  "--mode=sample|interpolate: see --truncation.",
)
flags.DEFINE_enum(
  "format",
  "png",
  ["png", "npz", "folder"],
  "--mode=sample: png (a grid and an .npz beside it), npz, or folder (one PNG per sample, what "
  "other tools' FID code reads).",
)
flags.DEFINE_integer("frames", 8, "--mode=interpolate: images per path, both ends included.")
flags.DEFINE_enum(
  "interpolation",
  "slerp",
  ["slerp", "linear"],
  "--mode=interpolate: spherical (for Gaussian latents) or linear paths.",
)
flags.DEFINE_integer("num_neighbors", 5, "--mode=nearest: training images shown per sample.")
flags.DEFINE_integer(
  "nearest_num_real", 60_000, "--mode=nearest: training images searched (at most the split)."
)
flags.DEFINE_string(
  "output",
  None,
  "--mode=sample|interpolate|upscale: output PNG (default WORKDIR/sample.png, "
  "WORKDIR/interpolation.png; a folder or .npz with --format); --mode=nearest: a folder "
  "(WORKDIR/nearest); --mode=fid: a JSON file for the values and their protocol.",
)
flags.DEFINE_string(
  "input",
  None,
  "--mode=upscale: the image to super-resolve; --mode=fid: the images to score (a folder, an "
  ".npz of images or of mu/sigma statistics, or tfds:NAME[:SPLIT]).",
)
flags.DEFINE_string("reference", None, "--mode=fid: the reference images (as --input).")
flags.DEFINE_string(
  "save_statistics",
  None,
  "--mode=fid: write the Inception mu/sigma of --input (with their protocol) to this .npz, a "
  "--reference for later runs; without --reference, only that.",
)
flags.DEFINE_string(
  "step",
  None,
  "--mode=sample|interpolate|nearest|evaluate: checkpoint step, or 'best' (default: the latest).",
)
flags.DEFINE_list(
  "metrics", None, "--mode=evaluate|fid: metric names (default: those that fit the extractor)."
)
flags.DEFINE_integer("eval_num_samples", None, "--mode=evaluate: generated samples.")
flags.DEFINE_string(
  "eval_inception_weights",
  None,
  "--mode=evaluate|fid|nearest: FID Inception weights (default: the package's).",
)
flags.DEFINE_string("eval_classifier_workdir", None, "--mode=evaluate|nearest: classifier workdir.")
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process training: process 0's HOST:PORT (sets config.parallel.distributed; Slurm and "
  "submitit jobs find it themselves).",
)
flags.DEFINE_integer("num_processes", None, "Multi-process training: the number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process training: this process's index (0..N-1).")
flags.DEFINE_bool(
  "traceback", False, "Print the traceback of a user error too (as --verbosity=1 does)."
)

# Exit status of a run stopped by NaN/inf: the command was right, the training diverged.
NON_FINITE_EXIT_CODE = 1
# Exit status of a programming error (an uncaught exception, as Python's own).
BUG_EXIT_CODE = 1
# How long a failed run waits for its non-daemon threads (checkpoint writes) before it exits.
THREAD_JOIN_TIMEOUT_S = 10.0

# Errors of the operating system that are the user's to fix (disk, file system, permissions),
# with what to do.
_OS_ERROR_HINTS = {
  errno.ENOSPC: "free some space or use a --workdir on another disk",
  errno.EDQUOT: "free some space or use a --workdir on another disk",
  errno.EROFS: "use a --workdir on a writable file system",
  errno.EACCES: "check its permissions or use another --workdir",
  errno.EPERM: "check its permissions or use another --workdir",
}


class FlagError(errors.ConfigError):
  """A command-line flag (not a config field) is missing or has an invalid value."""


def main(argv):
  if len(argv) > 1:
    raise FlagError(f"Unexpected arguments: {' '.join(argv[1:])} (flags start with --).")
  _check_flags()
  logs.quiet_libraries()
  if not wants_traceback(sys.argv):
    _quiet_library_errors()
  if FLAGS.mode in ("fid", "evaluate", "nearest"):  # Inference only: nothing trains on devices.
    _one_cpu_device_per_core()
  if FLAGS.mode == "report":  # Reads the workdir's files: no jax.
    from ganjax import report

    report.write_report(FLAGS.workdir)
    return
  if FLAGS.mode == "config":  # Lists and checks the config; trains and writes nothing.
    from ganjax import config_report

    print(config_report.report(FLAGS.config, config_flags.get_config_filename(FLAGS["config"])))
    return
  from ganjax import api, systems  # Heavy imports after flag parsing: --help stays fast.

  if FLAGS.mode == "fid":
    _compare_image_sets()
    return
  if FLAGS.mode == "train":
    api.train(_with_process_layout(FLAGS.config), FLAGS.workdir)
    logging.info("Done.")
    return
  task = systems.workdir_task(FLAGS.workdir)
  if FLAGS.mode == "sample" and not _sample_controls_given():
    sample = systems.mode_function(task, "sample", "sample_from_workdir")
    sample(FLAGS.workdir, FLAGS.num_samples or 64, _sample_output())
  elif FLAGS.mode in ("sample", "interpolate", "nearest"):
    _explore(api.load(FLAGS.workdir, _parse_step(FLAGS.step)))
  elif FLAGS.mode == "evaluate":
    evaluate = systems.mode_function(task, "evaluate", "evaluate_workdir")
    _log_evaluation(evaluate(FLAGS.workdir, **_evaluate_kwargs()))
  else:
    upscale = systems.mode_function(task, "upscale", "upscale_file")
    upscale(FLAGS.workdir, FLAGS.input, FLAGS.output)
  logging.info("Done.")


# The flags of a multi-process run: each sets config.parallel's field of the same name.
_LAYOUT_FLAGS = ("coordinator_address", "num_processes", "process_id")


def _with_process_layout(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config`` with the multi-process flags given copied into ``config.parallel`` (and
  ``parallel.distributed`` on when any is given)."""
  given = {name: FLAGS[name].value for name in _LAYOUT_FLAGS if FLAGS[name].value is not None}
  if given:
    config.parallel.distributed = True
    for name, value in given.items():
      config.parallel[name] = value
  return config


def _one_cpu_device_per_core() -> None:
  """Before jax is imported: one XLA CPU device per core, unless XLA_FLAGS sets a count.

  Inference sharded over one device per core beats one device whose convolutions spread over
  the cores: FID Inception at 299x299 on the 2-core CPU, 14.3 against 9.2 img/s
  (benchmarks/inception_speed.py, where PyTorch runs the same TorchScript at 11.8 img/s). Only
  the CPU platform changes; GPUs and TPUs stay as they are.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_force_host_platform_device_count" in flags or "jax" in sys.modules:
    return
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={cores or 1}".strip()


def _compare_image_sets() -> None:
  """--mode=fid: the Inception metrics of --input against --reference, logged and (--output)
  written as JSON."""
  import json

  from ganjax.evaluation import compare, extractors

  extractor = extractors.inception_extractor(FLAGS.eval_inception_weights)
  extracted = None
  if FLAGS.save_statistics:
    extracted = compare.extract(FLAGS.input, extractor)  # Once, for the file and the comparison.
    protocol = compare.save_statistics(
      FLAGS.input, extractor, FLAGS.save_statistics, extracted=extracted
    )
    logging.info(
      "Wrote the statistics of %d images of %s to %s.",
      protocol["num_images"],
      FLAGS.input,
      FLAGS.save_statistics,
    )
    if not FLAGS.reference:
      return
  result = compare.compare(
    FLAGS.input, FLAGS.reference, extractor, FLAGS.metrics, input_extracted=extracted
  )
  logging.info("%s vs %s: %s", FLAGS.input, FLAGS.reference, result["values"])
  if FLAGS.output:
    with open(FLAGS.output, "w") as f:
      json.dump(result, f, indent=2, default=str)
    logging.info("Wrote %s.", FLAGS.output)


def _check_flags() -> None:
  """The checks of the flags that need no heavy import: a bad command fails in a second."""
  if FLAGS.mode == "fid":
    needed = ("input",) if FLAGS.save_statistics else ("input", "reference")
    missing = [f"--{name}" for name in needed if not FLAGS[name].value]
    if missing:
      raise FlagError(f"--mode=fid needs {' and '.join(missing)} (folders, .npz or tfds:NAME).")
    for name in ("input", "reference"):
      value = FLAGS[name].value
      if value and not value.startswith("tfds:") and not os.path.exists(value):
        raise errors.MissingPathError(f"--{name}={value} does not exist.")
    return
  if FLAGS.mode == "config":  # No workdir: nothing is written.
    if FLAGS.config is None:
      raise FlagError("--mode=config needs --config, e.g. --config=configs/dcgan.py")
    return
  workdir = FLAGS.workdir
  if not workdir:
    raise FlagError("--workdir is required (a directory for checkpoints, logs and samples).")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.WorkdirError(f"--workdir={workdir} is a file, not a directory.")
  layout = [f"--{name}" for name in _LAYOUT_FLAGS if FLAGS[name].value is not None]
  if layout and FLAGS.mode != "train":
    raise FlagError(f"{', '.join(layout)}: multi-process runs train; --mode={FLAGS.mode} does not.")
  if FLAGS.mode == "train":
    if FLAGS.config is None:
      raise FlagError("--config is required to train, e.g. --config=configs/dcgan.py")
    if layout and "parallel" not in FLAGS.config:
      raise FlagError(
        f"{', '.join(layout)}: this config trains on one process (it has no config.parallel)."
      )
    if os.path.isdir(workdir) and not os.access(workdir, os.W_OK | os.X_OK):
      raise errors.WorkdirError(
        f"--workdir={workdir} is not writable (read-only or not yours); use another --workdir."
      )
    return
  if not os.path.isdir(workdir):
    raise errors.MissingPathError(f"--workdir={workdir} does not exist.")
  if FLAGS.num_samples is not None and FLAGS.num_samples < 1:
    raise FlagError(f"--num_samples must be >= 1, got {FLAGS.num_samples}.")
  if FLAGS.mode in ("sample", "interpolate", "nearest", "evaluate"):
    _parse_step(FLAGS.step)
  if FLAGS.mode in ("sample", "interpolate"):
    _check_latent_flags()
  if FLAGS.mode == "nearest" and (FLAGS.num_neighbors < 1 or FLAGS.nearest_num_real < 1):
    raise FlagError(
      f"--num_neighbors and --nearest_num_real must be >= 1, got {FLAGS.num_neighbors} and "
      f"{FLAGS.nearest_num_real}."
    )
  if FLAGS.mode == "evaluate":
    if FLAGS.eval_num_samples is not None and FLAGS.eval_num_samples < 2:
      raise FlagError(f"--eval_num_samples must be >= 2, got {FLAGS.eval_num_samples}.")
  if FLAGS.mode == "upscale":
    if not FLAGS.input or not FLAGS.output:
      raise FlagError("--mode=upscale needs --input=IMAGE and --output=PNG.")
    if os.path.isdir(FLAGS.input):
      raise FlagError(f"--input={FLAGS.input} is a directory, not an image file.")
    if not os.path.exists(FLAGS.input):
      raise errors.MissingPathError(f"--input={FLAGS.input} does not exist.")


def _check_latent_flags() -> None:
  """The checks of --seeds, --truncation and --frames that need no run."""
  from ganjax import latents as latents_lib

  if FLAGS.seeds:
    seeds = latents_lib.parse_seeds(FLAGS.seeds)
    if FLAGS.mode == "interpolate" and len(seeds) < 2:
      raise FlagError(f"--mode=interpolate needs two seeds or more, got --seeds={FLAGS.seeds}.")
  elif FLAGS.mode == "interpolate":
    raise FlagError("--mode=interpolate needs --seeds=A,B[,C...] (the path's ends).")
  latents_lib.check_truncation(FLAGS.truncation, FLAGS.truncation_mode)
  if FLAGS.mode == "interpolate" and FLAGS.frames < 2:
    raise FlagError(f"--frames must be >= 2 (the two ends), got {FLAGS.frames}.")


def _sample_output() -> str:
  return FLAGS.output or f"{FLAGS.workdir.rstrip('/')}/sample.png"


# Flags of --mode=sample beyond a count: given any, the run's generic drawing (ganjax.generation)
# serves it instead of the system's own sample picture.
_SAMPLE_CONTROLS = ("seeds", "labels", "truncation", "step")


def _sample_controls_given() -> bool:
  return FLAGS.format != "png" or any(FLAGS[name].value is not None for name in _SAMPLE_CONTROLS)


def _explore(run) -> None:
  """--mode=sample (with seeds, labels, truncation, format), interpolate and nearest on ``run``."""
  from ganjax import generation
  from ganjax import latents as latents_lib

  workdir = FLAGS.workdir.rstrip("/")
  seeds = latents_lib.parse_seeds(FLAGS.seeds) if FLAGS.seeds else None
  labels = latents_lib.parse_labels(FLAGS.labels, run.num_classes) if FLAGS.labels else None
  if FLAGS.mode == "nearest":
    from ganjax.evaluation import nearest

    for field, value in _evaluate_kwargs()["config_overrides"].items():
      run.config[field] = value  # The feature space: the classifier or Inception asked for.
    nearest.memorisation_check(
      run,
      FLAGS.output or f"{workdir}/nearest",
      num_samples=FLAGS.num_samples or 1000,
      k=FLAGS.num_neighbors,
      num_real=FLAGS.nearest_num_real,
    )
  elif FLAGS.mode == "interpolate":
    generation.write_interpolation(
      run,
      FLAGS.output or f"{workdir}/interpolation.png",
      seeds,
      frames=FLAGS.frames,
      method=FLAGS.interpolation,
      labels=labels,
      truncation=FLAGS.truncation,
      truncation_mode=FLAGS.truncation_mode,
    )
  else:
    default = {"png": "sample.png", "npz": "samples.npz", "folder": "sample_images"}[FLAGS.format]
    request = generation.SampleRequest(
      num_samples=FLAGS.num_samples or 64,
      seeds=seeds,
      labels=labels,
      truncation=FLAGS.truncation,
      truncation_mode=FLAGS.truncation_mode,
    )
    generation.write_samples(run, request, FLAGS.output or f"{workdir}/{default}", FLAGS.format)


def _evaluate_kwargs() -> dict:
  overrides = {
    name: FLAGS[name].value
    for name in ("eval_inception_weights", "eval_classifier_workdir")
    if FLAGS[name].value
  }
  return dict(
    step=_parse_step(FLAGS.step),
    metrics=FLAGS.metrics,
    num_samples=FLAGS.eval_num_samples,
    config_overrides=overrides,
  )


def _log_evaluation(result: dict) -> None:
  logging.info("Evaluation: %s (written to %s)", result["values"], result["path"])


def _parse_step(step: str | None) -> int | str | None:
  if step is None or step == "best":
    return step
  try:
    number = int(step)
  except ValueError:
    raise FlagError(f"--step must be a step number or 'best', got {step!r}.") from None
  if number < 0:
    raise FlagError(f"--step must be >= 0 or 'best', got {number}.")
  return number


# ---------------------------------------------------------------------------------------------
# Flag parsing: errors in --config and its overrides become one-line user errors.


def parse_flags(argv: list[str]) -> list[str]:
  """``app.run``'s flags parser: absl's parse, with errors turned into :class:`errors.UserError`.

  ml_collections reports a bad ``--config`` late or cryptically (a ``KeyError`` repr for an
  unknown override, a deferred ``OSError`` for a missing file, a traceback inside the message
  for a bad config string); :func:`diagnose_config` names the bad part and the closest fields.
  """
  try:
    remaining = FLAGS(argv)
  except Exception as e:
    diagnosis = diagnose_config(argv)
    if diagnosis is not None:
      raise diagnosis from e
    if isinstance(e, flags.Error):
      raise FlagError(str(e)) from e
    raise
  config = FLAGS["config"].value
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    # config_flags defers a file that fails to load until the config is read.
    diagnosis = diagnose_config(argv)
    if diagnosis is not None:
      raise diagnosis
  return remaining


def diagnose_config(argv: list[str]) -> errors.UserError | None:
  """The user error in ``--config=PATH[:ARG]`` or a ``--config.FIELD`` override, else None."""
  try:
    argv = FLAGS.read_flags_from_files(argv, force_gnu=False)
  except Exception:  # A bad --flagfile: absl's own error says so.
    pass
  value = _config_argument(argv)
  if value is None:
    return None
  path, _, arg = value.partition(":")
  if not os.path.isfile(path):
    return errors.MissingPathError(
      f"--config={value}: the config file {path!r} does not exist{_close_files(path)}"
    )
  from ganjax import config_base

  try:
    config = config_base.load_config(path, arg if ":" in value else None)
  except (errors.UserError, ValueError) as e:
    # A ValueError from get_config is its check of the config string (configs/*.py).
    return errors.ConfigError(f"--config={value}: {e}")
  for field in _override_fields(argv):
    if not config_fields.has_field(config, field):
      hint = config_fields.did_you_mean(config, field)
      return errors.ConfigError(f"--config.{field}: {path} has no field {field!r}{hint}")
  return None


def _config_argument(argv: list[str]) -> str | None:
  """The value of the last ``--config`` in ``argv`` (``--config=V`` or ``--config V``)."""
  value = None
  for i, arg in enumerate(argv):
    match = re.match(r"^--?config(=|$)", arg)
    if match and match.group(1):
      value = arg.split("=", 1)[1]
    elif match and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _override_fields(argv: list[str]) -> list[str]:
  """Dotted fields of ``--config.FIELD[=V]`` / ``--noconfig.FIELD`` overrides, as config_flags."""
  return [
    arg.split("=", 1)[0].split(".", 1)[1] for arg in argv if re.match(r"^--?(no)?config\.", arg)
  ]


def _close_files(path: str) -> str:
  """``"; did you mean configs/dcgan.py?"`` for a missing config file, or ``""``."""
  folder = os.path.dirname(path) or "."
  try:
    files = [f for f in os.listdir(folder) if f.endswith(".py")]
  except OSError:
    return ""
  close = difflib.get_close_matches(os.path.basename(path), files, n=2, cutoff=0.6)
  if not close:
    return ""
  return f"; did you mean {' or '.join(os.path.join(os.path.dirname(path), f) for f in close)}?"


def _quiet_library_errors() -> None:
  """Errors of background library work print one line each, not a traceback (--traceback: all).

  When a checkpoint write fails (a full disk), orbax logs the exception of each of its threads
  with its traceback, and tensorstore's callbacks into the event loop orbax already closed print
  a traceback through ``sys.excepthook`` each (50 of them); the main thread's error says what
  happened, in one line. So orbax's logs keep their message without the traceback, and the
  callback errors are logged once per distinct message.
  """
  logging.get_absl_handler().addFilter(_DropLibraryTracebacks())
  seen = set()

  def excepthook(exc_type, exc, tb):
    del tb
    text = f"{exc_type.__name__}: {exc}"
    if text not in seen:
      seen.add(text)
      logging.warning("Exception in a library callback (--traceback prints each): %s", text)

  sys.excepthook = excepthook


class _DropLibraryTracebacks(std_logging.Filter):
  """Drops the traceback of orbax's error logs (their message says what failed)."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.exc_info and f"{os.sep}orbax{os.sep}" in (record.pathname or ""):
      record.exc_info, record.exc_text = None, None
    return True


# ---------------------------------------------------------------------------------------------
# Ending the program: user errors in one line, bugs with their traceback.


def exit_code(error: BaseException) -> int | None:
  """The exit status for an error that ends in one line, or None for a bug (keep the traceback).

  2 (``errors.USER_ERROR_EXIT_CODE``): a :class:`errors.UserError` or absl's usage error; an
  ``OSError`` (also one a library wrapped into its own message) that says the disk is full,
  the quota exceeded, the file system read-only or the permission denied, since those are
  fixed by the user, not in ganjax; the checkpoint's ``CheckpointMismatchError``. 1: a training
  run stopped by NaN/inf (``loop.NonFiniteLossError``, a non-finite state): the command was
  valid, the run diverged. Anything else (None) is a programming error.
  """
  non_finite = _loaded_class("ganjax.loop", "NonFiniteLossError")
  if isinstance(error, FloatingPointError) and (
    isinstance(error, errors.UserError) or (non_finite and isinstance(error, non_finite))
  ):
    return NON_FINITE_EXIT_CODE
  if isinstance(error, errors.UserError | app.UsageError):
    return errors.USER_ERROR_EXIT_CODE
  mismatch = _loaded_class("ganjax.checkpoint", "CheckpointMismatchError")
  if mismatch and isinstance(error, mismatch):
    return errors.USER_ERROR_EXIT_CODE
  if _os_error_code(error) is not None:
    return errors.USER_ERROR_EXIT_CODE
  return None


def _loaded_class(module: str, name: str) -> type | None:
  """``module.name`` if ``module`` is imported (an error of it can only come from it then)."""
  cls = getattr(sys.modules.get(module), name, None)
  return cls if isinstance(cls, type) else None


def _os_error_code(error: BaseException) -> int | None:
  """The errno of :data:`_OS_ERROR_HINTS` that ``error`` (or its ``raise ... from``) reports."""
  found = _os_error(error)
  return found[0] if found else None


def _os_error(error: BaseException | None) -> tuple[int, str | None] | None:
  """``(errno, path or None)`` of the first error of the chain with an errno we hint for."""
  for _ in range(5):
    if error is None:
      return None
    if isinstance(error, OSError) and error.errno in _OS_ERROR_HINTS:
      return error.errno, error.filename
    # C++ libraries (tensorstore under orbax) put the OS error into a message of their own.
    text = str(error)
    for code in _OS_ERROR_HINTS:
      if os.strerror(code) in text:
        match = re.search(r"""["'](/[^"']+)["']""", text)
        return code, match.group(1) if match else None
    error = error.__cause__
  return None


def error_message(error: BaseException) -> str:
  """What to print for an error :func:`exit_code` ends in one line."""
  found = None if isinstance(error, errors.UserError) else _os_error(error)
  if found is None:
    return str(error).strip() or type(error).__name__
  code, path = found
  where = f": {path}" if path else ""
  return f"{os.strerror(code)}{where}; {_OS_ERROR_HINTS[code]}."


def wants_traceback(argv: list[str]) -> bool:
  """``--traceback`` or ``--verbosity >= 1``, from the parsed flags or (failed parse) ``argv``."""
  try:
    return bool(FLAGS.traceback) or FLAGS.verbosity >= 1
  except Exception:  # Parsing failed: read argv.
    pass
  for i, arg in enumerate(argv):
    if re.fullmatch(r"--?traceback(=(true|1|yes))?", arg, re.IGNORECASE):
      return True
    match = re.fullmatch(r"--?(verbosity|v)(=(-?\d+))?", arg)
    if match:
      level = match.group(3) or (argv[i + 1] if i + 1 < len(argv) else "0")
      if level.lstrip("-").isdigit() and int(level) >= 1:
        return True
  return False


def report_and_exit(error: BaseException, argv: list[str]) -> None:
  """Prints ``error`` (one line, or its traceback) last and ends the process."""
  code = exit_code(error)
  verbose = code is None or wants_traceback(argv)
  if verbose:
    text = "".join(traceback.format_exception(error))
  else:
    text = f"ganjax: error: {error_message(error)}\n"
  _clear_frames(error)
  _shut_down(quiet=not verbose)
  sys.stderr.write(text)
  _exit(BUG_EXIT_CODE if code is None else code)


def _clear_frames(error: BaseException | None) -> None:
  """Drops the locals of the frames of ``error`` and its chain, freeing the run's objects."""
  for _ in range(10):
    if error is None:
      return
    traceback.clear_frames(error.__traceback__)
    error = error.__cause__ or error.__context__


def _shut_down(quiet: bool) -> None:
  """Lets what the failed run left behind finish while the interpreter is whole.

  Objects of the run are collected (TensorBoard writers flush when deleted) and the non-daemon
  threads (a checkpoint write in progress) get up to :data:`THREAD_JOIN_TIMEOUT_S` to end.
  ``quiet``: their info logs and the exceptions ignored in destructors of half-done async work
  are not printed (they would follow the message).
  """
  if quiet:
    logging.set_verbosity(logging.ERROR)
    sys.unraisablehook = lambda unraisable: None
  gc.collect()
  deadline = time.monotonic() + THREAD_JOIN_TIMEOUT_S
  for thread in threading.enumerate():
    if thread is not threading.current_thread() and not thread.daemon:
      thread.join(max(0.0, deadline - time.monotonic()))
  logging.flush()


def _exit(code: int) -> None:
  """Flushes stdio and ends the process with ``os._exit``, skipping the interpreter's shutdown.

  After an error, the normal shutdown is where the noise comes from: orbax's and TensorBoard's
  background threads, left mid-operation by the exception, run on while modules are torn down
  and each print a traceback (``sys.meta_path is None``, ``cannot schedule new futures after
  interpreter shutdown``: 1,000 lines after a full disk), and a hung thread can keep the process
  alive. :func:`_shut_down` has already given them their time; what must be kept is on disk
  (orbax writes checkpoints atomically; the logs are flushed here).
  """
  std_logging.shutdown()
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os._exit(code)


def run(argv: list[str] | None = None) -> None:
  """``app.run(main)`` that ends errors as :func:`report_and_exit` says."""
  argv = list(sys.argv if argv is None else argv)
  try:
    app.run(main, argv=argv, flags_parser=parse_flags)
  except SystemExit:
    raise
  except Exception as e:
    report_and_exit(e, argv)


if __name__ == "__main__":
  run()
