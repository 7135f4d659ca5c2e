"""What a trained generator draws on request: ``--mode=sample`` with seeds, classes and truncation
(a grid, an ``.npz`` or a folder of images) and ``--mode=interpolate`` (a grid of latent paths and
an animated GIF).

Both work on any :class:`ganjax.trained.TrainedRun` that generates from latents (GAN, conditional
GAN, LAPGAN, VAE); the latents come from :mod:`ganjax.latents`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np
from absl import logging
from PIL import Image

from ganjax import latents as latents_lib
from ganjax import sampling
from ganjax.errors import ConfigError
from ganjax.trained import TrainedRun

FORMATS = ("png", "npz", "folder")
# Smallest side of a GIF frame: small images are enlarged (nearest neighbour) to be seen.
GIF_MIN_SIZE = 128
GIF_FRAME_MS = 80


@dataclasses.dataclass(frozen=True)
class SampleRequest:
  """What ``--mode=sample`` draws.

  Attributes:
    num_samples: Samples without ``seeds`` (the run's fixed latents, as its sample pictures).
    seeds: One image per seed (:func:`ganjax.latents.seed_latents`); None: the fixed latents.
    labels: Classes of a conditional run, one row each (None: all classes).
    truncation: The truncation value (None: off); ``truncation_mode`` as in
      :func:`ganjax.latents.truncate`.
  """

  num_samples: int = 64
  seeds: Sequence[int] | None = None
  labels: Sequence[int] | None = None
  truncation: float | None = None
  truncation_mode: str = "resample"


@dataclasses.dataclass(frozen=True)
class Drawn:
  """Samples with what made them: ``names`` of the files of ``--format=folder``, ``columns`` of
  the grid (None: square-ish)."""

  samples: np.ndarray
  latents: np.ndarray
  labels: np.ndarray | None
  seeds: np.ndarray | None
  names: list[str]
  columns: int | None


def _require_latents(run: TrainedRun) -> None:
  if run.generate_fn is None or not run.latent_dim:
    raise ConfigError(
      f"A {run.task!r} run does not draw from latents: seeds, labels, truncation and "
      "interpolation need a GAN, conditional GAN, LAPGAN or VAE run."
    )


def draw(run: TrainedRun, request: SampleRequest) -> Drawn:
  """The samples of ``request``: for a conditional run one row per class (``request.labels``,
  default all) and one column per seed (or fixed latent)."""
  _require_latents(run)
  if request.labels is not None and not run.num_classes:
    raise ConfigError(f"Labels {list(request.labels)} given, but the run is unconditional.")
  classes = None
  if run.num_classes:
    classes = list(range(run.num_classes)) if request.labels is None else list(request.labels)
  if request.seeds is not None:
    seeds = np.asarray(list(request.seeds), np.int64)
    base = latents_lib.seed_latents(seeds, run.latent_dim)
    column_names = [f"seed{s:04d}" for s in seeds]
  else:
    seeds = None
    per_row = request.num_samples // len(classes) if classes else request.num_samples
    per_row = max(1, per_row)
    base = sampling_latents(run, per_row)
    column_names = [f"{i:06d}" for i in range(per_row)]
  row_seeds = seeds if seeds is not None else np.arange(len(base))
  base = latents_lib.truncate(base, request.truncation, request.truncation_mode, row_seeds)
  if classes is None:
    samples = run.generate(base)
    return Drawn(samples, base, None, seeds, column_names, None)
  z = np.tile(base, (len(classes), 1))
  labels = np.repeat(np.asarray(classes, np.int32), len(base))
  names = [f"{name}_class{c}" for c in classes for name in column_names]
  tiled_seeds = None if seeds is None else np.tile(seeds, len(classes))
  return Drawn(run.generate(z, labels), z, labels, tiled_seeds, names, len(base))


def sampling_latents(run: TrainedRun, num: int) -> np.ndarray:
  """The run's own fixed sample latents (those of its sample pictures, ``config.seed``)."""
  return np.asarray(sampling.fixed_latents(run.config.seed, num, run.latent_dim))


def write_samples(run: TrainedRun, request: SampleRequest, output: str, fmt: str = "png") -> str:
  """Draws ``request`` and writes it as ``fmt``: ``"png"`` (a grid, plus ``.npz`` beside it),
  ``"npz"`` (samples, latents, labels, seeds) or ``"folder"`` (one PNG per sample, named by seed
  and class, what other tools' FID code reads). Returns what was written."""
  if fmt not in FORMATS:
    raise ConfigError(f"Unknown sample format {fmt!r}; valid: {', '.join(FORMATS)}.")
  drawn = draw(run, request)
  arrays = dict(samples=drawn.samples, latents=drawn.latents, step=run.step)
  arrays.update(truncation=np.nan if request.truncation is None else request.truncation)
  if drawn.labels is not None:
    arrays["labels"] = drawn.labels
  if drawn.seeds is not None:
    arrays["seeds"] = drawn.seeds
  if fmt == "folder":
    written = _write_folder(output, drawn)
  elif fmt == "npz":
    written = output if output.endswith(".npz") else output + ".npz"
    _makedirs_for(written)
    np.savez_compressed(written, **arrays)
  else:
    sampling.save_samples(
      output, drawn.samples, title=f"step {run.step}", num_columns=drawn.columns
    )
    np.savez_compressed(os.path.splitext(output)[0] + ".npz", **arrays)
    written = output
  logging.info(
    "Wrote %s (%d samples from step %d%s).",
    written,
    len(drawn.samples),
    run.step,
    ""
    if request.truncation is None
    else f", truncation {request.truncation_mode} {request.truncation}",
  )
  return written


def _makedirs_for(path: str) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _write_folder(folder: str, drawn: Drawn) -> str:
  samples = np.asarray(drawn.samples)
  if samples.ndim != 4:
    raise ConfigError(
      f"--format=folder writes images; this run draws points of shape {samples.shape[1:]} "
      "(use --format=npz)."
    )
  os.makedirs(folder, exist_ok=True)
  for name, image in zip(drawn.names, sampling.to_uint8(samples), strict=True):
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      os.path.join(folder, f"{name}.png")
    )
  return folder


def interpolation_inputs(
  run: TrainedRun,
  seeds: Sequence[int],
  frames: int,
  method: str = "slerp",
  labels: Sequence[int] | None = None,
  truncation: float | None = None,
  truncation_mode: str = "resample",
) -> tuple[np.ndarray, np.ndarray | None]:
  """Latents ``(paths * frames, D)`` and class weights of the paths ``seeds[0] -> seeds[1] ->
  ...``, one path per consecutive pair, ``frames`` steps each (both ends included).

  A conditional run takes ``labels``: one class for every frame, or one per seed, interpolated
  linearly along with the latents as class weights (the generator mixes the classes' embeddings).
  Returns ``(latents, class weights or None)``.
  """
  _require_latents(run)
  if len(seeds) < 2:
    raise ConfigError(f"--mode=interpolate needs at least two seeds, got {list(seeds)}.")
  if frames < 2:
    raise ConfigError(f"--frames must be >= 2 (the two ends), got {frames}.")
  ends = latents_lib.seed_latents(seeds, run.latent_dim)
  ends = latents_lib.truncate(ends, truncation, truncation_mode, np.asarray(seeds))
  pairs = list(zip(range(len(seeds) - 1), range(1, len(seeds)), strict=True))
  z = np.concatenate([latents_lib.interpolate(ends[a], ends[b], frames, method) for a, b in pairs])
  if not run.num_classes:
    if labels is not None:
      raise ConfigError(f"Labels {list(labels)} given, but the run is unconditional.")
    return z, None
  if labels is None or len(labels) not in (1, len(seeds)):
    raise ConfigError(
      f"A conditional run interpolates with --labels=C (one class for all frames) or one class "
      f"per seed ({len(seeds)} here, interpolated); got {labels}."
    )
  if len(labels) == 1:
    labels = list(labels) * len(seeds)
  weights = latents_lib.class_weights(labels, run.num_classes)
  soft = [latents_lib.interpolate(weights[a], weights[b], frames, "linear") for a, b in pairs]
  return z, np.concatenate(soft)


def write_interpolation(
  run: TrainedRun,
  output: str,
  seeds: Sequence[int],
  frames: int = 8,
  method: str = "slerp",
  labels: Sequence[int] | None = None,
  truncation: float | None = None,
  truncation_mode: str = "resample",
) -> tuple[str, str]:
  """``--mode=interpolate``: a PNG grid (one row per path between consecutive seeds, ``frames``
  columns) at ``output`` and an animated GIF beside it that walks every path and back to the
  first seed. Returns ``(png, gif)``."""
  seeds = list(seeds)
  if len(seeds) < 2:
    raise ConfigError(f"--mode=interpolate needs at least two seeds, got {seeds}.")
  # The paths through the seeds and back to the first: the grid shows the first len(seeds) - 1,
  # the GIF walks all of them.
  loop_labels = labels
  if labels is not None and len(labels) == len(seeds) > 1:
    loop_labels = [*labels, labels[0]]
  z, weights = interpolation_inputs(
    run, [*seeds, seeds[0]], frames, method, loop_labels, truncation, truncation_mode
  )
  samples = run.generate(z, weights)
  if samples.ndim != 4:
    raise ConfigError(f"--mode=interpolate draws images; this run draws {samples.shape[1:]}.")
  sampling.save_image_grid(output, samples[: (len(seeds) - 1) * frames], num_columns=frames)
  gif = os.path.splitext(output)[0] + ".gif"
  save_gif(gif, _drop_repeated_ends(samples, frames))
  logging.info("Wrote %s and %s (%d paths of %d frames).", output, gif, len(seeds) - 1, frames)
  return output, gif


def _drop_repeated_ends(frames_of_paths: np.ndarray, frames: int) -> np.ndarray:
  """The frames of consecutive paths without the repeated first frame of each later path."""
  keep = [i for i in range(len(frames_of_paths)) if i < frames or i % frames]
  return frames_of_paths[keep]


def save_gif(path: str, images: np.ndarray, frame_ms: int = GIF_FRAME_MS) -> None:
  """An endlessly looping GIF of ``(N, H, W, C)`` images in [-1, 1], enlarged to at least
  :data:`GIF_MIN_SIZE` pixels a side."""
  pictures = sampling.to_uint8(images)
  height, width = pictures.shape[1:3]
  scale = max(1, -(-GIF_MIN_SIZE // min(height, width)))
  frames = []
  for picture in pictures:
    frame = Image.fromarray(picture[..., 0] if picture.shape[-1] == 1 else picture)
    frames.append(frame.resize((width * scale, height * scale), Image.Resampling.NEAREST))
  _makedirs_for(path)
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
