"""GAN building blocks (ganjax.models.blocks) against numpy implementations of their formulas."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tolerances

from ganjax import models
from ganjax.models import blocks, dcgan, layers, mlp


def _rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def _replace(tree, path: tuple[str, ...], value):
  """A copy of the nested dict ``tree`` with ``tree[path[0]]...[path[-1]] = value``."""
  tree = dict(tree)
  if len(path) == 1:
    tree[path[0]] = jnp.asarray(value)
  else:
    tree[path[0]] = _replace(tree[path[0]], path[1:], value)
  return tree


# ----------------------------------------------------------------------------------------------
# Spectral normalisation.
# ----------------------------------------------------------------------------------------------


class _SNDense(nn.Module):
  features: int
  n_steps: int = 1
  enabled: bool = True

  @nn.compact
  def __call__(self, x, *, train):
    return blocks.sn_dense(self.features, n_steps=self.n_steps, enabled=self.enabled)(
      x, update_stats=train
    )


class _SNConv(nn.Module):
  n_steps: int
  impl: str = "xla"
  transpose: bool = False

  @nn.compact
  def __call__(self, x, *, train):
    make = blocks.sn_conv_transpose if self.transpose else blocks.sn_conv
    return make(8, 3, 2, impl=self.impl, n_steps=self.n_steps)(x, update_stats=train)


def _sn_roundoff(kernel) -> float:
  """Relative float32 round-off of sigma = v W u^T after an iteration on ``kernel`` reshaped to
  (rows, out): two products and two norms, of lengths rows and out."""
  rows, out = int(np.prod(kernel.shape[:-1])), kernel.shape[-1]
  return tolerances.float32_atol(2 * (rows + out))


def test_sn_dense_power_iteration_converges_to_the_spectral_norm():
  rng = _rng(0)
  x = jnp.asarray(rng.normal(size=(5, 20)), jnp.float32)
  model = _SNDense(12)
  variables = model.init(jax.random.key(0), x, train=False)
  assert set(variables["batch_stats"]["SpectralNorm_0"]) == {
    "Dense_0/kernel/u",
    "Dense_0/kernel/sigma",
  }
  w = rng.normal(size=(20, 12)).astype(np.float32)
  b = rng.normal(size=(12,)).astype(np.float32)
  params = {"Dense_0": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
  stats = variables["batch_stats"]

  @jax.jit
  def train_apply(stats):
    y, updates = model.apply(
      {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
    )
    return y, updates["batch_stats"]

  for _ in range(100):
    y, stats = train_apply(stats)
  sigma = float(stats["SpectralNorm_0"]["Dense_0/kernel/sigma"])
  u_init = variables["batch_stats"]["SpectralNorm_0"]["Dense_0/kernel/u"]
  x64, w64 = np.asarray(x, np.float64), w.astype(np.float64)
  true_sigma = np.linalg.norm(w64, 2)
  # 100 calls of one iteration each, from the initial u: the power iteration's own error (exact
  # arithmetic), plus the round-off of the last iteration (two products and two norms of lengths
  # 20 and 12).
  sigma_rtol = tolerances.power_iteration_error(w, u_init, 100) + _sn_roundoff(w)
  assert abs(sigma - true_sigma) <= sigma_rtol * true_sigma, (sigma, true_sigma, sigma_rtol)
  assert abs(np.linalg.norm(w64 / sigma, 2) - 1.0) <= sigma_rtol / (1 - sigma_rtol)
  # The output is the layer with the normalised kernel, normalised by the sigma it stored: fan-in
  # 20, the kernel's division by sigma and the bias.
  magnitude = tolerances.dot_magnitude(x, w / sigma) + np.abs(b).max()
  tolerances.assert_float32_close(y, x64 @ (w / sigma) + b, length=20 + 2, magnitude=magnitude)

  # Eval mode: deterministic, writes nothing even when the collection is mutable.
  evaluated = {"params": params, "batch_stats": stats}
  y_eval = model.apply(evaluated, x, train=False)
  _, updates = model.apply(evaluated, x, train=False, mutable=["batch_stats"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, updates["batch_stats"], stats)
  # One more iteration from the stored u (101 in all): sigma's relative error scales x W / sigma.
  eval_rtol = tolerances.power_iteration_error(w, u_init, 101) + _sn_roundoff(w)
  y_true = x64 @ (w64 / true_sigma) + b
  xw = tolerances.dot_magnitude(x, w / true_sigma)
  atol = tolerances.float32_atol(20 + 2, xw + np.abs(b).max()) + eval_rtol * xw
  np.testing.assert_allclose(y_eval, y_true, rtol=0, atol=atol)

  # With a converged u the gradient is that of x @ (W / ||W||_2) + b: it flows through sigma(W).
  def loss(kernel):
    p = {"Dense_0": {"kernel": kernel, "bias": jnp.asarray(b)}}
    return jnp.sum(jnp.sin(model.apply({"params": p, "batch_stats": stats}, x, train=False)))

  # Float64 reference: with A = x^T cos(y) the gradient through W / sigma, the gradient is
  # A / sigma - <A, W> / sigma^2 l r^T, l and r the top singular vectors (d sigma / dW = l r^T).
  grad_y = x64.T @ np.cos(y_true)
  left, _, right = np.linalg.svd(w64)
  through_sigma = abs(np.sum(grad_y * w64)) / true_sigma**2
  expected = grad_y / true_sigma - np.sum(grad_y * w64) / true_sigma**2 * np.outer(
    left[:, 0], right[0]
  )
  # The layer uses v^T u of the iteration instead of l r^T: each vector is off by an angle whose
  # tangent is at most sqrt(power_iteration_rtol), and its sigma by eval_rtol; plus the round-off
  # of the forward and backward passes (fan-in 20, fan-out 12, the batch of 5) and the iteration.
  angle = np.sqrt(tolerances.power_iteration_rtol(w, u_init, 101))
  length = tolerances.gradient_length({"Dense_0": {"kernel": w}}, 5) + 2 * (20 + 12)
  magnitude = np.abs(grad_y).max() / true_sigma + through_sigma
  atol = 2 * angle * through_sigma + eval_rtol * magnitude
  atol += tolerances.float32_atol(length, magnitude)
  np.testing.assert_allclose(jax.grad(loss)(jnp.asarray(w)), expected, rtol=0, atol=atol)

  # One train step moves u.
  fresh = variables["batch_stats"]
  _, moved = train_apply(fresh)
  assert not np.array_equal(
    moved["SpectralNorm_0"]["Dense_0/kernel/u"], fresh["SpectralNorm_0"]["Dense_0/kernel/u"]
  )


@pytest.mark.parametrize(
  "impl,transpose", [("xla", False), ("fast", False), ("xla", True), ("subpixel", True)]
)
def test_sn_conv_normalises_the_reshaped_kernel(impl, transpose):
  rng = _rng(1)
  x = jnp.asarray(rng.normal(size=(2, 6, 6, 4)), jnp.float32)
  model = _SNConv(n_steps=200, impl=impl, transpose=transpose)
  variables = model.init(jax.random.key(0), x, train=False)
  name = "ConvTranspose_0" if transpose else "Conv_0"
  w = rng.normal(size=(3, 3, 4, 8)).astype(np.float32)
  b = rng.normal(size=(8,)).astype(np.float32)
  params = {name: {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}}
  y, updates = model.apply(
    {"params": params, "batch_stats": variables["batch_stats"]},
    x,
    train=True,
    mutable=["batch_stats"],
  )
  stats = updates["batch_stats"]["SpectralNorm_0"]
  assert stats[f"{name}/kernel/u"].shape == (1, 8)
  sigma = float(stats[f"{name}/kernel/sigma"])
  w_matrix = w.reshape(3 * 3 * 4, 8).astype(np.float64)
  true_sigma = np.linalg.norm(w_matrix, 2)
  u_init = variables["batch_stats"]["SpectralNorm_0"][f"{name}/kernel/u"]
  # 200 iterations from the initial u (exact arithmetic), plus the round-off of the last one.
  sigma_rtol = tolerances.power_iteration_error(w, u_init, 200) + _sn_roundoff(w)
  assert abs(sigma - true_sigma) <= sigma_rtol * true_sigma, (sigma, true_sigma, sigma_rtol)
  assert abs(np.linalg.norm(w_matrix / sigma, 2) - 1.0) <= sigma_rtol / (1 - sigma_rtol)
  make = layers.conv_transpose if transpose else layers.conv

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return make(8, 3, 2, impl=impl)(x)

  def plain(kernel, bias, inputs):
    variables = {"params": {name: {"kernel": jnp.asarray(kernel), "bias": jnp.asarray(bias)}}}
    return Plain().apply(variables, inputs)

  # The same convolution of the kernel divided by the same sigma: equal up to the round-off of its
  # taps times input channels (3 * 3 * 4), the division and the bias, at the scale of the sums of
  # |x| |w| / sigma + |b| (the same convolution of absolute values).
  magnitude = float(np.max(plain(np.abs(w) / sigma, np.abs(b), jnp.abs(x))))
  tolerances.assert_float32_close(
    y, plain(w / sigma, b, x), length=3 * 3 * 4 + 2, magnitude=magnitude
  )


def test_sn_disabled_is_the_plain_layer_and_bad_n_steps_raise():
  x = jnp.asarray(_rng(2).normal(size=(3, 7)), jnp.float32)
  model = _SNDense(4, enabled=False)
  variables = model.init(jax.random.key(0), x, train=False)
  assert "batch_stats" not in variables
  kernel = variables["params"]["Dense_0"]["kernel"]  # The bias is initialised to 0.
  tolerances.assert_float32_close(
    model.apply(variables, x, train=True),
    np.asarray(x, np.float64) @ np.asarray(kernel, np.float64),
    length=7 + 1,  # Fan-in 7 and the zero bias.
    magnitude=tolerances.dot_magnitude(x, kernel),
  )
  with pytest.raises(ValueError, match="n_steps >= 1.*got 0"):
    _SNDense(4, n_steps=0).init(jax.random.key(0), x, train=False)


# ----------------------------------------------------------------------------------------------
# Minibatch discrimination.
# ----------------------------------------------------------------------------------------------


def _minibatch_discrimination_numpy(f, t, include_self=True):
  """The formula in float64, and the float32 round-off of evaluating it.

  An L1 distance d of C differences of projections (length A each) is off by the round-off of
  A + C terms at the scale of their absolute terms, sum_c (|f_i| + |f_j|) |t_c|, and moves exp(-d)
  by exp(-d) times that (plus the exp's own rounding); then N terms are summed."""
  f, t = np.asarray(f, np.float64), np.asarray(t, np.float64)
  n, (a, _, c) = f.shape[0], t.shape
  m = np.einsum("na,abc->nbc", f, t)
  m_abs = np.einsum("na,abc->nbc", np.abs(f), np.abs(t))
  o = np.zeros((n, t.shape[1]))
  err = np.zeros((n, t.shape[1]))
  for i in range(n):
    for j in range(n):
      if j == i and not include_self:
        continue
      for b in range(t.shape[1]):
        term = np.exp(-np.abs(m[i, b] - m[j, b]).sum())
        o[i, b] += term
        exponent_err = tolerances.float32_atol(a + c, (m_abs[i, b] + m_abs[j, b]).sum())
        err[i, b] += term * (exponent_err + tolerances.float32_atol(1))
  err += np.vectorize(tolerances.float32_atol)(n, o)
  return np.concatenate([f, o], axis=-1), float(err.max())


@pytest.mark.parametrize("include_self", [True, False])
def test_minibatch_discrimination_matches_the_formula(include_self):
  rng = _rng(3)
  x = rng.normal(size=(6, 2, 2, 2)).astype(np.float32)  # Flattened to A = 8 features.
  module = blocks.MinibatchDiscrimination(num_kernels=5, kernel_dim=3, include_self=include_self)
  variables = module.init(jax.random.key(0), x)
  assert variables["params"]["kernel"].shape == (8, 5, 3)
  t = 0.3 * rng.normal(size=(8, 5, 3)).astype(np.float32)
  variables = {"params": {"kernel": jnp.asarray(t)}}
  out = np.asarray(module.apply(variables, x))
  assert out.shape == (6, 13)
  expected, atol = _minibatch_discrimination_numpy(x.reshape(6, -1), t, include_self)
  np.testing.assert_allclose(out, expected, rtol=0, atol=atol)
  # Permuted rows sum their N terms in another order: two float32 evaluations, each within atol.
  perm = rng.permutation(6)
  np.testing.assert_allclose(module.apply(variables, x[perm]), out[perm], rtol=0, atol=2 * atol)


# ----------------------------------------------------------------------------------------------
# Minibatch standard deviation.
# ----------------------------------------------------------------------------------------------


def _mbstd_numpy(x, group_size, num_channels, eps=1e-8):
  """The minibatch standard deviation in float64, and the float32 round-off of evaluating it.

  Per position, the group's mean and variance sum 2 g terms of at most 4 max x^2 (the squared
  deviations); sqrt(var + eps) moves by the variance's error over twice the std; the P positions
  of a feature are averaged."""
  n, c = x.shape[0], x.shape[-1]
  m = n // group_size
  out = np.zeros((n, num_channels))
  err = np.zeros((n, num_channels))
  chunk = c // num_channels
  for k in range(m):
    members = [i for i in range(n) if i % m == k]
    group = x[members].astype(np.float64)
    std = np.sqrt(np.var(group, axis=0, ddof=0) + eps)  # (..., C)
    var_err = tolerances.float32_atol(2 * len(members) + 1) * 4 * np.max(group**2, axis=0)
    std_err = var_err / (2 * std) + tolerances.float32_atol(1) * std
    for f in range(num_channels):
      stds = std[..., f * chunk : (f + 1) * chunk]
      out[members, f] = stds.mean()
      spread = std_err[..., f * chunk : (f + 1) * chunk].mean()
      err[members, f] = spread + tolerances.float32_atol(stds.size, stds.max())
  extra = np.broadcast_to(
    out.reshape(n, *(1,) * (x.ndim - 2), num_channels), (*x.shape[:-1], num_channels)
  )
  return np.concatenate([x, extra], axis=-1), float(err.max())


@pytest.mark.parametrize(
  "shape,group_size,num_channels",
  [((8, 3, 3, 4), 4, 1), ((8, 3, 3, 4), 2, 2), ((6, 5), 3, 1), ((2, 2, 2, 2), 4, 1)],
)
def test_minibatch_stddev_matches_numpy(shape, group_size, num_channels):
  x = _rng(4).normal(size=shape).astype(np.float32)
  module = blocks.MinibatchStdDev(group_size=group_size, num_channels=num_channels)
  out = np.asarray(jax.jit(lambda x: module.apply({}, x))(x))
  assert out.shape == (*shape[:-1], shape[-1] + num_channels)
  g = min(group_size, shape[0])
  expected, atol = _mbstd_numpy(x, g, num_channels)
  np.testing.assert_allclose(out, expected, rtol=0, atol=atol)


def test_minibatch_stddev_group_not_dividing_the_batch():
  x = _rng(5).normal(size=(6, 2, 2, 3)).astype(np.float32)
  with pytest.raises(ValueError, match="group_size 4 does not divide the batch size 6"):
    blocks.MinibatchStdDev(group_size=4).apply({}, x)
  out = blocks.MinibatchStdDev(group_size=4, strict=False).apply({}, x)
  expected, atol = _mbstd_numpy(x, 6, 1)
  np.testing.assert_allclose(out, expected, rtol=0, atol=atol)
  with pytest.raises(ValueError, match="num_channels=2 must be >= 1 and divide the 3"):
    blocks.MinibatchStdDev(group_size=2, num_channels=2).apply({}, x)


# ----------------------------------------------------------------------------------------------
# Conditional BatchNorm.
# ----------------------------------------------------------------------------------------------


def test_conditional_batch_norm():
  rng = _rng(6)
  x = jnp.asarray(rng.normal(2.0, 3.0, size=(4, 3, 3, 2)), jnp.float32)
  labels = jnp.array([0, 2, 2, 1])
  module = blocks.ConditionalBatchNorm(num_classes=3)
  variables = module.init(jax.random.key(0), x, labels, train=False)
  assert variables["params"]["gain"].shape == (3, 2)
  assert set(variables["batch_stats"]["BatchNorm_0"]) == {"mean", "var"}

  # Fresh (gain 1, bias 0): plain non-affine BatchNorm with batch statistics.
  out, updates = module.apply(variables, x, labels, train=True, mutable=["batch_stats"])
  xn = np.asarray(x, np.float64)
  mean, var = xn.mean(axis=(0, 1, 2)), xn.var(axis=(0, 1, 2))
  normalised = (xn - mean) / np.sqrt(var + layers.BN_EPSILON)
  # flax averages x and x^2 over the 36 positions (var = E[x^2] - E[x]^2): in units of the std,
  # the mean's error grows with s = max|x| / std and the variance's with s^2, which the largest
  # output multiplies; then a subtraction, an rsqrt and a product.
  count = 4 * 3 * 3
  s = float(np.max(np.abs(xn).max(axis=(0, 1, 2)) / np.sqrt(var)))
  bn_length = 2 * count + 3
  bn_magnitude = s * s * max(float(np.abs(normalised).max()), 1.0)
  tolerances.assert_float32_close(out, normalised, length=bn_length, magnitude=bn_magnitude)

  # Running statistics: updated in train mode with layers' momentum, untouched in eval mode. The
  # batch's mean and E[x^2] (36 terms of at most max|x| and max x^2), scaled and added.
  running = updates["batch_stats"]["BatchNorm_0"]
  m = layers.BN_MOMENTUM
  tolerances.assert_float32_close(
    running["mean"], (1 - m) * mean, length=count + 2, magnitude=np.abs(xn).max()
  )
  tolerances.assert_float32_close(
    running["var"], m + (1 - m) * var, length=2 * count + 2, magnitude=np.max(xn**2)
  )
  _, eval_updates = module.apply(
    {**variables, "batch_stats": updates["batch_stats"]},
    x,
    labels,
    train=False,
    mutable=["batch_stats"],
  )
  jax.tree_util.tree_map(
    np.testing.assert_array_equal, eval_updates["batch_stats"], updates["batch_stats"]
  )

  # Hand-set per-class gains and biases reach the examples of their class.
  gain = rng.normal(size=(3, 2)).astype(np.float32)
  bias = rng.normal(size=(3, 2)).astype(np.float32)
  params = {"gain": jnp.asarray(gain), "bias": jnp.asarray(bias)}
  out = module.apply({**variables, "params": params}, x, labels, train=True, mutable=True)[0]
  expected = normalised * gain[labels][:, None, None] + bias[labels][:, None, None]
  affine = bn_magnitude * np.abs(gain).max() + np.abs(bias).max()  # Then a product and a sum.
  tolerances.assert_float32_close(out, expected, length=bn_length + 2, magnitude=affine)

  # Eval mode normalises with the running averages.
  stats = {"BatchNorm_0": {"mean": jnp.asarray([1.0, -1.0]), "var": jnp.asarray([4.0, 0.25])}}
  out = module.apply({"params": params, "batch_stats": stats}, x, labels, train=False)
  expected = (xn - [1.0, -1.0]) / np.sqrt(np.array([4.0, 0.25]) + layers.BN_EPSILON)
  scaled = np.abs(expected).max() * np.abs(gain).max() + np.abs(bias).max()
  expected = expected * gain[labels][:, None, None] + bias[labels][:, None, None]
  # No reductions: a subtraction, a sum, an rsqrt, two products and a sum, element by element.
  tolerances.assert_float32_close(out, expected, length=6, magnitude=scaled)

  # Feature vectors (B, C) work too, under jit.
  feats = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  module5 = blocks.ConditionalBatchNorm(num_classes=3)
  v5 = module5.init(jax.random.key(0), feats, labels, train=False)
  out = jax.jit(lambda v, f, y: module5.apply(v, f, y, train=True, mutable=True)[0])(
    v5, feats, labels
  )
  assert out.shape == (4, 5)


# ----------------------------------------------------------------------------------------------
# Projection discriminator head, label embedding, ACGAN classifier.
# ----------------------------------------------------------------------------------------------


def test_projection_head_matches_the_formula():
  rng = _rng(7)
  phi = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  labels = jnp.array([0, 3, 1, 3, 2])
  head = blocks.ProjectionHead(num_classes=4)
  variables = head.init(jax.random.key(0), phi, labels, train=False)
  assert "batch_stats" not in variables
  w = rng.normal(size=(6, 1)).astype(np.float32)
  b = rng.normal(size=(1,)).astype(np.float32)
  v = rng.normal(size=(4, 6)).astype(np.float32)
  params = {"Dense_0": {"kernel": w, "bias": b}, "Embed_0": {"embedding": v}}
  params = jax.tree_util.tree_map(jnp.asarray, params)
  out = head.apply({"params": params}, phi, labels, train=False)
  p = np.asarray(phi, np.float64)
  rows = np.asarray(labels)

  def reference(w, v):
    """psi(phi) + <V_y, phi> in float64; the round-off of two dot products of length F = 6 and two
    sums, at the scale of their absolute terms."""
    w, v = np.asarray(w, np.float64), np.asarray(v, np.float64)
    value = p @ w[:, 0] + b[0] + np.sum(v[rows] * p, axis=-1)
    terms = np.abs(p) @ np.abs(w[:, 0]) + abs(b[0]) + np.sum(np.abs(v[rows] * p), axis=-1)
    return value, float(terms.max())

  expected, magnitude = reference(w, v)
  assert out.shape == (5,)
  tolerances.assert_float32_close(out, expected, length=6 + 2, magnitude=magnitude)
  tolerances.assert_float32_close(
    blocks.projection_logits(phi, labels, w, b, v), expected, length=6 + 2, magnitude=magnitude
  )

  # Spectrally normalised: w / ||w|| and V / sigma(V), the state in batch_stats.
  sn_head = blocks.ProjectionHead(num_classes=4, spectral_norm=True, n_steps=100)
  sn_vars = sn_head.init(jax.random.key(0), phi, labels, train=False)
  out, updates = sn_head.apply(
    {"params": params, "batch_stats": sn_vars["batch_stats"]},
    phi,
    labels,
    train=True,
    mutable=["batch_stats"],
  )
  sigma_v = float(updates["batch_stats"]["SpectralNorm_1"]["Embed_0/embedding/sigma"])
  u_init = sn_vars["batch_stats"]["SpectralNorm_1"]["Embed_0/embedding/u"]
  true_sigma = np.linalg.norm(v.astype(np.float64), 2)
  sigma_rtol = tolerances.power_iteration_error(v, u_init, 100) + _sn_roundoff(v)
  assert abs(sigma_v - true_sigma) <= sigma_rtol * true_sigma, (sigma_v, true_sigma, sigma_rtol)
  # psi's (6, 1) kernel has rank one: its sigma is ||w|| after one iteration, up to round-off,
  # which with the division by it adds to the length; V is divided by the sigma it stored.
  expected, magnitude = reference(w / np.linalg.norm(w.astype(np.float64)), v / sigma_v)
  tolerances.assert_float32_close(
    out, expected, length=6 + 2 + 2 * (6 + 1) + 1, magnitude=magnitude
  )


def test_label_embedding_shapes_and_values():
  rng = _rng(8)
  labels = jnp.array([2, 0, 1])
  z = jnp.asarray(rng.normal(size=(3, 7)), jnp.float32)
  images = jnp.asarray(rng.normal(size=(3, 4, 4, 1)), jnp.float32)

  one_hot = blocks.LabelEmbedding(num_classes=3)
  assert one_hot.init(jax.random.key(0), z, labels) == {}
  out = one_hot.apply({}, z, labels)
  assert out.shape == (3, 10)
  np.testing.assert_array_equal(out[:, 7:], np.eye(3)[[2, 0, 1]])
  np.testing.assert_array_equal(out[:, :7], z)

  learned = blocks.LabelEmbedding(num_classes=3, dim=5)
  variables = learned.init(jax.random.key(0), images, labels)
  table = np.asarray(variables["params"]["embedding"])
  assert table.shape == (3, 5)
  out = learned.apply(variables, images, labels)
  assert out.shape == (3, 4, 4, 6)
  np.testing.assert_array_equal(out[..., :1], images)
  np.testing.assert_array_equal(
    out[..., 1:], np.broadcast_to(table[[2, 0, 1]][:, None, None], (3, 4, 4, 5))
  )
  assert learned.apply(variables, z, labels).shape == (3, 12)


def test_classifier_head():
  rng = _rng(9)
  feats = jnp.asarray(rng.normal(size=(4, 2, 3)), jnp.float32)
  head = blocks.ClassifierHead(num_classes=10)
  variables = head.init(jax.random.key(0), feats, train=False)
  out = head.apply(variables, feats, train=False)
  assert out.shape == (4, 10)
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"]["Dense_0"])
  flat = np.asarray(feats, np.float64).reshape(4, 6)
  tolerances.assert_float32_close(  # Fan-in 6 and the bias.
    out,
    flat @ p["kernel"] + p["bias"],
    length=6 + 1,
    magnitude=tolerances.dot_magnitude(flat, p["kernel"]) + np.abs(p["bias"]).max(),
  )
  sn = blocks.ClassifierHead(num_classes=10, spectral_norm=True)
  sn_vars = sn.init(jax.random.key(0), feats, train=False)
  assert "Dense_0/kernel/u" in sn_vars["batch_stats"]["SpectralNorm_0"]
  assert sn.apply(sn_vars, feats, train=True, mutable=["batch_stats"])[0].shape == (4, 10)


# ----------------------------------------------------------------------------------------------
# Invalid labels, the models registry.
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "labels,match",
  [
    (None, "needs labels.*got labels=None"),
    (jnp.array([0, 1]), r"shape \(4,\).*got shape \(2,\)"),
    (jnp.array([0.0, 1.0, 1.0, 0.0]), "must be integers, got dtype float32"),
    (jnp.array([0, 1, 7, 2]), r"label 7 is outside \[0, 3\)"),
    (jnp.array([0, -1, 1, 2]), r"label -1 is outside \[0, 3\)"),
  ],
)
def test_invalid_labels_raise(labels, match):
  x = jnp.ones((4, 2, 2, 3))
  feats = jnp.ones((4, 3))
  valid = jnp.array([0, 1, 2, 0])
  cbn = blocks.ConditionalBatchNorm(num_classes=3)
  cbn_vars = cbn.init(jax.random.key(0), x, valid, train=False)
  with pytest.raises(ValueError, match="ConditionalBatchNorm"):
    cbn.apply(cbn_vars, x, labels, train=False)
  with pytest.raises(ValueError, match=match):
    cbn.apply(cbn_vars, x, labels, train=False)
  head = blocks.ProjectionHead(num_classes=3)
  head_vars = head.init(jax.random.key(0), feats, valid, train=False)
  with pytest.raises(ValueError, match=match):
    head.apply(head_vars, feats, labels, train=False)
  with pytest.raises(ValueError, match=match):
    blocks.LabelEmbedding(num_classes=3).apply({}, x, labels)


def test_blocks_is_not_an_architecture():
  assert "blocks" not in models.available_models()
  with pytest.raises(ValueError, match="Unknown model name 'blocks'"):
    models.get_model_module("blocks")


@pytest.mark.parametrize(
  "make, shape",
  [
    (lambda sn: dcgan.Discriminator(width=4, dropout=0.0, spectral_norm=sn), (2, 28, 28, 1)),
    (lambda sn: dcgan.Discriminator(width=4, dropout=0.0, spectral_norm=sn), (2, 32, 32, 3)),
    (lambda sn: mlp.Discriminator(hidden=(8, 8), dropout=0.0, spectral_norm=sn), (2, 2)),
  ],
  ids=["dcgan28", "dcgan32", "mlp"],
)
def test_spectral_norm_switch_of_the_discriminators(make, shape):
  """Same parameters with and without SN; with it, every kernel's sigma converges to ||W||_2."""
  x = jnp.asarray(np.random.RandomState(0).normal(size=shape), jnp.float32)
  plain = make(False).init(jax.random.key(0), x, train=False)
  variables = make(True).init(jax.random.key(0), x, train=False)
  assert jax.tree.map(jnp.shape, plain["params"]) == jax.tree.map(jnp.shape, variables["params"])
  kernels = {
    "/".join(str(getattr(k, "key", k)) for k in path[:-1]): leaf
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
    if getattr(path[-1], "key", None) == "kernel"
  }
  sn_state = {
    k.split("/")[0]: v
    for module in variables["batch_stats"].values()
    if isinstance(module, dict)
    for k, v in module.items()
    if k.endswith("/sigma")
  }
  assert set(sn_state) == {k.split("/")[-1] for k in kernels}  # Every kernel is normalised.
  u_init = {
    k.split("/")[0]: v
    for module in variables["batch_stats"].values()
    if isinstance(module, dict)
    for k, v in module.items()
    if k.endswith("/u")
  }
  apply = jax.jit(
    lambda v: make(True).apply(v, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]
  )
  stats = variables["batch_stats"]
  steps = 200  # Power iteration converges slowly when the top singular values are close.
  for _ in range(steps):
    stats = apply({**variables, "batch_stats": stats})
  sigmas = {
    k.split("/")[0]: float(v)
    for module in stats.values()
    if isinstance(module, dict)
    for k, v in module.items()
    if k.endswith("/sigma")
  }
  for name, kernel in kernels.items():
    layer = name.split("/")[-1]
    true_sigma = np.linalg.norm(np.asarray(kernel, np.float64).reshape(-1, kernel.shape[-1]), 2)
    rtol = tolerances.power_iteration_error(kernel, u_init[layer], steps) + _sn_roundoff(kernel)
    assert abs(sigmas[layer] - true_sigma) <= rtol * true_sigma, (name, sigmas[layer], rtol)
