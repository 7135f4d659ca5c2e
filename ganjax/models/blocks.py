"""GAN-specific building blocks: normalisations, batch statistics features, conditioning heads.

Each block follows the paper it names (see its docstring). All are flax linen modules (or helpers
that must be called from inside a ``@nn.compact`` method, like those of
:mod:`ganjax.models.layers`) and can be jitted. Images are NHWC, feature vectors ``(B, F)``.

State that changes during training lives in the ``"batch_stats"`` collection, which the training
step (``ganjax.steps._apply``) marks mutable only when ``train=True``:

* BatchNorm running averages (:class:`ConditionalBatchNorm`), as in ``layers.batch_norm``;
* the power-iteration vectors of spectral normalisation (:func:`spectral_norm`). A network whose
  only such state is spectral normalisation still has a non-empty ``batch_stats`` and is treated
  like a network with BatchNorm.

Blocks that take ``labels`` raise ``ValueError`` when they are missing or have the wrong shape or
dtype, and, when the labels are concrete (not traced by ``jit``), when one is outside
``[0, num_classes)``. Inside ``jit`` an out-of-range label cannot be checked; it selects an
embedding row of NaNs (``jnp.take``'s ``"fill"`` mode), so the error shows as NaN outputs.

Batch-statistics blocks (:class:`MinibatchDiscrimination`, :class:`MinibatchStdDev`) see the batch
they are given: under ``parallel.mode = "shard_map"`` that is the per-device batch, as for
BatchNorm.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ganjax.errors import ConfigError
from ganjax.models import layers

Initializer = Callable[..., jax.Array]

# Small constant of the l2 normalisations in the power iteration (flax's and Miyato et al.'s).
SN_EPSILON = 1e-12

_LECUN_NORMAL = layers.lecun_normal()
_GLOROT_UNIFORM = layers.glorot_uniform()
_ZEROS = nn.initializers.zeros_init()
_ONES = nn.initializers.ones_init()


# --------------------------------------------------------------------------------------------
# Spectral normalisation.
# --------------------------------------------------------------------------------------------


class SpectralNorm(nn.SpectralNorm):
  """flax's ``nn.SpectralNorm``, except that initialisation keeps the weights as drawn.

  flax 0.12's wrapper writes the *normalised* weights ``W / sigma_hat`` back as the parameters when
  the model is initialised (``map_variables`` stores its transformed input), with ``sigma_hat`` a
  one-step estimate from the random ``u``: the kernels would not follow their initialiser and the
  first train-mode estimate of ``sigma`` would be 1. Here initialisation only creates ``u`` and
  ``sigma``, so the parameters are the initialiser's draw and the layer normalises them in every
  forward pass, as Miyato et al.'s code does. Variables, names and the power iteration are flax's.
  """

  def _spectral_normalize(self, path, vs, update_stats):
    if not self.is_initializing():
      return super()._spectral_normalize(path, vs, update_stats)
    super()._spectral_normalize(path, vs, update_stats=False)  # Creates u and sigma.
    return jnp.asarray(vs)


def spectral_norm(layer: nn.Module, *, n_steps: int = 1, enabled: bool = True) -> SpectralNorm:
  """Wraps ``layer`` so that each of its weight matrices is divided by its spectral norm.

  Spectral normalisation (Miyato, Kataoka, Koyama, Yoshida, "Spectral Normalization for Generative
  Adversarial Networks", ICLR 2018, arXiv:1802.05957, Sec. 2.1 and Appendix A): a weight ``W`` is
  replaced by ``W_SN = W / sigma(W)``, where ``sigma(W)`` is its largest singular value, so that the
  layer is 1-Lipschitz. A kernel of rank > 2 (a convolution's ``(kh, kw, in, out)``) is reshaped to
  the matrix ``(kh * kw * in, out)`` first, as in the paper. ``sigma`` is estimated by power
  iteration from a persistent vector ``u`` (``(1, out)``), ``n_steps`` times per call::

      v <- normalize(u W^T),   u <- normalize(v W),   sigma = v W u^T.

  ``u`` and ``v`` are constants for the gradient (``stop_gradient``); the gradient flows through
  ``sigma``'s dependence on ``W``, as in the paper. Biases and other vectors are not normalised.

  This is flax's ``nn.SpectralNorm`` (its implementation matches the paper in flax 0.12) with the
  parameters kept as initialised (:class:`SpectralNorm`), used with
  ``collection_name="batch_stats"``. The returned module is called as
  ``module(*args, update_stats=train, **kwargs)`` and:

  * stores, in the ``"batch_stats"`` collection under its own name (``SpectralNorm_<i>``), the
    variables ``"<layer name>/<param name>/u"`` (shape ``(1, out)``, drawn N(0, 1) from the
    ``"params"`` rng at initialisation) and ``"<layer name>/<param name>/sigma"`` (the last
    estimate, for monitoring; it is not read back). The wrapped layer's parameters stay where they
    would be without the wrapper (``<parent>/Dense_0/kernel``, ...);
  * with ``update_stats=True`` (train mode; ``"batch_stats"`` must be mutable) writes the new ``u``
    and ``sigma``; with ``update_stats=False`` runs the same ``n_steps`` iterations from the stored
    ``u`` without writing anything, so evaluation is deterministic (Miyato et al.'s Chainer code
    does the same).

  ``enabled=False`` returns the same wrapper with ``n_steps=0``, which flax treats as the identity:
  the parameters and call signature are those of the normalised layer, with no ``"batch_stats"``
  entry, so a model can switch spectral normalisation with one flag.
  """
  if enabled and n_steps < 1:
    raise ConfigError(f"Spectral normalisation needs n_steps >= 1 power iterations, got {n_steps}.")
  return SpectralNorm(
    layer,
    n_steps=n_steps if enabled else 0,
    epsilon=SN_EPSILON,
    collection_name="batch_stats",
  )


def sn_dense(
  features: int,
  *,
  use_bias: bool = True,
  kernel_init: Initializer = _LECUN_NORMAL,
  bias_init: Initializer = _ZEROS,
  dtype: Any = None,
  n_steps: int = 1,
  enabled: bool = True,
) -> nn.SpectralNorm:
  """A spectrally normalised :func:`layers.dense`: ``y = x (W / sigma(W)) + b``.

  Called as ``sn_dense(...)(x, update_stats=train)``; see :func:`spectral_norm` for the state and
  for ``n_steps`` / ``enabled``. Reference: Miyato et al. 2018, arXiv:1802.05957.
  """
  layer = layers.dense(
    features, use_bias=use_bias, kernel_init=kernel_init, bias_init=bias_init, dtype=dtype
  )
  return spectral_norm(layer, n_steps=n_steps, enabled=enabled)


def sn_conv(
  features: int,
  kernel_size: int,
  stride: int = 1,
  padding: layers.Padding = "SAME",
  *,
  use_bias: bool = True,
  kernel_init: Initializer = _LECUN_NORMAL,
  bias_init: Initializer = _ZEROS,
  impl: str = "xla",
  dtype: Any = None,
  n_steps: int = 1,
  enabled: bool = True,
) -> nn.SpectralNorm:
  """A spectrally normalised :func:`layers.conv` (any ``impl``).

  The kernel ``(k, k, in, out)`` is normalised as the matrix ``(k * k * in, out)``, the transpose
  of Miyato et al.'s ``d_out x (d_in * h * w)`` (same singular values). This is a surrogate for the
  operator norm of the convolution, which it bounds only up to a factor depending on the kernel
  size and stride, as in the paper. Called as
  ``sn_conv(...)(x, update_stats=train)``; see :func:`spectral_norm`.
  """
  return _spectral_conv(
    layers.conv,
    features,
    kernel_size,
    stride,
    padding,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=bias_init,
    impl=impl,
    dtype=dtype,
    n_steps=n_steps,
    enabled=enabled,
  )


def sn_conv_transpose(
  features: int,
  kernel_size: int,
  stride: int = 1,
  padding: layers.Padding = "SAME",
  *,
  use_bias: bool = True,
  kernel_init: Initializer = _LECUN_NORMAL,
  bias_init: Initializer = _ZEROS,
  impl: str = "xla",
  dtype: Any = None,
  n_steps: int = 1,
  enabled: bool = True,
) -> nn.SpectralNorm:
  """A spectrally normalised :func:`layers.conv_transpose` (any ``impl``).

  The kernel ``(k, k, in, out)`` is normalised as the matrix ``(k * k * in, out)``, the same
  reshape as :func:`sn_conv`; it has the spectral norm of PyTorch's choice for transposed
  convolutions (``spectral_norm(..., dim=1)``: ``(out, in * k * k)``, the same entries). Called
  as ``sn_conv_transpose(...)(x, update_stats=train)``; see :func:`spectral_norm`.
  """
  return _spectral_conv(
    layers.conv_transpose,
    features,
    kernel_size,
    stride,
    padding,
    use_bias=use_bias,
    kernel_init=kernel_init,
    bias_init=bias_init,
    impl=impl,
    dtype=dtype,
    n_steps=n_steps,
    enabled=enabled,
  )


def _spectral_conv(factory, features, kernel_size, stride, padding, *, n_steps, enabled, **kw):
  """``spectral_norm(factory(...))`` for the square-kernel factories of :mod:`layers`."""
  layer = factory(features, kernel_size, stride, padding, **kw)
  return spectral_norm(layer, n_steps=n_steps, enabled=enabled)


# --------------------------------------------------------------------------------------------
# Labels.
# --------------------------------------------------------------------------------------------


def maxout(x: jax.Array, pieces: int) -> jax.Array:
  """Maxout units (Goodfellow et al. 2013, arXiv:1302.4389): the max over groups of ``pieces``.

  ``x`` is ``(..., units * pieces)``, consecutive features forming one unit's pieces; returns
  ``(..., units)``.
  """
  if x.shape[-1] % pieces:
    raise ValueError(f"maxout: {x.shape[-1]} features do not split into groups of {pieces}.")
  return x.reshape(*x.shape[:-1], x.shape[-1] // pieces, pieces).max(axis=-1)


def check_labels(
  labels: Any, batch: int, num_classes: int, who: str, *, soft: bool = False
) -> jax.Array:
  """Validates class ``labels`` for a batch of ``batch`` examples; returns them as an array.

  ``soft=True`` also accepts class weights: floats of shape ``(batch, num_classes)`` (one-hot rows
  for a class, their mixtures for a path between classes: :func:`class_rows`).

  Raises ``ValueError`` (naming ``who`` and the offending value) when ``labels`` is ``None``, not
  of shape ``(batch,)``, not integer, or -- when concrete, i.e. outside ``jit`` -- outside
  ``[0, num_classes)``.
  """
  if labels is None:
    raise ValueError(
      f"{who} is class-conditional and needs labels (integers of shape ({batch},) in "
      f"[0, {num_classes})), got labels=None."
    )
  labels = jnp.asarray(labels)
  if soft and labels.shape == (batch, num_classes) and jnp.issubdtype(labels.dtype, jnp.floating):
    return labels
  if labels.shape != (batch,):
    raise ValueError(
      f"{who}: labels must have shape ({batch},) (one per example), got shape {labels.shape}."
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"{who}: labels must be integers, got dtype {labels.dtype}.")
  if not isinstance(labels, jax.core.Tracer) and labels.size:
    values = np.asarray(labels)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high >= num_classes:
      bad = low if low < 0 else high
      raise ValueError(f"{who}: label {bad} is outside [0, {num_classes}) (num_classes).")
  return labels


def _flatten_features(x: jax.Array, who: str) -> jax.Array:
  if x.ndim < 2:
    raise ValueError(f"{who} expects a batch of features (B, ...), got shape {x.shape}.")
  return x.reshape(x.shape[0], -1)


# --------------------------------------------------------------------------------------------
# Features computed across the batch.
# --------------------------------------------------------------------------------------------


class MinibatchDiscrimination(nn.Module):
  """Minibatch discrimination (Salimans et al. 2016, Sec. 3.2).

  Reference: Salimans, Goodfellow, Zaremba, Cheung, Radford, Chen, "Improved Techniques for
  Training GANs", NeurIPS 2016, arXiv:1606.03498.

  For features ``f(x_i) in R^A`` (the input, flattened to ``(N, A)``) and a learned tensor
  ``T in R^{A x B x C}`` (``B = num_kernels``, ``C = kernel_dim``)::

      M_i = f(x_i) . T                           in R^{B x C}
      c_b(x_i, x_j) = exp(-||M_{i,b} - M_{j,b}||_1)
      o(x_i)_b = sum_{j=1..N} c_b(x_i, x_j)      in R^B

  and the output is ``[f(x_i), o(x_i)]`` of shape ``(N, A + B)``. As in the paper the sum includes
  ``j = i``, which contributes exactly 1 to every ``o(x_i)_b``; ``include_self=False`` leaves it
  out (``o - 1``). The result is equivariant to permutations of the batch. Cost O(N^2 B C) time
  and memory.

  Parameters: ``kernel`` = ``T`` of shape ``(A, num_kernels, kernel_dim)``, initialised
  N(0, ``init_stddev``^2) (the paper gives no initialisation; the OpenAI code used 0.05).
  """

  num_kernels: int = 100
  kernel_dim: int = 5
  include_self: bool = True
  init_stddev: float = 0.05

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    f = _flatten_features(x, "MinibatchDiscrimination")
    t = self.param(
      "kernel",
      layers.normal(self.init_stddev),
      (f.shape[-1], self.num_kernels, self.kernel_dim),
      jnp.float32,
    )
    # M laid out as (B, C, N): the L1 distances accumulate over C as (B, N, N) planes, which
    # XLA:CPU runs about 6x faster than one (N, N, B, C) broadcast reduced over its last axis.
    m = jnp.einsum("na,abc->bcn", f.astype(jnp.float32), t)
    l1 = sum(jnp.abs(m[:, c, :, None] - m[:, c, None, :]) for c in range(self.kernel_dim))
    o = jnp.sum(jnp.exp(-l1), axis=2).T  # (N, B)
    if not self.include_self:
      o = o - 1.0
    return jnp.concatenate([f, o.astype(f.dtype)], axis=-1)


class MinibatchStdDev(nn.Module):
  """Minibatch standard deviation layer (Karras et al. 2018, Sec. 3).

  Reference: Karras, Aila, Laine, Lehtinen, "Progressive Growing of GANs for Improved Quality,
  Stability, and Variation", ICLR 2018, arXiv:1710.10196.

  The batch of ``N`` examples (shape ``(N, ..., C)``: NHWC images or ``(N, C)`` features) is split
  into ``N / G`` groups of ``G = min(group_size, N)`` examples; as in the authors' code the groups
  are strided: example ``i`` belongs to group ``i mod (N / G)``. For each group, every feature at
  every position gets its standard deviation over the group (population std, ``ddof=0``)::

      s = sqrt(mean_g (x_g - mean_g x_g)^2 + epsilon),

  and these are averaged over the positions and channels into one value per group -- or, with
  ``num_channels = F > 1`` (StyleGAN's generalisation), over positions and each of ``F`` contiguous
  chunks of ``C / F`` channels into ``F`` values. The values are appended to every example of the
  group as ``F`` constant channels (features): output ``(N, ..., C + F)``.

  When ``G`` does not divide ``N``: ``strict=True`` (default) raises ``ValueError``;
  ``strict=False`` falls back to one group holding the whole batch (``G = N``).
  """

  group_size: int = 4
  num_channels: int = 1
  strict: bool = True
  epsilon: float = 1e-8

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim < 2:
      raise ValueError(f"MinibatchStdDev expects (N, ..., C) inputs, got shape {x.shape}.")
    if self.group_size < 1:
      raise ConfigError(f"MinibatchStdDev: group_size must be >= 1, got {self.group_size}.")
    n, c = x.shape[0], x.shape[-1]
    if self.num_channels < 1 or c % self.num_channels:
      raise ConfigError(
        f"MinibatchStdDev: num_channels={self.num_channels} must be >= 1 and divide the "
        f"{c} input channels."
      )
    g = min(self.group_size, n)
    if n % g:
      if self.strict:
        raise ConfigError(
          f"MinibatchStdDev: group_size {g} does not divide the batch size {n}; use a batch "
          "size that is a multiple of it, or strict=False to use the whole batch as one group."
        )
      g = n
    m, f = n // g, self.num_channels
    y = x.astype(jnp.float32).reshape(g, m, *x.shape[1:-1], f, c // f)
    y = jnp.sqrt(jnp.var(y, axis=0) + self.epsilon)  # (M, ..., F, C/F)
    y = jnp.mean(y, axis=(*range(1, y.ndim - 2), y.ndim - 1))  # (M, F)
    y = jnp.tile(y, (g, 1))  # Example i <- group i mod M.
    y = y.reshape(n, *(1,) * (x.ndim - 2), f)
    y = jnp.broadcast_to(y, (*x.shape[:-1], f)).astype(x.dtype)
    return jnp.concatenate([x, y], axis=-1)


# --------------------------------------------------------------------------------------------
# Class conditioning.
# --------------------------------------------------------------------------------------------


def class_rows(table: jax.Array, labels: jax.Array) -> jax.Array:
  """Row ``labels[i]`` of ``table`` ``(num_classes, F)`` for integer labels; for class weights
  ``(B, num_classes)`` (:func:`check_labels` with ``soft=True``) the weighted mix of rows."""
  if jnp.issubdtype(labels.dtype, jnp.floating):
    return labels.astype(table.dtype) @ table
  return jnp.take(table, labels, axis=0)


class ConditionalBatchNorm(nn.Module):
  """Class-conditional BatchNorm (de Vries et al. 2017; Dumoulin et al. 2017).

  References: de Vries, Strub, Mary, Larochelle, Pietquin, Courville, "Modulating early visual
  processing by language", NeurIPS 2017, arXiv:1707.00683; Dumoulin, Shlens, Kudlur, "A Learned
  Representation For Artistic Style", ICLR 2017, arXiv:1610.07629; used in the generator of
  Miyato & Koyama, "cGANs with Projection Discriminator", ICLR 2018, arXiv:1802.05637.

  BatchNorm without its own scale and offset, then a per-class gain and bias::

      y_i = gamma[label_i] * (x_i - mu) / sqrt(var + eps) + beta[label_i],

  normalising over all but the last (channel) axis. ``mu, var`` are the batch statistics in train
  mode and the running averages otherwise; the running averages (``mean``, ``var`` of the
  ``BatchNorm_0`` submodule) live in ``"batch_stats"`` and are updated in train mode only, with
  the momentum and epsilon of ``layers.batch_norm`` (``BN_MOMENTUM``, ``BN_EPSILON``).

  Parameters: ``gain`` and ``bias``, both ``(num_classes, C)``, initialised to 1 and 0 (so a fresh
  layer is plain non-affine BatchNorm). Called as ``(x, labels, *, train)``; ``labels`` (or class
  weights, :func:`class_rows`) are required. ``dtype``: the computation dtype (see
  ``layers.DTYPES``).
  """

  num_classes: int
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    labels = check_labels(labels, x.shape[0], self.num_classes, "ConditionalBatchNorm", soft=True)
    c = x.shape[-1]
    dtype = layers.resolve_dtype(self.dtype)
    y = nn.BatchNorm(
      use_running_average=not train,
      momentum=layers.BN_MOMENTUM,
      epsilon=layers.BN_EPSILON,
      use_bias=False,
      use_scale=False,
      dtype=dtype,
    )(x)
    gain = self.param("gain", _ONES, (self.num_classes, c), jnp.float32)
    bias = self.param("bias", _ZEROS, (self.num_classes, c), jnp.float32)
    shape = (x.shape[0], *(1,) * (x.ndim - 2), c)
    gamma = class_rows(gain, labels).reshape(shape)
    beta = class_rows(bias, labels).reshape(shape)
    out_dtype = dtype if dtype is not None else y.dtype
    return (y * gamma.astype(out_dtype) + beta.astype(out_dtype)).astype(out_dtype)


def projection_logits(
  features: jax.Array,
  labels: jax.Array,
  kernel: jax.Array,
  bias: jax.Array | None,
  embedding: jax.Array,
) -> jax.Array:
  """The projection discriminator's output (Miyato & Koyama 2018, Eq. 3), as a pure function.

  ``logit_i = phi_i . kernel[:, 0] + bias + <embedding[y_i], phi_i>`` for features ``phi`` of
  shape ``(B, F)``, ``kernel`` ``(F, 1)``, ``bias`` ``(1,)`` or ``None``, ``embedding``
  ``(num_classes, F)``; returns ``(B,)``. See :class:`ProjectionHead`.
  """
  out = features @ kernel[:, 0]
  if bias is not None:
    out = out + bias[0]
  return out + jnp.sum(jnp.take(embedding, labels, axis=0) * features, axis=-1)


class ProjectionHead(nn.Module):
  """Output layer of the projection discriminator (Miyato & Koyama 2018).

  Reference: Miyato, Koyama, "cGANs with Projection Discriminator", ICLR 2018, arXiv:1802.05637,
  Eq. (3) and Fig. 14: for the discriminator's features ``phi(x)`` (after the last activation and
  global pooling; flattened to ``(B, F)``) and a class embedding ``V`` (``(num_classes, F)``)::

      logit(x, y) = psi(phi(x)) + <V[y], phi(x)>,   psi(h) = w . h + b,

  returning ``(B,)`` logits. With ``spectral_norm=True`` both ``w`` (as a ``(F, 1)`` matrix) and
  ``V`` are spectrally normalised (the paper's ``SNLinear``/``SNEmbedID``), with their power
  iteration state in ``"batch_stats"`` (see :func:`spectral_norm`). Initialisation: Glorot uniform
  for both, as in the authors' code.

  Called as ``(features, labels, *, train)``; ``labels`` is required. Submodules: ``Dense_0``
  (``kernel``, ``bias``) and ``Embed_0`` (``embedding``).
  """

  num_classes: int
  spectral_norm: bool = False
  n_steps: int = 1

  @nn.compact
  def __call__(
    self, features: jax.Array, labels: jax.Array | None = None, *, train: bool
  ) -> jax.Array:
    phi = _flatten_features(features, "ProjectionHead")
    labels = check_labels(labels, phi.shape[0], self.num_classes, "ProjectionHead")
    linear = sn_dense(
      1, kernel_init=_GLOROT_UNIFORM, n_steps=self.n_steps, enabled=self.spectral_norm
    )
    embed = spectral_norm(
      nn.Embed(self.num_classes, phi.shape[-1], embedding_init=_GLOROT_UNIFORM),
      n_steps=self.n_steps,
      enabled=self.spectral_norm,
    )
    out = linear(phi, update_stats=train)[:, 0]
    v = embed(labels, update_stats=train).astype(phi.dtype)
    return out + jnp.sum(v * phi, axis=-1)


class LabelEmbedding(nn.Module):
  """Conditioning by concatenation (Mirza & Osindero 2014, Sec. 4.1).

  Reference: Mirza, Osindero, "Conditional Generative Adversarial Nets", arXiv:1411.1784.

  Embeds ``labels`` into ``e(y)`` of size ``dim`` and concatenates it to ``x`` along the last
  axis: to a latent or feature vector ``(B, F) -> (B, F + dim)``; to an NHWC image as ``dim``
  constant channels ``(B, H, W, C) -> (B, H, W, C + dim)`` (conditioning the discriminator's
  input). ``dim=None`` uses the one-hot code of the paper (``dim = num_classes``, no parameters);
  otherwise a learned table ``embedding`` of shape ``(num_classes, dim)``, initialised N(0, 1)
  (PyTorch's ``nn.Embedding``). Called as ``(x, labels)``; ``labels`` (or class weights ``(B, K)``,
  mixing the rows: :func:`class_rows`) are required.
  """

  num_classes: int
  dim: int | None = None

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    if x.ndim < 2:
      raise ValueError(f"LabelEmbedding expects (B, ..., C) inputs, got shape {x.shape}.")
    labels = check_labels(labels, x.shape[0], self.num_classes, "LabelEmbedding", soft=True)
    if self.dim is None:
      if jnp.issubdtype(labels.dtype, jnp.floating):  # Class weights are the code's mixture.
        e = labels.astype(x.dtype)
      else:
        e = jax.nn.one_hot(labels, self.num_classes, dtype=x.dtype)
    else:
      table = self.param("embedding", layers.normal(1.0), (self.num_classes, self.dim), jnp.float32)
      e = class_rows(table, labels).astype(x.dtype)
    e = e.reshape(x.shape[0], *(1,) * (x.ndim - 2), e.shape[-1])
    e = jnp.broadcast_to(e, (*x.shape[:-1], e.shape[-1]))
    return jnp.concatenate([x, e], axis=-1)


class ClassifierHead(nn.Module):
  """Auxiliary classifier of the ACGAN discriminator (Odena et al. 2017, Sec. 3).

  Reference: Odena, Olah, Shlens, "Conditional Image Synthesis with Auxiliary Classifier GANs",
  ICML 2017, arXiv:1610.09585.

  A linear layer on the discriminator's features (flattened to ``(B, F)``) returning class logits
  ``(B, num_classes)`` for ``log P(C | X)``; the discriminator returns them next to its real/fake
  logit, and both players add the cross-entropy with the (real or sampled) class to their losses.
  ``spectral_norm=True`` normalises the layer (see :func:`spectral_norm`). Called as
  ``(features, *, train)``. Submodule ``Dense_0`` (``kernel``, ``bias``).
  """

  num_classes: int
  spectral_norm: bool = False
  n_steps: int = 1
  dtype: Any = None

  @nn.compact
  def __call__(self, features: jax.Array, *, train: bool) -> jax.Array:
    h = _flatten_features(features, "ClassifierHead")
    layer = sn_dense(
      self.num_classes, dtype=self.dtype, n_steps=self.n_steps, enabled=self.spectral_norm
    )
    return layer(h, update_stats=train)


# How labels reach the networks of the conditional models (their ``conditioning`` fields):
# the generator by a concatenated label code or conditional BatchNorm; the discriminator by
# concatenation to its input, a projection head or an auxiliary classifier (ACGAN).
GENERATOR_CONDITIONING = ("concat", "batchnorm")
DISCRIMINATOR_CONDITIONING = ("concat", "projection", "acgan")


def check_conditioning(
  who: str, num_classes: int | None, conditioning: str, choices: tuple[str, ...]
) -> bool:
  """Validates a network's conditioning fields; returns whether it is class-conditional."""
  layers.check_choice(f"{who} conditioning", conditioning, choices)
  if num_classes is None:
    return False
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f"{who}: num_classes must be a positive integer or None, got {num_classes!r}.")
  return True


def generator_norm(
  x: jax.Array,
  labels: jax.Array | None,
  *,
  train: bool,
  num_classes: int | None,
  scale_init: Initializer = _ONES,
  dtype: Any = None,
) -> jax.Array:
  """The generator's BatchNorm: plain, or class-conditional when ``num_classes`` is set.

  Call from inside an ``@nn.compact`` method. Conditional BatchNorm (:class:`ConditionalBatchNorm`,
  de Vries et al. 2017; Miyato & Koyama 2018) replaces BatchNorm's scale and offset by per-class
  ones.
  """
  if num_classes is None:
    return layers.batch_norm(train, scale_init=scale_init, dtype=dtype)(x)
  return ConditionalBatchNorm(num_classes, dtype=dtype)(x, labels, train=train)


def discriminator_head(
  features: jax.Array,
  labels: jax.Array | None,
  linear: Callable[[jax.Array], jax.Array],
  *,
  train: bool,
  num_classes: int | None,
  conditioning: str,
  spectral_norm: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """The discriminator's output on its last features ``(B, ...)``, for every conditioning.

  Call from inside an ``@nn.compact`` method. ``linear`` maps the features to ``(B,)`` logits (the
  unconditional output layer). Unconditional or ``"concat"`` (labels went in with the input):
  ``linear(features)``. ``"projection"``: :class:`ProjectionHead` on the flattened features
  instead (Miyato & Koyama 2018). ``"acgan"``: ``(linear(features), class_logits)`` with the
  class logits of a :class:`ClassifierHead` (Odena et al. 2017); the training steps add its
  cross-entropy to both players' losses.
  """
  if num_classes is None or conditioning == "concat":
    return linear(features)
  if conditioning == "projection":
    head = ProjectionHead(num_classes, spectral_norm=spectral_norm)
    return head(features, labels, train=train).astype(jnp.float32)
  if conditioning == "acgan":
    class_logits = ClassifierHead(num_classes, spectral_norm=spectral_norm)(features, train=train)
    return linear(features), class_logits.astype(jnp.float32)
  raise ConfigError(
    f"Unknown discriminator conditioning {conditioning!r}; valid choices: "
    f"{', '.join(DISCRIMINATOR_CONDITIONING)}."
  )


# --------------------------------------------------------------------------------------------
# Packing (PacGAN).
# --------------------------------------------------------------------------------------------


def pack_samples(x: jax.Array, pack: int) -> jax.Array:
  """Concatenates every ``pack`` consecutive samples into one discriminator input (PacGAN).

  Lin, Khetan, Fanti, Oh, "PacGAN: The power of two samples in generative adversarial networks",
  NeurIPS 2018, arXiv:1712.04086, Sec. 3. Rows ``pack * i .. pack * i + pack - 1`` become packed
  example ``i``: vectors ``(B, F) -> (B / pack, pack * F)`` (sample ``j`` of a pack fills features
  ``j * F .. j * F + F - 1``); images ``(B, H, W, C) -> (B / pack, H, W, pack * C)`` (channels
  ``j * C .. j * C + C - 1``), i.e. concatenation along the last axis for any rank. Grouping
  consecutive rows means a batch sharded on its leading axis packs in place when each device's
  share divides by ``pack``.

  Raises:
    ValueError: ``pack < 1``, or a batch ``B`` that does not divide by ``pack``.
  """
  if pack < 1:
    raise ConfigError(f"pack must be >= 1, got {pack}.")
  if x.ndim < 2:
    raise ValueError(f"pack_samples expects a batch (B, ...), got shape {x.shape}.")
  b = x.shape[0]
  if b % pack:
    raise ConfigError(
      f"A batch of B={b} samples does not divide into packs of m={pack} (PacGAN); use a batch "
      f"size that is a multiple of {pack}."
    )
  grouped = x.reshape(b // pack, pack, *x.shape[1:])
  grouped = jnp.moveaxis(grouped, 1, -2)  # (B/m, ..., m, C)
  return grouped.reshape(*grouped.shape[:-2], pack * x.shape[-1])


class Packed(nn.Module):
  """Wraps any discriminator so that it judges packs of ``pack`` samples (PacGAN).

  Reference: Lin et al. 2018, "PacGAN: The power of two samples in generative adversarial
  networks", arXiv:1712.04086. Inputs ``(B, ...)`` are packed with :func:`pack_samples` and the
  wrapped ``discriminator`` returns ``B / pack`` logits, one per pack; real and generated batches
  are packed separately by calling the module on each. The wrapped network's variables live under
  ``discriminator/``. Called as ``(x, labels=None, *, train)``; ``labels`` (which unconditional
  models ignore) are passed on as the label of each pack's first sample.

  At initialisation only (``create_gan_state`` uses a dummy batch of 2), a batch that does not
  divide by ``pack`` is padded with zero rows, so any pack size initialises; the parameter shapes
  do not depend on the batch size.
  """

  discriminator: nn.Module
  pack: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, *, train: bool) -> jax.Array:
    if self.is_initializing() and x.ndim >= 2 and x.shape[0] % self.pack:
      pad = self.pack - x.shape[0] % self.pack
      x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
      if labels is not None:
        labels = jnp.pad(jnp.asarray(labels), [(0, pad)] + [(0, 0)] * (jnp.ndim(labels) - 1))
    packed = pack_samples(x, self.pack)
    if labels is not None:
      labels = jnp.asarray(labels)[:: self.pack]
    return self.discriminator(packed, labels, train=train)
