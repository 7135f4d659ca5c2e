"""loop.run on a tiny model: a signal at any point saves the step reached, and a resume from any
stop reaches the uninterrupted run's state bit for bit, ``metrics.jsonl`` holding each step once.
"""

import json
import logging
import os
import signal

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from checkpoint_test import DAMAGES, ignore_unawaited_reads
from tolerances import assert_bitwise_equal

from ganjax import checkpoint, loop
from ganjax.errors import CheckpointError

TOTAL = 12
BATCH = 4


def _config(**overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(
    dict(
      seed=0,
      num_train_steps=TOTAL,
      log_every_steps=4,
      sample_every_steps=6,
      eval_every_steps=6,
      eval_best_metric="error",
      checkpoint_every_steps=5,
    )
  )
  config.update(overrides)
  return config


def _create():
  return {"w": jnp.zeros((8,)), "momentum": jnp.zeros((8,)), "step": jnp.int32(0)}


@jax.jit
def _step(state, batch):
  """SGD with momentum on a noisy least-squares problem; the noise is keyed by the step."""
  noise = jax.random.normal(jax.random.fold_in(jax.random.key(0), state["step"]), (8,))

  def loss_fn(w):
    return jnp.mean((batch["x"] @ w - batch["y"]) ** 2)

  loss, grad = jax.value_and_grad(loss_fn)(state["w"])
  momentum = 0.9 * state["momentum"] + grad + 0.01 * noise
  w = state["w"] - batch["lr"] * momentum
  return {"w": w, "momentum": momentum, "step": state["step"] + 1}, {"loss": loss}


def _batch(step: int, lr: float = 0.05) -> dict:
  rng = np.random.default_rng(step)
  x = rng.normal(size=(BATCH, 8)).astype(np.float32)
  return {"x": x, "y": x.sum(axis=1), "lr": np.float32(lr)}


class _Writer:
  """The part of a clu metric writer the loop uses; like clu's, it takes numbers only."""

  def write_scalars(self, step, scalars):
    for name, value in scalars.items():
      assert isinstance(value, (int, float, np.number)), (step, name, value)

  def write_images(self, step, images):
    pass


def _kill(signum=signal.SIGTERM):
  os.kill(os.getpid(), signum)


class _Run:
  """One launch of the loop on ``workdir``: resumes like a trainer, and can be signalled (or
  made to crash) at one point of one step."""

  def __init__(
    self, workdir, config=None, at=None, step=None, signals=(signal.SIGTERM,), phase_ends=()
  ):
    self.workdir, self.config = workdir, config or _config()
    self.at, self.at_step, self.signals = at, step, signals
    self.samples, self.evaluations, self.saved = [], [], []
    self.phase_ends = phase_ends

  def _maybe(self, point, step):
    if point == self.at and step == self.at_step:
      self.at = None  # Once.
      if self.signals == "crash":
        raise _Crash(step)
      for signum in self.signals:
        _kill(signum)

  def launch(self):
    ckpt = checkpoint.Checkpointer(os.path.join(self.workdir, "checkpoints"), async_save=False)
    state, start = loop.resume_or_create(ckpt, _create, _create, config=self.config)
    run_step = start

    def batches():
      for i in range(start, TOTAL):
        self._maybe("batch", i + 1)
        yield _batch(i)

    def step_fn(state, batch):
      nonlocal run_step
      run_step += 1
      self._maybe("step", run_step)
      return _step(state, batch)

    def progress(scalars):
      self._maybe("log", run_step)
      return f"loss {scalars['loss']:.3f}"

    def write_samples(step, state):
      self._maybe("samples", step)
      self.samples.append(step)

    def evaluate(step, state):
      self._maybe("eval", step)
      self.evaluations.append(step)
      return {"error": float(jnp.sum((state["w"] - 1.0) ** 2))}

    save = ckpt.save

    def save_with_hook(step, state, position):
      self._maybe("checkpoint", step)
      assert position == loop.data_position(self.config, step, BATCH)
      self.saved.append(step)
      return save(step, state, position)

    check = loop.MetricsBuffer.check

    def check_with_hook(buffer):
      self._maybe("flush", run_step)
      return check(buffer)

    try:
      with pytest.MonkeyPatch.context() as m:
        m.setattr(loop.MetricsBuffer, "check", check_with_hook)
        m.setattr(ckpt, "save", save_with_hook)
        return loop.run(
          self.config,
          self.workdir,
          state=state,
          start_step=start,
          step_fn=step_fn,
          batches=batches(),
          checkpointer=ckpt,
          writer=_Writer(),
          examples_per_step=BATCH,
          write_samples=write_samples,
          evaluate=evaluate,
          progress=progress,
          phase_ends=self.phase_ends,
          phase_of=_phase_of(self.phase_ends) if self.phase_ends else None,
        )
    finally:
      ckpt.close()


def _phase_of(phase_ends):
  """Steps up to the first end are in phase "a", up to the second in "b", and so on."""
  return lambda step: "abcdefgh"[sum(step > end for end in phase_ends)]


class _Crash(Exception):
  """A kill -9: the process ends where it is, with no handler and no checkpoint."""


def _latest(workdir):
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  try:
    return ckpt.latest_step()
  finally:
    ckpt.close()


def _records(workdir):
  """``metrics.jsonl`` without its timings: what a resumed run must reproduce."""
  with open(os.path.join(workdir, loop.METRICS_FILE)) as f:
    records = [json.loads(line) for line in f]
  timing = {"wall_time", "steps_per_sec", "images_per_sec"}
  return [{k: v for k, v in r.items() if k not in timing} for r in records]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The uninterrupted run: its final state and ``metrics.jsonl``."""
  workdir = str(tmp_path_factory.mktemp("reference"))
  state = _Run(workdir).launch()
  assert _latest(workdir) == TOTAL
  return state, _records(workdir)


# (where, step): every part of a step the loop spends time in; checkpoints are due at 5 and 10,
# logs at 4, 8, 12 (the metric buffer is also fetched before checkpoints), samples and
# evaluations at 6 and 12. SIGINT takes the same path as SIGTERM: a few points suffice.
POINTS = [
  ("batch", 3),
  ("step", 1),
  ("step", 7),
  ("flush", 4),
  ("flush", 5),
  ("log", 8),
  ("samples", 6),
  ("eval", 6),
  ("checkpoint", 5),
  ("checkpoint", 10),
  ("step", TOTAL),
]
CASES = [(at, step, signal.SIGTERM) for at, step in POINTS] + [
  (at, step, signal.SIGINT) for at, step in POINTS if at in ("flush", "eval", "checkpoint")
]


@pytest.mark.parametrize(
  "at, step, signum", CASES, ids=[f"{a}-{s}-{signal.Signals(n).name}" for a, s, n in CASES]
)
def test_a_signal_anywhere_saves_the_step_reached_and_resumes_exactly(
  tmp_path, reference, caplog, at, step, signum
):
  workdir = str(tmp_path)
  name = signal.Signals(signum).name
  handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with caplog.at_level(logging.INFO):
    stopped = _Run(workdir, at=at, step=step, signals=(signum,)).launch()
  assert int(stopped["step"]) == step
  assert _latest(workdir) == step
  assert f"Stopped by {name} at step {step}; checkpoint saved." in caplog.text
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
  final = _Run(workdir).launch()
  ref_state, ref_records = reference
  assert_bitwise_equal(final, ref_state)
  # Evaluations depend on the state alone: the same records. Training scalars: each step once;
  # the stop also logs the steps since the last log, so the next log averages fewer steps.
  records = _records(workdir)
  assert [r for r in records if "error" in r] == [r for r in ref_records if "error" in r]
  steps = [r["step"] for r in records if "loss" in r]
  ref_steps = [r["step"] for r in ref_records if "loss" in r]
  assert steps == sorted(set(ref_steps) | {step}), steps


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(tmp_path):
  workdir = str(tmp_path)
  handler = signal.getsignal(signal.SIGINT)
  with pytest.raises(KeyboardInterrupt):
    _Run(workdir, at="samples", step=6, signals=(signal.SIGINT, signal.SIGINT)).launch()
  assert _latest(workdir) == 5
  assert signal.getsignal(signal.SIGINT) is handler


def test_metrics_hold_each_step_once_after_kills_and_resumes(tmp_path, reference):
  workdir = str(tmp_path)
  config = _config(log_every_steps=1)
  # Killed (-9) at step 9, after logging steps 6-8 past the checkpoint at 5; then killed while a
  # record was being written; then at step 11, past the checkpoint at 10.
  with pytest.raises(_Crash):
    _Run(workdir, config, at="step", step=9, signals="crash").launch()
  with open(os.path.join(workdir, loop.METRICS_FILE), "a") as f:
    f.write('{"step": 9, "wall_ti')
  with pytest.raises(_Crash):
    _Run(workdir, config, at="step", step=11, signals="crash").launch()
  _Run(workdir, config).launch()
  full = str(tmp_path / "uninterrupted")
  _Run(full, config).launch()
  assert _records(workdir) == _records(full)
  steps = [r["step"] for r in _records(workdir) if "loss" in r]
  assert steps == list(range(1, TOTAL + 1))


@ignore_unawaited_reads
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_latest_checkpoint_stops_or_is_skipped(tmp_path, reference, damage):
  workdir = str(tmp_path)
  with pytest.raises(_Crash):  # Checkpoints at 5 and 10, killed in step 11.
    _Run(workdir, at="step", step=11, signals="crash").launch()
  DAMAGES[damage](os.path.join(workdir, "checkpoints", "10"))
  with pytest.raises(CheckpointError, match=r"step 10 .*skip_damaged_checkpoints=True"):
    _Run(workdir).launch()
  assert _latest(workdir) == 10  # Nothing moved without the flag.
  skip = _config(resume={"skip_damaged_checkpoints": True})
  final = _Run(workdir, skip).launch()  # From step 5; saves step 10 again, then 12.
  assert_bitwise_equal(final, reference[0])
  assert os.path.isdir(os.path.join(workdir, "checkpoints_damaged", "10"))
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  assert ckpt.all_steps() == [5, 10, 12]
  ckpt.close()
  ref_records = reference[1]
  records = _records(workdir)
  assert [r for r in records if "error" in r] == [r for r in ref_records if "error" in r]
  assert [r["step"] for r in records] == [r["step"] for r in ref_records]


def test_drop_metrics_after_keeps_the_file_when_nothing_is_past(tmp_path):
  path = tmp_path / loop.METRICS_FILE
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": Infinity}\n')
  before = os.stat(path).st_mtime_ns
  assert loop.drop_metrics_after(str(tmp_path), 2) == 0
  assert os.stat(path).st_mtime_ns == before
  assert loop.drop_metrics_after(str(tmp_path), 1) == 1
  assert path.read_text() == '{"step": 1, "loss": 1.0}\n'
  assert loop.drop_metrics_after(str(tmp_path / "missing"), 0) == 0


def test_a_non_finite_state_is_never_saved(tmp_path):
  """Metrics are computed before the update, so only the state shows the divergence of step 3."""
  workdir = str(tmp_path)
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  config = _config(checkpoint_every_steps=1, log_every_steps=1, eval_every_steps=0)

  def batches():
    for i in range(TOTAL):
      yield _batch(i, lr=np.inf if i == 2 else 0.05)

  with pytest.raises(checkpoint.NonFiniteStateError) as info:
    loop.run(
      config,
      workdir,
      state=_create(),
      start_step=0,
      step_fn=_step,
      batches=batches(),
      save_checkpoint=lambda step, state: ckpt.save(step, state, {"step": step}),
      writer=_Writer(),
      examples_per_step=BATCH,
    )
  assert ckpt.all_steps() == [1, 2]
  message = str(info.value)
  assert "state at step 3 holds NaN/inf" in message and "last good checkpoint is step 2" in message
  ckpt.close()
  assert [r["step"] for r in _records(workdir)] == [1, 2, 3]  # Its metrics were still finite.


def test_a_non_finite_metric_names_the_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path)
  config = _config(checkpoint_every_steps=2, log_every_steps=3, eval_every_steps=0)
  saved = []

  def step_fn(state, batch):
    state, metrics = _step(state, batch)
    return state, {"loss": jnp.where(state["step"] == 5, jnp.nan, metrics["loss"])}

  with pytest.raises(loop.NonFiniteLossError, match=r"step 5: .*last good checkpoint \(step 4\)"):
    loop.run(
      config,
      workdir,
      state=_create(),
      start_step=0,
      step_fn=step_fn,
      batches=(_batch(i) for i in range(TOTAL)),
      save_checkpoint=lambda step, state: saved.append(step),
      writer=_Writer(),
      examples_per_step=BATCH,
    )
  assert saved == [2, 4]


def test_phase_ends_force_a_log_an_evaluation_and_a_checkpoint(tmp_path, reference, caplog):
  """No cadence hits step 7 (logs every 4, evaluations every 6, checkpoints every 5): a phase that
  ends there is logged, evaluated and saved all the same, and every record names its phase."""
  run = _Run(str(tmp_path), phase_ends=(7,))
  with caplog.at_level(logging.INFO):
    final = run.launch()
  assert_bitwise_equal(final, reference[0])  # Phases change what is recorded, not the training.
  assert run.saved == [5, 7, 10, TOTAL]
  assert run.evaluations == [6, 7, TOTAL]
  assert run.samples == [6, TOTAL]  # Samples keep their cadence.
  records = _records(str(tmp_path))
  assert [r["step"] for r in records if "loss" in r] == [4, 7, 8, TOTAL]
  assert [r["step"] for r in records if "error" in r] == [6, 7, TOTAL]
  assert [r["phase"] for r in records] == ["a" if r["step"] <= 7 else "b" for r in records]
  assert "step 7/12 [a] | loss" in caplog.text
  assert "Step 7 ends phase 'a'; 'b' follows." in caplog.text
  # Timed apart from the others, like the run's first step: a new phase may compile its step.
  assert "First step of phase 'b' (with compilation) took" in caplog.text
  # Without phases, records are as before: no "phase" key.
  assert all("phase" not in r for r in reference[1])


def test_run_takes_a_checkpointer_or_a_save_function(tmp_path):
  kwargs = dict(state=_create(), start_step=0, step_fn=_step, batches=iter(()), writer=_Writer())
  with pytest.raises(TypeError, match="one of checkpointer= and save_checkpoint="):
    loop.run(_config(), str(tmp_path), examples_per_step=BATCH, **kwargs)
