"""Multi-process training: real processes (2 CPU devices each, gloo collectives over localhost)
train to the parameters of 1 process with 4 devices, a run resumes with either process layout,
each process reads its own share of the data, and a missing layout is a clear error."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
import tolerances
from conftest import REPO_ROOT, load_config

from ganjax import data, parallel
from ganjax import workdir as workdir_lib
from ganjax.errors import ConfigError
from ganjax.systems import gan

CONFIG = "configs/gaussian_mixture.py:runlocal"
# The resumed run: steps 1-3 on 1 process x 4 devices (this one), 4-6 on 2 processes x 2 devices
# (the command line), 7-9 on 1 process x 4 devices again; a checkpoint every 3 steps.
CHECKPOINT = 3
LAYOUTS = (1, 2, 1)
DEVICES = 4
# Constant learning rates: a launch that stops early (num_train_steps) trains as the full run does.
OVERRIDES = {
  "checkpoint_every_steps": CHECKPOINT,
  "keep_checkpoints": len(LAYOUTS),
  "optim.g.schedule": "constant",
  "optim.d.schedule": "constant",
}
# What tells a process where it stands in a cluster: none may leak into these tests.
_CLUSTER_ENV = re.compile(
  r"^(SLURM_|SUBMITIT_|OMPI_|PMI_|KUBERNETES_SERVICE_HOST$|JAX_COORDINATOR_|JAX_LOCAL_DEVICE_IDS$)"
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(local_devices: int) -> dict[str, str]:
  """The test session's environment (its compilation cache, XLA flags such as
  --xla_cpu_max_isa) with ``local_devices`` CPU devices and no cluster variables."""
  env = {k: v for k, v in os.environ.items() if not _CLUSTER_ENV.match(k)}
  flags = [
    f
    for f in env.get("XLA_FLAGS", "").split()
    if not f.startswith("--xla_force_host_platform_device_count")
  ]
  env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={local_devices}"])
  return env


def _launch(
  workdir: str,
  num_processes: int,
  num_train_steps: int,
  *extra_args: str,
  timeout: float = 300,
  while_running=None,
) -> list[str]:
  """Trains ``workdir`` to ``num_train_steps`` with the command line on ``num_processes``
  processes of ``DEVICES // num_processes`` devices each; every process must succeed. Returns
  their outputs. ``while_running(procs, logs)`` is called once they are started."""
  args = [
    sys.executable,
    "-m",
    "ganjax.main",
    f"--config={CONFIG}",
    f"--workdir={workdir}",
    f"--config.num_train_steps={num_train_steps}",
    *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
    *extra_args,
    f"--coordinator_address=localhost:{_free_port()}",
    f"--num_processes={num_processes}",
  ]
  # Logs to files: a process blocked on a full pipe would stall the others in a collective.
  logs = [f"{workdir}.process_{i}_of_{num_processes}.log" for i in range(num_processes)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as out:
        procs.append(
          subprocess.Popen(
            [*args, f"--process_id={i}"],
            cwd=REPO_ROOT,
            env=_env(DEVICES // num_processes),
            stdout=out,
            stderr=subprocess.STDOUT,
          )
        )
    deadline = time.monotonic() + timeout
    if while_running is not None:
      while_running(procs, logs)
    for proc in procs:
      proc.wait(timeout=max(1.0, deadline - time.monotonic()))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  outputs = []
  for log in logs:
    with open(log) as f:
      outputs.append(f.read())
  for i, (proc, out) in enumerate(zip(procs, outputs, strict=True)):
    assert proc.returncode == 0, f"process {i} of {num_processes}:\n{out[-4000:]}"
    assert f"process {i} of {num_processes}" in out, out[-4000:]
  return outputs


def _config(num_train_steps: int):
  path, _, arg = CONFIG.partition(":")
  config = load_config(os.path.splitext(os.path.basename(path))[0], arg)
  config.num_train_steps = num_train_steps
  config.parallel.num_devices = DEVICES  # Of the test session's 8.
  config.update_from_flattened_dict(OVERRIDES)
  return config


def _assert_states_close(actual, desired, config, steps: int, err_msg: str) -> None:
  """G's and D's parameters (and G's EMA, an average of G's) after ``steps`` Adam updates from
  the same start, whose gradients differ only by round-off (the reductions over the devices of
  one process or two)."""
  tolerances.assert_bitwise_equal(actual.step, desired.step)
  # D sees a real and a fake batch; G's gradient passes through D.
  length = tolerances.gradient_length(
    {"g": desired.generator.params, "d": desired.discriminator.params}, 2 * config.batch_size
  )
  pairs = {
    "generator": (actual.generator.params, desired.generator.params, config.optim.g),
    "generator EMA": (actual.ema_params, desired.ema_params, config.optim.g),
    "discriminator": (actual.discriminator.params, desired.discriminator.params, config.optim.d),
  }
  for name, (params, desired_params, optim) in pairs.items():
    tolerances.assert_adam_trajectories_close(
      params,
      desired_params,
      steps=steps,
      learning_rate=optim.learning_rate,
      b1=optim.b1,
      b2=optim.b2,
      length=length,
      err_msg=f"{name} {err_msg}",
    )


def _max_difference(a, b) -> float:
  leaves = zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True)
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - y), initial=0)) for x, y in leaves)


@pytest.mark.skipif(jax.device_count() < DEVICES, reason=f"needs {DEVICES} (simulated) devices")
def test_two_processes_train_as_one_and_resume_with_either_layout(tmp_path):
  total = CHECKPOINT * len(LAYOUTS)
  reference = str(tmp_path / "one_process")  # 1 process x 4 devices throughout.
  workdir = str(tmp_path / "layouts")
  timings = {}
  for launch, num_processes in enumerate(LAYOUTS, 1):
    start = time.perf_counter()
    if num_processes == 1:  # In this process: a launch of the command line costs seconds.
      gan.train_and_evaluate(_config(CHECKPOINT * launch), workdir)
    else:
      _launch(workdir, num_processes, CHECKPOINT * launch)
    timings[f"launch {launch}: {num_processes} process(es)"] = time.perf_counter() - start
  start = time.perf_counter()
  gan.train_and_evaluate(_config(total), reference)
  timings["reference"] = time.perf_counter() - start

  config = _config(total)
  differences = {}
  for launch, num_processes in enumerate(LAYOUTS, 1):
    step = CHECKPOINT * launch
    _, _, state, _ = gan.load_checkpoint(workdir, step)
    _, _, desired, _ = gan.load_checkpoint(reference, step)
    layout = f"step {step}, steps {step - CHECKPOINT + 1}-{step} on {num_processes} process(es)"
    _assert_states_close(state, desired, config, step, layout)
    differences[step] = _max_difference(state, desired)
  print(f"max |resumed run - 1 process x {DEVICES}| by checkpoint: {differences}; {timings}")

  # Process 0 alone wrote the run's files: each record once, every launch with its layout.
  with open(os.path.join(workdir, "launches.jsonl")) as f:
    launches = [json.loads(line) for line in f]
  assert [r["num_processes"] for r in launches] == list(LAYOUTS)
  assert [r["num_devices"] for r in launches] == [DEVICES] * len(LAYOUTS)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [(r["step"], "modes" in r) for r in map(json.loads, f)]  # (step, is evaluation)
  assert len(set(records)) == len(records), records
  assert [step for step, evaluation in records if evaluation] == [3, 6, 9]
  assert os.path.exists(os.path.join(workdir, "samples", f"step_{2 * CHECKPOINT:06d}.png"))
  assert os.path.exists(os.path.join(workdir, "samples", f"step_{total:06d}.png"))
  assert not os.path.exists(os.path.join(workdir, workdir_lib.LOCK_FILE))


@pytest.mark.slow
def test_a_signal_to_one_process_stops_all_after_the_same_step(tmp_path):
  workdir = str(tmp_path / "preempted")

  def terminate_process_1(procs, logs):
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
      with open(logs[0]) as f:
        if "First step" in f.read():
          break
      time.sleep(0.2)
    time.sleep(1.0)  # Some steps on.
    procs[1].send_signal(signal.SIGTERM)

  # Only the signal makes a checkpoint before the end (0 = at the end only).
  cadences = [f"--config.{k}_every_steps=0" for k in ("sample", "eval", "checkpoint")]
  outputs = _launch(
    workdir,
    2,
    10**6,
    "--config.log_every_steps=100000",
    *cadences,
    while_running=terminate_process_1,
  )
  stops = [re.search(r"Stopped by (.+) at step (\d+); checkpoint saved", out) for out in outputs]
  assert all(stops), [out[-2000:] for out in outputs]
  assert [m.group(1) for m in stops] == ["a signal to another process", "SIGTERM"]
  step = int(stops[0].group(2))
  assert int(stops[1].group(2)) == step
  _, _, state, saved = gan.load_checkpoint(workdir)
  assert saved == step == int(state.step)


@pytest.mark.parametrize(
  "name",
  [
    "ring",  # Infinite 2-D points drawn per step.
    "embedded_mnist",  # A finite dataset, shuffled per epoch.
    "stacked_mnist",  # Fresh digit triples per step.
  ],
)
def test_each_process_reads_its_share_of_the_global_batch(name):
  config = load_config("gaussian_mixture", "runlocal")
  config.data.name = name
  batch_size, step = 8, 5

  def batch(process_index, process_count):
    source = data.create_source(
      config.data,
      seed=3,
      batch_size=batch_size,
      process_index=process_index,
      process_count=process_count,
    )
    return next(source.batches(step))

  whole = batch(0, 1)
  for count in (2, 4):
    shares = [batch(i, count) for i in range(count)]
    assert all(len(share["image"]) == batch_size // count for share in shares)
    for key in whole:
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shares]), whole[key])


@pytest.fixture
def no_cluster(monkeypatch):
  for key in list(os.environ):
    if _CLUSTER_ENV.match(key):
      monkeypatch.delenv(key)


@pytest.mark.skipif(jax.distributed.is_initialized(), reason="this process joined a run")
def test_missing_layout_names_the_flags(no_cluster):
  with pytest.raises(ConfigError) as error:
    parallel.initialize_distributed(num_processes=2)
  message = str(error.value)
  assert "coordinator_address, process_id" in message
  for flag in ("--coordinator_address=HOST:PORT", "--num_processes=N", "--process_id=I"):
    assert flag in message
  assert not jax.distributed.is_initialized()


@pytest.mark.parametrize(
  "layout, message",
  [
    (dict(coordinator_address="localhost"), "must be HOST:PORT"),
    (dict(num_processes=0), "--num_processes must be >= 1"),
    (dict(num_processes=2, process_id=2), "--process_id must be >= 0 and < --num_processes=2"),
  ],
)
def test_invalid_layout_is_refused(no_cluster, layout, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    parallel.initialize_distributed(**layout)


def test_layout_of_a_submitit_task(no_cluster, monkeypatch):
  assert parallel.submitit_layout() is None
  pytest.importorskip("submitit")
  # The variables submitit's local executor gives task 1 of a 2-task job.
  for key, value in {
    "SUBMITIT_EXECUTOR": "local",
    "SUBMITIT_LOCAL_JOB_ID": "123456",
    "SUBMITIT_LOCAL_NTASKS": "2",
    "SUBMITIT_LOCAL_GLOBALID": "1",
    "SUBMITIT_LOCAL_LOCALID": "1",
  }.items():
    monkeypatch.setenv(key, value)
  layout = parallel.submitit_layout()
  port = 61440 + 123456 % 4096
  assert layout["coordinator_address"] == f"localhost:{port}"
  assert (layout["num_processes"], layout["process_id"]) == (2, 1)
  monkeypatch.setenv("JAX_COORDINATOR_PORT", "12345")
  assert parallel.submitit_layout()["coordinator_address"] == "localhost:12345"


def test_jax_detects_a_slurm_step(no_cluster, monkeypatch):
  assert parallel._jax_cluster() is None
  # Inside `srun`: jax.distributed.initialize() finds the layout itself.
  for key, value in {
    "SLURM_JOB_ID": "77",
    "SLURM_STEP_NODELIST": "node[3-4]",
    "SLURM_NTASKS": "2",
    "SLURM_PROCID": "1",
    "SLURM_LOCALID": "0",
  }.items():
    monkeypatch.setenv(key, value)
  assert parallel._jax_cluster() == "slurm"
