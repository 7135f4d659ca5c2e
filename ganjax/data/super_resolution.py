"""Paired data for single-image super-resolution: HR random crops and their bicubic LR versions.

Ledig et al. 2017 ("Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network", arXiv:1609.04802) train on 96x96 high-resolution (HR) crops and make the low-resolution
(LR) inputs by bicubic downsampling with factor ``r = 4``. Here the LR images are made in the
pipeline by **Pillow's** ``Image.resize(..., Image.Resampling.BICUBIC)`` on the uint8 HR crop
(a cubic convolution kernel with a = -0.5 whose support is widened by the factor when shrinking,
i.e. antialiased like MATLAB's ``imresize``), rounded to uint8. The bicubic baseline of the
evaluation upsamples those uint8 LR images with the same Pillow filter.

``create_pair_source(config.data, scale=..., seed=..., batch_size=...)`` returns a
:class:`PairSource`. Its ``batches(start_step)`` yields ``{"hr": (B, H, W, C), "lr": (B, H/s,
W/s, C)}`` float32 in [-1, 1]; the batch at step ``t`` depends only on ``(seed, t)`` (and the
host), so a resumed run reads exactly what an uninterrupted one would. Every image of the training
pool is equally likely per crop; crop positions are uniform; with ``data.flip`` a crop is mirrored
left-right with probability 1/2. ``held_out()`` gives fixed evaluation pairs never used for
training (uint8 HR, LR and bicubic-upsampled images).

Image sources (``data.name``):

* ``"skimage"`` (the offline default): the natural photographs shipped inside scikit-image
  (``skimage.data``; no network). Training: astronaut, rocket, immunohistochemistry,
  hubble_deep_field, retina, motorcycle_left, and (with ``data.skimage_grayscale``, default on)
  the grayscale photos camera, coins, moon, brick, grass, gravel replicated to RGB for more
  texture. Held out: chelsea and coffee (cut into non-overlapping ``eval_crop_size`` tiles).
* ``"folder"``: an image folder (or ``.tar.gz``) in the layout of :mod:`ganjax.data.folder`, images
  of any sizes (decoded to RGB with Pillow, never resized). With ``train/`` and ``test/``
  subfolders, ``data.split`` trains and ``data.eval_split`` is held out; otherwise the last
  ``data.num_eval_images`` files (sorted) are held out.
* any other name: a source of :func:`ganjax.data.create_source` (a TFDS name such as
  ``oxford_flowers102``, ``embedded_mnist``, ...): crops are cut from its batches (so its images
  share one size; set ``data.image_size`` for datasets of varying sizes, which then are resized);
  ``data.eval_split`` is held out.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import ml_collections
import numpy as np
from PIL import Image

from ganjax.data import preprocessing
from ganjax.data.source import check_process, host_batch_size
from ganjax.errors import ConfigError, DataError, MissingPathError

Batch = dict[str, np.ndarray]

# skimage.data photographs: training pool (RGB, then grayscale) and the held-out images.
SKIMAGE_TRAIN_RGB = (
  "astronaut",
  "rocket",
  "immunohistochemistry",
  "hubble_deep_field",
  "retina",
  "motorcycle_left",
)
SKIMAGE_TRAIN_GRAY = ("camera", "coins", "moon", "brick", "grass", "gravel")
SKIMAGE_HELD_OUT = ("chelsea", "coffee")
# Image sources handled here by name; any other name goes through ganjax.data.create_source.
OWN_SOURCES = ("skimage", "folder")
# The resampling filter of the LR images and of the bicubic baseline.
BICUBIC = Image.Resampling.BICUBIC


def bicubic_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """Resizes one uint8 ``(H, W, C)`` image to ``width`` x ``height`` with Pillow's BICUBIC."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"bicubic_resize expects uint8 pixels, got {image.dtype}.")
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  out = np.asarray(pil.resize((int(width), int(height)), resample=BICUBIC), np.uint8)
  return out[..., None] if out.ndim == 2 else out


def downsample(images: np.ndarray, scale: int) -> np.ndarray:
  """Bicubic downsampling of uint8 ``(N, H, W, C)`` images by ``scale`` (H, W divisible)."""
  images = preprocessing.ensure_nhwc(images)
  _, h, w, _ = images.shape
  check_divisible(h, w, scale, "image")
  return np.stack([bicubic_resize(x, w // scale, h // scale) for x in images])


def upsample(images: np.ndarray, scale: int) -> np.ndarray:
  """Bicubic upsampling of uint8 ``(N, h, w, C)`` images by ``scale``: the baseline of SR."""
  images = preprocessing.ensure_nhwc(images)
  _, h, w, _ = images.shape
  return np.stack([bicubic_resize(x, w * scale, h * scale) for x in images])


def check_divisible(height: int, width: int, scale: int, what: str) -> None:
  """Raises ``ValueError`` unless both sides divide by ``scale``."""
  if height % scale or width % scale:
    raise ConfigError(
      f"The {what} size {height}x{width} is not divisible by the scale {scale}; use a multiple "
      f"of {scale} (e.g. {max(scale, height // scale * scale)})."
    )


def make_pairs(hr: np.ndarray, scale: int) -> Batch:
  """uint8 HR images -> ``{"hr", "lr"}`` float32 in [-1, 1] (LR by bicubic downsampling)."""
  return {
    "hr": preprocessing.to_float(hr),
    "lr": preprocessing.to_float(downsample(hr, scale)),
  }


def random_crops(
  images: Callable[[int], np.ndarray],
  num_images: int,
  rng: np.random.Generator,
  count: int,
  crop_size: int,
  flip: bool,
) -> np.ndarray:
  """``count`` uniform random ``crop_size`` squares of uint8 images (``images(i)`` loads one)."""
  which = rng.integers(num_images, size=count)
  tops, lefts, flips = rng.random(count), rng.random(count), rng.random(count) < 0.5
  crops = []
  for i, index in enumerate(which):
    image = images(int(index))
    h, w = image.shape[:2]
    if h < crop_size or w < crop_size:
      raise DataError(
        f"Training image {index} is {w}x{h}, smaller than data.crop_size={crop_size}; use a "
        "smaller crop_size."
      )
    top = int(tops[i] * (h - crop_size + 1))
    left = int(lefts[i] * (w - crop_size + 1))
    crop = image[top : top + crop_size, left : left + crop_size]
    crops.append(crop[:, ::-1] if flip and flips[i] else crop)
  return np.stack(crops)


def tiles(image: np.ndarray, size: int) -> list[np.ndarray]:
  """Non-overlapping ``size`` squares of an image, centred as a block (row-major order)."""
  h, w = image.shape[:2]
  rows, cols = h // size, w // size
  top0, left0 = (h - rows * size) // 2, (w - cols * size) // 2
  return [
    image[top0 + r * size : top0 + (r + 1) * size, left0 + c * size : left0 + (c + 1) * size]
    for r in range(rows)
    for c in range(cols)
  ]


@dataclasses.dataclass(frozen=True)
class PairSource:
  """Super-resolution training pairs and a fixed held-out set.

  Attributes:
    name: ``data.name``.
    scale: the upscaling factor (HR side / LR side).
    crop_size: side of the HR training crops.
    channels: image channels (3).
    num_images: images in the training pool (None for an endless source).
    description: JSON-serialisable provenance for ``run_info.json``.
    batches: ``batches(start_step)`` -> infinite iterator of host batches ``{"hr", "lr"}``.
    held_out: ``held_out()`` -> ``{"hr", "lr", "bicubic"}`` uint8 arrays and ``"names"``
      (where each evaluation crop comes from).
  """

  name: str
  scale: int
  crop_size: int
  channels: int
  num_images: int | None
  description: dict[str, Any]
  batches: Callable[[int], Iterator[Batch]]
  held_out: Callable[[], dict[str, Any]]


def load_skimage(name: str) -> np.ndarray:
  """An image of ``skimage.data`` as uint8 RGB ``(H, W, 3)`` (grayscale replicated)."""
  import skimage.data

  if name == "motorcycle_left":
    image = skimage.data.stereo_motorcycle()[0]
  else:
    loader = getattr(skimage.data, name, None)
    if loader is None:
      raise ValueError(f"skimage.data has no image {name!r}.")
    image = loader()
  image = np.asarray(image)
  if image.dtype != np.uint8:
    raise TypeError(f"skimage.data.{name} is {image.dtype}, expected uint8.")
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  return np.ascontiguousarray(image[..., :3])


def _held_out_set(
  images: list[np.ndarray], labels: list[str], scale: int, eval_crop_size: int, max_crops: int
) -> dict[str, Any]:
  """Tiles of the held-out images -> uint8 HR / LR / bicubic arrays (at most ``max_crops``)."""
  smallest = min(min(image.shape[:2]) for image in images)
  size = min(eval_crop_size, smallest) // scale * scale
  if size < 11 + 2 * scale:  # SSIM's 11x11 window after shaving `scale` pixels per border.
    raise DataError(
      f"Held-out images are too small ({smallest} px) for evaluation crops at scale {scale}: "
      f"need at least {11 + 2 * scale} pixels per side."
    )
  crops, names = [], []
  for image, label in zip(images, labels, strict=True):
    for i, crop in enumerate(tiles(image, size)):
      crops.append(crop)
      names.append(f"{label}#{i}")
  if len(crops) > max_crops:  # Evenly spaced, so every held-out image keeps some crops.
    keep = np.linspace(0, len(crops) - 1, max_crops).round().astype(int)
    crops, names = [crops[i] for i in keep], [names[i] for i in keep]
  hr = np.stack(crops)
  lr = downsample(hr, scale)
  return {"hr": hr, "lr": lr, "bicubic": upsample(lr, scale), "names": names}


def create_pair_source(
  data_config: ml_collections.ConfigDict,
  *,
  scale: int,
  seed: int,
  batch_size: int,
  process_index: int = 0,
  process_count: int = 1,
) -> PairSource:
  """The super-resolution source of ``config.data`` (see the module docstring).

  Fields of ``data_config``: ``name``, ``dir``, ``split``, ``eval_split``, ``crop_size``,
  ``eval_crop_size``, ``eval_max_crops``, ``num_eval_images``, ``flip``, ``skimage_grayscale``.

  Raises:
    ValueError: ``crop_size`` not divisible by ``scale``, or a bad batch size.
  """
  crop_size = int(data_config.get("crop_size", 96))
  check_divisible(crop_size, crop_size, scale, "data.crop_size")
  host_batch = host_batch_size(batch_size, process_count)
  check_process(process_index, process_count)
  flip = bool(data_config.get("flip", True))
  eval_crop = int(data_config.get("eval_crop_size", 128))
  max_crops = int(data_config.get("eval_max_crops", 32))
  name = data_config.get("name") or "skimage"

  if name == "skimage":
    train_names = list(SKIMAGE_TRAIN_RGB)
    if data_config.get("skimage_grayscale", True):
      train_names += SKIMAGE_TRAIN_GRAY
    train = [load_skimage(n) for n in train_names]
    held_names = list(SKIMAGE_HELD_OUT)
    load_train = train.__getitem__
    num_images = len(train)
    held_out = functools.partial(
      _held_out_set,
      [load_skimage(n) for n in held_names],
      held_names,
      scale,
      eval_crop,
      max_crops,
    )
    description = {
      "source": "skimage.data (shipped with scikit-image; offline)",
      "train_images": train_names,
      "held_out_images": held_names,
    }
  elif name == "folder":
    load_train, num_images, held_out, description = _folder(
      data_config, scale, eval_crop, max_crops
    )
  else:
    return _generic(
      data_config,
      scale=scale,
      seed=seed,
      batch_size=batch_size,
      crop_size=crop_size,
      flip=flip,
      eval_crop=eval_crop,
      max_crops=max_crops,
      process_index=process_index,
      process_count=process_count,
    )

  offset = process_index * host_batch

  def batch_at(step: int) -> Batch:
    rng = np.random.default_rng([seed, step, 0x5E])
    hr = random_crops(load_train, num_images, rng, batch_size, crop_size, flip)
    return make_pairs(hr[offset : offset + host_batch], scale)

  def batches(start_step: int) -> Iterator[Batch]:
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}.")
    step = start_step
    while True:
      yield batch_at(step)
      step += 1

  description = {
    **description,
    "dataset": name,
    "num_train_images": num_images,
    "preprocessing": _preprocessing_note(crop_size, scale, flip),
  }
  return PairSource(
    name=name,
    scale=scale,
    crop_size=crop_size,
    channels=3,
    num_images=num_images,
    description=description,
    batches=batches,
    held_out=functools.cache(held_out),
  )


def _preprocessing_note(crop_size: int, scale: int, flip: bool) -> str:
  flip_note = " + random left-right flip" if flip else ""
  return (
    f"uniform random {crop_size}x{crop_size} HR crops{flip_note}"
    f"; LR = Pillow BICUBIC resize of the uint8 crop to {crop_size // scale}x"
    f"{crop_size // scale}, rounded to uint8; both uint8 / 127.5 - 1"
  )


def _folder(data_config, scale: int, eval_crop: int, max_crops: int):
  """Training loader, size, held-out function and description of an image folder."""
  from ganjax.data import folder

  path = data_config.get("dir")
  if not path:
    raise ConfigError("data.name='folder' needs data.dir: an image folder or a .tar/.tgz archive.")
  if not os.path.exists(path):
    raise MissingPathError(f"Image folder data.dir {path!r} does not exist.")
  root = folder.extract_archive(path) if folder.is_archive(path) else path
  split = data_config.get("split", "train") or "train"
  eval_split = data_config.get("eval_split", "test") or "test"
  has_splits = all(os.path.isdir(os.path.join(root, s)) for s in ("train", "test"))
  train_files = folder.list_images(folder.split_folder(root, split))[0]
  if has_splits:
    held_files = folder.list_images(folder.split_folder(root, eval_split))[0]
    held_files = held_files[: max(1, int(data_config.get("num_eval_images", 64)))]
    split_note = f"train: {split}/, held out: {eval_split}/"
  else:
    num_eval = int(data_config.get("num_eval_images", 64))
    if not 0 < num_eval < len(train_files):
      raise ConfigError(
        f"data.num_eval_images={num_eval} must be in [1, {len(train_files) - 1}] for the "
        f"{len(train_files)} images of {root}."
      )
    train_files, held_files = train_files[:-num_eval], train_files[-num_eval:]
    split_note = f"the last {num_eval} files (sorted) held out"

  @functools.lru_cache(maxsize=512)
  def load_train(index: int) -> np.ndarray:
    return preprocessing.decode_image(train_files[index], channels=3)

  def held_out():
    images = [preprocessing.decode_image(f, channels=3) for f in held_files]
    return _held_out_set(
      images, [os.path.basename(f) for f in held_files], scale, eval_crop, max_crops
    )

  description = {
    "source": "folder",
    "path": os.path.abspath(path),
    "root": os.path.abspath(root),
    "split": split_note,
    "num_held_out_images": len(held_files),
  }
  return load_train, len(train_files), held_out, description


def _generic(
  data_config,
  *,
  scale,
  seed,
  batch_size,
  crop_size,
  flip,
  eval_crop,
  max_crops,
  process_index,
  process_count,
) -> PairSource:
  """Crops from the batches of a :func:`ganjax.data.create_source` source (TFDS, ...)."""
  from ganjax import data as data_lib

  # data.crop_size is the HR crop here; the image sources read it as a centre crop (TFDS).
  source_config = ml_collections.ConfigDict(
    {k: v for k, v in data_config.to_dict().items() if k != "crop_size"}
  )
  train_source = data_lib.create_source(
    source_config,
    seed=seed,
    batch_size=batch_size,
    process_index=process_index,
    process_count=process_count,
  )
  h, w = train_source.element_shape[:2]
  if h < crop_size or w < crop_size:
    raise ConfigError(
      f"data.crop_size={crop_size} is larger than the {w}x{h} images of {data_config.name!r}."
    )

  def batches(start_step: int) -> Iterator[Batch]:
    step = start_step
    for batch in train_source.batches(start_step):
      images = preprocessing.to_uint8(batch["image"])
      if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
      rng = np.random.default_rng([seed, step, 0x5E])
      hr = random_crops(images.__getitem__, len(images), rng, len(images), crop_size, flip)
      yield make_pairs(hr, scale)
      step += 1

  def held_out():
    eval_config = copy.deepcopy(source_config)
    eval_config.split = data_config.get("eval_split", "test") or "test"
    source = data_lib.create_source(eval_config, seed=seed, batch_size=max_crops)
    images = preprocessing.to_uint8(next(source.batches(0))["image"])
    if images.shape[-1] == 1:
      images = np.repeat(images, 3, axis=-1)
    labels = [f"{eval_config.split}#{i}" for i in range(len(images))]
    return _held_out_set(list(images), labels, scale, eval_crop, max_crops)

  description = {
    "source": train_source.description,
    "dataset": data_config.name,
    "held_out": f"split {data_config.get('eval_split', 'test')!r}, first {max_crops} examples",
    "preprocessing": _preprocessing_note(crop_size, scale, flip),
  }
  return PairSource(
    name=data_config.name,
    scale=scale,
    crop_size=crop_size,
    channels=3,
    num_images=train_source.num_examples,
    description=description,
    batches=batches,
    held_out=functools.cache(held_out),
  )
