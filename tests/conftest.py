"""Test setup: 8 simulated CPU devices (set before jax is imported), quiet TensorFlow, a
compilation cache shared by the session."""

import atexit
import os
import shutil
import tempfile

# Appended, not defaulted: a caller's XLA_FLAGS (e.g. --xla_cpu_max_isa=AVX2) keeps 8 devices.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache per test session (in the environment, so the xdist workers and
# the command lines the tests start share it): the same programs compiled by several tests or
# processes (runlocal trainings, CLI launches) are compiled once. Keyed by the program, the XLA
# flags and the jaxlib version, so a hit is the executable a compilation would have produced.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ganjax-tests-jax-cache-")
  atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

from ganjax import config_base  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  """Loads ``configs/<name>.py`` and returns ``get_config(arg)``, as the CLI would."""
  return config_base.load_config(os.path.join(REPO_ROOT, "configs", f"{name}.py"), arg)
