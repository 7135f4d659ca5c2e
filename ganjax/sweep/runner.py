"""What one job of a sweep runs: :class:`RunJob`, which trains one run in its workdir.

The job pins itself to its cores (``os.sched_setaffinity``) and device (``CUDA_VISIBLE_DEVICES``)
before JAX starts: XLA sizes its CPU thread pool by the affinity, so a local run uses only its own
cores. It records its progress in ``RUN_WORKDIR/sweep_run.json`` (:data:`status.RUN_FILE`):
``state`` (running, finished, failed, interrupted), start and end times, the wall time over all
attempts, the job id, host, process, cores, the step reached, and for a failure the error and the
end of its traceback. In a job of several tasks (Slurm ``nodes x tasks_per_node``) every task
trains as one process of a multi-host run (``config.parallel.distributed``, the layout found by
:func:`ganjax.parallel.initialize_distributed`) and only task 0 writes the record.

Preemption and time limits: ganjax's training loop saves a checkpoint and stops on SIGTERM
(:class:`ganjax.loop.Preemption`), and training resumes from the workdir's latest checkpoint. A
job that nears its time limit gets submitit's signal (USR2): the job asks the loop to stop the
same way (before the loop runs, it stops at once), then hands over to submitit, which requeues the
job (:class:`RunJob` is a submitit ``Checkpointable``); the requeued job resumes the run. SIGTERM or
SIGINT before the loop runs stops the run at once (recorded as interrupted).
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from collections.abc import Sequence
from typing import Any

from absl import logging
from submitit import helpers

from ganjax import errors
from ganjax.sweep import spec, status

# Lines of a failure's traceback kept in sweep_run.json.
TRACEBACK_LINES = 30


class RunJob(helpers.Checkpointable):
  """A submitit job that trains ``run`` in ``run_dir``; see :func:`train_run`.

  ``base_dir``: the folder a relative config path is relative to (where the sweep was started).
  ``cpus`` / ``gpu``: the cores and the GPU this job may use (local launcher), None: all.
  """

  def __init__(
    self,
    run: spec.Run,
    run_dir: str,
    base_dir: str,
    launcher: str,
    cpus: Sequence[int] | None = None,
    gpu: str | None = None,
  ):
    self.run = run
    self.run_dir = run_dir
    self.base_dir = base_dir
    self.launcher = launcher
    self.cpus = None if cpus is None else sorted(cpus)
    self.gpu = gpu

  def __call__(self) -> dict[str, Any]:
    return train_run(
      self.run,
      self.run_dir,
      base_dir=self.base_dir,
      launcher=self.launcher,
      cpus=self.cpus,
      gpu=self.gpu,
    )


def train_run(
  run: spec.Run,
  run_dir: str,
  *,
  base_dir: str | None = None,
  launcher: str | None = None,
  cpus: Sequence[int] | None = None,
  gpu: str | None = None,
) -> dict[str, Any]:
  """Trains ``run`` in ``run_dir`` (resuming from its latest checkpoint), recording its state.

  Returns ``{"name", "state", "step"}``: state ``finished``, or ``interrupted`` when a signal
  stopped training (its checkpoint saved). A failure is recorded and re-raised.
  """
  if cpus:
    os.sched_setaffinity(0, cpus)
  if gpu is not None:
    os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
  from ganjax import parallel  # After the affinity and GPU are set (it imports jax).

  env = parallel.submitit_job_environment()
  chief = env is None or env.global_rank == 0
  num_tasks = 1 if env is None else env.num_tasks
  record = _Record(run, run_dir, env, launcher, chief)
  record.start(cpus=sorted(os.sched_getaffinity(0)), gpu=gpu)
  early_stop = _StopOutsideTraining()
  time_limit = _TimeLimit(env)
  try:
    from ganjax import api

    config = api.load_config(_resolve(run.config, base_dir), **run.overrides)
    if num_tasks > 1:
      config.parallel.distributed = True
    record.total = int(config.num_train_steps)
    api.train(config, run_dir)
  except _Requeue:
    record.end(status.INTERRUPTED, error="stopped by the job's time limit before training")
    time_limit.restore()
    time_limit.requeue()  # Exits.
    raise
  except (KeyboardInterrupt, SystemExit) as e:
    record.end(status.INTERRUPTED, error=f"{type(e).__name__}: {e}".rstrip(": "))
    raise
  except BaseException as e:
    record.end(status.FAILED, error=_describe(e), trace=traceback.format_exc())
    raise
  finally:
    time_limit.restore()
    early_stop.restore()
  step = status.read_progress(run_dir).step
  if step is not None and record.total is not None and step >= record.total:
    record.end(status.FINISHED, step=step)
    return {"name": run.name, "state": status.FINISHED, "step": step}
  why = "the job's time limit" if time_limit.signalled else "a signal (SIGTERM/SIGINT)"
  record.end(status.INTERRUPTED, step=step, error=f"stopped by {why} at step {step}")
  time_limit.requeue()  # Exits when submitit requeues the job.
  return {"name": run.name, "state": status.INTERRUPTED, "step": step}


def _resolve(config: str, base_dir: str | None) -> str:
  path, sep, arg = config.partition(":")
  if base_dir and not os.path.isabs(path):
    path = os.path.join(base_dir, path)
  return f"{path}{sep}{arg}"


def _describe(error: BaseException) -> str:
  """One line: a user error's message, else the exception's type and message."""
  text = str(error).strip()
  if isinstance(error, errors.UserError):
    return text.splitlines()[0] if text else type(error).__name__
  first = text.splitlines()[0] if text else ""
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


class _Record:
  """``RUN_WORKDIR/sweep_run.json``, written by the chief task only."""

  def __init__(self, run: spec.Run, run_dir: str, env: Any, launcher: str | None, chief: bool):
    self.path = os.path.join(run_dir, status.RUN_FILE)
    self.run_dir = run_dir
    self.chief = chief
    self.total: int | None = None
    previous = status.read_marker(run_dir) or {}
    self.wall_before = float(previous.get("wall_s") or 0.0)
    last = status.read_progress(run_dir).wall_time
    if previous.get("state") == status.RUNNING and previous.get("started_ts") and last:
      # That attempt ended without a word (killed): count it until its last record.
      before = float(previous.get("wall_s_before") or 0.0)
      self.wall_before = before + max(0.0, last - float(previous["started_ts"]))
    self.data: dict[str, Any] = {
      **run.to_json(),
      "state": status.RUNNING,
      "launcher": launcher or (env.cluster if env is not None else "python"),
      "job_id": None if env is None else str(env.job_id),
      "host": socket.gethostname(),
      "pid": os.getpid(),
      "pid_start": status.process_start(os.getpid()),
      "attempts": int(previous.get("attempts") or 0) + 1,
      "log": _log_path(env),
    }

  def start(self, cpus: list[int], gpu: str | None) -> None:
    self.started = time.time()
    self.data.update(
      cpus=cpus,
      gpu=gpu,
      started=status.now_iso(),
      started_ts=self.started,
      wall_s_before=self.wall_before,
      wall_s=self.wall_before,
    )
    self._write()

  def end(
    self, state: str, step: int | None = None, error: str | None = None, trace: str | None = None
  ) -> None:
    if step is None:
      step = status.read_progress(self.run_dir).step
    self.data.update(
      state=state,
      step=step,
      num_train_steps=self.total,
      ended=status.now_iso(),
      wall_s=self.wall_before + time.time() - self.started,
      error=error,
      traceback=trace.strip().splitlines()[-TRACEBACK_LINES:] if trace else None,
    )
    self._write()

  def _write(self) -> None:
    if self.chief:
      status.write_json(self.path, self.data)


def _log_path(env: Any) -> str | None:
  """The job's stderr log (submitit's logs folder), where the run's progress lines go."""
  if env is None or env.cluster == "debug":
    return None
  try:
    return str(env.paths.stderr)
  except (KeyError, ValueError):
    return None


class _Requeue(BaseException):  # noqa: N818 (not an error: unwinds the run to requeue its job)
  """The time-limit signal came before the training loop ran: requeue the job at once."""


class _StopOutsideTraining:
  """SIGTERM or SIGINT before the training loop runs (start-up, compilation) stops the run at
  once (KeyboardInterrupt: recorded as interrupted); inside the loop, the loop's own handler
  saves a checkpoint first. (submitit's job ignores SIGTERM, and a local job inherits an
  ignored SIGINT from the sweep process.)"""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._previous = {}
    for signum in self.SIGNALS:
      try:
        self._previous[signum] = signal.signal(signum, self._handle)
      except ValueError:  # Not the main thread.
        break

  def _handle(self, signum, frame) -> None:
    del frame
    raise KeyboardInterrupt(f"{signal.Signals(signum).name} outside the training loop")

  def restore(self) -> None:
    for signum, previous in self._previous.items():
      signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    self._previous = {}


class _TimeLimit:
  """Turns submitit's time-limit signal (USR2) into a stop with a checkpoint, then a requeue.

  submitit's own handler would requeue at once, in the middle of a training step; instead the
  signal asks the training loop to stop (its SIGTERM handler, :class:`ganjax.loop.Preemption`),
  and :meth:`requeue` runs submitit's handler once the checkpoint is saved.
  """

  def __init__(self, env: Any):
    self.signalled = False
    self._signum = None
    self._handler = None
    if env is None or env.cluster not in ("slurm", "local"):
      return
    try:
      self._signum = env._usr_sig()
      self._handler = signal.signal(self._signum, self._on_signal)
    except (RuntimeError, ValueError):  # Unknown signal name, or not the main thread.
      self._signum = None

  def _on_signal(self, signum, frame) -> None:
    self.signalled = True
    stop = signal.getsignal(signal.SIGTERM)
    if not callable(stop) or isinstance(getattr(stop, "__self__", None), _StopOutsideTraining):
      logging.warning("%s: the job's time limit is near; requeuing.", signal.Signals(signum).name)
      raise _Requeue()
    logging.warning(
      "%s: the job's time limit is near; saving a checkpoint, then requeuing.",
      signal.Signals(signum).name,
    )
    stop(signal.SIGTERM, frame)  # The training loop's: it saves a checkpoint and returns.

  def restore(self) -> None:
    if self._signum is not None:
      signal.signal(self._signum, self._handler)

  def requeue(self) -> None:
    """After a stop for the time limit: submitit's handler requeues the job and exits."""
    if self.signalled and callable(self._handler):
      self._handler(self._signum, None)
