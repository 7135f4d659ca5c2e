"""Tests for ganjax.data: every source's contract, plus IDX, folder, TFDS and mixture specifics."""

import gzip
import os
import struct
import tarfile

import ml_collections
import numpy as np
import pytest
import tolerances
from PIL import Image

from ganjax import data, errors
from ganjax.data import embedded, gaussian_mixture, idx, preprocessing, source

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


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def write_idx(path, array):
  """Writes an unsigned-byte IDX file by hand (independent of the code under test)."""
  array = np.asarray(array, np.uint8)
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if str(path).endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def indexed_digits(num):
  """(num, 28, 28) uint8 images whose first two pixels encode their index; labels index % 10."""
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(num, 28, 28), dtype=np.uint8)
  images[:, 0, 0] = np.arange(num) % 256
  images[:, 0, 1] = np.arange(num) // 256
  return images, (np.arange(num) % 10).astype(np.uint8)


def decode_index(batch_images):
  pixels = preprocessing.to_uint8(batch_images[:, 0, :2, 0]).astype(np.int64)
  return pixels[:, 0] + 256 * pixels[:, 1]


def write_idx_folder(folder, num=30, gz=True, split_prefix="train"):
  images, labels = indexed_digits(num)
  ext = ".gz" if gz else ""
  folder.mkdir(parents=True, exist_ok=True)
  write_idx(folder / f"{split_prefix}-images-idx3-ubyte{ext}", images)
  write_idx(folder / f"{split_prefix}-labels-idx1-ubyte{ext}", labels)
  return images, labels


def write_image_folder(root, layout, size=(8, 6), ext="png"):
  """Writes constant-colour images; ``layout`` maps class folder ('' = root) -> image count."""
  colours = {}
  count = 0
  for folder, num in layout.items():
    (root / folder).mkdir(parents=True, exist_ok=True)
    for i in range(num):
      colour = (10 * count % 256, 20 + count, 200 - count)
      Image.new("RGB", size, colour).save(root / folder / f"{i:03d}.{ext}")
      colours[(folder, i)] = colour
      count += 1
  return colours


# ----------------------------------------------------------------------------------------------
# Contract tests shared by every finite source


@pytest.fixture
def source_factory(request, tmp_path, monkeypatch):
  """``factory(**kwargs) -> DataSource`` for the finite source named by the test parameter."""
  kind = request.param
  if kind == "idx":
    write_idx_folder(tmp_path / "idx", num=30)
    config = make_config("mnist", dir=str(tmp_path / "idx"))
  elif kind == "folder":
    write_image_folder(tmp_path / "images", {"a": 9, "b": 8, "c": 7})
    config = make_config("folder", dir=str(tmp_path / "images"), image_size=4)
  elif kind == "embedded":
    config = make_config("embedded_mnist")
  elif kind in ("tfds_memory", "tfds_stream"):
    import tensorflow_datasets as tfds

    mock = tfds.testing.mock_data(num_examples=24)
    mock.__enter__()
    request.addfinalizer(lambda: mock.__exit__(None, None, None))
    if kind == "tfds_memory":
      config = make_config("cifar10")
    else:
      config = make_config("celeb_a", image_size=8, cache_in_memory_max_bytes=0)
  else:
    raise AssertionError(kind)

  def factory(seed=0, batch_size=4, process_index=0, process_count=1):
    return data.create_source(
      config,
      seed=seed,
      batch_size=batch_size,
      process_index=process_index,
      process_count=process_count,
    )

  return factory


FINITE = ["idx", "folder", "embedded", "tfds_memory", "tfds_stream"]


@pytest.mark.parametrize("source_factory", FINITE, indirect=True)
def test_batches_shapes_dtypes_range(source_factory):
  src = source_factory(batch_size=4)
  batch = next(src.batches(0))
  assert batch["image"].shape == (4, *src.element_shape)
  assert batch["image"].dtype == np.float32
  assert -1.0 <= batch["image"].min() <= batch["image"].max() <= 1.0
  if src.num_classes is None:
    assert "label" not in batch
  else:
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (4,)
    assert 0 <= batch["label"].min() and batch["label"].max() < src.num_classes
  assert src.num_examples > 0
  assert src.description["num_examples"] == src.num_examples
  assert isinstance(src.description["source"], str)


@pytest.mark.parametrize("source_factory", FINITE, indirect=True)
def test_determinism_and_exact_resume(source_factory):
  src = source_factory(batch_size=8)
  from_zero = take(src.batches(0), 7)
  again = take(source_factory(batch_size=8).batches(0), 7)
  resumed = take(src.batches(5), 2)
  for a, b in zip(from_zero, again, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
  for a, b in zip(from_zero[5:], resumed, strict=True):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other_seed = next(source_factory(seed=1, batch_size=8).batches(0))
  assert not np.array_equal(other_seed["image"], from_zero[0]["image"])


@pytest.mark.parametrize("source_factory", FINITE, indirect=True)
def test_hosts_split_the_global_batch(source_factory):
  single = take(source_factory(batch_size=8).batches(2), 4)
  hosts = [
    take(source_factory(batch_size=8, process_index=p, process_count=2).batches(2), 4)
    for p in range(2)
  ]
  for step, full in enumerate(single):
    assert hosts[0][step]["image"].shape[0] == 4
    for key in full:
      joined = np.concatenate([hosts[0][step][key], hosts[1][step][key]])
      np.testing.assert_array_equal(joined, full[key])


@pytest.mark.parametrize("source_factory", ["folder", "embedded"], indirect=True)
def test_batch_larger_than_dataset(source_factory):
  num = source_factory().num_examples
  with pytest.raises(ValueError, match=rf"{num + 2}.*{num}"):
    source_factory(batch_size=num + 2)


@pytest.mark.parametrize("source_factory", ["idx"], indirect=True)
def test_batch_not_divisible_by_hosts(source_factory):
  with pytest.raises(ValueError, match="divisible"):
    source_factory(batch_size=5, process_count=2)


# ----------------------------------------------------------------------------------------------
# Shared index logic


@pytest.mark.parametrize("num_examples,batch_size", [(30, 4), (10, 10), (7, 3)])
def test_every_epoch_visits_each_example_once(num_examples, batch_size):
  steps = num_examples // batch_size
  for epoch in range(3):
    seen = np.concatenate(
      [
        source.host_indices(
          epoch * steps + s,
          seed=3,
          num_examples=num_examples,
          batch_size=batch_size,
          process_index=0,
          process_count=1,
        )
        for s in range(steps)
      ]
    )
    assert len(set(seen.tolist())) == len(seen) == steps * batch_size
    expected = source.epoch_permutation(3, epoch, num_examples)[: steps * batch_size]
    np.testing.assert_array_equal(seen, expected)


def test_idx_epoch_covers_every_example(tmp_path):
  write_idx_folder(tmp_path, num=30)
  src = data.create_source(make_config("idx", dir=str(tmp_path)), seed=5, batch_size=6)
  for epoch in range(2):
    batches = take(src.batches(epoch * 5), 5)
    indices = np.concatenate([decode_index(b["image"]) for b in batches])
    np.testing.assert_array_equal(indices, np.random.default_rng([5, epoch]).permutation(30))


# ----------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_parse_back_exactly(tmp_path, gz):
  images, labels = write_idx_folder(tmp_path, num=25, gz=gz, split_prefix="t10k")
  ext = ".gz" if gz else ""
  read_images = idx.read_idx(str(tmp_path / f"t10k-images-idx3-ubyte{ext}"))
  read_labels = idx.read_idx(str(tmp_path / f"t10k-labels-idx1-ubyte{ext}"))
  np.testing.assert_array_equal(read_images, images)
  np.testing.assert_array_equal(read_labels, labels)

  config = make_config("fashion_mnist", dir=str(tmp_path), split="test")
  src = data.create_source(config, seed=0, batch_size=5)
  assert src.description["source"] == "idx" and src.description["split"] == "test"
  assert (src.element_shape, src.num_examples, src.num_classes) == ((28, 28, 1), 25, 10)
  batch = next(src.batches(0))
  order = np.random.default_rng([0, 0]).permutation(25)[:5]
  np.testing.assert_array_equal(batch["image"][..., 0], preprocessing.to_float(images[order]))
  np.testing.assert_array_equal(batch["label"], labels[order])


def test_idx_resize(tmp_path):
  write_idx_folder(tmp_path, num=10)
  config = make_config("idx", dir=str(tmp_path), image_size=32)
  src = data.create_source(config, seed=0, batch_size=2)
  assert src.element_shape == (32, 32, 1)
  assert next(src.batches(0))["image"].shape == (2, 32, 32, 1)


def test_idx_missing_file_names_paths(tmp_path):
  images, _ = indexed_digits(5)
  write_idx(tmp_path / "train-images-idx3-ubyte", images)
  with pytest.raises(FileNotFoundError) as error:
    data.create_source(make_config("idx", dir=str(tmp_path)), seed=0, batch_size=1)
  assert str(tmp_path / "train-labels-idx1-ubyte") in str(error.value)
  assert str(tmp_path / "train-labels-idx1-ubyte.gz") in str(error.value)


@pytest.mark.parametrize(
  "content,message",
  [
    (struct.pack(">IIII", 1234, 5, 28, 28) + bytes(5 * 784), "magic"),
    (struct.pack(">IIII", 2051, 6, 28, 28) + bytes(5 * 784), "declares"),
    (struct.pack(">II", 2049, 5) + bytes(5), "dimensions"),
    (b"\x00\x00", "shorter"),
  ],
)
def test_idx_corrupt_header(tmp_path, content, message):
  (tmp_path / "train-images-idx3-ubyte").write_bytes(content)
  write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))
  with pytest.raises(ValueError, match=message) as error:
    data.create_source(make_config("idx", dir=str(tmp_path)), seed=0, batch_size=1)
  assert "train-images-idx3-ubyte" in str(error.value)


def test_idx_needs_dir():
  with pytest.raises(ValueError, match="data.dir"):
    data.create_source(make_config("idx"), seed=0, batch_size=1)


# ----------------------------------------------------------------------------------------------
# Image folders


def test_folder_class_subfolders_become_labels(tmp_path):
  colours = write_image_folder(tmp_path, {"zebra": 3, "ant": 4}, ext="PNG")
  src = data.create_source(make_config("folder", dir=str(tmp_path)), seed=0, batch_size=7)
  assert (src.element_shape, src.num_classes, src.num_examples) == ((6, 8, 3), 2, 7)
  assert src.description["class_names"] == ["ant", "zebra"]
  batch = next(src.batches(0))
  lookup = {colour: 0 if folder == "ant" else 1 for (folder, _), colour in colours.items()}
  pixels = preprocessing.to_uint8(batch["image"][:, 0, 0])
  assert [lookup[tuple(int(v) for v in p)] for p in pixels] == batch["label"].tolist()


@pytest.mark.parametrize("channels,image_size,shape", [(1, None, (6, 8, 1)), (3, 5, (5, 5, 3))])
def test_folder_unlabelled_channels_and_resize(tmp_path, channels, image_size, shape):
  write_image_folder(tmp_path, {"": 4}, ext="jpg")
  config = make_config("folder", dir=str(tmp_path), channels=channels, image_size=image_size)
  src = data.create_source(config, seed=0, batch_size=2)
  assert src.element_shape == shape and src.num_classes is None
  batch = next(src.batches(0))
  assert batch["image"].shape == (2, *shape) and "label" not in batch


@pytest.mark.parametrize("cache_bytes", [0, 2**30])
def test_folder_unreadable_image_is_named(tmp_path, cache_bytes):
  write_image_folder(tmp_path, {"": 3})
  (tmp_path / "zz_broken.png").write_bytes(b"not an image at all")
  config = make_config("folder", dir=str(tmp_path), cache_in_memory_max_bytes=cache_bytes)
  with pytest.raises(ValueError, match="zz_broken.png"):
    take(data.create_source(config, seed=0, batch_size=2).batches(0), 2)


def test_folder_size_mismatch_is_named(tmp_path):
  write_image_folder(tmp_path, {"": 3})
  Image.new("RGB", (9, 9)).save(tmp_path / "odd.png")
  with pytest.raises(ValueError, match="odd.png"):
    src = data.create_source(make_config("folder", dir=str(tmp_path)), seed=0, batch_size=2)
    take(src.batches(0), 2)


def test_folder_empty_or_missing(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("no images here")
  with pytest.raises(ValueError, match=r"No images.*\.png.*\.jpeg"):
    data.create_source(make_config("folder", dir=str(tmp_path / "empty")), seed=0, batch_size=1)
  with pytest.raises(FileNotFoundError, match="missing"):
    data.create_source(make_config("folder", dir=str(tmp_path / "missing")), seed=0, batch_size=1)


def test_folder_tar_archive_with_splits(tmp_path, monkeypatch):
  monkeypatch.setenv("GANJAX_CACHE_DIR", str(tmp_path / "cache"))
  write_image_folder(tmp_path / "tree" / "train", {"cat": 3, "dog": 5})
  write_image_folder(tmp_path / "tree" / "test", {"cat": 1, "dog": 1})
  archive = tmp_path / "images.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    for name in ("train", "test"):
      tar.add(tmp_path / "tree" / name, arcname=name)
  train = data.create_source(make_config("folder", dir=str(archive)), seed=0, batch_size=4)
  assert (train.num_examples, train.num_classes) == (8, 2)
  assert train.description["extracted_to"].startswith(str(tmp_path / "cache"))
  labels = np.concatenate([b["label"] for b in take(train.batches(0), 2)])
  assert sorted(labels.tolist()) == [0] * 3 + [1] * 5
  marker_time = os.path.getmtime(train.description["extracted_to"])
  config = make_config("folder", dir=str(archive), split="test")
  test = data.create_source(config, seed=0, batch_size=2)
  assert test.num_examples == 2 and test.description["root"].endswith("test")
  assert os.path.getmtime(test.description["extracted_to"]) == marker_time  # Extracted once.


# ----------------------------------------------------------------------------------------------
# Embedded MNIST


def test_embedded_mnist_is_5000_real_digits():
  images, labels = embedded.load()
  assert images.shape == (5000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  src = data.create_source(make_config("embedded_mnist"), seed=0, batch_size=1000)
  assert (src.num_examples, src.num_classes, src.element_shape) == (5000, 10, (28, 28, 1))
  epoch = take(src.batches(0), 5)
  labels = np.concatenate([b["label"] for b in epoch])
  np.testing.assert_array_equal(np.bincount(labels), [500] * 10)
  assert 0.05 < np.mean(np.concatenate([b["image"] for b in epoch]) > 0) < 0.3  # Real strokes.


# ----------------------------------------------------------------------------------------------
# 2-D Gaussian mixtures


def test_mixture_modes():
  ring = gaussian_mixture.mixture_modes("ring")
  assert ring.shape == (8, 2) and ring.dtype == np.float32
  # float32 casts of unit vectors: each coordinate rounded once (relative eps / 2) moves the norm
  # and the angle (in radians) by at most eps / 2; both are measured in float64.
  ring64 = ring.astype(np.float64)
  tolerances.assert_float32_close(
    np.linalg.norm(ring64, axis=1), np.ones(8), length=1, magnitude=1.0
  )
  angles = np.sort(np.mod(np.arctan2(ring64[:, 1], ring64[:, 0]), 2 * np.pi))
  tolerances.assert_float32_close(angles, 2 * np.pi * np.arange(8) / 8, length=1, magnitude=1.0)
  grid = gaussian_mixture.mixture_modes("grid")
  assert grid.shape == (25, 2) and len({tuple(m) for m in grid.tolist()}) == 25
  assert set(grid.ravel().tolist()) == {-4.0, -2.0, 0.0, 2.0, 4.0}
  assert gaussian_mixture.mixture_std("ring") == 0.01
  assert gaussian_mixture.mixture_std("grid") == 0.05


@pytest.mark.parametrize("name,num_modes", [("ring", 8), ("grid", 25)])
def test_mixture_samples(name, num_modes):
  src = data.create_source(make_config(name), seed=0, batch_size=2000)
  assert (src.element_shape, src.num_examples, src.num_classes) == ((2,), None, num_modes)
  batches = take(src.batches(0), 5)
  points = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  assert points.dtype == np.float32 and labels.dtype == np.int32
  modes, std = gaussian_mixture.mixture_modes(name), gaussian_mixture.mixture_std(name)
  offsets = points.astype(np.float64) - modes[labels]
  # Every sample near its own mode: P(|N(0, 1)| > 6) = 2e-9, 4e-5 for these 20,000 coordinates.
  assert np.abs(offsets).max() < 6 * std
  # Sampling tolerances (5 standard errors): the frequency of every mode, the std of each mode's
  # offsets and of all of them (float32 rounding, 1e-5 of std, is negligible next to them).
  n = len(labels)
  frequencies = np.bincount(labels, minlength=num_modes) / n
  atol = tolerances.proportion_atol(1 / num_modes, n)
  np.testing.assert_allclose(frequencies, 1 / num_modes, rtol=0, atol=atol)
  for k in range(num_modes):
    rtol = tolerances.std_rtol(int(np.sum(labels == k)))
    np.testing.assert_allclose(offsets[labels == k].std(axis=0), std, rtol=rtol, err_msg=f"{k}")
  np.testing.assert_allclose(offsets.std(axis=0), std, rtol=tolerances.std_rtol(n))
  resumed = next(src.batches(3))
  np.testing.assert_array_equal(resumed["image"], batches[3]["image"])
  host1 = next(
    data.create_source(
      make_config(name), seed=0, batch_size=2000, process_index=1, process_count=2
    ).batches(0)
  )
  # Host 1 of 2 gets the second half of the global batch: any process layout sees the same data.
  np.testing.assert_array_equal(host1["image"], batches[0]["image"][1000:])


# ----------------------------------------------------------------------------------------------
# TFDS (mocked: no network, no prepared data)


@pytest.mark.parametrize(
  "name,shape,num_classes", [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10)]
)
def test_tfds_in_memory(name, shape, num_classes):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=16):
    src = data.create_source(make_config(name), seed=0, batch_size=8)
  assert (src.element_shape, src.num_classes, src.num_examples) == (shape, num_classes, 16)
  assert src.description["source"] == "tfds" and src.description["in_memory"]
  batch = next(src.batches(0))
  assert batch["image"].shape == (8, *shape) and batch["label"].dtype == np.int32


def test_tfds_celeb_a_streams_cropped_and_resized():
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=12):
    src = data.create_source(
      make_config("celeb_a", cache_in_memory_max_bytes=0), seed=0, batch_size=4
    )
    assert src.element_shape == (64, 64, 3) and src.num_classes is None
    assert not src.description["in_memory"]
    assert "center crop 140" in src.description["preprocessing"]
    batch = next(src.batches(0))
  assert batch["image"].shape == (4, 64, 64, 3) and batch["image"].dtype == np.float32
  assert -1 <= batch["image"].min() and batch["image"].max() <= 1 and "label" not in batch


def test_tfds_download_failure_names_offline_options(tmp_path, monkeypatch):
  import tensorflow_datasets as tfds

  def offline(self, *args, **kwargs):
    raise OSError("Temporary failure in name resolution")

  monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
  with pytest.raises(errors.DataError) as error:
    data.create_source(make_config("mnist", dir=str(tmp_path)), seed=0, batch_size=8)
  message = str(error.value)
  assert "not prepared" in message and "name resolution" in message
  for option in ("embedded_mnist", "IDX", "data.name=folder", "TFDS data_dir"):
    assert option in message


def test_unknown_name_lists_valid_names():
  with pytest.raises(ValueError) as error:
    data.create_source(make_config("no_such_data"), seed=0, batch_size=8)
  message = str(error.value)
  assert "'no_such_data'" in message
  for name in ("embedded_mnist", "folder", "idx", "ring", "grid", "mnist", "celeb_a", "TensorFlow"):
    assert name in message


def test_sources_are_discovered():
  modules = {m.__name__.rsplit(".", 1)[1] for m in data.source_modules()}
  assert modules >= {"embedded", "folder", "gaussian_mixture", "idx", "tfds"}
  priorities = [m.PRIORITY for m in data.source_modules()]
  assert priorities == sorted(priorities, reverse=True)


# ----------------------------------------------------------------------------------------------
# Preprocessing


def test_preprocessing():
  pixels = np.array([0, 127, 128, 255], np.uint8)
  tolerances.assert_float32_close(  # x / 127.5 (up to 2) and - 1: two float32 roundings.
    preprocessing.to_float(pixels),
    np.array([-1, 127 / 127.5 - 1, 128 / 127.5 - 1, 1]),
    length=2,
    magnitude=2.0,
  )
  np.testing.assert_array_equal(preprocessing.to_uint8(preprocessing.to_float(pixels)), pixels)
  assert preprocessing.ensure_nhwc(np.zeros((2, 5, 5), np.uint8)).shape == (2, 5, 5, 1)
  image = np.zeros((10, 20, 3), np.uint8)
  image[:, 5:15] = 200  # The centred square.
  out = preprocessing.center_crop_and_resize(image, 4)
  assert out.shape == (4, 4, 3) and out.dtype == np.uint8 and (out == 200).all()
  gray = preprocessing.center_crop_and_resize(np.full((6, 6, 1), 7, np.uint8), 12)
  assert gray.shape == (12, 12, 1) and (gray == 7).all()
  celeb = preprocessing.center_crop_and_resize(np.zeros((218, 178, 3), np.uint8), 64, 140)
  assert celeb.shape == (64, 64, 3)
