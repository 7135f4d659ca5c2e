"""Sweeps on a real Slurm cluster (scripts/slurm_cluster.sh start): a submitit job, a sweep as a
job array with its collected table, a 2-task multi-host run, and a cancelled job that the sweep
reports as failed and completes with --retry_failed. Skipped with the reason when no cluster is up
(conftest.py). The runs are the runlocal 2-D mixture GAN (16x16 MLPs), one CPU per task."""

import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slurm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "gaussian_mixture.py") + ":runlocal"
MIXTURE_METRICS = ("modes", "hq_fraction", "reverse_kl")


@pytest.fixture(scope="module")
def partition() -> str:
  """The cluster's default partition (sinfo marks it with a '*')."""
  names = subprocess.run(
    ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, check=True
  ).stdout.split()
  return next((n.rstrip("*") for n in names if n.endswith("*")), names[0])


def _result(job, timeout: float):
  """The job's result, failing the test (not hanging it) when the job is not done in time."""
  deadline = time.monotonic() + timeout
  while not job.done():
    assert time.monotonic() < deadline, f"job {job.job_id} not done after {timeout} s: {job.state}"
    time.sleep(0.5)
  return job.result()


def _sacct_state(job, expected: str, timeout: float) -> str:
  """The job's state in sacct, polled until it is ``expected`` or ``timeout`` seconds pass."""
  deadline = time.monotonic() + timeout
  while (state := job.get_info(mode="force").get("State")) != expected:
    if time.monotonic() > deadline:
      break
    time.sleep(0.5)
  return state


def test_submitit_job_runs_on_slurm(tmp_path, partition):
  """A plain function submitted through submitit's Slurm executor runs as a Slurm job."""
  submitit = pytest.importorskip("submitit")
  executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
  executor.update_parameters(slurm_partition=partition, timeout_min=5, cpus_per_task=1)
  job = executor.submit(functools.partial(os.getenv, "SLURM_JOB_ID"))
  assert _result(job, timeout=120) == job.job_id
  # What submitit reads from sacct (which lags the job by a second or two).
  assert _sacct_state(job, "COMPLETED", timeout=30) == "COMPLETED"


# ------------------------------------------------------------------------------------------------
# python -m ganjax.sweep on Slurm.


def _write_sweep(path, runs: list[dict]) -> str:
  """A sweep file whose get_sweep() returns ``runs`` (a hand-written list)."""
  path.write_text(f"def get_sweep():\n  return {runs!r}\n")
  return str(path)


def _tiny(steps: int, **overrides) -> dict:
  """A run of the runlocal mixture GAN: evaluations at half of training and at the end."""
  return {
    "config": CONFIG,
    "num_train_steps": steps,
    "eval_every_steps": steps // 2,
    "checkpoint_every_steps": steps // 2,
    "sample_every_steps": steps,
    # Progress lines every 50 steps at most (the jobs' logs show that they train).
    "log_every_steps": min(steps // 2, 50),
    **overrides,
  }


# The jobs (which inherit the sweep command's environment) see one CPU device per process rather
# than conftest.py's 8 simulated ones: tiny runs compile and run faster, and the 2-task job is a
# 2-device run of 2 processes.
JOB_ENV = {
  **os.environ,
  "XLA_FLAGS": re.sub(
    r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", "")
  ).strip(),
}


def _sweep_command(sweep_file, workdir, partition, *flags) -> list[str]:
  return [
    sys.executable,
    "-m",
    "ganjax.sweep",
    f"--sweep={sweep_file}",
    f"--workdir={workdir}",
    "--launcher=slurm",
    f"--slurm.partition={partition}",
    "--slurm.cpus_per_task=1",
    "--slurm.time=10",
    "--poll_s=0.5",
    *flags,
  ]


def _sweep(sweep_file, workdir, partition, *flags, timeout=600):
  """Runs the sweep command to its end, which must succeed; returns its CompletedProcess."""
  done = subprocess.run(
    _sweep_command(sweep_file, workdir, partition, *flags),
    cwd=REPO_ROOT,
    env=JOB_ENV,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  assert done.returncode == 0, f"sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
  return done


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _run_dirs(workdir) -> dict[str, str]:
  runs = os.path.join(workdir, "runs")
  return {name: os.path.join(runs, name) for name in sorted(os.listdir(runs))}


def _metrics(run_dir) -> list[dict]:
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def _final_eval(run_dir) -> dict:
  """The last evaluation record of metrics.jsonl (mode coverage of the final generator)."""
  return [r for r in _metrics(run_dir) if "modes" in r][-1]


def _sacct(job_id: str) -> str:
  """The state sacct gives the job (the job array task), polled while sacct lags."""
  state = ""
  for _ in range(20):
    out = subprocess.run(
      ["sacct", "-n", "-X", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True
    ).stdout.split()
    state = out[0] if out else ""
    if state and state not in ("PENDING", "RUNNING"):
      break
    time.sleep(0.5)
  return state


def test_sweep_of_four_runs_collects_its_table(tmp_path, partition):
  """4 runs (2 learning rates x 2 seeds) as Slurm jobs: every run finishes in its own job, and
  results.json holds 2 groups whose final metrics are the mean over their 2 seeds; a second
  launch submits nothing."""
  runs = [
    _tiny(20, **{"optim.g.learning_rate": lr, "seed": seed})
    for lr in (1e-3, 2e-3)
    for seed in (0, 1)
  ]
  sweep_file = _write_sweep(tmp_path / "sweep.py", runs)
  workdir = tmp_path / "sweep"
  _sweep(sweep_file, workdir, partition, "--slurm.array_parallelism=2")

  run_dirs = _run_dirs(workdir)
  assert len(run_dirs) == 4
  job_ids = set()
  for name, run_dir in run_dirs.items():
    marker = _read_json(os.path.join(run_dir, "sweep_run.json"))
    assert marker["state"] == "finished", (name, marker)
    assert marker["job_id"], name
    assert _sacct(str(marker["job_id"])) == "COMPLETED", (name, marker["job_id"])
    job_ids.add(str(marker["job_id"]))
    assert _metrics(run_dir)[-1]["step"] == 20
  assert len(job_ids) == 4

  results = _read_json(workdir / "results.json")
  assert results["counts"]["runs"] == 4
  assert results["counts"]["states"] == {"finished": 4}
  groups = {g["name"]: g for g in results["groups"]}
  assert len(groups) == 2
  for group in groups.values():
    assert group["num_seeds"] == 2
    assert len(group["runs"]) == 2
    assert all("seed=" not in part for part in group["name"].split(","))
    for metric in MIXTURE_METRICS:
      expected = [_final_eval(run_dirs[name])[metric] for name in group["runs"]]
      final = group["final"][metric]
      assert final["n"] == 2
      assert final["mean"] == pytest.approx(statistics.fmean(expected), rel=1e-12)
  table = (workdir / "results.md").read_text()
  for name in groups:
    assert name in table

  # Idempotent: the finished runs are skipped, no job is submitted.
  markers = {n: _read_json(os.path.join(d, "sweep_run.json")) for n, d in run_dirs.items()}
  _sweep(sweep_file, workdir, partition, timeout=300)
  for name, run_dir in run_dirs.items():
    assert _read_json(os.path.join(run_dir, "sweep_run.json")) == markers[name]


def test_two_task_job_trains_one_multi_host_run(tmp_path, partition):
  """--slurm.tasks_per_node=2: one job of 2 tasks, 2 JAX processes joined into one run."""
  sweep_file = _write_sweep(tmp_path / "sweep.py", [_tiny(20, seed=0)])
  workdir = tmp_path / "sweep"
  _sweep(sweep_file, workdir, partition, "--slurm.tasks_per_node=2")

  (run_dir,) = _run_dirs(workdir).values()
  marker = _read_json(os.path.join(run_dir, "sweep_run.json"))
  assert marker["state"] == "finished", marker
  assert _metrics(run_dir)[-1]["step"] == 20
  run_info = _read_json(os.path.join(run_dir, "run_info.json"))
  assert run_info["devices"]["process_count"] == 2
  with open(os.path.join(run_dir, "launches.jsonl")) as f:
    launches = [json.loads(line) for line in f if line.strip()]
  assert [launch["num_processes"] for launch in launches] == [2]


def _running_run(workdir):
  """``(name, sweep_run.json)`` of a run whose job has started it, or None."""
  runs = os.path.join(workdir, "runs")
  for name in os.listdir(runs) if os.path.isdir(runs) else []:
    try:
      marker = _read_json(os.path.join(runs, name, "sweep_run.json"))
    except (OSError, json.JSONDecodeError):
      continue
    if marker.get("state") == "running" and marker.get("job_id"):
      return name, marker
  return None


def test_cancelled_job_is_failed_and_retried(tmp_path, partition):
  """A job killed with scancel: --status reports its run failed, --retry_failed completes it."""
  # Cancelled as soon as the job starts. 2,000 steps (about 8 s of training) so that the cancel
  # lands before the end of training even when the step compiles in a second (a compilation
  # cache hit at the suite's optimisation level 0 let a 200-step run finish first, 2026-12-07).
  steps = 2000
  sweep_file = _write_sweep(tmp_path / "sweep.py", [_tiny(steps, seed=0)])
  workdir = tmp_path / "sweep"
  launch = subprocess.Popen(
    _sweep_command(sweep_file, workdir, partition),
    cwd=REPO_ROOT,
    env=JOB_ENV,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )
  try:
    deadline = time.monotonic() + 300
    while (started := _running_run(workdir)) is None:
      assert launch.poll() is None, f"the sweep ended first:\n{launch.stdout.read()[-3000:]}"
      assert time.monotonic() < deadline, "no job started the run within 300 s"
      time.sleep(0.2)
    name, marker = started
    subprocess.run(["scancel", str(marker["job_id"])], check=True)
    output, _ = launch.communicate(timeout=300)
  finally:
    if launch.poll() is None:
      launch.kill()
      launch.wait()
  assert _sacct(str(marker["job_id"])) == "CANCELLED", output[-3000:]
  assert launch.returncode == 1, output[-3000:]  # Some run failed.
  # The cancellation, not the end of training, ended the job.
  run_dir = os.path.join(workdir, "runs", name)
  metrics = _metrics(run_dir) if os.path.exists(os.path.join(run_dir, "metrics.jsonl")) else []
  assert not metrics or metrics[-1]["step"] < steps

  status = _sweep(sweep_file, workdir, partition, "--status", timeout=120).stdout
  assert _status_states(status, name) == {"failed"}, status

  _sweep(sweep_file, workdir, partition, "--retry_failed")
  assert _read_json(os.path.join(run_dir, "sweep_run.json"))["state"] == "finished"
  assert _metrics(run_dir)[-1]["step"] == steps
  status = _sweep(sweep_file, workdir, partition, "--status", timeout=120).stdout
  assert _status_states(status, name) == {"finished"}, status


def _status_states(status: str, name: str) -> set[str]:
  """The run states on the lines of a --status table that name the run."""
  states = {"pending", "running", "finished", "failed", "interrupted"}
  words = [line.replace("|", " ").split() for line in status.splitlines()]
  return {w for line in words if name in line for w in line if w in states}
