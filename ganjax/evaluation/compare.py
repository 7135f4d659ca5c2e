"""Two sets of images scored against each other (``python -m ganjax.main --mode=fid``): FID, KID
and precision/recall of any generator's samples, ours or not, with one protocol.

A set is a folder of images (PNG, JPEG, BMP, WebP, TIFF; searched recursively, in sorted path
order), an ``.npz`` file (``images``: 8-bit NHWC, or floats in [-1, 1] as ``--mode=sample``
writes its ``samples``; or the statistics ``mu`` and ``sigma`` of pytorch-fid and clean-fid,
which give FID only; :func:`save_statistics` writes them, with their protocol) or a TFDS
dataset already on this machine, ``tfds:NAME[:SPLIT]``
(``tfds:cifar10:test``; read from ``$TFDS_DATA_DIR``, never downloaded). Grayscale and RGBA
images become RGB as ``PIL.Image.convert("RGB")`` makes them (pytorch-fid's loader). Images of
different sizes are allowed: each is resized to 299x299 by the extractor's own preprocessing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
from absl import logging

from ganjax import metrics as metrics_lib
from ganjax.errors import ConfigError, DataError, MissingPathError
from ganjax.evaluation import metric_table
from ganjax.evaluation.extractors import Extractor

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
# The metrics computed when none are named (those that need features of both sets and nothing
# else); a set given by its statistics allows FID only.
DEFAULT_METRICS = ("fid", "kid", "precision_recall")
STATISTICS_ONLY_METRICS = ("fid",)
# Images per extractor call (and per progress line).
CHUNK = 500


@dataclasses.dataclass
class ImageSet:
  """A set of images (``images``: 8-bit RGB arrays, HWC, any sizes) or only its feature
  statistics (``mean``, ``cov``), and where it came from."""

  source: str
  images: list[np.ndarray] | None = None
  mean: np.ndarray | None = None
  cov: np.ndarray | None = None
  # The extractor protocol stored with statistics that ganjax saved (save_statistics); None for
  # statistics from elsewhere (pytorch-fid, clean-fid), whose protocol cannot be checked.
  protocol: dict[str, Any] | None = None

  @property
  def size(self) -> int | None:
    """The number of images (of statistics: as their protocol records it, else None)."""
    if self.images is None:
      return (self.protocol or {}).get("num_images")
    return len(self.images)


def _rgb(image: np.ndarray, where: str) -> np.ndarray:
  """An 8-bit HWC RGB array from 8-bit HW, HW1, HW3 or HW4 (alpha dropped, as PIL's convert)."""
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise DataError(f"{where}: expected HWC images with 1, 3 or 4 channels, got {image.shape}.")
  if image.shape[-1] == 1:
    return np.repeat(image, 3, axis=-1)
  return image[..., :3]


def _read_folder(folder: str) -> ImageSet:
  from PIL import Image

  paths = sorted(
    os.path.join(root, name)
    for root, _, names in os.walk(folder)
    for name in names
    if name.lower().endswith(IMAGE_EXTENSIONS)
  )
  if not paths:
    raise DataError(f"{folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
  images = []
  for path in paths:
    with Image.open(path) as image:
      images.append(np.asarray(image.convert("RGB"), np.uint8))
  return ImageSet(folder, images=images)


def _to_uint8(array: np.ndarray, where: str) -> np.ndarray:
  if array.dtype == np.uint8:
    return array
  if not np.issubdtype(array.dtype, np.floating):
    raise DataError(f"{where}: images must be uint8 or floats in [-1, 1], got {array.dtype}.")
  low, high = float(array.min()), float(array.max())
  if low < -1.0 - 1e-6 or high > 1.0 + 1e-6:
    raise DataError(f"{where}: float images must lie in [-1, 1], got [{low:.3g}, {high:.3g}].")
  return np.round((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _read_npz(path: str) -> ImageSet:
  with np.load(path, allow_pickle=False) as data:
    if {"mu", "sigma"} <= set(data.files):
      protocol = json.loads(str(data["protocol"])) if "protocol" in data.files else None
      return ImageSet(
        path, mean=np.asarray(data["mu"], np.float64), cov=data["sigma"], protocol=protocol
      )
    for key in ("images", "samples"):
      if key in data.files:
        array = data[key]
        break
    else:
      raise DataError(
        f"{path!r} has arrays {sorted(data.files)}; expected 'images' (or 'samples'): NHWC "
        "images, or 'mu' and 'sigma': feature statistics."
      )
  if array.ndim == 3:
    array = array[..., None]
  images = _to_uint8(array, path)
  return ImageSet(path, images=[_rgb(image, path) for image in images])


def _read_tfds(spec: str) -> ImageSet:
  _, name, *rest = spec.split(":")
  split = rest[0] if rest else "train"
  import tensorflow_datasets as tfds

  try:
    dataset = tfds.load(name, split=split, download=False)
  except Exception as e:  # DatasetNotFoundError, AssertionError for a missing preparation, ...
    raise MissingPathError(
      f"{spec}: TFDS dataset {name!r} (split {split!r}) is not prepared on this machine "
      f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); prepare it where the network is "
      "reachable and set TFDS_DATA_DIR, or pass a folder or .npz of its images."
    ) from e
  images = [_rgb(np.asarray(x["image"]), spec) for x in tfds.as_numpy(dataset)]
  return ImageSet(spec, images=images)


def read_image_set(source: str) -> ImageSet:
  """The images (or statistics) that ``source`` names: a folder, an ``.npz`` file, or
  ``tfds:NAME[:SPLIT]`` (see the module docstring)."""
  if source.startswith("tfds:"):
    return _read_tfds(source)
  if os.path.isdir(source):
    return _read_folder(source)
  if os.path.isfile(source):
    if source.endswith(".npz"):
      return _read_npz(source)
    raise ConfigError(
      f"{source!r} is a file but not an .npz; give a folder of images, an .npz (images or "
      "mu/sigma statistics) or tfds:NAME[:SPLIT]."
    )
  raise MissingPathError(
    f"{source!r} does not exist; give a folder of images, an .npz (images or mu/sigma "
    "statistics) or tfds:NAME[:SPLIT]."
  )


def _chunks(images: list[np.ndarray]) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(indices, stacked images) of at most :data:`CHUNK` images of one size each."""
  by_shape: dict[tuple[int, ...], list[int]] = {}
  for i, image in enumerate(images):
    by_shape.setdefault(image.shape, []).append(i)
  for indices in by_shape.values():
    for start in range(0, len(indices), CHUNK):
      part = np.asarray(indices[start : start + CHUNK])
      yield part, np.stack([images[i] for i in part])


def image_features(extractor: Extractor, image_set: ImageSet) -> np.ndarray:
  """The extractor's features of every image of the set, in its order, with progress lines
  (images/s and the time left)."""
  images = image_set.images
  features: np.ndarray | None = None
  done, t_start = 0, time.time()
  for indices, batch in _chunks(images):
    out = extractor.fn(batch.astype(np.float32) / 127.5 - 1.0)["features"]
    if features is None:
      features = np.zeros((len(images), out.shape[-1]), np.float32)
    features[indices] = out
    done += len(indices)
    elapsed = time.time() - t_start
    rate = done / max(elapsed, 1e-9)
    logging.info(
      "%s: %d/%d images, %.1f img/s, %.0f s left.",
      image_set.source,
      done,
      len(images),
      rate,
      (len(images) - done) / rate,
    )
  return features


def _statistics(extractor: Extractor, image_set: ImageSet) -> dict[str, Any]:
  if image_set.images is None:
    return {"mean": image_set.mean, "cov": image_set.cov, "features": None}
  features = image_features(extractor, image_set)
  stats = metrics_lib.feature_statistics(features)
  return {"mean": stats.mean, "cov": stats.covariance, "features": features}


# The protocol entries that must agree for two sets' statistics to be comparable.
_PROTOCOL_KEYS = ("extractor", "weights_sha256", "resize", "input_range", "quantize")


def _check_protocol(image_set: ImageSet, extractor: Extractor) -> None:
  if image_set.protocol is None:
    return
  differ = [k for k in _PROTOCOL_KEYS if image_set.protocol.get(k) != extractor.protocol.get(k)]
  if differ:
    details = "; ".join(
      f"{k}: {image_set.protocol.get(k)!r} there, {extractor.protocol.get(k)!r} here"
      for k in differ
    )
    raise ConfigError(
      f"{image_set.source!r} holds statistics made with another protocol ({details}); "
      "recompute them with these weights."
    )


@dataclasses.dataclass(frozen=True)
class Extracted:
  """A set read and its statistics (``mean``, ``cov``, ``features``): extracted once, used by
  :func:`save_statistics` and :func:`compare` alike."""

  image_set: ImageSet
  statistics: dict[str, Any]
  seconds: float


def extract(source: str, extractor: Extractor) -> Extracted:
  """Reads ``source`` and computes its statistics with ``extractor``."""
  image_set = read_image_set(source)
  _check_protocol(image_set, extractor)
  t_start = time.time()
  stats = _statistics(extractor, image_set)
  return Extracted(image_set, stats, round(time.time() - t_start, 1))


def save_statistics(
  source: str, extractor: Extractor, path: str, extracted: Extracted | None = None
) -> dict[str, Any]:
  """Writes the features' ``mu`` and ``sigma`` of the images of ``source`` to ``path`` (.npz, the
  format pytorch-fid and clean-fid read too) with the extractor's protocol and the image count,
  so that a large reference set is extracted once (``--reference=path`` later; a protocol that
  differs from the later run's is refused). ``extracted``: :func:`extract` of ``source`` already
  done. Returns what the file's ``protocol`` holds."""
  if extracted is None:
    extracted = extract(source, extractor)
  if extracted.image_set.images is None:
    raise ConfigError(f"{source!r} already holds statistics; give images to extract.")
  stats = extracted.statistics
  protocol = {
    **extractor.protocol,
    "source": source,
    "num_images": len(extracted.image_set.images),
    "seconds": extracted.seconds,
  }
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  np.savez(
    tmp, mu=stats["mean"], sigma=stats["cov"], protocol=np.array(json.dumps(protocol, default=str))
  )
  os.replace(tmp, path)  # Atomic: an interrupted run leaves no half-written statistics.
  return protocol


def compare(
  input_source: str,
  reference_source: str,
  extractor: Extractor,
  metrics: list[str] | None = None,
  input_extracted: Extracted | None = None,
) -> dict[str, Any]:
  """Scores the images of ``input_source`` against those of ``reference_source``
  (``input_extracted``: :func:`extract` of ``input_source`` already done).

  Returns:
    ``{"values": {name: float}, "details": {...}, "protocol": {...}}``: the protocol names both
    sets, their sizes and the extractor's protocol (weights and their hash, resize, input range).

  Raises:
    ValueError: an unknown metric, or one that needs features of a set given by statistics only.
  """
  input_set = input_extracted.image_set if input_extracted else read_image_set(input_source)
  sets = {"input": input_set, "reference": read_image_set(reference_source)}
  for image_set in sets.values():
    _check_protocol(image_set, extractor)
  statistics_only = [name for name, s in sets.items() if s.images is None]
  if metrics is None:
    metrics = list(STATISTICS_ONLY_METRICS if statistics_only else DEFAULT_METRICS)
  metrics = metric_table.check_metrics(
    metrics, extractor.name, data_name=None, num_classes=None, outputs=extractor.outputs
  )
  needs_features = [m for m in metrics if metric_table.needs([m], "real_features")]
  if statistics_only and needs_features:
    raise ConfigError(
      f"Metrics {', '.join(needs_features)} need the images of both sets; the "
      f"{' and '.join(statistics_only)} set is given by its mu/sigma statistics only (FID)."
    )
  unsupported = [m for m in metrics if metric_table.needs([m], "labels") or m == "is"]
  if unsupported:
    raise ConfigError(
      f"--mode=fid compares two sets of images; {', '.join(unsupported)} cannot be computed "
      f"from them. Valid: {', '.join(DEFAULT_METRICS)}, density_coverage."
    )
  t_start = time.time()
  stats = {
    name: _statistics(extractor, image_set)
    for name, image_set in sets.items()
    if not (name == "input" and input_extracted)
  }
  if input_extracted:
    stats["input"] = input_extracted.statistics
  if statistics_only:  # FID alone, from the two sets' moments.
    a, b = stats["reference"], stats["input"]
    fid = metrics_lib.frechet_distance_from_statistics(a["mean"], a["cov"], b["mean"], b["cov"])
    values, details = {"fid": float(fid)}, {}
  else:
    inputs = metric_table.MetricInputs(
      reference=stats["reference"], fake={"features": stats["input"]["features"]}, labels=None
    )
    values, details = metric_table.compute_metrics(metrics, inputs)
  protocol = {
    **extractor.protocol,
    "input": input_source,
    "reference": reference_source,
    "num_input": sets["input"].size,
    "num_reference": sets["reference"].size,
    "seconds": round(time.time() - t_start, 1),
  }
  return {"values": values, "details": details, "protocol": protocol}
