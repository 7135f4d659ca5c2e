"""Regularizers and tricks for the discriminator.

Penalties are pure, jit-compatible functions. Those that need gradients of D with respect to its
input take a discriminator *apply function* ``d_fn: x -> logits`` (a closure over D's parameters,
returning logits of shape ``(B,)`` or ``(B, 1)``), as ``ganjax.steps`` builds around ``_apply``::

  def loss_fn(params):
    d_fn = lambda x: _apply(d, params, x, None, train=True, rng=key)[0]
    ...
    penalty, reg_metrics = regularizers.r1_penalty(d_fn, real)
    loss = loss + weight * penalty

Every penalty returns ``(penalty, metrics)``: an *unweighted* scalar and a dict of scalar metrics.
The weight (lambda, gamma, ...) is applied by the caller, so one function serves every config.

Input gradients are computed as ``jax.grad(lambda x: d_fn(x).sum())(x)``. Row ``i`` of that gradient
is ``grad_x D(x_i)`` -- the per-example gradient -- provided D has no interaction between the
examples of a batch (no BatchNorm in train mode, no minibatch discrimination, ...), as in the
papers' implementations (Gulrajani et al. 2017, Section 4, drop BatchNorm from the critic for this
reason). With cross-example layers the result is the gradient of the batch sum instead. Gradient
norms are taken over all non-batch axes (the whole image of an example).

Penalties are means over the local batch; under ``shard_map`` the caller averages them (and their
gradients) across devices with ``lax.pmean`` as it does for the losses.

The penalties are differentiable with respect to D's parameters (double backpropagation); the norm
is written so that its gradient is 0, not NaN, where an example's input gradient is exactly zero.

``get_regularizer(name)`` looks a penalty up by the name a config uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from ganjax.errors import ConfigError

Metrics = dict[str, jax.Array]
ApplyFn = Callable[[jax.Array], jax.Array]


# ----------------------------------------------------------------------------------------------
# Helpers.


def input_gradients(d_fn: ApplyFn, x: jax.Array) -> jax.Array:
  """Gradient of the discriminator's logits with respect to its input, one row per example.

  Computed as ``grad_x sum_i D(x)_i``; equal to the per-example gradients ``grad_x D(x_i)`` when D
  has no cross-example interaction (see the module docstring).

  Args:
    d_fn: the discriminator apply function, ``x -> logits`` of shape ``(B,)`` or ``(B, 1)``.
    x: a batch of inputs ``(B, ...)``.

  Returns:
    An array shaped like ``x``.
  """
  return jax.grad(lambda inputs: jnp.sum(d_fn(inputs)))(x)


def _squared_norms(g: jax.Array) -> jax.Array:
  """Per-example squared L2 norms over all non-batch axes, ``(B,)``."""
  return jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)))


def _safe_sqrt(sq: jax.Array) -> jax.Array:
  """sqrt with gradient 0 (instead of inf * 0 = NaN) at 0."""
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _per_example_uniform(rng: jax.Array, x: jax.Array) -> jax.Array:
  """One U[0, 1) number per example, shaped ``(B, 1, ..., 1)`` to broadcast against ``x``."""
  return jax.random.uniform(rng, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)


def _norm_penalty(d_fn: ApplyFn, x: jax.Array, target: float, prefix: str):
  g = input_gradients(d_fn, x)
  norms = _safe_sqrt(_squared_norms(g))
  penalty = jnp.mean(jnp.square(norms - target))
  return penalty, {prefix: penalty, f"{prefix}_grad_norm": jax.lax.stop_gradient(norms.mean())}


def _zero_centred_penalty(d_fn: ApplyFn, x: jax.Array, prefix: str):
  sq = _squared_norms(input_gradients(d_fn, x))
  penalty = 0.5 * jnp.mean(sq)
  norm = jax.lax.stop_gradient(_safe_sqrt(sq).mean())
  return penalty, {prefix: penalty, f"{prefix}_grad_norm": norm}


# ----------------------------------------------------------------------------------------------
# Gradient penalties.


def gradient_penalty(
  d_fn: ApplyFn, real: jax.Array, fake: jax.Array, rng: jax.Array, target: float = 1.0
) -> tuple[jax.Array, Metrics]:
  """WGAN-GP: a two-sided penalty on the critic's gradient norm between real and fake samples.

  ``GP = E_{x_hat}[(||grad_x D(x_hat)||_2 - target)^2]`` with
  ``x_hat = eps * real + (1 - eps) * fake`` and ``eps ~ U[0, 1]`` drawn once per example.

  Gulrajani et al. 2017, "Improved Training of Wasserstein GANs" (Algorithm 1; lambda = 10 is the
  paper's weight, applied by the caller). ``target`` other than 1 gives the "one-centred at
  gamma" variant (e.g. Karras et al. 2018, Progressive GAN, use 750).

  Args:
    d_fn: the critic apply function, ``x -> logits (B,)`` (a closure over its parameters).
    real: a real batch ``(B, ...)``.
    fake: a generated batch of the same shape (usually with ``stop_gradient`` applied).
    rng: key for the interpolation coefficients.
    target: the gradient norm the penalty pulls towards.

  Returns:
    ``(penalty, metrics)``: the unweighted penalty and ``{"gp", "gp_grad_norm"}`` (the mean
    gradient norm at the interpolates).
  """
  eps = _per_example_uniform(rng, real)
  x_hat = eps * real + (1.0 - eps) * fake
  return _norm_penalty(d_fn, x_hat, target, "gp")


def r1_penalty(d_fn: ApplyFn, real: jax.Array) -> tuple[jax.Array, Metrics]:
  """R1: a zero-centred gradient penalty on real data.

  ``R1 = 0.5 * E_{x ~ p_data}[||grad_x D(x)||_2^2]``.

  Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?" (Section 4.1),
  where the regularizer is ``gamma / 2 * E||grad D||^2``. The 0.5 is part of this function, so the
  caller's weight is the paper's ``gamma`` (StyleGAN2, Karras et al. 2020, writes the same term as
  ``gamma / 2``; its gamma carries over unchanged).

  Args:
    d_fn: the discriminator apply function, ``x -> logits (B,)``.
    real: a real batch ``(B, ...)``.

  Returns:
    ``(penalty, metrics)``: the unweighted penalty and ``{"r1", "r1_grad_norm"}``.
  """
  return _zero_centred_penalty(d_fn, real, "r1")


def r2_penalty(d_fn: ApplyFn, fake: jax.Array) -> tuple[jax.Array, Metrics]:
  """R2: the zero-centred gradient penalty on generated data.

  ``R2 = 0.5 * E_{x ~ p_G}[||grad_x D(x)||_2^2]``; the same 0.5 convention as :func:`r1_penalty`
  (the caller's weight is gamma).

  Mescheder et al. 2018, "Which Training Methods for GANs do actually Converge?" (Section 4.1).

  Args:
    d_fn: the discriminator apply function, ``x -> logits (B,)``.
    fake: a generated batch ``(B, ...)`` (usually with ``stop_gradient`` applied).

  Returns:
    ``(penalty, metrics)``: the unweighted penalty and ``{"r2", "r2_grad_norm"}``.
  """
  return _zero_centred_penalty(d_fn, fake, "r2")


def dragan_penalty(
  d_fn: ApplyFn,
  real: jax.Array,
  rng: jax.Array,
  scale: float = 0.5,
  target: float = 1.0,
  *,
  interpolate: bool = False,
) -> tuple[jax.Array, Metrics]:
  """DRAGAN: a gradient-norm penalty in a noisy neighbourhood of the real data.

  ``x_p = real + scale * std(real) * u`` with ``u ~ U[0, 1)`` drawn independently for every element
  and ``std(real)`` the standard deviation of *all* elements of the (local) batch, a scalar treated
  as a constant; then ``DRAGAN = E[(||grad_x D(x_p)||_2 - target)^2]``. With ``interpolate=True``
  the penalty is evaluated at ``x = real + alpha * (x_p - real)``, ``alpha ~ U[0, 1]`` per example,
  instead of at ``x_p`` (the variant of the authors' public code).

  Kodali et al. 2017, "On Convergence and Stability of GANs" (Section 5; lambda = 10 and
  ``scale * std = 0.5 * std`` in the paper). The weight is applied by the caller.

  Args:
    d_fn: the discriminator apply function, ``x -> logits (B,)``.
    real: a real batch ``(B, ...)``.
    rng: key for the perturbation (and the interpolation).
    scale: the perturbation's size in units of the batch's standard deviation.
    target: the gradient norm the penalty pulls towards.
    interpolate: evaluate between ``real`` and ``x_p`` instead of at ``x_p``.

  Returns:
    ``(penalty, metrics)``: the unweighted penalty and ``{"dragan", "dragan_grad_norm"}``.
  """
  noise_rng, alpha_rng = jax.random.split(rng)
  std = jax.lax.stop_gradient(jnp.std(real))
  perturbed = real + scale * std * jax.random.uniform(noise_rng, real.shape, real.dtype)
  if interpolate:
    perturbed = real + _per_example_uniform(alpha_rng, real) * (perturbed - real)
  return _norm_penalty(d_fn, perturbed, target, "dragan")


def consistency_penalty(
  d_fn: ApplyFn, x: jax.Array, x_augmented: jax.Array
) -> tuple[jax.Array, Metrics]:
  """Balanced consistency regularization (bCR): D should not change under an augmentation T.

  ``CR = E[(D(T(x)) - D(x))^2]`` on logits, averaged over the batch (and over logit axes, if any).

  Zhao et al. 2021, "Improved Consistency Regularization for GANs" (bCR, Algorithm 1; building on
  Zhang et al. 2020, "Consistency Regularization for GANs"). The caller applies it to real data with
  weight ``lambda_real`` and to generated data with ``lambda_fake`` (10 and 10 in the paper), and
  draws the augmentation ``x_augmented = T(x)`` (e.g. ``ganjax.augment.diff_augment``). Gradients
  flow through both terms.

  Args:
    d_fn: the discriminator apply function, ``x -> logits (B,)``.
    x: a batch ``(B, ...)``.
    x_augmented: the same batch after the augmentation.

  Returns:
    ``(penalty, metrics)``: the unweighted penalty and ``{"consistency"}``.
  """
  penalty = jnp.mean(jnp.square(d_fn(x_augmented) - d_fn(x)))
  return penalty, {"consistency": penalty}


# ----------------------------------------------------------------------------------------------
# Lazy regularization (StyleGAN2).


class LazyRegularization(NamedTuple):
  """Lazy regularization: a penalty computed only every ``interval`` D steps, weighted up.

  On steps with ``step % interval == 0`` the penalty enters the loss with weight
  ``weight * interval``; on the others it is skipped (weight 0, and with :meth:`__call__` not even
  computed). In expectation the total regularization is the same as applying ``weight`` every step,
  at ``1 / interval`` of the cost.

  Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (Section 3.1,
  "Lazy regularization"; interval 16 for R1 on D). ``step`` is a counter of D steps, kept by the
  caller (with ``n_critic > 1`` not the same as ``GANState.step``).
  """

  weight: float
  interval: int

  @property
  def effective_weight(self) -> float:
    """The weight on the steps where the penalty is applied: ``weight * interval``."""
    return self.weight * self.interval

  def is_due(self, step: jax.Array | int) -> jax.Array:
    """Whether the penalty is applied at ``step`` (a boolean scalar)."""
    return jnp.asarray(step) % self.interval == 0

  def weight_at(self, step: jax.Array | int) -> jax.Array:
    """``weight * interval`` on due steps, else 0."""
    return jnp.where(self.is_due(step), self.effective_weight, 0.0)

  def __call__(
    self, step: jax.Array | int, penalty_fn: Callable[..., tuple[jax.Array, Metrics]], *args
  ) -> tuple[jax.Array, Metrics]:
    """The *weighted* penalty ``weight_at(step) * penalty_fn(*args)[0]``, and its metrics.

    Uses ``lax.cond``, so on steps that are not due the penalty (and its double backpropagation)
    is not computed; the metrics are then zeros. ``interval == 1`` computes it every step.
    """
    if self.interval == 1:
      penalty, metrics = penalty_fn(*args)
      return self.weight * penalty, metrics

    def apply():
      penalty, metrics = penalty_fn(*args)
      return self.effective_weight * penalty, metrics

    out_shape = jax.eval_shape(apply)

    def skip():
      return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

    return jax.lax.cond(self.is_due(step), apply, skip)


def lazy_regularization(weight: float, interval: int) -> LazyRegularization:
  """A :class:`LazyRegularization`: ``weight * interval`` every ``interval`` steps, else skipped.

  Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (Section 3.1).

  Args:
    weight: the per-step weight of the penalty (e.g. R1's gamma).
    interval: apply the penalty every ``interval`` D steps (16 in StyleGAN2; 1 = every step).

  Returns:
    The schedule; see :class:`LazyRegularization` for its use.
  """
  if int(interval) != interval or interval < 1:
    raise ConfigError(f"Lazy regularization interval must be a positive integer, got {interval}.")
  return LazyRegularization(float(weight), int(interval))


class AdamHyperparameters(NamedTuple):
  learning_rate: float
  b1: float
  b2: float


def lazy_adam_correction(
  learning_rate: float, b1: float, b2: float, interval: int
) -> AdamHyperparameters:
  """Adam hyperparameters adjusted for a separate lazy-regularization update.

  With ``c = interval / (interval + 1)``: ``learning_rate * c``, ``b1 ** c``, ``b2 ** c``.

  Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN" (Appendix B). There
  the regularization is its own optimizer update, so every ``interval`` minibatches make
  ``interval + 1`` Adam steps; the correction keeps the learning rate and the moment decay per
  minibatch as without the extra steps. It applies to that layout only: when the weighted penalty
  is simply added to the main loss on due steps (as :meth:`LazyRegularization.__call__` does), the
  number of updates is unchanged and no correction is needed.

  Args:
    learning_rate: Adam's learning rate.
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    interval: the lazy-regularization interval.

  Returns:
    ``AdamHyperparameters(learning_rate, b1, b2)`` after the correction.
  """
  if interval < 1:
    raise ConfigError(f"Lazy regularization interval must be >= 1, got {interval}.")
  c = interval / (interval + 1)
  return AdamHyperparameters(learning_rate * c, b1**c, b2**c)


# ----------------------------------------------------------------------------------------------
# Instance noise.


def instance_noise(x: jax.Array, rng: jax.Array, stddev: float | jax.Array) -> jax.Array:
  """Adds Gaussian instance noise: ``x + N(0, stddev^2)``, independently per element.

  Applied to both the real and the generated batch before D, so that the two distributions overlap
  and D's gradients stay informative. Sønderby et al. 2017, "Amortised MAP Inference for Image
  Super-resolution" (Section 3.2); Arjovsky & Bottou 2017, "Towards Principled Methods for
  Training Generative Adversarial Networks" (Section 3.1). Usually annealed to 0, see
  :func:`annealed_stddev`.

  Args:
    x: a batch.
    rng: key for the noise.
    stddev: the noise's standard deviation (a float or a traced scalar).

  Returns:
    ``x`` plus noise, same shape and dtype.
  """
  noise = jax.random.normal(rng, x.shape, x.dtype)
  return x + jnp.asarray(stddev, x.dtype) * noise


def annealed_stddev(initial: float, step: jax.Array | int, anneal_steps: int) -> jax.Array:
  """Linearly annealed noise level: ``initial * max(0, 1 - step / anneal_steps)``.

  Reaches 0 at ``step = anneal_steps`` and stays there. Jit-compatible in ``step``.

  Args:
    initial: the standard deviation at step 0.
    step: the current step.
    anneal_steps: the number of steps to reach 0 (must be positive).

  Returns:
    The standard deviation at ``step`` (a float32 scalar).
  """
  if anneal_steps <= 0:
    raise ConfigError(f"anneal_steps must be positive, got {anneal_steps}.")
  fraction = jnp.asarray(step, jnp.float32) / anneal_steps
  return initial * jnp.clip(1.0 - fraction, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# Weight clipping.


def weight_clipping(clip_value: float, *, fix_steps: int = 3) -> optax.GradientTransformation:
  """WGAN weight clipping as an optax transformation: after the update, params lie in [-c, c].

  The transformed update is ``clip(params + updates, -c, c) - params``, so that
  ``optax.apply_updates`` lands inside the box; chain it LAST, after the optimizer (and after any
  learning-rate scaling)::

    optax.chain(optax.rmsprop(5e-5), regularizers.weight_clipping(0.01))

  Updates whose result is already inside the box pass through unchanged (those params move exactly
  like the plain optimizer). For the others the update is nudged by ulps until ``params + update``
  computed in floating point -- as ``optax.apply_updates`` does -- is inside ``[-c, c]`` (c in the
  params' dtype), so the box holds exactly, also for params that start far outside it.

  Arjovsky et al. 2017, "Wasserstein GAN" (Algorithm 1, c = 0.01). Needs ``params`` in
  ``update``.

  Args:
    clip_value: c > 0.
    fix_steps: at most this many one-ulp corrections per element (3 is plenty for float32/64).

  Returns:
    An ``optax.GradientTransformation`` with an empty state.
  """
  if clip_value <= 0:
    raise ConfigError(f"clip_value must be positive, got {clip_value}.")

  def clip_update(u: jax.Array, p: jax.Array) -> jax.Array:
    hi = jnp.asarray(clip_value, p.dtype)
    lo = -hi
    u = u.astype(p.dtype)
    moved = p + u
    inside = (moved >= lo) & (moved <= hi)
    fixed = jnp.clip(moved, lo, hi) - p
    for _ in range(fix_steps):
      landed = p + fixed
      fixed = jnp.where(landed > hi, jnp.nextafter(fixed, jnp.asarray(-jnp.inf, p.dtype)), fixed)
      fixed = jnp.where(landed < lo, jnp.nextafter(fixed, jnp.asarray(jnp.inf, p.dtype)), fixed)
    return jnp.where(inside, u, fixed)

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("weight_clipping needs params: call update(updates, state, params).")
    return jax.tree.map(clip_update, updates, params), state

  return optax.GradientTransformation(init_fn, update_fn)


# ----------------------------------------------------------------------------------------------
# Lookup by name.


class Penalty(NamedTuple):
  """A penalty as a config names it: the function and what the caller must pass to it."""

  fn: Callable[..., tuple[jax.Array, Metrics]]
  # Positional arguments after ``d_fn``, by role.
  inputs: tuple[str, ...]
  description: str


PENALTIES: dict[str, Penalty] = {
  "gradient_penalty": Penalty(
    gradient_penalty, ("real", "fake", "rng"), "WGAN-GP, Gulrajani et al. 2017"
  ),
  "r1": Penalty(r1_penalty, ("real",), "zero-centred on real data, Mescheder et al. 2018"),
  "r2": Penalty(r2_penalty, ("fake",), "zero-centred on fake data, Mescheder et al. 2018"),
  "dragan": Penalty(dragan_penalty, ("real", "rng"), "DRAGAN, Kodali et al. 2017"),
  "consistency": Penalty(
    consistency_penalty, ("x", "x_augmented"), "bCR, Zhao et al. 2021 (real and fake)"
  ),
}
"""Every penalty by the name a config uses (``config.regularizer.name``)."""


def get_regularizer(name: str) -> Penalty:
  """Returns the :class:`Penalty` named ``name``; an unknown name lists the valid ones."""
  if name not in PENALTIES:
    raise ConfigError(
      f"Unknown regularizer {name!r}; valid choices: {', '.join(sorted(PENALTIES))}."
    )
  return PENALTIES[name]


def available_regularizers() -> dict[str, Penalty]:
  """A copy of :data:`PENALTIES`."""
  return dict(PENALTIES)
