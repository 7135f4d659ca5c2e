"""Adversarial objectives.

Every objective is an :class:`Objective`: a pair of pure functions of the discriminator's logits,

* ``discriminator(real_logits, fake_logits) -> (loss, metrics)``
* ``generator(fake_logits, real_logits) -> (loss, metrics)``

Both return a scalar loss to *minimise* and a dict of scalar metrics. The config selects one by name
(``config.loss.name = "non_saturating"``); a new objective is one new module-level ``Objective`` here.
All binary cross-entropies are computed on logits (``optax.sigmoid_binary_cross_entropy``), which is
numerically stable where ``log(sigmoid(x))`` is not.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

Metrics = dict[str, jax.Array]


class Objective(NamedTuple):
  """A discriminator loss and a generator loss of the same game."""

  discriminator: Callable[[jax.Array, jax.Array], tuple[jax.Array, Metrics]]
  generator: Callable[[jax.Array, jax.Array | None], tuple[jax.Array, Metrics]]
  # Whether the generator loss compares with D(x) (relativistic objectives); when False the
  # generator step skips that forward pass and passes None.
  generator_needs_real_logits: bool = False


def _bce(logits: jax.Array, target: float) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def _probability_metrics(real_logits: jax.Array, fake_logits: jax.Array) -> Metrics:
  """Mean D(x) and D(G(z)): the probabilities the discriminator assigns to 'real'."""
  return {
      "d_real": jax.nn.sigmoid(real_logits).mean(),
      "d_fake": jax.nn.sigmoid(fake_logits).mean(),
  }


def bce_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array):
  """-[log D(x) + log(1 - D(G(z)))] / 2: the discriminator's side of the GAN game.

  Goodfellow et al. 2014, "Generative Adversarial Nets". The real and fake terms are averaged, so
  the loss of a discriminator that cannot tell them apart is log 2.
  """
  loss_real = _bce(real_logits, 1.0)
  loss_fake = _bce(fake_logits, 0.0)
  loss = 0.5 * (loss_real + loss_fake)
  metrics = {"d_loss": loss, "d_loss_real": loss_real, "d_loss_fake": loss_fake}
  return loss, {**metrics, **_probability_metrics(real_logits, fake_logits)}


def minimax_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None = None):
  """log(1 - D(G(z))): the saturating generator loss of the original minimax game.

  Goodfellow et al. 2014. Its gradient vanishes when D confidently rejects samples; kept for
  comparisons. Computed as -BCE(logits, 0) on logits.
  """
  del real_logits
  loss = -_bce(fake_logits, 0.0)
  return loss, {"g_loss": loss}


def non_saturating_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None = None):
  """-log D(G(z)): the non-saturating generator loss (Goodfellow et al. 2014, Section 3)."""
  del real_logits
  loss = _bce(fake_logits, 1.0)
  return loss, {"g_loss": loss}


minimax = Objective(bce_discriminator_loss, minimax_generator_loss)
"""The saturating minimax game of Goodfellow et al. 2014."""

non_saturating = Objective(bce_discriminator_loss, non_saturating_generator_loss)
"""The minimax discriminator with the non-saturating generator loss (the usual "GAN loss")."""


def get_objective(name: str) -> Objective:
  """Returns the objective named ``name``; an unknown name lists the valid ones."""
  valid = available_objectives()
  if name not in valid:
    raise ValueError(f"Unknown loss.name {name!r}; valid choices: {', '.join(sorted(valid))}.")
  return valid[name]


def available_objectives() -> dict[str, Objective]:
  """Every module-level :class:`Objective` of this module, by name."""
  return {k: v for k, v in globals().items() if isinstance(v, Objective)}
