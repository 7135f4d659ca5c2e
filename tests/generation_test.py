"""Sampling controls (seeds, classes, truncation, formats), latent interpolation and the
memorisation check, on a tiny trained conditional GAN and on hand-made generators."""

import dataclasses
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats
from conftest import REPO_ROOT, load_config
from PIL import Image

import ganjax
from ganjax import errors, generation, sampling
from ganjax import latents as latents_lib
from ganjax.evaluation import extractors, nearest
from ganjax.models import blocks
from ganjax.systems import gan
from ganjax.trained import TrainedRun

# --- latents ---


def test_parse_seeds_takes_lists_and_inclusive_ranges():
  assert latents_lib.parse_seeds("0,1,5-9") == [0, 1, 5, 6, 7, 8, 9]
  assert latents_lib.parse_seeds(" 7 ,3") == [7, 3]
  for bad, message in [("a", "'a' is not a seed"), ("9-5", "runs backwards"), (",", "no seed")]:
    with pytest.raises(errors.ConfigError, match=message):
      latents_lib.parse_seeds(bad)


def test_parse_labels_names_the_valid_classes():
  assert latents_lib.parse_labels("all", 3) == [0, 1, 2]
  assert latents_lib.parse_labels("2,0", 3) == [2, 0]
  with pytest.raises(errors.ConfigError, match=r"'3' is not a class of this run; .* 0\.\.2"):
    latents_lib.parse_labels("3", 3)
  with pytest.raises(errors.ConfigError, match="unconditional"):
    latents_lib.parse_labels("1", None)


def test_a_seed_names_the_same_latent_in_any_list():
  one = latents_lib.seed_latents([3], 16)
  many = latents_lib.seed_latents([0, 3, 9], 16)
  np.testing.assert_array_equal(one[0], many[1])
  assert not np.allclose(many[0], many[1])
  # Standard normal: 20,000 seeds' components against scipy's normal CDF.
  values = latents_lib.seed_latents(range(20_000), 4).ravel()
  assert scipy.stats.kstest(values, "norm").pvalue > 1e-3


def test_resample_truncation_is_a_truncated_normal_keeping_the_components_inside():
  z = latents_lib.seed_latents(range(5000), 8)
  t = latents_lib.truncate(z, 1.0, "resample", row_seeds=np.arange(5000))
  assert np.abs(t).max() <= 1.0
  inside = np.abs(z) <= 1.0
  np.testing.assert_array_equal(t[inside], z[inside])
  # The whole is N(0, 1) truncated to [-1, 1] (scipy's truncnorm as the reference).
  assert scipy.stats.kstest(t.ravel(), scipy.stats.truncnorm(-1.0, 1.0).cdf).pvalue > 1e-3
  # A row's redraws depend on its seed, not on its position in the batch.
  again = latents_lib.truncate(z[[7]], 1.0, "resample", row_seeds=[7])
  np.testing.assert_array_equal(again[0], t[7])


def test_scale_truncation_and_its_checks():
  z = latents_lib.seed_latents([1, 2], 5)
  np.testing.assert_allclose(latents_lib.truncate(z, 0.5, "scale"), 0.5 * z)
  np.testing.assert_array_equal(latents_lib.truncate(z, None), z)
  with pytest.raises(errors.ConfigError, match=r"psi must be in \[0, 1\]"):
    latents_lib.truncate(z, 1.5, "scale")
  with pytest.raises(errors.ConfigError, match="threshold must be > 0"):
    latents_lib.truncate(z, 0.0, "resample")
  with pytest.raises(errors.ConfigError, match="valid: resample, scale"):
    latents_lib.truncate(z, 0.5, "clip")


def test_slerp_keeps_the_ends_and_walks_the_great_circle():
  a, b = np.array([3.0, 0.0]), np.array([0.0, 3.0])
  path = latents_lib.interpolate(a, b, 5, "slerp")
  np.testing.assert_allclose(path[[0, -1]], [a, b], atol=1e-6)
  np.testing.assert_allclose(np.linalg.norm(path, axis=1), 3.0, rtol=1e-6)
  angles = np.arctan2(path[:, 1], path[:, 0])
  np.testing.assert_allclose(angles, np.linspace(0, np.pi / 2, 5), atol=1e-6)
  np.testing.assert_allclose(
    latents_lib.interpolate(a, b, 5, "linear"), np.linspace(a, b, 5), atol=1e-6
  )


# --- class weights in the conditional generators ---


@pytest.mark.parametrize("layer", ["embedding", "one_hot", "batchnorm"])
def test_one_hot_class_weights_equal_integer_labels_and_mix_linearly(layer):
  x = jax.random.normal(jax.random.key(0), (4, 6))
  labels = jnp.array([0, 2, 1, 2])
  weights = jax.nn.one_hot(labels, 3)
  if layer == "batchnorm":
    module = blocks.ConditionalBatchNorm(3)
    variables = module.init(jax.random.key(1), x, labels, train=False)
    # Distinct per-class gains and biases, so that the mix is visible.
    params = dict(variables["params"])
    params["gain"] = jax.random.normal(jax.random.key(2), params["gain"].shape)
    params["bias"] = jax.random.normal(jax.random.key(3), params["bias"].shape)
    variables = {**variables, "params": params}

    def apply(y):
      return module.apply(variables, x, y, train=False)
  else:
    module = blocks.LabelEmbedding(3, 5 if layer == "embedding" else None)
    variables = module.init(jax.random.key(1), x, labels)

    def apply(y):
      return module.apply(variables, x, y)

  np.testing.assert_array_equal(apply(weights), apply(labels))
  half = 0.5 * jax.nn.one_hot(jnp.zeros(4, int), 3) + 0.5 * jax.nn.one_hot(jnp.full(4, 2), 3)
  mixed = 0.5 * apply(jnp.zeros(4, int)) + 0.5 * apply(jnp.full(4, 2))
  np.testing.assert_allclose(apply(half), mixed, rtol=1e-5, atol=1e-6)


def test_discriminator_heads_still_refuse_class_weights():
  head = blocks.ProjectionHead(3)
  features = jnp.ones((2, 4))
  with pytest.raises(ValueError, match="labels must have shape"):
    head.init(jax.random.key(0), features, jnp.ones((2, 3)), train=False)


# --- on a trained conditional GAN ---


@pytest.fixture(scope="module")
def cgan_run(tmp_path_factory):
  config = load_config("cgan", "runlocal")
  config.model.generator.conv_impl = config.model.discriminator.conv_impl = "xla"
  config.parallel.num_devices = 1
  workdir = str(tmp_path_factory.mktemp("cgan") / "run")
  gan.train_and_evaluate(config, workdir)
  return workdir


def test_seeds_and_labels_draw_one_row_per_class_reproducibly(cgan_run, tmp_path):
  run = ganjax.load(cgan_run)
  request = generation.SampleRequest(seeds=[0, 3, 5], labels=[7, 2])
  drawn = generation.draw(run, request)
  assert drawn.samples.shape == (6, 28, 28, 1) and drawn.columns == 3
  assert drawn.labels.tolist() == [7, 7, 7, 2, 2, 2]
  assert drawn.names[:2] == ["seed0000_class7", "seed0003_class7"]
  # Seed 3 of class 2 alone is the same image as in the grid.
  alone = generation.draw(run, generation.SampleRequest(seeds=[3], labels=[2]))
  np.testing.assert_allclose(alone.samples[0], drawn.samples[4], atol=1e-6)
  # The grid PNG: 2 rows of 3 digits (30-pixel cells with the padding).
  output = str(tmp_path / "grid.png")
  generation.write_samples(run, request, output)
  assert Image.open(output).size == (3 * 30 + 2, 2 * 30 + 2)
  saved = np.load(str(tmp_path / "grid.npz"))
  assert saved["seeds"].tolist() == [0, 3, 5, 0, 3, 5]
  np.testing.assert_array_equal(saved["samples"], drawn.samples)
  # Truncation changes the latents, and so the images.
  truncated = generation.draw(run, dataclasses.replace(request, truncation=0.3))
  assert np.abs(truncated.latents).max() <= 0.3
  assert not np.allclose(truncated.samples, drawn.samples)


def test_folder_format_writes_one_png_per_sample(cgan_run, tmp_path):
  run = ganjax.load(cgan_run)
  folder = str(tmp_path / "images")
  generation.write_samples(
    run, generation.SampleRequest(seeds=[1, 2], labels=[4]), folder, "folder"
  )
  names = sorted(os.listdir(folder))
  assert names == ["seed0001_class4.png", "seed0002_class4.png"]
  pixels = np.asarray(Image.open(os.path.join(folder, names[1])))
  expected = generation.draw(run, generation.SampleRequest(seeds=[2], labels=[4])).samples
  np.testing.assert_array_equal(pixels, sampling.to_uint8(expected)[0, ..., 0])
  with pytest.raises(errors.ConfigError, match="valid: png, npz, folder"):
    generation.write_samples(run, generation.SampleRequest(seeds=[1]), folder, "jpeg")


def test_interpolation_grid_and_gif_with_interpolated_classes(cgan_run, tmp_path):
  run = ganjax.load(cgan_run)
  output = str(tmp_path / "walk.png")
  png, gif = generation.write_interpolation(run, output, [4, 9, 2], frames=5, labels=[1, 6, 3])
  # Two paths (4 -> 9, 9 -> 2) of 5 frames.
  assert Image.open(png).size == (5 * 30 + 2, 2 * 30 + 2)
  # The GIF walks 4 -> 9 -> 2 -> 4 without repeating the joints: 5 + 4 + 4 frames.
  with Image.open(gif) as animation:
    assert animation.n_frames == 13
    assert animation.size == (28 * 5, 28 * 5)  # Enlarged to >= 128 pixels.
  # The ends of the paths are the seeds' images of their own classes.
  z, weights = generation.interpolation_inputs(run, [4, 9], 5, "slerp", [1, 6])
  ends = run.generate(z, weights)[[0, -1]]
  own = generation.draw(run, generation.SampleRequest(seeds=[4], labels=[1])).samples[0]
  np.testing.assert_allclose(ends[0], own, atol=1e-5)
  np.testing.assert_allclose(weights[2], [0, 0.5, 0, 0, 0, 0, 0.5, 0, 0, 0], atol=1e-6)
  with pytest.raises(errors.ConfigError, match="one class per seed"):
    generation.write_interpolation(run, output, [1, 2, 3], frames=3, labels=[1, 2])


def test_cli_sample_folder_and_bad_flags(cgan_run, tmp_path):
  def cli(*args):
    return subprocess.run(
      [sys.executable, "-m", "ganjax.main", f"--workdir={cgan_run}", *args],
      capture_output=True,
      text=True,
      cwd=REPO_ROOT,
      timeout=300,
    )

  folder = tmp_path / "folder"
  done = cli("--mode=sample", "--seeds=0-2", "--labels=5", "--format=folder", f"--output={folder}")
  assert done.returncode == 0, done.stderr[-2000:]
  assert sorted(os.listdir(folder)) == [f"seed000{s}_class5.png" for s in range(3)]
  for args, message in [
    (["--mode=interpolate", "--seeds=1"], "needs two seeds or more"),
    (["--mode=interpolate"], "needs --seeds=A,B"),
    (["--mode=sample", "--seeds=x"], "'x' is not a seed"),
    (["--mode=sample", "--truncation=2", "--truncation_mode=scale"], r"psi must be in \[0, 1\]"),
    (["--mode=sample", "--seeds=1", "--labels=12"], r"'12' is not a class of this run"),
  ]:
    failed = cli(*args)
    assert failed.returncode == 2, (args, failed.stderr[-2000:])
    lines = failed.stderr.strip().splitlines()
    assert lines[-1].startswith("ganjax: error: ") and message_found(message, lines[-1]), lines


def message_found(pattern, line):
  import re

  return re.search(pattern, line) is not None


# --- the memorisation check ---


def test_nearest_equals_brute_force():
  rng = np.random.default_rng(0)
  queries, references = rng.normal(size=(37, 12)), rng.normal(size=(300, 12))
  distances, indices = nearest.nearest(queries, references, k=4, chunk=10)
  full = scipy.spatial.distance.cdist(queries, references)
  np.testing.assert_array_equal(indices, np.argsort(full, axis=1)[:, :4])
  np.testing.assert_allclose(distances, np.sort(full, axis=1)[:, :4], rtol=1e-9)


class _Projection(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(16)(x.reshape(len(x), -1))


def _random_features() -> extractors.Extractor:
  """A fixed random projection as a feature space (a stand-in for the classifier)."""
  module = _Projection()
  params = module.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  return extractors.Extractor(
    "projection", lambda x: {"features": np.asarray(module.apply(params, x))}, {}
  )


def _fake_run(config, generate_fn) -> TrainedRun:
  return TrainedRun(
    "fake", config, 0, None, None, latent_dim=4, generate_fn=lambda z, labels: generate_fn(z)
  )


def test_memorisation_check_tells_a_copying_generator_from_a_new_one(cgan_run, tmp_path):
  config = ganjax.load(cgan_run).config
  train, _, source = nearest.training_and_held_out(config, 60_000, 1000)
  assert "no test split" in source and len(train) == 4000

  def copying(z):  # Draws training images, slightly jittered.
    picks = np.abs((z[:, 0] * 1e4).astype(int)) % len(train)
    return np.clip(train[picks] + 0.01 * z[:, 1:2, None, None], -1, 1)

  def blurred(z):  # New images: averages of two training images.
    a = np.abs((z[:, 0] * 1e4).astype(int)) % len(train)
    b = np.abs((z[:, 1] * 1e4).astype(int)) % len(train)
    return 0.5 * (train[a] + train[b])

  results = {}
  for name, fn in [("copying", copying), ("new", blurred)]:
    out = str(tmp_path / name)
    results[name] = nearest.memorisation_check(
      _fake_run(config, fn), out, num_samples=200, k=3, extractor=_random_features()
    )
    assert sorted(os.listdir(out)) == [
      "distances.png",
      "nearest.json",
      "nearest_features.png",
      "nearest_pixels.png",
    ]
    # 16 rows of a sample, a blank and 3 neighbours.
    assert Image.open(os.path.join(out, "nearest_pixels.png")).size == (5 * 30 + 2, 16 * 30 + 2)
  for space in ("pixels", "projection features"):
    assert results["copying"]["spaces"][space]["copying_likely"], space
    assert results["copying"]["spaces"][space]["fraction_below_held_out_p01"] > 0.9
    assert not results["new"]["spaces"][space]["copying_likely"], space


def test_memorisation_check_of_the_trained_run_in_pixels(cgan_run, tmp_path):
  result = nearest.memorisation_check(
    ganjax.load(cgan_run), str(tmp_path / "nn"), num_samples=50, k=2, extractor=None
  )
  assert list(result["spaces"]) == ["pixels"]
  # A 6-step GAN draws blobs far from every digit: farther than the held-out digits are.
  values = result["spaces"]["pixels"]
  assert values["generated"]["median"] > values["held_out"]["median"]
  assert not values["copying_likely"]


def test_load_sample_takes_seeds_and_truncation(cgan_run):
  run = ganjax.load(cgan_run)
  by_seed = run.sample(seeds=[0, 3], labels=2)
  drawn = generation.draw(run, generation.SampleRequest(seeds=[0, 3], labels=[2]))
  np.testing.assert_allclose(by_seed, drawn.samples, atol=1e-6)
  truncated = run.sample(seeds=[0, 3], labels=2, truncation=0.3)
  request = generation.SampleRequest(seeds=[0, 3], labels=[2], truncation=0.3)
  np.testing.assert_allclose(truncated, generation.draw(run, request).samples, atol=1e-6)
  # Truncating the run's fixed latents (psi = 1 leaves them).
  np.testing.assert_allclose(
    run.sample(4, seed=1, labels=5, truncation=1.0, truncation_mode="scale"),
    run.sample(4, seed=1, labels=5),
    atol=1e-6,
  )
  with pytest.raises(errors.ConfigError, match="num_samples=3 but 2 seeds"):
    run.sample(3, seeds=[0, 1], labels=1)
