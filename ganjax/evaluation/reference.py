"""The reference statistics of the real data, computed once and cached.

:func:`reference_statistics` computes them once per key (dataset, split, resolution, data
description, extractor and weights hash, resize, number of real samples, ...) and caches them as
``.npz`` files named by the key's hash; the key is stored in the file and checked when it is read.
A file holds the mean and covariance of the real features (float64, streamed), a capped subset of
real features and labels (for KID and the k-NN metrics), and per-class statistics when intra-class
FID asked for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import ml_collections
import numpy as np
from absl import logging

from ganjax import data as data_lib
from ganjax.errors import ConfigError
from ganjax.evaluation.extractors import Extractor

REFERENCE_DIR_CONFIG_FIELD = "eval_reference_dir"
# Real samples of the reference statistics unless config.eval_num_real says otherwise (capped at
# the split's size): the usual 50k of FID on CIFAR-10 / the MNIST training set.
DEFAULT_NUM_REAL = 50_000
# Real features kept for KID, precision/recall and density/coverage.
DEFAULT_MAX_REAL_FEATURES = 10_000
# Version of the reference file layout; part of the key, so a new layout gets new files.
_REFERENCE_VERSION = 1
# A fixed data seed for the reference subset, so that every run shares the same reference files.
REFERENCE_SEED = 0


def reference_dir(config: ml_collections.ConfigDict, workdir: str | None = None) -> str:
  """``config.eval_reference_dir``, else ``WORKDIR/../.ganjax_reference_stats``."""
  directory = config.get(REFERENCE_DIR_CONFIG_FIELD)
  if directory:
    return os.fspath(directory)
  if workdir is None:
    raise ValueError(
      f"No directory for the reference statistics: set config.{REFERENCE_DIR_CONFIG_FIELD} or "
      "pass a workdir."
    )
  return os.path.join(os.path.dirname(os.path.abspath(workdir)), ".ganjax_reference_stats")


def _key_hash(key: Mapping[str, Any]) -> str:
  return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _reference_path(directory: str, key: Mapping[str, Any]) -> str:
  safe = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in str(key["dataset"]))
  return os.path.join(
    directory, f"{safe}_{key['split']}_{key['extractor']}_{_key_hash(key)[:16]}.npz"
  )


class _Moments:
  """Streaming mean and covariance (ddof = 1) in float64, overall and per class."""

  def __init__(self):
    self.shift = None
    self.count = 0
    self.total = self.outer = None

  def add(self, x: np.ndarray) -> None:
    x = np.asarray(x, np.float64)
    if not len(x):
      return
    if self.shift is None:  # Shifted sums against cancellation.
      self.shift = x.mean(axis=0)
      dim = x.shape[1]
      self.total, self.outer = np.zeros(dim), np.zeros((dim, dim))
    y = x - self.shift
    self.count += len(y)
    self.total += y.sum(axis=0)
    self.outer += y.T @ y

  def result(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ConfigError(f"Statistics need at least 2 samples, got {self.count}.")
    mean_y = self.total / self.count
    cov = (self.outer - self.count * np.outer(mean_y, mean_y)) / (self.count - 1)
    return mean_y + self.shift, (cov + cov.T) / 2


def real_batches(
  config: ml_collections.ConfigDict, split: str, num_real: int | None, chunk: int
) -> tuple[Any, int, Iterable[dict[str, np.ndarray]]]:
  """(source, num_real, batches): ``num_real`` distinct real examples (one epoch) in chunks."""
  data_config = ml_collections.ConfigDict(config.data.to_dict())
  data_config.split = split
  probe = data_lib.create_source(data_config, seed=REFERENCE_SEED, batch_size=1)
  available = probe.num_examples
  want = num_real or config.get("eval_num_real") or DEFAULT_NUM_REAL
  if available is not None and want > available:
    logging.info(
      "Reference: %d real samples asked, %s split %r has %d; using %d.",
      want,
      probe.name,
      split,
      available,
      available,
    )
    want = available
  size = min(chunk, want)
  if available is not None:  # The first steps of epoch 0 must hold `want` distinct examples.
    while (available // size) * size < want:
      size -= 1
    if size < min(64, want):  # No fitting chunk size (e.g. a prime split size): one batch.
      size = want
  source = data_lib.create_source(data_config, seed=REFERENCE_SEED, batch_size=size)
  return source, want, source.batches(0)


def reference_key(
  config: ml_collections.ConfigDict,
  extractor: Extractor,
  *,
  split: str,
  num_real: int,
  source: Any,
  max_features: int,
  per_class: bool,
) -> dict[str, Any]:
  """What identifies a reference file; hashed into its name and stored inside it."""
  return {
    "version": _REFERENCE_VERSION,
    "dataset": source.name,
    "split": split,
    "resolution": list(source.element_shape),
    "data": json.loads(json.dumps(dict(source.description), sort_keys=True, default=str)),
    "data_config": {
      k: v
      for k, v in json.loads(config.data.to_json_best_effort()).items()
      if k not in ("split", "cache_in_memory_max_bytes")
    },
    "data_seed": REFERENCE_SEED,
    "extractor": extractor.name,
    "weights_sha256": extractor.weights_sha256,
    "resize": extractor.protocol.get("resize"),
    "num_real": int(num_real),
    "max_features": int(max_features),
    "per_class": bool(per_class),
  }


def _read_reference(path: str, key: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
  try:
    with np.load(path, allow_pickle=False) as f:
      stored = json.loads(str(f["key"]))
      if stored != json.loads(json.dumps(key, sort_keys=True, default=str)):
        logging.warning("Reference file %s was made for another key; recomputing it.", path)
        return None
      return {k: f[k] for k in f.files}
  except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
    logging.warning("Ignoring the unusable reference file %s (%s); recomputing it.", path, e)
    return None


def _write_reference(path: str, arrays: Mapping[str, np.ndarray]) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}.npz"
  try:
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # Atomic: readers see no file or the whole file.
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def reference_statistics(
  config: ml_collections.ConfigDict,
  extractor: Extractor,
  directory: str,
  *,
  split: str | None = None,
  num_real: int | None = None,
  max_features: int = DEFAULT_MAX_REAL_FEATURES,
  per_class: bool = False,
  chunk: int = 1000,
) -> dict[str, Any]:
  """The real data's feature statistics for ``extractor``, read from ``directory`` or computed.

  Args:
    config: The run's config (``config.data`` names the data).
    extractor: The feature extractor.
    directory: Where the ``.npz`` files live.
    split: The data split (default ``config.data.split``).
    num_real: Real samples (default ``config.eval_num_real`` or :data:`DEFAULT_NUM_REAL`, at most
      the split's size): the first ``num_real`` of the split's epoch-0 order with seed
      :data:`REFERENCE_SEED`.
    max_features: How many real features (and labels) to keep for KID and the k-NN metrics.
    per_class: Also per-class means and covariances (for intra-class FID).
    chunk: Real images per extractor call.

  Returns:
    ``{"mean", "cov", "features", "labels" (or None), "class_means", "class_covs", "classes"
    (per_class only), "key", "path", "cached" (bool)}``.
  """
  split = split or config.data.get("split", "train") or "train"
  source, num_real, batches = real_batches(config, split, num_real, chunk)
  key = reference_key(
    config,
    extractor,
    split=split,
    num_real=num_real,
    source=source,
    max_features=max_features,
    per_class=per_class,
  )
  path = _reference_path(directory, key)
  stored = _read_reference(path, key) if os.path.exists(path) else None
  if stored is None:
    t_start = time.time()
    moments, class_moments = _Moments(), {}
    kept_features, kept_labels, seen = [], [], 0
    for batch in batches:
      if seen >= num_real:
        break
      images = batch["image"][: num_real - seen]
      labels = batch.get("label")
      labels = None if labels is None else np.asarray(labels[: len(images)])
      features = extractor.fn(images)["features"]
      moments.add(features)
      if per_class:
        if labels is None:
          raise ConfigError(f"Per-class statistics need labelled data; {source.name!r} has none.")
        for c in np.unique(labels):
          class_moments.setdefault(int(c), _Moments()).add(features[labels == c])
      room = max_features - sum(len(f) for f in kept_features)
      if room > 0:
        kept_features.append(np.asarray(features[:room], np.float32))
        if labels is not None:
          kept_labels.append(labels[:room].astype(np.int32))
      seen += len(images)
    mean, cov = moments.result()
    arrays = {
      "key": np.array(json.dumps(key, sort_keys=True, default=str)),
      "mean": mean,
      "cov": cov,
      "features": np.concatenate(kept_features),
    }
    if kept_labels:
      arrays["labels"] = np.concatenate(kept_labels)
    if per_class:
      classes = sorted(class_moments)
      results = [class_moments[c].result() for c in classes]
      arrays["classes"] = np.asarray(classes, np.int32)
      arrays["class_means"] = np.stack([m for m, _ in results])
      arrays["class_covs"] = np.stack([s for _, s in results])
    _write_reference(path, arrays)
    logging.info(
      "Computed the reference statistics of %d real %s/%s samples with %s in %.1fs: %s",
      num_real,
      source.name,
      split,
      extractor.name,
      time.time() - t_start,
      path,
    )
    stored, cached = arrays, False
  else:
    cached = True
  result = {k: v for k, v in stored.items() if k != "key"}
  result.setdefault("labels", None)
  return {**result, "key": key, "path": path, "cached": cached}
