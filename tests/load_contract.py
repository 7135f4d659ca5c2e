"""What ``ganjax.load`` promises for every system, checked by each system's test module on the
run it has already trained (so no module trains a system only to load it):

* :func:`check_sample`: ``run.sample`` is deterministic in its seed, in [-1, 1], and equal to
  what ``--mode=sample`` (the system's ``sample_from_workdir``) draws and writes;
* :func:`check_refusals`: a run refuses what its system cannot do with a clear error.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import ganjax
from ganjax import errors, sampling, systems


def check_sample(workdir: str, tmp_path, task: str, image_shape: tuple[int, ...]) -> None:
  run = ganjax.load(workdir)
  assert run.task == task and run.step == run.config.num_train_steps
  samples = run.sample(5, seed=0)
  assert samples.shape == (5, *image_shape) and samples.dtype == np.float32
  assert np.all(np.abs(samples) <= 1.0) and np.all(np.isfinite(samples))
  # The same program on the same inputs: bit for bit; another seed, other samples.
  np.testing.assert_array_equal(run.sample(5, seed=0), samples)
  assert not np.array_equal(run.sample(5, seed=1), samples)
  # --mode=sample is run.sample with the run's seed and a whole grid of classes.
  os.makedirs(str(tmp_path), exist_ok=True)
  output = os.path.join(str(tmp_path), "api_grid.png")
  written = systems.get_system(run.task).sample_from_workdir(workdir, 12, output)
  expected = run.sample(sampling.grid_size(12, run.num_classes), seed=run.config.seed)
  np.testing.assert_array_equal(written, expected)
  np.testing.assert_array_equal(np.load(output[:-4] + ".npz")["samples"], expected)
  # An earlier checkpoint loads by its step.
  steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
  if len(steps) > 1:
    assert ganjax.load(workdir, step=steps[0]).step == steps[0]


def check_refusals(workdir: str, task: str) -> None:
  run = ganjax.load(workdir)
  if task == "srgan":
    with pytest.raises(errors.ConfigError, match="'srgan' run does not generate samples"):
      run.sample(2)
    return
  with pytest.raises(errors.ConfigError, match=f"'{task}' run does not upscale"):
    run.upscale(np.zeros((4, 4, 3), np.uint8))
  if not run.num_classes:
    with pytest.raises(errors.ConfigError, match=f"'{task}' run is unconditional"):
      run.sample(2, labels=1)
