"""The one optimizer factory (ganjax/optimizers.py): schedules against their closed forms, SRGAN's
two phases, memoization and the errors."""

import math

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from ganjax import optimizers


def _learning_rates(tx: optax.GradientTransformation, num_updates: int) -> list[float]:
  """The learning rate of each update, read back from SGD's first update of a unit gradient."""
  params = {"w": jnp.zeros(())}
  state = tx.init(params)
  rates = []
  for _ in range(num_updates):
    updates, state = tx.update({"w": jnp.ones(())}, state, params)
    rates.append(-float(updates["w"]))
  return rates


def test_schedules_match_their_closed_forms():
  base = {"name": "sgd", "learning_rate": 0.1}
  n = 10
  constant = _learning_rates(optimizers.make_optimizer(base, n), n)
  np.testing.assert_allclose(constant, [0.1] * n, rtol=1e-6)
  linear = _learning_rates(optimizers.make_optimizer({**base, "schedule": "linear"}, n), n)
  np.testing.assert_allclose(linear, [0.1 * (1 - t / n) for t in range(n)], rtol=1e-5)
  cosine = optimizers.make_optimizer({**base, "schedule": "cosine", "final_learning_rate": 0.01}, n)
  expected = [0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t / n)) for t in range(n)]
  np.testing.assert_allclose(_learning_rates(cosine, n), expected, rtol=1e-5)


def test_two_phases_run_the_schedule_then_the_second_rate():
  config = ml_collections.ConfigDict(
    {
      "name": "sgd",
      "learning_rate": 0.1,
      "schedule": "cosine",
      "final_learning_rate": 0.0,
      "second_phase_learning_rate": 0.003,
    }
  )
  tx = optimizers.make_optimizer(config, 100, phase_updates=4)
  expected = [0.1 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)] + [0.003] * 3
  np.testing.assert_allclose(_learning_rates(tx, 7), expected, rtol=1e-5, atol=1e-9)
  # No first phase (SRGAN without pre-training): the second rate from the first update.
  tx = optimizers.make_optimizer(config, 100, phase_updates=0)
  np.testing.assert_allclose(_learning_rates(tx, 2), [0.003, 0.003], rtol=1e-6)


def test_adam_is_the_default_and_any_optax_keyword_passes_through():
  tx = optimizers.make_optimizer({"learning_rate": 1e-3, "b1": 0.5, "b2": 0.9}, 10)
  reference = optax.adam(1e-3, b1=0.5, b2=0.9)
  params = {"w": jnp.ones((3,))}
  grads = {"w": jnp.array([0.1, -2.0, 3.0])}
  ours, _ = tx.update(grads, tx.init(params), params)
  theirs, _ = reference.update(grads, reference.init(params), params)
  np.testing.assert_array_equal(ours["w"], theirs["w"])


def test_equal_settings_give_the_same_object():
  config = ml_collections.ConfigDict({"name": "adam", "learning_rate": 1e-3, "schedule": "cosine"})
  assert optimizers.make_optimizer(config, 10) is optimizers.make_optimizer(config.to_dict(), 10)
  assert optimizers.make_optimizer(config, 10) is not optimizers.make_optimizer(config, 20)
  # A constant schedule does not depend on the run's length (a longer resumed run reuses it).
  constant = {"learning_rate": 1e-3}
  assert optimizers.make_optimizer(constant, 10) is optimizers.make_optimizer(constant, 20)


def test_bad_settings_name_the_field_and_the_choices():
  with pytest.raises(ValueError, match=r"optim.g.name='adamm'.*'adam'"):
    optimizers.make_optimizer({"name": "adamm", "learning_rate": 1.0}, 10, field="optim.g")
  with pytest.raises(ValueError, match=r"optim.d.schedule='step'.*constant, linear, cosine"):
    optimizers.make_optimizer({"learning_rate": 1.0, "schedule": "step"}, 10, field="optim.d")
  with pytest.raises(ValueError, match=r"Bad arguments.*optax.adam"):
    optimizers.make_optimizer({"learning_rate": 1.0, "beta_one": 0.5}, 10)
