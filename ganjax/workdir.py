"""A workdir's identity across launches: one run at a time, and a record of every launch.

A training run may be launched many times on one workdir (preemption, a longer run, a crash).
Three files keep those launches honest:

* ``WORKDIR/.lock`` (:func:`lock`): taken atomically (``O_CREAT | O_EXCL``) when a run starts and
  removed when it ends, holding the host, PID, start time and command of the run. A second launch
  on a locked workdir stops at once, naming the holder. A lock left by a dead process on the same
  host (kill -9, out of memory) is taken over with a warning; a lock from another host is never
  taken over (its process cannot be checked from here): the message says how to remove it. In a
  multi-host run only process 0 takes it. A launch in the process that already holds the lock
  reuses it (runs in one process are sequential).
* ``WORKDIR/launches.jsonl`` (:func:`record_launch`): one line per launch that gets to train
  (a refused launch changes nothing in the workdir): time, host, PID,
  command (``sys.argv``), the step it resumed from (0 for a fresh start) and the config fields
  that differ from the previous launch (``{"field": dotted path, "old": ..., "new": ...,
  "guarded": ...}``). The first line also holds the whole resolved config, so the original command
  and config are never lost (a workdir from before this file gets a line 0 reconstructed from its
  ``config.json`` and ``run_info.json``).
* ``WORKDIR/config.json``: the resolved config of the *latest* launch (what ``--mode=sample`` and
  ``--mode=evaluate`` read); the history is launches.jsonl's first line plus the differences.

Before a run resumes from a checkpoint, :func:`check_relaunch` compares its config with
``config.json`` (on the JSON form, where tuples are lists and unset placeholders are null):

* **Guarded** fields change the trained model or its data, so a resume with a different value would
  silently train something else. A change is refused (listing every difference) unless
  ``--config.resume.allow_config_changes=True``. Every field is guarded except the free ones
  below; by group: ``task``, ``seed``, ``batch_size``, ``n_critic``, ``unrolled_steps``,
  ``scale``, ``data.*`` (name, dir, split, image_size, channels, crops, flips, the in-memory
  threshold that picks the shuffling path, ...), ``model.*``, ``loss.*``, ``regularizer.*``,
  ``augment.*``, ``optim.*``, ``ema.*``, ``parallel.mode`` (per-device BatchNorm statistics under
  shard_map), ``srgan.*`` (pre-training steps, loss weights, content features) and any field a
  config adds later.
* **Free** fields (:data:`FREE_FIELDS`) only set the run's length, cadence, evaluation or
  resources; they may change and are recorded: ``num_train_steps`` (checked against the
  checkpoint's step instead; a warning when a learning-rate schedule is not constant),
  ``log_every_steps``, ``sample_every_steps``, ``checkpoint_every_steps``, ``keep_checkpoints``,
  ``num_sample_images``, ``eval_*``, ``resume.*``, ``parallel.num_devices`` (the result changes
  only by round-off; a resume is bit-identical with the same device and process counts, so both
  are recorded per launch), ``parallel.distributed`` and the process layout
  (``parallel.coordinator_address``, ``num_processes``, ``process_id``), ``data.eval_split``,
  ``data.eval_crop_size``, ``data.eval_max_crops`` and ``srgan.eval_*``, ``srgan.upscale_tile``.

Before any checkpoint exists nothing was trained, so differences are only recorded. A
``num_train_steps`` below the checkpoint's step is an error naming both numbers; equal means the
run is already complete (logged; nothing to train).
"""

from __future__ import annotations

import atexit
import datetime
import fnmatch
import functools
import json
import math
import os
import re
import socket
import sys
import time
import uuid
from typing import Any

import ml_collections
from absl import logging

from ganjax.errors import MissingPathError, WorkdirError

LOCK_FILE = ".lock"
LAUNCHES_FILE = "launches.jsonl"
CONFIG_FILE = "config.json"
RUN_INFO_FILE = "run_info.json"
# The training loop's scalars, one JSON object per logged step (ganjax.loop), and the evaluation
# records (ganjax.evaluation.save_evaluation).
METRICS_FILE = "metrics.jsonl"
EVAL_DIR = "eval"
# Keys of a metrics.jsonl line that are not metrics.
_NOT_METRICS = frozenset({"step", "wall_time", "phase"})
# Only the training log lines of metrics.jsonl carry these (ganjax.loop.run's log()).
TRAINING_MARKERS = ("steps_per_sec", "images_per_sec")
_EVAL_FILE = re.compile(r"^step_(\d+)\.json$")

# Fields (fnmatch patterns on dotted paths) that may differ between launches of one run: length,
# cadence, evaluation and resources. Every other field is guarded (see the module docstring).
FREE_FIELDS = (
  "num_train_steps",
  "log_every_steps",
  "sample_every_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "num_sample_images",
  "eval_*",
  "resume.*",
  "parallel.num_devices",
  "parallel.distributed",
  "parallel.coordinator_address",
  "parallel.num_processes",
  "parallel.process_id",
  "data.eval_split",
  "data.eval_crop_size",
  "data.eval_max_crops",
  "srgan.eval_*",
  "srgan.upscale_tile",
)

# At most this many differences are spelled out in an error message (all are recorded).
_MAX_LISTED = 12


# ------------------------------------------------------------------------------------------------
# Config differences.


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The JSON form of ``config``, as ``config.json`` holds it."""
  return json.loads(config.to_json_best_effort())


def read_config(workdir: str) -> dict[str, Any] | None:
  """``WORKDIR/config.json`` of the previous launch, or None when there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_guarded(field: str) -> bool:
  """Whether a change of ``field`` (dotted path) alters the trained model or its data."""
  return not any(fnmatch.fnmatchcase(field, pattern) for pattern in FREE_FIELDS)


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
  """``[{"field", "old", "new", "guarded"}]`` for every leaf that differs; a side without the
  field has no ``"old"`` / ``"new"`` key."""
  old_leaves, new_leaves = _leaves(old), _leaves(new)
  fields = [*new_leaves, *(f for f in old_leaves if f not in new_leaves)]
  out = []
  for field in fields:
    if field in old_leaves and field in new_leaves and _same(old_leaves[field], new_leaves[field]):
      continue
    entry: dict[str, Any] = {"field": field}
    if field in old_leaves:
      entry["old"] = old_leaves[field]
    if field in new_leaves:
      entry["new"] = new_leaves[field]
    entry["guarded"] = is_guarded(field)
    out.append(entry)
  return out


def format_differences(differences: list[dict[str, Any]], limit: int = _MAX_LISTED) -> str:
  """``'loss.name: "a" -> "b"; seed: 0 -> 1'`` (the first ``limit``, then how many more)."""

  def value(entry, side):
    return json.dumps(entry[side]) if side in entry else "(absent)"

  parts = [f"{d['field']}: {value(d, 'old')} -> {value(d, 'new')}" for d in differences[:limit]]
  if len(differences) > limit:
    parts.append(f"and {len(differences) - limit} more")
  return "; ".join(parts)


def _leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict) and value:
      out.update(_leaves(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def _same(a: Any, b: Any) -> bool:
  """JSON equality where NaN equals NaN and booleans differ from numbers."""
  if isinstance(a, bool) or isinstance(b, bool):
    return type(a) is type(b) and a == b
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return True
  if isinstance(a, list) and isinstance(b, list):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
  if isinstance(a, dict) and isinstance(b, dict):
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
  return a == b


# ------------------------------------------------------------------------------------------------
# Relaunch checks and the launch record.


def check_relaunch(config: ml_collections.ConfigDict, workdir: str, checkpoint_step: int) -> None:
  """Refuses a launch that would silently train something else than the run in ``workdir``.

  Args:
    config: The config of this launch.
    workdir: The run's workdir (``config.json`` is the previous launch's config).
    checkpoint_step: The step of the latest checkpoint in the workdir (0: none).

  Raises:
    WorkdirError: guarded fields differ from ``config.json`` while a checkpoint exists (unless
      ``config.resume.allow_config_changes``), or ``config.num_train_steps`` is below
      ``checkpoint_step``.
  """
  previous = read_config(workdir)
  differences = [] if previous is None else config_differences(previous, config_json(config))
  guarded = [d for d in differences if d["guarded"]]
  allowed = bool(config.get("resume", {}).get("allow_config_changes", False))
  if checkpoint_step and guarded and not allowed:
    raise WorkdirError(
      f"Refusing to resume {workdir} (checkpoint at step {checkpoint_step}) with a config that "
      f"changes the trained model or its data: {format_differences(guarded)}. Relaunch with the "
      f"run's config ({os.path.join(workdir, CONFIG_FILE)}), use a new --workdir, or pass "
      "--config.resume.allow_config_changes=True to continue with these changes (they are "
      f"recorded in {os.path.join(workdir, LAUNCHES_FILE)})."
    )
  total = config.num_train_steps
  if checkpoint_step > total:
    raise WorkdirError(
      f"{workdir} holds a checkpoint at step {checkpoint_step}, beyond "
      f"--config.num_train_steps={total}: there is nothing to train. Pass "
      f"--config.num_train_steps={checkpoint_step} or more to continue this run, or use a new "
      "--workdir for a new one."
    )
  if differences:
    level = logging.warning if checkpoint_step and guarded else logging.info
    level(
      "Config changes since the last launch on %s%s: %s",
      workdir,
      " (allowed by resume.allow_config_changes)" if checkpoint_step and guarded else "",
      format_differences(differences, limit=len(differences)),
    )
  if checkpoint_step and any(d["field"] == "num_train_steps" for d in differences):
    schedules = {
      field: value
      for field, value in _leaves(config_json(config)).items()
      if field.startswith("optim.")
      and field.endswith("schedule")
      and value not in (None, "", "constant")
    }
    if schedules:
      logging.warning(
        "num_train_steps changed while a learning-rate schedule is not constant (%s): a "
        "schedule laid out over num_train_steps continues with other learning rates than the "
        "run started with.",
        ", ".join(f"{k}={v!r}" for k, v in schedules.items()),
      )
  if checkpoint_step and checkpoint_step == total:
    logging.info(
      "%s is already trained to step %d (= num_train_steps): nothing to train. Pass a larger "
      "--config.num_train_steps to train on.",
      workdir,
      total,
    )


def read_launches(workdir: str) -> list[dict[str, Any]]:
  """The records of ``WORKDIR/launches.jsonl`` (empty when there is none); a line cut short by a
  kill while it was written is skipped."""
  path = os.path.join(workdir, LAUNCHES_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      try:
        records.append(json.loads(line))
      except ValueError:
        if line.strip():
          logging.warning("Skipping the unreadable line %d of %s.", number, path)
  return records


def record_launch(
  config: ml_collections.ConfigDict,
  workdir: str,
  start_step: int,
  info: dict[str, Any] | None = None,
) -> dict[str, Any]:
  """Appends this launch's line to ``WORKDIR/launches.jsonl`` and returns it.

  Call it before ``config.json`` is rewritten: the differences are taken against it. ``info``
  (``run_info.json``'s content) contributes the git revision, versions and device count.
  """
  launches = read_launches(workdir)
  previous = read_config(workdir)
  new = config_json(config)
  lines = []
  if not launches and previous is not None:
    lines.append(_reconstructed_launch(workdir, previous))
  record: dict[str, Any] = {
    "launch": (launches[-1].get("launch", len(launches)) + 1) if launches else 1,
    "time": _now(),
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "command": list(sys.argv),
    "resumed_from_step": int(start_step),
    "num_train_steps": config.num_train_steps,
    "config_changes": [] if previous is None else config_differences(previous, new),
  }
  if record["config_changes"]:
    record["allow_config_changes"] = bool(
      config.get("resume", {}).get("allow_config_changes", False)
    )
  if info:
    record["git_revision"] = info.get("git_revision")
    record["versions"] = info.get("versions")
    if isinstance(info.get("devices"), dict):
      record["num_devices"] = info["devices"].get("count")
      record["num_processes"] = info["devices"].get("process_count")
  # (devices, processes); launches recorded before num_processes existed ran on one process.
  layout = (record.get("num_devices"), record.get("num_processes") or 1)
  previous_layout = next(
    (
      (r["num_devices"], r.get("num_processes") or 1)
      for r in reversed(launches)
      if r.get("num_devices") is not None
    ),
    None,
  )
  if start_step and None not in (layout[0], previous_layout) and layout != previous_layout:
    logging.warning(
      "Resuming on %d devices in %d process(es) after %d in %d: the result differs by round-off "
      "from a run on one layout (resume is bit-identical only with the same devices and "
      "processes).",
      *layout,
      *previous_layout,
    )
  if not launches and previous is None:
    record["config"] = new
  lines.append(record)
  path = os.path.join(workdir, LAUNCHES_FILE)
  with open(path, "a+b") as f:  # A line cut short by a kill must not swallow this one.
    if f.tell() > 0:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        f.write(b"\n")
  with open(path, "a") as f:
    for line in lines:
      f.write(json.dumps(line, default=str) + "\n")
  return record


def _reconstructed_launch(workdir: str, config: dict[str, Any]) -> dict[str, Any]:
  """Line 0 for a workdir trained before launches.jsonl existed: its config.json and command."""
  record: dict[str, Any] = {"launch": 0, "reconstructed": True}
  try:
    with open(os.path.join(workdir, "run_info.json")) as f:
      info = json.load(f)
    record.update(command=info.get("command"), resumed_from_step=info.get("resumed_from_step"))
  except (OSError, ValueError):
    pass
  record["config"] = config
  return record


def _now() -> str:
  return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ------------------------------------------------------------------------------------------------
# The lock.

# Locks this process holds: real path of the workdir -> holder record.
_HELD: dict[str, dict[str, Any]] = {}


def lock(workdir: str) -> dict[str, Any]:
  """Takes ``WORKDIR/.lock`` for this process and returns its holder record.

  Raises:
    WorkdirError: another live process on this host, or a process on another host, holds it.
  """
  key = os.path.realpath(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  me = {
    "host": socket.gethostname(),
    "pid": os.getpid(),
    "started": _now(),
    "command": list(sys.argv),
    "token": uuid.uuid4().hex,
  }
  for _ in range(5):
    if _create_exclusive(path, me):
      return _hold(key, me)
    holder = _read_holder(path)
    if holder is None:  # Removed in between: try again.
      continue
    if holder.get("unreadable"):
      raise WorkdirError(
        f"The lock file {path} is unreadable. If no run uses {workdir}, delete it and relaunch."
      )
    if holder.get("host") == me["host"] and holder.get("pid") == me["pid"]:
      if key in _HELD:  # A run in this process holds it (runs in one process are sequential).
        return _HELD[key]
      _replace(path, me)  # A file of this PID from an earlier process (PID reused).
      return _hold(key, me)
    if holder.get("host") != me["host"]:
      raise WorkdirError(
        f"{workdir} is locked by a run on another host: {_describe(holder)}. It may still be "
        f"running there. If no run uses this workdir any more, delete {path} and relaunch."
      )
    if _alive(holder.get("pid")):
      raise WorkdirError(
        f"{workdir} is in use by another run: {_describe(holder)}. Wait for it to finish or "
        "stop it, or use another --workdir (two runs on one workdir would overwrite each "
        "other's checkpoints)."
      )
    if _take_over(path, holder, me):
      logging.warning(
        "Took over the lock of %s from a run that is gone: %s.", workdir, _describe(holder)
      )
      return _hold(key, me)
  raise WorkdirError(f"Could not take the lock {path}: other launches keep changing it.")


def release(workdir: str) -> None:
  """Removes this process's lock on ``workdir`` (nothing when it holds none)."""
  me = _HELD.pop(os.path.realpath(workdir), None)
  if me is None:
    return
  path = os.path.join(workdir, LOCK_FILE)
  holder = _read_holder(path)
  if holder is not None and holder.get("token") == me["token"]:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass


def releases_lock(train_fn):
  """Decorates ``train_fn(config, workdir, ...)``: the lock it took is released when it returns
  or raises (the process exit releases what is left, too)."""

  @functools.wraps(train_fn)
  def wrapper(config, workdir, *args, **kwargs):
    held_before = os.path.realpath(workdir) in _HELD
    try:
      return train_fn(config, workdir, *args, **kwargs)
    finally:
      if not held_before:
        release(workdir)

  return wrapper


def _hold(key: str, me: dict[str, Any]) -> dict[str, Any]:
  _HELD[key] = me
  return me


@atexit.register
def _release_all() -> None:
  for key in list(_HELD):
    release(key)


def _create_exclusive(path: str, holder: dict[str, Any]) -> bool:
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "w") as f:
    json.dump(holder, f)
    f.flush()
    os.fsync(f.fileno())
  return True


def _replace(path: str, holder: dict[str, Any]) -> None:
  tmp = f"{path}.{os.getpid()}.tmp"
  with open(tmp, "w") as f:
    json.dump(holder, f)
  os.replace(tmp, path)


def _read_holder(path: str) -> dict[str, Any] | None:
  """The lock's holder; None when the file is gone. A file being written is waited for."""
  for _ in range(20):
    try:
      with open(path) as f:
        return json.load(f)
    except FileNotFoundError:
      return None
    except ValueError:  # Created but not yet written by its taker.
      time.sleep(0.05)
  return {"host": "?", "pid": None, "started": "?", "unreadable": True}


def _take_over(path: str, stale: dict[str, Any], me: dict[str, Any]) -> bool:
  """Replaces a dead process's lock with ours; False when another launch got there first."""
  guard = path + ".takeover"
  try:
    if os.path.getmtime(guard) < time.time() - 30:  # Left by a launch that died taking over.
      os.remove(guard)
  except FileNotFoundError:
    pass
  try:
    os.close(os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
  except FileExistsError:
    time.sleep(0.2)
    return False
  try:
    if _read_holder(path) != stale:
      return False
    _replace(path, me)
    return True
  finally:
    os.remove(guard)


def _alive(pid: Any) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return True  # Unknown: do not take it over.
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Another user's process.
    return True
  return True


def _describe(holder: dict[str, Any]) -> str:
  return f"PID {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def read_run(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """The resolved config and the run info (data shapes, classes, ...) a training run wrote into
  ``workdir``; a clear error when ``workdir`` is not the workdir of a training run."""
  paths = [os.path.join(workdir, name) for name in (CONFIG_FILE, RUN_INFO_FILE)]
  for path in paths:
    if not os.path.exists(path):
      raise MissingPathError(f"{path} not found: is {workdir!r} the workdir of a training run?")
  with open(paths[0]) as f:
    config = ml_collections.ConfigDict(json.load(f))
  with open(paths[1]) as f:
    info = json.load(f)
  return config, info


def record_numbers(record: dict[str, Any]) -> dict[str, float]:
  """The numbers of a metrics record (not its step, time or phase; booleans are not numbers)."""
  return {
    k: float(v)
    for k, v in record.items()
    if k not in _NOT_METRICS and isinstance(v, int | float) and not isinstance(v, bool)
  }


def read_evaluations(workdir: str) -> tuple[dict[int, dict[str, float]], dict[int, dict]]:
  """``(step -> metric values, step -> protocol)`` of a run: the evaluation lines of
  ``metrics.jsonl`` merged with ``eval/step_N.json`` (whose values take precedence)."""
  evaluations: dict[int, dict[str, float]] = {}
  protocols: dict[int, dict] = {}
  try:
    with open(os.path.join(workdir, METRICS_FILE)) as f:
      lines = f.readlines()
  except OSError:
    lines = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut by a kill.
    if isinstance(record, dict) and "step" in record:
      values = record_numbers(record)
      if values and not any(k in record for k in TRAINING_MARKERS):
        evaluations.setdefault(int(record["step"]), {}).update(values)
  eval_dir = os.path.join(workdir, EVAL_DIR)
  for file in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else []:
    match = _EVAL_FILE.match(file)
    record = read_json_or_none(os.path.join(eval_dir, file)) if match else None
    if isinstance(record, dict) and record.get("values") and isinstance(record["values"], dict):
      step = int(match.group(1))
      evaluations.setdefault(step, {}).update(record_numbers(record["values"]))
      protocols[step] = record.get("protocol") or {}
  return dict(sorted(evaluations.items())), protocols


def read_json_or_none(path: str) -> Any:
  """The JSON content of ``path``, or None when it is missing or unreadable."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
