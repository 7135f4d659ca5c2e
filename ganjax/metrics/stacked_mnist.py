"""Mode counts on Stacked MNIST (1000 modes: one digit per colour channel).

Metz et al. 2017, "Unrolled Generative Adversarial Networks", stack three MNIST digits as the
channels of one image, so the data has 10^3 = 1000 equally likely modes; Lin et al. 2018,
"PacGAN", use the same protocol. A pretrained MNIST classifier labels each channel of every
generated sample; the triple ``(d_0, d_1, d_2)`` is mode ``100 d_0 + 10 d_1 + d_2``. Reported:

* modes: the number of distinct triples among the samples (0..1000; "modes covered");
* reverse_kl: ``KL(p || u) = sum_{m : p_m > 0} p_m log(1000 p_m)`` in nats, the "KL" column of the
  papers' tables, with ``p`` the empirical distribution of the samples over the 1000 modes and
  ``u`` uniform. 0 when every mode is equally frequent, ``log 1000 ~= 6.91`` under total collapse.

The keys follow :func:`ganjax.metrics.mode_coverage` (the same quantities for the 2-D mixtures).
This module counts modes only; classifying the channels is the job of a feature extractor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ganjax.metrics.modes import _reverse_kl_to_uniform

__all__ = ["NUM_MODES", "stacked_mnist_modes"]

# Digits per channel and channels per sample.
_NUM_DIGITS = 10
_NUM_CHANNELS = 3
NUM_MODES = _NUM_DIGITS**_NUM_CHANNELS


def stacked_mnist_modes(digit_labels: Any) -> dict[str, Any]:
  """Modes covered and KL to uniform of generated Stacked MNIST samples (Metz et al. 2017).

  Args:
    digit_labels: (N, 3) integer array, N >= 1: the digit (0..9) predicted for each of the three
      channels of every generated sample, in channel order.

  Returns:
    A dict with
      ``modes``: int, the number of distinct triples (0..1000);
      ``reverse_kl``: float, KL(empirical mode distribution || uniform over 1000) in nats, in
        [0, log 1000];
      ``mode_histogram``: (1000,) int64 array, samples per mode ``100 d_0 + 10 d_1 + d_2``.

  Raises:
    ValueError: ``digit_labels`` not of shape (N, 3), empty, or with a value outside 0..9 (the
      message names the value and its row).
    TypeError: non-integer ``digit_labels``.
  """
  labels = np.asarray(digit_labels)
  if not np.issubdtype(labels.dtype, np.integer):
    raise TypeError(f"digit_labels must be an integer array, got dtype {labels.dtype}.")
  if labels.ndim != 2 or labels.shape[1] != _NUM_CHANNELS:
    raise ValueError(
      f"digit_labels must have shape (num_samples, {_NUM_CHANNELS}), one digit per channel, got "
      f"shape {labels.shape}."
    )
  if labels.shape[0] < 1:
    raise ValueError(f"digit_labels must not be empty, got shape {labels.shape}.")
  bad = np.argwhere((labels < 0) | (labels >= _NUM_DIGITS))
  if len(bad):
    row, channel = bad[0]
    raise ValueError(
      f"digit_labels must be digits in 0..{_NUM_DIGITS - 1}, got {labels[row, channel]} at row "
      f"{row}, channel {channel}."
    )
  weights = _NUM_DIGITS ** np.arange(_NUM_CHANNELS - 1, -1, -1)
  modes = labels.astype(np.int64) @ weights
  histogram = np.bincount(modes, minlength=NUM_MODES).astype(np.int64)
  return {
    "modes": int(np.count_nonzero(histogram)),
    "reverse_kl": _reverse_kl_to_uniform(histogram),
    "mode_histogram": histogram,
  }
