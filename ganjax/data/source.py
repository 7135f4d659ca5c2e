"""The ``DataSource`` contract and the shared seeded, resumable, per-host batch-index logic.

Every finite source serves batches through :func:`indexed_batches`, so all of them shuffle, shard
and resume the same way:

* epoch ``e`` visits the examples in the order ``np.random.default_rng([seed, e]).permutation(n)``;
* an epoch has ``n // batch_size`` steps (the incomplete last batch is dropped);
* global step ``s`` reads batch ``s % steps_per_epoch`` of epoch ``s // steps_per_epoch``;
* host ``p`` of ``P`` takes the ``p``-th contiguous slice of that global batch.

The batch at step ``s`` is therefore a function of ``(seed, s, process_index, process_count)``
only, and ``batches(s)`` started fresh yields exactly what ``batches(0)`` yields at position ``s``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ganjax.data import preprocessing
from ganjax.errors import ConfigError, DataError

Batch = dict[str, np.ndarray]
#: Fetches the examples at the given indices (host part of one global batch) as a batch dict.
FetchFn = Callable[[np.ndarray], Batch]


@dataclasses.dataclass(frozen=True)
class DataSource:
  """A dataset as the training loop sees it.

  Attributes:
    name: The data name from the config (``data.name``).
    element_shape: Shape of one example: ``(H, W, C)`` for images, ``(2,)`` for 2-D points.
    num_examples: Size of the split, or None for infinite synthetic data.
    num_classes: Number of label values, or None when batches carry no ``"label"``.
    description: JSON-serialisable provenance (source kind, path, split, preprocessing...).
    batches: ``batches(start_step)`` -> infinite iterator of host batches from global step
      ``start_step`` on: ``{"image": float32 (host_batch, *element_shape), "label": int32}``.
  """

  name: str
  element_shape: tuple[int, ...]
  num_examples: int | None
  num_classes: int | None
  description: dict[str, Any]
  batches: Callable[[int], Iterator[Batch]]


def describe_source(source: DataSource) -> str:
  """``name: N examples of shape S, C classes (kind, path)``: one line on a :class:`DataSource`."""
  size = "unlimited (synthetic)" if source.num_examples is None else f"{source.num_examples:,}"
  classes = f"{source.num_classes} classes" if source.num_classes else "no labels"
  return (
    f"{source.name}: {size} examples of shape {tuple(source.element_shape)}, {classes}"
    f"{describe_location(source.description)}"
  )


def describe_location(description: dict[str, Any]) -> str:
  """`` (kind, path, data_dir)`` of a source's ``description``, those it has; ``""`` if none."""
  found = [str(description[k]) for k in ("source", "path", "data_dir") if description.get(k)]
  return f" ({', '.join(found)})" if found else ""


def host_batch_size(batch_size: int, process_count: int) -> int:
  """The per-host share of a global batch; raises if it does not divide evenly."""
  if batch_size <= 0:
    raise ConfigError(f"batch_size must be positive, got {batch_size}.")
  if process_count <= 0 or batch_size % process_count:
    raise ConfigError(
      f"The global batch_size {batch_size} is not divisible by the process count "
      f"{process_count}; use a multiple of {process_count}."
    )
  return batch_size // process_count


def check_process(process_index: int, process_count: int) -> None:
  """Raises unless ``0 <= process_index < process_count``."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, {process_count}).")


def check_batch_fits(batch_size: int, num_examples: int, name: str) -> None:
  """Raises when the global batch is larger than the (finite) dataset."""
  if batch_size > num_examples:
    raise ConfigError(
      f"batch_size {batch_size} is larger than the {num_examples} examples of {name!r}; use a "
      f"batch_size of at most {num_examples}, or more data."
    )


def check_labels(labels: np.ndarray, num_classes: int | None, name: str) -> None:
  """Raises a ``DataError`` unless every label lies in ``0..num_classes - 1``."""
  if num_classes is None or not len(labels):
    return
  low, high = int(labels.min()), int(labels.max())
  if low < 0 or high >= num_classes:
    raise DataError(
      f"{name!r} has {num_classes} classes (labels 0..{num_classes - 1}), but its labels run "
      f"{low}..{high}; the data holds other classes than its name says."
    )


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order in which epoch ``epoch`` visits the examples."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


def epoch_seed(seed: int, epoch: int) -> int:
  """A 31-bit integer seed for epoch ``epoch`` (for libraries that take a single int)."""
  return int(np.random.default_rng([seed, epoch]).integers(2**31 - 1))


def host_indices(
  step: int,
  *,
  seed: int,
  num_examples: int,
  batch_size: int,
  process_index: int,
  process_count: int,
) -> np.ndarray:
  """Example indices of this host's part of the global batch at ``step``."""
  steps_per_epoch = num_examples // batch_size
  epoch, position = divmod(step, steps_per_epoch)
  host_batch = host_batch_size(batch_size, process_count)
  start = position * batch_size + process_index * host_batch
  return epoch_permutation(seed, epoch, num_examples)[start : start + host_batch]


def indexed_batches(
  fetch: FetchFn,
  *,
  start_step: int,
  seed: int,
  num_examples: int,
  batch_size: int,
  process_index: int,
  process_count: int,
  lookahead: int = 0,
) -> Iterator[Batch]:
  """Infinite iterator of host batches ``fetch(indices)`` from global step ``start_step`` on.

  Args:
    fetch: Returns the batch dict for an array of example indices.
    start_step: First global step to serve.
    seed: Shuffling seed.
    num_examples: Dataset size.
    batch_size: Global batch size (all hosts).
    process_index: This host.
    process_count: Number of hosts.
    lookahead: Batches fetched ahead in a background thread (0: fetch on demand).
  """
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  check_batch_fits(batch_size, num_examples, "the dataset")
  check_process(process_index, process_count)
  steps_per_epoch = num_examples // batch_size
  host_batch = host_batch_size(batch_size, process_count)
  offset = process_index * host_batch

  def indices_from(step: int) -> Iterator[np.ndarray]:
    first_epoch, first_position = divmod(step, steps_per_epoch)
    for epoch in itertools.count(first_epoch):
      order = epoch_permutation(seed, epoch, num_examples)
      start_position = first_position if epoch == first_epoch else 0
      for position in range(start_position, steps_per_epoch):
        start = position * batch_size + offset
        yield order[start : start + host_batch]

  if lookahead <= 0:
    for indices in indices_from(start_step):
      yield fetch(indices)
    return

  executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ganjax-data")
  try:
    indices = indices_from(start_step)
    pending = [executor.submit(fetch, next(indices)) for _ in range(lookahead)]
    while True:
      batch = pending.pop(0).result()
      pending.append(executor.submit(fetch, next(indices)))
      yield batch
  finally:
    executor.shutdown(wait=False, cancel_futures=True)


def array_source(
  name: str,
  images: np.ndarray,
  labels: np.ndarray | None,
  *,
  num_classes: int | None,
  description: dict[str, Any],
  seed: int,
  batch_size: int,
  process_index: int,
  process_count: int,
) -> DataSource:
  """A :class:`DataSource` over uint8 images (N, H, W, C) held in memory.

  Batches are scaled to [-1, 1] with :func:`preprocessing.to_float`. Labels must lie in
  ``0..num_classes - 1`` (a ``DataError`` says which do not).
  """
  images = preprocessing.ensure_nhwc(images)
  if images.dtype != np.uint8:
    raise TypeError(f"array_source expects uint8 images, got {images.dtype}.")
  num_examples = len(images)
  if labels is not None:
    labels = np.asarray(labels, dtype=np.int32)
    if labels.shape != (num_examples,):
      raise DataError(f"{name!r} has {num_examples} images but labels of shape {labels.shape}.")
    check_labels(labels, num_classes, name)
  host_batch_size(batch_size, process_count)
  check_process(process_index, process_count)
  check_batch_fits(batch_size, num_examples, name)

  def fetch(indices: np.ndarray) -> Batch:
    batch = {"image": preprocessing.to_float(images[indices])}
    if labels is not None:
      batch["label"] = labels[indices]
    return batch

  def batches(start_step: int) -> Iterator[Batch]:
    return indexed_batches(
      fetch,
      start_step=start_step,
      seed=seed,
      num_examples=num_examples,
      batch_size=batch_size,
      process_index=process_index,
      process_count=process_count,
    )

  return DataSource(
    name=name,
    element_shape=tuple(int(d) for d in images.shape[1:]),
    num_examples=num_examples,
    num_classes=num_classes,
    description={**description, "num_examples": num_examples, "in_memory": True},
    batches=batches,
  )
