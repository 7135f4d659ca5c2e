"""ganjax.checkpoint: no non-finite state is written; damaged checkpoints are named, skippable."""

import glob
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from tolerances import assert_bitwise_equal

from ganjax import checkpoint, loop
from ganjax.errors import CheckpointError, MissingPathError, UserError


def _state(step: int) -> dict:
  """A small state whose arrays are big enough that their data has a file of its own."""
  key = jax.random.fold_in(jax.random.key(0), step)
  return {
    "params": {"w": jax.random.normal(key, (64, 64)), "b": jnp.full((64,), float(step))},
    "step": jnp.int32(step),
  }


def _save_steps(directory: str, steps=(1, 2, 3)) -> None:
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  for step in steps:
    ckpt.save(step, _state(step), {"step": step})
  ckpt.close()


def _truncate_data(step_dir: str) -> None:
  """Cuts the largest data file of a checkpoint in half, as a full disk or a kill of a copy does."""
  files = [f for f in glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


def _delete_state(step_dir: str) -> None:
  shutil.rmtree(os.path.join(step_dir, "state"))


DAMAGES = {"truncated data file": _truncate_data, "deleted state folder": _delete_state}
# orbax leaves the reads of a failed restore's other arrays unawaited; Python reports them.
ignore_unawaited_reads = pytest.mark.filterwarnings(
  "ignore::pytest.PytestUnraisableExceptionWarning"
)


def test_all_finite_is_one_bool_over_float_arrays():
  state = _state(1)
  assert checkpoint.all_finite(state)
  assert checkpoint.all_finite({"step": jnp.int32(3), "key": jax.random.key(0)})
  state["params"]["b"] = state["params"]["b"].at[3].set(jnp.nan)
  assert not checkpoint.all_finite(state)
  assert checkpoint.non_finite_summary(state) == "1 of 2 arrays (params/b)"


def test_save_refuses_a_non_finite_state_and_names_the_last_good_step(tmp_path):
  directory = str(tmp_path / "checkpoints")
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  ckpt.save(1, _state(1), {"step": 1})
  bad = _state(2)
  bad["params"]["w"] = bad["params"]["w"] * jnp.inf
  with pytest.raises(checkpoint.NonFiniteStateError) as info:
    ckpt.save(2, bad, {"step": 2})
  message = str(info.value)
  assert "step 2" in message and "1 of 2 arrays (params/w)" in message
  assert f"last good checkpoint is step 1 in {directory}" in message
  assert isinstance(info.value, UserError) and isinstance(info.value, FloatingPointError)
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_best_checkpoint_never_writes_a_non_finite_state(tmp_path):
  best = checkpoint.BestCheckpoint(str(tmp_path), "fid")
  assert best.update(1, {"fid": 10.0}, _state(1), {"step": 1})
  bad = _state(2)
  bad["params"]["b"] = bad["params"]["b"] * jnp.nan
  with pytest.raises(checkpoint.NonFiniteStateError, match="step 2.*last good .* step 1"):
    best.update(2, {"fid": 5.0}, bad, {"step": 2})
  best.close()
  assert checkpoint.read_best(str(tmp_path))["step"] == 1
  assert checkpoint.Checkpointer(best.directory).all_steps() == [1]


def test_restoring_a_non_finite_checkpoint_fails_clearly(tmp_path, monkeypatch):
  workdir = str(tmp_path)
  bad = _state(2)
  bad["params"]["b"] = bad["params"]["b"].at[0].set(jnp.inf)
  with monkeypatch.context() as m:  # A checkpoint written before states were checked.
    m.setattr(checkpoint, "all_finite", lambda tree: True)
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    ckpt.save(1, _state(1), {"step": 1})
    ckpt.save(2, bad, {"step": 2})
    ckpt.close()
  with pytest.raises(checkpoint.DamagedCheckpointError) as info:
    checkpoint.restore_from_workdir(workdir, None, _state(0))
  assert isinstance(info.value, CheckpointError)
  assert "step 2" in str(info.value) and "NaN/inf in 1 of 2 arrays (params/b)" in str(info.value)
  assert "Other checkpoints there: steps [1]" in str(info.value)
  state, step = checkpoint.restore_from_workdir(workdir, 1, _state(0))
  assert step == 1
  assert_bitwise_equal(state, _state(1))
  with pytest.raises(MissingPathError, match=r"No checkpoint for step 7 .*steps: \[1, 2\]"):
    checkpoint.restore_from_workdir(workdir, 7, _state(0))


def _damaged_at_step_3(tmp_path, damage) -> str:
  """A checkpoints folder with steps 1, 2, 3, the last one damaged by ``DAMAGES[damage]``."""
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory)
  DAMAGES[damage](os.path.join(directory, "3"))
  return directory


@ignore_unawaited_reads
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_checkpoint_is_named_in_one_paragraph(tmp_path, damage):
  directory = _damaged_at_step_3(tmp_path, damage)
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  with pytest.raises(checkpoint.DamagedCheckpointError) as info:
    ckpt.restore(3, _state(0))
  message = str(info.value)
  assert message.startswith(f"The checkpoint at step 3 in {directory} is damaged")
  assert "Other checkpoints there: steps [1, 2]" in message
  assert len(message) < 800 and "\n" not in message, message
  # The latest one stops a resume; the message says how to go on, and nothing moves.
  with pytest.raises(checkpoint.DamagedCheckpointError) as info:
    ckpt.restore_latest(_state(0))
  assert checkpoint.SKIP_DAMAGED_FLAG in str(info.value) and "steps [1, 2]" in str(info.value)
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()


@ignore_unawaited_reads
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_skip_damaged_resumes_from_the_newest_intact_one_and_saves_again(tmp_path, damage):
  directory = _damaged_at_step_3(tmp_path, damage)
  config = ml_collections.ConfigDict({"resume": {"skip_damaged_checkpoints": True}})
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  state, step = loop.resume_or_create(ckpt, lambda: _state(0), lambda: None, config=config)
  assert step == 2
  assert_bitwise_equal(state, _state(2))
  # Moved aside, not deleted, so step 3 can be saved again (orbax refuses an existing step, and
  # would keep calling the damaged one the latest).
  assert os.path.isdir(str(tmp_path / "checkpoints_damaged" / "3"))
  assert ckpt.latest_step() == 2
  ckpt.save(3, _state(30), {"step": 3})
  ckpt.save(4, _state(4), {"step": 4})
  ckpt.close()
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  assert ckpt.all_steps() == [2, 3, 4]
  assert_bitwise_equal(ckpt.restore(3, _state(0))[0], _state(30))
  ckpt.close()


def test_without_the_flag_a_config_lacking_resume_stops(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory)
  _delete_state(os.path.join(directory, "3"))
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  for config in (ml_collections.ConfigDict({"seed": 0}), None):
    with pytest.raises(CheckpointError, match="step 3 .* is damaged"):
      loop.resume_or_create(ckpt, lambda: _state(0), lambda: None, config=config)
  assert ckpt.all_steps() == [1, 2, 3]
  ckpt.close()


def test_every_checkpoint_damaged_moves_nothing(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, steps=(1, 2))
  for step in (1, 2):
    _delete_state(os.path.join(directory, str(step)))
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"Every checkpoint .*\[1, 2\]"):
    ckpt.restore_latest(_state(0), skip_damaged=True)
  assert ckpt.all_steps() == [1, 2]
  assert not os.path.exists(directory + "_damaged")
  ckpt.close()


@ignore_unawaited_reads
def test_the_same_step_damaged_twice_keeps_both_copies(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, steps=(1, 2))
  for _ in range(2):
    _truncate_data(os.path.join(directory, "2"))
    ckpt = checkpoint.Checkpointer(directory, async_save=False)
    step, _, _ = ckpt.restore_latest(_state(0), skip_damaged=True)
    assert step == 1
    ckpt.save(2, _state(2), {"step": 2})
    ckpt.close()
  assert sorted(os.listdir(directory + "_damaged")) == ["2", "2.1"]


def test_shape_mismatch_is_a_checkpoint_error_not_damage(tmp_path):
  directory = str(tmp_path / "checkpoints")
  _save_steps(directory, steps=(1,))
  wider = _state(0)
  wider["params"]["b"] = jnp.zeros((65,))
  ckpt = checkpoint.Checkpointer(directory, async_save=False)
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"params/b: checkpoint \(64,\)"):
    ckpt.restore_latest(wider, skip_damaged=True)
  assert ckpt.all_steps() == [1]
  ckpt.close()
  assert issubclass(checkpoint.CheckpointMismatchError, CheckpointError)
  assert issubclass(checkpoint.CheckpointMismatchError, ValueError)
