"""Local IDX files (the MNIST file format): MNIST, Fashion-MNIST, KMNIST, EMNIST, ...

Serves ``data.name = "idx"``, and any data name (``mnist``, ``fashion_mnist``, ...) whose
``data.dir`` is a folder holding IDX files, ahead of TFDS. Split ``train`` reads
``train-images-idx3-ubyte`` / ``train-labels-idx1-ubyte``, split ``test`` the ``t10k-`` files; each
plain or ``.gz``. EMNIST-style prefixed names (``emnist-balanced-train-...``) are found from the
data name ``emnist_balanced``.

Because any name is served from IDX files, the files are checked against the name
(:func:`ganjax.data.checks.check_native`): ``cifar10`` with a folder of MNIST files fails, naming
both, instead of training on MNIST. A known name with fewer examples than its split (a subset) is
served with a warning; its number of classes is the table's, not the largest label + 1.
"""

from __future__ import annotations

import gzip
import os

import ml_collections
import numpy as np

from ganjax.data import checks, preprocessing
from ganjax.data.source import DataSource, array_source
from ganjax.errors import ConfigError, DataError, MissingPathError

NAMES = ("idx",)
PRIORITY = 50

_SPLIT_PREFIX = {"train": "train", "test": "t10k"}
_IMAGES_SUFFIX = "images-idx3-ubyte"
_LABELS_SUFFIX = "labels-idx1-ubyte"
_UBYTE = 0x08
# IDX type codes -> numpy big-endian dtypes.
_IDX_DTYPES = {_UBYTE: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str, *, expected_ndim: int | None = None) -> np.ndarray:
  """Reads an IDX file (plain or gzip'd) into a numpy array (native byte order).

  Raises:
    FileNotFoundError: the file does not exist.
    DataError: the header is not a valid IDX header or the size does not match it.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    if isinstance(e, FileNotFoundError):
      raise
    raise DataError(f"Cannot read IDX file {path}: {e}") from e
  if len(data) < 4:
    raise DataError(f"Corrupt IDX file {path}: {len(data)} bytes is shorter than the header.")
  zero, type_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
  magic = int.from_bytes(data[:4], "big")
  if zero != 0 or type_code not in _IDX_DTYPES or ndim == 0:
    raise DataError(f"Corrupt IDX file {path}: bad magic number {magic} (0x{magic:08x}).")
  if expected_ndim is not None and ndim != expected_ndim:
    expected = (_UBYTE << 8) | expected_ndim
    raise DataError(
      f"Corrupt IDX file {path}: magic number {magic} means {ndim} dimensions, expected "
      f"{expected_ndim} (magic {expected})."
    )
  header_size = 4 + 4 * ndim
  if len(data) < header_size:
    raise DataError(f"Corrupt IDX file {path}: truncated header ({len(data)} bytes).")
  shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
  dtype = np.dtype(_IDX_DTYPES[type_code])
  expected_bytes = header_size + int(np.prod(shape)) * dtype.itemsize
  if len(data) != expected_bytes:
    raise DataError(
      f"Corrupt IDX file {path}: the header declares shape {shape} ({expected_bytes} bytes) "
      f"but the file has {len(data)} bytes."
    )
  array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder("="))


def find_idx_files(directory: str, split: str, name: str | None = None) -> tuple[str, str]:
  """Paths of the (images, labels) IDX files of ``split`` in ``directory``.

  Raises:
    ConfigError: unsupported split.
    MissingPathError: a file is missing; the message lists every path looked for.
  """
  if split not in _SPLIT_PREFIX:
    raise ConfigError(
      f"IDX files have the splits {', '.join(_SPLIT_PREFIX)}; got data.split={split!r}."
    )
  prefixes = [_SPLIT_PREFIX[split]]
  if name and name != "idx":
    prefixes.append(f"{name.replace('_', '-')}-{_SPLIT_PREFIX[split]}")
  found = []
  for suffix in (_IMAGES_SUFFIX, _LABELS_SUFFIX):
    candidates = [
      os.path.join(directory, f"{prefix}-{suffix}{ext}")
      for prefix in prefixes
      for ext in ("", ".gz")
    ]
    existing = [path for path in candidates if os.path.isfile(path)]
    if not existing:
      raise MissingPathError(
        f"No IDX {suffix.split('-')[0]} file for split {split!r}; looked for: "
        + ", ".join(candidates)
      )
    found.append(existing[0])
  return found[0], found[1]


def holds_idx_files(directory: str | None) -> bool:
  """Whether ``directory`` is a folder with at least one ``*-images-idx3-ubyte[.gz]`` file."""
  if not directory or not os.path.isdir(directory):
    return False
  return any(
    entry.endswith((_IMAGES_SUFFIX, _IMAGES_SUFFIX + ".gz")) for entry in os.listdir(directory)
  )


def claims(data_config: ml_collections.ConfigDict) -> bool:
  return data_config.get("name") == "idx" or holds_idx_files(data_config.get("dir"))


def load_split(
  directory: str, split: str, name: str | None = None
) -> tuple[np.ndarray, np.ndarray, str, str]:
  """Reads and checks the uint8 images and labels of ``split`` in ``directory``.

  Returns ``(images (N, H, W), labels (N,), images_path, labels_path)``.
  """
  images_path, labels_path = find_idx_files(directory, split, name)
  images = read_idx(images_path, expected_ndim=3)
  labels = read_idx(labels_path, expected_ndim=1)
  if images.dtype != np.uint8 or labels.dtype != np.uint8:
    raise DataError(
      f"IDX files must hold unsigned bytes; got {images.dtype} in {images_path} and "
      f"{labels.dtype} in {labels_path}."
    )
  if len(images) != len(labels):
    raise DataError(
      f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels."
    )
  return images, labels, images_path, labels_path


def create(
  data_config: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  process_index: int,
  process_count: int,
) -> DataSource:
  """An in-memory source over the IDX image/label files of ``data.split`` in ``data.dir``."""
  name = data_config.name
  directory = data_config.get("dir")
  if not directory:
    raise ConfigError("data.name='idx' needs data.dir: the folder holding the IDX files.")
  if not os.path.isdir(directory):
    raise MissingPathError(f"IDX data.dir {directory!r} is not a folder.")
  split = data_config.get("split", "train") or "train"
  images, labels, images_path, labels_path = load_split(directory, split, name)
  native_shape = images.shape[1:3]
  checked = checks.check_native(
    name,
    split,
    where=f"data.dir={directory!r} holds IDX files ({os.path.basename(images_path)}) with",
    shape=(*native_shape, 1),
    num_examples=len(images),
    labels=labels,
    fix="If these files are the data you want, set data.name='idx' (or the name of the "
    "dataset they hold, e.g. 'mnist'); otherwise point data.dir at the data of "
    f"data.name={name!r}.",
  )
  image_size = data_config.get("image_size")
  channels = data_config.get("channels")
  images = preprocessing.convert_channels(preprocessing.resize_images(images, image_size), channels)
  resize = (
    f"center crop + resize {native_shape} -> {image_size} (Pillow); "
    if image_size and native_shape != (image_size, image_size)
    else ""
  )
  gray_to_rgb = "grayscale -> RGB (repeated); " if channels == 3 else ""
  return array_source(
    name,
    images,
    labels,
    num_classes=checked.num_classes,
    description={
      "source": "idx",
      "dataset": name,
      "path": os.path.abspath(images_path),
      "labels_path": os.path.abspath(labels_path),
      "split": split,
      "checked": checked.note,
      "preprocessing": f"{resize}{gray_to_rgb}uint8 / 127.5 - 1",
    },
    seed=seed,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )
