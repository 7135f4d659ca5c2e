"""``python -m ganjax.sweep`` end to end on the local and debug launchers (in subprocesses, tiny
runs), and the pieces of where a sweep stands: run states from their records and jobs, the
``--status`` table, the local launcher's core slots, Slurm time limits, one-line command errors.
The Slurm launcher is tested on a real cluster in slurm_test.py."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT

from ganjax import errors
from ganjax.sweep import launchers, status

# A 4-step run of the 2-D mixture GAN; ``variant`` only names it. Inside a submitit job,
# ``variant=X`` fails while the file FAIL_X exists next to the config (the sweep's own check of
# the config, in the sweep process, passes).
TINY_CONFIG = f"""
import os
import signal
from ganjax.config_base import load_config, parse_arg

HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  arg = parse_arg(arg, variant="a")
  failing = os.path.exists(os.path.join(HERE, "FAIL_" + arg.variant))
  if failing and os.environ.get("SUBMITIT_EXECUTOR"):
    raise RuntimeError("planted failure of variant " + arg.variant)
  config = load_config({os.path.join(REPO_ROOT, "configs", "gaussian_mixture.py")!r}, "runlocal")
  config.num_train_steps = 4
  config.log_every_steps = 2
  config.checkpoint_every_steps = 0
  config.sample_every_steps = 0
  config.eval_every_steps = 0
  config.eval_num_samples = 100
  config.num_sample_images = 16
  config.parallel.num_devices = 1
  return config
"""

SWEEP = """
import os
import signal
from ganjax.sweep import runs

HERE = os.path.dirname(os.path.abspath(__file__))


def get_sweep():
  return runs("config", [os.path.join(HERE, "tiny.py:variant=" + v) for v in "cab"])
"""


# The local launcher pins runs to CPU cores here, whatever GPUs the machine has.
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, "-m", "ganjax.sweep", *args],
    cwd=REPO_ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    stdin=subprocess.DEVNULL,
    timeout=300,
  )


def _popen(*args: str) -> subprocess.Popen:
  """The sweep command started in the background, its output (stderr included) on a pipe."""
  return subprocess.Popen(
    [sys.executable, "-m", "ganjax.sweep", *args],
    cwd=REPO_ROOT,
    env=ENV,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
  )


def _marker(workdir, name) -> dict:
  with open(os.path.join(workdir, "runs", name, status.RUN_FILE)) as f:
    return json.load(f)


def _launches(workdir, name) -> int:
  with open(os.path.join(workdir, "runs", name, "launches.jsonl")) as f:
    return len(f.readlines())


def test_local_sweep_skips_finished_runs_reports_failed_ones_and_retries_them(tmp_path):
  """Local launcher, 2 jobs at a time on disjoint cores: 3 runs, one failing inside its job; the
  same command again trains nothing; --status; the failed run, fixed, rerun in-process with the
  debug launcher and --retry_failed."""
  (tmp_path / "tiny.py").write_text(TINY_CONFIG)
  (tmp_path / "sweep.py").write_text(SWEEP)
  (tmp_path / "FAIL_c").write_text("")
  workdir = str(tmp_path / "wd")
  cores = sorted(os.sched_getaffinity(0))
  jobs = min(2, len(cores))
  launch = ("--sweep", str(tmp_path / "sweep.py"), "--workdir", workdir)

  first = _cli(*launch, "--launcher=local", f"--jobs={jobs}")
  assert first.returncode == 1, first.stderr[-3000:]
  markers = {v: _marker(workdir, f"variant={v}") for v in "abc"}
  for v in "ab":
    assert markers[v]["state"] == "finished" and markers[v]["step"] == 4, markers[v]
  assert markers["c"]["state"] == "failed"
  assert markers["c"]["error"] == "RuntimeError: planted failure of variant c"
  # The report names the run and its error and shows the tail of its log.
  assert "variant=c: RuntimeError: planted failure of variant c" in first.stderr
  assert "    | RuntimeError: planted failure of variant c" in first.stderr
  assert "rerun them with --retry_failed" in first.stderr
  # Each job ran on its own share of the cores; runs that overlapped in time shared none.
  slots = {slot.cpus for slot in launchers.make_slots(jobs, cpus=cores, gpus=[])}
  for m in markers.values():
    assert tuple(m["cpus"]) in slots, (m["cpus"], slots)
  spans = {v: (m["started_ts"], m["started_ts"] + m["wall_s"]) for v, m in markers.items()}
  for x, y in [("a", "b"), ("a", "c"), ("b", "c")]:
    if spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1]:
      assert not set(markers[x]["cpus"]) & set(markers[y]["cpus"]), (x, y, markers)
  with open(os.path.join(workdir, status.SWEEP_FILE)) as f:
    sweep = json.load(f)
  assert [r["name"] for r in sweep["runs"]] == ["variant=c", "variant=a", "variant=b"]
  assert sweep["jobs"]["variant=a"][-1]["job_id"] == markers["a"]["job_id"]

  # The same command again: the finished runs are skipped (nothing trains), the failed one is
  # reported again and not rerun.
  before = {v: os.path.getmtime(os.path.join(workdir, "runs", f"variant={v}")) for v in "ab"}
  second = _cli(*launch, "--launcher=local", f"--jobs={jobs}")
  assert second.returncode == 1, second.stderr[-3000:]
  assert "2 finished (skipped)" in second.stderr and "Starting" not in second.stderr
  assert "not rerun: fix the cause, then add --retry_failed" in second.stderr
  for v in "ab":
    assert _marker(workdir, f"variant={v}") == markers[v]
    assert _launches(workdir, f"variant={v}") == 1
    assert os.path.getmtime(os.path.join(workdir, "runs", f"variant={v}")) == before[v]
  assert _marker(workdir, "variant=c") == markers["c"]

  table = _cli("--workdir", workdir, "--status")
  assert table.returncode == 0, table.stderr[-3000:]
  lines = table.stdout.splitlines()
  assert lines[0].split() == ["run", "state", "step", "latest", "metrics", "wall", "job"]
  rows = {line.split()[0]: line.split() for line in lines[2:5]}
  for v in "ab":
    row = rows[f"variant={v}"]
    assert row[1:3] == ["finished", "4/4"] and row[-1] == markers[v]["job_id"]
    assert any(cell.startswith("modes=") for cell in row)
  assert rows["variant=c"][1:3] == ["failed", "-"]
  assert rows["variant=c"][-1] == markers["c"]["job_id"]
  assert "3 runs: 2 finished, 1 failed" in lines
  assert "failed: variant=c: RuntimeError: planted failure of variant c" in lines

  # Fixed: --retry_failed reruns it; the debug launcher trains it in the sweep's own process.
  os.remove(tmp_path / "FAIL_c")
  with _popen(*launch, "--launcher=debug", "--retry_failed") as proc:
    output, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, output[-3000:]
  retried = _marker(workdir, "variant=c")
  assert retried["state"] == "finished" and retried["step"] == 4
  assert retried["launcher"] == "debug" and retried["pid"] == proc.pid
  assert retried["attempts"] == 2 and retried["job_id"].startswith("DEBUG_")
  assert "3 runs: 3 finished" in output
  for v in "ab":
    assert _marker(workdir, f"variant={v}") == markers[v]


@pytest.mark.parametrize(
  "args, message",
  [
    (("--launcher=pbs",), "--launcher=pbs: unknown launcher; valid: local, debug, slurm."),
    (("--sweep=experiments/nope/sweep.py",), "--sweep=experiments/nope/sweep.py: no such file"),
    (("--jobs=4096",), "--jobs=4096 but this process may use"),
    (("--slurm.time=soon", "--launcher=slurm"), "--slurm.time=soon: not a time limit"),
    (("--status",), "holds no sweep (sweep.json not found)"),
    (("--sweep=BAD",), r"run 1 (of 2) has no 'config' key (the config string"),
  ],
)
def test_command_errors_are_one_line(tmp_path, args, message):
  bad = tmp_path / "bad.py"
  bad.write_text(
    "def get_sweep():\n  return [{'config': 'configs/gaussian_mixture.py'}, {'seed': 1}]\n"
  )
  args = tuple(a.replace("BAD", str(bad)) for a in args)
  if not any(a.startswith("--sweep") for a in args) and "--status" not in args:
    args = (f"--sweep={bad}", *args)
  result = _cli(f"--workdir={tmp_path / 'wd'}", *args)
  assert result.returncode == 2, result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("ganjax.sweep: error: ") and message in last, result.stderr
  assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Where a run stands.


def _job(launcher="slurm", job_id="7_1", **extra):
  return {"job_id": job_id, "launcher": launcher, **extra}


def _record(state, job_id="7_1", **extra):
  return {"state": state, "job_id": job_id, **extra}


@pytest.mark.parametrize(
  "marker, job, kind, expected",
  [
    (None, None, None, "new"),
    (None, _job(), None, "pending"),  # Just submitted: sacct does not know it yet.
    (None, _job(), "pending", "pending"),
    (_record("running"), _job(), "running", "running"),
    (_record("finished"), _job(), "cancelled", "finished"),
    # scancel: the run saved a checkpoint on SIGTERM, but the user cancelled it.
    (_record("interrupted"), _job(), "cancelled", "failed"),
    (_record("running"), _job(), "failed", "failed"),  # Killed: out of memory.
    (_record("failed"), _job(), "failed", "failed"),
    (_record("interrupted"), _job(), "completed", "interrupted"),  # SIGTERM: resumes.
    (_record("running"), _job(), "interrupted", "interrupted"),  # Time limit, node failure.
    (_record("running"), _job(), "completed", "interrupted"),  # Ended without a word.
    (None, _job(), "interrupted", "interrupted"),
    (None, _job(), "completed", "failed"),  # The job ended before the run started.
    # A record of the previous job (failed), the new one is queued / died before starting.
    (_record("failed", job_id="6_1"), _job(), "pending", "pending"),
    (_record("failed", job_id="6_1"), _job(), "gone", "failed"),
  ],
)
def test_run_state_from_its_record_and_its_job(marker, job, kind, expected):
  assert status.classify(marker, job, kind)[0] == expected


def test_run_state_of_a_local_run_from_its_process():
  host = socket.gethostname()
  me = {"pid": os.getpid(), "pid_start": status.process_start(os.getpid()), "host": host}
  local = _job("local", "1")
  assert status.classify(_record("running", "1", **me), local, None)[0] == "running"
  dead = {**me, "pid_start": me["pid_start"] - 1}  # The same pid, another (earlier) process.
  assert status.classify(_record("running", "1", **dead), local, None)[0] == "interrupted"
  assert status.job_kind(_job("local", "1", **me), {}) == "running"
  assert status.job_kind(_job("local", "1", **dead), {}) == "gone"
  assert status.job_kind(_job("local", "1", **{**me, "host": "elsewhere"}), {}) is None
  slurm = {"7_1": "CANCELLED", "7_2": "TIMEOUT", "7_3": "REQUEUED", "7_4": ""}
  kinds = [status.job_kind(_job(job_id=f"7_{i}"), slurm) for i in range(1, 6)]
  assert kinds == ["cancelled", "interrupted", "pending", "gone", None]


def test_status_table_and_progress(tmp_path):
  run = tmp_path / "runs" / "lr=0.1,seed=0"
  run.mkdir(parents=True)
  records = [
    {"step": 10, "wall_time": 1.0, "d_loss": 0.5, "g_loss": 1.25, "steps_per_sec": 9.0},
    {"step": 10, "wall_time": 2.0, "modes": 7, "reverse_kl": 0.123456},
    {"step": 20, "wall_time": 3.0, "d_loss": 0.4, "g_loss": 1.5, "steps_per_sec": 9.0},
  ]
  (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"st')
  progress = status.read_progress(str(run))
  assert progress.step == 20 and progress.wall_time == 3.0
  assert progress.evaluation == {"modes": 7, "reverse_kl": 0.123456}
  status.write_json(
    str(run / status.RUN_FILE),
    {"state": "finished", "job_id": "12_3", "wall_s": 3725.0, "num_train_steps": 20},
  )
  sweep = {"runs": [], "jobs": {"lr=0.1,seed=0": [{"job_id": "12_3", "launcher": "debug"}]}}
  statuses = status.sweep_status(str(tmp_path), ["lr=0.1,seed=0", "lr=1,seed=0"], sweep)
  lines = status.format_table(statuses).splitlines()
  assert lines[2].split() == [
    "lr=0.1,seed=0",
    "finished",
    "20/20",
    "modes=7",
    "reverse_kl=0.1235",
    "1h02m05s",
    "12_3",
  ]
  assert lines[3].split() == ["lr=1,seed=0", "new", "-", "-", "-", "-"]
  assert lines[4] == "2 runs: 1 finished, 1 new"


# ---------------------------------------------------------------------------------------------
# Launcher options.


def test_local_slots_split_the_cores_and_give_each_its_gpu():
  slots = launchers.make_slots(2, cpus=[0, 1, 2, 3, 8], gpus=[])
  assert [(s.cpus, s.gpu) for s in slots] == [((0, 1), None), ((2, 3, 8), None)]
  slots = launchers.make_slots(None, cpus=range(8), gpus=["3", "5"])
  assert [(s.cpus, s.gpu) for s in slots] == [((0, 1, 2, 3), "3"), ((4, 5, 6, 7), "5")]
  with pytest.raises(launchers.LaunchError, match=r"--jobs=3 but this process may use 2 CPU"):
    launchers.make_slots(3, cpus=[0, 1], gpus=[])
  with pytest.raises(launchers.LaunchError, match=r"--jobs=3 but 2 GPUs are visible"):
    launchers.make_slots(3, cpus=range(8), gpus=["0", "1"])


def test_slurm_time_limits():
  assert [launchers.parse_time(t) for t in ("90", "1:30:00", "30:00", "2-00:00:00", "2-12")] == [
    90,
    90,
    30,
    2880,
    3600,
  ]
  with pytest.raises(launchers.LaunchError, match="--slurm.time=soon: not a time limit"):
    launchers.parse_time("soon")


def test_one_sweep_command_per_workdir(tmp_path):
  """A second command on a sweep workdir in use fails (naming the holder); a lock left by a
  process that is gone is taken over."""
  workdir = str(tmp_path)
  with status.locked(workdir):
    with pytest.raises(
      errors.WorkdirError, match=rf"in use by another sweep command \(PID {os.getpid()}"
    ):
      with status.locked(workdir):
        pass
  assert not os.path.exists(os.path.join(workdir, status.LOCK_FILE))
  gone = {"pid": os.getpid(), "pid_start": -1, "host": socket.gethostname(), "started": "then"}
  status.write_json(os.path.join(workdir, status.LOCK_FILE), gone)
  with status.locked(workdir):
    assert status.read_json(os.path.join(workdir, status.LOCK_FILE))["pid_start"] != -1


@pytest.mark.slow
def test_time_limit_signal_saves_requeues_and_resumes(tmp_path):
  """submitit's time-limit signal (USR2) in a training run: the loop saves a checkpoint, submitit
  requeues the job (a local job restarts), and the run resumes from that checkpoint."""
  (tmp_path / "tiny.py").write_text(TINY_CONFIG)
  (tmp_path / "sweep.py").write_text(
    "import os\n"
    "HERE = os.path.dirname(os.path.abspath(__file__))\n"
    "def get_sweep():\n"
    "  return [{'config': os.path.join(HERE, 'tiny.py'), 'num_train_steps': 20000,\n"
    "           'log_every_steps': 500}]\n"
  )
  workdir = tmp_path / "wd"
  run = workdir / "runs" / "tiny"
  with _popen(f"--sweep={tmp_path / 'sweep.py'}", f"--workdir={workdir}") as proc:
    deadline = time.monotonic() + 120
    while status.read_progress(str(run)).step is None:  # The training loop runs.
      assert time.monotonic() < deadline and proc.poll() is None, "the run did not start"
      time.sleep(0.2)
    os.kill(_marker(workdir, "tiny")["pid"], signal.SIGUSR2)
    output, _ = proc.communicate(timeout=300)
  assert proc.returncode == 0, output[-3000:]
  marker = _marker(workdir, "tiny")
  assert marker["state"] == "finished" and marker["attempts"] == 2 and marker["step"] == 20000
  with open(run / "launches.jsonl") as f:
    launches = [json.loads(line) for line in f]
  assert len(launches) == 2 and 0 < launches[1]["resumed_from_step"] < 20000
  with open(marker["log"]) as f:
    assert "Requeued job" in f.read()
