"""The MNIST-like domain classifier: its network and inference (ganjax.evaluation.domain_classifier)
and its training (ganjax.systems.classifier, configs/classifier.py)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct

import conftest
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tolerances

from ganjax import data as data_lib
from ganjax import errors, parallel
from ganjax.data import embedded, preprocessing
from ganjax.evaluation import domain_classifier as classifier
from ganjax.metrics import stacked_mnist_modes
from ganjax.systems import classifier as classifier_system

# Accuracy on the 500 held-out embedded digits after 300 steps of batch 32 (about 2 epochs of the
# 4,500 training digits, ~25 s on one CPU core): 0.950 at seed 0 when written. Asserted with margin.
SMALL_RUN_STEPS = 300
SMALL_RUN_BATCH = 32
SMALL_RUN_MIN_ACCURACY = 0.9


def embedded_batch(num, start=0):
  images, labels = embedded.load()
  rows = np.arange(start, start + num * 10, 10) % len(labels)  # Every class.
  return preprocessing.to_float(images[rows]), labels[rows]


def write_idx(path, array):
  array = np.asarray(array, np.uint8)
  header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def write_mnist_idx(folder, num_train=64, num_test=20, image_size=28):
  """IDX files of embedded digits: train-* (num_train) and t10k-* (num_test)."""
  folder.mkdir()
  images, labels = embedded.load()
  rows = np.random.default_rng(0).permutation(len(labels))[: num_train + num_test]
  digits = images[rows, ..., 0]
  if image_size != 28:
    digits = preprocessing.resize_images(digits, image_size)[..., 0]
  for prefix, part in (("train", slice(0, num_train)), ("t10k", slice(num_train, None))):
    write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", digits[part])
    write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels[rows][part])
  return folder


@pytest.fixture(scope="module")
def params():
  return classifier.init_params(jax.random.key(0))


def _features_length(params) -> int:
  """Terms accumulated up to the 128 features: the fan-ins of the layers before the last."""
  return tolerances.summed_fan_in({k: v for k, v in params.items() if k != "Dense_1"})


def assert_outputs_close(outputs, reference, params, err_msg=""):
  """``(logits, features)`` of the same images in other batches or on other devices: equal up to
  the round-off of the network's summed fan-ins (the features' without the last layer), at
  the scale of each output."""
  logits, features = outputs
  want_logits, want_features = reference
  tolerances.assert_float32_close(
    logits, want_logits, length=tolerances.summed_fan_in(params), err_msg=err_msg
  )
  tolerances.assert_float32_close(
    features, want_features, length=_features_length(params), err_msg=err_msg
  )


def test_shapes_parameters_and_features(params):
  counts = {k: classifier.parameter_count(v) for k, v in params.items()}
  # 3*3*1*32+32, 3*3*32*64+64, 7*7*64*128+128, 128*10+10.
  assert counts == {"Conv_0": 320, "Conv_1": 18_496, "Dense_0": 401_536, "Dense_1": 1_290}
  assert classifier.parameter_count(params) == 421_642
  images, _ = embedded_batch(5)
  logits, features = classifier.apply(params, images)
  assert logits.shape == (5, 10) and features.shape == (5, classifier.FEATURE_DIM) == (5, 128)
  assert logits.dtype == features.dtype == jnp.float32
  assert float(jnp.min(features)) >= 0.0  # After the ReLU.


def test_predict_batches_and_pads(params):
  images, _ = embedded_batch(37)
  logits, features = classifier.predict(params, images, batch_size=16)
  full_logits, full_features = classifier.apply(params, images)
  assert logits.shape == (37, 10) and features.shape == (37, 128)
  # Other batch positions, sizes and devices than one batch of 37.
  assert_outputs_close((logits, features), (full_logits, full_features), params)
  # The classes are the argmax of those logits, up to rows whose top two logits tie within it.
  logits_atol = tolerances.float32_atol(tolerances.summed_fan_in(params), np.abs(full_logits).max())
  tolerances.assert_same_argmax(
    classifier.classify(params, images, batch_size=16), full_logits, atol=logits_atol
  )
  np.testing.assert_array_equal(classifier.classifier_features(params, images[:0]).shape, (0, 128))


@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")
def test_predict_sharded_equals_one_device(params):
  """13 images: batches of 5 round up to 8 on 8 devices (8 + 5 padded) and to 6 on 3 (6 + 6 + 1
  padded); the outputs equal one device's, and a repeated call compiles nothing new."""
  images, _ = embedded_batch(13)
  one = classifier.predict(params, images, batch_size=5, mesh=parallel.make_mesh(1))
  eight = classifier.predict(params, images, batch_size=5)  # Default: all 8 devices.
  compiled = classifier._apply_fn(classifier.NUM_CLASSES)._cache_size()
  again = classifier.predict(params, images, batch_size=5, mesh=parallel.make_mesh(8))
  assert classifier._apply_fn(classifier.NUM_CLASSES)._cache_size() == compiled
  three = classifier.predict(params, images, batch_size=5, mesh=parallel.make_mesh(3))
  for outputs in (eight, again, three):
    assert outputs[0].shape == (13, 10) and outputs[1].shape == (13, 128)
    assert_outputs_close(outputs, one, params)  # Other device counts split the batches.
  tolerances.assert_bitwise_equal(again, eight)  # The same program on the same 8 devices.
  logits_atol = tolerances.float32_atol(tolerances.summed_fan_in(params), np.abs(one[0]).max())
  tolerances.assert_same_argmax(
    classifier.classify(params, images, batch_size=5), one[0], atol=logits_atol
  )


def test_dropout_only_in_training(params):
  images, _ = embedded_batch(4)
  model = classifier.Classifier()
  eval_a = model.apply({"params": params}, images)[0]
  eval_b = model.apply({"params": params}, images, train=False)[0]
  np.testing.assert_array_equal(eval_a, eval_b)
  train = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(1)})
  # Dropout changes the logits far beyond the network's round-off.
  tolerances.assert_differ_beyond_roundoff(
    train[0], eval_a, length=tolerances.summed_fan_in(params)
  )
  np.testing.assert_array_equal(train[1], model.apply({"params": params}, images)[1])


@pytest.mark.parametrize("shape", [(2, 28, 28, 3), (2, 32, 32, 1), (28, 28, 1)])
def test_bad_image_shapes(params, shape):
  with pytest.raises(ValueError, match=r"\(N, 28, 28, 1\).*" + re_shape(shape)):
    classifier.apply(params, np.zeros(shape, np.float32))


def re_shape(shape):
  return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")


def test_classify_channels_classifies_each_channel(params):
  gray = [embedded_batch(6, start=s)[0] for s in (0, 3, 7)]
  stacked = np.concatenate(gray, axis=-1)
  digits = classifier.classify_channels(params, stacked, batch_size=5)
  assert digits.shape == (6, 3) and digits.dtype == np.int32
  for channel in range(3):  # Other batches: the argmax up to ties within the logits' round-off.
    logits = classifier.predict(params, gray[channel])[0]
    atol = tolerances.float32_atol(tolerances.summed_fan_in(params), np.abs(logits).max())
    tolerances.assert_same_argmax(digits[:, channel], logits, atol=atol)
  assert stacked_mnist_modes(digits)["mode_histogram"].sum() == 6
  with pytest.raises(ValueError, match=r"\(N, 28, 28, C\).*\(6, 32, 32, 3\)"):
    classifier.classify_channels(params, np.zeros((6, 32, 32, 3)))


def test_train_step_reduces_loss_and_is_pure():
  images, labels = embedded_batch(64)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  state = classifier_system.create_train_state(jax.random.key(0), optax.adam(1e-3))
  step = jax.jit(classifier_system.train_step)
  rng = jax.random.key(1)
  again, _ = step(state, batch, rng)
  first, metrics = step(state, batch, rng)
  assert set(metrics) == {"loss", "accuracy", "grad_norm"}
  jax.tree.map(np.testing.assert_array_equal, again.params, first.params)  # Same inputs, same out.
  losses = [float(metrics["loss"])]
  state = first
  for _ in range(30):
    state, metrics = step(state, batch, rng)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 31
  assert losses[0] > 2.0 and losses[-1] < 0.5 * losses[0]
  assert float(metrics["accuracy"]) > 0.8


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The small run on the embedded digits (shared by the tests that read its workdir)."""
  config = conftest.load_config("classifier", "dataset=embedded_mnist")
  config.num_train_steps = SMALL_RUN_STEPS
  config.batch_size = SMALL_RUN_BATCH
  workdir = str(tmp_path_factory.mktemp("classifier"))
  return workdir, classifier_system.train_classifier(config, workdir)


def test_small_run_reaches_accuracy(trained):
  workdir, evaluation = trained
  assert evaluation["test_accuracy"] >= SMALL_RUN_MIN_ACCURACY, evaluation
  assert evaluation["num_test_examples"] == 500
  assert evaluation["num_test_errors"] == round(500 * (1 - evaluation["test_accuracy"]))
  assert evaluation["train"]["num_train_examples"] == 4500
  assert "held out" in evaluation["dataset"]["split"]
  assert evaluation["dataset"]["name"] == "embedded_mnist"
  with open(os.path.join(workdir, classifier.EVAL_FILE)) as f:
    assert json.load(f) == json.loads(json.dumps(evaluation))
  with open(os.path.join(workdir, classifier.PARAMS_FILE), "rb") as f:
    assert hashlib.sha256(f.read()).hexdigest() == evaluation["params_sha256"]
  assert os.path.exists(os.path.join(workdir, "config.json"))


def _resume_config(num_train_steps):
  config = conftest.load_config("classifier", "runlocal")
  config.num_train_steps = num_train_steps
  config.checkpoint_every_steps = 2
  config.log_every_steps = 2
  config.optim.schedule = "constant"  # The cosine schedule depends on num_train_steps.
  return config


def test_resume_equals_an_uninterrupted_run(tmp_path):
  """A run stopped at step 3 and rerun to step 5 in its workdir ends where a run of 5 steps does;
  both write TensorBoard events and metrics.jsonl."""
  whole = classifier_system.train_classifier(_resume_config(5), str(tmp_path / "whole"))
  workdir = str(tmp_path / "resumed")
  first = classifier_system.train_classifier(_resume_config(3), workdir)
  assert first["train"]["resumed_from_step"] == 0
  assert sorted(os.listdir(os.path.join(workdir, classifier_system.CHECKPOINT_DIR))) == ["2", "3"]
  resumed = classifier_system.train_classifier(_resume_config(5), workdir)
  assert resumed["train"]["resumed_from_step"] == 3
  assert resumed["params_sha256"] == whole["params_sha256"]
  assert resumed["test_accuracy"] == whole["test_accuracy"]
  _, params = classifier.load_classifier(workdir)  # The final params file, as before.
  _, whole_params = classifier.load_classifier(str(tmp_path / "whole"))
  jax.tree.map(np.testing.assert_array_equal, params, whole_params)

  with open(os.path.join(workdir, classifier_system.METRICS_FILE)) as f:
    records = [json.loads(line) for line in f]
  train_steps = [r["step"] for r in records if "loss" in r]
  assert train_steps == [2, 3, 4, 5]  # Run 1 logs 2 and its last step 3; run 2 logs 4 and 5.
  assert {"accuracy", "grad_norm", "steps_per_sec", "images_per_sec"} <= set(records[0])
  assert [r["step"] for r in records if "test_accuracy" in r] == [3, 5]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))
  with pytest.raises(errors.WorkdirError, match=r"checkpoint at step 5, beyond .*steps=4"):
    classifier_system.train_classifier(_resume_config(4), workdir)


def test_holdout_is_never_trained_on():
  train, test = classifier_system.embedded_holdout()
  _, labels = embedded.load()
  assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == 5000
  np.testing.assert_array_equal(np.bincount(labels[test]), [50] * 10)


def test_load_classifier_round_trip(trained):
  workdir, evaluation = trained
  apply, params = classifier.load_classifier(workdir)
  train, test = classifier_system.embedded_holdout()
  images, labels = embedded.load()
  logits, features = apply(params, preprocessing.to_float(images[test]))
  assert features.shape == (500, 128)
  correct = int(np.sum(np.argmax(logits, -1) == labels[test]))
  # The evaluation ran in other batches on other devices: only a row whose top two logits tie
  # within their round-off may be classified otherwise.
  atol = tolerances.float32_atol(tolerances.summed_fan_in(params), np.abs(logits).max())
  ambiguous = int(np.sum(tolerances.argmax_ambiguous(logits, atol)))
  recorded = round(evaluation["test_accuracy"] * 500)
  assert abs(correct - recorded) <= ambiguous, (correct, recorded, ambiguous)
  # On Stacked MNIST, the channel-wise digits recover the data's modes.
  source = data_lib.create_source(_stacked_config(), seed=0, batch_size=200)
  batch = next(source.batches(0))
  digits = classifier.classify_channels(params, batch["image"])
  true = np.stack([batch["label"] // 100, batch["label"] // 10 % 10, batch["label"] % 10], 1)
  assert np.mean(digits == true) >= SMALL_RUN_MIN_ACCURACY


def _stacked_config():
  config = conftest.load_config("classifier").data
  config.name = "stacked_mnist"
  return config


def test_load_classifier_errors(trained, tmp_path):
  with pytest.raises(FileNotFoundError, match="classifier_eval.json"):
    classifier.load_classifier(str(tmp_path))
  workdir, _ = trained
  copy = tmp_path / "copy"
  copy.mkdir()
  for name in (classifier.EVAL_FILE, classifier.PARAMS_FILE):
    (copy / name).write_bytes(open(os.path.join(workdir, name), "rb").read())
  params_path = copy / classifier.PARAMS_FILE
  params_path.write_bytes(params_path.read_bytes()[:-1] + b"\x00")
  with pytest.raises(ValueError, match="sha256"):
    classifier.load_classifier(str(copy))


def test_idx_train_and_test_splits(tmp_path):
  """mnist from IDX files: trains on train-*, evaluates on every t10k-* example once."""
  folder = write_mnist_idx(tmp_path / "mnist", num_train=64, num_test=20)
  config = conftest.load_config("classifier", "dataset=mnist,runlocal")
  config.data.dir = str(folder)
  evaluation = classifier_system.train_classifier(config, str(tmp_path / "run"))
  assert evaluation["num_test_examples"] == 20
  assert evaluation["dataset"]["source"] == "idx" and evaluation["dataset"]["split"] == "test"
  assert evaluation["dataset"]["path"].endswith("t10k-images-idx3-ubyte.gz")
  assert evaluation["train"]["num_train_examples"] == 64
  assert evaluation["train"]["num_train_steps"] == 6


def test_bad_data_errors(tmp_path):
  config = conftest.load_config("classifier", "runlocal")
  config.data.split = "test"
  with pytest.raises(ValueError, match="data.split='test'"):
    classifier_system.train_classifier(config, str(tmp_path / "a"))
  folder = write_mnist_idx(tmp_path / "mnist32", num_train=32, num_test=8, image_size=32)
  config = conftest.load_config("classifier", "dataset=mnist,runlocal")
  config.data.dir = str(folder)
  with pytest.raises(ValueError, match=r"28x28x1.*\(32, 32, 1\)"):
    classifier_system.train_classifier(config, str(tmp_path / "b"))
  config = conftest.load_config("classifier", "runlocal")
  config.model.dropout = 1.0
  with pytest.raises(ValueError, match=r"config.model.dropout.*\[0, 1\).*1.0"):
    classifier_system.train_classifier(config, str(tmp_path / "c"))
  config = conftest.load_config("classifier", "runlocal")
  config.optim.schedule = "step"
  with pytest.raises(ValueError, match=r"optim.schedule='step'.*constant, linear, cosine"):
    classifier_system.train_classifier(config, str(tmp_path / "d"))


def test_folder_without_test_split_is_refused(tmp_path):
  from PIL import Image

  for label in range(10):
    (tmp_path / "images" / str(label)).mkdir(parents=True)
    for i in range(2):
      Image.new("L", (28, 28), 40 * i).save(tmp_path / "images" / str(label) / f"{i}.png")
  config = conftest.load_config("classifier", "runlocal")
  config.data.name = "folder"
  config.data.dir = str(tmp_path / "images")
  config.data.channels = 1
  config.batch_size = 4
  with pytest.raises(ValueError, match=r"'folder' has no test split"):
    classifier_system.train_classifier(config, str(tmp_path / "run"))


@pytest.mark.parametrize(
  "arg,name,steps",
  [
    (None, "embedded_mnist", 1000),
    ("dataset=mnist", "mnist", 3750),
    ("dataset=fashion_mnist", "fashion_mnist", 3750),
    ("dataset=mnist,runlocal", "mnist", 6),
  ],
)
def test_config(arg, name, steps):
  config = conftest.load_config("classifier", arg)
  assert config.task == "classifier"
  assert config.data.name == name and config.data.dir is None and config.data.split == "train"
  assert config.num_train_steps == steps


def test_config_bad_dataset():
  with pytest.raises(ValueError, match=r"'cifar10'.*embedded_mnist, mnist, fashion_mnist"):
    conftest.load_config("classifier", "dataset=cifar10")
