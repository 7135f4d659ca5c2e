"""TensorBoard event files written with the ``tensorboard`` package alone (no TensorFlow import).

clu's :class:`clu.metric_writers.SummaryWriter` writes through ``tf.summary``, and importing any of
``clu.metric_writers`` imports TensorFlow: 4-5 s of CPU at every launch of a run that otherwise
never touches TensorFlow (GANs on IDX files, image folders, the embedded MNIST, 2-D mixtures).
:class:`SummaryWriter` has clu's ``MetricWriter`` methods that ganjax uses (``write_scalars``,
``write_images``, ``write_texts``, ``flush``, ``close``) and writes the same records as
``tf.summary.scalar`` / ``image`` / ``text``: a tensor per value with the TensorBoard plugin's
metadata, in TensorBoard's record format (its ``RecordWriter``; its ``EventFileWriter`` opens
files through ``tf.io.gfile``, which imports TensorFlow when it is installed).
``tests/summary_writer_test.py`` reads both writers' files back with TensorFlow and compares them.
"""

from __future__ import annotations

import io
import itertools
import os
import socket
import time
from collections.abc import Mapping

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.plugins.text import metadata as text_metadata
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_FILE_NUMBERS = itertools.count()  # Two writers of one process in one second get two files.


def _png(image: np.ndarray) -> bytes:
  """PNG bytes of an HWC image: uint8 as it is, floats in [0, 1] scaled as ``tf.summary.image``
  scales them (``tf.image.convert_image_dtype``: truncation of ``x * 255.5``)."""
  image = np.asarray(image)
  if image.dtype != np.uint8:
    image = (np.clip(image.astype(np.float32), 0.0, 1.0) * np.float32(255.5)).astype(np.uint8)
  if image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
  return buffer.getvalue()


class SummaryWriter:
  """Scalars, images and texts of a run as TensorBoard events in ``logdir``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}"
    name += f".{next(_FILE_NUMBERS)}"
    self.path = os.path.join(logdir, name)
    self._writer = RecordWriter(open(self.path, "wb"))  # noqa: SIM115 (closed by close())
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self.flush()
    self._metadata = {
      "scalars": scalar_metadata.create_summary_metadata(display_name="", description=""),
      "images": image_metadata.create_summary_metadata(display_name="", description=""),
      "text": text_metadata.create_summary_metadata(display_name="", description=""),
    }

  def _write(self, step: int, plugin: str, values: Mapping[str, np.ndarray]) -> None:
    summary = summary_pb2.Summary()
    for tag, value in values.items():
      summary.value.add(
        tag=tag,
        metadata=self._metadata[plugin],
        tensor=tensor_util.make_tensor_proto(value),
      )
    self._add(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def _add(self, event: event_pb2.Event) -> None:
    self._writer.write(event.SerializeToString())

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self._write(step, "scalars", {k: np.float32(v) for k, v in scalars.items()})

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """``images``: tag -> NHWC (or HWC) array, uint8 or floats in [0, 1]; each tag's tensor holds
    width, height and one PNG per image, as ``tf.summary.image`` writes it."""
    encoded = {}
    for tag, batch in images.items():
      batch = np.asarray(batch)
      batch = batch[None] if batch.ndim == 3 else batch
      height, width = batch.shape[1:3]
      encoded[tag] = np.array(
        [str(width).encode(), str(height).encode(), *(_png(image) for image in batch)],
        dtype=object,
      )
    self._write(step, "images", encoded)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    self._write(step, "text", {k: np.array(v.encode(), dtype=object) for k, v in texts.items()})

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
