"""Full-reference image quality: PSNR and SSIM (batched, jit-able), and the BT.601 luma.

* :func:`psnr`: ``10 log10(data_range^2 / MSE)`` per image, the MSE over every pixel and channel
  (``skimage.metrics.peak_signal_noise_ratio``).
* :func:`ssim`: the structural similarity of Wang, Bovik, Sheikh, Simoncelli, "Image Quality
  Assessment: From Error Visibility to Structural Similarity", IEEE TIP 2004: local statistics
  under an 11x11 Gaussian window (sigma 1.5), population (co)variances, ``K1 = 0.01``,
  ``K2 = 0.03``, averaged over the positions where the window fits inside the image and then over
  channels. This is ``skimage.metrics.structural_similarity(a, b, data_range=...,
  channel_axis=-1, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
* :func:`to_luma`: Y of ITU-R BT.601 (Y'CbCr, the convention of most super-resolution papers,
  e.g. Ledig et al. 2017 report PSNR/SSIM on the Y channel), for images in [0, data_range]
  ``Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16 * data_range / 255`` (for uint8 data:
  MATLAB's ``rgb2ycbcr``).

Images are ``(..., H, W, C)`` (a single image or a batch, any leading axes); the results have the
leading axes. Computation is float32 in jax (float64 when x64 is enabled).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # skimage's value for gaussian_weights=True: an 11-tap window at sigma 1.5.
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _check_pair(a: jax.Array, b: jax.Array, what: str) -> None:
  if a.shape != b.shape:
    raise ValueError(f"{what}: images must have the same shape, got {a.shape} and {b.shape}.")
  if a.ndim < 3:
    raise ValueError(f"{what}: expected (..., H, W, C) images, got shape {a.shape}.")


def psnr(a, b, data_range: float) -> jax.Array:
  """Peak signal-to-noise ratio in dB of each image of ``b`` against ``a``.

  Args:
    a: reference images ``(..., H, W, C)``.
    b: test images, same shape.
    data_range: the value range of the images (255 for uint8, 2 for [-1, 1]).

  Returns:
    ``10 log10(data_range^2 / mean((a - b)^2))`` over H, W, C: shape ``a.shape[:-3]``
    (``inf`` for identical images).
  """
  a, b = _as_float(a), _as_float(b)
  _check_pair(a, b, "psnr")
  mse = jnp.mean(jnp.square(a - b), axis=(-3, -2, -1))
  return 10.0 * jnp.log10(jnp.square(jnp.asarray(data_range, mse.dtype)) / mse)


@functools.cache
def _gaussian_taps(sigma: float, truncate: float) -> np.ndarray:
  """scipy.ndimage's 1-D Gaussian kernel: radius ``int(truncate * sigma + 0.5)``, sum 1."""
  radius = int(truncate * sigma + 0.5)
  x = np.arange(-radius, radius + 1, dtype=np.float64)
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return taps / taps.sum()


def _gaussian_valid(x: jax.Array, taps: jax.Array) -> jax.Array:
  """Separable Gaussian filter of ``(N, H, W, C)`` maps, only where the window fits (VALID)."""
  k = taps.shape[0]
  n, h, w, c = x.shape
  y = jnp.moveaxis(x, -1, 1).reshape(n * c, 1, h, w)
  dn = ("NCHW", "OIHW", "NCHW")
  y = jax.lax.conv_general_dilated(
    y,
    taps.reshape(1, 1, k, 1),
    (1, 1),
    "VALID",
    dimension_numbers=dn,
    precision=jax.lax.Precision.HIGHEST,
  )
  y = jax.lax.conv_general_dilated(
    y,
    taps.reshape(1, 1, 1, k),
    (1, 1),
    "VALID",
    dimension_numbers=dn,
    precision=jax.lax.Precision.HIGHEST,
  )
  return jnp.moveaxis(y.reshape(n, c, h - k + 1, w - k + 1), 1, -1)


def ssim(a, b, data_range: float, *, sigma: float = SSIM_SIGMA) -> jax.Array:
  """Mean structural similarity (Wang et al. 2004) of each image of ``b`` against ``a``.

  Equals ``skimage.metrics.structural_similarity(a, b, data_range=data_range, channel_axis=-1,
  gaussian_weights=True, sigma=1.5, use_sample_covariance=False)`` per image: the SSIM map is
  computed where the Gaussian window (radius ``int(3.5 sigma + 0.5)``, 5 pixels at 1.5) fits
  inside the image (skimage filters with reflection and then crops exactly that border), averaged
  over positions and then over channels.

  Args:
    a: reference images ``(..., H, W, C)``, H and W at least the window size (11).
    b: test images, same shape.
    data_range: the value range of the images (255 for uint8, 2 for [-1, 1]).
    sigma: the Gaussian window's standard deviation.

  Returns:
    SSIM in [-1, 1] per image: shape ``a.shape[:-3]``.
  """
  a, b = _as_float(a), _as_float(b)
  _check_pair(a, b, "ssim")
  taps_np = _gaussian_taps(float(sigma), SSIM_TRUNCATE)
  if min(a.shape[-3:-1]) < taps_np.shape[0]:
    raise ValueError(
      f"ssim: images of {a.shape[-3]}x{a.shape[-2]} pixels are smaller than the "
      f"{taps_np.shape[0]}x{taps_np.shape[0]} Gaussian window."
    )
  lead = a.shape[:-3]
  a = a.reshape(-1, *a.shape[-3:])
  b = b.reshape(-1, *b.shape[-3:])
  taps = jnp.asarray(taps_np, a.dtype)
  blur = functools.partial(_gaussian_valid, taps=taps)
  mu_a, mu_b = blur(a), blur(b)
  var_a = blur(a * a) - mu_a * mu_a
  var_b = blur(b * b) - mu_b * mu_b
  cov = blur(a * b) - mu_a * mu_b
  c1 = (SSIM_K1 * data_range) ** 2
  c2 = (SSIM_K2 * data_range) ** 2
  num = (2 * mu_a * mu_b + c1) * (2 * cov + c2)
  den = (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
  per_channel = jnp.mean(num / den, axis=(1, 2))  # (N, C)
  return jnp.mean(per_channel, axis=-1).reshape(lead)


def to_luma(images, data_range: float = 255.0) -> jax.Array:
  """ITU-R BT.601 luma Y of RGB images in [0, data_range]: ``(..., 3) -> (..., 1)``.

  ``Y = (65.481 R + 128.553 G + 24.966 B + 16 * 255) / 255`` in the units of ``data_range`` (for
  uint8 data Y is in [16, 235], MATLAB's ``rgb2ycbcr``). Grayscale ``(..., 1)`` input is returned
  unchanged.
  """
  images = _as_float(images)
  if images.shape[-1] == 1:
    return images
  if images.shape[-1] != 3:
    raise ValueError(f"to_luma expects RGB (..., 3) images, got shape {images.shape}.")
  weights = jnp.asarray([65.481, 128.553, 24.966], images.dtype) / 255.0
  y = images @ weights + 16.0 * data_range / 255.0
  return y[..., None]
