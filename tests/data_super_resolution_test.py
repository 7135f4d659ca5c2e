"""Super-resolution pairs: crops, bicubic LR, determinism, held-out sets, errors."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from ganjax.data import preprocessing
from ganjax.data import super_resolution as sr


def _data(**fields):
  base = {"name": "skimage", "crop_size": 32, "eval_crop_size": 48, "eval_max_crops": 6}
  return ml_collections.ConfigDict({**base, **fields})


def test_skimage_batches_shapes_ranges_and_lr():
  source = sr.create_pair_source(_data(), scale=4, seed=0, batch_size=3)
  batch = next(source.batches(0))
  assert batch["hr"].shape == (3, 32, 32, 3) and batch["lr"].shape == (3, 8, 8, 3)
  assert batch["hr"].min() >= -1 and batch["hr"].max() <= 1
  hr = preprocessing.to_uint8(batch["hr"])
  np.testing.assert_array_equal(preprocessing.to_uint8(batch["lr"]), sr.downsample(hr, 4))


def test_batches_depend_only_on_seed_and_step():
  source = sr.create_pair_source(_data(), scale=2, seed=1, batch_size=2)
  stream = source.batches(0)
  for _ in range(3):
    next(stream)
  np.testing.assert_array_equal(next(stream)["hr"], next(source.batches(3))["hr"])
  other = sr.create_pair_source(_data(), scale=2, seed=2, batch_size=2)
  assert not np.array_equal(next(other.batches(3))["hr"], next(source.batches(3))["hr"])


def test_held_out_is_fixed_and_separate():
  source = sr.create_pair_source(_data(), scale=4, seed=0, batch_size=2)
  held = source.held_out()
  assert held["hr"].shape == (6, 48, 48, 3) and held["lr"].shape == (6, 12, 12, 3)
  assert held["bicubic"].shape == held["hr"].shape and held["hr"].dtype == np.uint8
  assert {n.split("#")[0] for n in held["names"]} == set(sr.SKIMAGE_HELD_OUT)
  assert not set(sr.SKIMAGE_HELD_OUT) & set(sr.SKIMAGE_TRAIN_RGB + sr.SKIMAGE_TRAIN_GRAY)


def test_crop_size_must_divide_by_scale():
  with pytest.raises(ValueError, match=r"30x30 is not divisible by the scale 4"):
    sr.create_pair_source(_data(crop_size=30), scale=4, seed=0, batch_size=2)


def test_folder_source_holds_out_last_files(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(5):
    size = (40 + 4 * i, 36)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
      tmp_path / f"img{i}.png"
    )
  data = _data(name="folder", dir=str(tmp_path), num_eval_images=2, crop_size=16)
  source = sr.create_pair_source(data, scale=2, seed=0, batch_size=4)
  assert source.num_images == 3
  batch = next(source.batches(0))
  assert batch["hr"].shape == (4, 16, 16, 3) and batch["lr"].shape == (4, 8, 8, 3)
  held = source.held_out()
  assert sorted({n.split("#")[0] for n in held["names"]}) == ["img3.png", "img4.png"]
  assert held["hr"].shape[1:] == (36, 36, 3)


def test_folder_missing():
  with pytest.raises(FileNotFoundError, match="/does/not/exist"):
    sr.create_pair_source(
      _data(name="folder", dir="/does/not/exist"), scale=4, seed=0, batch_size=2
    )


def test_tfds_source_gives_pairs_and_a_test_split_held_out_set():
  import tensorflow_datasets as tfds

  config = _data(
    name="cifar10",
    crop_size=16,
    eval_crop_size=16,
    eval_max_crops=4,
    dir=None,
    split="train",
    eval_split="test",
    image_size=None,
    channels=None,
    cache_in_memory_max_bytes=2**30,
  )
  with tfds.testing.mock_data(num_examples=8):
    source = sr.create_pair_source(config, scale=2, seed=0, batch_size=4)
    batch = next(source.batches(0))
    held_out = source.held_out()
  assert batch["hr"].shape == (4, 16, 16, 3) and batch["lr"].shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(
    preprocessing.to_uint8(batch["lr"]), sr.downsample(preprocessing.to_uint8(batch["hr"]), 2)
  )
  assert source.description["dataset"] == "cifar10"
  assert len(held_out["hr"]) == 4 and held_out["lr"].shape[1:] == (8, 8, 3)
  np.testing.assert_array_equal(held_out["bicubic"], sr.upsample(held_out["lr"], 2))
