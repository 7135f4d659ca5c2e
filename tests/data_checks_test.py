"""Tests for ganjax.data.checks: a source serves what the config names, or fails saying why.

No test here uses the network: TFDS runs under ``tfds.testing.mock_data``, or with name resolution
and connections blocked.
"""

import dataclasses
import gzip
import logging
import socket
import struct
import threading
import time
import types

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ganjax import data, errors
from ganjax.data import checks, preprocessing, source, stacked_mnist
from ganjax.data import tfds as tfds_source

# ----------------------------------------------------------------------------------------------
# Helpers


def make_config(name, **overrides):
  config = ml_collections.ConfigDict(
    {
      "name": name,
      "dir": None,
      "split": "train",
      "image_size": None,
      "channels": None,
      "cache_in_memory_max_bytes": 2 * 1024**3,
    }
  )
  config.update(overrides)
  return config


def write_idx(path, array):
  """Writes an unsigned-byte IDX file by hand (independent of the code under test)."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def write_idx_folder(folder, num=30, side=28, labels=None, prefix="train"):
  folder.mkdir(parents=True, exist_ok=True)
  images = np.random.default_rng(0).integers(0, 256, (num, side, side), dtype=np.uint8)
  labels = np.arange(num) % 10 if labels is None else labels
  write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images)
  write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
  return images


def create(config, batch_size=2):
  return data.create_source(config, seed=0, batch_size=batch_size)


def data_error(config, batch_size=2):
  """The DataError that creating ``config``'s source raises; also a ValueError and a UserError."""
  with pytest.raises(errors.DataError) as error:
    create(config, batch_size)
  assert isinstance(error.value, ValueError) and isinstance(error.value, errors.UserError)
  return str(error.value)


# ----------------------------------------------------------------------------------------------
# The table


def test_known_facts():
  for name in ("mnist", "fashion_mnist", "cifar10", "celeb_a", "stacked_mnist", "embedded_mnist"):
    assert checks.facts(name) is not None, name
  assert checks.describe(checks.KNOWN["cifar10"], "train") == (
    "32x32x3 images with 10 classes (50,000 train examples)"
  )
  assert checks.describe(checks.KNOWN["celeb_a"], "test") == (
    "218x178x3 images with no labels (19,962 test examples)"
  )
  assert checks.facts("celeb_a:2.1.0") is checks.KNOWN["celeb_a"]
  assert checks.facts("my_data") is None and checks.facts(None) is None
  assert checks.expected_shape(checks.KNOWN["celeb_a"], make_config("celeb_a")) == (64, 64, 3)
  config = make_config("mnist", image_size=32, channels=3)
  assert checks.expected_shape(checks.KNOWN["mnist"], config) == (32, 32, 3)


# ----------------------------------------------------------------------------------------------
# Mismatches: each names what was asked and what was found


def test_cifar10_over_mnist_idx_files_fails(tmp_path):
  """The reported case: dataset=cifar10 with data.dir at MNIST IDX files trained on MNIST."""
  write_idx_folder(tmp_path / "mnist")
  message = data_error(make_config("cifar10", dir=str(tmp_path / "mnist")))
  for part in (
    "data.name='cifar10' expects 32x32x3 images with 10 classes (50,000 train examples)",
    f"data.dir={str(tmp_path / 'mnist')!r} holds IDX files",
    "30 images of shape (28, 28, 1), labels 0..9",
    "different: image size, channels",
    "data.name='idx'",  # What to do: name the data for what it is,
    "cifar10-jpeg-images.tar.gz",  # or get CIFAR-10 without a network.
  ):
    assert part in message, (part, message)


def test_wrong_shape(tmp_path):
  write_idx_folder(tmp_path, side=32)
  message = data_error(make_config("mnist", dir=str(tmp_path)))
  assert "expects 28x28x1 images" in message and "shape (32, 32, 1)" in message
  assert "different: image size)" in message


def test_wrong_channels(tmp_path):
  write_idx_folder(tmp_path, side=32)  # CIFAR-10's size, but grayscale.
  message = data_error(make_config("cifar10", dir=str(tmp_path)))
  assert "expects 32x32x3 images" in message and "shape (32, 32, 1)" in message
  assert "different: channels)" in message


def test_wrong_number_of_classes(tmp_path):
  write_idx_folder(tmp_path, num=47, labels=np.arange(47))  # EMNIST-balanced-like labels.
  message = data_error(make_config("fashion_mnist", dir=str(tmp_path)))
  assert "expects 28x28x1 images with 10 classes" in message and "labels 0..46" in message
  assert "different: labels outside 0..9)" in message
  with pytest.raises(errors.DataError, match=r"10 classes.*47 classes.*number of classes"):
    checks.check_native(
      "mnist", "train", where="TFDS has", shape=(28, 28, 1), num_examples=5, num_classes=47
    )


def test_wrong_split_size(tmp_path, monkeypatch):
  with pytest.raises(errors.DataError) as error:
    checks.check_native("mnist", "test", where="X holds", shape=(28, 28, 1), num_examples=60_000)
  message = str(error.value)
  assert "(10,000 test examples)" in message and "X holds 60,000 images" in message
  assert "number of test examples" in message
  # Through a source: 30 examples where the (patched) table says the split has 20.
  small = dataclasses.replace(checks.KNOWN["mnist"], splits={"train": 20})
  monkeypatch.setitem(checks.KNOWN, "mnist", small)
  write_idx_folder(tmp_path, num=30)
  message = data_error(make_config("mnist", dir=str(tmp_path)))
  assert "(20 train examples)" in message and "30 images" in message


def test_subset_is_served_with_a_warning(tmp_path, caplog):
  write_idx_folder(tmp_path, num=30)
  with caplog.at_level(logging.WARNING):
    src = create(make_config("mnist", dir=str(tmp_path)))
  assert src.num_classes == 10 and src.num_examples == 30
  assert "a subset: 30 of its 60,000 train examples" in src.description["checked"]
  assert any("a subset of 28x28x1" in r.getMessage() for r in caplog.records)


def test_known_name_serves_the_tables_classes(tmp_path):
  write_idx_folder(tmp_path, num=12, labels=np.arange(12) % 4)  # Only classes 0..3 present.
  assert create(make_config("mnist", dir=str(tmp_path))).num_classes == 10
  assert create(make_config("idx", dir=str(tmp_path))).num_classes == 4


def test_empty_data(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(errors.DataError, match=r"No images found in .*empty.*point data.dir"):
    create(make_config("folder", dir=str(tmp_path / "empty")))
  write_idx_folder(tmp_path / "none", num=0, labels=np.zeros(0))
  message = data_error(make_config("idx", dir=str(tmp_path / "none")))
  assert "data.name='idx'" in message and "no examples" in message


def test_labels_out_of_range():
  with pytest.raises(errors.DataError, match=r"'toy' has 3 classes \(labels 0..2\).*0..5"):
    source.array_source(
      "toy",
      np.zeros((4, 2, 2, 1), np.uint8),
      np.array([0, 1, 5, 2]),
      num_classes=3,
      description={},
      seed=0,
      batch_size=2,
      process_index=0,
      process_count=1,
    )
  with pytest.raises(errors.DataError, match=r"data.name='x': X holds labels 0..4, outside 0..2"):
    checks.check_native(
      "x",
      "train",
      where="X holds",
      shape=(2, 2, 1),
      num_examples=5,
      labels=np.arange(5),
      num_classes=3,
    )
  with pytest.raises(errors.DataError, match=r"labels -1..4, outside 0 or more"):
    checks.check_native(
      "x", "train", where="X holds", shape=(2, 2, 1), num_examples=6, labels=np.arange(-1, 5)
    )


def test_folder_images_of_different_sizes_fail_up_front(tmp_path):
  for i, size in enumerate([(8, 6), (8, 6), (9, 9)]):
    Image.new("RGB", size).save(tmp_path / f"{i}.png")
  with pytest.raises(errors.DataError, match=r"2.png is 9x9 but .*0.png is 8x6.*image_size"):
    create(make_config("folder", dir=str(tmp_path)))
  assert create(make_config("folder", dir=str(tmp_path), image_size=4)).element_shape == (4, 4, 3)


def test_folder_without_splits_has_only_train(tmp_path):
  for i in range(3):
    Image.new("RGB", (4, 4)).save(tmp_path / f"{i}.png")
  assert create(make_config("folder", dir=str(tmp_path))).num_examples == 3
  with pytest.raises(errors.DataError, match=r"'folder' has no test split.*data.split='train'"):
    create(make_config("folder", dir=str(tmp_path), split="test"))


def test_stacked_mnist_checks_its_digits(tmp_path):
  write_idx_folder(tmp_path, side=32)
  with pytest.raises(errors.DataError, match=r"stacks MNIST digits.*28x28x1.*\(32, 32, 1\)"):
    create(make_config("stacked_mnist", dir=str(tmp_path)))
  with pytest.raises(errors.ConfigError, match=r"3 channels.*data.channels=1"):
    create(make_config("stacked_mnist", channels=1))


def test_embedded_mnist_has_only_train():
  with pytest.raises(errors.ConfigError, match=r"only the split 'train'.*data.split='test'"):
    create(make_config("embedded_mnist", split="test"))


# ----------------------------------------------------------------------------------------------
# data.image_size / data.channels are honoured, or refused


def test_requests_are_validated():
  with pytest.raises(errors.ConfigError, match=r"data.channels=2.*1 \(grayscale\), 3 \(RGB\)"):
    create(make_config("embedded_mnist", channels=2))
  with pytest.raises(errors.ConfigError, match=r"data.image_size=0.*positive"):
    create(make_config("embedded_mnist", image_size=0))
  with pytest.raises(errors.ConfigError, match=r"'ring' is not image data.*data.image_size=32"):
    create(make_config("ring", image_size=32))


@pytest.mark.parametrize("image_size", [None, 14])
def test_grayscale_sources_give_rgb_on_request(tmp_path, image_size):
  write_idx_folder(tmp_path)
  for config in (
    make_config("mnist", dir=str(tmp_path), channels=3, image_size=image_size),
    make_config("embedded_mnist", channels=3, image_size=image_size),
  ):
    src = create(config, batch_size=4)
    side = image_size or 28
    assert src.element_shape == (side, side, 3)
    batch = next(src.batches(0))["image"]
    assert batch.shape == (4, side, side, 3)
    np.testing.assert_array_equal(batch[..., 0], batch[..., 2])
    assert "grayscale -> RGB" in src.description["preprocessing"]


def test_tfds_honours_channels_and_never_probes_the_network_under_mock(monkeypatch):
  import tensorflow_datasets as tfds

  def no_probe(*args, **kwargs):
    raise AssertionError("mock_data needs no network probe")

  monkeypatch.setattr(tfds_source, "network_available", no_probe)
  with tfds.testing.mock_data(num_examples=8):
    src = create(make_config("cifar10", channels=1, image_size=16), batch_size=4)
  assert src.element_shape == (16, 16, 1) and src.num_classes == 10
  assert next(src.batches(0))["image"].shape == (4, 16, 16, 1)
  assert "RGB -> grayscale" in src.description["preprocessing"]


def test_output_check_catches_an_ignored_request():
  fake = source.DataSource(
    name="folder",
    element_shape=(28, 28, 1),
    num_examples=10,
    num_classes=None,
    description={"source": "fake"},
    batches=lambda step: iter(()),
  )
  with pytest.raises(errors.DataError, match=r"data.image_size=32 asks for 32x32.*fake.*28x28x1"):
    checks.check_output(fake, make_config("folder", image_size=32))
  with pytest.raises(errors.DataError, match=r"data.channels=3 asks for 3 channels.*28x28x1"):
    checks.check_output(fake, make_config("folder", channels=3))
  with pytest.raises(errors.DataError, match=r"'cifar10' expects 32x32x3 images.*28x28x1"):
    checks.check_output(fake, make_config("cifar10"))
  checks.check_output(fake, make_config("mnist"))


def test_convert_channels_matches_pillow():
  rgb = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
  gray = preprocessing.convert_channels(rgb, 1)
  expected = np.stack([np.asarray(Image.fromarray(image).convert("L")) for image in rgb])
  np.testing.assert_array_equal(gray[..., 0], expected)
  np.testing.assert_array_equal(preprocessing.convert_channels(gray, 3), np.repeat(gray, 3, -1))
  assert preprocessing.convert_channels(rgb, None) is rgb


# ----------------------------------------------------------------------------------------------
# TFDS offline: fails at once


@pytest.fixture
def no_network(monkeypatch):
  """Blocks name resolution and connections; returns the hosts that were looked up."""
  looked_up = []

  def getaddrinfo(host, *args, **kwargs):
    looked_up.append(host)
    raise socket.gaierror(socket.EAI_NONAME, "blocked by the test")

  def connect(self, address):
    raise OSError(f"connection to {address} blocked by the test")

  monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
  monkeypatch.setattr(socket.socket, "connect", connect)
  monkeypatch.delenv("HTTPS_PROXY", raising=False)
  monkeypatch.delenv("https_proxy", raising=False)
  return looked_up


def test_tfds_offline_fails_within_seconds(tmp_path, no_network):
  import tensorflow_datasets  # noqa: F401  (imported before the clock starts: TF takes seconds)

  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  start = time.monotonic()
  message = data_error(make_config("cifar10", dir=str(data_dir)), batch_size=64)
  elapsed = time.monotonic() - start
  assert elapsed < 30, elapsed  # It took 247 s of download retries before.
  assert no_network == ["storage.googleapis.com"]  # The probe ran, and was all that ran.
  assert list(data_dir.iterdir()) == []  # TFDS never started a download.
  for part in (
    "data.name='cifar10' is a TensorFlow Datasets dataset that is not prepared",
    f"data.dir={str(data_dir)!r}",
    "is empty",
    "network is unreachable (cannot resolve storage.googleapis.com",
    "MNIST-format IDX files",
    "data.name=folder",
    "cifar10-jpeg-images.tar.gz",
    "TFDS data_dir where the dataset was prepared",
    "run once with network access",
  ):
    assert part in message, (part, message)


def test_network_probe_is_bounded(monkeypatch, no_network):
  ok, detail = tfds_source.network_available(timeout=1)
  assert not ok and "cannot resolve storage.googleapis.com" in detail

  release = threading.Event()
  monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: release.wait(10))
  start = time.monotonic()
  ok, detail = tfds_source.network_available(timeout=0.2)
  release.set()
  assert not ok and "took over 0.2 s" in detail and time.monotonic() - start < 5

  address = [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", 3128))]
  monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: address)
  monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
  ok, detail = tfds_source.network_available(timeout=1)
  assert not ok and "cannot connect to proxy.invalid:3128 (the HTTPS proxy)" in detail


def test_tfds_unknown_split_lists_the_splits():
  builder = types.SimpleNamespace(
    name="cifar10", info=types.SimpleNamespace(splits={"train": None, "test": None})
  )
  with pytest.raises(errors.DataError, match=r"no split 'validation'.*train, test"):
    tfds_source._check_split(builder, "validation")
  tfds_source._check_split(builder, "train[:10%]")
  tfds_source._check_split(builder, "train+test")


def test_stacked_mnist_is_known():
  assert checks.KNOWN["stacked_mnist"].num_classes == stacked_mnist.NUM_MODES
