"""GAN building blocks (ganjax.models.blocks) against numpy implementations of their formulas."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
  true_sigma = np.linalg.norm(w, 2)
  np.testing.assert_allclose(sigma, true_sigma, rtol=1e-3)
  assert np.linalg.norm(w / sigma, 2) == pytest.approx(1.0, rel=1e-3)
  # The output is the layer with the normalised kernel, normalised by the sigma it stored.
  np.testing.assert_allclose(y, x @ (w / sigma) + b, rtol=1e-5, atol=1e-5)

  # Eval mode: deterministic, writes nothing even when the collection is mutable.
  evaluated = {"params": params, "batch_stats": stats}
  y_eval = model.apply(evaluated, x, train=False)
  _, updates = model.apply(evaluated, x, train=False, mutable=["batch_stats"])
  jax.tree_util.tree_map(np.testing.assert_array_equal, updates["batch_stats"], stats)
  np.testing.assert_allclose(y_eval, x @ (w / true_sigma) + b, rtol=1e-3, atol=1e-4)

  # With a converged u the gradient is that of x @ (W / ||W||_2) + b: it flows through sigma(W).
  def loss(kernel):
    p = {"Dense_0": {"kernel": kernel, "bias": jnp.asarray(b)}}
    return jnp.sum(jnp.sin(model.apply({"params": p, "batch_stats": stats}, x, train=False)))

  def reference(kernel):
    return jnp.sum(jnp.sin(x @ (kernel / jnp.linalg.norm(kernel, 2)) + b))

  np.testing.assert_allclose(
      jax.grad(loss)(jnp.asarray(w)), jax.grad(reference)(jnp.asarray(w)), rtol=2e-3, atol=1e-4
  )

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
  w_matrix = w.reshape(3 * 3 * 4, 8)
  np.testing.assert_allclose(sigma, np.linalg.norm(w_matrix, 2), rtol=1e-3)
  assert np.linalg.norm(w_matrix / sigma, 2) == pytest.approx(1.0, rel=1e-3)
  make = layers.conv_transpose if transpose else layers.conv
  plain = {"params": {name: {"kernel": jnp.asarray(w / sigma), "bias": jnp.asarray(b)}}}

  class Plain(nn.Module):
    @nn.compact
    def __call__(self, x):
      return make(8, 3, 2, impl=impl)(x)

  np.testing.assert_allclose(y, Plain().apply(plain, x), rtol=1e-4, atol=1e-4)


def test_sn_disabled_is_the_plain_layer_and_bad_n_steps_raise():
  x = jnp.asarray(_rng(2).normal(size=(3, 7)), jnp.float32)
  model = _SNDense(4, enabled=False)
  variables = model.init(jax.random.key(0), x, train=False)
  assert "batch_stats" not in variables
  kernel = variables["params"]["Dense_0"]["kernel"]
  np.testing.assert_allclose(model.apply(variables, x, train=True), x @ kernel, atol=1e-6)
  with pytest.raises(ValueError, match="n_steps >= 1.*got 0"):
    _SNDense(4, n_steps=0).init(jax.random.key(0), x, train=False)


# ----------------------------------------------------------------------------------------------
# Minibatch discrimination.
# ----------------------------------------------------------------------------------------------


def _minibatch_discrimination_numpy(f, t, include_self=True):
  n = f.shape[0]
  m = np.einsum("na,abc->nbc", f, t)
  o = np.zeros((n, t.shape[1]))
  for i in range(n):
    for j in range(n):
      if j == i and not include_self:
        continue
      for b in range(t.shape[1]):
        o[i, b] += np.exp(-np.abs(m[i, b] - m[j, b]).sum())
  return np.concatenate([f, o], axis=-1)


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
  expected = _minibatch_discrimination_numpy(x.reshape(6, -1), t, include_self)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  perm = rng.permutation(6)
  np.testing.assert_allclose(module.apply(variables, x[perm]), out[perm], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Minibatch standard deviation.
# ----------------------------------------------------------------------------------------------


def _mbstd_numpy(x, group_size, num_channels, eps=1e-8):
  n, c = x.shape[0], x.shape[-1]
  m = n // group_size
  out = np.zeros((n, num_channels))
  chunk = c // num_channels
  for k in range(m):
    members = [i for i in range(n) if i % m == k]
    group = x[members].astype(np.float64)
    std = np.sqrt(np.var(group, axis=0, ddof=0) + eps)  # (..., C)
    for f in range(num_channels):
      out[members, f] = std[..., f * chunk : (f + 1) * chunk].mean()
  extra = np.broadcast_to(out.reshape(n, *(1,) * (x.ndim - 2), num_channels),
                          (*x.shape[:-1], num_channels))
  return np.concatenate([x, extra], axis=-1)


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
  np.testing.assert_allclose(out, _mbstd_numpy(x, g, num_channels), rtol=1e-5, atol=1e-6)


def test_minibatch_stddev_group_not_dividing_the_batch():
  x = _rng(5).normal(size=(6, 2, 2, 3)).astype(np.float32)
  with pytest.raises(ValueError, match="group_size 4 does not divide the batch size 6"):
    blocks.MinibatchStdDev(group_size=4).apply({}, x)
  out = blocks.MinibatchStdDev(group_size=4, strict=False).apply({}, x)
  np.testing.assert_allclose(out, _mbstd_numpy(x, 6, 1), rtol=1e-5, atol=1e-6)
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
  np.testing.assert_allclose(out, normalised, rtol=1e-4, atol=1e-4)

  # Running statistics: updated in train mode with layers' momentum, untouched in eval mode.
  running = updates["batch_stats"]["BatchNorm_0"]
  m = layers.BN_MOMENTUM
  np.testing.assert_allclose(running["mean"], (1 - m) * mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(running["var"], m + (1 - m) * var, rtol=1e-4)
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
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

  # Eval mode normalises with the running averages.
  stats = {"BatchNorm_0": {"mean": jnp.asarray([1.0, -1.0]), "var": jnp.asarray([4.0, 0.25])}}
  out = module.apply({"params": params, "batch_stats": stats}, x, labels, train=False)
  expected = (xn - [1.0, -1.0]) / np.sqrt(np.array([4.0, 0.25]) + layers.BN_EPSILON)
  expected = expected * gain[labels][:, None, None] + bias[labels][:, None, None]
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)

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
  p = np.asarray(phi)
  expected = p @ w[:, 0] + b[0] + np.sum(v[np.asarray(labels)] * p, axis=-1)
  assert out.shape == (5,)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      blocks.projection_logits(phi, labels, w, b, v), expected, rtol=1e-5, atol=1e-5
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
  np.testing.assert_allclose(sigma_v, np.linalg.norm(v, 2), rtol=1e-3)
  expected = blocks.projection_logits(phi, labels, w / np.linalg.norm(w), b, v / sigma_v)
  np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


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
  p = variables["params"]["Dense_0"]
  np.testing.assert_allclose(
      out, feats.reshape(4, 6) @ p["kernel"] + p["bias"], rtol=1e-5, atol=1e-5
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
  apply = jax.jit(
      lambda v: make(True).apply(v, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]
  )
  stats = variables["batch_stats"]
  for _ in range(200):  # Power iteration converges slowly when the top singular values are close.
    stats = apply({**variables, "batch_stats": stats})
  sigmas = {
      k.split("/")[0]: float(v)
      for module in stats.values()
      if isinstance(module, dict)
      for k, v in module.items()
      if k.endswith("/sigma")
  }
  for name, kernel in kernels.items():
    matrix = np.asarray(kernel).reshape(-1, kernel.shape[-1])
    np.testing.assert_allclose(sigmas[name.split("/")[-1]], np.linalg.norm(matrix, 2), rtol=2e-3)
