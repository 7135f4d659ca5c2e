"""Adversarial objectives.

Every objective is an :class:`Objective`: a pair of pure functions of the discriminator's logits,

* ``discriminator(real_logits, fake_logits) -> (loss, metrics)``
* ``generator(fake_logits, real_logits) -> (loss, metrics)``

Both return a scalar loss to *minimise* and a dict of scalar metrics: always ``d_loss`` /
``g_loss``; ``d_real`` / ``d_fake`` (mean probability of "real") where the discriminator is a
classifier; ``d_real_logit`` / ``d_fake_logit`` (mean raw output) for every objective. The config
selects one by name (``config.loss.name = "non_saturating"``); a new objective is one new
module-level ``Objective`` here, and :func:`available_objectives` finds it.

All binary cross-entropies are computed on logits (``optax.sigmoid_binary_cross_entropy``), which is
numerically stable where ``log(sigmoid(x))`` is not, and in at least float32 (lower-precision logits
are upcast). Expectations over a batch are means over every element of the logits.

Discriminator functions that take a ``label_smoothing`` keyword support one-sided label smoothing
(Salimans et al. 2016): ``get_objective(name, label_smoothing=alpha)`` binds it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ganjax.errors import ConfigError

Metrics = dict[str, jax.Array]


class Objective(NamedTuple):
  """A discriminator loss and a generator loss of the same game."""

  discriminator: Callable[[jax.Array, jax.Array], tuple[jax.Array, Metrics]]
  generator: Callable[[jax.Array, jax.Array | None], tuple[jax.Array, Metrics]]
  # Whether the generator loss compares with D(x) (relativistic objectives); when False the
  # generator step skips that forward pass and passes None.
  generator_needs_real_logits: bool = False
  # Regularizers (names in ganjax/regularizers.py) that are part of this objective's definition in
  # its paper, each with its default weight, e.g. (("gradient_penalty", 10.0),) for WGAN-GP. The
  # objective's functions do not compute them: the trainer adds them (a config may override the
  # weight). Empty for objectives defined without a regularizer.
  implied_regularizers: tuple[tuple[str, float], ...] = ()


def _f32(logits: jax.Array) -> jax.Array:
  """The logits in at least float32 (bfloat16 / float16 logits are upcast)."""
  logits = jnp.asarray(logits)
  return logits.astype(jnp.promote_types(logits.dtype, jnp.float32))


def _bce(logits: jax.Array, target: float) -> jax.Array:
  """Mean binary cross-entropy of ``sigmoid(logits)`` against a constant target, on logits."""
  return optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)).mean()


def _probability_metrics(real_logits: jax.Array, fake_logits: jax.Array) -> Metrics:
  """Mean D(x) and D(G(z)): the probabilities the discriminator assigns to 'real'."""
  return {
    "d_real": jax.nn.sigmoid(real_logits).mean(),
    "d_fake": jax.nn.sigmoid(fake_logits).mean(),
  }


def _logit_metrics(real_logits: jax.Array, fake_logits: jax.Array) -> Metrics:
  """Mean raw discriminator (critic) outputs on real and generated samples."""
  return {"d_real_logit": real_logits.mean(), "d_fake_logit": fake_logits.mean()}


def _same_shape(real_logits: jax.Array, fake_logits: jax.Array, what: str) -> None:
  if real_logits.shape != fake_logits.shape:
    raise ValueError(
      f"{what} pairs real and fake logits elementwise; got shapes {real_logits.shape} and "
      f"{fake_logits.shape}."
    )


# Standard GAN (Goodfellow et al. 2014).


def bce_discriminator_loss(
  real_logits: jax.Array, fake_logits: jax.Array, *, label_smoothing: float = 0.0
):
  """-[log D(x) + log(1 - D(G(z)))] / 2: the discriminator's side of the GAN game.

  Goodfellow et al. 2014, "Generative Adversarial Nets". The real and fake terms are averaged, so
  the loss of a discriminator that cannot tell them apart is log 2. With ``label_smoothing`` alpha
  the real term is BCE(D(x), 1 - alpha) and the fake target stays 0 (one-sided label smoothing,
  Salimans et al. 2016, "Improved Techniques for Training GANs").
  """
  real_logits, fake_logits = _f32(real_logits), _f32(fake_logits)
  loss_real = _bce(real_logits, 1.0 - label_smoothing)
  loss_fake = _bce(fake_logits, 0.0)
  loss = 0.5 * (loss_real + loss_fake)
  metrics = {"d_loss": loss, "d_loss_real": loss_real, "d_loss_fake": loss_fake}
  return loss, {
    **metrics,
    **_probability_metrics(real_logits, fake_logits),
    **_logit_metrics(real_logits, fake_logits),
  }


def minimax_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None = None):
  """log(1 - D(G(z))): the saturating generator loss of the original minimax game.

  Goodfellow et al. 2014. Its gradient vanishes when D confidently rejects samples; kept for
  comparisons. Computed as -BCE(logits, 0) on logits.
  """
  del real_logits
  loss = -_bce(_f32(fake_logits), 0.0)
  return loss, {"g_loss": loss}


def non_saturating_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None = None):
  """-log D(G(z)): the non-saturating generator loss (Goodfellow et al. 2014, Section 3)."""
  del real_logits
  loss = _bce(_f32(fake_logits), 1.0)
  return loss, {"g_loss": loss}


# Wasserstein GAN (Arjovsky et al. 2017; Gulrajani et al. 2017).


def wasserstein_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array):
  """E[D(G(z))] - E[D(x)]: the critic's loss of the Wasserstein GAN.

  Arjovsky, Chintala & Bottou 2017, "Wasserstein Generative Adversarial Networks". For a
  1-Lipschitz critic, ``wasserstein_estimate`` = E[D(x)] - E[D(G(z))] = -loss estimates the
  Wasserstein-1 distance between the data and the generator's distribution. The Lipschitz
  constraint (weight clipping, gradient penalty) is applied elsewhere.
  """
  real_logits, fake_logits = _f32(real_logits), _f32(fake_logits)
  mean_real, mean_fake = real_logits.mean(), fake_logits.mean()
  loss = mean_fake - mean_real
  return loss, {
    "d_loss": loss,
    "d_loss_real": -mean_real,
    "d_loss_fake": mean_fake,
    "wasserstein_estimate": mean_real - mean_fake,
    **_logit_metrics(real_logits, fake_logits),
  }


def wasserstein_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None = None):
  """-E[D(G(z))]: the generator's loss of the Wasserstein GAN (Arjovsky et al. 2017).

  Also the generator loss of the hinge GAN (Lim & Ye 2017; Miyato et al. 2018).
  """
  del real_logits
  loss = -_f32(fake_logits).mean()
  return loss, {"g_loss": loss}


# Hinge GAN (Lim & Ye 2017; Miyato et al. 2018).


def hinge_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array):
  """E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]: the hinge-loss discriminator.

  Lim & Ye 2017, "Geometric GAN"; Miyato, Kataoka, Koyama & Yoshida 2018, "Spectral Normalization
  for Generative Adversarial Networks". The two terms are summed (as in those papers), so an
  indifferent discriminator (all logits 0) has loss 2. The generator loss is -E[D(G(z))].
  """
  real_logits, fake_logits = _f32(real_logits), _f32(fake_logits)
  loss_real = jax.nn.relu(1.0 - real_logits).mean()
  loss_fake = jax.nn.relu(1.0 + fake_logits).mean()
  loss = loss_real + loss_fake
  return loss, {
    "d_loss": loss,
    "d_loss_real": loss_real,
    "d_loss_fake": loss_fake,
    **_logit_metrics(real_logits, fake_logits),
  }


# Least-squares GAN (Mao et al. 2017).


def least_squares_discriminator_loss(real_logits: jax.Array, fake_logits: jax.Array):
  """0.5 E[(D(x) - 1)^2] + 0.5 E[D(G(z))^2]: the LSGAN discriminator with a=0, b=1.

  Mao, Li, Xie, Lau, Wang & Smolley 2017, "Least Squares Generative Adversarial Networks",
  Eq. (2) with the 0-1 coding (fake target a=0, real target b=1). D(.) is the raw output (no
  sigmoid). The loss pulls real outputs towards 1 and fake ones towards 0 from either side.
  """
  real_logits, fake_logits = _f32(real_logits), _f32(fake_logits)
  loss_real = 0.5 * jnp.square(real_logits - 1.0).mean()
  loss_fake = 0.5 * jnp.square(fake_logits).mean()
  loss = loss_real + loss_fake
  return loss, {
    "d_loss": loss,
    "d_loss_real": loss_real,
    "d_loss_fake": loss_fake,
    **_logit_metrics(real_logits, fake_logits),
  }


def least_squares_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None = None):
  """0.5 E[(D(G(z)) - 1)^2]: the LSGAN generator with c=1 (Mao et al. 2017, Eq. (2))."""
  del real_logits
  loss = 0.5 * jnp.square(_f32(fake_logits) - 1.0).mean()
  return loss, {"g_loss": loss}


# Relativistic GANs (Jolicoeur-Martineau 2018).


def relativistic_discriminator_loss(
  real_logits: jax.Array, fake_logits: jax.Array, *, label_smoothing: float = 0.0
):
  """E[BCE(C(x_i) - C(G(z_i)), 1)]: the relativistic standard GAN (RSGAN) discriminator.

  Jolicoeur-Martineau 2018, "The relativistic discriminator: a key element missing from standard
  GAN". C is the raw output; sigmoid(C(x_i) - C(G(z_i))) is the probability that the real sample
  is more realistic than the fake one it is paired with (batch element i with batch element i).
  ``d_real`` reports the mean of that probability and ``d_fake`` its complement. With
  ``label_smoothing`` alpha the target is 1 - alpha (one-sided smoothing of the "real" target).
  """
  real_logits, fake_logits = _f32(real_logits), _f32(fake_logits)
  _same_shape(real_logits, fake_logits, "The relativistic discriminator")
  diff = real_logits - fake_logits
  loss = _bce(diff, 1.0 - label_smoothing)
  return loss, {
    "d_loss": loss,
    "d_real": jax.nn.sigmoid(diff).mean(),
    "d_fake": jax.nn.sigmoid(-diff).mean(),
    **_logit_metrics(real_logits, fake_logits),
  }


def relativistic_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None):
  """E[BCE(C(G(z_i)) - C(x_i), 1)]: the RSGAN generator (Jolicoeur-Martineau 2018).

  The discriminator's loss with the roles of real and fake swapped; needs D(x).
  """
  if real_logits is None:
    raise ValueError("The relativistic generator loss needs the real logits.")
  fake_logits, real_logits = _f32(fake_logits), _f32(real_logits)
  _same_shape(real_logits, fake_logits, "The relativistic generator loss")
  loss = _bce(fake_logits - real_logits, 1.0)
  return loss, {"g_loss": loss}


def relativistic_average_discriminator_loss(
  real_logits: jax.Array, fake_logits: jax.Array, *, label_smoothing: float = 0.0
):
  """[BCE(C(x) - E C(G(z)), 1) + BCE(C(G(z)) - E C(x), 0)] / 2: the RaGAN discriminator.

  Jolicoeur-Martineau 2018, "The relativistic discriminator: a key element missing from standard
  GAN" (relativistic average GAN). Each sample is compared with the mean output on the other
  batch (the mean over this call's logits; inside ``shard_map`` that is the per-device batch).
  Convention: the real and fake terms are averaged like :func:`bce_discriminator_loss` (the paper
  sums them; the gradients here are half the paper's), so an indifferent discriminator has loss
  log 2. ``d_real`` / ``d_fake`` are the mean relativistic probabilities
  sigmoid(C(x) - E C(G(z))) and sigmoid(C(G(z)) - E C(x)). With ``label_smoothing`` alpha the real
  term's target is 1 - alpha; the fake target stays 0.
  """
  real_logits, fake_logits = _f32(real_logits), _f32(fake_logits)
  real_rel = real_logits - fake_logits.mean()
  fake_rel = fake_logits - real_logits.mean()
  loss_real = _bce(real_rel, 1.0 - label_smoothing)
  loss_fake = _bce(fake_rel, 0.0)
  loss = 0.5 * (loss_real + loss_fake)
  return loss, {
    "d_loss": loss,
    "d_loss_real": loss_real,
    "d_loss_fake": loss_fake,
    **_probability_metrics(real_rel, fake_rel),
    **_logit_metrics(real_logits, fake_logits),
  }


def relativistic_average_generator_loss(fake_logits: jax.Array, real_logits: jax.Array | None):
  """[BCE(C(G(z)) - E C(x), 1) + BCE(C(x) - E C(G(z)), 0)] / 2: the RaGAN generator.

  Jolicoeur-Martineau 2018. The discriminator's loss with the roles of real and fake swapped
  (terms averaged, as for the discriminator); needs D(x), and G gets gradient through both terms.
  """
  if real_logits is None:
    raise ValueError("The relativistic average generator loss needs the real logits.")
  fake_logits, real_logits = _f32(fake_logits), _f32(real_logits)
  loss_fake = _bce(fake_logits - real_logits.mean(), 1.0)
  loss_real = _bce(real_logits - fake_logits.mean(), 0.0)
  loss = 0.5 * (loss_fake + loss_real)
  return loss, {"g_loss": loss}


minimax = Objective(bce_discriminator_loss, minimax_generator_loss)
"""The saturating minimax game of Goodfellow et al. 2014."""

non_saturating = Objective(bce_discriminator_loss, non_saturating_generator_loss)
"""The minimax discriminator with the non-saturating generator loss (the usual "GAN loss")."""

wgan = Objective(wasserstein_discriminator_loss, wasserstein_generator_loss)
"""Wasserstein GAN (Arjovsky et al. 2017); pair it with weight clipping of the critic."""

wgan_gp = Objective(
  wasserstein_discriminator_loss,
  wasserstein_generator_loss,
  implied_regularizers=(("gradient_penalty", 10.0),),
)
"""WGAN-GP: the WGAN losses plus a gradient penalty of weight 10 (lambda in Gulrajani, Ahmed,
Arjovsky, Dumoulin & Courville 2017, "Improved Training of Wasserstein GANs"); the penalty itself
is in ``ganjax.regularizers``."""

hinge = Objective(hinge_discriminator_loss, wasserstein_generator_loss)
"""Hinge GAN (Lim & Ye 2017; Miyato et al. 2018): hinge D loss, G loss -E[D(G(z))]."""

least_squares = Objective(least_squares_discriminator_loss, least_squares_generator_loss)
"""LSGAN with a=0, b=1, c=1 (Mao et al. 2017)."""

relativistic = Objective(
  relativistic_discriminator_loss, relativistic_generator_loss, generator_needs_real_logits=True
)
"""Relativistic standard GAN, RSGAN (Jolicoeur-Martineau 2018)."""

relativistic_average = Objective(
  relativistic_average_discriminator_loss,
  relativistic_average_generator_loss,
  generator_needs_real_logits=True,
)
"""Relativistic average GAN, RaGAN (Jolicoeur-Martineau 2018)."""


def supports_label_smoothing(objective: Objective) -> bool:
  """Whether the objective's discriminator takes a ``label_smoothing`` keyword (BCE-based ones)."""
  return "label_smoothing" in inspect.signature(objective.discriminator).parameters


def get_objective(name: str, *, label_smoothing: float = 0.0) -> Objective:
  """Returns the objective named ``name``; an unknown name lists the valid ones.

  Args:
    name: a key of :func:`available_objectives`.
    label_smoothing: alpha of one-sided label smoothing (Salimans et al. 2016, "Improved
      Techniques for Training GANs"): the discriminator's real target becomes 1 - alpha, fake
      targets stay 0. Must be in [0, 1); non-zero only for objectives whose discriminator is a
      binary cross-entropy (see :func:`supports_label_smoothing`).

  Returns:
    The objective, with ``label_smoothing`` bound into its discriminator when non-zero.
  """
  valid = available_objectives()
  if name not in valid:
    raise ConfigError(f"Unknown loss.name {name!r}; valid choices: {', '.join(sorted(valid))}.")
  objective = valid[name]
  if not 0.0 <= label_smoothing < 1.0:  # Also rejects NaN.
    raise ConfigError(f"label_smoothing must be in [0, 1); got {label_smoothing!r}.")
  if label_smoothing == 0.0:
    return objective
  if not supports_label_smoothing(objective):
    supported = sorted(k for k, v in valid.items() if supports_label_smoothing(v))
    raise ConfigError(
      f"Objective {name!r} does not support label_smoothing={label_smoothing!r} (its "
      f"discriminator is not a binary cross-entropy); objectives that do: {', '.join(supported)}."
    )
  smoothed = functools.partial(objective.discriminator, label_smoothing=float(label_smoothing))
  return objective._replace(discriminator=smoothed)


def objective_from_config(config) -> Objective:
  """``config.loss``'s objective (``loss.name``), with its ``loss.label_smoothing``."""
  return get_objective(config.loss.name, label_smoothing=config.loss.get("label_smoothing", 0.0))


def available_objectives() -> dict[str, Objective]:
  """Every module-level :class:`Objective` of this module, by name."""
  return {k: v for k, v in globals().items() if isinstance(v, Objective)}
