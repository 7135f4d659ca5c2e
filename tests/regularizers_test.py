"""Regularizers against closed forms: linear and quadratic critics, weight clipping, lookups."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tolerances

from ganjax import regularizers

SHAPE = (4, 3, 2)  # Non-batch axes: the norms run over all of them.
BATCH = 6
# Float32 round-off of a penalty: a squared norm sums prod(SHAPE) squares, the penalty averages
# BATCH examples (against float64 references of the same float32 inputs).
LENGTH = int(np.prod(SHAPE)) + BATCH


def _batch(seed, n=BATCH, shape=SHAPE):
  return jnp.asarray(np.random.RandomState(seed).normal(size=(n, *shape)), jnp.float32)


def _linear_critic(w, b=0.3):
  """D(x) = <w, x> + b per example: its input gradient is w everywhere."""
  return lambda x: jnp.sum(x * w, axis=tuple(range(1, x.ndim))) + b


def _weights(seed, norm):
  w = np.random.RandomState(seed).normal(size=SHAPE)
  return jnp.asarray(w / np.linalg.norm(w) * norm, jnp.float32)


NORMS = [0.0, 0.25, 1.0, 3.5]


def _assert_two_sided_close(penalty, norms, target, length=LENGTH):
  """``penalty`` is ``mean((norms - target)^2)`` up to float32 round-off: the norms carry the
  round-off of ``length`` terms at their own size, which the square multiplies by
  ``2 |norm - target|``; ``(norm + target)^2`` bounds both that and the square's own rounding."""
  norms = np.asarray(norms, np.float64)
  tolerances.assert_float32_close(
    penalty,
    np.mean((norms - target) ** 2),
    length=length,
    magnitude=float(np.max((norms + target) ** 2)),
  )


@pytest.mark.parametrize("norm", NORMS)
def test_linear_critic_penalties_closed_form(norm):
  w = _weights(int(norm * 10), norm)
  d_fn = _linear_critic(w)
  real, fake = _batch(0), _batch(1)
  w_norm = float(np.linalg.norm(np.asarray(w, np.float64)))
  # The input gradient is w itself, exactly (grad of sum(x * w)); only its norm rounds.
  norms = np.full(BATCH, w_norm)

  gp, gp_metrics = regularizers.gradient_penalty(d_fn, real, fake, jax.random.key(0))
  _assert_two_sided_close(gp, norms, 1.0)
  tolerances.assert_float32_close(
    gp_metrics["gp_grad_norm"], w_norm, length=LENGTH, magnitude=w_norm
  )
  tolerances.assert_bitwise_equal(gp_metrics["gp"], gp)  # The same value, reported.

  gp2, _ = regularizers.gradient_penalty(d_fn, real, fake, jax.random.key(0), target=2.0)
  _assert_two_sided_close(gp2, norms, 2.0)

  # At norm 0 (w all zeros) the magnitude 0 demands R1 = R2 = 0 exactly, as they are.
  r1, r1_metrics = regularizers.r1_penalty(d_fn, real)
  tolerances.assert_float32_close(r1, 0.5 * w_norm**2, length=LENGTH, magnitude=0.5 * w_norm**2)
  tolerances.assert_float32_close(
    r1_metrics["r1_grad_norm"], w_norm, length=LENGTH, magnitude=w_norm
  )
  r2, r2_metrics = regularizers.r2_penalty(d_fn, fake)
  tolerances.assert_float32_close(r2, 0.5 * w_norm**2, length=LENGTH, magnitude=0.5 * w_norm**2)
  assert set(r2_metrics) == {"r2", "r2_grad_norm"}

  for interpolate in (False, True):
    dragan, dragan_metrics = regularizers.dragan_penalty(
      d_fn, real, jax.random.key(1), interpolate=interpolate
    )
    _assert_two_sided_close(dragan, norms, 1.0)
    assert set(dragan_metrics) == {"dragan", "dragan_grad_norm"}


def test_quadratic_critic_r1_against_numpy():
  """D(x) = 0.5 ||x||^2 has gradient x, so R1 = 0.5 E||x||^2."""
  real = _batch(2)
  d_fn = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))  # noqa: E731
  r1, metrics = regularizers.r1_penalty(d_fn, real)
  x = np.asarray(real, np.float64).reshape(BATCH, -1)
  # Sums and means of non-negative terms: round-off at the size of the result.
  tolerances.assert_float32_close(r1, 0.5 * np.mean(np.sum(x**2, axis=1)), length=LENGTH)
  tolerances.assert_float32_close(
    metrics["r1_grad_norm"], np.linalg.norm(x, axis=1).mean(), length=LENGTH
  )


def test_quadratic_critic_gradient_penalty_against_numpy():
  """D(x) = 0.5 ||x||^2: the gradient at x_hat is x_hat; check the interpolation per example."""
  real, fake = _batch(3), _batch(4)
  rng = jax.random.key(5)
  d_fn = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))  # noqa: E731
  gp, _ = regularizers.gradient_penalty(d_fn, real, fake, rng)
  eps = np.asarray(jax.random.uniform(rng, (BATCH, 1, 1, 1)), np.float64)
  x_hat = eps * np.asarray(real, np.float64) + (1 - eps) * np.asarray(fake, np.float64)
  norms = np.linalg.norm(x_hat.reshape(BATCH, -1), axis=1)
  # x_hat rounds twice per element in float32 (a product and a sum) before its norm.
  _assert_two_sided_close(gp, norms, 1.0, length=LENGTH + 2)
  # eps is per example: not one number for the whole batch.
  assert len(np.unique(eps)) == BATCH


def test_dragan_evaluates_at_real_plus_scaled_uniform_noise():
  """D(x) = 0.5 ||x||^2 has gradient x: the penalty reveals the point x_p it is evaluated at."""
  real = _batch(6)
  d_fn = lambda x: 0.5 * jnp.sum(jnp.square(x), axis=(1, 2, 3))  # noqa: E731
  rng = jax.random.key(2)
  penalty, _ = regularizers.dragan_penalty(d_fn, real, rng, scale=0.5)
  # The documented variant: x_p = real + scale * std(batch) * U[0, 1) per element.
  noise = np.asarray(jax.random.uniform(jax.random.split(rng)[0], real.shape), np.float64)
  r = np.asarray(real, np.float64)
  x_p = r + 0.5 * r.std() * noise
  norms = np.linalg.norm(x_p.reshape(BATCH, -1), axis=1)
  # The batch's float32 std is a two-pass reduction over its r.size elements; x_p then rounds
  # three times per element.
  _assert_two_sided_close(penalty, norms, 1.0, length=LENGTH + 2 * r.size + 3)
  no_noise, _ = regularizers.dragan_penalty(d_fn, real, rng, scale=0.0)
  norms0 = np.linalg.norm(r.reshape(BATCH, -1), axis=1)
  _assert_two_sided_close(no_noise, norms0, 1.0)


def test_consistency_of_affine_critic_under_shift():
  """D(x) = <w, x> + b, T(x) = x + s_i: D(T(x)) - D(x) = s_i * sum(w)."""
  w = _weights(7, 1.3)
  d_fn = _linear_critic(w)
  x = _batch(8)
  shifts = np.linspace(-1.0, 1.0, BATCH).astype(np.float32)
  x_aug = x + shifts[:, None, None, None]
  penalty, metrics = regularizers.consistency_penalty(d_fn, x, x_aug)
  differences = shifts.astype(np.float64) * float(np.sum(np.asarray(w, np.float64)))
  expected = np.mean(differences**2)
  # D(T(x)) - D(x) cancels two dot products of length prod(SHAPE) plus the bias 0.3: each rounds
  # at the size of its |terms|; the square multiplies that by 2 |difference|, the mean adds BATCH.
  w64 = np.abs(np.asarray(w, np.float64)).reshape(-1)
  dots = max(
    tolerances.dot_magnitude(np.asarray(v, np.float64).reshape(BATCH, -1), w64) for v in (x, x_aug)
  )
  largest = float(np.max(np.abs(differences)))
  tolerances.assert_float32_close(
    penalty,
    expected,
    length=LENGTH + 1,
    magnitude=2 * largest * 2 * (dots + 0.3) + largest**2,
  )
  tolerances.assert_bitwise_equal(metrics["consistency"], penalty)  # The same value, reported.
  zero, _ = regularizers.consistency_penalty(d_fn, x, x)
  assert float(zero) == 0.0


class _Critic(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = x.reshape(x.shape[0], -1)
    x = nn.Dense(8)(x)
    x = nn.leaky_relu(x, 0.2)
    return nn.Dense(1)(x)[:, 0]


@pytest.mark.parametrize("name", ["gradient_penalty", "r1", "r2", "dragan"])
def test_penalties_differentiable_wrt_params(name):
  """Double backprop through a small MLP critic: finite, nonzero parameter gradients, under jit."""
  model = _Critic()
  real, fake = _batch(9), _batch(10)
  params = model.init(jax.random.key(0), real)["params"]
  penalty = regularizers.get_regularizer(name)
  args = {"real": real, "fake": fake, "rng": jax.random.key(3)}

  def loss(p):
    d_fn = lambda x: model.apply({"params": p}, x)  # noqa: E731
    return penalty.fn(d_fn, *(args[k] for k in penalty.inputs))[0]

  grads = jax.jit(jax.grad(loss))(params)
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0) for g in leaves)


def test_linear_critic_gp_parameter_gradient_closed_form():
  """d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||; the norm has gradient 0 (not NaN) at w = 0."""
  real, fake = _batch(11), _batch(12)

  def gp_of(w):
    return regularizers.gradient_penalty(_linear_critic(w), real, fake, jax.random.key(0))[0]

  w = _weights(13, 2.5)
  w64 = np.asarray(w, np.float64)
  w_norm = float(np.linalg.norm(w64))
  expected = 2 * (w_norm - 1.0) * w64 / w_norm
  # The norm's round-off (LENGTH terms) scales every entry; the backward pass sums the BATCH
  # examples' identical gradients.
  tolerances.assert_float32_close(jax.grad(gp_of)(w), expected, length=LENGTH + BATCH)
  zero_grad = jax.grad(gp_of)(jnp.zeros(SHAPE))
  assert np.all(np.isfinite(zero_grad))


def test_lazy_regularization_schedule_and_cond():
  lazy = regularizers.lazy_regularization(10.0, 4)
  assert lazy.effective_weight == 40.0
  weights = [float(lazy.weight_at(s)) for s in range(9)]
  assert weights == [40.0, 0, 0, 0, 40.0, 0, 0, 0, 40.0]

  w = _weights(14, 2.0)
  real = _batch(15)

  @jax.jit
  def weighted(step):
    return lazy(step, regularizers.r1_penalty, _linear_critic(w), real)

  on, metrics_on = weighted(jnp.int32(8))
  off, metrics_off = weighted(jnp.int32(9))
  # R1 = 0.5 ||w||^2 (= 2 up to w's rounding to float32): a sum of squares, then weights.
  r1 = 0.5 * float(np.sum(np.asarray(w, np.float64) ** 2))
  tolerances.assert_float32_close(on, 40.0 * r1, length=LENGTH + 1)
  assert float(off) == 0.0 and float(metrics_off["r1"]) == 0.0
  tolerances.assert_float32_close(metrics_on["r1"], r1, length=LENGTH)
  every_step = regularizers.lazy_regularization(10.0, 1)
  every, _ = every_step(3, regularizers.r1_penalty, _linear_critic(w), real)
  tolerances.assert_float32_close(every, 10.0 * r1, length=LENGTH + 1)
  # Differentiable w.r.t. D's parameters through the cond: d/dw (40 * 0.5 ||w||^2) = 40 w, the
  # mean of BATCH equal per-example gradients, times the weight.
  grad_fn = jax.jit(
    jax.grad(lambda v, step: lazy(step, regularizers.r1_penalty, _linear_critic(v), real)[0])
  )
  tolerances.assert_float32_close(grad_fn(w, 4), 40.0 * np.asarray(w, np.float64), length=BATCH + 2)
  assert np.all(np.asarray(grad_fn(w, 5)) == 0)
  with pytest.raises(ValueError, match="positive integer"):
    regularizers.lazy_regularization(1.0, 0)


def test_lazy_adam_correction_matches_stylegan2():
  lr, b1, b2 = regularizers.lazy_adam_correction(0.002, 0.0, 0.99, 16)
  c = 16 / 17
  # The same Python float operations as the function's: equal bit for bit.
  assert (lr, b1, b2) == (0.002 * c, 0.0, 0.99**c)
  assert regularizers.lazy_adam_correction(1e-3, 0.5, 0.9, 1) == (0.5e-3, 0.5**0.5, 0.9**0.5)


def test_instance_noise_and_annealing():
  x = jnp.zeros((2000, 8), jnp.float32)
  noisy = regularizers.instance_noise(x, jax.random.key(0), 0.3)
  assert noisy.shape == x.shape and noisy.dtype == x.dtype
  # Statistical: 5 relative standard errors of the sample std of noisy.size normal draws.
  np.testing.assert_allclose(
    np.std(np.asarray(noisy)), 0.3, rtol=tolerances.std_rtol(noisy.size), atol=0
  )
  assert np.array_equal(regularizers.instance_noise(x, jax.random.key(0), 0.0), x)
  stddevs = [float(regularizers.annealed_stddev(0.2, s, 100)) for s in (0, 25, 100, 500)]
  # step / 100, 1 - that and the product with 0.2 each round once in float32; 0 is exact.
  tolerances.assert_float32_close(stddevs[:2], [0.2, 0.15], length=3)
  assert stddevs[2:] == [0.0, 0.0]
  traced = jax.jit(lambda s: regularizers.annealed_stddev(0.2, s, 100))(jnp.int32(50))
  tolerances.assert_float32_close(traced, 0.1, length=3)


def _quadratic_loss(params):
  """Minimum far outside the clipping box, so Adam with a large lr pushes params out."""
  return sum(jnp.sum(jnp.square(p - 3.0)) for p in jax.tree.leaves(params))


def test_weight_clipping_keeps_params_in_box_exactly():
  c = 0.01
  rs = np.random.RandomState(0)
  params = {
    # Starts far outside the box, in both directions, with awkward magnitudes.
    "w": jnp.asarray(rs.normal(size=(64, 32)) * np.logspace(-4, 3, 32), jnp.float32),
    "b": jnp.asarray(rs.uniform(-c, c, size=(32,)), jnp.float32),
  }
  opt = optax.chain(optax.adam(0.5), regularizers.weight_clipping(c))
  state = opt.init(params)

  @jax.jit
  def step(params, state):
    grads = jax.grad(_quadratic_loss)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  c32 = np.float32(c)
  for _ in range(5):
    params, state = step(params, state)
    for p in jax.tree.leaves(params):
      p = np.asarray(p)
      assert p.dtype == np.float32
      assert np.all(p <= c32) and np.all(p >= -c32), (p.min(), p.max())
  # The clip is active: params sit exactly on the faces of the box.
  w = np.asarray(params["w"])
  assert np.any(w == c32) and np.any(w == -c32)


def test_weight_clipping_exact_for_adversarial_params():
  """Param/target pairs whose float difference rounds: the result is still inside [-c, c]."""
  c = 0.01
  rs = np.random.RandomState(1)
  p = jnp.asarray(rs.uniform(-1, 1, 20000) * 10.0 ** rs.uniform(-3, 4, 20000), jnp.float32)
  u = jnp.asarray(rs.uniform(-1, 1, 20000) * 10.0 ** rs.uniform(-3, 4, 20000), jnp.float32)
  clip = regularizers.weight_clipping(c)
  updates, _ = jax.jit(clip.update)(u, clip.init(p), p)
  out = np.asarray(optax.apply_updates(p, updates))
  assert np.all(np.abs(out) <= np.float32(c))
  # The result is the target clipped to the float32 box, up to a few ulps of the operands.
  c32 = float(np.float32(c))
  target = np.clip(np.asarray(p, np.float64) + np.asarray(u, np.float64), -c32, c32)
  tol = 4 * np.spacing(np.maximum(np.abs(np.asarray(p)), np.abs(np.asarray(u)))).astype(np.float64)
  assert np.all(np.abs(out - target) <= tol)


def test_weight_clipping_inside_box_moves_like_plain_adam():
  c = 1.0
  params = {"w": jnp.linspace(-0.5, 0.5, 11, dtype=jnp.float32)}
  grads_fn = jax.grad(lambda p: jnp.sum(jnp.square(p["w"] - 0.2)))
  plain, clipped = optax.adam(1e-2), optax.chain(optax.adam(1e-2), regularizers.weight_clipping(c))
  p_plain, p_clip = params, params
  s_plain, s_clip = plain.init(params), clipped.init(params)
  for _ in range(5):
    u, s_plain = plain.update(grads_fn(p_plain), s_plain, p_plain)
    p_plain = optax.apply_updates(p_plain, u)
    u, s_clip = clipped.update(grads_fn(p_clip), s_clip, p_clip)
    p_clip = optax.apply_updates(p_clip, u)
  np.testing.assert_array_equal(p_plain["w"], p_clip["w"])
  assert not np.array_equal(p_plain["w"], params["w"])


def test_weight_clipping_needs_params():
  clip = regularizers.weight_clipping(0.01)
  with pytest.raises(ValueError, match="needs params"):
    clip.update(jnp.ones(3), clip.init(jnp.ones(3)))
  with pytest.raises(ValueError, match="positive"):
    regularizers.weight_clipping(0.0)


def test_get_regularizer_names():
  assert set(regularizers.PENALTIES) == {"gradient_penalty", "r1", "r2", "dragan", "consistency"}
  assert regularizers.get_regularizer("r1").fn is regularizers.r1_penalty
  with pytest.raises(ValueError, match="valid choices: consistency, dragan, gradient_penalty"):
    regularizers.get_regularizer("r3")
