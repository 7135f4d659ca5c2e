"""A trained run loaded from its workdir: what ``ganjax.load`` returns for every system.

Each system's ``load(workdir, step)`` restores its checkpoint and wraps what the run can do as
:class:`TrainedRun`: ``sample`` (GAN, conditional GAN, LAPGAN, VAE) and ``upscale`` (SRGAN). The
command line's ``--mode=sample`` and ``--mode=upscale`` call the same functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from ganjax.errors import ConfigError

# (num_samples, seed, labels or None) -> (samples, inputs): samples NHWC in [-1, 1] (points
# (N, D) for point data); inputs the latents/labels/picture layout that produced them.
SampleFn = Callable[[int, int, np.ndarray | None], tuple[np.ndarray, dict[str, Any]]]
UpscaleFn = Callable[[np.ndarray], np.ndarray]
# (latents (N, latent_dim), labels (N,) ints or (N, num_classes) class weights, or None) -> samples.
GenerateFn = Callable[[np.ndarray, np.ndarray | None], np.ndarray]
# Latents per call of the generator in :meth:`TrainedRun.generate` (bounds its memory).
GENERATE_BATCH = 256


@dataclasses.dataclass(frozen=True)
class TrainedRun:
  """A run's checkpoint and what it can do.

  Attributes:
    workdir: Where the run lives.
    config: The run's resolved config (``WORKDIR/config.json``).
    step: The step of the restored checkpoint.
    state: The restored state (the system's own pytree).
    num_classes: The classes a conditional generator takes (None: unconditional).
    latent_dim: The size of the generator's standard normal latent (None: it takes none).
  """

  workdir: str
  config: ml_collections.ConfigDict
  step: int
  state: Any
  num_classes: int | None = None
  sample_fn: SampleFn | None = dataclasses.field(default=None, repr=False)
  upscale_fn: UpscaleFn | None = dataclasses.field(default=None, repr=False)
  latent_dim: int | None = None
  generate_fn: GenerateFn | None = dataclasses.field(default=None, repr=False)

  @property
  def task(self) -> str:
    return self.config.get("task", "gan")

  def sample(
    self,
    num_samples: int | None = None,
    seed: int = 0,
    labels=None,
    *,
    seeds=None,
    truncation: float | None = None,
    truncation_mode: str = "resample",
  ) -> np.ndarray:
    """``num_samples`` samples, NHWC in [-1, 1] (points ``(N, D)`` on point data).

    ``seed`` picks the latents (the run's sample pictures use ``config.seed``). ``labels``: the
    classes of a conditional generator, one int for all or one per sample (default: every class
    in turn); an unconditional generator takes none. ``seeds``: one sample per seed instead, the
    same image for a seed in any list (:func:`ganjax.latents.seed_latents`; ``num_samples`` is
    then ``len(seeds)``). ``truncation``: the truncation trick on those latents
    (:func:`ganjax.latents.truncate`; ``truncation_mode`` ``"resample"`` or ``"scale"``).
    """
    if seeds is None and truncation is None:
      if num_samples is None:
        raise ConfigError("sample() needs num_samples (or seeds=[...]).")
      return self.sample_with_inputs(num_samples, seed, labels)[0]
    from ganjax import latents as latents_lib

    if seeds is not None:
      seeds = [int(s) for s in seeds]
      if num_samples is not None and num_samples != len(seeds):
        raise ConfigError(f"num_samples={num_samples} but {len(seeds)} seeds; give one of them.")
      if not seeds:
        raise ConfigError("seeds=[] names no sample.")
      z, rows = latents_lib.seed_latents(seeds, self.latent_dim or 0), seeds
    else:
      if num_samples is None or num_samples < 1:
        raise ConfigError(f"num_samples must be an int >= 1, got {num_samples!r}.")
      from ganjax import sampling

      # The latents (and labels) sample_fn draws for (num_samples, seed, labels), not drawn twice.
      z, grid_labels = sampling.latents_and_labels(
        seed, num_samples, self.latent_dim or 0, self.num_classes, self._labels(labels, num_samples)
      )
      z, rows = np.asarray(z), None
      labels = labels if grid_labels is None else np.asarray(grid_labels)
    z = latents_lib.truncate(z, truncation, truncation_mode, rows)
    if self.num_classes and labels is None:
      labels = np.arange(len(z)) % self.num_classes
    return self.generate(z, labels)

  def sample_with_inputs(self, num_samples: int, seed: int = 0, labels=None):
    """``(samples, inputs)``: :meth:`sample` and the latents (and labels) that produced it."""
    if self.sample_fn is None:
      raise ConfigError(f"A {self.task!r} run does not generate samples ({self.workdir}).")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int | np.integer):
      raise ConfigError(f"num_samples must be an int >= 1, got {num_samples!r}.")
    if num_samples < 1:
      raise ConfigError(f"num_samples must be >= 1, got {num_samples}.")
    return self.sample_fn(int(num_samples), int(seed), self._labels(labels, int(num_samples)))

  def _labels(self, labels, num_samples: int) -> np.ndarray | None:
    if labels is None:
      return None
    if not self.num_classes:
      raise ConfigError(f"labels={labels!r} given, but the {self.task!r} run is unconditional.")
    labels = np.broadcast_to(np.asarray(labels), (num_samples,))
    if not np.issubdtype(labels.dtype, np.integer):
      raise ConfigError(f"labels must be integers in [0, {self.num_classes}), got {labels.dtype}.")
    bad = labels[(labels < 0) | (labels >= self.num_classes)]
    if bad.size:
      raise ConfigError(
        f"Label {int(bad[0])} is out of range: the run has {self.num_classes} classes "
        f"(0..{self.num_classes - 1})."
      )
    return labels.astype(np.int32)

  def generate(self, latents: np.ndarray, labels=None) -> np.ndarray:
    """The samples of the given latents ``(N, latent_dim)`` (and, for a conditional generator,
    labels ``(N,)`` or class weights ``(N, num_classes)`` that mix classes), NHWC in [-1, 1];
    drawn :data:`GENERATE_BATCH` at a time."""
    if self.generate_fn is None or not self.latent_dim:
      raise ConfigError(f"A {self.task!r} run does not generate from latents ({self.workdir}).")
    latents = np.asarray(latents, np.float32)
    if latents.ndim != 2 or latents.shape[1] != self.latent_dim:
      raise ConfigError(
        f"latents must have shape (N, {self.latent_dim}) for this run, got {latents.shape}."
      )
    if labels is not None:
      labels = np.asarray(labels)
      if labels.ndim == 2 and np.issubdtype(labels.dtype, np.floating):
        if not self.num_classes or labels.shape != (len(latents), self.num_classes):
          raise ConfigError(
            f"Class weights must have shape ({len(latents)}, {self.num_classes}), got "
            f"{labels.shape}."
          )
        labels = labels.astype(np.float32)
      else:
        labels = self._labels(labels, len(latents))
    elif self.num_classes:
      raise ConfigError(f"The run is conditional: give labels in 0..{self.num_classes - 1}.")
    chunks = []
    for start in range(0, len(latents), GENERATE_BATCH):
      part = slice(start, start + GENERATE_BATCH)
      chunks.append(
        np.asarray(self.generate_fn(latents[part], None if labels is None else labels[part]))
      )
    return np.concatenate(chunks)

  def upscale(self, image: np.ndarray) -> np.ndarray:
    """Super-resolves one uint8 ``(H, W, 3)`` image of any size; returns uint8
    ``(H * scale, W * scale, 3)``."""
    if self.upscale_fn is None:
      raise ConfigError(
        f"A {self.task!r} run does not upscale images; train task 'srgan' ({self.workdir})."
      )
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
      raise ConfigError(
        f"upscale takes one uint8 RGB image (H, W, 3), got {image.dtype} {image.shape}."
      )
    return self.upscale_fn(image)
