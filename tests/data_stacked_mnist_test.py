"""Tests for ganjax.data.stacked_mnist: three MNIST digits as the channels of one image."""

from __future__ import annotations

import gzip
import struct

import ml_collections
import numpy as np
import pytest
import tolerances

from ganjax import data
from ganjax.data import embedded, preprocessing, stacked_mnist
from ganjax.metrics import stacked_mnist_modes


def make_config(**overrides):
  config = ml_collections.ConfigDict(
    {"name": "stacked_mnist", "dir": None, "split": "train", "image_size": None}
  )
  config.update(overrides)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def write_idx(path, array):
  """Writes an unsigned-byte IDX file by hand (independent of the code under test)."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def write_mnist_folder(folder, num=40, seed=0, prefix="train"):
  """IDX files of ``num`` distinct random 28x28 'digits' with labels index % 10."""
  folder.mkdir(exist_ok=True)
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(num, 28, 28), dtype=np.uint8)
  labels = (np.arange(num) % 10).astype(np.uint8)
  write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
  write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return images, labels


def digits_of(modes):
  modes = np.asarray(modes)
  return np.stack([modes // 100, modes // 10 % 10, modes % 10], axis=1)


def test_shapes_dtypes_range():
  src = data.create_source(make_config(), seed=0, batch_size=32)
  assert src.name == "stacked_mnist"
  assert src.element_shape == (28, 28, 3)
  assert src.num_classes == 1000 and src.num_examples is None
  assert src.description["source"] == "stacked_mnist" and src.description["digits"] == "embedded"
  batch = next(src.batches(0))
  assert set(batch) == {"image", "label"}
  assert batch["image"].shape == (32, 28, 28, 3) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (32,) and batch["label"].dtype == np.int32
  assert -1.0 <= batch["image"].min() < batch["image"].max() <= 1.0
  assert 0 <= batch["label"].min() and batch["label"].max() < 1000
  assert 0.05 < np.mean(batch["image"] > 0) < 0.3  # Real strokes in every channel.


def test_channels_are_the_indexed_digits_and_label_encodes_them():
  images, labels = embedded.load()
  seed, step, batch_size = 3, 7, 64
  batch = next(data.create_source(make_config(), seed=seed, batch_size=batch_size).batches(step))
  indices = stacked_mnist.step_indices(seed, step, 0, batch_size, len(labels))
  assert indices.shape == (batch_size, 3)
  for channel in range(3):
    np.testing.assert_array_equal(
      batch["image"][..., channel], preprocessing.to_float(images[indices[:, channel], ..., 0])
    )
  np.testing.assert_array_equal(digits_of(batch["label"]), labels[indices])
  # The encoding is the one the mode counter decodes (channel 0 is the hundreds digit).
  histogram = stacked_mnist_modes(labels[indices])["mode_histogram"]
  np.testing.assert_array_equal(histogram, np.bincount(batch["label"], minlength=1000))


def test_idx_digits_match_by_pixels(tmp_path):
  """Without using the indices: every channel is one of the IDX images, with the stated digit."""
  images, labels = write_mnist_folder(tmp_path / "mnist", num=40)
  config = make_config(dir=str(tmp_path / "mnist"))
  src = data.create_source(config, seed=0, batch_size=16)  # Claimed ahead of the idx source.
  assert src.description["digits"] == "idx" and src.description["num_digits"] == 40
  flat = images.reshape(40, -1)
  for batch in take(src.batches(0), 3):
    pixels = preprocessing.to_uint8(batch["image"])
    for example, digits in zip(pixels, digits_of(batch["label"]), strict=True):
      for channel, digit in enumerate(digits):
        matches = np.flatnonzero((flat == example[..., channel].reshape(-1)).all(axis=1))
        assert len(matches) == 1 and labels[matches[0]] == digit


def test_idx_test_split_and_resize(tmp_path):
  write_mnist_folder(tmp_path / "mnist", num=20, prefix="t10k")
  config = make_config(dir=str(tmp_path / "mnist"), split="test", image_size=32)
  src = data.create_source(config, seed=0, batch_size=4)
  assert src.element_shape == (32, 32, 3) and src.description["split"] == "test"
  assert next(src.batches(0))["image"].shape == (4, 32, 32, 3)


def test_modes_are_roughly_uniform():
  batches = take(data.create_source(make_config(), seed=0, batch_size=500).batches(0), 20)
  counts = np.bincount(np.concatenate([b["label"] for b in batches]), minlength=1000)
  # 10,000 draws over 1000 equally likely modes leave 1000 (1 - 1/1000)^10000 = 0.05 modes empty
  # on average (P(more than 9 empty) < 1e-20).
  assert np.count_nonzero(counts) > 990
  digits = digits_of(np.concatenate([b["label"] for b in batches]))
  atol = tolerances.proportion_atol(0.1, len(digits))  # 5 standard errors: 0.015.
  for channel in range(3):
    np.testing.assert_allclose(
      np.bincount(digits[:, channel]) / len(digits), 0.1, rtol=0, atol=atol
    )


def test_determinism_and_exact_resume():
  def source(seed=0, **kwargs):
    return data.create_source(make_config(**kwargs), seed=seed, batch_size=8)

  from_zero = take(source().batches(0), 6)
  again = take(source().batches(0), 6)
  resumed = take(source().batches(4), 2)
  for a, b in zip(from_zero, again, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(from_zero[4:], resumed, strict=True):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(from_zero[0]["image"], from_zero[1]["image"])  # Fresh every step.
  assert not np.array_equal(next(source(seed=1).batches(0))["image"], from_zero[0]["image"])


def test_fixed_dataset_epochs_and_resume():
  def source(seed=0):
    return data.create_source(make_config(num_examples=24), seed=seed, batch_size=8)

  src = source()
  assert src.num_examples == 24 and "24 fixed triples" in src.description["sampling"]
  epochs = take(src.batches(0), 6)  # Two epochs of 3 steps.
  first = np.sort(np.concatenate([b["label"] for b in epochs[:3]]))
  second = np.sort(np.concatenate([b["label"] for b in epochs[3:]]))
  np.testing.assert_array_equal(first, second)  # The same 24 triples, reshuffled.
  assert not np.array_equal(epochs[0]["label"], epochs[3]["label"])
  resumed = take(source().batches(4), 2)
  for a, b in zip(epochs[4:], resumed, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  indices = stacked_mnist.fixed_indices(0, 24, 5000)
  _, labels = embedded.load()
  expected = np.sort(labels[indices] @ np.array([100, 10, 1]))
  np.testing.assert_array_equal(first, expected)


def test_hosts_draw_their_own_batches():
  config = make_config()
  hosts = [
    next(
      data.create_source(config, seed=0, batch_size=8, process_index=p, process_count=2).batches(0)
    )
    for p in range(2)
  ]
  assert hosts[0]["image"].shape == (4, 28, 28, 3)
  assert not np.array_equal(hosts[0]["image"], hosts[1]["image"])


@pytest.mark.parametrize(
  "overrides,error,message",
  [
    ({"split": "test"}, ValueError, r"embedded.*only the split 'train'.*'test'"),
    ({"num_examples": 0}, ValueError, r"num_examples.*positive.*0"),
    ({"num_examples": 4}, ValueError, r"batch_size 8 is larger than the 4 examples"),
    ({"dir": "/no/such/folder"}, FileNotFoundError, r"'/no/such/folder' is not a folder"),
  ],
)
def test_bad_config(overrides, error, message):
  with pytest.raises(error, match=message):
    data.create_source(make_config(**overrides), seed=0, batch_size=8)


def test_bad_idx_folders(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    data.create_source(make_config(dir=str(tmp_path / "empty")), seed=0, batch_size=8)
  folder = tmp_path / "letters"
  folder.mkdir()
  write_idx(folder / "train-images-idx3-ubyte.gz", np.zeros((30, 28, 28)))
  write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(30) % 26)
  with pytest.raises(ValueError, match=r"digit labels 0..9, got labels 0..25"):
    data.create_source(make_config(dir=str(folder)), seed=0, batch_size=8)


def test_listed_among_valid_names():
  assert "stacked_mnist" in data.valid_names()
