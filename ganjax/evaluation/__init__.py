"""Measuring a generator with a recorded protocol: feature extractors by name, cached reference
statistics, the metrics table and one evaluator factory.

A number such as "FID 12.3" means little without what it was measured with. Every result of
:func:`evaluate_generator` is ``{"values": {...}, "protocol": {...}, "details": {...}}`` where the
protocol names the feature extractor and the hash of its weights, the resize, the number of real
and generated samples, the reference data (name, split, resolution), whether the EMA or the raw
generator was measured, the latent seed and the step.

* :mod:`~ganjax.evaluation.extractors`: the feature extractors by name (``"inception"``,
  ``"classifier"``), :func:`get_extractor`, :func:`default_extractor_name`;
* :mod:`~ganjax.evaluation.domain_classifier`: the MNIST digit classifier's network and
  inference (trained by :mod:`ganjax.systems.classifier`);
* :mod:`~ganjax.evaluation.reference`: the real data's statistics, computed once and cached;
* :mod:`~ganjax.evaluation.metric_table`: the metrics, name -> what it needs, how it is computed;
* :mod:`~ganjax.evaluation.evaluator`: :func:`evaluate_generator`, the evaluator factory
  :func:`make_evaluator` every system's training uses, :func:`evaluate_checkpoint` for
  ``--mode=evaluate`` and :func:`save_evaluation`, the one format of ``eval/step_NNNNNN.json``.

Nothing here imports a system: a system brings its generator (``generate(params, batch_stats, z,
labels)``) and its variables.
"""

from ganjax.evaluation.evaluator import (
  evaluate_checkpoint,
  evaluate_generator,
  generate_outputs,
  make_evaluator,
  save_evaluation,
)
from ganjax.evaluation.extractors import (
  EXTRACTORS,
  Extractor,
  classifier_extractor,
  default_extractor_name,
  eval_mesh,
  extractor_configured,
  get_extractor,
  inception_extractor,
)
from ganjax.evaluation.metric_table import METRICS, Metric, check_metrics, default_metrics
from ganjax.evaluation.reference import (
  REFERENCE_SEED,
  reference_dir,
  reference_key,
  reference_statistics,
)
from ganjax.sampling import evaluation_latents

__all__ = [
  "EXTRACTORS",
  "METRICS",
  "REFERENCE_SEED",
  "Extractor",
  "Metric",
  "check_metrics",
  "classifier_extractor",
  "default_extractor_name",
  "default_metrics",
  "eval_mesh",
  "evaluate_checkpoint",
  "evaluate_generator",
  "evaluation_latents",
  "extractor_configured",
  "generate_outputs",
  "get_extractor",
  "inception_extractor",
  "make_evaluator",
  "reference_dir",
  "reference_key",
  "reference_statistics",
  "save_evaluation",
]
