"""The training loop every ganjax trainer shares, and the pieces around it.

:func:`run` drives a jitted step from ``start_step`` to ``config.num_train_steps`` and does what
a researcher relies on the same way for the GAN (:mod:`ganjax.train`), the systems of
:mod:`ganjax.systems` and the domain classifier:

* scalars every ``config.log_every_steps`` (and at the end) to TensorBoard (clu's metric writer)
  and ``WORKDIR/metrics.jsonl``, with steps/s, img/s and a progress line with the ETA;
* a non-finite metric stops training *before* the next checkpoint, so the last good one is kept;
* samples every ``config.sample_every_steps``, evaluation every ``config.eval_every_steps`` and
  checkpoints every ``config.checkpoint_every_steps`` (0 = only at the end; always at the end);
* SIGTERM (preemption) saves a checkpoint at the current step and stops.

The trainer supplies what differs (the step, the checkpoint, the samples, the evaluation) as
functions. Also here: :class:`MetricsBuffer`, :class:`Preemption`, :func:`write_json`,
:func:`format_duration`, :func:`versions`, :func:`git_revision` and
:func:`hide_gpus_from_tensorflow`.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from ganjax import checkpoint as checkpoint_lib
from ganjax import data as data_lib
from ganjax import parallel

# Scalars of every log and evaluation, one JSON object per line.
METRICS_FILE = "metrics.jsonl"

StepFn = Callable[[Any, dict[str, np.ndarray]], tuple[Any, dict[str, jax.Array]]]


class NonFiniteLossError(FloatingPointError):
  """A loss or metric became NaN/inf; training stops before the state can be checkpointed."""


class MetricsBuffer:
  """Holds per-step device metrics until the next log; finds the first non-finite step."""

  def __init__(self):
    self._pending: list[tuple[int, dict[str, jax.Array]]] = []

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append((step, metrics))

  def __len__(self) -> int:
    return len(self._pending)

  def flush(self) -> dict[str, float]:
    """Fetches the pending metrics; raises NonFiniteLossError naming the first bad step."""
    if not self._pending:
      return {}
    fetched = jax.device_get(self._pending)
    self._pending = []
    for step, metrics in fetched:
      bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
      if bad:
        raise NonFiniteLossError(
            f"Non-finite values at step {step}: {bad}. Training stopped; the last good checkpoint "
            "is kept. Lower the learning rates, or add a regularizer."
        )
    keys = fetched[-1][1].keys()
    return {k: float(np.mean([m[k] for _, m in fetched])) for k in keys}


class Preemption:
  """Turns SIGTERM into a flag the loop checks, so it can save a checkpoint before exiting."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # Not the main thread: leave signals alone.
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint and stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False


def format_duration(seconds: float) -> str:
  """``"4m05s"`` or ``"1h02m03s"``."""
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` as JSON atomically (creating the folder)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=str)
  os.replace(tmp, path)


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """``WORKDIR/config.json``: the resolved config (read back by ``--mode=sample|evaluate``)."""
  write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))


def versions() -> dict[str, str]:
  """Versions of Python and the libraries a result depends on."""
  import importlib.metadata as md

  out = {"python": platform.python_version()}
  for dist in (
      "jax",
      "jaxlib",
      "flax",
      "optax",
      "orbax-checkpoint",
      "tensorflow-cpu",
      "tensorflow-datasets",
      "clu",
      "numpy",
  ):
    try:
      out[dist] = md.version(dist)
    except md.PackageNotFoundError:
      pass
  return out


def git_revision() -> str | None:
  """The ganjax checkout's commit (``-dirty`` with uncommitted changes), or None outside git."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    rev = subprocess.run(
        ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None
  return (rev + ("-dirty" if dirty else "")) if rev else None


def devices_info(mesh, parallel_mode: str) -> dict[str, Any]:
  """The devices of a run (platform, kind, count) for ``run_info.json``."""
  devices = mesh.devices.flatten().tolist()
  return {
      "platform": devices[0].platform,
      "kind": devices[0].device_kind,
      "count": len(devices),
      "process_count": jax.process_count(),
      "parallel_mode": parallel_mode,
  }


def provenance(config: ml_collections.ConfigDict, mesh) -> dict[str, Any]:
  """The part of ``run_info.json`` every run has: command, versions, git revision, devices."""
  return {
      "command": sys.argv,
      "versions": versions(),
      "git_revision": git_revision(),
      "devices": devices_info(mesh, config.parallel.get("mode", "global")),
  }


def data_info(source, element_shape, conditional: bool) -> dict[str, Any]:
  """The ``data`` entry of ``run_info.json``: the source's description, size and shapes."""
  return {
      **source.description,
      "name": source.name,
      "num_examples": source.num_examples,
      "element_shape": list(element_shape),
      "num_classes": source.num_classes,
      "conditional": conditional,
  }


def hide_gpus_from_tensorflow() -> None:
  """TensorFlow (tf.data, TensorBoard) must not claim accelerator memory JAX needs."""
  if "tensorflow" not in sys.modules:
    try:
      import tensorflow as tf
    except ImportError:
      return
  else:
    tf = sys.modules["tensorflow"]
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised.
    pass


def start(config: ml_collections.ConfigDict, workdir: str, examples_per_step: int):
  """The start every run shares: ``(mesh, source, checkpointer)``.

  Initialises multi-host JAX when ``config.parallel.distributed``, hides GPUs from TensorFlow,
  creates ``workdir``, builds the mesh (checking that ``config.batch_size`` divides over it), the
  data source of ``config.data`` (this host's share of ``examples_per_step`` per step) and the
  checkpointer of ``WORKDIR/checkpoints``.
  """
  if config.parallel.distributed:
    parallel.initialize_distributed()
  hide_gpus_from_tensorflow()
  os.makedirs(workdir, exist_ok=True)
  mesh = parallel.make_mesh(config.parallel.num_devices or None)
  parallel.check_batch_size(config.batch_size, mesh)
  source = data_lib.create_source(
      config.data,
      seed=config.seed,
      batch_size=examples_per_step,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, "checkpoints"), max_to_keep=config.keep_checkpoints, async_save=False
  )
  return mesh, source, checkpointer


def resume_or_create(checkpointer, abstract_state: Callable[[], Any], create: Callable[[], Any]):
  """``(state, start_step)``: the latest checkpoint's state, or ``create()`` when there is none."""
  start_step = checkpointer.latest_step() or 0
  if not start_step:
    return create(), 0
  state, data_position = checkpointer.restore(start_step, abstract_state())
  logging.info(
      "Resumed from the checkpoint at step %d (data position %s).", start_step, data_position
  )
  return state, start_step


def record_run(config: ml_collections.ConfigDict, workdir: str, info: dict[str, Any], start_step):
  """Writes ``config.json`` and ``run_info.json`` (with ``resumed_from_step``) on the chief, and
  returns the run's metric writer (TensorBoard + log; log only on the other hosts)."""
  is_chief = jax.process_index() == 0
  if is_chief:
    write_config(config, workdir)
    info = {**info, "resumed_from_step": start_step}
    write_json(os.path.join(workdir, "run_info.json"), info)
    logging.info("Run info: %s", json.dumps(info, default=str))
  return metric_writers.create_default_writer(
      workdir, just_logging=not is_chief, asynchronous=False
  )


def data_position(config: ml_collections.ConfigDict, step: int, examples_per_step: int) -> dict:
  """Where the data stream stands after ``step`` steps (saved with every checkpoint)."""
  return {"step": step, "examples_seen": step * examples_per_step, "seed": config.seed}


def _due(step: int, every: int) -> bool:
  return bool(every) and step % every == 0


def run(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    state: Any,
    start_step: int,
    step_fn: StepFn,
    batches: Iterator[dict[str, np.ndarray]],
    save_checkpoint: Callable[[int, Any], None],
    writer: Any,
    examples_per_step: int,
    write_samples: Callable[[int, Any], None] | None = None,
    evaluate: Callable[[int, Any], dict[str, Any]] | None = None,
    progress: Callable[[dict[str, float]], str] | None = None,
) -> Any:
  """Trains from ``start_step`` to ``config.num_train_steps``; returns the last state.

  Args:
    config: Reads ``num_train_steps``, ``log_every_steps``, ``sample_every_steps``,
      ``eval_every_steps`` and ``checkpoint_every_steps``.
    workdir: Where ``metrics.jsonl`` is appended to.
    state: The state at ``start_step`` (fresh or restored).
    start_step: The step ``state`` is at.
    step_fn: ``(state, host_batch) -> (state, metrics)``: one update (placing the batch on the
      mesh and drawing its randomness is the caller's business); metrics stay on the device.
    batches: Host batches from ``start_step`` on.
    save_checkpoint: ``(step, state)``: saves (atomically) the state after ``step`` updates.
    writer: clu metric writer (TensorBoard + log) for the scalars.
    examples_per_step: Examples one step consumes (for img/s).
    write_samples: ``(step, state)``: writes the run's pictures.
    evaluate: ``(step, state) -> scalars``: metrics of the model; the loop logs them, writes
      them to the writer and ``metrics.jsonl``, and with ``config.eval_best_metric`` keeps the
      best-scoring state in ``WORKDIR/checkpoints_best`` (:class:`checkpoint.BestCheckpoint`).
    progress: ``scalars -> str``: the losses part of the progress line.

  Raises:
    NonFiniteLossError: a metric became NaN/inf (before it could reach a checkpoint).
  """
  is_chief = jax.process_index() == 0
  total = config.num_train_steps
  report_progress = periodic_actions.ReportProgress(
      num_train_steps=total, writer=writer, every_steps=config.log_every_steps
  )
  buffer = MetricsBuffer()
  best = None
  if evaluate is not None and config.get("eval_best_metric"):
    best = checkpoint_lib.BestCheckpoint(workdir, config.eval_best_metric)
  step = start_step
  t_start = t_last = time.time()
  step_last = start_step

  with Preemption() as preemption, open(os.path.join(workdir, METRICS_FILE), "a") as metrics_file:

    def record(scalars: dict[str, Any]) -> None:
      now = time.time()
      writer.write_scalars(step, scalars)
      if is_chief:
        metrics_file.write(json.dumps({"step": step, "wall_time": now, **scalars}) + "\n")
        metrics_file.flush()

    while step < total:
      state, metrics = step_fn(state, next(batches))
      step += 1
      if step == start_step + 1:  # Time steps from here on: the first one includes compilation.
        jax.block_until_ready(metrics)
        t_last, step_last = time.time(), step
        logging.info("First step (with compilation) took %.1fs.", t_last - t_start)
      buffer.add(step, metrics)
      report_progress(step)

      last = step == total
      log_now = step % config.log_every_steps == 0 or last
      ckpt_now = last or preemption.requested or _due(step, config.checkpoint_every_steps)
      if log_now or ckpt_now:
        scalars = buffer.flush()  # Raises before a non-finite state can be saved.
        if log_now and scalars:
          now = time.time()
          if step > step_last:
            steps_per_sec = (step - step_last) / max(now - t_last, 1e-9)
          else:  # Only the (compiling) first step ran since the last log.
            steps_per_sec = 1.0 / max(now - t_start, 1e-9)
          t_last, step_last = now, step
          scalars["steps_per_sec"] = steps_per_sec
          scalars["images_per_sec"] = steps_per_sec * examples_per_step
          record(scalars)
          eta = (total - step) / max(steps_per_sec, 1e-9)
          logging.info(
              "step %d/%d | %s | %.2f steps/s %.0f img/s | ETA %s",
              step,
              total,
              progress(scalars) if progress else "",
              steps_per_sec,
              scalars["images_per_sec"],
              format_duration(eta),
          )
      if write_samples is not None and (_due(step, config.sample_every_steps) or last):
        with report_progress.timed("samples"):
          write_samples(step, state)
      if evaluate is not None and (_due(step, config.get("eval_every_steps", 0)) or last):
        with report_progress.timed("eval"):
          scalars = evaluate(step, state)
          if best is not None:
            best.update(step, scalars, state, data_position(config, step, examples_per_step))
          record(scalars)
          logging.info("step %d/%d | eval %s", step, total, json.dumps(scalars))
      if ckpt_now:
        with report_progress.timed("checkpoint"):
          save_checkpoint(step, state)
      if preemption.requested:
        logging.warning("Stopped by SIGTERM at step %d; checkpoint saved.", step)
        break
  if best is not None:
    best.close()
  return state
