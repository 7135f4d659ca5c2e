"""The training state of a GAN: one flax TrainState per network, the generator's EMA, the step."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """A flax TrainState that also carries the network's BatchNorm statistics."""

  batch_stats: Any = flax.struct.field(default_factory=dict)


@flax.struct.dataclass
class GANState:
  """Everything that changes during training.

  Attributes:
    step: number of completed generator updates.
    generator: the generator's params, optimizer state and batch statistics.
    discriminator: the discriminator's params, optimizer state and batch statistics.
    ema_params: exponential moving average of the generator's params (Karras et al. 2018,
      Yazici et al. 2019); equal to the params when EMA is off (decay 0).
  """

  step: jax.Array
  generator: TrainState
  discriminator: TrainState
  ema_params: Any


def update_ema(ema_params, params, step: jax.Array, decay: float, warmup: bool = False):
  """The exponential moving average of G's params after one more update (Karras et al. 2018,
  Yazici et al. 2019): ``decay * ema + (1 - decay) * params``.

  ``decay`` 0 leaves ``ema_params`` as they are (the EMA is off and costs nothing). With
  ``warmup`` the decay at ``step`` t is ``min(decay, (1 + t) / (10 + t))``, as TensorFlow's
  ExponentialMovingAverage(num_updates=...): the first params fade out quickly.
  """
  if decay <= 0:
    return ema_params
  if warmup:
    t = step.astype(jnp.float32)
    decay = jnp.minimum(decay, (1.0 + t) / (10.0 + t))
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def _split_variables(variables) -> tuple[Any, Any]:
  variables = dict(variables)
  params = variables.pop("params")
  return params, variables.get("batch_stats", {})


def create_gan_state(
  rng: jax.Array,
  *,
  generator: nn.Module,
  discriminator: nn.Module,
  latent_dim: int,
  element_shape: tuple[int, ...],
  generator_optimizer: optax.GradientTransformation,
  discriminator_optimizer: optax.GradientTransformation,
  num_classes: int | None = None,
) -> GANState:
  """Initialises both networks and their optimizers (pure: jit it with out_shardings)."""
  g_key, d_key = jax.random.split(rng)
  z = jnp.zeros((2, latent_dim), jnp.float32)
  x = jnp.zeros((2, *element_shape), jnp.float32)
  labels = jnp.zeros((2,), jnp.int32) if num_classes else None
  g_params, g_stats = _split_variables(generator.init(g_key, z, labels, train=False))
  d_params, d_stats = _split_variables(discriminator.init(d_key, x, labels, train=False))
  return GANState(
    step=jnp.zeros((), jnp.int32),
    generator=TrainState.create(
      apply_fn=generator.apply, params=g_params, tx=generator_optimizer, batch_stats=g_stats
    ),
    discriminator=TrainState.create(
      apply_fn=discriminator.apply,
      params=d_params,
      tx=discriminator_optimizer,
      batch_stats=d_stats,
    ),
    ema_params=g_params,
  )


def parameter_count(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
