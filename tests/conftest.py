"""Test setup: 8 simulated CPU devices (set before jax is imported), quiet TensorFlow."""

import os

# Appended, not defaulted: a caller's XLA_FLAGS (e.g. --xla_cpu_max_isa=AVX2) keeps 8 devices.
_flags = os.environ.get("XLA_FLAGS", "")
if "--xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from ganjax import config_base  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, arg: str | None = None):
  """Loads ``configs/<name>.py`` and returns ``get_config(arg)``, as the CLI would."""
  return config_base.load_config(os.path.join(REPO_ROOT, "configs", f"{name}.py"), arg)
