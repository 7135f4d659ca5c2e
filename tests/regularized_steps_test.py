"""Objectives, penalties and D-input tricks wired into the training step (ganjax.steps)."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tolerances

from ganjax import config_base, losses, regularizers, steps
from ganjax.models import mlp
from ganjax.state import create_gan_state
from ganjax.systems import gan

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


def _d_loss_length(state, real) -> int:
  """Float32 round-off behind D's loss: G's forward pass (the fakes), D's forward pass and the
  mean over the batch (two programs that jit the same loss in different company)."""
  params = {"g": state.generator.params, "d": state.discriminator.params}
  return tolerances.summed_fan_in(params) + len(real)


def _penalty_gradient_length(state, real) -> int:
  """Float32 round-off behind a penalty's parameter gradient: D's input gradient is a forward and
  a backward pass, which double backpropagation differentiates again (both passes once more), and
  the fakes come through G's forward pass: twice the gradient length of both networks."""
  params = {"g": state.generator.params, "d": state.discriminator.params}
  return 2 * tolerances.gradient_length(params, len(real))


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
  # The objective part is unchanged (another program: round-off of the same loss, at the size of
  # the logits it is a function of); the update differs by the penalty's gradient.
  logits = max(abs(float(plain_metrics[k])) for k in plain_metrics if not k.endswith("grad_norm"))
  tolerances.assert_float32_close(
    metrics["d_loss"],
    plain_metrics["d_loss"],
    length=_d_loss_length(state, real),
    magnitude=logits,
  )
  # Adam's first step moves every entry by the learning rate (1e-3) with its gradient's sign, so an
  # entry whose gradient the penalty flips moves by twice that. Round-off flips only gradients
  # within round-off of 0: at most the outliers tolerances.assert_adam_trajectories_close allows.
  pairs = zip(
    jax.tree.leaves(new.discriminator.params),
    jax.tree.leaves(plain.discriminator.params),
    strict=True,
  )
  flipped = sum(int(np.sum(np.abs(a - b) > 1e-3)) for a, b in pairs)
  total = sum(x.size for x in jax.tree.leaves(plain.discriminator.params))
  assert flipped > max(1, 0.01 * total), (flipped, total)
  key = {"gradient_penalty": "gp"}.get(name, name)
  assert float(metrics[key]) > 0
  # weight * penalty: one float32 product.
  tolerances.assert_float32_close(metrics["d_penalty"], weight * np.float64(metrics[key]), length=1)
  if name == "r1":  # Independent check: R1 of the pre-update critic on the same real batch.
    d = state.discriminator

    def d_fn(x):
      return d.apply_fn({"params": d.params}, x, None, train=True)

    expected, _ = regularizers.r1_penalty(d_fn, real)
    # A mean of squared norms (non-negative terms) of input gradients, each a forward and a
    # backward pass through D, computed op by op here and fused in the step.
    tolerances.assert_float32_close(
      metrics["r1"], expected, length=tolerances.gradient_length(d.params, len(real))
    )


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

  # SGD(1): new = old - grad(loss); the difference to the plain step is -grad(gamma * R1). Both
  # steps' objective gradients (old - plain) round at their own size, the penalty's at its size,
  # and new and plain each round once at the size of the parameters.
  length = _penalty_gradient_length(state, real)
  r1_grads = jax.grad(r1_of)(d.params)
  for got, base, old, g in zip(
    jax.tree.leaves(new.discriminator.params),
    jax.tree.leaves(plain.discriminator.params),
    jax.tree.leaves(d.params),
    jax.tree.leaves(r1_grads),
    strict=True,
  ):
    objective_grad = np.asarray(old, np.float64) - np.asarray(base, np.float64)
    magnitude = max(float(np.max(np.abs(objective_grad))), float(np.max(np.abs(g))))
    atol = tolerances.float32_atol(length, magnitude) + tolerances.float32_atol(
      2, float(np.max(np.abs(old)))
    )
    np.testing.assert_allclose(got - base, -g, rtol=0, atol=atol)


def test_lazy_regularization_skips_and_scales():
  state, real = _state(), _real()
  reg = steps.Regularization(penalties=(("r1", 1.0),), lazy_interval=4)
  _, due = _d_step(state, real, reg, d_step=8)
  _, skipped = _d_step(state, real, reg, d_step=9)
  assert float(skipped["d_penalty"]) == 0.0
  # Weight 1 times the interval 4, a power of two: exact.
  tolerances.assert_bitwise_equal(due["d_penalty"], 4.0 * np.float32(due["r1"]))


def test_consistency_penalty_on_images_reports_real_and_fake_terms():
  state, real = _state(IMAGES), _real(IMAGES)
  _, metrics = _d_step(state, real, steps.Regularization(penalties=(("consistency", 1.0),)))
  assert float(metrics["consistency_real"]) > 0 and float(metrics["consistency_fake"]) > 0
  # The sum of the two terms: one float32 addition of non-negative numbers.
  tolerances.assert_float32_close(
    metrics["d_penalty"],
    np.float64(metrics["consistency_real"]) + np.float64(metrics["consistency_fake"]),
    length=1,
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
  assert losses.objective_from_config(config).discriminator.keywords == {"label_smoothing": 0.1}
  tx = gan.discriminator_optimizer(config)
  state = _state(d_optimizer=tx)
  new, _ = _d_step(state, _real(), steps.NO_REGULARIZATION)
  for leaf in jax.tree.leaves(new.discriminator.params):
    assert float(jnp.max(jnp.abs(leaf))) <= 0.01
  config.loss.name = "hinge"
  with pytest.raises(ValueError, match="hinge"):
    gan.validate_config(config)


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
