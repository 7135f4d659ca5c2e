"""Does the generator copy its training images? Nearest neighbours of samples in the training set.

Each generated sample's nearest training images are found in pixel space and in the evaluation
features (the run's classifier or Inception); its distance to the nearest one is compared with
the same distance for held-out real images, which the generator never had to reproduce. A
generator that copies puts many samples closer to a training image than almost any held-out image
is (the nearest-neighbour check of Borji 2019, "Pros and Cons of GAN Evaluation Measures", made
quantitative with held-out images as the baseline). The held-out images
are the data's ``test`` split, or, when the data has only a training split, its last
``num_held_out`` examples (then left out of the training images searched).

``--mode=nearest`` writes ``WORKDIR/nearest/``: ``nearest_pixels.png`` and
``nearest_features.png`` (each row a sample, a blank, then its ``k`` nearest training images; the
samples closest to a training image first), ``distances.png`` (the two distributions per space)
and ``nearest.json`` (the quantiles and the fraction of samples below the held-out 1st percentile).
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from ganjax import sampling
from ganjax.errors import ConfigError, DataError
from ganjax.evaluation import extractors as extractors_lib
from ganjax.evaluation import reference as reference_lib
from ganjax.trained import TrainedRun

# Training images searched unless --nearest_num_real says otherwise (MNIST's whole training set).
DEFAULT_NUM_REAL = 60_000
DEFAULT_NUM_HELD_OUT = 1_000
# Rows of the pictures: the samples nearest to a training image.
PICTURE_ROWS = 16
# A sample below the held-out 1st percentile happens to 1 % of samples of a generator that does not
# copy; above this fraction the check says copying is likely.
COPYING_FRACTION = 0.05
_QUANTILES = {"min": 0.0, "p01": 0.01, "p05": 0.05, "median": 0.5}


def nearest(queries: np.ndarray, references: np.ndarray, k: int, chunk: int = 1024):
  """``(distances, indices)``, both ``(N, k)``: each query's ``k`` nearest rows of ``references``
  by Euclidean distance, nearest first. Rows are flattened; float64 sums of squares."""
  queries = np.asarray(queries, np.float64).reshape(len(queries), -1)
  references = np.asarray(references, np.float64).reshape(len(references), -1)
  k = min(k, len(references))
  ref_norms = np.einsum("ij,ij->i", references, references)
  distances, indices = [], []
  for start in range(0, len(queries), chunk):
    q = queries[start : start + chunk]
    squared = np.einsum("ij,ij->i", q, q)[:, None] + ref_norms[None, :] - 2.0 * q @ references.T
    part = np.argpartition(squared, k - 1, axis=1)[:, :k]
    part_d = np.take_along_axis(squared, part, axis=1)
    order = np.argsort(part_d, axis=1)
    indices.append(np.take_along_axis(part, order, axis=1))
    distances.append(np.sqrt(np.maximum(np.take_along_axis(part_d, order, axis=1), 0.0)))
  return np.concatenate(distances), np.concatenate(indices)


def real_images(config: ml_collections.ConfigDict, split: str, num: int) -> np.ndarray:
  """The first ``num`` images of ``split`` (at most the split), NHWC in [-1, 1], in the fixed
  order of the reference statistics."""
  _, num, batches = reference_lib.real_batches(config, split, num, chunk=1000)
  images, seen = [], 0
  for batch in batches:
    if seen >= num:
      break
    part = np.asarray(batch["image"][: num - seen], np.float32)
    images.append(part)
    seen += len(part)
  return np.concatenate(images)


def training_and_held_out(
  config: ml_collections.ConfigDict, num_real: int, num_held_out: int
) -> tuple[np.ndarray, np.ndarray, str]:
  """``(training images, held-out images, where the held-out ones come from)``."""
  train = real_images(config, "train", num_real + num_held_out)
  try:
    held_out = real_images(config, "test", num_held_out)
    return train[:num_real], held_out, "the test split"
  except (ConfigError, DataError) as e:
    logging.info("No test split (%s); holding out training images instead.", e)
  if len(train) < 2 * num_held_out:
    num_held_out = len(train) // 10
  if num_held_out < 1:
    raise ConfigError(f"{len(train)} training images are too few to hold any out.")
  source = f"the last {num_held_out} of {len(train)} training images (no test split)"
  return train[:-num_held_out], train[-num_held_out:], source


def _quantiles(values: np.ndarray) -> dict[str, float]:
  return {name: float(np.quantile(values, q)) for name, q in _QUANTILES.items()}


def compare_distances(generated: np.ndarray, held_out: np.ndarray) -> dict[str, Any]:
  """Nearest-training-image distances of samples against those of held-out real images."""
  threshold = float(np.quantile(held_out, 0.01))
  below = float(np.mean(generated < threshold))
  return {
    "generated": _quantiles(generated),
    "held_out": _quantiles(held_out),
    "held_out_p01": threshold,
    "fraction_below_held_out_p01": below,
    "copying_likely": below > COPYING_FRACTION,
  }


def neighbour_picture(
  path: str, samples: np.ndarray, train: np.ndarray, indices: np.ndarray, order: np.ndarray
) -> None:
  """Rows ``order``: the sample, a blank, then its nearest training images."""
  k = indices.shape[1]
  blank = np.ones_like(samples[:1])
  rows = [np.concatenate([samples[i : i + 1], blank, train[indices[i]]]) for i in order]
  sampling.save_image_grid(path, np.concatenate(rows), num_columns=k + 2)


def distance_plot(path: str, spaces: dict[str, dict[str, np.ndarray]]) -> None:
  """Histograms of the nearest-training-image distances of samples and held-out images."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(spaces), figsize=(4.5 * len(spaces), 3.2), dpi=100)
  for ax, (space, d) in zip(np.atleast_1d(axes), spaces.items(), strict=True):
    bins = np.histogram_bin_edges(np.concatenate([d["generated"], d["held_out"]]), bins=40)
    ax.hist(d["held_out"], bins=bins, alpha=0.6, density=True, label="held-out real")
    ax.hist(d["generated"], bins=bins, alpha=0.6, density=True, label="generated")
    ax.axvline(np.quantile(d["held_out"], 0.01), color="k", lw=0.8, ls="--", label="held-out 1%")
    ax.set_xlabel(f"distance to the nearest training image ({space})")
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _extractor(config: ml_collections.ConfigDict, extractor):
  if extractor != "default":
    return extractor
  try:
    name = extractors_lib.default_extractor_name(config)
  except ConfigError as e:
    logging.warning("No feature extractor (%s): pixel space only.", e)
    return None
  return extractors_lib.get_extractor(config, name)


def _features(extractor, images: np.ndarray, chunk: int = 500) -> np.ndarray:
  parts = [extractor.fn(images[i : i + chunk])["features"] for i in range(0, len(images), chunk)]
  return np.concatenate(parts)


def memorisation_check(
  run: TrainedRun,
  output_dir: str,
  num_samples: int = 1000,
  k: int = 5,
  num_real: int = DEFAULT_NUM_REAL,
  num_held_out: int = DEFAULT_NUM_HELD_OUT,
  seed: int = 0,
  extractor: extractors_lib.Extractor | str | None = "default",
) -> dict[str, Any]:
  """``--mode=nearest``: see the module docstring. Returns what ``nearest.json`` holds.

  ``extractor``: the feature space besides pixels; ``"default"`` is the run's evaluation
  extractor (:func:`ganjax.evaluation.default_extractor_name`), None pixels only. The samples are
  those of the evaluation latents of ``seed``, every class in turn for a conditional run.
  """
  if run.generate_fn is None or not run.latent_dim:
    raise ConfigError(f"--mode=nearest needs a run that generates images; {run.task!r} does not.")
  if num_samples < 1 or k < 1:
    raise ConfigError(f"--num_samples and --num_neighbors must be >= 1, got {num_samples}, {k}.")
  config = run.config
  train, held_out, held_out_source = training_and_held_out(config, num_real, num_held_out)
  z = np.asarray(sampling.evaluation_latents(seed, num_samples, run.latent_dim))
  labels = None if not run.num_classes else np.arange(num_samples, dtype=np.int32) % run.num_classes
  samples = run.generate(z, labels)
  if samples.shape[1:] != train.shape[1:]:
    raise DataError(f"Samples {samples.shape[1:]} and training images {train.shape[1:]} differ.")
  os.makedirs(output_dir, exist_ok=True)
  dimension = float(np.prod(train.shape[1:]))
  spaces = {"pixels": (samples, held_out, train, 1.0 / np.sqrt(dimension))}
  extractor = _extractor(config, extractor)
  if extractor is not None:
    spaces[f"{extractor.name} features"] = (
      _features(extractor, samples),
      _features(extractor, held_out),
      _features(extractor, train),
      1.0,
    )
  result: dict[str, Any] = {
    "workdir": run.workdir,
    "step": run.step,
    "num_samples": num_samples,
    "num_training_images": len(train),
    "num_held_out": len(held_out),
    "held_out": held_out_source,
    "pixel_distance": "RMS difference per pixel value in [-1, 1]",
    "spaces": {},
  }
  distributions = {}
  for space, (gen, real, reference, scale) in spaces.items():
    gen_d, gen_idx = nearest(gen, reference, k)
    real_d, _ = nearest(real, reference, 1)
    gen_d, real_d = gen_d * scale, real_d * scale
    distributions[space] = {"generated": gen_d[:, 0], "held_out": real_d[:, 0]}
    result["spaces"][space] = compare_distances(gen_d[:, 0], real_d[:, 0])
    file = "nearest_pixels.png" if space == "pixels" else "nearest_features.png"
    order = np.argsort(gen_d[:, 0])[:PICTURE_ROWS]
    neighbour_picture(os.path.join(output_dir, file), samples, train, gen_idx, order)
    result["spaces"][space]["picture"] = file
  distance_plot(os.path.join(output_dir, "distances.png"), distributions)
  with open(os.path.join(output_dir, "nearest.json"), "w") as f:
    json.dump(result, f, indent=2)
  for space, values in result["spaces"].items():
    logging.info(
      "%s: median nearest distance %.4g (held-out %.4g); %.1f%% of samples below the held-out "
      "1st percentile (1%% expected) -> %s.",
      space,
      values["generated"]["median"],
      values["held_out"]["median"],
      100 * values["fraction_below_held_out_p01"],
      "copying likely" if values["copying_likely"] else "no sign of copying",
    )
  return result
