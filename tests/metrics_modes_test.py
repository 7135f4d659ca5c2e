"""Tests for ganjax.metrics.modes: VEEGAN / PacGAN mode coverage on the 2-D mixtures."""

from __future__ import annotations

import math

import ml_collections
import numpy as np
import pytest
import scipy.stats

from ganjax import data, metrics
from ganjax.data import gaussian_mixture
from ganjax.metrics import modes as modes_lib

MIXTURES = [("ring", 8, 0.01), ("grid", 25, 0.05)]
# P(||x - mu|| < 3 sigma) for an isotropic 2-D Gaussian (Rayleigh distribution).
HQ_PROBABILITY_2D = 1 - math.exp(-4.5)


def points_at_modes(name, counts):
  """counts[k] copies of mode k's centre, shuffled."""
  centres = gaussian_mixture.mixture_modes(name)
  points = np.repeat(centres, counts, axis=0)
  return np.random.default_rng(0).permutation(points)


def kl_to_uniform(histogram):
  histogram = np.asarray(histogram, dtype=np.float64)
  return scipy.stats.entropy(histogram, np.full(len(histogram), 1 / len(histogram)))


def test_package_exports():
  assert metrics.mode_coverage is modes_lib.mode_coverage
  assert metrics.mixture_mode_coverage is modes_lib.mixture_mode_coverage
  assert "FID" in metrics.__doc__


@pytest.mark.parametrize("name,num_modes,sigma", MIXTURES)
def test_samples_exactly_at_modes(name, num_modes, sigma):
  result = metrics.mixture_mode_coverage(points_at_modes(name, [7] * num_modes), name)
  assert set(result) == {"modes", "hq_fraction", "reverse_kl", "mode_histogram"}
  assert result["modes"] == num_modes and isinstance(result["modes"], int)
  assert result["hq_fraction"] == 1.0 and isinstance(result["hq_fraction"], float)
  assert result["reverse_kl"] == pytest.approx(0.0, abs=1e-12)
  assert result["reverse_kl"] >= 0.0
  np.testing.assert_array_equal(result["mode_histogram"], np.full(num_modes, 7))
  assert result["mode_histogram"].dtype == np.int64


@pytest.mark.parametrize("name,num_modes,sigma", MIXTURES)
def test_total_collapse_to_one_mode(name, num_modes, sigma):
  counts = np.zeros(num_modes, dtype=int)
  counts[3] = 100
  result = metrics.mixture_mode_coverage(points_at_modes(name, counts), name)
  assert result["modes"] == 1
  assert result["hq_fraction"] == 1.0
  assert result["reverse_kl"] == pytest.approx(math.log(num_modes), rel=1e-12)
  np.testing.assert_array_equal(result["mode_histogram"], counts)


@pytest.mark.parametrize("name,num_modes,sigma", MIXTURES)
@pytest.mark.parametrize("num_covered", [2, 4, 5])
def test_even_subset_of_modes(name, num_modes, sigma, num_covered):
  counts = np.zeros(num_modes, dtype=int)
  counts[np.random.default_rng(num_covered).permutation(num_modes)[:num_covered]] = 12
  result = metrics.mixture_mode_coverage(points_at_modes(name, counts), name)
  assert result["modes"] == num_covered
  assert result["reverse_kl"] == pytest.approx(math.log(num_modes / num_covered), rel=1e-12)


@pytest.mark.parametrize("name,num_modes,sigma", MIXTURES)
@pytest.mark.parametrize("seed", range(5))
def test_uneven_histograms_match_scipy(name, num_modes, sigma, seed):
  rng = np.random.default_rng(seed)
  counts = rng.integers(0, 30, size=num_modes)
  counts[rng.integers(num_modes)] = 0  # At least one empty mode: 0 log 0 = 0.
  counts[rng.integers(num_modes)] += 1  # At least one HQ sample.
  # Noise well inside 3 sigma keeps every point HQ and at its own mode.
  points = points_at_modes(name, counts)
  points = points + rng.uniform(-sigma, sigma, size=points.shape)
  result = metrics.mixture_mode_coverage(points, name)
  np.testing.assert_array_equal(result["mode_histogram"], counts)
  assert result["modes"] == np.count_nonzero(counts)
  assert result["reverse_kl"] == pytest.approx(kl_to_uniform(counts), rel=1e-10, abs=1e-12)
  assert result["reverse_kl"] == pytest.approx(
    math.log(num_modes) - scipy.stats.entropy(counts), rel=1e-10, abs=1e-12
  )


def test_generic_mode_coverage_against_scipy():
  rng = np.random.default_rng(7)
  centres = rng.uniform(-100, 100, size=(13, 2))
  counts = rng.integers(0, 9, size=13)
  counts[0] = 0
  counts[1] = 5
  points = np.repeat(centres, counts, axis=0)
  result = metrics.mode_coverage(points, centres, 0.5)
  np.testing.assert_array_equal(result["mode_histogram"], counts)
  assert result["reverse_kl"] == pytest.approx(kl_to_uniform(counts), rel=1e-10)


@pytest.mark.parametrize("name,num_modes,sigma", MIXTURES)
def test_three_sigma_boundary(name, num_modes, sigma):
  centres = gaussian_mixture.mixture_modes(name).astype(np.float64)
  rng = np.random.default_rng(1)
  angles = rng.uniform(0, 2 * np.pi, size=num_modes)
  directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  inside = centres + directions * 3 * sigma * (1 - 1e-6)
  outside = centres + directions * 3 * sigma * (1 + 1e-6)
  result = metrics.mixture_mode_coverage(inside, name)
  assert result["hq_fraction"] == 1.0 and result["modes"] == num_modes
  np.testing.assert_array_equal(result["mode_histogram"], np.ones(num_modes))
  result = metrics.mixture_mode_coverage(outside, name)
  assert result["hq_fraction"] == 0.0 and result["modes"] == 0
  np.testing.assert_array_equal(result["mode_histogram"], np.zeros(num_modes))
  # Mixed: the inside points of modes 0..2 and the outside points of the others.
  mixed = np.concatenate([inside[:3], outside[3:]])
  result = metrics.mixture_mode_coverage(mixed, name)
  assert result["modes"] == 3
  assert result["hq_fraction"] == pytest.approx(3 / num_modes)
  assert result["reverse_kl"] == pytest.approx(math.log(num_modes / 3))


def test_far_points_count_toward_no_mode():
  grid = gaussian_mixture.mixture_modes("grid")
  far = np.array([[1.0, 1.0], [-3.0, 3.0], [10.0, 10.0], [0.0, 1.0], [5.0, -5.0]])
  result = metrics.mixture_mode_coverage(np.concatenate([grid[:2], far]), "grid")
  assert result["modes"] == 2
  assert result["hq_fraction"] == pytest.approx(2 / 7)
  expected = np.zeros(25, dtype=int)
  expected[:2] = 1
  np.testing.assert_array_equal(result["mode_histogram"], expected)
  assert result["reverse_kl"] == pytest.approx(math.log(25 / 2))
  # The ring's centre is equidistant from all eight modes and within 3 sigma of none.
  result = metrics.mixture_mode_coverage(np.zeros((4, 2)), "ring")
  assert result["modes"] == 0 and result["hq_fraction"] == 0.0


def test_no_high_quality_samples_gives_inf_reverse_kl():
  result = metrics.mixture_mode_coverage(np.full((10, 2), 7.0), "grid")
  assert result["modes"] == 0
  assert result["hq_fraction"] == 0.0
  assert result["reverse_kl"] == math.inf
  np.testing.assert_array_equal(result["mode_histogram"], np.zeros(25))


def test_non_finite_samples_are_not_high_quality():
  ring = gaussian_mixture.mixture_modes("ring")
  points = np.concatenate([ring[:2], [[np.nan, 0.0], [np.inf, 1.0], [-np.inf, np.nan]]])
  result = metrics.mixture_mode_coverage(points, "ring")
  assert result["modes"] == 2
  assert result["hq_fraction"] == pytest.approx(2 / 5)
  assert result["reverse_kl"] == pytest.approx(math.log(4))


def test_min_samples_per_mode():
  counts = np.zeros(8, dtype=int)
  counts[:3] = [3, 1, 2]
  points = points_at_modes("ring", counts)
  expected_kl = kl_to_uniform(counts)
  for threshold, captured in [(1, 3), (2, 2), (3, 1), (4, 0)]:
    result = metrics.mixture_mode_coverage(points, "ring", min_samples_per_mode=threshold)
    assert result["modes"] == captured, threshold
    # The histogram, hq_fraction and reverse KL do not depend on the threshold.
    assert result["hq_fraction"] == 1.0
    assert result["reverse_kl"] == pytest.approx(expected_kl, rel=1e-12)
    np.testing.assert_array_equal(result["mode_histogram"], counts)


def test_chunked_distances_match_single_block(monkeypatch):
  samples, _ = gaussian_mixture.sample("grid", 1000, np.random.default_rng(3))
  samples = samples * np.float32(1.05)  # Move some samples across the 3-sigma boundary.
  full = metrics.mixture_mode_coverage(samples, "grid")
  monkeypatch.setattr(modes_lib, "_CHUNK", 7)
  chunked = metrics.mixture_mode_coverage(samples, "grid")
  np.testing.assert_array_equal(full["mode_histogram"], chunked["mode_histogram"])
  assert full["hq_fraction"] == chunked["hq_fraction"] < 1.0


@pytest.mark.parametrize("name,num_modes,sigma", MIXTURES)
def test_real_data_source_captures_all_modes(name, num_modes, sigma):
  config = ml_collections.ConfigDict({"name": name})
  source = data.create_source(config, seed=0, batch_size=2500)
  batch = next(iter(source.batches(0)))
  points, labels = batch["image"], batch["label"]
  assert points.shape == (2500, 2)
  result = metrics.mixture_mode_coverage(points, name)
  assert result["modes"] == num_modes
  # Exact samples are HQ with probability 1 - exp(-4.5) ~= 0.989 in 2-D (binomial std ~0.002).
  assert result["hq_fraction"] >= 0.98
  assert abs(result["hq_fraction"] - HQ_PROBABILITY_2D) < 0.01
  assert 0.0 <= result["reverse_kl"] < 0.02
  # Every HQ sample is assigned to the mode it was drawn from.
  centres = gaussian_mixture.mixture_modes(name)
  own_distance = np.linalg.norm(points - centres[labels], axis=1)
  expected = np.bincount(labels[own_distance < 3 * sigma], minlength=num_modes)
  np.testing.assert_array_equal(result["mode_histogram"], expected)


def test_hq_fraction_of_exact_samples_is_rayleigh():
  points, _ = gaussian_mixture.sample("grid", 200_000, np.random.default_rng(11))
  result = metrics.mixture_mode_coverage(points, "grid")
  # Binomial std sqrt(p (1 - p) / n) ~= 2.3e-4; allow ~5 std.
  assert result["hq_fraction"] == pytest.approx(HQ_PROBABILITY_2D, abs=1.2e-3)


def test_accepts_lists_and_float32():
  result = metrics.mode_coverage([[0.0, 0.0], [1.0, 0.0]], [[0.0, 0.0], [5.0, 5.0]], 0.1)
  assert result["modes"] == 1 and result["hq_fraction"] == 0.5
  result = metrics.mode_coverage(
    np.zeros((3, 2), np.float32), np.zeros((1, 2), np.float32), np.float32(0.1)
  )
  assert result["modes"] == 1 and result["reverse_kl"] == 0.0


@pytest.mark.parametrize(
  "samples,match",
  [
    (np.zeros((5, 3)), r"samples must have shape \(num_samples, 2\), got shape \(5, 3\)"),
    (np.zeros(10), r"samples must have shape .*got shape \(10,\)"),
    (np.zeros((2, 5, 2)), r"got shape \(2, 5, 2\)"),
    (np.zeros((0, 2)), r"samples must not be empty, got shape \(0, 2\)"),
  ],
)
def test_bad_sample_shapes_raise(samples, match):
  with pytest.raises(ValueError, match=match):
    metrics.mixture_mode_coverage(samples, "grid")
  with pytest.raises(ValueError, match=match):
    metrics.mode_coverage(samples, np.zeros((4, 2)), 1.0)


def test_bad_arguments_raise():
  good = np.zeros((4, 2))
  with pytest.raises(ValueError, match=r"Unknown mixture dataset 'rings'; valid: ring, grid"):
    metrics.mixture_mode_coverage(good, "rings")
  with pytest.raises(ValueError, match=r"modes must have shape \(num_modes, D\), got shape \(2,\)"):
    metrics.mode_coverage(good, np.zeros(2), 1.0)
  with pytest.raises(ValueError, match=r"modes must not be empty"):
    metrics.mode_coverage(good, np.zeros((0, 2)), 1.0)
  with pytest.raises(ValueError, match="modes must be finite"):
    metrics.mode_coverage(good, [[0.0, np.nan]], 1.0)
  for sigma in (0.0, -1.0, math.nan, math.inf):
    with pytest.raises(ValueError, match="sigma must be finite and > 0"):
      metrics.mode_coverage(good, good, sigma)
  with pytest.raises(TypeError, match="sigma must be a number"):
    metrics.mode_coverage(good, good, "0.1")
  with pytest.raises(ValueError, match="min_samples_per_mode must be >= 1, got 0"):
    metrics.mode_coverage(good, good, 1.0, min_samples_per_mode=0)
  with pytest.raises(TypeError, match="min_samples_per_mode must be an int"):
    metrics.mixture_mode_coverage(good, "ring", min_samples_per_mode=1.5)
  with pytest.raises(TypeError, match="samples must be a real numeric array"):
    metrics.mode_coverage(np.array([["a", "b"]]), good, 1.0)
