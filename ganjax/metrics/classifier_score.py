"""Inception Score (IS) from classifier probabilities.

Salimans et al. 2016, "Improved Techniques for Training GANs". For class probabilities
``p(y | x_i)`` of N generated samples, split into ``num_splits`` consecutive parts; in each part,
with the marginal ``p(y) = mean_i p(y | x_i)`` over the part::

  IS = exp(mean_i KL(p(y | x_i) || p(y)))

and report the mean and standard deviation (``ddof = 0``) over the parts, as the authors' code
does (part ``s`` holds rows ``s N // num_splits`` up to ``(s + 1) N // num_splits``). The score
lies in [1, K] for K classes: 1 when every sample gets the same prediction, K when the predictions
are confident (one-hot) and spread evenly over all classes. ``0 log 0 = 0``, so exact zeros are
allowed (the reference code returns NaN for them). Computed in float64 numpy on the host.

The score works with any classifier's probabilities: Inception's for natural images, a digit
classifier's for MNIST (the "MNIST score" of some papers). The module is not called
``inception_score`` so that the package-level function of that name cannot shadow it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import scipy.special

from ganjax.errors import ConfigError
from ganjax.metrics import _checks

__all__ = ["InceptionScore", "inception_score"]

# Largest accepted |sum_y p(y | x) - 1| (float32 softmax outputs are within ~1e-6).
_SUM_TOLERANCE = 1e-3


class InceptionScore(NamedTuple):
  """The mean and standard deviation (``ddof = 0``) of the score over the splits."""

  mean: float
  std: float


def inception_score(probabilities: Any, num_splits: int = 10) -> InceptionScore:
  """Inception Score of generated samples from their class probabilities (Salimans et al. 2016).

  Args:
    probabilities: (N, K) class probabilities ``p(y | x)`` (softmax outputs, not logits) of N
      generated samples; non-negative, every row summing to 1.
    num_splits: Number of consecutive parts the samples are split into, 1 <= num_splits <= N
      (the usual protocol: 50,000 samples in 10 parts).

  Returns:
    ``InceptionScore(mean, std)`` as floats, the mean in [1, K].

  Raises:
    ValueError: ``probabilities`` not 2-D, empty, not finite, negative, or with a row that does
      not sum to 1 (the message names the row); ``num_splits`` outside [1, N].
    TypeError: non-numeric ``probabilities`` or a non-integer ``num_splits``.
  """
  probabilities = _checks.as_numeric("probabilities", probabilities)
  if probabilities.ndim != 2 or probabilities.shape[0] < 1 or probabilities.shape[1] < 1:
    raise ValueError(
      "probabilities must be a non-empty 2-D array of shape (num_samples, num_classes), got "
      f"shape {probabilities.shape}."
    )
  probabilities = probabilities.astype(np.float64)
  _checks.check_finite("probabilities", probabilities)
  if np.any(probabilities < 0):
    raise ValueError(
      f"probabilities must be non-negative, got minimum {probabilities.min():.3g}; pass softmax "
      "probabilities, not logits."
    )
  row_error = np.abs(np.sum(probabilities, axis=1) - 1.0)
  worst = int(np.argmax(row_error))
  if row_error[worst] > _SUM_TOLERANCE:
    raise ValueError(
      f"Every row of probabilities must sum to 1, but row {worst} sums to "
      f"{probabilities[worst].sum():.6g}; pass softmax probabilities, not logits."
    )
  num_samples = len(probabilities)
  num_splits = _checks.check_int("num_splits", num_splits, minimum=1)
  if num_splits > num_samples:
    raise ConfigError(
      f"num_splits must be <= the number of samples ({num_samples}), got {num_splits}."
    )
  scores = []
  for split in range(num_splits):
    start, stop = split * num_samples // num_splits, (split + 1) * num_samples // num_splits
    part = probabilities[start:stop]
    marginal = np.mean(part, axis=0, keepdims=True)
    # xlogy(p, p / q) is 0 where p = 0, and q > 0 wherever p > 0.
    kl = np.sum(scipy.special.xlogy(part, part) - scipy.special.xlogy(part, marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return InceptionScore(float(np.mean(scores)), float(np.std(scores)))
