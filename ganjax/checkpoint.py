"""Checkpoints of the whole GANState plus the data position, with orbax.

orbax writes each checkpoint into a temporary directory and renames it when complete, so a kill at
any moment leaves the previous checkpoint readable; an unfinished one is never picked up by
:meth:`Checkpointer.latest_step`. A restore whose shapes disagree with the config fails with a
message naming every mismatching array.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging


class CheckpointMismatchError(ValueError):
  """The checkpoint on disk does not fit the state the config builds."""


class Checkpointer:
  """Saves and restores ``(GANState, data position)`` pairs under ``directory``."""

  def __init__(self, directory: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
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
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_position: dict[str, Any]) -> bool:
    """Starts writing a checkpoint for ``step`` (asynchronously unless configured otherwise)."""
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_position)
        ),
        force=True,
    )
    if saved:
      logging.info("Saving checkpoint for step %d in %s", step, self.directory)
    return saved

  def restore(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    """Restores ``step`` into the structure, shapes and shardings of ``target``.

    ``target`` may hold arrays or ``jax.ShapeDtypeStruct``s (e.g. from ``jax.eval_shape``).
    """
    self._check_shapes(step, target)
    abstract = jax.tree.map(_abstract, target)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], dict(restored["data"] or {})

  def _check_shapes(self, step: int, target: Any) -> None:
    saved = self._manager.item_metadata(step)["state"]
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
  if isinstance(x, jax.ShapeDtypeStruct):
    return x
  sharding = getattr(x, "sharding", None)
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
    {"is", "precision", "recall", "density", "coverage", "modes", "hq_fraction",
     "stacked_mnist_modes"}
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

  def is_better(self, value: float) -> bool:
    if not np.isfinite(value):
      return False
    if self.record is None or self.record.get("metric") != self.metric:
      return True
    best = self.record["value"]
    return value > best if self.higher_is_better else value < best

  def update(self, step: int, scalars: dict[str, float], state: Any, data_position) -> bool:
    """Saves ``state`` when ``scalars[metric]`` beats the best so far; returns whether it did."""
    if self.metric not in scalars:
      raise KeyError(
          f"eval_best_metric={self.metric!r} is not among the evaluation's values "
          f"{sorted(scalars)}."
      )
    value = float(scalars[self.metric])
    if not self.is_better(value):
      return False
    self._checkpointer.save(step, state, data_position)
    self._checkpointer.wait_until_finished()
    self.record = {"metric": self.metric, "value": value, "step": step}
    tmp = os.path.join(self.directory, "best.json.tmp")
    with open(tmp, "w") as f:
      json.dump(self.record, f)
    os.replace(tmp, os.path.join(self.directory, "best.json"))
    logging.info("New best %s = %.6g at step %d (saved in %s).", self.metric, value, step,
                 self.directory)
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
  the run had ``config.eval_best_metric``); the others read ``WORKDIR/checkpoints``.

  Raises:
    FileNotFoundError: no such checkpoint (the message lists the steps there are).
  """
  directory = "checkpoints"
  if step == "best":
    best = read_best(workdir)
    if best is None:
      raise FileNotFoundError(
          f"{workdir} has no best checkpoint; train with config.eval_best_metric set."
      )
    directory, step = BEST_DIRECTORY, int(best["step"])
  checkpointer = Checkpointer(os.path.join(workdir, directory), async_save=False)
  try:
    if step is None:
      step = checkpointer.latest_step()
      if step is None:
        raise FileNotFoundError(f"No checkpoint in {checkpointer.directory}.")
    elif step not in checkpointer.all_steps():
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {checkpointer.directory}; steps: "
          f"{checkpointer.all_steps()}."
      )
    state, _ = checkpointer.restore(step, abstract_state)
  finally:
    checkpointer.close()
  return state, step
