"""Pure training steps: ``discriminator_step``, ``generator_step`` and ``train_step``.

``train_step(state, batch, rng) -> (state, metrics)`` performs ``n_critic`` discriminator updates
and one generator update. Each network's TrainState (params, optimizer state, BatchNorm
statistics) is changed only by its own step: the discriminator step runs G in train mode but
drops G's updated statistics, and vice versa. An unrolled generator step (``unrolled_steps > 0``;
Metz et al. 2017, "Unrolled Generative Adversarial Networks") looks through differentiable copies
of D's updates and discards them.

Class-conditional GANs (``conditional=True``; Mirza & Osindero 2014) take the batch's ``"label"``:
G generates each fake for the label of the real example at the same position, so real and fake
batches have the same classes, and D (and its penalties) see those labels. A discriminator that
returns ``(logits, class_logits)`` (ACGAN, Odena et al. 2017) adds ``classifier_weight`` times the
cross-entropy of its class predictions on real and fake to its loss, and G adds it on fake.

The same functions run in both parallel modes (see ``ganjax.parallel``): under a global-view
``jax.jit`` (``axis_name=None``; XLA inserts the cross-device reductions), and per device inside
``jax.shard_map`` (``axis_name="data"``), where gradients, metrics and BatchNorm running averages
are averaged explicitly with ``lax.pmean`` — the pmap programming model.

Randomness: the step folds ``state.step`` into the run's key, then a purpose id, so the same seed
gives the same run, also across a resume. Latents are drawn for the *global* batch and each device
takes its slice, so both parallel modes draw the same latents as a single device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ganjax import augment, losses, parallel, regularizers
from ganjax.errors import ConfigError
from ganjax.state import GANState, TrainState, update_ema

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]

# Purposes folded into the per-step key.
_D_LATENT, _D_DROPOUT, _G_LATENT, _G_DROPOUT, _D_PENALTY, _D_INPUTS, _G_INPUTS, _G_UNROLL = range(8)


@dataclasses.dataclass(frozen=True)
class Regularization:
  """What the discriminator sees and which penalties its loss carries (static; hashable).

  Attributes:
    penalties: ``(name, weight)`` pairs of penalties in :data:`ganjax.regularizers.PENALTIES`
      added to D's loss (``weight * penalty``).
    lazy_interval: compute the penalties only every this many D steps, with ``weight *
      lazy_interval`` (lazy regularization, Karras et al. 2020); 1 = every step.
    augment_policy: DiffAugment policy (Zhao et al. 2020) applied to every input of D, real and
      fake, in both steps; ``""`` = none.
    consistency_policy: the augmentation T of the ``consistency`` penalty (bCR, Zhao et al. 2021).
    instance_noise: stddev of Gaussian noise added to every input of D (Sonderby et al. 2017),
      decayed linearly to 0 over ``instance_noise_steps`` generator steps (0 = constant).
    instance_noise_steps: length of that decay.
  """

  penalties: tuple[tuple[str, float], ...] = ()
  lazy_interval: int = 1
  augment_policy: str = ""
  consistency_policy: str = "translation"
  instance_noise: float = 0.0
  instance_noise_steps: int = 0

  def __post_init__(self):
    for name, _ in self.penalties:
      regularizers.get_regularizer(name)  # Unknown names fail with the valid ones.
    regularizers.lazy_regularization(1.0, self.lazy_interval)  # Validates the interval.
    augment.parse_policy(self.augment_policy)
    augment.parse_policy(self.consistency_policy)
    if self.instance_noise < 0 or self.instance_noise_steps < 0:
      raise ConfigError(
        f"instance_noise ({self.instance_noise}) and instance_noise_steps "
        f"({self.instance_noise_steps}) must be >= 0."
      )

  def discriminator_input(self, x: jax.Array, rng: jax.Array, step: jax.Array) -> jax.Array:
    """``x`` as D sees it: DiffAugment, then instance noise (both off by default)."""
    if self.augment_policy:
      x = augment.diff_augment(x, jax.random.fold_in(rng, 0), self.augment_policy)
    if self.instance_noise > 0:
      stddev = self.instance_noise
      if self.instance_noise_steps:
        stddev = regularizers.annealed_stddev(stddev, step, self.instance_noise_steps)
      x = regularizers.instance_noise(x, jax.random.fold_in(rng, 1), stddev)
    return x

  def penalty(self, d_fn, real, fake, rng, d_step) -> tuple[jax.Array, Metrics]:
    """The weighted sum of the penalties at D step ``d_step``, and their metrics."""
    if not self.penalties:
      return jnp.zeros((), jnp.float32), {}

    def unweighted(real, fake, rng):
      total, metrics = jnp.zeros((), jnp.float32), {}
      for i, (name, weight) in enumerate(self.penalties):
        value, m = self._one_penalty(name, d_fn, real, fake, jax.random.fold_in(rng, i))
        total += weight * value
        metrics.update(m)
      return total, metrics

    lazy = regularizers.lazy_regularization(1.0, self.lazy_interval)
    total, metrics = lazy(d_step, unweighted, real, fake, rng)
    return total, {**metrics, "d_penalty": total}

  def _one_penalty(self, name, d_fn, real, fake, rng):
    penalty = regularizers.get_regularizer(name)
    if penalty.inputs == ("x", "x_augmented"):  # Consistency: on real and on fake data alike.
      total, metrics = jnp.zeros((), jnp.float32), {}
      for i, (x, role) in enumerate(((real, "real"), (fake, "fake"))):
        augmented = augment.diff_augment(x, jax.random.fold_in(rng, i), self.consistency_policy)
        value, m = penalty.fn(d_fn, x, augmented)
        total += value
        metrics.update({f"{k}_{role}": v for k, v in m.items()})
      return total, metrics
    by_role = {"real": real, "fake": fake, "rng": rng}
    return penalty.fn(d_fn, *(by_role[role] for role in penalty.inputs))


NO_REGULARIZATION = Regularization()


def _apply(ts: TrainState, params, x, labels, *, train: bool, rng: jax.Array | None):
  """Runs a network; returns its output and its (possibly updated) batch statistics."""
  variables = {"params": params}
  if ts.batch_stats:
    variables["batch_stats"] = ts.batch_stats
  rngs = {"dropout": rng} if rng is not None else None
  if train and ts.batch_stats:
    out, updates = ts.apply_fn(variables, x, labels, train=True, rngs=rngs, mutable=["batch_stats"])
    return out, updates["batch_stats"]
  return ts.apply_fn(variables, x, labels, train=train, rngs=rngs), ts.batch_stats


def _split_outputs(out) -> tuple[jax.Array, jax.Array | None]:
  """A discriminator's output as ``(logits, class_logits or None)`` (ACGAN returns both)."""
  if isinstance(out, tuple):
    return out
  return out, None


def _classification_loss(class_logits: jax.Array, labels: jax.Array) -> jax.Array:
  """ACGAN's class term: the mean cross-entropy of D's class logits (Odena et al. 2017, Eq. 2)."""
  return optax.softmax_cross_entropy_with_integer_labels(class_logits, labels).mean()


def _device_index(axis_name: str | None) -> jax.Array | int:
  return 0 if axis_name is None else jax.lax.axis_index(axis_name)


def _device_key(rng: jax.Array, axis_name: str | None) -> jax.Array:
  return rng if axis_name is None else jax.random.fold_in(rng, _device_index(axis_name))


def _apply_update(ts: TrainState, grads, batch_stats, axis_name: str | None) -> TrainState:
  grads = parallel.pmean(grads, axis_name)
  return ts.apply_gradients(grads=grads, batch_stats=parallel.pmean(batch_stats, axis_name))


def _discriminator_loss(
  params,
  d: TrainState,
  real: jax.Array,
  fake: jax.Array,
  keys: tuple[jax.Array, jax.Array, jax.Array, jax.Array],
  *,
  labels: jax.Array | None = None,
  objective: losses.Objective,
  regularization: Regularization,
  d_step: jax.Array | int,
  classifier_weight: float = 1.0,
) -> tuple[jax.Array, tuple[Metrics, Any]]:
  """D's loss at ``params`` on D-ready inputs: the objective's plus the weighted penalties.

  ``keys``: dropout on real, dropout on fake, the penalties' key, dropout in the penalties.
  ``labels``: the classes of both ``real`` and ``fake`` (conditional GANs), else None.
  Returns ``(loss, (metrics, new batch_stats))``.
  """
  dropout_real, dropout_fake, penalty_key, dropout_penalty = keys
  real_out, stats = _apply(d, params, real, labels, train=True, rng=dropout_real)
  fake_out, stats = _apply(
    d.replace(batch_stats=stats), params, fake, labels, train=True, rng=dropout_fake
  )
  real_logits, real_classes = _split_outputs(real_out)
  fake_logits, fake_classes = _split_outputs(fake_out)
  loss, metrics = objective.discriminator(real_logits, fake_logits)
  if real_classes is not None:
    class_loss = _classification_loss(real_classes, labels) + _classification_loss(
      fake_classes, labels
    )
    loss = loss + classifier_weight * class_loss
    accuracy = jnp.mean(jnp.argmax(real_classes, axis=-1) == labels)
    metrics = {**metrics, "d_class_loss": class_loss, "d_class_accuracy_real": accuracy}
  if regularization.penalties:
    # Penalties see D as the loss does (train mode), but leave its statistics alone.
    def d_fn(x):
      d_now = d.replace(batch_stats=stats)
      out = _apply(d_now, params, x, labels, train=True, rng=dropout_penalty)[0]
      return _split_outputs(out)[0]

    penalty, penalty_metrics = regularization.penalty(d_fn, real, fake, penalty_key, d_step)
    loss = loss + penalty
    metrics = {**metrics, **penalty_metrics}
  return loss, (metrics, stats)


def discriminator_step(
  state: GANState,
  real: jax.Array,
  rng: jax.Array,
  *,
  objective: losses.Objective,
  latent_dim: int,
  regularization: Regularization = NO_REGULARIZATION,
  d_step: jax.Array | int = 0,
  labels: jax.Array | None = None,
  classifier_weight: float = 1.0,
  axis_name: str | None = None,
) -> tuple[GANState, Metrics]:
  """One update of D on a real batch and a batch of fresh generator samples.

  ``d_step`` counts D updates (for lazy regularization); the loss is the objective's plus the
  weighted penalties of ``regularization``. ``labels`` (conditional GANs): the real batch's
  classes, which the fakes are generated for.
  """
  g, d = state.generator, state.discriminator
  z = parallel.local_normal(
    jax.random.fold_in(rng, _D_LATENT), (real.shape[0], latent_dim), axis_name
  )
  fake, _ = _apply(g, g.params, z, labels, train=True, rng=None)  # G's new stats are dropped.
  fake = jax.lax.stop_gradient(fake)
  dropout_real, dropout_fake = jax.random.split(
    _device_key(jax.random.fold_in(rng, _D_DROPOUT), axis_name)
  )
  inputs_key = _device_key(jax.random.fold_in(rng, _D_INPUTS), axis_name)
  real = regularization.discriminator_input(real, jax.random.fold_in(inputs_key, 0), state.step)
  fake = regularization.discriminator_input(fake, jax.random.fold_in(inputs_key, 1), state.step)
  penalty_key, dropout_penalty = jax.random.split(
    _device_key(jax.random.fold_in(rng, _D_PENALTY), axis_name)
  )
  loss_fn = functools.partial(
    _discriminator_loss,
    d=d,
    real=real,
    fake=fake,
    keys=(dropout_real, dropout_fake, penalty_key, dropout_penalty),
    labels=labels,
    objective=objective,
    regularization=regularization,
    d_step=d_step,
    classifier_weight=classifier_weight,
  )
  grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(d.params)
  metrics["d_grad_norm"] = optax.global_norm(parallel.pmean(grads, axis_name))
  new_d = _apply_update(d, grads, stats, axis_name)
  return state.replace(discriminator=new_d), parallel.pmean(metrics, axis_name)


def unrolled_discriminator_params(
  d: TrainState,
  real: jax.Array,
  fake: jax.Array,
  rng: jax.Array,
  *,
  unrolled_steps: int,
  objective: losses.Objective,
  regularization: Regularization = NO_REGULARIZATION,
  labels: jax.Array | None = None,
  classifier_weight: float = 1.0,
  axis_name: str | None = None,
):
  """D's parameters after ``unrolled_steps`` differentiable updates (Metz et al. 2017).

  Metz, Poole, Pfau, Sohl-Dickstein, "Unrolled Generative Adversarial Networks", ICLR 2017,
  arXiv:1611.02163, Eq. (6)-(7): ``theta_D^{k+1} = theta_D^k + eta^k * d f(theta_G, theta_D^k) /
  d theta_D^k``, here with D's own optimizer (``d.tx``, from its current ``opt_state``), on the
  real batch ``real`` and the generated batch ``fake`` (both as D sees them). ``fake`` is not
  stopped, so the returned parameters are a differentiable function of the generator's parameters
  that produced it. Every unrolled update uses D's current ``batch_stats`` (their updates are
  dropped) and its penalties at their plain weight (no lazy regularization). Nothing of ``d``
  changes; the caller discards the result after the generator's loss.

  Differentiating through Adam is finite only where no gradient entry is exactly 0 at an all-zero
  second moment (``d sqrt(v) / dv``); optax's ``eps_root > 0`` removes that corner case.
  """
  reg = dataclasses.replace(regularization, lazy_interval=1)
  params, opt_state = d.params, d.opt_state
  for k in range(unrolled_steps):
    keys = tuple(jax.random.split(_device_key(jax.random.fold_in(rng, k), axis_name), 4))
    grads, _ = jax.grad(_discriminator_loss, has_aux=True)(
      params,
      d,
      real,
      fake,
      keys,
      labels=labels,
      objective=objective,
      regularization=reg,
      d_step=0,
      classifier_weight=classifier_weight,
    )
    updates, opt_state = d.tx.update(parallel.pmean(grads, axis_name), opt_state, params)
    params = optax.apply_updates(params, updates)
  return params


def generator_step(
  state: GANState,
  real: jax.Array,
  rng: jax.Array,
  *,
  objective: losses.Objective,
  latent_dim: int,
  ema_decay: float,
  ema_warmup: bool = False,
  regularization: Regularization = NO_REGULARIZATION,
  unrolled_steps: int = 0,
  labels: jax.Array | None = None,
  classifier_weight: float = 1.0,
  axis_name: str | None = None,
) -> tuple[GANState, Metrics]:
  """One update of G through a fixed D; then the EMA of G's params and ``step + 1``.

  ``labels`` (conditional GANs): the classes G generates for (those of the real batch ``real``).

  With ``ema_warmup`` the decay at step t is ``min(ema_decay, (1 + t) / (10 + t))``. D sees its
  inputs as in the D step (``regularization.discriminator_input``: DiffAugment, instance noise).
  With ``unrolled_steps = k > 0`` (static) G's loss is taken through D after ``k`` differentiable
  updates on ``real`` and G's samples (:func:`unrolled_discriminator_params`; Metz et al. 2017),
  and the gradient flows through those updates; the state's D is left unchanged.
  """
  if unrolled_steps < 0:
    raise ConfigError(f"unrolled_steps must be >= 0, got {unrolled_steps}.")
  g, d = state.generator, state.discriminator
  z = parallel.local_normal(
    jax.random.fold_in(rng, _G_LATENT), (real.shape[0], latent_dim), axis_name
  )
  dropout_real, dropout_fake = jax.random.split(
    _device_key(jax.random.fold_in(rng, _G_DROPOUT), axis_name)
  )
  # Only objectives that compare with real data (relativistic ones) need D(x) in the G step, and
  # only they and the unrolled D updates need the real batch.
  inputs_key = _device_key(jax.random.fold_in(rng, _G_INPUTS), axis_name)
  real_logits = None
  if objective.generator_needs_real_logits or unrolled_steps:
    real = regularization.discriminator_input(real, jax.random.fold_in(inputs_key, 0), state.step)
  if objective.generator_needs_real_logits and not unrolled_steps:
    real_out, _ = _apply(d, d.params, real, labels, train=True, rng=dropout_real)
    real_logits = _split_outputs(real_out)[0]

  def loss_fn(params):
    fake, stats = _apply(g, params, z, labels, train=True, rng=None)
    fake = regularization.discriminator_input(fake, jax.random.fold_in(inputs_key, 1), state.step)
    d_params, logits_real = d.params, real_logits
    if unrolled_steps:
      d_params = unrolled_discriminator_params(
        d,
        real,
        fake,
        jax.random.fold_in(rng, _G_UNROLL),
        unrolled_steps=unrolled_steps,
        objective=objective,
        regularization=regularization,
        labels=labels,
        classifier_weight=classifier_weight,
        axis_name=axis_name,
      )
      if objective.generator_needs_real_logits:
        real_out, _ = _apply(d, d_params, real, labels, train=True, rng=dropout_real)
        logits_real = _split_outputs(real_out)[0]
    fake_out, _ = _apply(d, d_params, fake, labels, train=True, rng=dropout_fake)
    fake_logits, fake_classes = _split_outputs(fake_out)
    loss, metrics = objective.generator(fake_logits, logits_real)
    if fake_classes is not None:
      class_loss = _classification_loss(fake_classes, labels)
      loss = loss + classifier_weight * class_loss
      metrics = {**metrics, "g_class_loss": class_loss}
    return loss, (metrics, stats)

  grads, (metrics, stats) = jax.grad(loss_fn, has_aux=True)(g.params)
  metrics["g_grad_norm"] = optax.global_norm(parallel.pmean(grads, axis_name))
  new_g = _apply_update(g, grads, stats, axis_name)
  ema = update_ema(state.ema_params, new_g.params, state.step, ema_decay, ema_warmup)
  new_state = state.replace(generator=new_g, ema_params=ema, step=state.step + 1)
  return new_state, parallel.pmean(metrics, axis_name)


def split_critic_batches(images: jax.Array, n_critic: int) -> list[jax.Array]:
  """Splits a step's batch of ``n_critic * B`` images into ``n_critic`` batches of ``B``.

  Example ``i`` of every sub-batch comes from consecutive rows, so a batch sharded on its leading
  axis splits without moving data between devices.
  """
  if images.shape[0] % n_critic:
    raise ConfigError(f"Batch of {images.shape[0]} does not split into n_critic={n_critic} parts.")
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
  regularization: Regularization = NO_REGULARIZATION,
  unrolled_steps: int = 0,
  conditional: bool = False,
  classifier_weight: float = 1.0,
  axis_name: str | None = None,
) -> tuple[GANState, Metrics]:
  """``n_critic`` discriminator updates, then one generator update.

  Args:
    state: the GAN state (replicated).
    batch: ``{"image": (n_critic * B, ...)}`` (and ``"label"``: ``(n_critic * B,)`` int for
      conditional GANs), sharded on its leading axis.
    rng: the run's base key; the step number is folded in here.
    objective: the adversarial objective (``ganjax.losses``).
    latent_dim: size of the generator's latent input.
    n_critic: discriminator updates per generator update (Arjovsky et al. 2017).
    ema_decay: decay of the generator EMA; 0 turns it off (``ema_params`` stay as they are).
    ema_warmup: ramp the EMA decay up as ``(1 + t) / (10 + t)`` until it reaches ``ema_decay``.
    regularization: D's penalties and input transformations (:class:`Regularization`).
    unrolled_steps: the generator's loss looks through this many unrolled D updates (Metz et al.
      2017, "Unrolled Generative Adversarial Networks"); 0 = off.
    conditional: class-conditional GAN: G and D get the batch's labels.
    classifier_weight: weight of the ACGAN class loss (when D returns class logits).
    axis_name: the mesh axis inside ``shard_map``; None under a global-view ``jit``.

  Returns:
    The new state and a dict of scalar metrics (the last D step's and the G step's).
  """
  rng = jax.random.fold_in(rng, state.step)
  real_batches = split_critic_batches(batch["image"], n_critic)
  label_batches = [None] * n_critic
  if conditional:
    if "label" not in batch:
      raise ValueError(
        "A conditional GAN needs labelled batches ({'image', 'label'}); this batch has keys "
        f"{sorted(batch)}."
      )
    label_batches = split_critic_batches(batch["label"], n_critic)
  metrics: dict[str, Any] = {}
  for i, (real, labels) in enumerate(zip(real_batches, label_batches, strict=True)):
    state, metrics = discriminator_step(
      state,
      real,
      jax.random.fold_in(rng, 2 * i),
      objective=objective,
      latent_dim=latent_dim,
      regularization=regularization,
      d_step=state.step * n_critic + i,
      labels=labels,
      classifier_weight=classifier_weight,
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
    regularization=regularization,
    unrolled_steps=unrolled_steps,
    labels=label_batches[-1],
    classifier_weight=classifier_weight,
    axis_name=axis_name,
  )
  return state, {**metrics, **g_metrics}


def regularization_from_config(config, objective: losses.Objective) -> Regularization:
  """The :class:`Regularization` of ``config.regularizer`` / ``config.augment``.

  A penalty's weight is ``config.regularizer.<name>`` when set (0 turns it off), else the weight
  the objective implies (``objective.implied_regularizers``, e.g. WGAN-GP's gradient penalty 10).
  """
  weights = dict(objective.implied_regularizers)
  reg = config.get("regularizer", {})
  for name, weight in reg.items():
    if name in _REGULARIZER_OPTIONS:
      continue
    regularizers.get_regularizer(name)  # An unknown name lists the valid ones.
    if weight is not None:
      weights[name] = float(weight)
  aug = config.get("augment", {})
  return Regularization(
    penalties=tuple((k, v) for k, v in sorted(weights.items()) if v),
    lazy_interval=int(reg.get("lazy_interval", 1)),
    augment_policy=aug.get("policy", "") or "",
    consistency_policy=aug.get("consistency_policy", "translation"),
    instance_noise=float(aug.get("instance_noise", 0.0)),
    instance_noise_steps=int(aug.get("instance_noise_steps", 0)),
  )


# Fields of config.regularizer that are options, not penalty weights.
_REGULARIZER_OPTIONS = frozenset({"lazy_interval", "weight_clip"})


def make_train_step(config, objective: losses.Objective):
  """Binds the static arguments of :func:`train_step` from a config."""
  return functools.partial(
    train_step,
    objective=objective,
    latent_dim=config.model.latent_dim,
    n_critic=config.n_critic,
    ema_decay=config.ema.decay,
    ema_warmup=config.ema.warmup,
    regularization=regularization_from_config(config, objective),
    unrolled_steps=config.get("unrolled_steps", 0),
    conditional=bool(config.model.get("conditional", False)),
    classifier_weight=float(config.loss.get("classifier_weight", 1.0)),
  )
