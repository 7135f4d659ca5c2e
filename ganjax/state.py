"""The training state of a GAN: one flax TrainState per network, the generator's EMA, the step."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from ganjax.errors import ConfigError


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


# Learning-rate schedules of ``make_optimizer`` (the ``schedule`` key of an optimizer config).
SCHEDULES = ("constant", "linear", "cosine")


def make_optimizer(
  optim_config: ml_collections.ConfigDict, total_updates: int | None = None
) -> optax.GradientTransformation:
  """Builds an optax optimizer from ``{name: "adam", learning_rate: ..., **kwargs}``.

  Any optax optimizer function works by name (``adam``, ``adamw``, ``sgd``, ``rmsprop``, ...).
  The optional key ``schedule`` shapes the learning rate over the run's ``total_updates`` updates
  of this optimizer: ``"constant"`` (the default), ``"linear"`` decay to 0 (as in SNGAN's and
  Mimicry's training, Miyato et al. 2018) or ``"cosine"`` decay to 0 (Loshchilov & Hutter 2017).
  """
  kwargs = dict(optim_config)
  name = kwargs.pop("name")
  schedule = kwargs.pop("schedule", "constant") or "constant"
  optimizer = getattr(optax, name, None)
  if not callable(optimizer) or name.startswith("_"):
    raise ConfigError(
      f"Unknown optimizer name {name!r}; use an optax optimizer function such as "
      "'adam', 'adamw', 'sgd', 'rmsprop', 'lion'."
    )
  if schedule not in SCHEDULES:
    raise ConfigError(
      f"Unknown learning-rate schedule {schedule!r}; valid: {', '.join(SCHEDULES)}."
    )
  if schedule != "constant":
    if not total_updates or total_updates < 1:
      raise ValueError(f"schedule={schedule!r} needs the number of updates, got {total_updates}.")
    peak = kwargs.get("learning_rate")
    if not isinstance(peak, int | float):
      raise ConfigError(f"schedule={schedule!r} needs a numeric learning_rate, got {peak!r}.")
    if schedule == "linear":
      kwargs["learning_rate"] = optax.linear_schedule(peak, 0.0, total_updates)
    else:
      kwargs["learning_rate"] = optax.cosine_decay_schedule(peak, total_updates)
  try:
    return optimizer(**kwargs)
  except TypeError as e:
    raise ConfigError(f"Bad arguments {kwargs} for optax.{name}: {e}") from e


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
