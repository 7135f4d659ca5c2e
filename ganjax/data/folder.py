"""``folder``: a directory (or ``.tar``/``.tar.gz``/``.tgz`` archive) of image files.

Layout: class subfolders (sorted names) become labels 0..K-1; images directly in the folder give an
unlabelled dataset. When the folder has ``train/`` and ``test/`` subfolders, ``data.split`` picks
one of them; without them the whole folder is the split ``train`` and any other split fails (it
would silently be the training images). Images are decoded with Pillow to RGB (or grayscale with
``data.channels = 1``), centre-cropped to a square and resized when ``data.image_size`` is set;
otherwise all images must share one size. Decoding happens per batch in a thread pool; the decoded
uint8 pixels are kept in memory when the whole set fits in ``data.cache_in_memory_max_bytes``.

An archive is extracted once under ``~/.cache/ganjax/archives/`` (``$GANJAX_CACHE_DIR`` overrides
the cache folder) and reused by later runs. When ``data.image_size`` is unset, every image's header
is read up front (about 2 s per 50,000 images) and images of different sizes fail at once, naming
two of them; every image is also validated when it is decoded, so an unreadable image stops the
run at the batch that reads it, naming the file.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator

import ml_collections
import numpy as np
from PIL import Image

from ganjax.data import checks, preprocessing
from ganjax.data.source import (
  Batch,
  DataSource,
  check_batch_fits,
  check_process,
  host_batch_size,
  indexed_batches,
)
from ganjax.errors import ConfigError, DataError, MissingPathError

NAMES = ("folder",)
PRIORITY = 100

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
ARCHIVE_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
DEFAULT_CACHE_BYTES = 2 * 1024**3
_MARKER = ".ganjax_extracted"


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
  """A lazily decoded source over the image folder ``data.dir``."""
  path = data_config.get("dir")
  if not path:
    raise ConfigError("data.name='folder' needs data.dir: an image folder or a .tar/.tgz archive.")
  if not os.path.exists(path):
    raise MissingPathError(f"Image folder data.dir {path!r} does not exist.")
  split = data_config.get("split", "train") or "train"
  channels = data_config.get("channels") or 3
  if channels not in (1, 3):
    raise ConfigError(f"data.channels must be 1, 3 or None, got {channels!r}.")
  image_size = data_config.get("image_size")
  cache_max = data_config.get("cache_in_memory_max_bytes", DEFAULT_CACHE_BYTES)
  if cache_max is None:
    cache_max = DEFAULT_CACHE_BYTES

  extracted = extract_archive(path) if is_archive(path) else None
  root = split_folder(extracted or path, split)
  files, labels, class_names = list_images(root)
  host_batch_size(batch_size, process_count)
  check_process(process_index, process_count)
  check_batch_fits(batch_size, len(files), data_config.name)

  if image_size:
    shape = (image_size, image_size, channels)
  else:
    width, height = check_same_size(files)
    shape = (height, width, channels)
  checked = checks.check_native(
    data_config.name,
    split,
    where=f"data.dir={path!r} holds",
    shape=shape,
    num_examples=len(files),
    labels=labels,
    num_classes=len(class_names) if labels is not None else None,
  )
  checked_note = checked.note if image_size else f"{checked.note}; all images {width}x{height}"
  pool = concurrent.futures.ThreadPoolExecutor(
    min(32, (os.cpu_count() or 1) + 4), thread_name_prefix="ganjax-decode"
  )
  num_examples = len(files)
  use_cache = num_examples * int(np.prod(shape)) <= cache_max
  cache = np.empty((num_examples, *shape), np.uint8) if use_cache else None
  cached = np.zeros(num_examples, bool)

  def decode(index: int) -> np.ndarray:
    image = preprocessing.decode_image(files[index], channels=channels, image_size=image_size)
    if image.shape != shape:
      raise DataError(
        f"Image {files[index]} is {image.shape[1]}x{image.shape[0]} but {files[0]} is "
        f"{shape[1]}x{shape[0]}; set data.image_size to resize all images to one size."
      )
    return image

  def fetch(indices: np.ndarray) -> Batch:
    if cache is None:
      images = np.stack(list(pool.map(decode, indices)))
    else:
      missing = indices[~cached[indices]]
      for index, image in zip(missing, pool.map(decode, missing), strict=True):
        cache[index] = image
        cached[index] = True
      images = cache[indices]
    batch = {"image": preprocessing.to_float(images)}
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
      lookahead=1,
    )

  resize = f"center crop to square + resize to {image_size} (Pillow); " if image_size else ""
  return DataSource(
    name=data_config.name,
    element_shape=shape,
    num_examples=num_examples,
    num_classes=checked.num_classes,
    description={
      "source": "folder",
      "dataset": data_config.name,
      "path": os.path.abspath(path),
      "extracted_to": extracted,
      "root": os.path.abspath(root),
      "split": split,
      "num_examples": num_examples,
      "class_names": class_names,
      "in_memory": use_cache,
      "checked": checked_note,
      "preprocessing": f"decode to {'L' if channels == 1 else 'RGB'}; {resize}uint8 / 127.5 - 1",
    },
    batches=batches,
  )


def is_archive(path: str) -> bool:
  """Whether ``path`` is a file with a tar archive extension."""
  return os.path.isfile(path) and path.lower().endswith(ARCHIVE_EXTENSIONS)


def extract_archive(archive: str) -> str:
  """Extracts ``archive`` once and returns the folder; later calls reuse the extraction.

  The target is ``$GANJAX_CACHE_DIR/archives/<stem>-<hash of the path>`` (default cache dir
  ``~/.cache/ganjax``), so data folders, which may be shared or read-only, are never written to.
  Extraction goes to a temporary folder that is renamed into place, so concurrent or interrupted
  runs never see a partial tree; a changed archive (size or mtime) is extracted again.
  """
  archive = os.path.abspath(archive)
  stat = os.stat(archive)
  stamp = f"{stat.st_size} {int(stat.st_mtime)}"
  stem = os.path.basename(archive)
  for ext in ARCHIVE_EXTENSIONS:
    if stem.lower().endswith(ext):
      stem = stem[: -len(ext)]
      break
  digest = hashlib.sha1(archive.encode()).hexdigest()[:10]
  target = os.path.join(cache_dir(), "archives", f"{stem}-{digest}")
  if _extraction_stamp(target) == stamp:
    return _single_subfolder(target)
  if os.path.exists(target):
    if _extraction_stamp(target) is None:
      raise FileExistsError(f"Cannot extract {archive}: {target} exists and is not ours.")
    shutil.rmtree(target)  # An extraction of an older version of the archive.
  os.makedirs(os.path.dirname(target), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f".{stem}-", dir=os.path.dirname(target))
  try:
    try:
      with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    except (tarfile.TarError, OSError, EOFError) as e:
      raise DataError(f"Cannot extract archive {archive}: {e}") from e
    with open(os.path.join(staging, _MARKER), "w") as f:
      f.write(stamp)
    os.chmod(staging, 0o755)  # mkdtemp creates it private.
    try:
      os.rename(staging, target)
    except OSError:
      if _extraction_stamp(target) != stamp:  # Not a concurrent run that finished first.
        raise
  finally:
    if os.path.exists(staging):
      shutil.rmtree(staging, ignore_errors=True)
  return _single_subfolder(target)


def cache_dir() -> str:
  """Where ganjax keeps extracted archives: ``$GANJAX_CACHE_DIR`` or ``~/.cache/ganjax``."""
  return os.path.expanduser(os.environ.get("GANJAX_CACHE_DIR") or "~/.cache/ganjax")


def split_folder(root: str, split: str) -> str:
  """``root/split`` when ``root`` has ``train/`` and ``test/`` subfolders, else ``root``.

  Without those subfolders only the split ``train`` (the whole folder) exists: another split
  would be the training images under another name, so it fails.
  """
  if not os.path.isdir(root):
    raise MissingPathError(f"Image folder {root!r} is not a folder.")
  if all(os.path.isdir(os.path.join(root, name)) for name in ("train", "test")):
    folder = os.path.join(root, split)
    if not os.path.isdir(folder):
      available = sorted(e for e in os.listdir(root) if os.path.isdir(os.path.join(root, e)))
      raise DataError(
        f"data.split={split!r} not found in {root}; its split subfolders: {available}."
      )
    return folder
  if split != "train":
    raise DataError(
      f"data.name='folder' has no {split} split: {root} has no train/ and test/ subfolders, so "
      f"it is all split 'train'. Use data.split='train', or put the images in "
      f"{os.path.join(root, 'train')}/ and {os.path.join(root, split)}/ (plus test/)."
    )
  return root


def list_images(root: str) -> tuple[list[str], np.ndarray | None, list[str]]:
  """Image paths under ``root`` (sorted), their int32 labels (None if unlabelled), class names."""
  entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
  loose = [os.path.join(root, e) for e in entries if _is_image(os.path.join(root, e))]
  class_files = {
    e: _images_below(os.path.join(root, e)) for e in entries if os.path.isdir(os.path.join(root, e))
  }
  class_files = {name: files for name, files in class_files.items() if files}
  if loose and class_files:
    raise DataError(
      f"{root} holds images both directly and in class subfolders "
      f"({', '.join(class_files)}); use one layout."
    )
  if loose:
    return loose, None, []
  if not class_files:
    raise DataError(
      f"No images found in {root} (searched for extensions "
      f"{', '.join(IMAGE_EXTENSIONS)}, case-insensitive); point data.dir at a folder of images "
      "or of class subfolders of images."
    )
  files, labels = [], []
  for label, name in enumerate(class_files):
    files.extend(class_files[name])
    labels.extend([label] * len(class_files[name]))
  return files, np.asarray(labels, np.int32), list(class_files)


def check_same_size(files: list[str]) -> tuple[int, int]:
  """The ``(width, height)`` every image of ``files`` has (read from the headers only).

  Raises:
    DataError: an image cannot be opened, or the images differ in size (names two of them).
  """
  first = _probe_size(files[0])
  for path in files[1:]:
    size = _probe_size(path)
    if size != first:
      raise DataError(
        f"Image {path} is {size[0]}x{size[1]} but {files[0]} is {first[0]}x{first[1]}; set "
        "data.image_size to resize all images to one size."
      )
  return first


def _probe_size(path: str) -> tuple[int, int]:
  try:
    with Image.open(path) as image:
      return image.size
  except Exception as e:  # Pillow raises many exception types for bad files.
    raise DataError(f"Cannot decode image {path}: {e}; remove or replace that file.") from e


def _is_image(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(path)


def _images_below(folder: str) -> list[str]:
  files = []
  for dirpath, dirnames, filenames in os.walk(folder):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    files.extend(
      os.path.join(dirpath, f)
      for f in sorted(filenames)
      if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)
    )
  return files


def _extraction_stamp(target: str) -> str | None:
  try:
    with open(os.path.join(target, _MARKER)) as f:
      return f.read()
  except OSError:
    return None


def _single_subfolder(folder: str) -> str:
  """Descends into the archive's single top-level folder, if that is all it holds."""
  entries = [e for e in os.listdir(folder) if e != _MARKER]
  if len(entries) == 1 and os.path.isdir(os.path.join(folder, entries[0])):
    return os.path.join(folder, entries[0])
  return folder
