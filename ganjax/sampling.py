"""Pictures of what a generator makes: image grids and 2-D scatter plots; a run's fixed latents."""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def fixed_latents(seed: int, num: int, latent_dim: int) -> jax.Array:
  """The fixed latent batch whose samples are drawn throughout a run (and by ``--mode=sample``)."""
  return jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0x5A3), (num, latent_dim))


def evaluation_latents(seed: int, num_samples: int, latent_dim: int) -> jax.Array:
  """The fixed latents of every evaluation of a run with this seed (metrics, mode coverage)."""
  key = jax.random.fold_in(jax.random.key(seed), 0xE7A1)
  return jax.random.normal(key, (num_samples, latent_dim))


def class_grid_inputs(
  seed: int, num_classes: int, num_samples: int, latent_dim: int
) -> tuple[jax.Array, jax.Array]:
  """Latents and labels of a class-conditional grid: one class per row, one latent per column.

  ``max(1, num_samples // num_classes)`` columns; row ``k`` holds class ``k`` and column ``j``
  the ``j``-th fixed latent (:func:`fixed_latents`) for every class. Returns ``(z, labels)`` in
  row-major order, ``num_classes * columns`` of each.
  """
  if num_classes < 1:
    raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
  columns = max(1, num_samples // num_classes)
  z = jnp.tile(fixed_latents(seed, columns, latent_dim), (num_classes, 1))
  labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), columns)
  return z, labels


def latents_and_labels(
  seed: int, num_samples: int, latent_dim: int, num_classes: int | None, labels=None
) -> tuple[jax.Array, jax.Array | None]:
  """Exactly ``num_samples`` latents (and labels of a conditional generator) for ``seed``.

  Unconditional: :func:`fixed_latents`. Conditional without ``labels``: the class grid of
  :func:`class_grid_inputs` when ``num_samples`` is a multiple of ``num_classes`` (the run's
  sample pictures), else every class in turn; with ``labels``: :func:`fixed_latents` and those.
  """
  if not num_classes:
    return fixed_latents(seed, num_samples, latent_dim), None
  if labels is None and num_samples % num_classes == 0:
    return class_grid_inputs(seed, num_classes, num_samples, latent_dim)
  if labels is None:
    labels = jnp.arange(num_samples, dtype=jnp.int32) % num_classes
  return fixed_latents(seed, num_samples, latent_dim), jnp.asarray(labels, jnp.int32)


def grid_size(num_samples: int, num_classes: int | None) -> int:
  """Samples in a picture of about ``num_samples``: a whole number of rows per class."""
  return num_classes * max(1, num_samples // num_classes) if num_classes else num_samples


def to_uint8(images: np.ndarray) -> np.ndarray:
  """[-1, 1] floats to uint8 pixels."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, num_columns: int | None = None, padding: int = 2) -> np.ndarray:
  """Tiles ``(N, H, W, C)`` images in [-1, 1] into one uint8 ``(rows*H, cols*W, C)`` picture."""
  images = to_uint8(images)
  if images.ndim == 3:
    images = images[..., None]
  n, h, w, c = images.shape
  cols = num_columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, cols)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top : top + h, left : left + w] = image
  return grid


def save_image_grid(path: str, images: np.ndarray, num_columns: int | None = None) -> np.ndarray:
  """Writes a PNG grid of images in [-1, 1]; returns the grid."""
  grid = image_grid(images, num_columns)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return grid


def save_scatter(
  path: str,
  points: np.ndarray,
  reference: np.ndarray | None = None,
  title: str = "",
  limits: float | None = None,
) -> np.ndarray:
  """Writes a scatter plot of 2-D samples (and real points or modes, in another colour).

  Returns the rendered picture as a uint8 ``(H, W, 3)`` array (for TensorBoard).
  """
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  points = np.asarray(points)
  fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
  if reference is not None:
    ref = np.asarray(reference)
    ax.scatter(ref[:, 0], ref[:, 1], s=30, c="tab:orange", marker="x", label="real", zorder=3)
  ax.scatter(points[:, 0], points[:, 1], s=2, alpha=0.5, c="tab:blue", label="generated")
  if limits is None:
    extent = np.abs(points).max() if points.size else 1.0
    if reference is not None:
      extent = max(extent, np.abs(reference).max())
    limits = min(1.2 * float(extent), 10.0)
  ax.set_xlim(-limits, limits)
  ax.set_ylim(-limits, limits)
  ax.set_aspect("equal")
  ax.set_title(title, fontsize=9)
  ax.legend(loc="upper right", fontsize=7)
  fig.tight_layout()
  fig.canvas.draw()
  picture = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path)
  plt.close(fig)
  return picture


def save_samples(
  path: str,
  samples: np.ndarray,
  reference: np.ndarray | None = None,
  title: str = "",
  num_columns: int | None = None,
):
  """Images as a grid (``num_columns`` wide; None = square-ish), 2-D points as a scatter plot;
  returns the picture as uint8 HWC."""
  samples = np.asarray(samples)
  if samples.ndim == 2 and samples.shape[-1] == 2:
    return save_scatter(path, samples, reference, title=title)
  grid = save_image_grid(path, samples, num_columns)
  return grid if grid.shape[-1] == 3 else np.repeat(grid, 3, axis=-1)
