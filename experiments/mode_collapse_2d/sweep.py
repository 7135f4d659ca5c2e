r"""The 2-D mode-collapse study as a sweep: every method of configs/gaussian_mixture.py on the ring
and the grid, 5 seeds each (80 runs).

  python -m ganjax.sweep --sweep=experiments/mode_collapse_2d/sweep.py \
      --workdir=runs/mode_collapse_2d --launcher=local --jobs=2

Each method trains for its own number of steps (``STEPS`` of the config: the costlier methods
train for fewer, so that a run stays within about 3 minutes on one CPU core); the runs are named
``dataset=D,method=M,seed=S`` and grouped over the seeds. Seeds are the outer loop, so a sweep
stopped early has every method for its first seeds.
"""

import importlib.util
import os

from ganjax.sweep import product, seeds

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, "configs", "gaussian_mixture.py")
DATASETS = ("ring", "grid")
NUM_SEEDS = 5


def _methods() -> tuple[str, ...]:
  """The config's METHODS, read from the file (configs/ is not a package)."""
  spec = importlib.util.spec_from_file_location("gaussian_mixture_config", CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.METHODS


def get_sweep() -> list[dict]:
  config = os.path.relpath(CONFIG_FILE)  # configs/gaussian_mixture.py from the repository root.
  studies = [{"config": f"{config}:dataset={d},method={m}"} for d in DATASETS for m in _methods()]
  return product(seeds(NUM_SEEDS), studies)  # Seeds outermost.
