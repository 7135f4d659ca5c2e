"""PSNR / SSIM / luma against scikit-image."""

import jax
import numpy as np
import pytest
from skimage import color, metrics

from ganjax import metrics as metrics_lib
from ganjax.metrics import image_quality


def _pair(seed, shape, dtype=np.uint8):
  rng = np.random.default_rng(seed)
  a = rng.integers(0, 256, shape).astype(np.uint8)
  noise = rng.normal(0, 12, shape)
  b = np.clip(a + noise, 0, 255).astype(np.uint8)
  if dtype != np.uint8:
    return a / 127.5 - 1, b / 127.5 - 1
  return a, b


def test_exported():
  assert metrics_lib.psnr is image_quality.psnr
  assert metrics_lib.ssim is image_quality.ssim


def test_psnr_matches_skimage_batched():
  a, b = _pair(0, (3, 20, 17, 3))
  got = np.asarray(image_quality.psnr(a, b, 255))
  want = [metrics.peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b, strict=True)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
  a, b = _pair(1, (2, 24, 31, channels))
  got = np.asarray(image_quality.ssim(a, b, 255))
  want = [
      metrics.structural_similarity(
          x, y, data_range=255, channel_axis=-1, gaussian_weights=True, sigma=1.5,
          use_sample_covariance=False,
      )
      for x, y in zip(a, b, strict=True)
  ]
  np.testing.assert_allclose(got, want, atol=2e-5)


def test_float_range_and_jit():
  a, b = _pair(2, (2, 16, 16, 3), np.float32)
  got = jax.jit(lambda x, y: image_quality.ssim(x, y, 2.0))(a, b)
  want = [
      metrics.structural_similarity(
          x, y, data_range=2.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
          use_sample_covariance=False,
      )
      for x, y in zip(a, b, strict=True)
  ]
  np.testing.assert_allclose(got, want, atol=2e-5)
  np.testing.assert_allclose(
      jax.jit(lambda x, y: image_quality.psnr(x, y, 2.0))(a, b),
      [metrics.peak_signal_noise_ratio(x, y, data_range=2.0) for x, y in zip(a, b, strict=True)],
      rtol=1e-5,
  )


def test_single_image_and_identical():
  a, _ = _pair(3, (16, 16, 3))
  assert image_quality.ssim(a, a, 255).shape == ()
  assert float(image_quality.ssim(a, a, 255)) == pytest.approx(1.0, abs=1e-6)
  assert np.isinf(float(image_quality.psnr(a, a, 255)))


def test_luma_matches_skimage_rgb2ycbcr():
  a, _ = _pair(4, (2, 8, 8, 3))
  got = np.asarray(image_quality.to_luma(a))[..., 0]
  np.testing.assert_allclose(got, color.rgb2ycbcr(a)[..., 0], atol=1e-3)


def test_bad_inputs():
  with pytest.raises(ValueError, match="same shape"):
    image_quality.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)), 1.0)
  with pytest.raises(ValueError, match="smaller than the 11x11"):
    image_quality.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 1.0)
