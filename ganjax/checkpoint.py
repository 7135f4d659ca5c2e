"""Checkpoints of the whole GANState plus the data position, with orbax.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a kill at
any moment leaves the previous checkpoint readable; an unfinished one is never picked up by
:meth:`Checkpointer.latest_step`. Around that, this module makes sure nothing bad is written or
read silently:

* a state holding NaN/inf is never saved (:class:`NonFiniteStateError` names the step and the last
  good checkpoint); one jitted reduction over the state decides, fetched only at save time;
* a restore whose shapes disagree with the config fails with a message naming every mismatching
  array (:class:`CheckpointMismatchError`);
* a checkpoint that cannot be read (a truncated or missing file) or holds NaN/inf fails with
  :class:`DamagedCheckpointError` naming its step instead of a raw tensorstore error;
  :meth:`Checkpointer.restore_latest` can skip damaged checkpoints, moving them (not deleting
  them) to ``DIRECTORY_damaged/`` so that later saves of those steps do not collide with them.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from ganjax.errors import CheckpointError, MissingPathError

# The config field that lets a resume skip damaged checkpoints (ganjax.config_base.resume_config).
SKIP_DAMAGED_FLAG = "--config.resume.skip_damaged_checkpoints=True"


class CheckpointMismatchError(CheckpointError, ValueError):
  """The checkpoint on disk does not fit the state the config builds."""


class DamagedCheckpointError(CheckpointError):
  """A checkpoint cannot be read (missing or truncated files) or holds NaN/inf."""

  def __init__(self, message: str, step: int, detail: str | None = None):
    super().__init__(message)
    self.step = step
    # What is wrong with this checkpoint, without advice on other checkpoints.
    self.detail = message if detail is None else detail


class NonFiniteStateError(CheckpointError, FloatingPointError):
  """A state holding NaN/inf was to be saved; it was not written."""


def _is_float(x) -> bool:
  dtype = getattr(x, "dtype", None)
  return dtype is not None and jnp.issubdtype(dtype, jnp.inexact)


@jax.jit
def _finite_flags(leaves: list[jax.Array]) -> jax.Array:
  return jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])


@jax.jit
def _all_finite(leaves: list[jax.Array]) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def all_finite(tree: Any) -> bool:
  """Whether every float array of ``tree`` is finite: one jitted reduction, one fetched bool."""
  leaves = [x for x in jax.tree.leaves(tree) if _is_float(x)]
  return not leaves or bool(_all_finite(leaves))


def non_finite_summary(tree: Any) -> str:
  """``"20 of 69 arrays (generator/params/..., ...)"``: the float arrays holding NaN/inf."""
  named = [
    ("/".join(_key_name(k) for k in path), x)
    for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    if _is_float(x)
  ]
  if not named:
    return "0 of 0 arrays"
  flags = np.asarray(jax.device_get(_finite_flags([x for _, x in named])))
  bad = [name for (name, _), ok in zip(named, flags, strict=True) if not ok]
  shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
  return f"{len(bad)} of {len(named)} arrays ({shown})"


def _last_good_text(step: int | None, directory: str) -> str:
  if step is None:
    return f"No earlier checkpoint of this run is in {directory}."
  return f"The last good checkpoint is step {step} in {directory}."


def _out_of_memory(error: BaseException | None) -> bool:
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in str(error):
      return True
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return False


def _error_summary(error: BaseException) -> str:
  """The first line of the error's root cause, short: tensorstore's messages run to 100+ lines,
  and its root cause names the file and what is wrong with it."""
  seen = {id(error)}
  while True:
    cause = error.__cause__ or error.__context__
    if cause is None or id(cause) in seen:
      break
    error = cause
    seen.add(id(error))
  lines = str(error).strip().splitlines()
  first = lines[0].split(" See full TensorStore details")[0] if lines else ""
  if len(first) > 300:
    first = first[:300] + "..."
  return f"{type(error).__name__}: {first}"


class Checkpointer:
  """Saves and restores ``(GANState, data position)`` pairs under ``directory``.

  In a multi-process run every process creates it and calls :meth:`save` and :meth:`restore`
  alike: orbax writes each array once (the process holding its first replica) and the metadata
  from process 0.

  ``last_good_step`` is the newest step this object saved or resumed from (None before either);
  error messages name it as the checkpoint a stopped run can go back to.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.last_good_step: int | None = None
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep,
      create=True,
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True,
    )
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_position: dict[str, Any]) -> bool:
    """Starts writing a checkpoint for ``step`` (asynchronously unless configured otherwise).

    Raises:
      NonFiniteStateError: ``state`` holds NaN/inf; nothing is written.
    """
    if not all_finite(state):
      raise NonFiniteStateError(
        f"The state at step {step} holds NaN/inf in {non_finite_summary(state)}; it was not "
        f"saved. {_last_good_text(self.last_good_step, self.directory)} Training diverged: "
        "lower the learning rates, or add a regularizer."
      )
    saved = self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)
      ),
      force=True,
    )
    if saved:
      self.last_good_step = step
      logging.info("Saving checkpoint for step %d in %s", step, self.directory)
    return saved

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` into the structure, shapes and shardings of ``target``.

    ``target`` may hold arrays or ``jax.ShapeDtypeStruct``s (e.g. from ``jax.eval_shape``); a
    leaf without a sharding is restored on the first local device. Any process layout reads a
    checkpoint of any other (every process of a multi-process run calls this).

    Raises:
      CheckpointMismatchError: the checkpoint's arrays differ from ``target``'s.
      DamagedCheckpointError: the checkpoint cannot be read, or holds NaN/inf.
    """
    try:
      saved = self._manager.item_metadata(step)["state"]
      if saved is None:
        raise FileNotFoundError(f"no metadata of the state in {self._step_path(step)}")
    except Exception as e:  # orbax and tensorstore raise anything from KeyError to Exception.
      raise self._damaged(step, e) from e
    self._check_shapes(step, saved, target)
    abstract = jax.tree.map(_abstract, target)
    try:
      restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ),
      )
    except Exception as e:
      if _out_of_memory(e):  # Not damage: a skipping resume must not move this one aside.
        raise
      raise self._damaged(step, e) from e
    state = restored["state"]
    if not all_finite(state):
      detail = (
        f"The checkpoint at step {step} in {self.directory} holds NaN/inf in "
        f"{non_finite_summary(state)} (it was written before ganjax checked states)."
      )
      raise DamagedCheckpointError(f"{detail} {self._other_steps_text(step)}", step, detail)
    return state, dict(restored["data"] or {})

  def restore_latest(
    self, target: Any, *, skip_damaged: bool = False
  ) -> tuple[int, Any, dict[str, Any]] | None:
    """``(step, state, data position)`` of the newest checkpoint; None when there is none.

    With ``skip_damaged``, damaged checkpoints (see :meth:`restore`) are skipped: the newest intact
    one is restored, and the damaged newer ones are moved to ``DIRECTORY_damaged/`` (nothing is
    deleted) so that the resumed run can save those steps again.

    Raises:
      DamagedCheckpointError: the newest checkpoint is damaged and ``skip_damaged`` is False (the
        message suggests the flag), or every checkpoint is damaged.
      CheckpointMismatchError: the newest checkpoint does not fit ``target``.
    """
    steps = sorted(self.all_steps(), reverse=True)
    if not steps:
      return None
    damaged = []
    for step in steps:
      try:
        state, position = self.restore(step, target)
        break
      except DamagedCheckpointError as e:
        if not skip_damaged:
          older = sorted(s for s in steps if s < step)
          advice = (
            f"To resume from the newest intact one of the older checkpoints (steps {older}), "
            f"relaunch with {SKIP_DAMAGED_FLAG}; the damaged one is then moved to "
            f"{self.directory}_damaged/ (nothing is deleted)."
            if older
            else "No older checkpoint is there: start afresh with a new --workdir."
          )
          raise DamagedCheckpointError(f"{e.detail} {advice}", step, e.detail) from e
        logging.warning("Skipping a damaged checkpoint: %s", e.detail)
        damaged.append(step)
    else:
      raise DamagedCheckpointError(
        f"Every checkpoint in {self.directory} is damaged (steps {sorted(damaged)}); nothing "
        "was moved or deleted. Start afresh with a new --workdir.",
        damaged[0],
      )
    if damaged:
      self._set_aside(damaged)
    self.last_good_step = step
    return step, state, position

  def _set_aside(self, steps: list[int]) -> None:
    """Moves the damaged checkpoints of ``steps`` to ``DIRECTORY_damaged/``."""
    if jax.process_index() == 0:
      aside = self.directory + "_damaged"
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target, n = os.path.join(aside, str(step)), 1
        while os.path.exists(target):  # The same step damaged again in a later launch.
          target, n = os.path.join(aside, f"{step}.{n}"), n + 1
        os.rename(self._step_path(step), target)
        logging.warning(
          "Moved the damaged checkpoint of step %d to %s (nothing is deleted).", step, target
        )
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices("ganjax_checkpoint_set_aside")
    self._manager.reload()

  def _step_path(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _other_steps_text(self, step: int) -> str:
    others = [s for s in self.all_steps() if s != step]
    return f"Other checkpoints there: steps {others}." if others else "It is the only one there."

  def _damaged(self, step: int, error: BaseException) -> DamagedCheckpointError:
    detail = (
      f"The checkpoint at step {step} in {self.directory} is damaged (a missing or truncated "
      f"file) and cannot be read ({_error_summary(error)})."
    )
    return DamagedCheckpointError(f"{detail} {self._other_steps_text(step)}", step, detail)

  def _check_shapes(self, step: int, saved: Any, target: Any) -> None:
    saved_flat = _flatten_shapes(saved)
    want_flat = _flatten_shapes(target)
    problems = []

    # Parameters first: they say most directly which layer changed.
    def order(path):
      return ("params" not in path.split("/")[:2], "opt_state" in path, path)

    for path in sorted(set(saved_flat) | set(want_flat), key=order):
      have, want = saved_flat.get(path), want_flat.get(path)
      if have != want:
        have_text = "missing" if have is None else str(have)
        want_text = "missing" if want is None else str(want)
        problems.append(f"  {path}: checkpoint {have_text}, config {want_text}")
    if problems:
      shown = "\n".join(problems[:20]) + ("\n  ..." if len(problems) > 20 else "")
      raise CheckpointMismatchError(
        f"The checkpoint at step {step} in {self.directory} does not match the model the "
        f"config builds ({len(problems)} arrays differ):\n{shown}\n"
        "Use the config the checkpoint was trained with (see config.json in the workdir) "
        "or a new --workdir."
      )

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _abstract(x):
  """What orbax restores ``x`` as. Without a sharding: on this process's first device (the
  checkpoint's own sharding may name devices that do not exist here, e.g. those of the other
  processes of a multi-process run)."""
  sharding = getattr(x, "sharding", None)
  if sharding is None:
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)


def _flatten_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  out = {}
  for path, leaf in leaves:
    shape = getattr(leaf, "shape", None)
    if shape is None:
      continue
    key = "/".join(_key_name(k) for k in path)
    out[key] = tuple(shape)
  return out


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


# Metrics where a larger value is better; for every other metric (FID, KID, reverse KL) smaller is.
HIGHER_IS_BETTER = frozenset(
  {
    "is",
    "precision",
    "recall",
    "density",
    "coverage",
    "modes",
    "hq_fraction",
    "stacked_mnist_modes",
    # Super-resolution (ganjax.systems.srgan): fidelity to the HR images.
    "psnr",
    "psnr_y",
    "ssim",
    "psnr_gain_over_bicubic",
  }
)
BEST_DIRECTORY = "checkpoints_best"


class BestCheckpoint:
  """Keeps the checkpoint with the best value of one evaluation metric, next to the latest ones.

  Saves into ``WORKDIR/checkpoints_best`` (one checkpoint) and records ``{metric, value, step}``
  in its ``best.json``, so a resumed run keeps comparing against the best so far. StudioGAN's
  logs show a DCGAN's final FID can be 3x worse than its best; this keeps the best one.
  """

  def __init__(self, workdir: str, metric: str):
    self.metric = metric
    self.higher_is_better = metric in HIGHER_IS_BETTER
    self.directory = os.path.join(workdir, BEST_DIRECTORY)
    self._checkpointer = Checkpointer(self.directory, max_to_keep=1, async_save=False)
    self.record = read_best(workdir)
    if self.record is not None:
      self._checkpointer.last_good_step = int(self.record["step"])

  def is_better(self, value: float) -> bool:
    if not np.isfinite(value):
      return False
    if self.record is None or self.record.get("metric") != self.metric:
      return True
    best = self.record["value"]
    return value > best if self.higher_is_better else value < best

  def update(self, step: int, scalars: dict[str, float], state: Any, data_position) -> bool:
    """Saves ``state`` when ``scalars[metric]`` beats the best so far; returns whether it did.

    Raises:
      NonFiniteStateError: the value is better but ``state`` holds NaN/inf; nothing is written.
    """
    if self.metric not in scalars:
      raise KeyError(
        f"eval_best_metric={self.metric!r} is not among the evaluation's values {sorted(scalars)}."
      )
    value = float(scalars[self.metric])
    if not self.is_better(value):
      return False
    self._checkpointer.save(step, state, data_position)  # Every process takes part.
    self._checkpointer.wait_until_finished()
    self.record = {"metric": self.metric, "value": value, "step": step}
    if jax.process_index() == 0:
      tmp = os.path.join(self.directory, "best.json.tmp")
      with open(tmp, "w") as f:
        json.dump(self.record, f)
      os.replace(tmp, os.path.join(self.directory, "best.json"))
    logging.info(
      "New best %s = %.6g at step %d (saved in %s).", self.metric, value, step, self.directory
    )
    return True

  def close(self) -> None:
    self._checkpointer.close()


def read_best(workdir: str) -> dict[str, Any] | None:
  """``{metric, value, step}`` of a run's best checkpoint, or None when it has none."""
  path = os.path.join(workdir, BEST_DIRECTORY, "best.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def restore_from_workdir(workdir: str, step: int | str | None, abstract_state: Any):
  """``(state, step)`` of a run's checkpoint: the latest (``step=None``), step N, or ``"best"``.

  ``"best"`` reads the best-by-metric checkpoint in ``WORKDIR/checkpoints_best`` (written when
  the run had ``config.eval_best_metric``); the others read ``WORKDIR/checkpoints``. Sampling or
  evaluating a damaged or non-finite checkpoint fails here instead of writing NaN images.

  Raises:
    MissingPathError: no such checkpoint (the message lists the steps there are).
    DamagedCheckpointError: the checkpoint cannot be read or holds NaN/inf (the message names the
      step and how many arrays are non-finite).
    CheckpointMismatchError: the checkpoint does not fit ``abstract_state``.
  """
  directory = "checkpoints"
  if step == "best":
    best = read_best(workdir)
    if best is None:
      raise MissingPathError(
        f"{workdir} has no best checkpoint; train with config.eval_best_metric set."
      )
    directory, step = BEST_DIRECTORY, int(best["step"])
  checkpointer = Checkpointer(os.path.join(workdir, directory), async_save=False)
  try:
    if step is None:
      step = checkpointer.latest_step()
      if step is None:
        raise MissingPathError(f"No checkpoint in {checkpointer.directory}.")
    elif step not in checkpointer.all_steps():
      raise MissingPathError(
        f"No checkpoint for step {step} in {checkpointer.directory}; steps: "
        f"{checkpointer.all_steps()}."
      )
    state, _ = checkpointer.restore(step, abstract_state)
  finally:
    checkpointer.close()
  return state, step
