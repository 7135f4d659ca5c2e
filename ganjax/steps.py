"""Pure training steps: ``discriminator_step``, ``generator_step`` and ``train_step``.

``train_step(state, batch, rng) -> (state, metrics)`` performs ``n_critic`` discriminator updates and
one generator update. Each network's TrainState (params, optimizer state, BatchNorm statistics) is
changed only by its own step: the discriminator step runs G in train mode but drops G's updated
statistics, and vice versa.

The same functions run in both parallel modes (see ``ganjax.parallel``): under a global-view
``jax.jit`` (``axis_name=None``; XLA inserts the cross-device reductions), and per device inside
``jax.shard_map`` (``axis_name="data"``), where gradients, metrics and BatchNorm running averages are
averaged explicitly with ``lax.pmean`` — the pmap programming model.

Randomness: the step folds ``state.step`` into the run's key, then a purpose id, so the same seed
gives the same run, also across a resume. Latents are drawn for the *global* batch and each device
takes its slice, so both parallel modes draw the same latents as a single device.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ganjax import losses
from ganjax.state import GANState, TrainState

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Purposes folded into the per-step key.
_D_LATENT, _D_DROPOUT, _G_LATENT, _G_DROPOUT = 0, 1, 2, 3


def _apply(ts: TrainState, params, x, labels, *, train: bool, rng: jax.Array | None):
  """Runs a network; returns its output and its (possibly updated) batch statistics."""
  variables = {"params": params}
  if ts.batch_stats:
    variables["batch_stats"] = ts.batch_stats
  rngs = {"dropout": rng} if rng is not None else None
  if train and ts.batch_stats:
    out, updates = ts.apply_fn(
        variables, x, labels, train=True, rngs=rngs, mutable=["batch_stats"]
    )
    return out, updates["batch_stats"]
  return ts.apply_fn(variables, x, labels, train=train, rngs=rngs), ts.batch_stats


def _device_index(axis_name: str | None) -> jax.Array | int:
  return 0 if axis_name is None else jax.lax.axis_index(axis_name)


def _local_latents(rng, local_batch: int, latent_dim: int, axis_name: str | None) -> jax.Array:
  """This device's slice of a latent batch drawn for the whole (global) batch."""
  if axis_name is None:
    return jax.random.normal(rng, (local_batch, latent_dim), jnp.float32)
  num_devices = jax.lax.psum(1, axis_name)
  z = jax.random.normal(rng, (local_batch * num_devices, latent_dim), jnp.float32)
  return jax.lax.dynamic_slice_in_dim(z, _device_index(axis_name) * local_batch, local_batch)


def _device_key(rng: jax.Array, axis_name: str | None) -> jax.Array:
  return rng if axis_name is None else jax.random.fold_in(rng, _device_index(axis_name))


def _pmean(tree, axis_name: str | None):
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def _apply_update(ts: TrainState, grads, batch_stats, axis_name: str | None) -> TrainState:
  grads = _pmean(grads, axis_name)
  return ts.apply_gradients(grads=grads, batch_stats=_pmean(batch_stats, axis_name))


def discriminator_step(
    state: GANState,
    real: jax.Array,
    rng: jax.Array,
    *,
    objective: losses.Objective,
    latent_dim: int,
    axis_name: str | None = None,
) -> tuple[GANState, Metrics]:
  """One update of D on a real batch and a batch of fresh generator samples."""
  g, d = state.generator, state.discriminator
  z = _local_latents(jax.random.fold_in(rng, _D_LATENT), real.shape[0], latent_dim, axis_name)
  fake, _ = _apply(g, g.params, z, None, train=True, rng=None)  # G's new statistics are dropped.
  fake = jax.lax.stop_gradient(fake)
  dropout_real, dropout_fake = jax.random.split(
      _device_key(jax.random.fold_in(rng, _D_DROPOUT), axis_name)
  )

  def loss_fn(params):
    real_logits, stats = _apply(d, params, real, None, train=True, rng=dropout_real)
    fake_logits, stats = _apply(
        d.replace(batch_stats=stats), params, fake, None, train=True, rng=dropout_fake
    )
    loss, metrics = objective.discriminator(real_logits, fake_logits)
    return loss, (metrics, stats)

  grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(d.params)
  metrics["d_grad_norm"] = optax.global_norm(_pmean(grads, axis_name))
  new_d = _apply_update(d, grads, stats, axis_name)
  return state.replace(discriminator=new_d), _pmean(metrics, axis_name)


def generator_step(
    state: GANState,
    real: jax.Array,
    rng: jax.Array,
    *,
    objective: losses.Objective,
    latent_dim: int,
    ema_decay: float,
    ema_warmup: bool = False,
    axis_name: str | None = None,
) -> tuple[GANState, Metrics]:
  """One update of G through a fixed D; then the EMA of G's params and ``step + 1``.

  With ``ema_warmup`` the decay at step t is ``min(ema_decay, (1 + t) / (10 + t))``.
  """
  g, d = state.generator, state.discriminator
  z = _local_latents(jax.random.fold_in(rng, _G_LATENT), real.shape[0], latent_dim, axis_name)
  dropout_real, dropout_fake = jax.random.split(
      _device_key(jax.random.fold_in(rng, _G_DROPOUT), axis_name)
  )
  # Only objectives that compare with real data (relativistic ones) need D(x) in the G step.
  real_logits = None
  if objective.generator_needs_real_logits:
    real_logits, _ = _apply(d, d.params, real, None, train=True, rng=dropout_real)

  def loss_fn(params):
    fake, stats = _apply(g, params, z, None, train=True, rng=None)
    fake_logits, _ = _apply(d, d.params, fake, None, train=True, rng=dropout_fake)
    loss, metrics = objective.generator(fake_logits, real_logits)
    return loss, (metrics, stats)

  grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(g.params)
  metrics["g_grad_norm"] = optax.global_norm(_pmean(grads, axis_name))
  new_g = _apply_update(g, grads, stats, axis_name)
  ema = state.ema_params  # ema_decay 0: the EMA is off and costs nothing (samples use the params).
  if ema_decay > 0:
    decay = ema_decay
    if ema_warmup:  # TF's ExponentialMovingAverage(num_updates=...): early params are not frozen in.
      step = state.step.astype(jnp.float32)
      decay = jnp.minimum(ema_decay, (1.0 + step) / (10.0 + step))
    ema = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, new_g.params)
  new_state = state.replace(generator=new_g, ema_params=ema, step=state.step + 1)
  return new_state, _pmean(metrics, axis_name)


def split_critic_batches(images: jax.Array, n_critic: int) -> list[jax.Array]:
  """Splits a step's batch of ``n_critic * B`` images into ``n_critic`` batches of ``B``.

  Example ``i`` of every sub-batch comes from consecutive rows, so a batch sharded on its leading
  axis splits without moving data between devices.
  """
  if images.shape[0] % n_critic:
    raise ValueError(f"Batch of {images.shape[0]} does not split into n_critic={n_critic} parts.")
  grouped = images.reshape(images.shape[0] // n_critic, n_critic, *images.shape[1:])
  return [grouped[:, i] for i in range(n_critic)]


def train_step(
    state: GANState,
    batch: Batch,
    rng: jax.Array,
    *,
    objective: losses.Objective,
    latent_dim: int,
    n_critic: int = 1,
    ema_decay: float = 0.0,
    ema_warmup: bool = False,
    axis_name: str | None = None,
) -> tuple[GANState, Metrics]:
  """``n_critic`` discriminator updates, then one generator update.

  Args:
    state: the GAN state (replicated).
    batch: ``{"image": (n_critic * B, ...)}``, sharded on its leading axis.
    rng: the run's base key; the step number is folded in here.
    objective: the adversarial objective (``ganjax.losses``).
    latent_dim: size of the generator's latent input.
    n_critic: discriminator updates per generator update (Arjovsky et al. 2017).
    ema_decay: decay of the generator EMA; 0 turns it off (``ema_params`` stay as they are).
    ema_warmup: ramp the EMA decay up as ``(1 + t) / (10 + t)`` until it reaches ``ema_decay``.
    axis_name: the mesh axis inside ``shard_map``; None under a global-view ``jit``.

  Returns:
    The new state and a dict of scalar metrics (the last D step's and the G step's).
  """
  rng = jax.random.fold_in(rng, state.step)
  real_batches = split_critic_batches(batch["image"], n_critic)
  metrics: dict[str, Any] = {}
  for i, real in enumerate(real_batches):
    state, metrics = discriminator_step(
        state,
        real,
        jax.random.fold_in(rng, 2 * i),
        objective=objective,
        latent_dim=latent_dim,
        axis_name=axis_name,
    )
  state, g_metrics = generator_step(
      state,
      real_batches[-1],
      jax.random.fold_in(rng, 2 * n_critic + 1),
      objective=objective,
      latent_dim=latent_dim,
      ema_decay=ema_decay,
      ema_warmup=ema_warmup,
      axis_name=axis_name,
  )
  return state, {**metrics, **g_metrics}


def make_train_step(config, objective: losses.Objective):
  """Binds the static arguments of :func:`train_step` from a config."""
  return functools.partial(
      train_step,
      objective=objective,
      latent_dim=config.model.latent_dim,
      n_critic=config.n_critic,
      ema_decay=config.ema.decay,
      ema_warmup=config.ema.warmup,
  )
