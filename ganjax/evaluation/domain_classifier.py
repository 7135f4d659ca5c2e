"""The domain classifier: a small CNN digit classifier for MNIST-like data, and its inference.

It gives the "classifier FID" features, a classifier-based Inception Score and the channel-wise
digits of Stacked MNIST samples (:mod:`ganjax.evaluation.extractors`); its training is the
classifier system (:mod:`ganjax.systems.classifier`, ``configs/classifier.py``).

The network (:class:`Classifier`) follows the TensorFlow "Deep MNIST" tutorial layout at a smaller
size: 3x3 "SAME" convs with 32 and 64 channels, each followed by ReLU and 2x2 max pooling
(28 -> 14 -> 7), flatten, Dense 128 + ReLU (the features), Dropout 0.5, Dense 10 (the logits);
421,642 parameters. Pooling after each conv costs 40% of the compute of the Keras ``mnist_cnn``
layout (two VALID convs before one pool, 1.2M parameters) at about its accuracy: 99.16% on the
MNIST test set after 4 epochs of Adam (batch 64, cosine decay; ``configs/classifier.py``), 98.88%
after 3 epochs at batch 128. Inputs are 28x28x1 images in [-1, 1], as every ganjax source and
generator produces them.

Uses:

* a domain feature extractor: :func:`classifier_features` gives the 128-d penultimate activations
  (after the ReLU) for a Fréchet distance on MNIST-like data (:mod:`ganjax.metrics.frechet`);
  :func:`predict` also gives the logits (for a classifier-based Inception Score);
* Stacked MNIST mode counts (Metz et al. 2017): :func:`classify_channels` classifies each of the 3
  channels on its own and returns the (N, 3) digits that
  :func:`ganjax.metrics.stacked_mnist.stacked_mnist_modes` counts.

A trained classifier's workdir holds :data:`PARAMS_FILE` (flax msgpack) and :data:`EVAL_FILE`
(test accuracy, dataset, the parameters' sha256); :func:`load_classifier` reads them back.
Inference (:func:`predict` and the functions built on it) shards each batch over all devices, or
over a given mesh (:func:`ganjax.parallel.batched_apply`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ganjax import checkpoint as checkpoint_lib
from ganjax import parallel
from ganjax.errors import MissingPathError
from ganjax.models import layers

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
FEATURE_DIM = 128
PARAMS_FILE = "classifier_params.msgpack"
EVAL_FILE = "classifier_eval.json"

ApplyFn = Callable[[Any, Any], tuple[jax.Array, jax.Array]]


class Classifier(nn.Module):
  """conv32-pool-conv64-pool-dense128-dropout-dense10 on 28x28x1 images in [-1, 1].

  Returns ``(logits, features)``: (N, num_classes) and the (N, 128) penultimate activations.
  """

  num_classes: int = NUM_CLASSES
  dropout: float = 0.5

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
    check_images(images)
    x = images
    for features in (32, 64):
      x = nn.relu(layers.conv(features, 3)(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(layers.dense(FEATURE_DIM)(x))
    x = layers.Dropout(self.dropout)(features, deterministic=not train)
    logits = layers.dense(self.num_classes)(x)
    return logits, features


def check_images(images: Any) -> None:
  """Raises ``ValueError`` unless ``images`` is a (N, 28, 28, 1) batch."""
  shape = tuple(np.shape(images))
  if len(shape) != 4 or shape[1:] != IMAGE_SHAPE:
    raise ValueError(
      f"The classifier takes (N, 28, 28, 1) images in [-1, 1], got shape {shape}; use "
      "classify_channels for 3-channel Stacked MNIST images."
    )


def init_params(rng: jax.Array, num_classes: int = NUM_CLASSES) -> Any:
  """Freshly initialised parameters of :class:`Classifier`."""
  return Classifier(num_classes).init(rng, jnp.zeros((1, *IMAGE_SHAPE)))["params"]


def parameter_count(params: Any) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


@functools.cache
def _apply_fn(num_classes: int) -> ApplyFn:
  model = Classifier(num_classes)
  return jax.jit(lambda params, images: model.apply({"params": params}, images))


def apply(params: Any, images: Any) -> tuple[jax.Array, jax.Array]:
  """``(logits, features)`` of a batch in evaluation mode (jit-compiled per input shape)."""
  check_images(images)
  return _apply_fn(_num_classes(params))(params, jnp.asarray(images, jnp.float32))


def predict(
  params: Any, images: Any, *, batch_size: int = 256, mesh: Mesh | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """``(logits, features)`` as float32 numpy arrays for any number of images, in batches.

  Each batch is sharded on its leading axis over ``mesh``'s ``data`` axis (default: all
  devices), with the parameters replicated. ``batch_size`` is rounded up to a multiple of the
  number of devices and the last batch is padded to it, so one compilation serves every call with
  the same batch size and mesh. The result equals that of one device (to float32 round-off).
  """
  check_images(images)
  return parallel.batched_apply(
    _apply_fn(_num_classes(params)),
    (params,),
    (np.asarray(images, np.float32),),
    batch_size=batch_size,
    mesh=mesh,
  )


def predict_channels(
  params: Any, images: Any, *, batch_size: int = 256, mesh: Mesh | None = None
) -> tuple[np.ndarray, np.ndarray]:
  """``(logits, features)`` of every channel of (N, 28, 28, C) images, each classified on its
  own as a grayscale image: (N, C, num_classes) and (N, C, 128), as :func:`predict`."""
  images = np.asarray(images, np.float32)
  if images.ndim != 4 or images.shape[1:3] != IMAGE_SHAPE[:2]:
    raise ValueError(
      f"The classifier takes (N, 28, 28, C) images in [-1, 1] channel by channel, got shape "
      f"{images.shape}."
    )
  num, height, width, channels = images.shape
  gray = np.moveaxis(images, -1, 1).reshape(num * channels, height, width, 1)
  logits, features = predict(params, gray, batch_size=batch_size, mesh=mesh)
  return logits.reshape(num, channels, -1), features.reshape(num, channels, -1)


def classify(
  params: Any, images: Any, *, batch_size: int = 256, mesh: Mesh | None = None
) -> np.ndarray:
  """Predicted classes (N,) int32 of (N, 28, 28, 1) images in [-1, 1], as :func:`predict`."""
  logits = predict(params, images, batch_size=batch_size, mesh=mesh)[0]
  return logits.argmax(axis=-1).astype(np.int32)


def classifier_features(
  params: Any, images: Any, *, batch_size: int = 256, mesh: Mesh | None = None
) -> np.ndarray:
  """The (N, 128) penultimate activations, for a Fréchet distance on MNIST-like data.

  Batched and sharded over ``mesh`` (default: all devices) as :func:`predict`.
  """
  return predict(params, images, batch_size=batch_size, mesh=mesh)[1]


def classify_channels(
  params: Any, images: Any, *, batch_size: int = 256, mesh: Mesh | None = None
) -> np.ndarray:
  """The digit in each channel of (N, 28, 28, 3) Stacked MNIST images: (N, 3) int32.

  Every channel is classified on its own as a grayscale image; row ``i`` is
  ``(d_0, d_1, d_2)``, the input of :func:`ganjax.metrics.stacked_mnist.stacked_mnist_modes`.
  """
  logits = predict_channels(params, images, batch_size=batch_size, mesh=mesh)[0]
  return logits.argmax(axis=-1).astype(np.int32)


def _num_classes(params: Any) -> int:
  kernels = [leaf for leaf in jax.tree.leaves(params) if np.ndim(leaf) == 2]
  return int(np.shape(kernels[-1])[-1]) if kernels else NUM_CLASSES


def load_classifier(workdir: str) -> tuple[ApplyFn, Any]:
  """``(apply, params)`` of the classifier that training saved in ``workdir``.

  ``apply(params, images)`` returns ``(logits, features)`` in evaluation mode (jit-compiled), like
  :func:`apply`; ``params`` also works with :func:`predict`, :func:`classify`,
  :func:`classifier_features` and :func:`classify_channels`.

  Raises:
    FileNotFoundError: ``workdir`` holds no trained classifier.
    ValueError: the parameters' sha256 differs from the one recorded in :data:`EVAL_FILE`, or
      their shapes do not fit :class:`Classifier`.
  """
  eval_path = os.path.join(workdir, EVAL_FILE)
  if not os.path.exists(eval_path):
    raise MissingPathError(
      f"{eval_path} not found: is {workdir!r} the workdir of a trained classifier "
      "(configs/classifier.py)?"
    )
  with open(eval_path) as f:
    evaluation = json.load(f)
  params_path = os.path.join(workdir, evaluation.get("params_file", PARAMS_FILE))
  with open(params_path, "rb") as f:
    params_bytes = f.read()
  digest = hashlib.sha256(params_bytes).hexdigest()
  if digest != evaluation["params_sha256"]:
    raise checkpoint_lib.CheckpointMismatchError(
      f"{params_path} has sha256 {digest}, but {eval_path} records "
      f"{evaluation['params_sha256']}: the parameters changed after evaluation."
    )
  num_classes = evaluation.get("model", {}).get("num_classes", NUM_CLASSES)
  target = jax.eval_shape(lambda: init_params(jax.random.key(0), num_classes))
  restored = flax.serialization.msgpack_restore(params_bytes)
  want = jax.tree.map(lambda x: tuple(x.shape), target)
  try:
    have = jax.tree.map(lambda x: tuple(np.shape(x)), restored)
    mismatch = have != want
  except (TypeError, ValueError):
    mismatch = True
  if mismatch:
    raise checkpoint_lib.CheckpointMismatchError(
      f"{params_path} does not hold Classifier parameters (shapes {want})."
    )
  params = jax.tree.map(jnp.asarray, restored)
  return _apply_fn(num_classes), params
