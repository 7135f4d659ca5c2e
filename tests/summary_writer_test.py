"""ganjax's TensorBoard writer against clu's (TensorFlow's ``tf.summary``): the same records."""

import glob
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image

from ganjax import summary_writer


def _records(logdir: str) -> dict[tuple[str, int], tuple[str, object]]:
  """(tag, step) -> (plugin name, decoded value) of every summary value in ``logdir``."""
  import tensorflow as tf

  records = {}
  (path,) = glob.glob(os.path.join(logdir, "events.out.tfevents.*"))
  for event in tf.compat.v1.train.summary_iterator(path):
    for value in event.summary.value:
      plugin = value.metadata.plugin_data.plugin_name
      array = tf.make_ndarray(value.tensor)
      if plugin == "images":
        width, height, *pngs = array
        array = (int(width), int(height), [np.asarray(Image.open(io.BytesIO(p))) for p in pngs])
      assert (value.tag, event.step) not in records
      records[value.tag, event.step] = (plugin, array)
  return records


def _write(writer):
  rng = np.random.default_rng(0)
  writer.write_scalars(3, {"d_loss": 0.25, "steps_per_sec": np.float64(12.5), "fid": 7})
  writer.write_scalars(5, {"d_loss": -1e-3})
  writer.write_images(5, {"samples": rng.integers(0, 256, (2, 6, 4, 3), dtype=np.uint8)})
  writer.write_images(6, {"real": rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)})
  writer.write_images(6, {"gray": rng.integers(0, 256, (1, 4, 4, 1), dtype=np.uint8)})
  writer.write_images(7, {"float": rng.uniform(0, 1, (1, 3, 5, 3)).astype(np.float32)})
  writer.write_texts(7, {"note": "phase adversarial"})
  writer.flush()
  writer.close()


def test_same_records_as_clu_summary_writer(tmp_path):
  from clu import metric_writers

  _write(metric_writers.SummaryWriter(str(tmp_path / "clu")))
  _write(summary_writer.SummaryWriter(str(tmp_path / "ganjax")))
  expected, got = _records(str(tmp_path / "clu")), _records(str(tmp_path / "ganjax"))
  assert sorted(got) == sorted(expected)
  for key, (plugin, value) in expected.items():
    assert got[key][0] == plugin, key
    if plugin == "images":
      width, height, images = value
      assert got[key][1][:2] == (width, height), key
      assert len(got[key][1][2]) == len(images)
      for a, b in zip(got[key][1][2], images, strict=True):
        np.testing.assert_array_equal(a, b)
    else:
      assert got[key][1].dtype == value.dtype and got[key][1].shape == value.shape, key
      np.testing.assert_array_equal(got[key][1], value)


def test_writing_does_not_import_tensorflow(tmp_path):
  code = (
    "import sys, numpy as np; from ganjax import summary_writer; "
    f"w = summary_writer.SummaryWriter({str(tmp_path)!r}); w.write_scalars(1, {{'a': 1.0}}); "
    "w.write_images(1, {'b': np.zeros((1, 2, 2, 3), np.uint8)}); w.close(); "
    "print('tensorflow' in sys.modules)"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"
