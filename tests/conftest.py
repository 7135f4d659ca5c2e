"""Test setup: 8 simulated CPU devices (set before jax is imported), quiet TensorFlow, a
compilation cache shared by the session."""

import atexit
import functools
import os
import shutil
import subprocess
import tempfile

# Appended, not defaulted: a caller's XLA_FLAGS (e.g. --xla_cpu_max_isa=AVX2) keeps 8 devices.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
# Optimisation level 0 instead of XLA:CPU's default 3: the suite's time is mostly compilation of
# tiny programs, which level 0 compiles fastest (whole suite, 2-core EPYC: 12 min 60 s of CPU and
# 7 min 58 s wall at level 2, 10 min 6 s and 6 min 12 s at level 0; level 3 costs 26 % more
# than 2). A caller's XLA_FLAGS that names a level keeps it: .ci/run's AVX2 pass runs at the
# default level 3, the one users get. One test compiles its step at level 2 itself
# (mode_collapse_test: XLA:CPU's level-0 code gives a NaN there that no other level gives).
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
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

import pytest  # noqa: E402

from ganjax import config_base  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  """Loads ``configs/<name>.py`` and returns ``get_config(arg)``, as the CLI would."""
  return config_base.load_config(os.path.join(REPO_ROOT, "configs", f"{name}.py"), arg)


@functools.cache
def _slurm_unavailable() -> str | None:
  """Why tests marked ``slurm`` cannot run here, or None when a Slurm node is usable."""
  hint = "start one with scripts/slurm_cluster.sh start"
  if shutil.which("sinfo") is None:
    return f"no Slurm here (sinfo not found); {hint}"
  try:
    out = subprocess.run(
      ["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True, timeout=3, check=False
    )
  except subprocess.TimeoutExpired:
    return f"Slurm does not answer (sinfo timed out after 3 s); {hint}"
  states = out.stdout.split()
  if out.returncode or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
    detail = out.stderr.strip().splitlines()[-1:] or [f"node states {states}"]
    return f"no idle Slurm node ({detail[0]}); {hint}"
  return None


def pytest_runtest_setup(item):
  """Skips tests marked ``slurm``, with the reason, when no Slurm cluster is up."""
  if item.get_closest_marker("slurm") is not None and (reason := _slurm_unavailable()):
    pytest.skip(reason)
