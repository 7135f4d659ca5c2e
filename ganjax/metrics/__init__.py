"""Evaluation metrics: FID, KID, IS, precision/recall, density/coverage and mode counts.

The metrics are pure functions of features, class probabilities or labels (numpy or jax arrays);
they compute in float64 and validate their inputs. Feature extractors are separate.

* :mod:`ganjax.metrics.frechet`: Fréchet distance of Gaussian fits (FID; Heusel et al. 2017), from
  features or from precomputed statistics, and intra-class FID (Miyato & Koyama 2018).
* :mod:`ganjax.metrics.kernel`: Kernel Inception Distance, the unbiased polynomial-kernel MMD^2
  averaged over subsets (KID; Binkowski et al. 2018).
* :mod:`ganjax.metrics.classifier_score`: Inception Score from the class probabilities of
  Inception or any other classifier (IS; Salimans et al. 2016).
* :mod:`ganjax.metrics.manifold`: k-NN manifold metrics: improved precision and recall
  (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).
* :mod:`ganjax.metrics.modes`: mode coverage of the synthetic 2-D mixtures (modes captured,
  high-quality fraction, reverse KL; Srivastava et al. 2017 "VEEGAN", Lin et al. 2018 "PacGAN").
* :mod:`ganjax.metrics.stacked_mnist`: modes covered and KL to uniform on Stacked MNIST's 1000
  modes (Metz et al. 2017).
* :mod:`ganjax.metrics.inception`: the FID InceptionV3 (pytorch-fid's port of the TF 2015-12-05
  graph) in Flax, its weight conversion and cache, and batched feature extraction.
"""

from __future__ import annotations

from ganjax.metrics.classifier_score import InceptionScore, inception_score
from ganjax.metrics.frechet import (
  FeatureStatistics,
  IntraClassFrechetDistance,
  RankDeficientWarning,
  feature_statistics,
  frechet_distance,
  frechet_distance_from_statistics,
  intra_class_frechet_distance,
)
from ganjax.metrics.image_quality import psnr, ssim
from ganjax.metrics.kernel import KernelInceptionDistance, kernel_inception_distance
from ganjax.metrics.manifold import (
  DensityCoverage,
  PrecisionRecall,
  density_coverage,
  precision_recall,
)
from ganjax.metrics.modes import mixture_mode_coverage, mode_coverage
from ganjax.metrics.stacked_mnist import stacked_mnist_modes

__all__ = [
  "DensityCoverage",
  "FeatureStatistics",
  "InceptionScore",
  "IntraClassFrechetDistance",
  "KernelInceptionDistance",
  "PrecisionRecall",
  "RankDeficientWarning",
  "density_coverage",
  "feature_statistics",
  "frechet_distance",
  "frechet_distance_from_statistics",
  "inception_score",
  "intra_class_frechet_distance",
  "kernel_inception_distance",
  "mixture_mode_coverage",
  "mode_coverage",
  "precision_recall",
  "psnr",
  "ssim",
  "stacked_mnist_modes",
]
