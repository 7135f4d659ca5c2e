"""ganjax: Generative Adversarial Networks in JAX/Flax, for research.

From Python: :func:`load_config`, :func:`train` and :func:`load` (:mod:`ganjax.api`); from the
command line: ``python -m ganjax.main`` (:mod:`ganjax.main`).
"""

from ganjax.api import load, load_config, train
from ganjax.trained import TrainedRun

__all__ = ["TrainedRun", "load", "load_config", "train"]
