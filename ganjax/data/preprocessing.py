"""Image preprocessing shared by every source: decode, crop, resize, layout and [-1, 1] scaling.

All resizing goes through Pillow (:func:`center_crop_and_resize`) so that a dataset gives the same
pixels whichever source serves it: area averaging (``BOX``) when shrinking, bicubic when growing.
"""

from __future__ import annotations

import io
import os
from typing import BinaryIO

import numpy as np
from PIL import Image

from ganjax.errors import ConfigError, DataError

ImageInput = str | os.PathLike | bytes | BinaryIO


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 pixels in [0, 255] -> float32 in [-1, 1] (``x / 127.5 - 1``)."""
  return np.asarray(images, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float images in [-1, 1] -> uint8 in [0, 255] (rounded and clipped); inverse of to_float."""
  images = (np.asarray(images, dtype=np.float32) + 1.0) * 127.5
  return np.clip(np.rint(images), 0, 255).astype(np.uint8)


def ensure_nhwc(images: np.ndarray) -> np.ndarray:
  """Adds a channel axis to a grayscale batch (N, H, W) -> (N, H, W, 1); NHWC passes through."""
  images = np.asarray(images)
  if images.ndim == 3:
    return images[..., None]
  if images.ndim != 4:
    raise ValueError(f"Expected an (N, H, W) or (N, H, W, C) batch, got shape {images.shape}.")
  return images


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
  """Converts a uint8 NHWC batch to ``channels`` (1 or 3; None keeps it).

  Grayscale -> RGB repeats the channel; RGB -> grayscale uses Pillow's ``convert("L")`` formula
  (ITU-R 601-2 luma in 16-bit fixed point), so every source gives the pixels an image folder
  decoded with ``data.channels = 1`` would.
  """
  images = ensure_nhwc(images)
  have = images.shape[-1]
  if channels is None or channels == have:
    return images
  if have == 1 and channels == 3:
    return np.repeat(images, 3, axis=-1)
  if have == 3 and channels == 1:
    r, g, b = (images[..., i].astype(np.uint32) for i in range(3))
    luma = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return luma.astype(np.uint8)[..., None]
  raise ValueError(f"Cannot convert {have}-channel images to {channels} channels.")


def center_crop_box(width: int, height: int, crop_size: int | None = None) -> tuple[int, ...]:
  """The centred ``(left, top, right, bottom)`` square of side ``crop_size`` (default: min side)."""
  side = min(width, height) if crop_size is None else int(crop_size)
  if side > min(width, height):
    raise ConfigError(
      f"Cannot crop {side}x{side} from a {width}x{height} image; use a data.crop_size of at "
      f"most {min(width, height)}."
    )
  left = (width - side) // 2
  top = (height - side) // 2
  return left, top, left + side, top + side


def center_crop_and_resize(
  image: np.ndarray | Image.Image, size: int | None, crop_size: int | None = None
) -> np.ndarray:
  """Centre-crops a square and resizes it to ``size`` x ``size``; returns uint8 (H, W[, C]).

  Args:
    image: uint8 (H, W) or (H, W, C) array, or a Pillow image.
    size: Output side; None keeps the cropped size.
    crop_size: Side of the centred square to crop first; None crops the largest centred square
      when the image is not square (and nothing when it is).
  """
  pil = image if isinstance(image, Image.Image) else _to_pil(np.asarray(image))
  width, height = pil.size
  if crop_size is not None or width != height:
    pil = pil.crop(center_crop_box(width, height, crop_size))
  if size is not None and pil.size != (size, size):
    method = Image.Resampling.BOX if size < pil.size[0] else Image.Resampling.BICUBIC
    pil = pil.resize((size, size), resample=method)
  result = np.asarray(pil, dtype=np.uint8)
  if not isinstance(image, Image.Image) and np.asarray(image).ndim == 3 and result.ndim == 2:
    result = result[..., None]
  return result


def resize_images(images: np.ndarray, size: int | None, crop_size: int | None = None) -> np.ndarray:
  """Applies :func:`center_crop_and_resize` to every image of a uint8 batch; returns NHWC."""
  images = ensure_nhwc(images)
  _, height, width, _ = images.shape
  if crop_size is None and (size is None or (height == width == size)):
    return images
  return np.stack([center_crop_and_resize(image, size, crop_size) for image in images])


def decode_image(
  source: ImageInput,
  *,
  channels: int = 3,
  image_size: int | None = None,
  crop_size: int | None = None,
) -> np.ndarray:
  """Decodes an encoded image (path, bytes or file) into uint8 (H, W, channels).

  Converts to RGB (``channels=3``) or grayscale (``channels=1``), then centre-crops and resizes
  when ``image_size`` or ``crop_size`` is given. Raises ``DataError`` (a ``ValueError``) naming
  the image when it cannot be decoded.
  """
  if channels not in (1, 3):
    raise ValueError(f"channels must be 1 or 3, got {channels}.")
  label = _describe(source)
  try:
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as pil:
      pil = pil.convert("L" if channels == 1 else "RGB")
  except Exception as e:  # Pillow raises many exception types for bad files.
    raise DataError(f"Cannot decode image {label}: {e}; remove or replace that file.") from e
  if image_size is not None or crop_size is not None:
    array = center_crop_and_resize(pil, image_size, crop_size)
  else:
    array = np.asarray(pil, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _to_pil(image: np.ndarray) -> Image.Image:
  if image.dtype != np.uint8:
    raise TypeError(f"Expected uint8 pixels, got {image.dtype}.")
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim not in (2, 3):
    raise ValueError(f"Expected an (H, W) or (H, W, C) image, got shape {image.shape}.")
  return Image.fromarray(image)


def _describe(source: ImageInput) -> str:
  if isinstance(source, (str, os.PathLike)):
    return os.fspath(source)
  if isinstance(source, bytes):
    return f"<{len(source)} encoded bytes>"
  return getattr(source, "name", repr(source))
