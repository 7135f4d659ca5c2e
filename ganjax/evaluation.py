"""Measuring a generator with a recorded protocol: feature extractors, cached reference
statistics, and the metrics of :mod:`ganjax.metrics` on generated samples.

A number such as "FID 12.3" means little without what it was measured with. Every result of
:func:`evaluate_generator` is ``{"values": {...}, "protocol": {...}}`` where the protocol names the
feature extractor and the hash of its weights, the resize, the number of real and generated
samples, the reference data (name, split, resolution), whether the EMA or the raw generator was
measured, the latent seed and the step.

* **Extractors** (:func:`get_extractor`, by name): ``"inception"``, the FID InceptionV3 of
  :mod:`ganjax.metrics.inception` (weights from ``config.eval_inception_weights``; images are
  mapped to [0, 1], quantized to 8 bits as a saved PNG would be, and resized to 299x299 with
  PyTorch's bilinear interpolation as pytorch-fid does) and ``"classifier"``, the MNIST digit
  classifier of :mod:`ganjax.classifier` (a workdir of ``train_classifier``, from
  ``config.eval_classifier_workdir``). An extractor maps images in [-1, 1] to
  ``{"features": (N, F), "probabilities": (N, K)}``; the classifier also gives ``"digits"``
  (N, C), the digit of every channel (each channel is classified on its own: C = 3 for Stacked
  MNIST, whose features are the 3 channels' features side by side and whose probabilities are the
  joint distribution over the 1000 digit triples).
* **Sharding**: generation and feature extraction run in fixed-size jitted batches sharded on
  their leading axis over a mesh with a ``data`` axis (:func:`eval_mesh`: the devices of
  ``config.parallel.num_devices``, default all), the weights replicated; batch sizes are rounded up
  to a multiple of the device count. The values equal one device's up to float round-off.
* **Metrics** (by name, :data:`METRICS`): ``fid`` (Inception features only) and ``classifier_fid``
  (classifier features: a different number, never reported as FID), ``kid``, ``is`` (softmax of
  the Inception's unbiased logits as in Salimans et al.'s code, or of the classifier's logits),
  ``precision_recall`` (k = 3), ``density_coverage`` (k = 5), ``stacked_mnist_modes`` (classifier,
  Stacked MNIST data) and ``intra_class_fid`` (conditional generators; Fréchet distance per class
  with the extractor's features, averaged).
* **Reference statistics** (:func:`reference_statistics`): computed once per key (dataset, split,
  resolution, data description, extractor and weights hash, resize, number of real samples, ...)
  and cached as ``.npz`` files named by the key's hash; the key is stored in the file and checked
  when it is read. A file holds the mean and covariance of the real features (float64, streamed),
  a capped subset of real features and labels (for KID and the k-NN metrics), and per-class
  statistics when intra-class FID asked for them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from ganjax import checkpoint as checkpoint_lib
from ganjax import classifier as classifier_lib
from ganjax import data as data_lib
from ganjax import loop, parallel
from ganjax import metrics as metrics_lib
from ganjax import workdir as workdir_lib
from ganjax.errors import ConfigError, MissingPathError
from ganjax.metrics import inception as inception_lib
from ganjax.systems import gan as gan_lib

EXTRACTORS = ("inception", "classifier")
# Metric name -> the extractors it can use (None: any).
METRICS: dict[str, tuple[str, ...] | None] = {
  "fid": ("inception",),
  "classifier_fid": ("classifier",),
  "kid": None,
  "is": None,
  "precision_recall": None,
  "density_coverage": None,
  "stacked_mnist_modes": ("classifier",),
  "intra_class_fid": None,
}
CLASSIFIER_CONFIG_FIELD = "eval_classifier_workdir"
REFERENCE_DIR_CONFIG_FIELD = "eval_reference_dir"
# Real samples of the reference statistics unless config.eval_num_real says otherwise (capped at
# the split's size): the usual 50k of FID on CIFAR-10 / the MNIST training set.
DEFAULT_NUM_REAL = 50_000
# Real features kept for KID, precision/recall and density/coverage.
DEFAULT_MAX_REAL_FEATURES = 10_000
INCEPTION_RESIZE = "bilinear 299, pytorch-fid"
PRECISION_RECALL_K = 3
DENSITY_COVERAGE_K = 5
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
# Version of the reference file layout; part of the key, so a new layout gets new files.
_REFERENCE_VERSION = 1
# A fixed data seed for the reference subset, so that every run shares the same reference files.
REFERENCE_SEED = 0


@dataclasses.dataclass(frozen=True)
class Extractor:
  """A named feature extractor and the protocol it adds to every result.

  ``fn(images)`` takes (N, H, W, C) images in [-1, 1] (numpy) and returns float32 numpy
  ``{"features": (N, F), "probabilities": (N, K)}`` (and ``"digits"`` for the classifier).
  """

  name: str
  fn: Callable[[np.ndarray], dict[str, np.ndarray]]
  protocol: dict[str, Any]

  @property
  def weights_sha256(self) -> str:
    return self.protocol["weights_sha256"]


def _softmax(logits: np.ndarray) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  logits = logits - logits.max(axis=-1, keepdims=True)
  probabilities = np.exp(logits)
  return probabilities / probabilities.sum(axis=-1, keepdims=True)


def eval_mesh(config: ml_collections.ConfigDict) -> Mesh:
  """The mesh an evaluation shards its batches over: ``config.parallel.num_devices`` (0 or none:
  all devices), as training uses."""
  num_devices = (config.get("parallel") or {}).get("num_devices") or None
  return parallel.make_mesh(num_devices)


def inception_extractor(
  weights_path: str | None,
  *,
  cache_dir: str | None = None,
  batch_size: int = 50,
  mesh: Mesh | None = None,
) -> Extractor:
  """The FID InceptionV3: 2048-d pool3 features, softmax of the 1008 unbiased logits.

  Batches are sharded over ``mesh`` (default: all devices), the weights replicated on it once
  (:func:`ganjax.metrics.inception.extract_features`).

  Raises:
    FileNotFoundError: no weights file; the message names ``config.eval_inception_weights``.
  """
  weights = inception_lib.load_inception(weights_path, cache_dir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  variables = jax.device_put(weights.variables, parallel.replicated(mesh))

  def fn(images: np.ndarray) -> dict[str, np.ndarray]:
    unit = inception_lib.to_unit_range(images, quantize=True)
    out = inception_lib.extract_features(variables, unit, batch_size, mesh=mesh)
    return {
      "features": out["pool3"],
      "probabilities": _softmax(out["logits_unbiased"]).astype(np.float32),
    }

  protocol = {
    "extractor": "inception",
    "weights": os.path.basename(weights.path),
    "weights_sha256": weights.sha256,
    "resize": INCEPTION_RESIZE,
    "quantize": "8-bit, as saved PNGs",
    "feature_dim": inception_lib.NUM_FEATURES,
    "probabilities": "softmax of the 1008 logits without bias (Salimans et al. 2016)",
  }
  return Extractor("inception", fn, protocol)


def classifier_extractor(
  workdir: str | None, *, batch_size: int = 256, mesh: Mesh | None = None
) -> Extractor:
  """The MNIST classifier of ``workdir``: 128-d penultimate features per channel.

  Images with C channels are classified channel by channel: features (N, 128 C), probabilities
  the product of the channels' softmaxes (N, 10^C, the joint over digit tuples), digits (N, C).
  Batches are sharded over ``mesh`` (default: all devices), the parameters replicated on it once
  (:func:`ganjax.classifier.predict`).

  Raises:
    FileNotFoundError: no classifier workdir; the message names ``config.eval_classifier_workdir``.
  """
  if not workdir or not os.path.exists(os.path.join(workdir, classifier_lib.EVAL_FILE)):
    where = f"{workdir!r} holds no trained classifier" if workdir else "none was given"
    raise MissingPathError(
      f"The 'classifier' extractor needs a classifier workdir and {where}. Train one with "
      "configs/classifier.py (python -m ganjax.main --mode=classifier ...) and set "
      f"config.{CLASSIFIER_CONFIG_FIELD} to its workdir."
    )
  _, params = classifier_lib.load_classifier(workdir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = jax.device_put(params, parallel.replicated(mesh))
  with open(os.path.join(workdir, classifier_lib.EVAL_FILE)) as f:
    recorded = json.load(f)

  def fn(images: np.ndarray) -> dict[str, np.ndarray]:
    images = np.asarray(images, np.float32)
    num, height, width, channels = images.shape
    gray = np.moveaxis(images, -1, 1).reshape(num * channels, height, width, 1)
    logits, features = classifier_lib.predict(params, gray, batch_size=batch_size, mesh=mesh)
    probabilities = _softmax(logits).reshape(num, channels, -1)
    joint = probabilities[:, 0]
    for c in range(1, channels):
      joint = (joint[:, :, None] * probabilities[:, c, None, :]).reshape(num, -1)
    return {
      "features": features.reshape(num, channels * features.shape[-1]),
      "probabilities": joint.astype(np.float32),
      "digits": logits.argmax(axis=-1).astype(np.int32).reshape(num, channels),
    }

  protocol = {
    "extractor": "classifier",
    "weights": os.path.abspath(workdir),
    "weights_sha256": recorded["params_sha256"],
    "resize": "none (28x28 inputs)",
    "feature_dim": classifier_lib.FEATURE_DIM,
    "classifier_test_accuracy": recorded.get("test_accuracy"),
    "channels": "each channel classified on its own; features side by side, probabilities "
    "the joint over the channels' digits",
  }
  return Extractor("classifier", fn, protocol)


def get_extractor(
  config: ml_collections.ConfigDict, name: str, *, mesh: Mesh | None = None
) -> Extractor:
  """The extractor ``name`` ("inception" or "classifier") set up from the config's fields.

  Its batches are sharded over ``mesh`` (default: :func:`eval_mesh`).
  """
  if name not in EXTRACTORS:
    raise ConfigError(f"Unknown feature extractor {name!r}; valid: {', '.join(EXTRACTORS)}.")
  mesh = eval_mesh(config) if mesh is None else mesh
  if name == "inception":
    return inception_extractor(config.get(inception_lib.WEIGHTS_CONFIG_FIELD), mesh=mesh)
  return classifier_extractor(config.get(CLASSIFIER_CONFIG_FIELD), mesh=mesh)


def default_extractor_name(config: ml_collections.ConfigDict) -> str:
  """``config.eval_extractor``, else inception when its weights are set, else the classifier."""
  name = config.get("eval_extractor")
  if name:
    return name
  if config.get(inception_lib.WEIGHTS_CONFIG_FIELD):
    return "inception"
  if config.get(CLASSIFIER_CONFIG_FIELD):
    return "classifier"
  raise ConfigError(
    "No feature extractor for the evaluation: set config.eval_inception_weights (FID "
    "Inception weights) or config.eval_classifier_workdir (an MNIST classifier workdir)."
  )


def default_metrics(
  extractor_name: str, data_name: str | None, conditional: bool = False
) -> list[str]:
  """The metrics computed when none are named."""
  names = ["fid" if extractor_name == "inception" else "classifier_fid", "kid", "is"]
  names += ["precision_recall", "density_coverage"]
  if extractor_name == "classifier" and data_name == "stacked_mnist":
    names.append("stacked_mnist_modes")
  if conditional:
    names.append("intra_class_fid")
  return names


def check_metrics(
  metrics: Iterable[str], extractor_name: str, *, data_name: str | None, num_classes: int | None
) -> list[str]:
  """Validates metric names against the extractor, the data and the generator; returns a list."""
  if isinstance(metrics, str):
    metrics = [m for m in metrics.split(",") if m]
  metrics = list(dict.fromkeys(metrics))
  if not metrics:
    raise ConfigError(f"No metric selected; valid: {', '.join(METRICS)}.")
  for name in metrics:
    if name not in METRICS:
      raise ConfigError(f"Unknown metric {name!r}; valid: {', '.join(METRICS)}.")
    allowed = METRICS[name]
    if allowed is not None and extractor_name not in allowed:
      hint = {
        "fid": " (with the classifier, use 'classifier_fid')",
        "classifier_fid": " (with Inception features, use 'fid')",
      }.get(name, "")
      raise ConfigError(
        f"Metric {name!r} needs the {' or '.join(allowed)} extractor, not {extractor_name!r}{hint}."
      )
  if "stacked_mnist_modes" in metrics and data_name != "stacked_mnist":
    raise ConfigError(
      f"Metric 'stacked_mnist_modes' needs data.name='stacked_mnist', got {data_name!r}."
    )
  if "intra_class_fid" in metrics and not num_classes:
    raise ConfigError(
      "Metric 'intra_class_fid' needs a class-conditional generator (model.conditional=True) "
      "on labelled data."
    )
  return metrics


# ----------------------------------------------------------------------------------------------
# Reference statistics.


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


def _real_batches(
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
  source, num_real, batches = _real_batches(config, split, num_real, chunk)
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


# ----------------------------------------------------------------------------------------------
# Evaluation.


# The fixed latents of an evaluation: the same draws as the training loop's evaluations.
evaluation_latents = gan_lib.evaluation_latents


def generate_outputs(
  generate_fn: Callable[..., Any],
  params: Any,
  batch_stats: Any,
  latents: Any,
  labels: Any,
  extractor: Extractor,
  *,
  batch_size: int,
  mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
  """Extractor outputs of the samples of ``latents`` (and ``labels``), in fixed-size batches.

  The generator runs sharded over ``mesh`` (default: all devices): the latents (and labels) of
  each batch are split on their leading axis, ``params`` and ``batch_stats`` replicated (BatchNorm
  uses its running averages, so every sample is computed on its own, as on one device).
  ``batch_size`` is rounded up to a multiple of the number of devices and the last batch is
  padded (and the padding dropped), so one compilation serves every batch.
  """
  num = len(latents)
  latents = np.asarray(latents)
  labels = None if labels is None else np.asarray(labels, np.int32)
  mesh = parallel.make_mesh() if mesh is None else mesh
  devices = mesh.devices.size
  batch_size = -(-batch_size // devices) * devices
  params, batch_stats = jax.device_put((params, batch_stats), parallel.replicated(mesh))
  sharding = parallel.batch_sharded(mesh)
  parts: dict[str, list[np.ndarray]] = {}
  for start in range(0, num, batch_size):
    z = latents[start : start + batch_size]
    size = len(z)
    y = None if labels is None else labels[start : start + batch_size]
    if size < batch_size:
      z = np.concatenate([z, np.zeros((batch_size - size, *z.shape[1:]), z.dtype)])
      if y is not None:
        y = np.concatenate([y, np.zeros(batch_size - size, np.int32)])
    z, y = jax.device_put((z, y), sharding)
    images = np.asarray(generate_fn(params, batch_stats, z, y))[:size]
    for k, v in extractor.fn(np.clip(images, -1.0, 1.0)).items():
      parts.setdefault(k, []).append(np.asarray(v))
  return {k: np.concatenate(v) for k, v in parts.items()}


def evaluate_generator(
  config: ml_collections.ConfigDict,
  generate_fn: Callable[..., Any],
  params: Any,
  batch_stats: Any,
  *,
  num_samples: int,
  metrics: Iterable[str] | str | None,
  extractor: Extractor | str,
  num_classes: int | None = None,
  step: int | None = None,
  ema: bool | None = None,
  seed: int | None = None,
  batch_size: int | None = None,
  num_real: int | None = None,
  reference_split: str | None = None,
  reference_directory: str | None = None,
  workdir: str | None = None,
  mesh: Mesh | None = None,
) -> dict[str, Any]:
  """Measures a generator: the named metrics of ``num_samples`` samples against the real data.

  Args:
    config: The run's config (data, latent size, seed, ``eval_*`` fields).
    generate_fn: ``generate(params, batch_stats, z, labels) -> images in [-1, 1]``
      (:func:`ganjax.systems.gan.make_generate_fn`).
    params, batch_stats: The generator's variables (``train.sample_params(config, state)`` and
      ``state.generator.batch_stats``).
    num_samples: Generated samples.
    metrics: Names from :data:`METRICS` (a list or a comma-separated string); None for
      :func:`default_metrics`.
    extractor: An :class:`Extractor` (build it once with :func:`get_extractor` when evaluating
      repeatedly) or its name.
    num_classes: The classes of a conditional generator (``networks.num_classes``); samples are
      conditioned on ``arange(num_samples) % num_classes``. None: unconditional.
    step: The training step, recorded in the protocol.
    ema: Whether ``params`` are the EMA params (default: ``config.ema.decay > 0``); recorded.
    seed: The latent seed (default ``config.seed``).
    batch_size: Samples per generator call (default ``config.eval_batch_size`` or 250).
    num_real: Real samples of the reference (see :func:`reference_statistics`).
    reference_split: The real data's split (default ``config.data.split``).
    reference_directory: Where reference files are cached (default :func:`reference_dir`).
    workdir: The run's workdir, for the default reference directory.
    mesh: The mesh the generator (and an extractor given by name) shards its batches over
      (default: :func:`eval_mesh`); the values do not depend on it beyond float round-off.

  Returns:
    ``{"values": {name: float}, "protocol": {...}, "details": {...}}``.
  """
  mesh = eval_mesh(config) if mesh is None else mesh
  if isinstance(extractor, str):
    extractor = get_extractor(config, extractor, mesh=mesh)
  data_name = config.data.get("name")
  if metrics is None:
    metrics = default_metrics(extractor.name, data_name, bool(num_classes))
  metrics = check_metrics(metrics, extractor.name, data_name=data_name, num_classes=num_classes)
  if num_samples < 2:
    raise ConfigError(f"num_samples must be >= 2, got {num_samples}.")
  seed = config.seed if seed is None else seed
  ema = config.ema.decay > 0 if ema is None else ema
  batch_size = batch_size or config.get("eval_batch_size") or 250
  directory = reference_directory or reference_dir(config, workdir)
  t_start = time.time()
  reference = reference_statistics(
    config,
    extractor,
    directory,
    split=reference_split,
    num_real=num_real,
    per_class="intra_class_fid" in metrics,
  )
  latents = evaluation_latents(seed, num_samples, config.model.latent_dim)
  labels = None
  if num_classes:
    labels = np.arange(num_samples, dtype=np.int32) % num_classes
  fake = generate_outputs(
    generate_fn,
    params,
    batch_stats,
    latents,
    labels,
    extractor,
    batch_size=batch_size,
    mesh=mesh,
  )
  values, details = _compute(metrics, reference, fake, labels)
  protocol = {
    **extractor.protocol,
    "metrics": metrics,
    "num_real": reference["key"]["num_real"],
    "num_real_features": int(len(reference["features"])),
    "num_generated": int(num_samples),
    "reference": {
      "dataset": reference["key"]["dataset"],
      "split": reference["key"]["split"],
      "resolution": reference["key"]["resolution"],
      "data_seed": REFERENCE_SEED,
      "file": os.path.basename(reference["path"]),
    },
    "generator": "ema" if ema else "raw",
    "conditional_labels": "arange(num_generated) % num_classes" if num_classes else None,
    "seed": int(seed),
    "latents": "normal(fold_in(key(seed), 0xE7A1), (num_generated, latent_dim))",
    "step": None if step is None else int(step),
    "generation_batch_size": int(batch_size),
    "num_devices": int(mesh.devices.size),
    "wall_time_s": time.time() - t_start,
  }
  return {"values": values, "protocol": protocol, "details": details}


def _compute(
  metrics: list[str],
  reference: Mapping[str, Any],
  fake: Mapping[str, np.ndarray],
  labels: np.ndarray | None,
) -> tuple[dict[str, float], dict[str, Any]]:
  values: dict[str, float] = {}
  details: dict[str, Any] = {}
  real_features, features = reference["features"], fake["features"]
  for name in metrics:
    if name in ("fid", "classifier_fid"):
      stats = metrics_lib.feature_statistics(features)
      values[name] = metrics_lib.frechet_distance_from_statistics(
        reference["mean"], reference["cov"], stats.mean, stats.covariance
      )
    elif name == "kid":
      subset = min(KID_SUBSET_SIZE, len(real_features), len(features))
      kid = metrics_lib.kernel_inception_distance(
        real_features, features, num_subsets=KID_SUBSETS, subset_size=subset
      )
      values["kid"], values["kid_std"] = kid.mean, kid.std
      details["kid"] = {"num_subsets": KID_SUBSETS, "subset_size": subset}
    elif name == "is":
      score = metrics_lib.inception_score(fake["probabilities"])
      values["is"], values["is_std"] = score.mean, score.std
    elif name == "precision_recall":
      result = metrics_lib.precision_recall(real_features, features, k=PRECISION_RECALL_K)
      values["precision"], values["recall"] = result.precision, result.recall
      details["precision_recall"] = {"k": PRECISION_RECALL_K}
    elif name == "density_coverage":
      result = metrics_lib.density_coverage(real_features, features, k=DENSITY_COVERAGE_K)
      values["density"], values["coverage"] = result.density, result.coverage
      details["density_coverage"] = {"k": DENSITY_COVERAGE_K}
    elif name == "stacked_mnist_modes":
      result = metrics_lib.stacked_mnist_modes(fake["digits"])
      values["stacked_mnist_modes"] = int(result["modes"])
      values["stacked_mnist_reverse_kl"] = float(result["reverse_kl"])
    elif name == "intra_class_fid":
      per_class = {}
      classes = [int(c) for c in reference["classes"]]
      for i, c in enumerate(classes):
        stats = metrics_lib.feature_statistics(features[labels == c])
        per_class[c] = metrics_lib.frechet_distance_from_statistics(
          reference["class_means"][i], reference["class_covs"][i], stats.mean, stats.covariance
        )
      values["intra_class_fid"] = float(np.mean(list(per_class.values())))
      details["intra_class_fid_per_class"] = {str(c): v for c, v in per_class.items()}
  return {k: float(v) for k, v in values.items()}, details


# ----------------------------------------------------------------------------------------------
# A training run's workdir.


def evaluate_workdir(
  workdir: str,
  step: int | None = None,
  metrics: Iterable[str] | str | None = None,
  num_samples: int | None = None,
  *,
  extractor: Extractor | str | None = None,
  config_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Evaluates the generator of a training run's checkpoint; writes ``eval/step_NNNNNN.json``.

  Restores the latest checkpoint (or ``step``) the way
  :func:`ganjax.systems.gan.sample_from_workdir` does and measures the EMA generator when the run
  kept one.

  Args:
    workdir: The training run's workdir.
    step: The checkpoint step; None for the latest; ``"best"`` for the run's best checkpoint
      (``config.eval_best_metric``, in ``WORKDIR/checkpoints_best``).
    metrics: Metric names (None: :func:`default_metrics`, or ``config.eval_metrics``).
    num_samples: Generated samples (default ``config.eval_num_samples``).
    extractor: An :class:`Extractor` or a name (default :func:`default_extractor_name`).
    config_overrides: Top-level ``eval_*`` fields to set on the run's recorded config (e.g. the
      weights path when the run did not record one).

  Returns:
    What was written: ``{"values", "protocol", "details", "workdir", "path"}``.
  """
  config, info = workdir_lib.read_run(workdir)
  for field, value in (config_overrides or {}).items():
    config[field] = value
  data_info = info["data"]
  networks = gan_lib.build_networks(
    config, tuple(data_info["element_shape"]), data_info["num_classes"]
  )
  state, step = checkpoint_lib.restore_from_workdir(
    workdir, step, gan_lib.abstract_state(config, networks)
  )
  if extractor is None:
    extractor = default_extractor_name(config)
  if metrics is None:
    metrics = config.get("eval_metrics") or None
  result = evaluate_generator(
    config,
    gan_lib.make_generate_fn(networks),
    gan_lib.sample_params(config, state),
    state.generator.batch_stats,
    num_samples=num_samples or config.get("eval_num_samples", 2500),
    metrics=metrics,
    extractor=extractor,
    num_classes=networks.num_classes,
    step=step,
    workdir=workdir,
  )
  return save_evaluation(workdir, step, result)


def save_evaluation(workdir: str, step: int, result: dict[str, Any]) -> dict[str, Any]:
  """Writes ``WORKDIR/eval/step_NNNNNN.json`` (the result and the workdir) and logs the values.

  Returns what was written, with its ``"path"``.
  """
  path = os.path.join(workdir, "eval", f"step_{step:06d}.json")
  record = {**result, "workdir": os.path.abspath(workdir)}
  loop.write_json(path, record)
  logging.info(
    "Evaluation of %s step %d: %s (written to %s).",
    workdir,
    step,
    ", ".join(f"{k} {v:.4g}" for k, v in result["values"].items()),
    path,
  )
  return {**record, "path": path}


__all__ = [
  "EXTRACTORS",
  "save_evaluation",
  "METRICS",
  "Extractor",
  "check_metrics",
  "classifier_extractor",
  "default_extractor_name",
  "default_metrics",
  "eval_mesh",
  "evaluate_generator",
  "evaluate_workdir",
  "evaluation_latents",
  "generate_outputs",
  "get_extractor",
  "inception_extractor",
  "reference_dir",
  "reference_key",
  "reference_statistics",
]
