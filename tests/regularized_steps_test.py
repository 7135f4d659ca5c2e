"""Objectives, penalties and D-input tricks wired into the training step (ganjax.steps)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ganjax import config_base, losses, regularizers, steps, train
from ganjax.models import mlp
from ganjax.state import create_gan_state

LATENT = 4
POINTS = (2,)
IMAGES = (8, 8, 1)


def _state(element_shape=POINTS, d_optimizer=None):
  # No BatchNorm and no dropout in D: input gradients are per-example and deterministic.
  return create_gan_state(
      jax.random.key(0),
      generator=mlp.Generator(
          image_shape=element_shape, hidden=(16,), batch_norm=False, output_activation="linear"
      ),
      discriminator=mlp.Discriminator(hidden=(16, 16), dropout=0.0),
      latent_dim=LATENT,
      element_shape=element_shape,
      generator_optimizer=optax.adam(1e-3),
      discriminator_optimizer=d_optimizer or optax.adam(1e-3),
  )


def _real(shape=POINTS, n=8, seed=1):
  return jnp.asarray(np.random.RandomState(seed).normal(size=(n, *shape)), jnp.float32)


def _d_step(state, real, regularization, d_step=0, objective=losses.non_saturating):
  fn = functools.partial(
      steps.discriminator_step,
      objective=objective,
      latent_dim=LATENT,
      regularization=regularization,
  )
  return jax.jit(fn)(state, real, jax.random.key(3), d_step=d_step)


def _config(**regularizer):
  config = config_base.base_config()
  for key, value in regularizer.items():
    config.regularizer[key] = value
  return config


def test_regularization_from_config_uses_implied_weights_and_overrides():
  config = _config()
  assert steps.regularization_from_config(config, losses.non_saturating).penalties == ()
  assert steps.regularization_from_config(config, losses.wgan_gp).penalties == (
      ("gradient_penalty", 10.0),
  )
  config = _config(gradient_penalty=5.0, r1=0.1)
  assert steps.regularization_from_config(config, losses.wgan_gp).penalties == (
      ("gradient_penalty", 5.0),
      ("r1", 0.1),
  )
  config = _config(gradient_penalty=0.0)  # 0 turns even the implied penalty off.
  assert steps.regularization_from_config(config, losses.wgan_gp).penalties == ()


def test_unknown_regularizer_and_policy_list_the_valid_choices():
  config = _config()
  config.regularizer.r3 = 1.0
  with pytest.raises(ValueError, match="r3.*valid choices.*gradient_penalty"):
    steps.regularization_from_config(config, losses.non_saturating)
  with pytest.raises(ValueError, match="flip"):
    steps.Regularization(augment_policy="color,flip")
  with pytest.raises(ValueError, match="interval"):
    steps.Regularization(lazy_interval=0)


@pytest.mark.parametrize("name", ["r1", "gradient_penalty", "dragan", "r2"])
def test_penalty_metric_equals_the_regularizer_on_the_pre_update_critic(name):
  state, real = _state(), _real()
  weight = 3.0
  plain, plain_metrics = _d_step(state, real, steps.NO_REGULARIZATION)
  new, metrics = _d_step(state, real, steps.Regularization(penalties=((name, weight),)))
  # The objective part is unchanged; the update differs by the penalty's gradient.
  np.testing.assert_allclose(metrics["d_loss"], plain_metrics["d_loss"], rtol=1e-6)
  assert not np.allclose(
      new.discriminator.params["Dense_0"]["kernel"], plain.discriminator.params["Dense_0"]["kernel"]
  )
  key = {"gradient_penalty": "gp"}.get(name, name)
  assert float(metrics[key]) > 0
  np.testing.assert_allclose(metrics["d_penalty"], weight * metrics[key], rtol=1e-5)
  if name == "r1":  # Independent check: R1 of the pre-update critic on the same real batch.
    d = state.discriminator

    def d_fn(x):
      return d.apply_fn({"params": d.params}, x, None, train=True)

    expected, _ = regularizers.r1_penalty(d_fn, real)
    np.testing.assert_allclose(metrics["r1"], expected, rtol=1e-5)


def test_penalty_gradient_matches_a_hand_written_loss():
  """D's update with R1 equals Adam on grad(objective + gamma * R1) written out by hand."""
  state, real = _state(d_optimizer=optax.sgd(1.0)), _real()
  gamma = 2.0
  new, _ = _d_step(state, real, steps.Regularization(penalties=(("r1", gamma),)))
  plain, _ = _d_step(state, real, steps.NO_REGULARIZATION)
  d = state.discriminator

  def r1_of(params):
    def d_fn(x):
      return d.apply_fn({"params": params}, x, None, train=True)

    return gamma * regularizers.r1_penalty(d_fn, real)[0]

  # SGD(1): new = old - grad(loss); the difference to the plain step is -grad(gamma * R1).
  r1_grads = jax.grad(r1_of)(d.params)
  for got, base, g in zip(
      jax.tree.leaves(new.discriminator.params),
      jax.tree.leaves(plain.discriminator.params),
      jax.tree.leaves(r1_grads), strict=True,
  ):
    np.testing.assert_allclose(got - base, -g, rtol=1e-4, atol=1e-6)


def test_lazy_regularization_skips_and_scales():
  state, real = _state(), _real()
  reg = steps.Regularization(penalties=(("r1", 1.0),), lazy_interval=4)
  _, due = _d_step(state, real, reg, d_step=8)
  _, skipped = _d_step(state, real, reg, d_step=9)
  assert float(skipped["d_penalty"]) == 0.0
  np.testing.assert_allclose(due["d_penalty"], 4.0 * due["r1"], rtol=1e-5)


def test_consistency_penalty_on_images_reports_real_and_fake_terms():
  state, real = _state(IMAGES), _real(IMAGES)
  _, metrics = _d_step(state, real, steps.Regularization(penalties=(("consistency", 1.0),)))
  assert float(metrics["consistency_real"]) > 0 and float(metrics["consistency_fake"]) > 0
  np.testing.assert_allclose(
      metrics["d_penalty"], metrics["consistency_real"] + metrics["consistency_fake"], rtol=1e-5
  )


def test_diffaugment_and_instance_noise_change_what_d_sees():
  state, real = _state(IMAGES), _real(IMAGES)
  _, plain = _d_step(state, real, steps.NO_REGULARIZATION)
  for reg in (
      steps.Regularization(augment_policy="color,translation,cutout"),
      steps.Regularization(instance_noise=0.5, instance_noise_steps=100),
  ):
    _, metrics = _d_step(state, real, reg)
    assert np.isfinite(float(metrics["d_loss"]))
    assert float(metrics["d_loss"]) != float(plain["d_loss"])


def test_label_smoothing_and_weight_clipping_from_the_config():
  config = config_base.base_config()
  config.loss.label_smoothing = 0.1
  config.regularizer.weight_clip = 0.01
  assert train.get_objective(config).discriminator.keywords == {"label_smoothing": 0.1}
  tx = train.discriminator_optimizer(config)
  state = _state(d_optimizer=tx)
  new, _ = _d_step(state, _real(), steps.NO_REGULARIZATION)
  for leaf in jax.tree.leaves(new.discriminator.params):
    assert float(jnp.max(jnp.abs(leaf))) <= 0.01
  config.loss.name = "hinge"
  with pytest.raises(ValueError, match="hinge"):
    train.validate_config(config)


@pytest.mark.parametrize("name", sorted(losses.available_objectives()))
def test_every_objective_trains_in_the_full_step(name):
  objective = losses.get_objective(name)
  config = ml_collections.ConfigDict({"regularizer": {}, "augment": {}})
  reg = steps.regularization_from_config(config, objective)
  step = jax.jit(
      functools.partial(
          steps.train_step,
          objective=objective,
          latent_dim=LATENT,
          n_critic=2,
          regularization=reg,
      )
  )
  state = _state()
  batch = {"image": _real(n=16)}
  for _ in range(3):
    new, metrics = step(state, batch, jax.random.key(5))
    state = new
  assert int(state.step) == 3
  for key in ("d_loss", "g_loss", "d_grad_norm", "g_grad_norm"):
    assert np.isfinite(float(metrics[key])), (name, key)
  if objective.implied_regularizers:
    assert float(metrics["d_penalty"]) > 0
