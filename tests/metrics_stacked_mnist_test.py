"""Tests for ganjax.metrics.stacked_mnist: modes covered and KL to uniform on 1000 modes."""

from __future__ import annotations

import itertools
import math

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from ganjax import metrics
from ganjax.metrics import stacked_mnist

ALL_TRIPLES = np.array(list(itertools.product(range(10), repeat=3)))


def test_package_exports():
  assert metrics.stacked_mnist_modes is stacked_mnist.stacked_mnist_modes
  assert stacked_mnist.NUM_MODES == 1000


def test_every_mode_once_is_uniform():
  result = metrics.stacked_mnist_modes(ALL_TRIPLES)
  assert set(result) == {"modes", "reverse_kl", "mode_histogram"}
  assert result["modes"] == 1000 and isinstance(result["modes"], int)
  assert result["reverse_kl"] == pytest.approx(0.0, abs=1e-12)
  np.testing.assert_array_equal(result["mode_histogram"], np.ones(1000))
  assert result["mode_histogram"].dtype == np.int64


def test_mode_index_is_hundreds_tens_units():
  result = metrics.stacked_mnist_modes([[1, 2, 3], [9, 0, 7], [1, 2, 3], [0, 0, 0]])
  assert result["modes"] == 3
  histogram = result["mode_histogram"]
  assert histogram[123] == 2 and histogram[907] == 1 and histogram[0] == 1
  assert histogram.sum() == 4


def test_total_collapse():
  result = metrics.stacked_mnist_modes(np.tile([[4, 4, 2]], (500, 1)))
  assert result["modes"] == 1
  assert result["reverse_kl"] == pytest.approx(math.log(1000), rel=1e-12)


@pytest.mark.parametrize("num_covered", [1, 10, 250, 999])
def test_even_subset_of_modes(num_covered):
  rng = np.random.default_rng(num_covered)
  covered = ALL_TRIPLES[rng.permutation(1000)[:num_covered]]
  labels = rng.permutation(np.repeat(covered, 3, axis=0))
  result = metrics.stacked_mnist_modes(jnp.asarray(labels, jnp.int32))
  assert result["modes"] == num_covered
  assert result["reverse_kl"] == pytest.approx(math.log(1000 / num_covered), rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_random_labels_match_scipy(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=(2000, 3))
  labels[:, 0] = np.minimum(labels[:, 0], 6)  # Digits 7..9 never appear in channel 0.
  result = metrics.stacked_mnist_modes(labels.astype(np.uint8))
  modes = labels[:, 0] * 100 + labels[:, 1] * 10 + labels[:, 2]
  expected = np.bincount(modes, minlength=1000)
  np.testing.assert_array_equal(result["mode_histogram"], expected)
  assert result["modes"] == len(np.unique(modes)) <= 700
  kl = scipy.stats.entropy(expected, np.full(1000, 1 / 1000))
  assert result["reverse_kl"] == pytest.approx(kl, rel=1e-10)


def test_validation():
  with pytest.raises(ValueError, match=r"digit_labels must have shape \(num_samples, 3\), one dig"):
    metrics.stacked_mnist_modes(np.zeros((5, 2), int))
  with pytest.raises(ValueError, match=r"got shape \(3,\)"):
    metrics.stacked_mnist_modes(np.zeros(3, int))
  with pytest.raises(ValueError, match=r"digit_labels must not be empty, got shape \(0, 3\)"):
    metrics.stacked_mnist_modes(np.zeros((0, 3), int))
  with pytest.raises(ValueError, match=r"digits in 0..9, got 10 at row 1, channel 2"):
    metrics.stacked_mnist_modes([[0, 0, 0], [1, 1, 10]])
  with pytest.raises(ValueError, match=r"digits in 0..9, got -1 at row 0, channel 0"):
    metrics.stacked_mnist_modes([[-1, 0, 0]])
  with pytest.raises(TypeError, match="digit_labels must be an integer array, got dtype float64"):
    metrics.stacked_mnist_modes(np.zeros((4, 3)))
