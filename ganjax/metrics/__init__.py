"""Evaluation metrics; more (FID, KID, IS, precision/recall) come later.

* :mod:`ganjax.metrics.modes`: mode coverage of the synthetic 2-D mixtures (modes captured,
  high-quality fraction, reverse KL; Srivastava et al. 2017 "VEEGAN", Lin et al. 2018 "PacGAN").
"""

from __future__ import annotations

from ganjax.metrics.modes import mixture_mode_coverage, mode_coverage

__all__ = ["mixture_mode_coverage", "mode_coverage"]
