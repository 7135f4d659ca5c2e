"""The command line end to end, in subprocesses: train, sample, SIGTERM, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from conftest import REPO_ROOT

from ganjax import checkpoint, train


def _cli(*args, **kwargs):
  cmd = [sys.executable, "-m", "ganjax.main", *args]
  return subprocess.Popen(
      cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
  )


def _run(*args, timeout=300):
  proc = _cli(*args)
  out, _ = proc.communicate(timeout=timeout)
  assert proc.returncode == 0, out[-3000:]
  return out


def _final_params(workdir):
  config, info = train.load_run(workdir)
  networks = train.build_networks(
      config, tuple(info["data"]["element_shape"]), info["data"]["num_classes"]
  )
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  state, _ = ckpt.restore(ckpt.latest_step(), train.abstract_state(config, networks))
  return ckpt.latest_step(), [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_train_then_sample(tmp_path):
  workdir = str(tmp_path / "dcgan")
  out = _run(
      "--config=configs/dcgan.py:runlocal",
      f"--workdir={workdir}",
      "--config.parallel.num_devices=1",
  )
  assert "steps/s" in out and "img/s" in out and "ETA" in out
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
  return (
      "--config=configs/vanilla_gan.py:runlocal",
      f"--workdir={workdir}",
      "--config.parallel.num_devices=1",
      "--config.num_train_steps=400",
      "--config.checkpoint_every_steps=50",
      "--config.log_every_steps=50",
      "--config.sample_every_steps=0",
  )


def _wait_for_checkpoint(workdir, proc, timeout=180):
  ckpt_dir = os.path.join(workdir, "checkpoints")
  deadline = time.time() + timeout
  while time.time() < deadline:
    if os.path.isdir(ckpt_dir) and any(n.isdigit() for n in os.listdir(ckpt_dir)):
      return
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.05)
  raise TimeoutError("no checkpoint appeared")


def test_sigterm_saves_a_checkpoint_and_kill_resumes_exactly(tmp_path):
  reference = str(tmp_path / "reference")
  _run(*_long_run_args(reference))
  ref_step, ref_params = _final_params(reference)
  assert ref_step == 400

  workdir = str(tmp_path / "interrupted")
  # SIGTERM: the run saves a checkpoint at the step it reached, and exits cleanly.
  proc = _cli(*_long_run_args(workdir))
  _wait_for_checkpoint(workdir, proc)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == 0, out[-3000:]
  assert "SIGTERM" in out
  # kill -9 at an arbitrary moment: no handler runs; the last complete checkpoint survives.
  proc = _cli(*_long_run_args(workdir))
  time.sleep(8)
  proc.kill()
  proc.communicate(timeout=60)
  # The same command again finishes the run, bit-identical to the uninterrupted one.
  _run(*_long_run_args(workdir))
  step, params = _final_params(workdir)
  assert step == 400
  for a, b in zip(ref_params, params, strict=True):
    np.testing.assert_array_equal(a, b)
  with open(os.path.join(workdir, "run_info.json")) as f:
    assert json.load(f)["resumed_from_step"] > 0
