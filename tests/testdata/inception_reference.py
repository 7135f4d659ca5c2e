"""Seeded random weights and inputs for the FID Inception equivalence test (numpy only).

Shared by ``make_inception_golden.py`` (which loads the weights into pytorch-fid's network and
stores its outputs in ``inception_golden.npz``) and ``tests/metrics_inception_test.py`` (which
loads the same weights into ganjax's network and compares). The real weights are not needed.

Every array is drawn from its own generator ``np.random.default_rng([seed, crc32(name)])``, so
the draws do not depend on the order or the set of names. The recipe keeps the activations of
order one through the 94 BatchNorm-ed convolutions while the running statistics are far from
trivial (they do not match the activations' actual statistics):

* ``*.conv.weight`` ``(out, in, kh, kw)``: N(0, 2 / (in kh kw)) (He et al. 2015);
* ``*.bn.weight``: U(0.5, 1.5); ``*.bn.bias``: N(0, 0.2^2);
* ``*.bn.running_mean``: N(0, 0.2^2); ``*.bn.running_var``: U(0.5, 2);
* ``fc.weight`` ``(1008, 2048)``: N(0, 1 / 2048); ``fc.bias``: N(0, 0.5^2).

Changing the recipe, the seed or the cases means regenerating the golden file
(``python tests/testdata/make_inception_golden.py``); the checksums stored with it tell a changed
recipe (or a changed numpy random stream) apart from a changed network.
"""

from __future__ import annotations

import importlib
import math
import sys
import zlib
from collections.abc import Mapping
from types import ModuleType

import numpy as np

SEED = 20151205
RECIPE_VERSION = 1

# Name -> NHWC shape of the input batches in [0, 1]: upsampling (32 -> 299), a grayscale image,
# and downsampling with unequal factors (320 x 310 -> 299).
INPUT_SHAPES = {
  "rgb32": (2, 32, 32, 3),
  "gray48": (1, 48, 48, 1),
  "rgb320x310": (1, 320, 310, 3),
}


def import_pytorch_fid() -> ModuleType:
  """``pytorch_fid.inception``, importable with a CPU-only torch and PyPI's torchvision.

  PyPI's torchvision wheels are CUDA builds: with a CPU build of torch (``torch==2.13.0+cpu``)
  their compiled ops (``torchvision::nms``, ...) do not load, and ``import torchvision`` fails
  registering meta kernels for them (``RuntimeError: operator torchvision::nms does not exist``).
  pytorch-fid only needs the pure-Python ``torchvision.models.inception``, so torchvision is
  imported with those registrations skipped; nothing else changes. Raises ImportError when
  torch, torchvision or pytorch-fid is not installed.
  """
  import torch.library

  if "torchvision" not in sys.modules:
    register_fake = torch.library.register_fake

    def skip_torchvision_ops(op, *args, **kwargs):
      if isinstance(op, str) and op.startswith("torchvision::"):
        return lambda fn: fn
      return register_fake(op, *args, **kwargs)

    torch.library.register_fake = skip_torchvision_ops
    try:
      importlib.import_module("torchvision")
    finally:
      torch.library.register_fake = register_fake
  return importlib.import_module("pytorch_fid.inception")


def _rng(seed: int, name: str) -> np.random.Generator:
  return np.random.default_rng([seed, zlib.crc32(name.encode())])


def random_state_dict(
  shapes: Mapping[str, tuple[int, ...]], seed: int = SEED
) -> dict[str, np.ndarray]:
  """PyTorch-named float32 arrays for ``shapes`` (name -> PyTorch shape), drawn by the recipe."""
  state = {}
  for name, shape in shapes.items():
    rng = _rng(seed, name)
    if name.endswith("conv.weight"):
      value = rng.standard_normal(shape) * math.sqrt(2.0 / math.prod(shape[1:]))
    elif name.endswith("bn.weight"):
      value = rng.uniform(0.5, 1.5, shape)
    elif name.endswith(("bn.bias", "bn.running_mean")):
      value = rng.normal(0.0, 0.2, shape)
    elif name.endswith("bn.running_var"):
      value = rng.uniform(0.5, 2.0, shape)
    elif name == "fc.weight":
      value = rng.standard_normal(shape) / math.sqrt(shape[1])
    elif name == "fc.bias":
      value = rng.normal(0.0, 0.5, shape)
    else:
      raise ValueError(f"No recipe for parameter {name!r}.")
    state[name] = value.astype(np.float32)
  return state


def input_cases(seed: int = SEED) -> dict[str, np.ndarray]:
  """Name -> NHWC float32 images, uniform in [0, 1]."""
  return {
    name: _rng(seed, f"input/{name}").random(shape, dtype=np.float32)
    for name, shape in INPUT_SHAPES.items()
  }


def checksum(arrays: Mapping[str, np.ndarray]) -> float:
  """Sum of |values| in float64: detects a changed recipe or random stream."""
  return float(sum(np.abs(np.asarray(a, np.float64)).sum() for a in arrays.values()))
