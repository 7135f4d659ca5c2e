"""Objectives against closed forms (written out with numpy in float64, independent of optax)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_bitwise_equal, assert_differ_beyond_roundoff, assert_float32_close

from ganjax import losses


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _softplus(x):
  """log(1 + exp(x)), exact in float64 for any x."""
  return np.logaddexp(0.0, x)


def _bce(logits, target):
  """Mean BCE of sigmoid(logits) against a constant target: t softplus(-x) + (1-t) softplus(x)."""
  return np.mean(target * _softplus(-logits) + (1.0 - target) * _softplus(logits))


# Fixed logits, with large magnitudes on both sides (every real/fake pairing of sign occurs).
REAL = np.array([2.0, -1.0, 0.5, 30.0, -40.0, 0.0], np.float32)
FAKE = np.array([-3.0, 0.0, 1.5, -40.0, 30.0, 40.0], np.float32)
LOG2 = math.log(2.0)
# float32 losses against the float64 references: a mean over the batch of terms that each round a
# few times (softplus, sigmoid, a relativistic average's own batch mean): 2 * N accumulated terms.
N = len(REAL)
LENGTH = 2 * N


def _loss_magnitude(reference_value: float) -> float:
  """The sum of |terms| a loss's round-off scales with, over N: the loss itself where its terms are
  non-negative (BCE, hinge, squares), plus the logits' mean size for the signed terms of WGAN and
  the means a relativistic objective subtracts (any objective: an upper bound)."""
  return abs(reference_value) + float(np.mean(np.abs(REAL)) + np.mean(np.abs(FAKE)))


class Reference(NamedTuple):
  """An objective written out in numpy (float64) and its known properties."""

  d_loss: Callable  # (real, fake, alpha) -> D loss; alpha is the label smoothing.
  g_loss: Callable  # (fake, real) -> G loss.
  indifferent: tuple[float, float]  # (D loss, G loss) at all-zero logits, in closed form.
  smoothing: bool = False  # Whether label smoothing is supported.
  # Logit values the losses pull towards: the gradient has the sign of (logit - target), so +inf
  # means "always push up" (gradient <= 0) and -inf "always push down" (gradient >= 0).
  d_real_target: float = math.inf
  d_fake_target: float = -math.inf
  g_fake_target: float = math.inf


def _bce_d(r, f, a):
  return 0.5 * (_bce(r, 1.0 - a) + _bce(f, 0.0))


def _ra_d(r, f, a):
  return 0.5 * (_bce(r - f.mean(), 1.0 - a) + _bce(f - r.mean(), 0.0))


def _ra_g(f, r):
  return 0.5 * (_bce(f - r.mean(), 1.0) + _bce(r - f.mean(), 0.0))


REFERENCES = {
  "minimax": Reference(_bce_d, lambda f, r: -np.mean(_softplus(f)), (LOG2, -LOG2), True),
  "non_saturating": Reference(_bce_d, lambda f, r: np.mean(_softplus(-f)), (LOG2, LOG2), True),
  "wgan": Reference(lambda r, f, a: f.mean() - r.mean(), lambda f, r: -f.mean(), (0.0, 0.0)),
  "wgan_gp": Reference(lambda r, f, a: f.mean() - r.mean(), lambda f, r: -f.mean(), (0.0, 0.0)),
  "hinge": Reference(
    lambda r, f, a: np.mean(np.maximum(0.0, 1.0 - r)) + np.mean(np.maximum(0.0, 1.0 + f)),
    lambda f, r: -f.mean(),
    (2.0, 0.0),
  ),
  "least_squares": Reference(
    lambda r, f, a: 0.5 * np.mean((r - 1.0) ** 2) + 0.5 * np.mean(f**2),
    lambda f, r: 0.5 * np.mean((f - 1.0) ** 2),
    (0.5, 0.5),
    d_real_target=1.0,
    d_fake_target=0.0,
    g_fake_target=1.0,
  ),
  "relativistic": Reference(
    lambda r, f, a: _bce(r - f, 1.0 - a), lambda f, r: _bce(f - r, 1.0), (LOG2, LOG2), True
  ),
  "relativistic_average": Reference(_ra_d, _ra_g, (LOG2, LOG2), True),
}

OBJECTIVES = sorted(losses.available_objectives())


def _reference(name: str) -> Reference:
  if name not in REFERENCES:
    pytest.fail(f"Objective {name!r} has no numpy reference in REFERENCES; add one.")
  return REFERENCES[name]


def _numeric_grad(fn, x, h=1e-5):
  """Central differences of a float64 numpy function."""
  grad = np.zeros_like(x)
  for i in range(x.size):
    step = np.zeros_like(x)
    step[i] = h
    grad[i] = (fn(x + step) - fn(x - step)) / (2 * h)
  return grad


def _check_sign(grad, logits, target, what):
  """The gradient has the sign of (logit - target) (or is zero) elementwise."""
  assert np.all(np.isfinite(grad)), what
  assert np.all(grad * np.sign(logits - target) >= 0), (what, grad, logits)
  assert np.abs(grad).sum() > 0, what


@pytest.mark.parametrize("name", OBJECTIVES)
def test_objective_values_and_gradients(name):
  ref = _reference(name)
  objective = losses.get_objective(name)
  real, fake = jnp.asarray(REAL), jnp.asarray(FAKE)
  r64, f64 = REAL.astype(np.float64), FAKE.astype(np.float64)
  d_fn = jax.jit(lambda r, f: objective.discriminator(r, f))
  g_fn = jax.jit(lambda f, r: objective.generator(f, r))

  d_loss, d_metrics = d_fn(real, fake)
  g_loss, g_metrics = g_fn(fake, real)
  assert np.isfinite(d_loss) and np.isfinite(g_loss)
  d_expected, g_expected = ref.d_loss(r64, f64, 0.0), ref.g_loss(f64, r64)
  assert_float32_close(d_loss, d_expected, length=LENGTH, magnitude=_loss_magnitude(d_expected))
  assert_float32_close(g_loss, g_expected, length=LENGTH, magnitude=_loss_magnitude(g_expected))
  assert_bitwise_equal(d_metrics["d_loss"], d_loss)  # The same value, reported.
  assert_bitwise_equal(g_metrics["g_loss"], g_loss)
  assert all(np.isfinite(v) for v in {**d_metrics, **g_metrics}.values())
  # The logits are multiples of 1/2 below 2^22: every partial sum is exact in any order and only
  # the division by N rounds.
  assert_float32_close(d_metrics["d_real_logit"], r64.mean(), length=1)
  assert_float32_close(d_metrics["d_fake_logit"], f64.mean(), length=1)

  # Gradients: finite, with the expected sign, and equal to the float64 reference's.
  grad_real = jax.grad(lambda r: objective.discriminator(r, fake)[0])(real)
  grad_fake = jax.grad(lambda f: objective.discriminator(real, f)[0])(fake)
  grad_g = jax.grad(lambda f: objective.generator(f, real)[0])(fake)
  _check_sign(np.asarray(grad_real), r64, ref.d_real_target, "dD/dreal")
  _check_sign(np.asarray(grad_fake), f64, ref.d_fake_target, "dD/dfake")
  _check_sign(np.asarray(grad_g), f64, ref.g_fake_target, "dG/dfake")
  # Central differences in float64 (h = 1e-5) are exact to ~1e-8, below float32 round-off. The
  # float32 gradient of a batch mean is (1/N) times each term's derivative, plus, for the
  # relativistic average, a mean of N sigmoids / N: round-off at the size of the largest of those.
  for grad, numeric in [
    (grad_real, _numeric_grad(lambda r: ref.d_loss(r, f64, 0.0), r64)),
    (grad_fake, _numeric_grad(lambda f: ref.d_loss(r64, f, 0.0), f64)),
    (grad_g, _numeric_grad(lambda f: ref.g_loss(f, r64), f64)),
  ]:
    magnitude = float(np.abs(numeric).max()) + 1.0 / N
    assert_float32_close(grad, numeric, length=LENGTH, magnitude=magnitude)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_indifferent_discriminator(name):
  """All-zero logits (D cannot tell real from fake) give each objective's closed-form value."""
  d_expected, g_expected = _reference(name).indifferent
  objective = losses.get_objective(name)
  zeros = jnp.zeros(8)
  d_loss, d_metrics = objective.discriminator(zeros, zeros)
  g_loss, _ = objective.generator(zeros, zeros)
  # Means of 8 equal terms (log 2, 1, 0 or 1/2) of the loss's sign: round-off at the loss's size;
  # WGAN's 0 - 0 is exact.
  assert_float32_close(d_loss, d_expected, length=8)
  assert_float32_close(g_loss, g_expected, length=8)
  for key in ("d_real", "d_fake"):  # Probabilities, where reported, are 1/2.
    if key in d_metrics:
      assert_float32_close(d_metrics[key], 0.5, length=8)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_label_smoothing(name):
  ref = _reference(name)
  alpha = 0.1
  assert losses.supports_label_smoothing(losses.get_objective(name)) == ref.smoothing
  if not ref.smoothing:
    with pytest.raises(ValueError, match=name) as e:
      losses.get_objective(name, label_smoothing=alpha)
    assert "non_saturating" in str(e.value) and "0.1" in str(e.value)
    return
  smoothed = losses.get_objective(name, label_smoothing=alpha)
  plain = losses.get_objective(name)
  assert smoothed.generator is plain.generator
  assert smoothed.generator_needs_real_logits == plain.generator_needs_real_logits
  r64, f64 = REAL.astype(np.float64), FAKE.astype(np.float64)
  loss, _ = smoothed.discriminator(jnp.asarray(REAL), jnp.asarray(FAKE))
  expected = ref.d_loss(r64, f64, alpha)
  assert_float32_close(loss, expected, length=LENGTH, magnitude=_loss_magnitude(expected))
  # Smoothing moves the loss (by alpha times the mean real logit) far beyond that round-off, so
  # ignoring it would fail the comparison above.
  assert_differ_beyond_roundoff(
    loss, ref.d_loss(r64, f64, 0.0), length=LENGTH, magnitude=_loss_magnitude(expected)
  )


def test_smoothed_discriminator_is_optimal_at_the_smoothed_target():
  """With target 1 - alpha the real term's minimum moves to logit log((1 - alpha) / alpha)."""
  alpha = 0.2
  objective = losses.get_objective("non_saturating", label_smoothing=alpha)
  at_target = jnp.full((4,), math.log((1 - alpha) / alpha))
  loss, metrics = objective.discriminator(at_target, jnp.zeros(4))
  grad = jax.grad(lambda r: objective.discriminator(r, jnp.zeros(4))[0])(at_target)
  # (sigmoid(x) - (1 - alpha)) / (2 * 4): two terms of size <= 1/8 that cancel, after the
  # roundings of x, of the sigmoid and of 1 - alpha.
  assert_float32_close(grad, np.zeros(4), length=4, magnitude=1 / 8)
  entropy = -(alpha * math.log(alpha) + (1 - alpha) * math.log(1 - alpha))
  # Means of 4 non-negative terms: round-off at the mean's size.
  assert_float32_close(metrics["d_loss_real"], entropy, length=2 * 4)
  assert_float32_close(metrics["d_loss_fake"], LOG2, length=2 * 4)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan")])
def test_invalid_label_smoothing_raises(value):
  with pytest.raises(ValueError, match="label_smoothing") as e:
    losses.get_objective("non_saturating", label_smoothing=value)
  assert str(value) in str(e.value)


def test_objective_fields():
  objectives = losses.available_objectives()
  assert set(REFERENCES) == set(objectives)
  for name, objective in objectives.items():
    assert losses.get_objective(name) is objective  # No smoothing: the module-level objective.
    expected = (("gradient_penalty", 10.0),) if name == "wgan_gp" else ()
    assert objective.implied_regularizers == expected, name
    assert objective.generator_needs_real_logits == name.startswith("relativistic"), name
    for doc in (objective.discriminator.__doc__, objective.generator.__doc__):
      assert doc and "20" in doc, name  # The math and a paper (with its year).


def test_relativistic_losses_need_matching_real_logits():
  with pytest.raises(ValueError, match="real logits"):
    losses.relativistic.generator(jnp.zeros(4), None)
  with pytest.raises(ValueError, match="real logits"):
    losses.relativistic_average.generator(jnp.zeros(4), None)
  with pytest.raises(ValueError, match="shapes"):
    losses.relativistic.discriminator(jnp.zeros(4), jnp.zeros((4, 1)))


def test_low_precision_logits_are_upcast():
  logits = jnp.asarray(REAL, jnp.bfloat16)
  for name, objective in losses.available_objectives().items():
    d_loss, _ = objective.discriminator(logits, logits)
    g_loss, _ = objective.generator(logits, logits)
    assert d_loss.dtype == jnp.float32 and g_loss.dtype == jnp.float32, name


def test_discriminator_bce_closed_form():
  loss, metrics = losses.non_saturating.discriminator(jnp.asarray(REAL), jnp.asarray(FAKE))
  r64, f64 = REAL.astype(np.float64), FAKE.astype(np.float64)
  expected_real = np.mean(_softplus(-r64))  # -log sigmoid(x)
  expected_fake = np.mean(_softplus(f64))  # -log(1 - sigmoid(x))
  # Means of non-negative terms: round-off at the mean's size (the default magnitude).
  assert_float32_close(metrics["d_loss_real"], expected_real, length=LENGTH)
  assert_float32_close(metrics["d_loss_fake"], expected_fake, length=LENGTH)
  assert_float32_close(loss, 0.5 * (expected_real + expected_fake), length=LENGTH)
  assert_float32_close(metrics["d_real"], _sigmoid(r64).mean(), length=LENGTH)
  assert_float32_close(metrics["d_fake"], _sigmoid(f64).mean(), length=LENGTH)


def test_indifferent_discriminator_loss_is_log2():
  zeros = jnp.zeros(8)
  loss, _ = losses.minimax.discriminator(zeros, zeros)
  assert_float32_close(loss, np.log(2.0), length=8)  # Means of 8 terms log 2.


def test_generator_losses_closed_form():
  fake = jnp.asarray(FAKE)
  ns, _ = losses.non_saturating.generator(fake, None)
  mm, _ = losses.minimax.generator(fake, None)
  f64 = FAKE.astype(np.float64)
  # Means of terms of one sign: round-off at the mean's size.
  assert_float32_close(ns, np.mean(_softplus(-f64)), length=LENGTH)
  assert_float32_close(mm, -np.mean(_softplus(f64)), length=LENGTH)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_losses_are_finite_for_extreme_logits(name):
  objective = losses.get_objective(name)
  extreme = jnp.array([-1e4, -100.0, 0.0, 100.0, 1e4])
  d_loss, _ = objective.discriminator(extreme, extreme)
  g_loss, _ = objective.generator(extreme, extreme)
  grads = jax.grad(lambda x: objective.generator(x, x)[0] + objective.discriminator(x, x)[0])(
    extreme
  )
  assert np.isfinite(d_loss) and np.isfinite(g_loss)
  assert np.all(np.isfinite(grads))


def test_saturation_behaviour():
  """The minimax G loss saturates when D rejects fakes; the non-saturating one does not."""
  rejected = jnp.full((4,), -10.0)
  grad_mm = jax.grad(lambda x: losses.minimax.generator(x, None)[0])(rejected)
  grad_ns = jax.grad(lambda x: losses.non_saturating.generator(x, None)[0])(rejected)
  # sigmoid(-10) / 4 = 1.1e-5 and (1 - sigmoid(-10)) / 4 = 0.24999: far from both bounds.
  assert np.abs(grad_mm).max() < 1e-4
  assert np.abs(grad_ns).min() > 0.2


def test_unknown_loss_lists_choices():
  with pytest.raises(ValueError, match="non_saturating") as e:
    losses.get_objective("wgan-typo")
  assert "wgan-typo" in str(e.value)
  assert "relativistic_average" in str(e.value)
