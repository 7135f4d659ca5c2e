"""Latents chosen by the user: one per seed, truncated, interpolated; and the seed/label lists of
the command line.

A seed names one latent vector, whatever else is drawn with it: ``seed_latents([3])`` and row 1 of
``seed_latents([0, 3])`` are equal, on every machine (jax's counter-based threefry generator), so
``--seeds=3`` redraws the image of seed 3 of any earlier grid (StyleGAN2-ADA's ``generate.py``
convention).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ganjax.errors import ConfigError

# Salt of the per-seed key, so that seed latents differ from a run's fixed sample latents.
_SEED_SALT = 0x5EED
TRUNCATION_MODES = ("resample", "scale")
INTERPOLATIONS = ("slerp", "linear")


def parse_seeds(text: str) -> list[int]:
  """``"0,1,5-9"`` -> ``[0, 1, 5, 6, 7, 8, 9]`` (ranges inclusive, order kept)."""
  seeds = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
    if not match:
      raise ConfigError(
        f"--seeds: {item!r} is not a seed or a range; use non-negative integers such as "
        "0,1,5-9 (ranges inclusive)."
      )
    low, high = int(match.group(1)), int(match.group(2) or match.group(1))
    if high < low:
      raise ConfigError(f"--seeds: the range {item!r} runs backwards; write {high}-{low}.")
    seeds.extend(range(low, high + 1))
  if not seeds:
    raise ConfigError(f"--seeds={text!r} names no seed; e.g. --seeds=0,1,5-9.")
  if len(seeds) > 100_000:
    raise ConfigError(f"--seeds={text!r} names {len(seeds)} seeds; at most 100000 at a time.")
  return seeds


def parse_labels(text: str, num_classes: int | None) -> list[int]:
  """``"3,7"`` or ``"all"`` -> class indices of a conditional run with ``num_classes`` classes."""
  if not num_classes:
    raise ConfigError(f"--labels={text}: the run is unconditional (it takes no class labels).")
  if text.strip().lower() == "all":
    return list(range(num_classes))
  labels = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    if not re.fullmatch(r"\d+", item) or int(item) >= num_classes:
      raise ConfigError(
        f"--labels: {item!r} is not a class of this run; use 'all' or integers in "
        f"0..{num_classes - 1}."
      )
    labels.append(int(item))
  if not labels:
    raise ConfigError(f"--labels={text!r} names no class; use 'all' or e.g. --labels=3,7.")
  return labels


def seed_latents(seeds: Sequence[int], latent_dim: int) -> np.ndarray:
  """One standard normal latent per seed, ``(len(seeds), latent_dim)`` float32."""
  import jax  # Here, not at the top: the command line checks seeds before importing jax.

  seeds = np.asarray(list(seeds), np.uint32)
  keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.key(_SEED_SALT), s))(seeds)
  return np.asarray(jax.vmap(lambda k: jax.random.normal(k, (latent_dim,)))(keys))


def check_truncation(value: float | None, mode: str) -> None:
  if mode not in TRUNCATION_MODES:
    raise ConfigError(f"Unknown truncation mode {mode!r}; valid: {', '.join(TRUNCATION_MODES)}.")
  if value is None:
    return
  if mode == "resample" and not value > 0:
    raise ConfigError(f"--truncation={value}: the resampling threshold must be > 0 (e.g. 1.0).")
  if mode == "scale" and not 0 <= value <= 1:
    raise ConfigError(f"--truncation={value}: the scale psi must be in [0, 1] (1 = untruncated).")


def truncate(
  latents: np.ndarray, value: float | None, mode: str = "resample", row_seeds=None
) -> np.ndarray:
  """The truncation trick on standard normal latents (``value`` None: unchanged).

  ``"resample"`` (Brock, Donahue, Simonyan 2019, "Large Scale GAN Training for High Fidelity
  Natural Image Synthesis", Sec. 3.1): every component with ``|z_i| > value`` is redrawn until it
  falls inside, so the latent follows a normal truncated to ``[-value, value]`` and the components
  already inside keep their values (the image changes least). Row ``i``'s redraws come from
  ``jax.random.truncated_normal`` under a key of ``row_seeds[i]`` (default: ``i``), so a seed's
  truncated latent is the same in any batch. ``"scale"``: ``psi * z``, the latent moved toward
  the prior's mean 0 (the psi of StyleGAN, Karras et al. 2019, applied to z); ``psi = 1`` leaves
  it, ``0`` gives the mean latent.
  """
  check_truncation(value, mode)
  latents = np.asarray(latents, np.float32)
  if value is None:
    return latents
  if mode == "scale":
    return latents * np.float32(value)
  import jax

  rows = np.arange(len(latents)) if row_seeds is None else np.asarray(row_seeds)
  base = jax.random.key(_SEED_SALT + 1)
  keys = jax.vmap(lambda s: jax.random.fold_in(base, s))(rows.astype(np.uint32))
  draw = jax.vmap(lambda k: jax.random.truncated_normal(k, -value, value, latents.shape[1:]))
  redrawn = np.asarray(draw(keys))
  return np.where(np.abs(latents) > value, redrawn, latents).astype(np.float32)


def interpolate(z0: np.ndarray, z1: np.ndarray, num: int, method: str = "slerp") -> np.ndarray:
  """``num`` latents from ``z0`` to ``z1`` (both ends included), ``(num, D)``.

  ``"slerp"``: spherical interpolation (White 2016, "Sampling Generative Networks"): the path keeps
  the norm a Gaussian latent has, where a straight line passes through the low-norm middle that
  the generator rarely saw. ``"linear"``: the straight line (also for soft labels).
  """
  if method not in INTERPOLATIONS:
    raise ConfigError(f"Unknown interpolation {method!r}; valid: {', '.join(INTERPOLATIONS)}.")
  z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
  t = np.linspace(0.0, 1.0, num)[:, None]
  linear = (1.0 - t) * z0 + t * z1
  if method == "linear":
    return linear.astype(np.float32)
  cos = np.dot(z0, z1) / max(np.linalg.norm(z0) * np.linalg.norm(z1), 1e-12)
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  if np.sin(omega) < 1e-6:  # (Anti)parallel ends: the line is the path.
    return linear.astype(np.float32)
  path = (np.sin((1.0 - t) * omega) * z0 + np.sin(t * omega) * z1) / np.sin(omega)
  return path.astype(np.float32)


def class_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
  """One-hot rows ``(len(labels), num_classes)`` float32: labels a generator can interpolate."""
  return np.eye(num_classes, dtype=np.float32)[np.asarray(labels, np.int64)]
