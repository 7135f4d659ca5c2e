"""--mode=fid (ganjax.evaluation.compare): two sets of images scored with one protocol.

The Inception network itself is tested elsewhere (metrics_inception_test, inception_fid_helper_
test); here a cheap stand-in extractor (per-channel colour moments) makes the values checkable
against the metric functions called directly.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ganjax import metrics as metrics_lib
from ganjax.errors import ConfigError, DataError, MissingPathError
from ganjax.evaluation import compare
from ganjax.evaluation.extractors import Extractor


def _colour_features(images: np.ndarray) -> dict[str, np.ndarray]:
  """(N, 8): per-channel means and standard deviations and two cross terms of [-1, 1] images."""
  x = images.astype(np.float64)
  means, stds = x.mean(axis=(1, 2)), x.std(axis=(1, 2))
  cross = np.stack([(x[..., 0] * x[..., 1]).mean((1, 2)), (x[..., 1] * x[..., 2]).mean((1, 2))], 1)
  return {"features": np.concatenate([means, stds, cross], axis=1).astype(np.float32)}


EXTRACTOR = Extractor(
  "inception", _colour_features, {"extractor": "stand-in"}, frozenset({"features"})
)


def _images(rng, num, size=16, shift=0):
  return np.clip(rng.normal(128 + shift, 40, (num, size, size, 3)), 0, 255).astype(np.uint8)


def _write_folder(folder, images, mode="RGB"):
  os.makedirs(folder, exist_ok=True)
  for i, image in enumerate(images):
    Image.fromarray(image).convert(mode).save(os.path.join(folder, f"{i:04d}.png"))


def test_folder_against_npz_equals_the_metrics_on_the_features(tmp_path):
  rng = np.random.default_rng(0)
  a, b = _images(rng, 60), _images(rng, 50, shift=20)
  _write_folder(tmp_path / "a", a)
  np.savez(tmp_path / "b.npz", images=b)
  result = compare.compare(str(tmp_path / "a"), str(tmp_path / "b.npz"), EXTRACTOR)
  fa = _colour_features(a / 127.5 - 1)["features"]
  fb = _colour_features(b / 127.5 - 1)["features"]
  assert result["values"]["fid"] == pytest.approx(metrics_lib.frechet_distance(fb, fa), rel=1e-6)
  pr = metrics_lib.precision_recall(fb, fa, k=3)
  assert result["values"]["precision"] == pr.precision
  assert result["values"]["recall"] == pr.recall
  assert set(result["values"]) == {"fid", "kid", "kid_std", "precision", "recall"}
  assert result["protocol"]["num_input"] == 60 and result["protocol"]["num_reference"] == 50
  assert result["protocol"]["extractor"] == "stand-in"


def test_same_set_scores_zero_and_order_of_files_does_not_matter(tmp_path):
  rng = np.random.default_rng(1)
  images = _images(rng, 40)
  _write_folder(tmp_path / "a", images)
  np.savez(tmp_path / "a.npz", samples=images / 127.5 - 1)  # --mode=sample's float samples.
  result = compare.compare(str(tmp_path / "a"), str(tmp_path / "a.npz"), EXTRACTOR, ["fid"])
  assert abs(result["values"]["fid"]) < 1e-6


def test_statistics_files_give_fid_only(tmp_path):
  rng = np.random.default_rng(2)
  a, b = _images(rng, 40), _images(rng, 40, shift=30)
  fb = _colour_features(b / 127.5 - 1)["features"].astype(np.float64)
  np.savez(tmp_path / "b_stats.npz", mu=fb.mean(0), sigma=np.cov(fb, rowvar=False))
  np.savez(tmp_path / "a.npz", images=a)
  result = compare.compare(str(tmp_path / "a.npz"), str(tmp_path / "b_stats.npz"), EXTRACTOR)
  fa = _colour_features(a / 127.5 - 1)["features"]
  assert list(result["values"]) == ["fid"]
  assert result["values"]["fid"] == pytest.approx(metrics_lib.frechet_distance(fb, fa), rel=1e-5)
  with pytest.raises(ConfigError, match="kid need the images of both sets"):
    compare.compare(str(tmp_path / "a.npz"), str(tmp_path / "b_stats.npz"), EXTRACTOR, ["kid"])


def test_grayscale_rgba_and_mixed_sizes_are_read_as_rgb(tmp_path):
  rng = np.random.default_rng(3)
  images = _images(rng, 4)
  _write_folder(tmp_path / "s/gray", images[:2], mode="L")
  _write_folder(tmp_path / "s/rgba", images[2:], mode="RGBA")
  Image.fromarray(_images(rng, 1, size=24)[0]).save(tmp_path / "s" / "big.jpg")
  image_set = compare.read_image_set(str(tmp_path / "s"))
  assert [im.shape for im in image_set.images] == [(24, 24, 3)] + [(16, 16, 3)] * 4
  gray = image_set.images[1]
  assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
  features = compare.image_features(EXTRACTOR, image_set)
  assert features.shape == (5, 8)
  np.testing.assert_allclose(
    features[1], _colour_features(gray[None].astype(np.float32) / 127.5 - 1)["features"][0]
  )


def test_tfds_reference_read_from_mock_data():
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=6):
    image_set = compare.read_image_set("tfds:cifar10:test")
  assert len(image_set.images) == 6 and image_set.images[0].shape == (32, 32, 3)


@pytest.mark.parametrize(
  "source, error, match",
  [
    ("/nonexistent/images", MissingPathError, "does not exist; give a folder"),
    ("{tmp}/empty", DataError, "holds no images"),
    ("{tmp}/file.txt", ConfigError, "is a file but not an .npz"),
    ("{tmp}/other.npz", DataError, r"has arrays \['x'\]; expected 'images'"),
    ("{tmp}/range.npz", DataError, r"float images must lie in \[-1, 1\]"),
  ],
)
def test_bad_sources_say_what_is_expected(tmp_path, source, error, match):
  os.makedirs(tmp_path / "empty")
  (tmp_path / "file.txt").write_text("x")
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  np.savez(tmp_path / "range.npz", images=np.full((2, 4, 4, 3), 3.0, np.float32))
  with pytest.raises(error, match=match):
    compare.read_image_set(source.format(tmp=tmp_path))


def test_saved_statistics_are_a_reference_for_later_runs(tmp_path):
  """save_statistics writes mu/sigma with the protocol; a later FID against them equals the FID
  against the images; statistics made with another protocol are refused."""
  rng = np.random.default_rng(4)
  a, b = _images(rng, 40), _images(rng, 45, shift=25)
  _write_folder(tmp_path / "b", b)
  np.savez(tmp_path / "a.npz", images=a)
  stats_path = str(tmp_path / "b_stats.npz")
  protocol = compare.save_statistics(str(tmp_path / "b"), EXTRACTOR, stats_path)
  assert protocol["num_images"] == 45 and protocol["extractor"] == "stand-in"
  with np.load(stats_path) as data:
    fb = _colour_features(b.astype(np.float32) / 127.5 - 1)["features"].astype(np.float64)
    np.testing.assert_allclose(data["mu"], fb.mean(0), rtol=1e-6)
    assert sorted(data.files) == ["mu", "protocol", "sigma"]
  from_stats = compare.compare(str(tmp_path / "a.npz"), stats_path, EXTRACTOR)
  from_images = compare.compare(str(tmp_path / "a.npz"), str(tmp_path / "b"), EXTRACTOR, ["fid"])
  assert from_stats["values"]["fid"] == pytest.approx(from_images["values"]["fid"], rel=1e-9)
  assert from_stats["protocol"]["num_reference"] == 45  # As the statistics' protocol says.
  other = Extractor("inception", _colour_features, {"extractor": "other"}, frozenset({"features"}))
  with pytest.raises(ConfigError, match="made with another protocol.*extractor: 'stand-in'"):
    compare.compare(str(tmp_path / "a.npz"), stats_path, other)
  with pytest.raises(ConfigError, match="already holds statistics"):
    compare.save_statistics(stats_path, EXTRACTOR, str(tmp_path / "again.npz"))


def test_one_extraction_serves_the_statistics_file_and_the_comparison(tmp_path):
  """--mode=fid --save_statistics with --reference: the input's features are computed once."""
  rng = np.random.default_rng(5)
  a, b = _images(rng, 30), _images(rng, 35, shift=10)
  np.savez(tmp_path / "a.npz", images=a)
  np.savez(tmp_path / "b.npz", images=b)
  calls = []

  def counting(images):
    calls.append(len(images))
    return _colour_features(images)

  counted = Extractor("inception", counting, {"extractor": "stand-in"}, frozenset({"features"}))
  extracted = compare.extract(str(tmp_path / "a.npz"), counted)
  compare.save_statistics(str(tmp_path / "a.npz"), counted, str(tmp_path / "s.npz"), extracted)
  once = compare.compare(
    str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), counted, input_extracted=extracted
  )
  assert sum(calls) == 30 + 35  # The input once, the reference once.
  again = compare.compare(str(tmp_path / "a.npz"), str(tmp_path / "b.npz"), EXTRACTOR)
  assert once["values"] == pytest.approx(again["values"], rel=1e-9)
