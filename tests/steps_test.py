"""The pure steps: each network's step changes only that network; n_critic; EMA."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tolerances

from ganjax import losses, parallel, steps
from ganjax.models import dcgan, mlp
from ganjax.state import create_gan_state

LATENT = 8
SHAPE = (32, 32, 3)


@functools.cache
def _initial_state():
  # DCGAN 32x32: both networks carry BatchNorm statistics.
  return create_gan_state(
    jax.random.key(0),
    generator=dcgan.Generator(image_shape=SHAPE, width=4),
    discriminator=dcgan.Discriminator(width=4),
    latent_dim=LATENT,
    element_shape=SHAPE,
    generator_optimizer=optax.adam(1e-2),
    discriminator_optimizer=optax.adam(1e-2),
  )


def _real(n=8, seed=1):
  return jnp.asarray(np.random.RandomState(seed).uniform(-1, 1, (n, *SHAPE)), jnp.float32)


def _changed(a, b) -> bool:
  pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
  return any(not np.array_equal(x, y) for x, y in pairs)


def _assert_ema_close(expected_decay, old, new, ema):
  """``ema`` is ``decay * old + (1 - decay) * new``: two products and a sum in float32, however
  the step writes them (e.g. ``old + (1 - decay) * (new - old)``), at the scale of the values."""
  for (path, o), n, e in zip(
    jax.tree_util.tree_leaves_with_path(old),
    jax.tree.leaves(new),
    jax.tree.leaves(ema),
    strict=True,
  ):
    o, n = np.asarray(o, np.float64), np.asarray(n, np.float64)
    tolerances.assert_float32_close(
      e,
      expected_decay * o + (1 - expected_decay) * n,
      length=3,
      magnitude=max(np.abs(o).max(), np.abs(n).max()),
      err_msg=jax.tree_util.keystr(path),
    )


def test_discriminator_step_changes_only_discriminator():
  state = _initial_state()
  new, metrics = jax.jit(
    functools.partial(steps.discriminator_step, objective=losses.non_saturating, latent_dim=LATENT)
  )(state, _real(), jax.random.key(3))
  assert _changed(state.discriminator.params, new.discriminator.params)
  assert _changed(state.discriminator.opt_state, new.discriminator.opt_state)
  assert _changed(state.discriminator.batch_stats, new.discriminator.batch_stats)
  assert not _changed(state.generator, new.generator)
  assert not _changed(state.ema_params, new.ema_params)
  assert int(new.step) == int(state.step)
  assert {"d_loss", "d_real", "d_fake", "d_grad_norm"} <= set(metrics)


def test_generator_step_changes_only_generator():
  state = _initial_state()
  new, metrics = jax.jit(
    functools.partial(
      steps.generator_step, objective=losses.non_saturating, latent_dim=LATENT, ema_decay=0.5
    )
  )(state, _real(), jax.random.key(4))
  assert _changed(state.generator.params, new.generator.params)
  assert _changed(state.generator.batch_stats, new.generator.batch_stats)
  assert not _changed(state.discriminator, new.discriminator)
  assert int(new.step) == int(state.step) + 1
  # EMA after one update: 0.5 * old + 0.5 * new.
  _assert_ema_close(0.5, state.ema_params, new.generator.params, new.ema_params)
  assert {"g_loss", "g_grad_norm"} <= set(metrics)


def test_split_critic_batches_keeps_rows_local():
  x = jnp.arange(12)
  parts = steps.split_critic_batches(x, 3)
  np.testing.assert_array_equal(parts[0], [0, 3, 6, 9])
  np.testing.assert_array_equal(parts[2], [2, 5, 8, 11])
  with pytest.raises(ValueError, match="n_critic=5"):
    steps.split_critic_batches(x, 5)


@pytest.mark.parametrize("n_critic", [1, 3])
def test_train_step_runs_n_critic_discriminator_updates(n_critic):
  state = create_gan_state(  # Counting updates needs no convolutions: a tiny MLP GAN.
    jax.random.key(0),
    generator=mlp.Generator(image_shape=(2,), hidden=(4,), output_activation="linear"),
    discriminator=mlp.Discriminator(hidden=(4,), dropout=0.0),
    latent_dim=2,
    element_shape=(2,),
    generator_optimizer=optax.adam(1e-2),
    discriminator_optimizer=optax.adam(1e-2),
  )
  step = jax.jit(
    functools.partial(
      steps.train_step, objective=losses.non_saturating, latent_dim=2, n_critic=n_critic
    )
  )
  real = jnp.asarray(np.random.RandomState(1).uniform(-1, 1, (4 * n_critic, 2)), jnp.float32)
  new, metrics = step(state, {"image": real}, jax.random.key(0))
  # Adam's step counter counts the updates each network received.
  assert int(new.discriminator.opt_state[0].count) == n_critic
  assert int(new.generator.opt_state[0].count) == 1
  assert int(new.step) == 1
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())


def test_train_step_is_deterministic_and_depends_on_step():
  state = _initial_state()
  step = jax.jit(
    functools.partial(steps.train_step, objective=losses.non_saturating, latent_dim=LATENT)
  )
  batch = {"image": _real(4)}
  a, _ = step(state, batch, jax.random.key(0))
  b, _ = step(state, batch, jax.random.key(0))
  assert not _changed(a, b)
  shifted = state.replace(step=jnp.asarray(7, jnp.int32))
  c, _ = step(shifted, batch, jax.random.key(0))
  assert _changed(a.generator.params, c.generator.params)  # New step -> new latents.


def test_ema_warmup_ramps_the_decay():
  state = _initial_state().replace(step=jnp.asarray(0, jnp.int32))
  new, _ = jax.jit(
    functools.partial(
      steps.generator_step,
      objective=losses.non_saturating,
      latent_dim=LATENT,
      ema_decay=0.999,
      ema_warmup=True,
    )
  )(state, _real(), jax.random.key(4))
  # At step 0 the decay is min(0.999, 1 / 10) = 0.1.
  _assert_ema_close(0.1, state.ema_params, new.generator.params, new.ema_params)


# ----------------------------------------------------------------------------------------------
# Unrolled GAN (Metz et al. 2017).


def _tiny_mlp_state(d_optimizer):
  generator = mlp.Generator(
    image_shape=(2,), hidden=(4,), batch_norm=False, output_activation="linear"
  )
  discriminator = mlp.Discriminator(hidden=(4,), dropout=0.0)
  state = create_gan_state(
    jax.random.key(0),
    generator=generator,
    discriminator=discriminator,
    latent_dim=2,
    element_shape=(2,),
    generator_optimizer=optax.sgd(1.0),  # new params = params - grad.
    discriminator_optimizer=d_optimizer,
  )
  return state, generator, discriminator


def _g_step(state, real, rng, unrolled_steps, latent_dim=2):
  fn = functools.partial(
    steps.generator_step,
    objective=losses.non_saturating,
    latent_dim=latent_dim,
    ema_decay=0.0,
    unrolled_steps=unrolled_steps,
  )
  return jax.jit(fn)(state, real, rng)[0]


def test_unrolled_generator_gradient_matches_hand_unrolled_sgd():
  lr, k = 0.5, 3
  state, generator, discriminator = _tiny_mlp_state(optax.sgd(lr))
  real = jnp.asarray(np.random.RandomState(0).normal(size=(8, 2)), jnp.float32)
  rng = jax.random.key(5)
  z = parallel.local_normal(jax.random.fold_in(rng, steps._G_LATENT), (8, 2), None)
  objective = losses.non_saturating

  def d_logits(d_params, x):
    return discriminator.apply({"params": d_params}, x, train=True)

  def reference_loss(g_params, unrolled):
    fake = generator.apply({"params": g_params}, z, train=True)
    d_params = state.discriminator.params
    for _ in range(unrolled):  # Metz et al. Eq. (6): plain gradient steps of D's loss.
      d_grads = jax.grad(
        lambda p: objective.discriminator(d_logits(p, real), d_logits(p, fake))[0]
      )(d_params)
      d_params = jax.tree.map(lambda p, g: p - lr * g, d_params, d_grads)
    return objective.generator(d_logits(d_params, fake), None)[0]

  def step_grads(new):
    return jax.tree.map(lambda a, b: a - b, state.generator.params, new.generator.params)

  # Round-off: each of D's k unrolled steps is a forward and a backward pass, which G's gradient
  # differentiates again, after G's own forward and backward passes; the recovered gradient
  # old - new also carries the rounding of new = old - grad (an ulp of the parameters).
  params = {"g": state.generator.params, "d": state.discriminator.params}
  length = (2 * k + 1) * tolerances.gradient_length(params, len(real))
  results, atol = {}, 0.0
  for unrolled in (0, k):
    new = _g_step(state, real, rng, unrolled)
    expected = jax.grad(reference_loss)(state.generator.params, unrolled)
    for (path, e), g, p in zip(
      jax.tree_util.tree_leaves_with_path(expected),
      jax.tree.leaves(step_grads(new)),
      jax.tree.leaves(state.generator.params),
      strict=True,
    ):
      magnitude = max(float(np.abs(e).max()), float(np.abs(p).max()))
      tolerances.assert_float32_close(
        g, e, length=length, magnitude=magnitude, err_msg=jax.tree_util.keystr(path)
      )
      atol = max(atol, tolerances.float32_atol(length, magnitude))
    assert not _changed(state.discriminator, new.discriminator)  # Unrolled params discarded.
    results[unrolled] = step_grads(new)
  difference = max(
    float(np.max(np.abs(a - b)))
    for a, b in zip(jax.tree.leaves(results[0]), jax.tree.leaves(results[k]), strict=True)
  )
  # Unrolling changes G's gradient far beyond the tolerance above, so a step that ignored
  # unrolled_steps would fail the comparison with the reference.
  assert difference > 10 * atol, (difference, atol)


def test_unrolled_steps_zero_is_the_plain_generator_step():
  state = _initial_state()
  fn = functools.partial(
    steps.generator_step, objective=losses.non_saturating, latent_dim=LATENT, ema_decay=0.5
  )
  plain, _ = jax.jit(fn)(state, _real(), jax.random.key(4))
  zero, _ = jax.jit(functools.partial(fn, unrolled_steps=0))(state, _real(), jax.random.key(4))
  assert not _changed(plain, zero)


def test_unrolled_train_step_with_adam_leaves_d_to_its_own_step():
  state, _, _ = _tiny_mlp_state(optax.adam(1e-2))
  batch = {"image": jnp.asarray(np.random.RandomState(1).normal(size=(8, 2)), jnp.float32)}
  step = jax.jit(
    functools.partial(
      steps.train_step, objective=losses.non_saturating, latent_dim=2, unrolled_steps=2
    )
  )
  new, metrics = step(state, batch, jax.random.key(0))
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  assert int(new.discriminator.opt_state[0].count) == 1  # Only the real D step updated D.
  plain, _ = jax.jit(
    functools.partial(steps.train_step, objective=losses.non_saturating, latent_dim=2)
  )(state, batch, jax.random.key(0))
  # Same D update; different G update (the unrolled gradient).
  assert not _changed(plain.discriminator, new.discriminator)
  assert _changed(plain.generator.params, new.generator.params)


def test_unrolled_generator_step_with_batchnorm_discriminator():
  state = _initial_state()  # DCGAN: D has BatchNorm statistics.
  new = _g_step(state, _real(), jax.random.key(4), 1, latent_dim=LATENT)
  assert not _changed(state.discriminator, new.discriminator)  # Statistics updates dropped.
  assert _changed(state.generator.params, new.generator.params)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(new.generator.params))
