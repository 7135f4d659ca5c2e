"""Launching a sweep's runs through submitit, and waiting for them.

* ``local``: ``jobs`` runs at a time on this machine, each a submitit local job pinned to its own
  share of the cores this process may use (``os.sched_setaffinity``, disjoint sets) and, where
  GPUs exist, to its own GPU (``CUDA_VISIBLE_DEVICES``), so two runs never fight over a core.
  XLA sizes its CPU thread pool by the affinity, so pinning is all a job needs.
* ``slurm``: one job array for the runs to start (``--slurm.*``: partition, time, cpus and GPUs
  per task, nodes and tasks per node for multi-host runs, array parallelism).
* ``debug``: the runs one after another in this process (submitit's debug executor), for
  stepping through a run; a failure opens the debugger.

:func:`launch` is idempotent: finished runs are skipped, interrupted ones resume from their
checkpoints, a run whose job is still pending or running is not submitted again, and failed ones
are reported (with the tail of their log) and rerun only when asked (``retry_failed``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import logging

from ganjax import errors
from ganjax.sweep import runner, spec, status

LAUNCHERS = ("local", "debug", "slurm")
# Local jobs never time out (submitit's local default is 2 minutes).
LOCAL_TIMEOUT_MIN = 60 * 24 * 365
# Time-limit requeues a Slurm run may go through (submitit's default is 3).
SLURM_MAX_REQUEUES = 50
# A line with the counts even when nothing changed, so a long wait shows it is alive.
HEARTBEAT_S = 600.0
# Lines of a failed run's log shown in the report.
LOG_TAIL_LINES = 15
_ENDED = (status.FINISHED, status.FAILED, status.INTERRUPTED)


class LaunchError(errors.UserError, ValueError):
  """A launcher option is invalid (the message names it and the valid values)."""


def check_launcher(launcher: str) -> None:
  if launcher not in LAUNCHERS:
    raise LaunchError(f"--launcher={launcher}: unknown launcher; valid: {', '.join(LAUNCHERS)}.")


# ---------------------------------------------------------------------------------------------
# Slurm options.


@dataclasses.dataclass
class SlurmOptions:
  """``--slurm.*``: what each job of the array asks for."""

  partition: str | None = None
  time_min: int = 60
  cpus_per_task: int | None = None
  gpus_per_task: int | None = None
  nodes: int = 1
  tasks_per_node: int = 1
  array_parallelism: int = 256
  mem_gb: float | None = None
  account: str | None = None
  qos: str | None = None

  def check(self) -> None:
    for name in ("cpus_per_task", "gpus_per_task", "nodes", "tasks_per_node", "array_parallelism"):
      value = getattr(self, name)
      if value is not None and value < (0 if name == "gpus_per_task" else 1):
        raise LaunchError(f"--slurm.{name} must be >= 1, got {value}.")
    if self.time_min < 1:
      raise LaunchError(f"--slurm.time must be at least 1 minute, got {self.time_min} minutes.")


def parse_time(text: str | int) -> int:
  """Minutes of a Slurm time limit: ``90``, ``"1:30:00"`` (h:m:s), ``"30:00"`` (m:s),
  ``"2-00:00:00"`` / ``"2-12"`` (days-hours[:m[:s]])."""
  value = str(text).strip()
  match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value)
  if not match:
    raise LaunchError(
      f"--slurm.time={value}: not a time limit; use minutes (90), H:MM:SS (1:30:00) or "
      "D-HH:MM:SS (2-00:00:00)."
    )
  days, a, b, c = match.groups()
  if days is not None:
    hours, minutes, seconds = int(a), int(b or 0), int(c or 0)
  elif c is not None:
    hours, minutes, seconds = int(a), int(b), int(c)
  elif b is not None:
    hours, minutes, seconds = 0, int(a), int(b)
  else:
    hours, minutes, seconds = 0, int(a), 0
  total = (int(days or 0) * 24 + hours) * 60 + minutes + (1 if seconds else 0)
  if total < 1:
    raise LaunchError(f"--slurm.time={value}: must be at least one minute.")
  return total


# ---------------------------------------------------------------------------------------------
# Local slots: disjoint cores (and a GPU each).


@dataclasses.dataclass(frozen=True)
class Slot:
  index: int
  cpus: tuple[int, ...]
  gpu: str | None = None


def detect_gpus() -> list[str]:
  """The GPUs this machine shows: ``CUDA_VISIBLE_DEVICES`` when set, else ``nvidia-smi -L``
  (no JAX import: the sweep process must not take a GPU)."""
  visible = os.environ.get("CUDA_VISIBLE_DEVICES")
  if visible is not None:
    return [g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1"]
  if shutil.which("nvidia-smi") is None:
    return []
  try:
    out = subprocess.run(
      ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
  except (OSError, subprocess.TimeoutExpired):
    return []
  return [str(i) for i, line in enumerate(re.findall(r"^GPU \d+", out, re.MULTILINE))]


def make_slots(
  jobs: int | None, cpus: Sequence[int] | None = None, gpus: Sequence[str] | None = None
) -> list[Slot]:
  """``jobs`` slots (default: one per GPU, else 1) over ``cpus`` (default: this process's
  affinity), split into disjoint, contiguous, near-equal sets."""
  cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
  gpus = list(detect_gpus() if gpus is None else gpus)
  if jobs is None:
    jobs = max(1, len(gpus))
  if jobs < 1:
    raise LaunchError(f"--jobs must be >= 1, got {jobs}.")
  if jobs > len(cpus):
    raise LaunchError(
      f"--jobs={jobs} but this process may use {len(cpus)} CPU cores ({_ranges(cpus)}), and two "
      f"runs must not share a core; use --jobs <= {len(cpus)}."
    )
  if gpus and jobs > len(gpus):
    raise LaunchError(
      f"--jobs={jobs} but {len(gpus)} GPUs are visible ({', '.join(gpus)}), one per run; use "
      f"--jobs <= {len(gpus)} (or hide the GPUs with CUDA_VISIBLE_DEVICES= to train on CPUs)."
    )
  n = len(cpus)
  return [
    Slot(i, tuple(cpus[i * n // jobs : (i + 1) * n // jobs]), gpus[i] if gpus else None)
    for i in range(jobs)
  ]


def _ranges(cpus: Sequence[int]) -> str:
  """``0-3,8`` for cores 0, 1, 2, 3, 8."""
  parts, start = [], None
  for i, cpu in enumerate(cpus):
    if start is None:
      start = cpu
    if i + 1 == len(cpus) or cpus[i + 1] != cpu + 1:
      parts.append(str(start) if start == cpu else f"{start}-{cpu}")
      start = None
  return ",".join(parts)


# ---------------------------------------------------------------------------------------------
# Executors.


def make_executor(launcher: str, folder: str, slurm: SlurmOptions | None = None, name: str = ""):
  """submitit's executor for ``launcher``, with the cluster named (submitit would pick Slurm
  wherever ``srun`` exists, even without a running cluster)."""
  import submitit

  check_launcher(launcher)
  if launcher == "slurm":
    if shutil.which("sbatch") is None:
      raise LaunchError("--launcher=slurm: sbatch is not installed here (no Slurm client).")
    slurm = slurm or SlurmOptions()
    slurm.check()
    executor = submitit.AutoExecutor(
      folder=folder, cluster="slurm", slurm_max_num_timeout=SLURM_MAX_REQUEUES
    )
    params: dict[str, Any] = dict(
      name=name or "ganjax-sweep",
      timeout_min=slurm.time_min,
      nodes=slurm.nodes,
      tasks_per_node=slurm.tasks_per_node,
      slurm_array_parallelism=slurm.array_parallelism,
    )
    optional = dict(
      cpus_per_task=slurm.cpus_per_task,
      slurm_partition=slurm.partition,
      slurm_gpus_per_task=slurm.gpus_per_task,
      mem_gb=slurm.mem_gb,
      slurm_account=slurm.account,
      slurm_qos=slurm.qos,
    )
    params.update({k: v for k, v in optional.items() if v is not None})
    executor.update_parameters(**params)
    return executor
  executor = submitit.AutoExecutor(folder=folder, cluster=launcher)
  if launcher == "local":
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, tasks_per_node=1)
  return executor


# ---------------------------------------------------------------------------------------------
# The launch.


@dataclasses.dataclass
class Options:
  launcher: str = "local"
  jobs: int | None = None
  retry_failed: bool = False
  wait: bool = True
  poll_s: float | None = None
  slurm: SlurmOptions = dataclasses.field(default_factory=SlurmOptions)


class _Stop(Exception):
  """SIGTERM reached the sweep process."""


def launch(
  workdir: str,
  runs: list[spec.Run],
  sweep_file: str,
  options: Options,
  collect: Callable[[str], Any] | None = None,
) -> int:
  """Starts what is left of the sweep ``runs`` in ``workdir`` and waits for it (unless
  ``options.wait`` is off); then, once no run is pending or running, calls ``collect(workdir)``.

  Returns the exit status: 0 when every run finished (or, not waiting, when all was submitted),
  1 when some failed or were interrupted.
  """
  check_launcher(options.launcher)
  workdir = os.path.abspath(workdir)
  slots = make_slots(options.jobs) if options.launcher == "local" else []
  if options.launcher == "slurm":
    options.slurm.check()
  with status.locked(workdir):
    return _Launch(workdir, runs, sweep_file, options, slots).run(collect)


class _Launch:
  def __init__(self, workdir, runs, sweep_file, options, slots):
    self.workdir = workdir
    self.runs = runs
    self.by_name = {r.name: r for r in runs}
    self.options = options
    self.slots = slots
    self.logs_dir = os.path.join(workdir, status.LOGS_DIR)
    self.base_dir = os.getcwd()
    self.poll_s = options.poll_s or (5.0 if options.launcher == "slurm" else 1.0)
    self.state = status.read_sweep(workdir) or {}
    self.state.update(
      sweep=sweep_file,
      sweep_path=os.path.abspath(sweep_file),
      launcher=options.launcher,
      runs=[r.to_json() for r in runs],
      updated=status.now_iso(),
    )
    self.state.setdefault("created", status.now_iso())
    self.state.setdefault("jobs", {})
    self._save()
    self.t0 = time.time()
    self.local_jobs: dict[int, tuple[str, Any]] = {}  # slot -> (run, submitit job)
    self.previous: dict[str, str] = {}
    self.last_line = 0.0

  def _save(self) -> None:
    self.state["updated"] = status.now_iso()
    status.write_json(os.path.join(self.workdir, status.SWEEP_FILE), self.state)

  def _statuses(self) -> list[status.RunStatus]:
    return status.sweep_status(self.workdir, list(self.by_name), self.state, self.logs_dir)

  # -- the plan --------------------------------------------------------------------------------

  def run(self, collect) -> int:
    statuses = self._statuses()
    self.previous = {s.name: s.state for s in statuses}
    by_state: dict[str, list[str]] = {state: [] for state in status.STATES}
    for s in statuses:
      by_state[s.state].append(s.name)
    todo_states = [status.NEW, status.INTERRUPTED]
    if self.options.retry_failed:
      todo_states.append(status.FAILED)
    todo = [s.name for s in statuses if s.state in todo_states]
    logging.info(
      "Sweep %s: %d runs in %s; %d finished (skipped), %d pending or running (not submitted "
      "again), %d failed%s, %d interrupted (resuming), %d new.",
      self.state["sweep"],
      len(statuses),
      self.workdir,
      len(by_state[status.FINISHED]),
      len(by_state[status.PENDING]) + len(by_state[status.RUNNING]),
      len(by_state[status.FAILED]),
      " (rerunning: --retry_failed)" if self.options.retry_failed else "",
      len(by_state[status.INTERRUPTED]),
      len(by_state[status.NEW]),
    )
    if by_state[status.FAILED] and not self.options.retry_failed:
      failed = [s for s in statuses if s.state == status.FAILED]
      self._report(failed, "not rerun: fix the cause, then add --retry_failed")
    self._warn_unknown_runs()
    if todo:
      logging.info("Starting %d runs on the %s launcher.", len(todo), self.options.launcher)
    previous_term = signal.getsignal(signal.SIGTERM)
    with contextlib.suppress(ValueError):
      signal.signal(signal.SIGTERM, _raise_stop)
    try:
      if self.options.launcher == "slurm":
        self._submit_slurm(todo)
        if self.options.wait:
          self._wait()
      elif self.options.launcher == "local":
        self._run_local(todo)
      else:
        self._run_debug(todo)
    except (KeyboardInterrupt, _Stop) as e:
      self._interrupted(e)
      return 130 if isinstance(e, KeyboardInterrupt) else 143
    finally:
      with contextlib.suppress(ValueError, TypeError):
        signal.signal(signal.SIGTERM, previous_term)
    return self._finish(collect)

  def _finish(self, collect) -> int:
    statuses = self._statuses()
    numbers = status.counts(statuses)
    if numbers[status.PENDING] + numbers[status.RUNNING]:
      logging.info(
        "%s; not waiting for them: --status shows where the sweep stands, the same command "
        "waits and collects the results.",
        status.summary(statuses),
      )
      return 0
    logging.info("Sweep done in %s: %s.", _elapsed(self.t0), status.summary(statuses))
    failed = [s for s in statuses if s.state == status.FAILED]
    interrupted = [s for s in statuses if s.state == status.INTERRUPTED]
    if failed:
      self._report(failed, "rerun them with --retry_failed")
    if interrupted:
      self._report(interrupted, "the same command resumes them")
    if collect is not None:
      collect(self.workdir)
    return 1 if failed or interrupted else 0

  def _report(self, runs: list[status.RunStatus], advice: str) -> None:
    """Logs each run with its error and the tail of its log (or of its traceback)."""
    what = runs[0].state
    lines = [f"{len(runs)} {'run' if len(runs) == 1 else 'runs'} {what} ({advice}):"]
    for s in runs:
      lines.append(f"  {s.name}: {s.error or 'see its log'}")
      tail = status.log_tail(s.log, LOG_TAIL_LINES)
      if not tail:
        marker = status.read_marker(status.run_dir(self.workdir, s.name)) or {}
        tail = (marker.get("traceback") or [])[-LOG_TAIL_LINES:]
      if s.log:
        lines.append(f"    log: {s.log}")
      lines.extend(f"    | {line}" for line in tail)
    logging.warning("%s", "\n".join(lines))

  def _warn_unknown_runs(self) -> None:
    """Run folders of this workdir that the sweep file no longer names (it changed since)."""
    try:
      found = sorted(os.listdir(os.path.join(self.workdir, status.RUNS_DIR)))
    except OSError:
      return
    unknown = [name for name in found if name not in self.by_name]
    if unknown:
      logging.warning(
        "%d runs in %s are not in this sweep (%s%s); the sweep file changed? They are left as "
        "they are and are not in the results.",
        len(unknown),
        os.path.join(self.workdir, status.RUNS_DIR),
        ", ".join(unknown[:3]),
        ", ..." if len(unknown) > 3 else "",
      )

  def _interrupted(self, error: BaseException) -> None:
    what = "Ctrl-C" if isinstance(error, KeyboardInterrupt) else "SIGTERM"
    running = [job for _, job in self.local_jobs.values() if not job.done()]
    if running:
      logging.warning(
        "%s: stopping %d local runs (each saves a checkpoint); %s again leaves them running.",
        what,
        len(running),
        what,
      )
      for job in running:
        with contextlib.suppress(OSError, AttributeError):
          job._process.send_signal(signal.SIGTERM)  # The controller forwards it to the run.
      with contextlib.suppress(KeyboardInterrupt, _Stop):
        deadline = time.time() + 120
        while time.time() < deadline and any(not job.done() for job in running):
          time.sleep(0.2)
    statuses = self._statuses()
    logging.warning(
      "%s: %s. Run the same command again to resume (finished runs are kept).",
      what,
      status.summary(statuses),
    )

  # -- submitting ------------------------------------------------------------------------------

  def _job_fn(self, name: str, slot: Slot | None = None) -> runner.RunJob:
    return runner.RunJob(
      self.by_name[name],
      status.run_dir(self.workdir, name),
      self.base_dir,
      self.options.launcher,
      cpus=slot.cpus if slot else None,
      gpu=slot.gpu if slot else None,
    )

  def _record(self, name: str, job: Any, **extra: Any) -> None:
    """Adds the job of this submission of run ``name`` to sweep.json's ``jobs``."""
    from submitit.core import utils

    log = None  # A debug run logs to this process's stderr; its traceback is in its record.
    if self.options.launcher != "debug":
      log = str(utils.JobPaths(self.logs_dir, str(job.job_id), 0).stderr)
    record = {
      "job_id": str(job.job_id),
      "launcher": self.options.launcher,
      "submitted": status.now_iso(),
      "host": socket.gethostname(),
      "log": log,
      **extra,
    }
    self.state["jobs"].setdefault(name, []).append(record)

  def _submit_slurm(self, todo: list[str]) -> None:
    if not todo:
      return
    executor = make_executor(
      "slurm", self.logs_dir, self.options.slurm, name=f"ganjax-{os.path.basename(self.workdir)}"
    )
    from submitit.core import utils

    try:
      jobs = executor.submit_array([self._job_fn(name) for name in todo])
    except (utils.FailedJobError, utils.FailedSubmissionError) as e:
      lines = [line.strip() for line in str(e).splitlines() if line.strip()]
      raise LaunchError(
        f"--launcher=slurm: sbatch failed (nothing was submitted): {' / '.join(lines[-3:])}"
      ) from None
    for name, job in zip(todo, jobs, strict=True):
      self._record(name, job)
    self._save()
    main_ids = sorted({str(j.job_id).split("_")[0] for j in jobs})
    logging.info(
      "Submitted %d runs to Slurm: %s %s (logs in %s).",
      len(jobs),
      "job array" if len(jobs) > 1 else "job",
      ", ".join(main_ids),
      self.logs_dir,
    )

  def _run_debug(self, todo: list[str]) -> None:
    executor = make_executor("debug", self.logs_dir)
    for name in todo:
      job = executor.submit(self._job_fn(name))
      self._record(name, job, pid=os.getpid())
      self._save()
      logging.info("Debug launcher: training %s in this process.", name)
      try:
        result = job.result()
      except Exception as e:  # noqa: BLE001 (recorded in its sweep_run.json; go on)
        logging.warning("Run %s failed: %s", name, runner._describe(e))
        continue
      if result.get("state") == status.INTERRUPTED:
        raise KeyboardInterrupt(f"run {name} was interrupted")
      self._log_changes()

  def _run_local(self, todo: list[str]) -> None:
    executor = make_executor("local", self.logs_dir)
    queue = list(todo)
    while True:
      for slot in list(self.local_jobs):
        if self.local_jobs[slot][1].done():
          del self.local_jobs[slot]
      known, unknown = self._orphan_cpus()
      free = [s for s in self.slots if s.index not in self.local_jobs and not known & set(s.cpus)]
      free = free[unknown:]  # Earlier runs whose cores are not known take a slot each.
      while queue and free:
        slot, name = free.pop(0), queue.pop(0)
        job = self._submit_local(executor, name, slot)
        self.local_jobs[slot.index] = (name, job)
      self._log_changes()
      if not queue and not self.local_jobs and not self._others_active():
        return
      time.sleep(self.poll_s)

  def _submit_local(self, executor: Any, name: str, slot: Slot) -> Any:
    # The job's controller ignores Ctrl-C (it would kill the run before its checkpoint); the run
    # itself handles it, and so does this process (which then stops the runs with SIGTERM).
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
      job = executor.submit(self._job_fn(name, slot))
    finally:
      signal.signal(signal.SIGINT, previous)
    pid = job._process.pid
    self._record(
      name,
      job,
      pid=pid,
      pid_start=status.process_start(pid),
      cpus=list(slot.cpus),
      gpu=slot.gpu,
    )
    self._save()
    gpu = f", GPU {slot.gpu}" if slot.gpu is not None else ""
    logging.info("Started %s (job %s, cores %s%s).", name, job.job_id, _ranges(slot.cpus), gpu)
    return job

  def _orphan_cpus(self) -> tuple[set[int], int]:
    """``(cores, count)``: the cores of the local runs an earlier command started that still
    run, and how many more such runs there are whose cores are not known."""
    mine = {name for name, _ in self.local_jobs.values()}
    known: set[int] = set()
    unknown = 0
    for name in self.by_name:
      job = status.latest_job(self.state, name)
      if name in mine or not job or job.get("launcher") != "local":
        continue
      if status.job_kind(job, {}) == status.RUNNING:
        cpus = job.get("cpus")
        if cpus:
          known.update(cpus)
        else:
          unknown += 1
    return known, unknown

  def _others_active(self) -> bool:
    """Whether runs this command did not start (an earlier command's) are pending or running."""
    mine = {name for name, _ in self.local_jobs.values()}
    return any(state in status.ACTIVE and name not in mine for name, state in self.previous.items())

  # -- waiting ---------------------------------------------------------------------------------

  def _wait(self) -> None:
    while True:
      self._log_changes()
      if not any(state in status.ACTIVE for state in self.previous.values()):
        return
      time.sleep(self.poll_s)

  def _log_changes(self) -> None:
    names = list(self.by_name)
    states = status.sweep_states(self.workdir, names, self.state, self.logs_dir)
    changed = [n for n in names if self.previous.get(n) != states[n]]
    ended = [n for n in changed if states[n] in _ENDED]
    for s in status.sweep_status(self.workdir, ended, self.state, self.logs_dir) if ended else []:
      detail = f": {s.error}" if s.error else ""
      step = f" at step {s.step}" if s.step is not None else ""
      wall = f" ({status.format_duration(s.wall_s)})" if s.wall_s is not None else ""
      logging.info("%s %s%s%s%s.", s.state.capitalize(), s.name, step, wall, detail)
    self.previous = states
    now = time.time()
    if changed or now - self.last_line > HEARTBEAT_S:
      self.last_line = now
      logging.info("[%s] %s.", _elapsed(self.t0), status.summary(states.values()))


def _raise_stop(signum, frame) -> None:
  del signum, frame
  raise _Stop("SIGTERM")


def _elapsed(t0: float) -> str:
  return status.format_duration(time.time() - t0)
