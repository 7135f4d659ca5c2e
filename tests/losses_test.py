"""Objectives against closed forms (written out with numpy, independent of optax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganjax import losses


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


REAL = np.array([2.0, -1.0, 0.5, 30.0], np.float32)
FAKE = np.array([-3.0, 0.0, 1.5, -40.0], np.float32)


def test_discriminator_bce_closed_form():
  loss, metrics = losses.non_saturating.discriminator(jnp.asarray(REAL), jnp.asarray(FAKE))
  expected_real = -np.mean(np.log(_sigmoid(REAL.astype(np.float64))))
  expected_fake = -np.mean(np.log1p(-_sigmoid(FAKE.astype(np.float64))))
  np.testing.assert_allclose(metrics["d_loss_real"], expected_real, rtol=1e-5)
  np.testing.assert_allclose(metrics["d_loss_fake"], expected_fake, rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * (expected_real + expected_fake), rtol=1e-5)
  np.testing.assert_allclose(metrics["d_real"], _sigmoid(REAL).mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["d_fake"], _sigmoid(FAKE).mean(), rtol=1e-5)


def test_indifferent_discriminator_loss_is_log2():
  zeros = jnp.zeros(8)
  loss, _ = losses.minimax.discriminator(zeros, zeros)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)


def test_generator_losses_closed_form():
  fake = jnp.asarray(FAKE)
  ns, _ = losses.non_saturating.generator(fake, None)
  mm, _ = losses.minimax.generator(fake, None)
  f64 = FAKE.astype(np.float64)
  np.testing.assert_allclose(ns, -np.mean(np.log(_sigmoid(f64))), rtol=1e-5)
  np.testing.assert_allclose(mm, np.mean(np.log1p(-_sigmoid(f64))), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(losses.available_objectives()))
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
  assert np.abs(grad_mm).max() < 1e-4
  assert np.abs(grad_ns).min() > 0.2


def test_unknown_loss_lists_choices():
  with pytest.raises(ValueError, match="non_saturating") as e:
    losses.get_objective("wgan-typo")
  assert "wgan-typo" in str(e.value)
