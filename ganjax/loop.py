"""The training loop every ganjax trainer shares, and the pieces around it.

:func:`run` drives a jitted step from ``start_step`` to ``config.num_train_steps`` and does what
a researcher relies on the same way for the GAN (:mod:`ganjax.systems.gan`), the systems of
:mod:`ganjax.systems` and the domain classifier:

* scalars every ``config.log_every_steps`` (and at the end) to TensorBoard
  (:mod:`ganjax.summary_writer`) and ``WORKDIR/metrics.jsonl``, with steps/s, img/s and a
  progress line with the ETA;
* a non-finite metric or state stops training *before* the next checkpoint, so the last good one
  is kept (and named);
* samples every ``config.sample_every_steps``, evaluation every ``config.eval_every_steps`` and
  checkpoints every ``config.checkpoint_every_steps`` (0 = only at the end; always at the end);
* SIGTERM (preemption) or SIGINT (Ctrl-C) at any moment saves a checkpoint of the step reached
  and stops; a resume drops the ``metrics.jsonl`` records past its checkpoint;
* in a multi-process run, every process trains and takes part in each checkpoint save (the
  checkpoint reads back with any process layout), process 0 alone writes files (logs, samples,
  evaluations, the run's records) and holds the workdir's lock, and a signal to any process stops
  all after the same step (:class:`StopVote`);
* phases of training (e.g. SRGAN's SRResNet pre-training, then adversarial fine-tuning): where one
  ends, a log, an evaluation and a checkpoint are forced, and every record names its phase.

The start and the record of a run are shared too: :func:`start` (or :func:`open_workdir`) takes
the workdir's lock and refuses a relaunch that would train something else, :func:`record_run`
(or :func:`record_launch`) appends the launch to ``WORKDIR/launches.jsonl`` (:mod:`ganjax.workdir`).

The trainer supplies what differs (the step, the samples, the evaluation) as functions, and its
checkpointer, which the loop saves to with the data position (:func:`data_position`). Also
here: :class:`MetricsBuffer`, :class:`Preemption`, :func:`write_json`, :func:`format_duration`,
:func:`versions`, :func:`git_revision` and :func:`hide_gpus_from_tensorflow`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from ganjax import checkpoint as checkpoint_lib
from ganjax import data as data_lib
from ganjax import logs, parallel
from ganjax import workdir as workdir_lib
from ganjax.errors import UserError, WorkdirError

# Scalars of every log and evaluation, one JSON object per line.
METRICS_FILE = workdir_lib.METRICS_FILE

StepFn = Callable[[Any, dict[str, np.ndarray]], tuple[Any, dict[str, jax.Array]]]


class NonFiniteLossError(UserError, FloatingPointError):
  """A loss or metric became NaN/inf; training stops before the state can be checkpointed."""


# How many steps the host may dispatch ahead of the last one finished (see run()).
MAX_STEPS_AHEAD = 8


class MetricsBuffer:
  """Holds per-step device metrics until the next log; finds the first non-finite step.

  ``last_checkpoint`` (kept up to date by :func:`run`) is the step of the run's last good
  checkpoint, which the error names: None when unknown, 0 when there is none yet.
  """

  def __init__(self):
    self._pending: list[tuple[int, dict[str, Any]]] = []
    self.last_checkpoint: int | None = None

  def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
    self._pending.append((step, metrics))

  def __len__(self) -> int:
    return len(self._pending)

  def wait_for(self, steps_behind: int) -> None:
    """Waits until the step ``steps_behind`` before the newest pending one has run (a no-op when
    fewer are pending): bounds how far the host runs ahead of the devices."""
    if len(self._pending) > steps_behind:
      jax.block_until_ready(self._pending[-1 - steps_behind][1])

  def check(self) -> None:
    """Fetches the pending metrics (they stay pending for the next :meth:`flush`); raises
    NonFiniteLossError naming the first bad step, so no checkpoint is taken past it."""
    if not self._pending:
      return
    self._pending = jax.device_get(self._pending)
    for step, metrics in self._pending:
      bad = {k: float(v) for k, v in metrics.items() if not np.isfinite(v)}
      if bad:
        if self.last_checkpoint is None:
          kept = "the last good checkpoint is kept"
        elif self.last_checkpoint == 0:
          kept = "no checkpoint was saved before it"
        else:
          kept = f"the last good checkpoint (step {self.last_checkpoint}) is kept"
        raise NonFiniteLossError(
          f"Non-finite values at step {step}: {bad}. Training stopped; {kept}. Lower the "
          "learning rates, or add a regularizer."
        )

  def flush(self) -> dict[str, float]:
    """The means of the pending metrics (emptying the buffer); raises as :meth:`check` does."""
    if not self._pending:
      return {}
    self.check()
    fetched, self._pending = self._pending, []
    keys = fetched[-1][1].keys()
    return {k: float(np.mean([m[k] for _, m in fetched])) for k in keys}


class SectionTimes:
  """Wall time the loop spends outside the training steps (samples, evaluation, checkpoints)
  between two progress lines, which :meth:`summary` reports as fractions."""

  def __init__(self):
    self._seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def timed(self, name: str):
    start = time.perf_counter()
    try:
      yield
    finally:
      self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

  def clear(self) -> None:
    """Forgets the times since the last summary."""
    self._seconds = {}

  def summary(self, elapsed: float) -> str:
    """E.g. ``"checkpoint 10%, samples 5%"`` of ``elapsed`` seconds; starts a new interval."""
    parts = [
      f"{name} {100 * seconds / max(elapsed, 1e-9):.0f}%"
      for name, seconds in sorted(self._seconds.items(), key=lambda item: -item[1])
    ]
    self._seconds = {}
    return ", ".join(parts)


class Preemption:
  """Turns SIGTERM and SIGINT into a flag the loop checks, so it saves a checkpoint before exiting.

  ``signal_name`` is the first signal received. After it, SIGINT (Ctrl-C a second time) raises
  KeyboardInterrupt at once, without a checkpoint; a repeated SIGTERM changes nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self.signal_name: str | None = None
    self._previous: dict[int, Any] = {}

  def __enter__(self):
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread: leave signals alone.
        break
    return self

  def _handle(self, signum, frame):
    del frame
    name = signal.Signals(signum).name
    if self.requested:
      if signum == signal.SIGINT:
        raise KeyboardInterrupt(f"Second signal ({name}): stopped without a checkpoint.")
      return
    self.requested, self.signal_name = True, name
    logging.warning(
      "%s received: saving a checkpoint of the step reached and stopping%s.",
      name,
      " (Ctrl-C again stops at once, without it)" if signum == signal.SIGINT else "",
    )

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    self._previous = {}
    return False


class StopVote:
  """Whether to stop for a signal, decided alike by every process of a multi-process run.

  A signal may reach one process only, or the processes at different steps; a checkpoint save
  needs them all, after the same step. So each step, every process casts its flag (a max over the
  devices, dispatched behind the step) and reads the outcome of the previous step's vote: all
  stop after the same step, one step after the first signal, without waiting for the step in
  flight. One process decides alone, at once.
  """

  def __init__(self):
    self.multi_process = jax.process_count() > 1
    self._pending = None
    if self.multi_process:
      from jax.sharding import Mesh, NamedSharding
      from jax.sharding import PartitionSpec as P

      mesh = Mesh(np.asarray(jax.devices()), ("processes",))
      self._sharding = NamedSharding(mesh, P("processes"))
      self._any = jax.jit(jax.numpy.max, out_shardings=NamedSharding(mesh, P()))

  def __call__(self, requested: bool) -> bool:
    """Casts this process's ``requested`` and returns whether any process asked to stop (one
    process: ``requested``; several: as of the previous call)."""
    if not self.multi_process:
      return requested
    local = np.full((jax.local_device_count(),), requested, np.int32)
    votes = jax.make_array_from_process_local_data(self._sharding, local)
    previous, self._pending = self._pending, self._any(votes)
    return previous is not None and bool(previous)


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
  """``WORKDIR/config.json``: the resolved config of the latest launch (read back by
  ``--mode=sample|evaluate``; the earlier launches' configs are in ``launches.jsonl``)."""
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
    "tensorboard",
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
  """TensorFlow (tf.data) must not claim accelerator memory JAX needs.

  ganjax imports TensorFlow only for TFDS input, and :mod:`ganjax.data.tfds` hides the GPUs when
  it does; this covers a TensorFlow that the caller imported before (a notebook). TensorFlow is
  not imported here: its import takes seconds that a run without TFDS input does not need.
  """
  tf = sys.modules.get("tensorflow")
  if tf is None:
    return
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised.
    pass


def start(
  config: ml_collections.ConfigDict,
  workdir: str,
  examples_per_step: int,
  *,
  create_source: Callable[..., Any] | None = None,
):
  """The start every run shares: ``(mesh, source, checkpointer)``.

  Joins the other processes when ``config.parallel.distributed`` (the layout of
  ``config.parallel``, or found: :func:`ganjax.parallel.initialize_distributed`), hides GPUs from
  TensorFlow, opens the workdir (:func:`open_workdir`: lock, checkpointer, relaunch checks), builds
  the mesh (checking that ``config.batch_size`` divides over it) and the data source of
  ``config.data`` (this host's share of ``examples_per_step`` per step):
  :func:`ganjax.data.create_source`, or ``create_source(batch_size=, process_index=,
  process_count=)`` for another kind of source (SRGAN's LR/HR pairs). The trainer releases the
  lock with :func:`ganjax.workdir.releases_lock`.
  """
  if config.parallel.distributed:
    parallel.initialize_distributed(
      config.parallel.get("coordinator_address"),
      config.parallel.get("num_processes"),
      config.parallel.get("process_id"),
    )
  hide_gpus_from_tensorflow()
  checkpointer = open_workdir(config, workdir, max_to_keep=config.keep_checkpoints)
  mesh = parallel.make_mesh(config.parallel.num_devices or None)
  parallel.check_batch_size(config.batch_size, mesh)
  if create_source is None:
    create_source = functools.partial(data_lib.create_source, config.data, seed=config.seed)
  source = create_source(
    batch_size=examples_per_step,
    process_index=jax.process_index(),
    process_count=jax.process_count(),
  )
  return mesh, source, checkpointer


def open_workdir(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  checkpoint_dir: str = "checkpoints",
  max_to_keep: int = 3,
) -> checkpoint_lib.Checkpointer:
  """Creates ``workdir``, takes its lock and returns the checkpointer of ``WORKDIR/checkpoint_dir``.

  The lock comes first: opening the checkpointer cleans up unfinished checkpoints, which may be
  another run's save in progress. Then :func:`ganjax.workdir.check_relaunch` refuses a config that
  would silently train something else, or a ``num_train_steps`` below the checkpoint's step. Both
  run on process 0; the other processes stop too when it refuses.

  Raises:
    WorkdirError: the workdir is locked by another run, or the relaunch is refused.
  """
  os.makedirs(workdir, exist_ok=True)
  _on_chief(lambda: workdir_lib.lock(workdir), workdir)
  checkpointer = checkpoint_lib.Checkpointer(
    os.path.join(workdir, checkpoint_dir), max_to_keep=max_to_keep, async_save=False
  )
  try:
    _on_chief(
      lambda: workdir_lib.check_relaunch(config, workdir, checkpointer.latest_step() or 0),
      workdir,
    )
  except Exception:
    checkpointer.close()
    raise
  return checkpointer


def _on_chief(fn: Callable[[], Any], workdir: str) -> None:
  """Runs ``fn`` on process 0; when it raises there, every process raises (none waits forever)."""
  if jax.process_count() == 1:
    fn()
    return
  from jax.experimental import multihost_utils

  error = None
  if jax.process_index() == 0:
    try:
      fn()
    except Exception as e:  # Broadcast the failure before raising it.
      error = e
  failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
  if error is not None:
    raise error
  if int(failed):
    raise WorkdirError(f"Process 0 refused to start on {workdir}; its log says why.")


def record_launch(
  config: ml_collections.ConfigDict,
  workdir: str,
  start_step: int,
  info: dict[str, Any] | None = None,
) -> None:
  """On process 0: appends the launch to ``WORKDIR/launches.jsonl``, then writes
  ``config.json`` (in this order: the launch's config changes are taken against the old one)."""
  if jax.process_index() == 0:
    workdir_lib.record_launch(config, workdir, start_step, info)
    write_config(config, workdir)


def skip_damaged_checkpoints(config: ml_collections.ConfigDict | None) -> bool:
  """``config.resume.skip_damaged_checkpoints``; False for configs without ``resume``."""
  if config is None:
    return False
  return bool(config.get("resume", {}).get("skip_damaged_checkpoints", False))


def resume_or_create(
  checkpointer,
  abstract_state: Callable[[], Any],
  create: Callable[[], Any],
  *,
  config: ml_collections.ConfigDict | None = None,
):
  """``(state, start_step)``: the latest checkpoint's state, or ``create()`` when there is none.

  A damaged latest checkpoint (unreadable, or holding NaN/inf) stops the run with a
  ``CheckpointError`` naming its step, unless ``config.resume.skip_damaged_checkpoints``: then
  the newest intact one is restored (:meth:`ganjax.checkpoint.Checkpointer.restore_latest`).
  """
  if not checkpointer.latest_step():
    return create(), 0
  start_step, state, position = checkpointer.restore_latest(
    abstract_state(), skip_damaged=skip_damaged_checkpoints(config)
  )
  logging.info("Resumed from the checkpoint at step %d (data position %s).", start_step, position)
  return state, start_step


def record_run(config: ml_collections.ConfigDict, workdir: str, info: dict[str, Any], start_step):
  """Records the launch (:func:`record_launch`: ``launches.jsonl``, ``config.json``) and writes
  ``run_info.json`` (with ``resumed_from_step``) on the chief, and returns the run's metric
  writer (TensorBoard + log; log only on the other hosts)."""
  is_chief = jax.process_index() == 0
  record_launch(config, workdir, start_step, info)
  if is_chief:
    info = {**info, "resumed_from_step": start_step}
    write_json(os.path.join(workdir, "run_info.json"), info)
    logging.info("Run info: %s", json.dumps(info, default=str))
  return logs.create_writer(workdir, is_chief)


def data_position(config: ml_collections.ConfigDict, step: int, examples_per_step: int) -> dict:
  """Where the data stream stands after ``step`` steps (saved with every checkpoint)."""
  return {"step": step, "examples_seen": step * examples_per_step, "seed": config.seed}


def drop_metrics_after(workdir: str, step: int) -> int:
  """Drops the records of ``WORKDIR/metrics.jsonl`` past ``step`` (and lines cut by a kill),
  rewriting the file atomically; returns how many lines went.

  A run resumed from the checkpoint at ``step`` logs the later steps again, so after any sequence
  of kills and resumes the file holds each step once.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    if isinstance(record, dict) and record.get("step", 0) <= step:
      kept.append(line if line.endswith("\n") else line + "\n")
  dropped = len(lines) - len(kept)
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)
    logging.info(
      "Dropped %d lines past step %d from %s: the run logs those steps again.",
      dropped,
      step,
      path,
    )
  return dropped


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
  writer: Any,
  examples_per_step: int,
  checkpointer: checkpoint_lib.Checkpointer | None = None,
  save_checkpoint: Callable[[int, Any], Any] | None = None,
  write_samples: Callable[[int, Any], None] | None = None,
  evaluate: Callable[[int, Any], dict[str, Any]] | None = None,
  progress: Callable[[dict[str, float]], str] | None = None,
  phase_ends: Sequence[int] = (),
  phase_of: Callable[[int], str] | None = None,
) -> Any:
  """Trains from ``start_step`` to ``config.num_train_steps``; returns the last state.

  SIGTERM or SIGINT at any moment (during a step, a log, sampling, evaluation or a save) ends the
  step in progress, saves a checkpoint of it and returns: the decision to save is taken after
  everything else the step does. ``metrics.jsonl`` first loses its records past ``start_step``
  (:func:`drop_metrics_after`), so a resumed run does not log a step twice.

  Args:
    config: Reads ``num_train_steps``, ``log_every_steps``, ``sample_every_steps``,
      ``eval_every_steps``, ``checkpoint_every_steps`` and ``eval_best_metric``.
    workdir: Where ``metrics.jsonl`` is appended to.
    state: The state at ``start_step`` (fresh, or restored from the checkpoint of that step).
    start_step: The step ``state`` is at.
    step_fn: ``(state, host_batch) -> (state, metrics)``: one update (placing the batch on the
      mesh and drawing its randomness is the caller's business); metrics stay on the device.
    batches: Host batches from ``start_step`` on.
    writer: the metric writer (:func:`ganjax.logs.create_writer`) for the scalars.
    examples_per_step: Examples one step consumes (for img/s and the data position).
    checkpointer: Saves (atomically) the state after a step with its :func:`data_position`, and
      raises rather than write a non-finite state (:meth:`ganjax.checkpoint.Checkpointer.save`).
      The caller waits for and closes it after the run.
    save_checkpoint: ``(step, state)``: instead of ``checkpointer``, for a checkpoint that holds
      more than the data position.
    write_samples: ``(step, state)``: writes the run's pictures.
    evaluate: ``(step, state) -> scalars``: metrics of the model; the loop logs them, writes
      them to the writer and ``metrics.jsonl``, and with ``config.eval_best_metric`` keeps the
      best-scoring state in ``WORKDIR/checkpoints_best`` (:class:`checkpoint.BestCheckpoint`).
    progress: ``scalars -> str``: the losses part of the progress line.
    phase_ends: Steps after which a phase of training ends (e.g. SRGAN's pre-training): there the
      loop logs, evaluates and saves a checkpoint whatever the cadences say.
    phase_of: ``step -> name`` of the phase a step belongs to; every ``metrics.jsonl`` record
      (training scalars and evaluations) gets it as ``"phase"``, and so do the log lines.

  Raises:
    NonFiniteLossError: a metric became NaN/inf (before it could reach a checkpoint).
    ganjax.checkpoint.NonFiniteStateError: the state became NaN/inf (it is not saved).
    TypeError: neither or both of ``checkpointer`` and ``save_checkpoint`` are given.
  """
  if (checkpointer is None) == (save_checkpoint is None):
    raise TypeError("loop.run takes one of checkpointer= and save_checkpoint=.")
  if save_checkpoint is None:

    def save_checkpoint(step: int, state: Any) -> Any:
      return checkpointer.save(step, state, data_position(config, step, examples_per_step))

  is_chief = jax.process_index() == 0
  total = config.num_train_steps
  phase_ends = frozenset(int(s) for s in phase_ends)
  sections = SectionTimes()
  stop_vote = StopVote()
  buffer = MetricsBuffer()
  buffer.last_checkpoint = start_step
  best = None
  if evaluate is not None and config.get("eval_best_metric"):
    best = checkpoint_lib.BestCheckpoint(workdir, config.eval_best_metric)
  step = start_step
  t_first = t_last = time.time()  # t_first: when the last first step (of the run or a phase) began.
  step_last = start_step
  if is_chief:
    drop_metrics_after(workdir, start_step)

  # The other processes of a multi-process run write no files.
  metrics_path = os.path.join(workdir, METRICS_FILE)
  with (
    Preemption() as preemption,
    open(metrics_path, "a") if is_chief else contextlib.nullcontext() as metrics_file,
    contextlib.closing(best) if best is not None else contextlib.nullcontext(),
  ):

    def record(scalars: dict[str, Any]) -> None:
      now = time.time()
      writer.write_scalars(step, scalars)  # Numbers only: the phase goes to metrics.jsonl.
      if is_chief:
        phase = {"phase": phase_of(step)} if phase_of is not None else {}
        metrics_file.write(json.dumps({"step": step, "wall_time": now, **phase, **scalars}) + "\n")
        metrics_file.flush()

    def where() -> str:
      """``"step 5/10"``, with ``" [phase]"`` when the run has phases."""
      return f"step {step}/{total}" + (f" [{phase_of(step)}]" if phase_of is not None else "")

    def log() -> None:
      """Writes the means of the buffered metrics, with steps/s, img/s and the ETA."""
      nonlocal t_last, step_last
      scalars = buffer.flush()
      if not scalars:
        return
      now = time.time()
      if step > step_last:
        steps_per_sec = (step - step_last) / max(now - t_last, 1e-9)
      else:  # Only a (compiling) first step ran since the last log.
        steps_per_sec = 1.0 / max(now - t_first, 1e-9)
      outside_steps = sections.summary(now - t_last)
      t_last, step_last = now, step
      scalars["steps_per_sec"] = steps_per_sec
      scalars["images_per_sec"] = steps_per_sec * examples_per_step
      record(scalars)
      eta = (total - step) / max(steps_per_sec, 1e-9)
      logging.info(
        "%s | %s | %.2f steps/s %.0f img/s | ETA %s%s",
        where(),
        progress(scalars) if progress else "",
        steps_per_sec,
        scalars["images_per_sec"],
        format_duration(eta),
        f" | {outside_steps}" if outside_steps else "",
      )

    stopped = False
    while step < total:
      t_step = time.time()
      state, metrics = step_fn(state, next(batches))
      step += 1
      new_phase = step - 1 in phase_ends and step > start_step + 1
      if step == start_step + 1 or new_phase:
        # Its time includes compilation (a phase may run another step): time steps from here on.
        jax.block_until_ready(metrics)
        t_first, t_last, step_last = t_step, time.time(), step
        sections.clear()  # The phase end's evaluation and checkpoint are in no interval.
        first = (
          f"First step of phase {phase_of(step)!r}" if new_phase and phase_of else "First step"
        )
        logging.info("%s (with compilation) took %.1fs.", first, t_last - t_step)
      buffer.add(step, metrics)
      # Between logs the host would dispatch steps without waiting for any: with many in flight,
      # XLA:CPU's all-reduce over 8 simulated devices stalls ("only 7 of 8 threads arrived") and
      # aborts (the 2-D GAN logging every 1,500 steps: 32 steps ahead still stalled, 16 and 8 ran
      # through). A step waits for the one MAX_STEPS_AHEAD before it (already done when the
      # devices keep up), so the queue stays short and the devices stay busy.
      buffer.wait_for(MAX_STEPS_AHEAD)

      last = step == total
      phase_end = step in phase_ends
      if step % config.log_every_steps == 0 or last or phase_end:
        log()  # Raises on a non-finite metric.
      if write_samples is not None and (_due(step, config.sample_every_steps) or last):
        with sections.timed("samples"):
          write_samples(step, state)
      if evaluate is not None and (
        _due(step, config.get("eval_every_steps", 0)) or last or phase_end
      ):
        with sections.timed("eval"):
          scalars = evaluate(step, state)
          if best is not None:
            best.update(step, scalars, state, data_position(config, step, examples_per_step))
          record(scalars)
          logging.info("%s | eval %s", where(), json.dumps(scalars))
      # Decided last, so a signal that came during anything above still saves this step.
      stopped = stop_vote(preemption.requested)
      if last or stopped or phase_end or _due(step, config.checkpoint_every_steps):
        buffer.check()  # A non-finite metric must not reach a checkpoint.
        with sections.timed("checkpoint"):
          save_checkpoint(step, state)
        buffer.last_checkpoint = step
        if not stop_vote.multi_process:  # A signal during the save: this step is saved, stop.
          stopped = preemption.requested
      if phase_end and not last and phase_of is not None:
        logging.info("Step %d ends phase %r; %r follows.", step, phase_of(step), phase_of(step + 1))
      if stopped:
        log()  # The metrics since the last log would be lost otherwise.
        logging.warning(
          "Stopped by %s at step %d; checkpoint saved.",
          preemption.signal_name or "a signal to another process",
          step,
        )
        break
    if preemption.requested and not stopped:
      logging.warning(
        "%s came after the last step; its checkpoint is saved.", preemption.signal_name
      )
  return state
