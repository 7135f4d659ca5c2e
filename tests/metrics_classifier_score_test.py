"""Tests for ganjax.metrics.classifier_score: the Inception Score from class probabilities."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats

from ganjax import metrics
from ganjax.metrics import classifier_score


def entropy_reference(probabilities, num_splits):
  """IS with scipy.stats.entropy, split like the authors' code."""
  probabilities = np.asarray(probabilities, np.float64)
  n = len(probabilities)
  scores = []
  for split in range(num_splits):
    part = probabilities[split * n // num_splits : (split + 1) * n // num_splits]
    marginal = part.mean(axis=0)
    scores.append(np.exp(np.mean([scipy.stats.entropy(row, marginal) for row in part])))
  return np.mean(scores), np.std(scores)


def test_package_exports():
  assert metrics.inception_score is classifier_score.inception_score
  assert metrics.InceptionScore is classifier_score.InceptionScore


def test_identical_predictions_score_one():
  row = scipy.special.softmax(np.random.default_rng(0).normal(size=7))
  result = metrics.inception_score(np.tile(row, (50, 1)), num_splits=5)
  assert result.mean == pytest.approx(1.0, abs=1e-12)
  assert result.std == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("num_classes", [1, 2, 10])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_evenly_used_one_hot_classes_score_num_classes(num_classes, num_splits):
  labels = np.tile(np.arange(num_classes), 4 * num_splits)  # Every split uses every class 4 times.
  result = metrics.inception_score(np.eye(num_classes)[labels], num_splits=num_splits)
  assert result.mean == pytest.approx(num_classes, rel=1e-12)
  assert result.std == pytest.approx(0.0, abs=1e-12)


def test_one_hot_on_a_subset_of_classes():
  # Confident predictions spread evenly over 4 of 10 classes: IS = 4, whatever the other classes.
  labels = np.tile([0, 3, 5, 9], 10)
  assert metrics.inception_score(np.eye(10)[labels], num_splits=2).mean == pytest.approx(4.0)


@pytest.mark.parametrize("num_splits", [1, 4, 10])
@pytest.mark.parametrize("seed", range(3))
def test_matches_entropy_reference_on_random_softmaxes(num_splits, seed):
  rng = np.random.default_rng(seed)
  logits = rng.normal(0.0, 3.0, size=(103, 12))  # 103 rows: splits of unequal size.
  probabilities = scipy.special.softmax(logits, axis=-1)
  expected_mean, expected_std = entropy_reference(probabilities, num_splits)
  result = metrics.inception_score(probabilities, num_splits=num_splits)
  assert isinstance(result.mean, float) and isinstance(result.std, float)
  assert result.mean == pytest.approx(expected_mean, rel=1e-10)
  assert result.std == pytest.approx(expected_std, rel=1e-8, abs=1e-12)
  # float32 jax softmaxes: rows sum to 1 up to ~1e-7 (scipy's entropy renormalizes them).
  single = metrics.inception_score(jax.nn.softmax(jnp.asarray(logits)), num_splits=num_splits)
  assert single.mean == pytest.approx(expected_mean, rel=1e-6)
  assert 1.0 <= result.mean <= 12.0
  mean, std = result  # A NamedTuple.
  assert (mean, std) == (result.mean, result.std)


def test_exact_zeros_are_allowed():
  probabilities = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.0, 0.5, 0.5], [1.0, 0.0, 0.0]])
  expected_mean, _ = entropy_reference(probabilities, 1)
  result = metrics.inception_score(probabilities, num_splits=1)
  assert np.isfinite(result.mean)
  assert result.mean == pytest.approx(expected_mean, rel=1e-12)


def test_validation():
  good = np.full((6, 3), 1 / 3)
  with pytest.raises(ValueError, match=r"probabilities must be a non-empty 2-D array .*\(6,\)"):
    metrics.inception_score(np.full(6, 1 / 6))
  with pytest.raises(ValueError, match=r"non-empty 2-D array .*got shape \(0, 3\)"):
    metrics.inception_score(np.zeros((0, 3)))
  with pytest.raises(ValueError, match="probabilities must be finite"):
    metrics.inception_score(np.full((6, 3), np.nan))
  with pytest.raises(ValueError, match=r"must be non-negative, got minimum -1; pass softmax"):
    metrics.inception_score(np.array([[2.0, -1.0], [0.5, 0.5]]), num_splits=1)
  unnormalized = good.copy()
  unnormalized[4] = [0.5, 0.5, 0.5]
  with pytest.raises(ValueError, match=r"Every row of probabilities must sum to 1, but row 4 sums"):
    metrics.inception_score(unnormalized, num_splits=2)
  with pytest.raises(ValueError, match=r"num_splits must be <= the number of samples \(6\), got 7"):
    metrics.inception_score(good, num_splits=7)
  with pytest.raises(ValueError, match="num_splits must be >= 1, got 0"):
    metrics.inception_score(good, num_splits=0)
  with pytest.raises(TypeError, match="num_splits must be an int, got float"):
    metrics.inception_score(good, num_splits=2.0)
  with pytest.raises(TypeError, match="probabilities must be a real numeric array"):
    metrics.inception_score(np.array([["a"]]))
