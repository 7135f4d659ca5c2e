"""ganjax.workdir: the launch record, refused config changes, the step check and the lock."""

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, load_config

from ganjax import errors, workdir
from ganjax.systems import gan


def _tiny(**overrides):
  """The 2-D ring GAN at a few steps: each training call takes seconds."""
  config = load_config("gaussian_mixture", "dataset=ring,runlocal")
  config.parallel.num_devices = 1
  config.num_train_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 0
  config.sample_every_steps = 0
  config.update_from_flattened_dict(overrides)  # Dotted keys: {"model.name": ...}.
  return config


def _launches(path):
  return workdir.read_launches(str(path))


def _config_json(path):
  with open(os.path.join(path, "config.json")) as f:
    return json.load(f)


def _changes(record):
  return {d["field"]: (d.get("old"), d.get("new"), d["guarded"]) for d in record["config_changes"]}


def _write_lock(path, **holder):
  os.makedirs(path, exist_ok=True)
  holder = {"host": socket.gethostname(), "started": "2026-01-01T00:00:00+00:00", **holder}
  with open(os.path.join(path, workdir.LOCK_FILE), "w") as f:
    json.dump(holder, f)


def _dead_pid():
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


def test_differences_compare_the_json_form():
  config = _tiny()
  same = _tiny()
  same.model.generator.hidden = [16, 16]  # A list where the config has a tuple.
  assert workdir.config_differences(workdir.config_json(config), workdir.config_json(same)) == []
  old = {"a": {"b": 1, "gone": 2}, "x": float("nan"), "flag": 1, "p": None}
  new = {"a": {"b": 1.0, "c": [1, 2]}, "x": float("nan"), "flag": True, "p": "set"}
  assert workdir.config_differences(old, new) == [
    {"field": "a.c", "new": [1, 2], "guarded": True},
    {"field": "flag", "old": 1, "new": True, "guarded": True},
    {"field": "p", "old": None, "new": "set", "guarded": True},
    {"field": "a.gone", "old": 2, "guarded": True},
  ]


@pytest.mark.parametrize(
  "field",
  [
    "loss.name",
    "model.generator.hidden",
    "optim.g.learning_rate",
    "data.name",
    "seed",
    "batch_size",
    "n_critic",
    "regularizer.r1",
    "augment.policy",
    "ema.decay",
    "task",
    "unrolled_steps",
    "parallel.mode",
    "srgan.pretrain_steps",
    "some_new_field",
  ],
)
def test_guarded_fields(field):
  assert workdir.is_guarded(field)


@pytest.mark.parametrize(
  "field",
  [
    "num_train_steps",
    "log_every_steps",
    "sample_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "eval_every_steps",
    "eval_metrics",
    "resume.allow_config_changes",
    "parallel.num_devices",
    "srgan.eval_shave",
    "data.eval_max_crops",
  ],
)
def test_free_fields(field):
  assert not workdir.is_guarded(field)


def test_launches_record_changes_and_refuse_guarded_ones(tmp_path):
  path = str(tmp_path / "run")
  gan.train_and_evaluate(_tiny(), path)
  (first,) = _launches(path)
  assert first["launch"] == 1 and first["resumed_from_step"] == 0
  assert first["config_changes"] == [] and first["config"] == _config_json(path)
  assert first["pid"] == os.getpid() and first["host"] == socket.gethostname()
  assert first["command"] == sys.argv and first["time"] and first["num_devices"] == 1
  assert not os.path.exists(os.path.join(path, workdir.LOCK_FILE))  # Released at the end.

  # Run length and cadence may change: recorded, and config.json follows.
  gan.train_and_evaluate(_tiny(num_train_steps=4, log_every_steps=1), path)
  second = _launches(path)[1]
  assert second["launch"] == 2 and second["resumed_from_step"] == 2 and "config" not in second
  assert _changes(second) == {"num_train_steps": (2, 4, False), "log_every_steps": (2, 1, False)}
  assert _config_json(path)["num_train_steps"] == 4

  # The reported case: the loss and G's learning rate changed on a trained workdir.
  changed = _tiny(
    num_train_steps=6, log_every_steps=1, **{"loss.name": "hinge", "optim.g.learning_rate": 0.05}
  )
  with pytest.raises(errors.WorkdirError) as refused:
    gan.train_and_evaluate(changed, path)
  message = str(refused.value)
  assert "checkpoint at step 4" in message
  assert "--config.resume.allow_config_changes=True" in message
  assert 'loss.name: "non_saturating" -> "hinge"' in message
  assert "optim.g.learning_rate: 0.001 -> 0.05" in message
  assert "num_train_steps" not in message  # Only the guarded fields are listed.
  assert len(_launches(path)) == 2 and _config_json(path)["loss"]["name"] == "non_saturating"
  assert not os.path.exists(os.path.join(path, workdir.LOCK_FILE))

  # Allowed with the flag: trained on, the changes and the flag recorded.
  changed.resume.allow_config_changes = True
  state = gan.train_and_evaluate(changed, path)
  assert int(state.step) == 6
  third = _launches(path)[2]
  assert third["resumed_from_step"] == 4 and third["allow_config_changes"] is True
  assert _changes(third) == {
    "num_train_steps": (4, 6, False),
    "loss.name": ("non_saturating", "hinge", True),
    "optim.g.learning_rate": (0.001, 0.05, True),
    "resume.allow_config_changes": (False, True, False),
  }
  assert _config_json(path)["loss"]["name"] == "hinge"
  # The original config is still the first line's.
  assert _launches(path)[0]["config"]["loss"]["name"] == "non_saturating"

  # num_train_steps below the checkpoint's step: an error naming both and the flag to raise.
  below = _tiny(num_train_steps=3, **{"loss.name": "hinge", "optim.g.learning_rate": 0.05})
  with pytest.raises(
    errors.WorkdirError,
    match=r"checkpoint at step 6, beyond "
    r"--config.num_train_steps=3.*--config.num_train_steps=6 or more",
  ):
    gan.train_and_evaluate(below, path)
  # Equal: nothing to train, and no error.
  below.num_train_steps = 6
  assert int(gan.train_and_evaluate(below, path).step) == 6
  assert [r["resumed_from_step"] for r in _launches(path)] == [0, 2, 4, 6]


def test_changes_before_any_checkpoint_are_recorded_not_refused(tmp_path):
  path = str(tmp_path / "run")
  os.makedirs(path)
  config = _tiny()
  with open(os.path.join(path, "config.json"), "w") as f:  # A launch that died before step 1.
    f.write(config.to_json_best_effort())
  config.seed = 1
  workdir.check_relaunch(config, path, checkpoint_step=0)
  record = workdir.record_launch(config, path, start_step=0)
  # A workdir without launches.jsonl gets line 0 from its config.json: nothing is lost.
  zeroth, first = _launches(path)
  assert zeroth["launch"] == 0 and zeroth["reconstructed"] and zeroth["config"]["seed"] == 0
  assert first == record and first["launch"] == 1 and _changes(first) == {"seed": (0, 1, True)}


def test_a_line_cut_short_by_a_kill_is_skipped(tmp_path):
  path = str(tmp_path)
  config = _tiny()
  workdir.record_launch(config, path, start_step=0)
  with open(os.path.join(path, workdir.LAUNCHES_FILE), "a") as f:
    f.write('{"launch": 2, "ti')  # No newline: killed while writing.
  workdir.record_launch(config, path, start_step=0)
  assert [r["launch"] for r in _launches(path)] == [1, 2]


def test_a_locked_workdir_refuses_a_second_launch(tmp_path):
  path = str(tmp_path / "run")
  os.makedirs(path)
  holder = subprocess.Popen(
    [
      sys.executable,
      "-c",
      "import sys; from ganjax import workdir; workdir.lock(sys.argv[1]); print('locked', "
      "flush=True); sys.stdin.read()",
      path,
    ],
    cwd=REPO_ROOT,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(errors.WorkdirError) as refused:
      gan.train_and_evaluate(_tiny(), path)
    message = str(refused.value)
    assert f"PID {holder.pid} on host {socket.gethostname()}, started 20" in message
    assert "in use by another run" in message and "another --workdir" in message
    assert not os.path.exists(os.path.join(path, "checkpoints"))  # Refused before touching it.
  finally:
    holder.communicate("", timeout=60)  # Its exit releases the lock.
  assert holder.returncode == 0
  assert not os.path.exists(os.path.join(path, workdir.LOCK_FILE))
  me = workdir.lock(path)
  assert me["pid"] == os.getpid()
  workdir.release(path)
  assert not os.path.exists(os.path.join(path, workdir.LOCK_FILE))


def test_a_live_process_keeps_its_lock(tmp_path):
  path = str(tmp_path / "run")
  _write_lock(path, pid=os.getppid())
  with pytest.raises(errors.WorkdirError, match=rf"PID {os.getppid()} on host"):
    workdir.lock(path)


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
  path = str(tmp_path / "run")
  dead = _dead_pid()
  _write_lock(path, pid=dead)
  me = workdir.lock(path)
  with open(os.path.join(path, workdir.LOCK_FILE)) as f:
    assert json.load(f) == me and me["pid"] == os.getpid()
  workdir.release(path)
  assert not os.path.exists(os.path.join(path, workdir.LOCK_FILE))


def test_a_lock_from_another_host_is_not_taken_over(tmp_path):
  path = str(tmp_path / "run")
  _write_lock(path, pid=_dead_pid(), host="elsewhere")
  lock_file = os.path.join(path, workdir.LOCK_FILE)
  with pytest.raises(
    errors.WorkdirError,
    match=rf"another host: PID \d+ on host elsewhere.*"
    rf"delete {lock_file} and relaunch",
  ):
    workdir.lock(path)
  assert os.path.exists(lock_file)


def test_the_lock_is_released_when_training_raises(tmp_path):
  path = str(tmp_path / "run")

  @workdir.releases_lock
  def failing_trainer(config, path):
    workdir.lock(path)
    assert os.path.exists(os.path.join(path, workdir.LOCK_FILE))
    raise FloatingPointError("boom")

  os.makedirs(path)
  with pytest.raises(FloatingPointError):
    failing_trainer(None, path)
  assert not os.path.exists(os.path.join(path, workdir.LOCK_FILE))
