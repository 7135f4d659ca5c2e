"""Evaluating a generator: samples of fixed latents -> extractor outputs -> the metrics table,
with the protocol recorded; the one evaluator factory of the training loops and the one format of
``WORKDIR/eval/step_NNNNNN.json``.

Generation and feature extraction run in fixed-size jitted batches sharded on their leading axis
over a mesh with a ``data`` axis (:func:`ganjax.evaluation.extractors.eval_mesh`: the devices of
``config.parallel.num_devices``, default all), the weights replicated; batch sizes are rounded up
to a multiple of the device count (:func:`ganjax.parallel.batched_outputs`). The values equal one
device's up to float round-off.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import Mesh

from ganjax import loop, parallel, sampling
from ganjax.errors import ConfigError
from ganjax.evaluation import extractors as extractors_lib
from ganjax.evaluation import metric_table, reference
from ganjax.evaluation.extractors import Extractor

DEFAULT_NUM_SAMPLES = 2500
DEFAULT_BATCH_SIZE = 250


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
  labels = None if labels is None else np.asarray(labels, np.int32)
  parts: dict[str, list[np.ndarray]] = {}
  for images in parallel.batched_outputs(
    generate_fn, (params, batch_stats), (latents, labels), batch_size=batch_size, mesh=mesh
  ):
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
  latent_dim: int | None = None,
  step: int | None = None,
  ema: bool | None = None,
  seed: int | None = None,
  batch_size: int | None = None,
  num_real: int | None = None,
  reference_split: str | None = None,
  reference_directory: str | None = None,
  workdir: str | None = None,
  mesh: Mesh | None = None,
  protocol: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Measures a generator: the named metrics of ``num_samples`` samples against the real data.

  Args:
    config: The run's config (data, latent size, seed, ``eval_*`` fields).
    generate_fn: ``generate(params, batch_stats, z, labels) -> images in [-1, 1]``
      (:func:`ganjax.systems.gan.make_generate_fn`).
    params, batch_stats: The generator's variables (e.g. the EMA params and
      ``state.generator.batch_stats``).
    num_samples: Generated samples.
    metrics: Names from :data:`ganjax.evaluation.metric_table.METRICS` (a list or a
      comma-separated string); None for :func:`ganjax.evaluation.metric_table.default_metrics`.
    extractor: An :class:`Extractor` (build it once with
      :func:`ganjax.evaluation.extractors.get_extractor` when evaluating repeatedly) or its name.
    num_classes: The classes of a conditional generator (``networks.num_classes``); samples are
      conditioned on ``arange(num_samples) % num_classes``. None: unconditional.
    latent_dim: The latents' width (default ``config.model.latent_dim``).
    step: The training step, recorded in the protocol.
    ema: Whether ``params`` are the EMA params (default: ``config.ema.decay > 0``); recorded.
    seed: The latent seed (default ``config.seed``).
    batch_size: Samples per generator call (default ``config.eval_batch_size`` or 250).
    num_real: Real samples of the reference (see
      :func:`ganjax.evaluation.reference.reference_statistics`).
    reference_split: The real data's split (default ``config.data.split``).
    reference_directory: Where reference files are cached (default
      :func:`ganjax.evaluation.reference.reference_dir`).
    workdir: The run's workdir, for the default reference directory.
    mesh: The mesh the generator (and an extractor given by name) shards its batches over
      (default: :func:`ganjax.evaluation.extractors.eval_mesh`); the values do not depend on it
      beyond float round-off.
    protocol: Entries added to (or replacing) the protocol, e.g. the system.

  Returns:
    ``{"values": {name: float}, "protocol": {...}, "details": {...}}``.
  """
  mesh = extractors_lib.eval_mesh(config) if mesh is None else mesh
  if isinstance(extractor, str):
    extractor = extractors_lib.get_extractor(config, extractor, mesh=mesh)
  data_name = config.data.get("name")
  if metrics is None:
    metrics = metric_table.default_metrics(
      extractor.name, data_name, bool(num_classes), extractor.outputs
    )
  metrics = metric_table.check_metrics(
    metrics,
    extractor.name,
    data_name=data_name,
    num_classes=num_classes,
    outputs=extractor.outputs,
  )
  if num_samples < 2:
    raise ConfigError(f"num_samples must be >= 2, got {num_samples}.")
  seed = config.seed if seed is None else seed
  ema = config.ema.decay > 0 if ema is None else ema
  batch_size = batch_size or config.get("eval_batch_size") or DEFAULT_BATCH_SIZE
  directory = reference_directory or reference.reference_dir(config, workdir)
  t_start = time.time()
  real = reference.reference_statistics(
    config,
    extractor,
    directory,
    split=reference_split,
    num_real=num_real,
    per_class=metric_table.needs(metrics, "class_moments"),
  )
  latents = sampling.evaluation_latents(
    seed, num_samples, config.model.latent_dim if latent_dim is None else latent_dim
  )
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
  values, details = metric_table.compute_metrics(
    metrics, metric_table.MetricInputs(real, fake, labels)
  )
  recorded = {
    **extractor.protocol,
    "metrics": metrics,
    "num_real": real["key"]["num_real"],
    "num_real_features": int(len(real["features"])),
    "num_generated": int(num_samples),
    "reference": {
      "dataset": real["key"]["dataset"],
      "split": real["key"]["split"],
      "resolution": real["key"]["resolution"],
      "data_seed": reference.REFERENCE_SEED,
      "file": os.path.basename(real["path"]),
    },
    "generator": "ema" if ema else "raw",
    "conditional_labels": "arange(num_generated) % num_classes" if num_classes else None,
    "seed": int(seed),
    "latents": "normal(fold_in(key(seed), 0xE7A1), (num_generated, latent_dim))",
    "step": None if step is None else int(step),
    "generation_batch_size": int(batch_size),
    "num_devices": int(mesh.devices.size),
    "wall_time_s": time.time() - t_start,
    **(protocol or {}),
  }
  return {"values": values, "protocol": recorded, "details": details}


def save_evaluation(
  workdir: str, step: int, result: dict[str, Any], *, log: bool = True
) -> dict[str, Any]:
  """Writes ``WORKDIR/eval/step_NNNNNN.json``: the result (values, protocol, details) and the
  workdir; with ``log``, logs the values. The one format of every system's evaluations.

  Returns what was written, with its ``"path"``.
  """
  path = os.path.join(workdir, "eval", f"step_{step:06d}.json")
  record = {**result, "workdir": os.path.abspath(workdir)}
  loop.write_json(path, record)
  if log:
    logging.info(
      "Evaluation of %s step %d: %s (written to %s).",
      workdir,
      step,
      ", ".join(f"{k} {v:.4g}" for k, v in result["values"].items()),
      path,
    )
  return {**record, "path": path}


def evaluate_checkpoint(
  config: ml_collections.ConfigDict,
  generate_fn: Callable[..., Any],
  params: Any,
  batch_stats: Any,
  *,
  workdir: str,
  step: int,
  metrics: Iterable[str] | str | None = None,
  num_samples: int | None = None,
  extractor: Extractor | str | None = None,
  config_overrides: Mapping[str, Any] | None = None,
  **generator: Any,
) -> dict[str, Any]:
  """``--mode=evaluate`` of a restored checkpoint: :func:`evaluate_generator` with the config's
  defaults, written by :func:`save_evaluation`.

  Args:
    config, generate_fn, params, batch_stats: The run's config and generator.
    workdir, step: The run's workdir and the checkpoint's step.
    metrics: Metric names (None: ``config.eval_metrics`` or the extractor's defaults).
    num_samples: Generated samples (default ``config.eval_num_samples``).
    extractor: An :class:`Extractor` or its name (default :func:`default_extractor_name`).
    config_overrides: Top-level ``eval_*`` fields set on ``config`` first (e.g. the weights path
      when the run did not record one).
    **generator: The arguments of :func:`evaluate_generator` that describe the generator
      (``num_classes``, ``latent_dim``, ``ema``, ``protocol``).

  Returns:
    What was written: ``{"values", "protocol", "details", "workdir", "path"}``.
  """
  for field, value in (config_overrides or {}).items():
    config[field] = value
  if extractor is None:
    extractor = extractors_lib.default_extractor_name(config)
  result = evaluate_generator(
    config,
    generate_fn,
    params,
    batch_stats,
    num_samples=num_samples or config.get("eval_num_samples", DEFAULT_NUM_SAMPLES),
    metrics=metrics if metrics is not None else (config.get("eval_metrics") or None),
    extractor=extractor,
    step=step,
    workdir=workdir,
    **generator,
  )
  return save_evaluation(workdir, step, result)


def make_evaluator(
  config: ml_collections.ConfigDict,
  generate_fn: Callable[..., Any],
  variables: Callable[[Any], tuple[Any, Any]],
  *,
  workdir: str | None = None,
  **generator: Any,
) -> Callable[[Any, int], dict[str, float]] | None:
  """The evaluation of a training run: ``evaluate(state, step) -> values``, or None when the
  config sets up no feature extractor (``eval_extractor``, ``eval_inception_weights``,
  ``eval_classifier_workdir``).

  Every call measures ``generate_fn`` with ``variables(state) -> (params, batch_stats)`` on the
  config's ``eval_metrics`` and ``eval_num_samples`` (:func:`evaluate_generator`; the extractor is
  built once) and writes ``WORKDIR/eval/step_NNNNNN.json`` (:func:`save_evaluation`, on the chief
  process). ``generator``: as in :func:`evaluate_checkpoint`.
  """
  if not extractors_lib.extractor_configured(config):
    return None
  extractor = extractors_lib.get_extractor(config, extractors_lib.default_extractor_name(config))

  def evaluate(state: Any, step: int) -> dict[str, float]:
    params, batch_stats = variables(state)
    result = evaluate_generator(
      config,
      generate_fn,
      params,
      batch_stats,
      num_samples=config.get("eval_num_samples", DEFAULT_NUM_SAMPLES),
      metrics=config.get("eval_metrics") or None,
      extractor=extractor,
      step=step,
      workdir=workdir,
      **generator,
    )
    if workdir is not None and jax.process_index() == 0:
      save_evaluation(workdir, step, result, log=False)  # The loop logs the values.
    return result["values"]

  return evaluate
