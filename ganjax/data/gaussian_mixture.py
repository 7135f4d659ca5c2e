"""Synthetic 2-D Gaussian mixtures for mode-collapse studies (the PacGAN protocol).

* ``ring``: 8 Gaussians at angles ``2 * pi * k / 8`` (k = 0..7) on the unit circle, std 0.01.
* ``grid``: 25 Gaussians centred on ``{-4, -2, 0, 2, 4}^2``, std 0.05.

The data is infinite: the global batch at step ``s`` is drawn with
``np.random.default_rng([seed, s])``, modes uniformly, and host ``p`` of ``P`` keeps its ``p``-th
contiguous slice, so the batch depends on nothing else (not on how many processes share it). Points
are raw coordinates (not rescaled to [-1, 1]); labels are mode indices.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import ml_collections
import numpy as np

from ganjax.data.source import Batch, DataSource, check_process, host_batch_size

NAMES = ("ring", "grid")
PRIORITY = 100

_STD = {"ring": 0.01, "grid": 0.05}


def mixture_modes(name: str) -> np.ndarray:
  """The (K, 2) float32 mode centres of mixture ``name``."""
  if name == "ring":
    angles = 2 * np.pi * np.arange(8) / 8
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
  if name == "grid":
    axis = np.arange(-4, 5, 2, dtype=np.float32)
    return np.array(list(itertools.product(axis, axis)), dtype=np.float32)
  raise ValueError(f"Unknown mixture {name!r}; valid: {', '.join(NAMES)}.")


def mixture_std(name: str) -> float:
  """The per-coordinate standard deviation of every mode of mixture ``name``."""
  if name not in _STD:
    raise ValueError(f"Unknown mixture {name!r}; valid: {', '.join(NAMES)}.")
  return _STD[name]


def sample(name: str, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Draws ``num`` points and their mode indices: (num, 2) float32, (num,) int32."""
  modes = mixture_modes(name)
  labels = rng.integers(len(modes), size=num).astype(np.int32)
  noise = rng.standard_normal((num, 2)).astype(np.float32) * np.float32(mixture_std(name))
  return modes[labels] + noise, labels


def claims(data_config: ml_collections.ConfigDict) -> bool:
  return data_config.get("name") in NAMES


def create(
  data_config: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  process_index: int,
  process_count: int,
) -> DataSource:
  """The infinite mixture source ``data.name`` ("ring" or "grid")."""
  name = data_config.name
  host_batch = host_batch_size(batch_size, process_count)
  check_process(process_index, process_count)
  modes = mixture_modes(name)

  rows = slice(process_index * host_batch, (process_index + 1) * host_batch)

  def batches(start_step: int) -> Iterator[Batch]:
    for step in itertools.count(start_step):
      # The global batch (2-D points: cheap), so every process layout trains on the same data.
      points, labels = sample(name, batch_size, np.random.default_rng([seed, step]))
      yield {"image": points[rows], "label": labels[rows]}

  return DataSource(
    name=name,
    element_shape=(2,),
    num_examples=None,
    num_classes=len(modes),
    description={
      "source": "gaussian_mixture",
      "dataset": name,
      "num_modes": len(modes),
      "std": mixture_std(name),
      "modes": modes.tolist(),
      "sampling": "uniform over modes; global batch from default_rng([seed, step]), host slices",
      "preprocessing": "none (raw 2-D coordinates)",
    },
    batches=batches,
  )
