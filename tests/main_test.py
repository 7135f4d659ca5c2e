"""The command line end to end, in subprocesses: train, sample, SIGTERM, kill -9 and resume."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from conftest import REPO_ROOT

from ganjax import checkpoint
from ganjax import workdir as workdir_lib
from ganjax.systems import gan


def _cli(*args, stdout=subprocess.PIPE, **kwargs):
  cmd = [sys.executable, "-m", "ganjax.main", *args]
  return subprocess.Popen(
    cmd, cwd=REPO_ROOT, stdout=stdout, stderr=subprocess.STDOUT, text=True, **kwargs
  )


def _run(*args, timeout=300):
  proc = _cli(*args)
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def _final_params(workdir):
  config, info = workdir_lib.read_run(workdir)
  networks = gan.build_networks(
    config, tuple(info["data"]["element_shape"]), info["data"]["num_classes"]
  )
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = ckpt.restore(ckpt.latest_step(), gan.abstract_state(config, networks))
  return ckpt.latest_step(), [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_train_then_sample(tmp_path):
  workdir = str(tmp_path / "dcgan")
  out = _run(
    "--config=configs/dcgan.py:runlocal",
    f"--workdir={workdir}",
    "--config.parallel.num_devices=1",
  )
  assert "steps/s" in out and "img/s" in out and "ETA" in out
  # Readable output: one progress line per logged step, no library bookkeeping (orbax logs ~15
  # INFO lines per save; clu's writer and ReportProgress would repeat every scalar).
  progress_steps = [int(m) for m in re.findall(r"\] step (\d+)/\d+ \|", out)]
  assert progress_steps == _logged_steps(workdir), out
  chatter_sources = ("checkpoint_manager.py", "atomicity.py", "logging_writer.py", "local.py")
  for chatter in (*chatter_sources, "Setting work unit notes", "steps_per_sec="):
    assert chatter not in out, (chatter, out)
  assert len(out.splitlines()) < 30, out
  output = str(tmp_path / "grid.png")
  _run("--mode=sample", f"--workdir={workdir}", "--num_samples=9", f"--output={output}")
  assert os.path.exists(output)
  assert np.load(str(tmp_path / "grid.npz"))["samples"].shape == (9, 28, 28, 1)


def test_unknown_dataset_is_a_clear_error(tmp_path):
  proc = _cli("--config=configs/dcgan.py:dataset=imagenet", f"--workdir={tmp_path}")
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert "imagenet" in out and "embedded_mnist" in out


def _long_run_args(workdir):
  """300 steps (about a second) logged every 5, with no checkpoint due before the end."""
  return (
    "--config=configs/vanilla_gan.py:runlocal",
    f"--workdir={workdir}",
    "--config.parallel.num_devices=1",
    "--config.num_train_steps=300",
    "--config.checkpoint_every_steps=1000",
    "--config.log_every_steps=5",
    "--config.sample_every_steps=0",
  )


def _read_until_step(proc, at_least: int, timeout=240) -> str:
  """Reads the run's output until it logs a step >= ``at_least``; returns what it read."""
  deadline = time.time() + timeout
  lines = []
  while time.time() < deadline:
    line = proc.stdout.readline()
    assert line, "the run ended early:\n" + "".join(lines)[-3000:]
    lines.append(line)
    logged = re.search(r"\] step (\d+)/\d+ \|", line)
    if logged and int(logged.group(1)) >= at_least:
      return "".join(lines)
  raise TimeoutError(f"no step >= {at_least} logged")


def _logged_steps(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r["step"] for r in map(json.loads, f) if "d_loss" in r]


def test_sigterm_saves_the_step_reached_and_kill_resumes_exactly(tmp_path):
  workdir = str(tmp_path / "interrupted")
  # SIGTERM just after the first steps, long before a checkpoint is due: the run saves the step
  # it reached and exits cleanly (it used to log "checkpoint saved" and write nothing).
  proc = _cli(*_long_run_args(workdir))
  _read_until_step(proc, 5)
  proc.send_signal(signal.SIGTERM)
  reference = str(tmp_path / "reference")
  reference_log = open(tmp_path / "reference.log", "w")  # noqa: SIM115 (closed below)
  # Runs beside the later launches (its output in a file, so that no pipe fills up), started
  # once the first launch compiled the step, which it then finds in the compilation cache.
  reference_proc = _cli(*_long_run_args(reference), stdout=reference_log)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  stopped = re.search(r"Stopped by SIGTERM at step (\d+); checkpoint saved\.", out)
  assert stopped, out[-3000:]
  stopped = int(stopped.group(1))
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [stopped]
  # kill -9 after it logged steps past that checkpoint: no handler runs, the checkpoint survives.
  proc = _cli(*_long_run_args(workdir))
  _read_until_step(proc, stopped + 10)
  proc.kill()
  proc.communicate(timeout=60)
  assert max(_logged_steps(workdir)) >= stopped + 10
  # The same command again finishes the run, bit-identical to the uninterrupted one, and drops
  # the records the killed launch wrote past the checkpoint: each step is logged once.
  _run(*_long_run_args(workdir))
  reference_proc.wait(timeout=300)
  reference_log.close()
  assert reference_proc.returncode == 0, (tmp_path / "reference.log").read_text()[-3000:]
  ref_step, ref_params = _final_params(reference)
  step, params = _final_params(workdir)
  assert step == ref_step == 300
  for a, b in zip(ref_params, params, strict=True):
    np.testing.assert_array_equal(a, b)
  assert _logged_steps(workdir) == sorted(set(_logged_steps(reference)) | {stopped})
  with open(os.path.join(workdir, "run_info.json")) as f:
    assert json.load(f)["resumed_from_step"] == stopped
