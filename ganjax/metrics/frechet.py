"""Fréchet distance between Gaussian fits of two feature sets: FID and intra-class FID.

Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium" (the Fréchet Inception Distance). Fit a Gaussian to each feature set (mean ``mu`` and
unbiased covariance ``sigma``, ``ddof = 1`` as in the reference implementations) and return the
squared 2-Wasserstein (Fréchet) distance between the two Gaussians::

  FID = ||mu_a - mu_b||^2 + tr(sigma_a) + tr(sigma_b) - 2 tr((sigma_a sigma_b)^(1/2))

Everything runs in float64 numpy on the host. ``tr((A B)^(1/2))`` is computed with symmetric
eigendecompositions instead of ``scipy.linalg.sqrtm``: ``A B`` is similar to the symmetric positive
semi-definite ``A^(1/2) B A^(1/2)``, so ``tr((A B)^(1/2)) = sum_i sqrt(lambda_i)`` over the
eigenvalues of ``A^(1/2) B A^(1/2)``, with ``A^(1/2)`` from ``eigh(A)``. Round-off eigenvalues
below zero are clipped to 0. The result equals the ``sqrtm`` formula of pytorch-fid and TTUR on
well-conditioned inputs, and stays real and finite on singular covariances, where ``sqrtm`` returns
complex values or NaN.

A singular covariance (fewer samples than feature dimensions, or a collapsed generator whose samples
are all identical or lie in a subspace) still gives a finite FID, but a strongly biased one that is
not comparable with published numbers; :class:`RankDeficientWarning` says so.

Intra-class FID (Miyato & Koyama 2018, "cGANs with Projection Discriminator") is the mean over
classes of the FID between the real and generated features of each class.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np

from ganjax.errors import ConfigError
from ganjax.metrics import _checks

__all__ = [
  "FeatureStatistics",
  "IntraClassFrechetDistance",
  "RankDeficientWarning",
  "feature_statistics",
  "frechet_distance",
  "frechet_distance_from_statistics",
  "intra_class_frechet_distance",
]

# Rows converted to float64 at a time by feature_statistics, bounding its extra memory.
_BLOCK = 4096
# Largest accepted asymmetry and negative eigenvalue of a covariance, relative to its largest entry
# or eigenvalue (generous enough for covariances computed in float32 elsewhere).
_TOLERANCE = 1e-5


class RankDeficientWarning(UserWarning):
  """A covariance is singular: the FID is finite but biased, not comparable across sample sizes."""


class FeatureStatistics(NamedTuple):
  """The Gaussian fit of a feature set."""

  mean: np.ndarray  # (D,) float64.
  covariance: np.ndarray  # (D, D) float64, unbiased (ddof = 1), exactly symmetric.


class IntraClassFrechetDistance(NamedTuple):
  """Intra-class FID: the mean over classes and the FID of every class."""

  mean: float
  per_class: dict[int, float]


def _statistics(features: np.ndarray) -> FeatureStatistics:
  """Two-pass float64 mean and covariance, converting ``_BLOCK`` rows at a time."""
  num_samples, num_features = features.shape
  total = np.zeros(num_features)
  for start in range(0, num_samples, _BLOCK):
    total += np.sum(features[start : start + _BLOCK], axis=0, dtype=np.float64)
  mean = total / num_samples
  scatter = np.zeros((num_features, num_features))
  for start in range(0, num_samples, _BLOCK):
    centred = features[start : start + _BLOCK].astype(np.float64) - mean
    scatter += centred.T @ centred
  covariance = scatter / (num_samples - 1)
  return FeatureStatistics(mean, (covariance + covariance.T) / 2)


def feature_statistics(features: Any) -> FeatureStatistics:
  """Mean and unbiased covariance (float64) of ``features``, the Gaussian fit used by FID.

  Args:
    features: (N, D) array (numpy or jax), N >= 2, finite.

  Returns:
    ``FeatureStatistics(mean, covariance)`` with shapes (D,) and (D, D), in float64; the
    covariance uses ``ddof = 1`` like ``np.cov``.

  Raises:
    ValueError: ``features`` not 2-D, with fewer than 2 rows, or not finite.
  """
  features = _checks.check_features(
    "features", features, min_samples=2, why="to estimate a covariance"
  )
  return _statistics(features)


def _check_statistics(
  mean_name: str, mean: Any, cov_name: str, cov: Any, num_features: int | None
) -> tuple[np.ndarray, np.ndarray]:
  mean = _checks.as_numeric(mean_name, mean).astype(np.float64)
  cov = _checks.as_numeric(cov_name, cov).astype(np.float64)
  if mean.ndim != 1 or mean.shape[0] < 1:
    raise ValueError(f"{mean_name} must be a 1-D array of shape (D,), got shape {mean.shape}.")
  if num_features is not None and mean.shape[0] != num_features:
    raise ValueError(
      f"{mean_name} must have the same dimension as mu_a ({num_features}), got shape {mean.shape}."
    )
  dim = mean.shape[0]
  if cov.shape != (dim, dim):
    raise ValueError(
      f"{cov_name} must have shape ({dim}, {dim}) to match {mean_name}, got shape {cov.shape}."
    )
  _checks.check_finite(mean_name, mean)
  _checks.check_finite(cov_name, cov)
  asymmetry = float(np.max(np.abs(cov - cov.T)))
  if asymmetry > _TOLERANCE * float(np.max(np.abs(cov))):
    raise ValueError(
      f"{cov_name} must be a symmetric covariance matrix, got max |{cov_name} - "
      f"{cov_name}.T| = {asymmetry:.3g}."
    )
  return mean, (cov + cov.T) / 2


def _check_positive_semidefinite(name: str, eigenvalues: np.ndarray, scale: float) -> None:
  smallest = float(eigenvalues[0])
  if smallest < -_TOLERANCE * scale:
    raise ValueError(
      f"{name} must be positive semi-definite, got smallest eigenvalue {smallest:.3g} "
      f"(largest {float(eigenvalues[-1]):.3g})."
    )


def _numerical_rank(eigenvalues: np.ndarray, scale: float) -> int:
  """Eigenvalues above round-off: numpy.linalg.matrix_rank's tolerance, relative to ``scale``."""
  return int(np.count_nonzero(eigenvalues > scale * len(eigenvalues) * np.finfo(np.float64).eps))


def frechet_distance_from_statistics(mu_a: Any, sigma_a: Any, mu_b: Any, sigma_b: Any) -> float:
  """Fréchet distance between N(mu_a, sigma_a) and N(mu_b, sigma_b) (Heusel et al. 2017).

  ``||mu_a - mu_b||^2 + tr(sigma_a) + tr(sigma_b) - 2 tr((sigma_a sigma_b)^(1/2))`` in float64,
  with the trace of the matrix square root from symmetric eigendecompositions (see the module
  docstring). Use it with :func:`feature_statistics`, or with precomputed reference statistics.

  Args:
    mu_a: (D,) mean of the first Gaussian.
    sigma_a: (D, D) covariance of the first Gaussian (symmetric positive semi-definite).
    mu_b: (D,) mean of the second Gaussian.
    sigma_b: (D, D) covariance of the second Gaussian.

  Returns:
    The distance, a finite float >= 0 (round-off below 0 is clipped).

  Raises:
    ValueError: mismatched or bad shapes, non-finite values, a covariance that is not symmetric or
      has clearly negative eigenvalues.

  Warns:
    RankDeficientWarning: when a covariance is singular (numerical rank < D).
  """
  return _frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def _frechet_distance(mu_a: Any, sigma_a: Any, mu_b: Any, sigma_b: Any) -> float:
  """:func:`frechet_distance_from_statistics`; warnings point at the public function's caller."""
  mu_a, sigma_a = _check_statistics("mu_a", mu_a, "sigma_a", sigma_a, None)
  mu_b, sigma_b = _check_statistics("mu_b", mu_b, "sigma_b", sigma_b, mu_a.shape[0])
  eigenvalues_a, eigenvectors_a = np.linalg.eigh(sigma_a)
  eigenvalues_b = np.linalg.eigvalsh(sigma_b)
  # Round-off scales: a covariance estimated from features with mean mu carries errors of order
  # eps |mu| |x - mu|, so the covariances of identical samples are ~eps^2 |mu|^2 rather than 0.
  eps = np.finfo(np.float64).eps
  covariance_scale = max(float(np.max(np.abs(eigenvalues_a))), float(np.max(np.abs(eigenvalues_b))))
  mean_scale = max(float(np.max(mu_a**2)), float(np.max(mu_b**2)))
  _check_positive_semidefinite("sigma_a", eigenvalues_a, max(covariance_scale, eps * mean_scale))
  _check_positive_semidefinite("sigma_b", eigenvalues_b, max(covariance_scale, eps * mean_scale))
  rank_scale = max(covariance_scale, mean_scale)
  ranks = {
    "sigma_a": _numerical_rank(eigenvalues_a, rank_scale),
    "sigma_b": _numerical_rank(eigenvalues_b, rank_scale),
  }
  dim = mu_a.shape[0]
  deficient = [f"{name} has rank {rank}" for name, rank in ranks.items() if rank < dim]
  if deficient:
    warnings.warn(
      f"Singular covariance ({'; '.join(deficient)} < {dim} feature dimensions): fewer samples "
      "than feature dimensions, or collapsed (identical or degenerate) samples. The Fréchet "
      "distance is finite but biased and not comparable with full-rank estimates.",
      RankDeficientWarning,
      stacklevel=3,
    )
  sqrt_a = (eigenvectors_a * np.sqrt(np.clip(eigenvalues_a, 0.0, None))) @ eigenvectors_a.T
  middle = sqrt_a @ sigma_b @ sqrt_a
  middle_eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
  trace_sqrt = np.sum(np.sqrt(np.clip(middle_eigenvalues, 0.0, None)))
  difference = mu_a - mu_b
  value = difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_sqrt
  return max(float(value), 0.0)


def frechet_distance(features_a: Any, features_b: Any) -> float:
  """Fréchet distance between Gaussian fits of two feature sets: FID on Inception features.

  Heusel et al. 2017. Equivalent to ``frechet_distance_from_statistics(*feature_statistics(a),
  *feature_statistics(b))``; float64 throughout.

  Args:
    features_a: (N_a, D) features, e.g. of real images; N_a >= 2.
    features_b: (N_b, D) features, e.g. of generated images; N_b >= 2.

  Returns:
    The FID, a finite float >= 0.

  Raises:
    ValueError: features not 2-D, with different D, fewer than 2 rows, or not finite.

  Warns:
    RankDeficientWarning: when a covariance is singular (N <= D, or collapsed samples).
  """
  features_a = _checks.check_features(
    "features_a", features_a, min_samples=2, why="to estimate a covariance"
  )
  features_b = _checks.check_features(
    "features_b",
    features_b,
    num_features=features_a.shape[1],
    other="features_a",
    min_samples=2,
    why="to estimate a covariance",
  )
  return _frechet_distance(*_statistics(features_a), *_statistics(features_b))


def _check_labels(name: str, labels: Any, features_name: str, num_samples: int) -> np.ndarray:
  labels = np.asarray(labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"{name} must be an integer array, got dtype {labels.dtype}.")
  if labels.shape != (num_samples,):
    raise ValueError(
      f"{name} must have shape ({num_samples},), one label per row of {features_name}, got "
      f"shape {labels.shape}."
    )
  return labels


def intra_class_frechet_distance(
  real_features: Any, real_labels: Any, fake_features: Any, fake_labels: Any
) -> IntraClassFrechetDistance:
  """Intra-class FID: the mean over classes of the per-class FID (Miyato & Koyama 2018).

  For every class ``c``, ``frechet_distance(real_features[real_labels == c],
  fake_features[fake_labels == c])``; the classes are the labels that occur.

  Args:
    real_features: (N_r, D) features of real samples.
    real_labels: (N_r,) integer class of every real sample.
    fake_features: (N_f, D) features of generated samples.
    fake_labels: (N_f,) integer class each generated sample was conditioned on.

  Returns:
    ``IntraClassFrechetDistance(mean, per_class)``: the unweighted mean over classes and a dict
    {class: FID}, sorted by class.

  Raises:
    ValueError: a class occurs on one side only (the message names the classes), a class has
      fewer than 2 samples on a side, or bad feature / label shapes.
    TypeError: non-integer labels.

  Warns:
    RankDeficientWarning: for every class whose covariance is singular (fewer samples per class
      than feature dimensions).
  """
  real_features = _checks.check_features("real_features", real_features)
  fake_features = _checks.check_features(
    "fake_features", fake_features, num_features=real_features.shape[1], other="real_features"
  )
  real_labels = _check_labels("real_labels", real_labels, "real_features", len(real_features))
  fake_labels = _check_labels("fake_labels", fake_labels, "fake_features", len(fake_features))
  real_classes = set(np.unique(real_labels).tolist())
  fake_classes = set(np.unique(fake_labels).tolist())
  for present, absent, missing in [
    ("real_labels", "fake_labels", real_classes - fake_classes),
    ("fake_labels", "real_labels", fake_classes - real_classes),
  ]:
    if missing:
      raise ValueError(
        f"Classes {sorted(missing)} occur in {present} but not in {absent}; intra-class FID "
        "needs samples of every class on both sides."
      )
  per_class = {}
  for label in sorted(real_classes):
    real = real_features[real_labels == label]
    fake = fake_features[fake_labels == label]
    for name, members in [("real_features", real), ("fake_features", fake)]:
      if len(members) < 2:
        raise ConfigError(
          f"Class {label} has {len(members)} sample(s) in {name}; every class needs at least 2 "
          "per side to estimate a covariance."
        )
    per_class[int(label)] = _frechet_distance(*_statistics(real), *_statistics(fake))
  return IntraClassFrechetDistance(float(np.mean(list(per_class.values()))), per_class)
