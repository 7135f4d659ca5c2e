"""PSNR / SSIM / luma against scikit-image."""

import math

import jax
import numpy as np
import pytest
import scipy.ndimage
import tolerances
from skimage import color, metrics

from ganjax import metrics as metrics_lib
from ganjax.metrics import image_quality

# Float32 round-off of a local statistic: two separable passes of the 11-tap Gaussian window over
# one product of pixels.
_TAPS = 2 * 11 + 1


def _psnr_atol(images, psnr, exact_sum=False):
  """Float32 round-off of PSNR = 10 log10(R^2 / mse) per image: a relative error e of the mse
  moves it by 10 / ln(10) e dB. The mse averages H W C squares (exactly, when they are integers
  summing below 2^24: only the division rounds); the ratio, the log and the factor 10 then round
  at the size of the result."""
  terms = 1 if exact_sum else int(np.prod(np.shape(images)[-3:]))
  return tolerances.float32_atol(terms, 10 / math.log(10)) + tolerances.float32_atol(
    3, float(np.max(np.abs(psnr)))
  )


def _ssim_atol(a, b, data_range):
  """Float32 round-off of ssim(a, b) per image, against a float64 reference: the first-order
  propagation of the errors of the local statistics (each through _TAPS accumulated terms at the
  size of its |terms|; a variance E[a^2] - E[a]^2 cancels at the size of E[a^2]) through the
  four factors of the SSIM map (Wang et al. 2004, Eq. 13), averaged like the map. One ulp per
  term: twice Higham's worst case n eps / 2 (2002, Sec. 3.1), not the default four, so that a
  window of sigma 1.6 instead of 1.5 (SSIM off by 2e-4 here) still fails."""
  e = tolerances.float32_atol(_TAPS, ulps=1.0)
  c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  a, b = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
  bounds = []
  for x, y in zip(a, b, strict=True):
    per_channel = []
    for c in range(x.shape[-1]):

      def blur(z):
        return scipy.ndimage.gaussian_filter(z, 1.5, truncate=3.5)[5:-5, 5:-5]

      u, v = x[..., c], y[..., c]
      mu_u, mu_v = blur(u), blur(v)
      d_mu_u, d_mu_v = e * blur(np.abs(u)), e * blur(np.abs(v))
      uu, vv, uv = blur(u * u), blur(v * v), blur(u * v)
      d_var_u = e * (uu + mu_u**2) + 2 * np.abs(mu_u) * d_mu_u
      d_var_v = e * (vv + mu_v**2) + 2 * np.abs(mu_v) * d_mu_v
      d_cov = e * (blur(np.abs(u * v)) + np.abs(mu_u * mu_v))
      d_cov += np.abs(mu_u) * d_mu_v + np.abs(mu_v) * d_mu_u
      n1, d1 = 2 * mu_u * mu_v + c1, mu_u**2 + mu_v**2 + c1
      n2, d2 = 2 * (uv - mu_u * mu_v) + c2, (uu - mu_u**2) + (vv - mu_v**2) + c2
      d_n1 = 2 * (np.abs(mu_u) * d_mu_v + np.abs(mu_v) * d_mu_u) + e * np.abs(n1)
      d_d1 = 2 * (np.abs(mu_u) * d_mu_u + np.abs(mu_v) * d_mu_v) + e * d1
      d_n2, d_d2 = 2 * d_cov, d_var_u + d_var_v
      ssim = n1 * n2 / (d1 * d2)
      d_ssim = (d_n1 * np.abs(n2) + np.abs(n1) * d_n2) / (d1 * d2)
      d_ssim += np.abs(ssim) * (d_d1 / d1 + d_d2 / d2 + e)
      per_channel.append(np.mean(d_ssim) + tolerances.float32_atol(d_ssim.size, ulps=1.0))
    bounds.append(np.mean(per_channel) + tolerances.float32_atol(len(per_channel), ulps=1.0))
  return np.asarray(bounds)


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
  # uint8 differences: integer squares, whose sums are exact in float32 below 2^24.
  squares = (a.astype(np.int64) - b.astype(np.int64)) ** 2
  assert squares.sum(axis=(1, 2, 3)).max() < 2**24
  np.testing.assert_allclose(got, want, rtol=0, atol=_psnr_atol(a, want, exact_sum=True))


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_skimage(channels):
  a, b = _pair(1, (2, 24, 31, channels))
  got = np.asarray(image_quality.ssim(a, b, 255))
  want = [
    metrics.structural_similarity(
      x,
      y,
      data_range=255,
      channel_axis=-1,
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
    )
    for x, y in zip(a, b, strict=True)
  ]
  np.testing.assert_array_less(np.abs(got - np.asarray(want)), _ssim_atol(a, b, 255))


def test_float_range_and_jit():
  a, b = _pair(2, (2, 16, 16, 3), np.float32)
  got = jax.jit(lambda x, y: image_quality.ssim(x, y, 2.0))(a, b)
  want = [
    metrics.structural_similarity(
      x,
      y,
      data_range=2.0,
      channel_axis=-1,
      gaussian_weights=True,
      sigma=1.5,
      use_sample_covariance=False,
    )
    for x, y in zip(a, b, strict=True)
  ]
  np.testing.assert_array_less(np.abs(got - np.asarray(want)), _ssim_atol(a, b, 2.0))
  want = [metrics.peak_signal_noise_ratio(x, y, data_range=2.0) for x, y in zip(a, b, strict=True)]
  np.testing.assert_allclose(
    jax.jit(lambda x, y: image_quality.psnr(x, y, 2.0))(a, b),
    want,
    rtol=0,
    atol=_psnr_atol(a, want),
  )


def test_single_image_and_identical():
  a, _ = _pair(3, (16, 16, 3))
  assert image_quality.ssim(a, a, 255).shape == ()
  assert abs(float(image_quality.ssim(a, a, 255)) - 1.0) <= _ssim_atol(a, a, 255)[0]
  assert np.isinf(float(image_quality.psnr(a, a, 255)))


def test_luma_matches_skimage_rgb2ycbcr():
  a, _ = _pair(4, (2, 8, 8, 3))
  got = np.asarray(image_quality.to_luma(a))[..., 0]
  # A dot product of 3 non-negative terms with weights rounded to float32 (w / 255: two
  # roundings), plus 16: round-off at the size of the result.
  tolerances.assert_float32_close(got, color.rgb2ycbcr(a)[..., 0], length=3 + 2 + 1)


def test_bad_inputs():
  with pytest.raises(ValueError, match="same shape"):
    image_quality.psnr(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)), 1.0)
  with pytest.raises(ValueError, match="smaller than the 11x11"):
    image_quality.ssim(np.zeros((8, 8, 3)), np.zeros((8, 8, 3)), 1.0)
