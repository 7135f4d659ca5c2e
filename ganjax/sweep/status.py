"""Where a sweep stands: the state of each run from its workdir and its job, and the table.

A run is in one of these states:

* ``new``: never submitted;
* ``pending``: its job waits in the queue (or was requeued);
* ``running``: its job runs;
* ``finished``: it trained to ``num_train_steps``;
* ``failed``: it raised, or its job failed or was cancelled (``scancel``); ``--retry_failed`` reruns
  it;
* ``interrupted``: it stopped with a checkpoint (SIGTERM, Ctrl-C, a time limit, preemption, a lost
  node) or its process vanished; the next launch resumes it.

The run's own record is ``RUN_WORKDIR/sweep_run.json`` (:mod:`ganjax.sweep.runner` writes it);
the job of its latest submission is in ``SWEEP_WORKDIR/sweep.json``. The job's state comes from
Slurm (``sacct`` through submitit, ``squeue`` when accounting is unavailable) or, for local jobs,
from whether their process is still alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import socket
import subprocess
import time
from collections.abc import Iterable, Mapping
from typing import Any

from ganjax import errors

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
LOGS_DIR = "logs"
LOCK_FILE = "sweep.lock"
RUN_FILE = "sweep_run.json"
METRICS_FILE = "metrics.jsonl"

NEW, PENDING, RUNNING = "new", "pending", "running"
FINISHED, FAILED, INTERRUPTED = "finished", "failed", "interrupted"
STATES = (NEW, PENDING, RUNNING, FINISHED, FAILED, INTERRUPTED)
ACTIVE = (PENDING, RUNNING)

# What a job's scheduler state means for its run (Slurm's sacct/squeue states).
_SLURM_STATES = {
  PENDING: (
    "PENDING",
    "REQUEUED",
    "REQUEUE_FED",
    "REQUEUE_HOLD",
    "RESV_DEL_HOLD",
    "CONFIGURING",
    "SUSPENDED",
    "STOPPED",
    "RESIZING",
    "SPECIAL_EXIT",
    "POWER_UP_NODE",
  ),
  RUNNING: ("RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT"),
  "completed": ("COMPLETED",),
  "failed": ("FAILED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"),
  "cancelled": ("CANCELLED", "REVOKED"),
  "interrupted": ("TIMEOUT", "PREEMPTED", "NODE_FAIL"),
}
JOB_STATES = {s: kind for kind, states in _SLURM_STATES.items() for s in states}
# A local job's process is gone (its run's own record says how it ended).
GONE = "gone"


# ---------------------------------------------------------------------------------------------
# Files.


def now_iso() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def read_json(path: str) -> Any:
  """The JSON in ``path``, or None when it is missing or unreadable (being replaced)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def write_json(path: str, obj: Any) -> None:
  """Writes ``obj`` atomically (a reader sees the old or the new file, never half of one)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, default=_jsonable)
  os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
  if isinstance(value, set | frozenset | tuple):
    return list(value)
  return str(value)


def run_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, RUNS_DIR, name)


def read_marker(path: str) -> dict[str, Any] | None:
  """``RUN_WORKDIR/sweep_run.json`` of the run in ``path``, or None."""
  marker = read_json(os.path.join(path, RUN_FILE))
  return marker if isinstance(marker, dict) else None


def read_sweep(workdir: str) -> dict[str, Any] | None:
  """``SWEEP_WORKDIR/sweep.json``: the sweep file, its runs and the jobs of each run."""
  state = read_json(os.path.join(workdir, SWEEP_FILE))
  return state if isinstance(state, dict) else None


def latest_job(sweep: Mapping[str, Any] | None, name: str) -> dict[str, Any] | None:
  """The job of the latest submission of run ``name``, or None."""
  jobs = (sweep or {}).get("jobs", {}).get(name) or []
  return jobs[-1] if jobs else None


# ---------------------------------------------------------------------------------------------
# Processes.


def process_start(pid: int) -> int | None:
  """The start time of process ``pid`` (clock ticks since boot), or None when it does not exist;
  with the pid it identifies a process even after the pid is reused."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rpartition(")")[2].split()
  except OSError:
    return None
  state, start = fields[0], fields[19]
  return None if state in ("Z", "X") else int(start)


def process_alive(pid: Any, start: Any, host: Any) -> bool | None:
  """Whether the process ``pid`` that started at ``start`` on ``host`` runs; None when it runs on
  another host (this one cannot tell)."""
  if host not in (None, socket.gethostname()):
    return None
  try:
    pid = int(pid)
  except (TypeError, ValueError):
    return None
  found = process_start(pid)
  return found is not None and (start is None or found == int(start))


# ---------------------------------------------------------------------------------------------
# Job states.


def slurm_job_states(job_ids: Iterable[str], logs_dir: str) -> dict[str, str]:
  """``{job_id: Slurm state}`` (``PENDING``, ``COMPLETED``, ``CANCELLED``, ...) from one sacct
  call (submitit's watcher, which also reads the job-array ranges of pending arrays); the jobs sacct
  does not know (accounting off, or lagging a fresh submission) from squeue, which lists the
  queued and running jobs only (absent: ended, ``""``)."""
  from submitit.slurm import slurm

  job_ids = sorted(set(map(str, job_ids)))
  if not job_ids:
    return {}
  for job_id in job_ids:
    slurm.SlurmJob(folder=logs_dir, job_id=job_id)  # Registers it with the shared watcher.
  watcher = slurm.SlurmJob.watcher
  watcher.update()
  states = {}
  for job_id in job_ids:
    state = watcher.get_state(job_id, mode="cache").split()[0].rstrip("+").upper()
    if state != "UNKNOWN":
      states[job_id] = state
  unknown = [j for j in job_ids if j not in states]
  if unknown:
    queued = _squeue_states(unknown)
    if queued is not None:
      states.update({j: queued.get(j, "") for j in unknown})
  return states


def _squeue_states(job_ids: list[str]) -> dict[str, str] | None:
  """``{job_id: state}`` of the jobs squeue lists, or None when squeue cannot say."""
  main_ids = sorted({j.split("_")[0] for j in job_ids})
  try:
    out = subprocess.run(
      ["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(main_ids)],
      capture_output=True,
      text=True,
      timeout=60,
      check=False,
    )
  except (OSError, subprocess.TimeoutExpired):
    return None
  if out.returncode:
    # A job that left the queue long ago is an error for squeue ("Invalid job id").
    return {} if "Invalid job id" in out.stderr else None
  states = {}
  for line in out.stdout.splitlines():
    job_id, _, state = line.strip().partition("|")
    states[job_id] = state.strip().upper()
  return states


def job_kind(job: Mapping[str, Any] | None, slurm_states: Mapping[str, str]) -> str | None:
  """What the job of a run says: ``pending``, ``running``, ``completed``, ``failed``,
  ``cancelled``, ``interrupted``, ``gone`` (a local job's process ended), or None (no job, or
  nothing known of it)."""
  if not job:
    return None
  launcher = job.get("launcher")
  if launcher == "slurm":
    state = slurm_states.get(str(job.get("job_id")))
    if state is None:
      return None
    if state == "":
      return GONE
    return JOB_STATES.get(state)
  if launcher == "local":
    alive = process_alive(job.get("pid"), job.get("pid_start"), job.get("host"))
    if alive is None:
      return None
    return RUNNING if alive else GONE
  return None


def classify(
  marker: Mapping[str, Any] | None, job: Mapping[str, Any] | None, kind: str | None
) -> tuple[str, str | None]:
  """``(state, reason)`` of a run from its ``sweep_run.json`` (``marker``), the job of its latest
  submission and what that job says (:func:`job_kind`); ``reason`` explains a failure or an
  interruption the run's record does not."""
  recorded = (marker or {}).get("state")
  if recorded == FINISHED:
    return FINISHED, None
  job_id = (job or {}).get("job_id")
  if marker and job and str(marker.get("job_id")) != str(job_id):
    marker, recorded = None, None  # The record of an earlier job; this job has not started it.
  if kind in ACTIVE:
    return (RUNNING if kind == RUNNING or recorded == RUNNING else PENDING), None
  if kind == "cancelled":
    return FAILED, f"job {job_id} was cancelled"
  if kind == "failed" and recorded != FAILED:
    return FAILED, f"job {job_id} failed (killed: out of memory, or a node or job error)"
  if recorded == FAILED:
    return FAILED, None
  if recorded == INTERRUPTED:
    return INTERRUPTED, None
  if recorded == RUNNING:
    if kind is None:
      alive = process_alive(marker.get("pid"), marker.get("pid_start"), marker.get("host"))
      if alive is None or alive:
        return RUNNING, None
    return INTERRUPTED, f"its process ended without a word (killed?); job {job_id}"
  if job is None:
    return NEW, None
  if kind == "interrupted":
    return INTERRUPTED, f"job {job_id} was stopped (time limit, preemption or a lost node)"
  if kind in ("completed", GONE, "failed"):
    return FAILED, f"job {job_id} ended before the run started; see its log"
  if job.get("launcher") == "slurm":
    return PENDING, None  # Just submitted: not in sacct yet.
  return NEW, None  # A debug launch that never wrote its record.


# ---------------------------------------------------------------------------------------------
# A run's progress.


@dataclasses.dataclass
class RunStatus:
  name: str
  state: str
  step: int | None = None
  total: int | None = None
  metrics: dict[str, float] = dataclasses.field(default_factory=dict)
  wall_s: float | None = None
  job_id: str | None = None
  error: str | None = None
  log: str | None = None
  reason: str | None = None


@dataclasses.dataclass
class Progress:
  """What ``RUN_WORKDIR/metrics.jsonl`` says: the last step, the latest evaluation and training
  scalars, and the time of its last record.

  The evaluation records are the lines without ``steps_per_sec``, which every training log line
  of :func:`ganjax.loop.run` has."""

  step: int | None = None
  evaluation: dict[str, float] = dataclasses.field(default_factory=dict)
  training: dict[str, float] = dataclasses.field(default_factory=dict)
  wall_time: float | None = None


def read_progress(path: str) -> Progress:
  """The :class:`Progress` of the run in ``path`` (empty when it has not logged yet)."""
  progress = Progress()
  try:
    with open(os.path.join(path, METRICS_FILE)) as f:
      lines = f.readlines()
  except OSError:
    return progress
  for line in lines:
    try:
      record = json.loads(line)
    except ValueError:
      continue  # A line being written.
    if not isinstance(record, dict) or "step" not in record:
      continue
    progress.step = max(progress.step or 0, int(record["step"]))
    if isinstance(record.get("wall_time"), int | float):
      progress.wall_time = float(record["wall_time"])
    scalars = {
      k: v
      for k, v in record.items()
      if k not in ("step", "wall_time", "phase") and isinstance(v, int | float)
    }
    if "steps_per_sec" in record:
      progress.training = scalars
    else:
      progress.evaluation = scalars
  return progress


def run_status(
  workdir: str, name: str, sweep: Mapping[str, Any] | None, slurm_states: Mapping[str, str]
) -> RunStatus:
  path = run_dir(workdir, name)
  marker = read_marker(path)
  job = latest_job(sweep, name)
  state, reason = classify(marker, job, job_kind(job, slurm_states))
  progress = read_progress(path)
  marker = marker or {}
  total = marker.get("num_train_steps")
  if total is None:
    config = read_json(os.path.join(path, "config.json"))
    total = config.get("num_train_steps") if isinstance(config, dict) else None
  wall = marker.get("wall_s")
  if marker.get("state") == RUNNING and marker.get("started_ts"):
    # Still running, or ended without a word: until now, or until its last record.
    until = time.time() if state == RUNNING else progress.wall_time
    if until is not None:
      wall = (marker.get("wall_s_before") or 0.0) + max(0.0, until - marker["started_ts"])
  shown = progress.evaluation or {k: v for k, v in progress.training.items() if "loss" in k}
  job_id = (job or {}).get("job_id", marker.get("job_id"))
  error = None
  if state in (FAILED, INTERRUPTED):
    error = reason or marker.get("error")
  return RunStatus(
    name=name,
    state=state,
    step=progress.step,
    total=total,
    metrics=shown,
    wall_s=wall,
    job_id=None if job_id is None else str(job_id),
    error=error,
    log=marker.get("log") or (job or {}).get("log"),
    reason=reason,
  )


def _slurm_states(
  workdir: str, names: list[str], sweep: Mapping[str, Any] | None, logs_dir: str | None
) -> dict[str, str]:
  slurm_ids = [
    str(job["job_id"])
    for name in names
    if (job := latest_job(sweep, name)) and job.get("launcher") == "slurm"
  ]
  return slurm_job_states(slurm_ids, logs_dir or os.path.join(workdir, LOGS_DIR))


def sweep_status(
  workdir: str, names: list[str], sweep: Mapping[str, Any] | None, logs_dir: str | None = None
) -> list[RunStatus]:
  """The status of each run in ``names`` (one sacct call for the Slurm jobs among them)."""
  states = _slurm_states(workdir, names, sweep, logs_dir)
  return [run_status(workdir, name, sweep, states) for name in names]


def sweep_states(
  workdir: str, names: list[str], sweep: Mapping[str, Any] | None, logs_dir: str | None = None
) -> dict[str, str]:
  """``{run: state}`` of the runs in ``names``, without reading their metrics (for polling)."""
  states = _slurm_states(workdir, names, sweep, logs_dir)
  return {
    name: classify(
      read_marker(run_dir(workdir, name)),
      latest_job(sweep, name),
      job_kind(latest_job(sweep, name), states),
    )[0]
    for name in names
  }


def counts(states: Iterable[RunStatus | str]) -> dict[str, int]:
  found = {state: 0 for state in STATES}
  for state in states:
    found[state if isinstance(state, str) else state.state] += 1
  return found


def summary(states: Iterable[RunStatus | str]) -> str:
  """``"20 runs: 14 finished, 1 failed, 2 running, 3 pending"`` (states with no run left out)."""
  numbers = counts(states)
  parts = [f"{numbers[s]} {s}" for s in (FINISHED, FAILED, INTERRUPTED, RUNNING, PENDING, NEW)]
  shown = [p for p in parts if not p.startswith("0 ")]
  return f"{sum(numbers.values())} runs: {', '.join(shown) or 'none'}"


# ---------------------------------------------------------------------------------------------
# The table.


def format_duration(seconds: float | None) -> str:
  if seconds is None:
    return "-"
  seconds = int(max(0, seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_number(value: float) -> str:
  if isinstance(value, bool) or not isinstance(value, int | float):
    return str(value)
  if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 1e6):
    return str(int(value))
  return f"{value:.4g}"


def format_metrics(metrics: Mapping[str, float], width: int = 60) -> str:
  text = " ".join(f"{k}={format_number(v)}" for k, v in metrics.items())
  return text if len(text) <= width else text[: width - 3] + "..."


def format_table(statuses: list[RunStatus]) -> str:
  """The ``--status`` table: run, state, step, latest metrics, wall time, job id; a summary."""
  header = ("run", "state", "step", "latest metrics", "wall", "job")
  rows = []
  for s in statuses:
    step = "-" if s.step is None else str(s.step)
    if s.total is not None:
      step = f"{step}/{s.total}"
    rows.append(
      (
        s.name,
        s.state,
        step,
        format_metrics(s.metrics) or "-",
        format_duration(s.wall_s),
        s.job_id or "-",
      )
    )
  widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
  lines = [
    "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
    for row in [header, *rows]
  ]
  lines.insert(1, "  ".join("-" * w for w in widths))
  lines.append(summary(statuses))
  for s in statuses:
    if s.state in (FAILED, INTERRUPTED) and s.error:
      lines.append(f"{s.state}: {s.name}: {s.error}")
  return "\n".join(lines)


def log_tail(path: str | None, lines: int = 15) -> list[str]:
  """The last ``lines`` lines of the log file ``path`` (none when it does not exist)."""
  if not path:
    return []
  try:
    with open(path, "rb") as f:
      f.seek(0, os.SEEK_END)
      size = f.tell()
      f.seek(max(0, size - 64 * 1024))
      text = f.read().decode("utf-8", errors="replace")
  except OSError:
    return []
  return text.splitlines()[-lines:]


# ---------------------------------------------------------------------------------------------
# One sweep command at a time per sweep workdir.


@contextlib.contextmanager
def locked(workdir: str):
  """Holds ``SWEEP_WORKDIR/sweep.lock`` while a launch submits and waits, so that two commands
  on the same sweep never submit a run twice; a lock left by a dead process is taken over."""
  path = os.path.join(workdir, LOCK_FILE)
  me = {
    "pid": os.getpid(),
    "pid_start": process_start(os.getpid()),
    "host": socket.gethostname(),
    "started": now_iso(),
  }
  os.makedirs(workdir, exist_ok=True)
  for _ in range(3):
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      holder = read_json(path) or {}
      alive = process_alive(holder.get("pid"), holder.get("pid_start"), holder.get("host"))
      if alive or (alive is None and holder):
        raise errors.WorkdirError(
          f"--workdir={workdir} is in use by another sweep command (PID {holder.get('pid')} on "
          f"{holder.get('host')}, since {holder.get('started')}); wait for it, or stop it "
          f"(if that host's process is gone, delete {path})."
        ) from None
      with contextlib.suppress(FileNotFoundError):
        os.remove(path)
      continue
    with os.fdopen(fd, "w") as f:
      json.dump(me, f)
    break
  else:
    raise errors.WorkdirError(f"Could not take the lock {path}; delete it if no sweep runs.")
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      if (read_json(path) or {}).get("pid") == me["pid"]:
        os.remove(path)
