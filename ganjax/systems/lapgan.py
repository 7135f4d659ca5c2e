"""LAPGAN training, sampling and evaluation (``config.task = "lapgan"``; configs/lapgan.py).

Reference: Denton, Chintala, Szlam, Fergus, "Deep Generative Image Models using a Laplacian
Pyramid of Adversarial Networks", NeurIPS 2015, arXiv:1506.05751.

Every real batch is decomposed into its Laplacian pyramid (:func:`ganjax.models.lapgan.decompose`)
and each level's GAN is trained on its own part of it, with its own loss (Sec. 3.2; the paper
trains the levels independently): the coarse GAN on the low-pass images ``x_K``, level ``k < K``
on the band-pass images ``h_k`` given ``l_k = u(x_{k+1})``, the upsampled *real* coarser image.
One jit-compiled step updates every level's discriminator and then its generator (non-saturating
loss by default, :mod:`ganjax.losses`; Adam), with an optional EMA of each generator. The state is
a dict ``{"level_0": GANState, ..., "level_K": GANState}`` (:class:`ganjax.state.GANState`; level
0 is the finest, level K the coarse GAN, as the paper numbers them).

Samples chain the levels from a flat latent (:func:`ganjax.models.lapgan.chain`), so the whole
pyramid is a generator ``latents (+ labels) -> images`` and :mod:`ganjax.evaluation` scores it
exactly as it scores a DCGAN (:func:`evaluate_workdir`). The workdir holds what the GAN loop
writes: ``config.json``, ``run_info.json``, TensorBoard events, ``metrics.jsonl`` (scalars per
level, ``level_k/d_loss`` ...), ``checkpoints/`` and ``samples/step_NNNNNN.png``, whose column is
one sample from coarse (top, upsampled to full size) to final (bottom), ``samples/real.png`` the
same for the real pyramid.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from ganjax import checkpoint as checkpoint_lib
from ganjax import data as data_lib
from ganjax import evaluation, loop, losses, optimizers, parallel, sampling
from ganjax import state as state_lib
from ganjax import workdir as workdir_lib
from ganjax.config_fields import module_kwargs
from ganjax.data.source import describe_source
from ganjax.errors import ConfigError
from ganjax.models import lapgan as lapgan_lib
from ganjax.trained import TrainedRun

# Purposes folded into each level's per-step key.
_D_NOISE, _G_NOISE = range(2)
# Samples per row block of a picture when the generator is unconditional.
_PICTURE_COLUMNS = 8


@dataclasses.dataclass(frozen=True)
class Pyramid:
  """The networks of a LAPGAN and the shapes they work on.

  Attributes:
    image_shape: ``(H, W, C)`` of the data (``x_0``).
    num_levels: ``K``, the number of band-pass levels; there are ``K + 1`` GANs.
    latent_dim: the coarse GAN's latent size.
    num_classes: the number of classes of a conditional LAPGAN; None when unconditional.
    generators: ``generators[k]``: level ``k``'s generator (``k = K``: the coarse one).
    discriminators: ``discriminators[k]``: level ``k``'s discriminator.
  """

  image_shape: tuple[int, int, int]
  num_levels: int
  latent_dim: int
  num_classes: int | None
  generators: tuple[Any, ...]
  discriminators: tuple[Any, ...]

  @property
  def names(self) -> list[str]:
    """State keys, ``level_0`` (finest) ... ``level_K`` (coarse)."""
    return level_names(self.num_levels)

  @property
  def shapes(self) -> list[tuple[int, int, int]]:
    """``(H, W, C)`` of every level, finest first."""
    sizes = lapgan_lib.pyramid_shapes(*self.image_shape[:2], self.num_levels)
    return [(h, w, self.image_shape[2]) for h, w in sizes]

  @property
  def latent_size(self) -> int:
    """The length of the flat latent of the whole pyramid."""
    return lapgan_lib.latent_size(self.image_shape, self.num_levels, self.latent_dim)


def level_names(num_levels: int) -> list[str]:
  return [f"level_{k}" for k in range(num_levels + 1)]


def build_pyramid(
  config: ml_collections.ConfigDict, image_shape: tuple[int, ...], num_classes: int | None
) -> Pyramid:
  """The networks of ``config.model`` for data of ``image_shape``.

  Raises:
    ValueError: image sides that do not halve ``model.num_levels`` times, non-image data, or a
      conditional LAPGAN on unlabelled data.
  """
  if len(image_shape) != 3:
    raise ConfigError(f"LAPGAN needs image data (H, W, C), got examples of shape {image_shape}.")
  num_levels = config.model.num_levels
  shapes = lapgan_lib.pyramid_shapes(image_shape[0], image_shape[1], num_levels)
  conditional = bool(config.model.get("conditional", False))
  if conditional and not num_classes:
    raise ConfigError(
      "config.model.conditional=True needs labelled data, but this dataset has no labels "
      f"(num_classes={num_classes!r}). Use labelled data or set model.conditional=False."
    )
  classes = num_classes if conditional else None
  level_g = module_kwargs(config.model.level.generator)
  level_d = module_kwargs(config.model.level.discriminator)
  generators = [
    lapgan_lib.LevelGenerator(num_classes=classes, **level_g) for _ in range(num_levels)
  ]
  discriminators = [
    lapgan_lib.LevelDiscriminator(num_classes=classes, **level_d) for _ in range(num_levels)
  ]
  coarse_shape = (*shapes[-1], image_shape[2])
  generators.append(
    lapgan_lib.CoarseGenerator(
      image_shape=coarse_shape, num_classes=classes, **module_kwargs(config.model.coarse.generator)
    )
  )
  discriminators.append(
    lapgan_lib.CoarseDiscriminator(
      num_classes=classes, **module_kwargs(config.model.coarse.discriminator)
    )
  )
  return Pyramid(
    tuple(image_shape),
    num_levels,
    config.model.latent_dim,
    classes,
    tuple(generators),
    tuple(discriminators),
  )


# ----------------------------------------------------------------------------------------------
# State.


def _dummy_inputs(pyramid: Pyramid, k: int):
  """Inputs of level ``k``'s generator and discriminator, batch 2 (for initialisation)."""
  labels = jnp.zeros((2,), jnp.int32) if pyramid.num_classes else None
  shape = pyramid.shapes[k]
  image = jnp.zeros((2, *shape), jnp.float32)
  if k == pyramid.num_levels:
    return (jnp.zeros((2, pyramid.latent_dim), jnp.float32), labels), (image, labels)
  noise = jnp.zeros((2, *shape[:2], lapgan_lib.NOISE_CHANNELS), jnp.float32)
  return (image, noise, labels), (image, image, labels)


def state_factory(config: ml_collections.ConfigDict, pyramid: Pyramid):
  """Returns ``init(rng) -> {level name: GANState}`` (pure; jit it with out_shardings)."""

  def init(rng):
    states = {}
    for k, name in enumerate(pyramid.names):
      g_key, d_key = jax.random.split(jax.random.fold_in(rng, k))
      g_inputs, d_inputs = _dummy_inputs(pyramid, k)
      g, d = pyramid.generators[k], pyramid.discriminators[k]
      g_params = g.init(g_key, *g_inputs, train=False)["params"]
      d_params = d.init(d_key, *d_inputs, train=False)["params"]
      states[name] = state_lib.GANState(
        step=jnp.zeros((), jnp.int32),
        generator=state_lib.TrainState.create(
          apply_fn=g.apply,
          params=g_params,
          tx=optimizers.make_optimizer(config.optim.g, config.num_train_steps, field="optim.g"),
        ),
        discriminator=state_lib.TrainState.create(
          apply_fn=d.apply,
          params=d_params,
          tx=optimizers.make_optimizer(config.optim.d, config.num_train_steps, field="optim.d"),
        ),
        ema_params=g_params,
      )
    # Strongly typed leaves (TrainState.create counts from a Python 0): the avals of a restored
    # state, so a fresh and a resumed run share one compiled step.
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), states)

  return init


def create_state(config, pyramid: Pyramid, mesh) -> dict[str, state_lib.GANState]:
  """The initial state, replicated on the mesh."""
  rng = jax.random.fold_in(jax.random.key(config.seed), 0x1A9)
  return jax.jit(state_factory(config, pyramid), out_shardings=parallel.replicated(mesh))(rng)


def abstract_state(config, pyramid: Pyramid, mesh=None):
  """Shapes (and, with a mesh, replicated shardings) of the state, without allocating it."""
  shapes = jax.eval_shape(state_factory(config, pyramid), jax.random.key(0))
  if mesh is None:
    return shapes
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def sample_params(config, state: dict[str, state_lib.GANState]) -> dict[str, Any]:
  """Every level's generator params used for samples: the EMA when it is on."""
  use_ema = config.ema.decay > 0
  return {name: (s.ema_params if use_ema else s.generator.params) for name, s in state.items()}


def parameter_counts(state: dict[str, state_lib.GANState]) -> dict[str, dict[str, int]]:
  return {
    name: {
      "generator": state_lib.parameter_count(s.generator.params),
      "discriminator": state_lib.parameter_count(s.discriminator.params),
    }
    for name, s in state.items()
  }


# ----------------------------------------------------------------------------------------------
# The training step.


def _level_step(
  gan: state_lib.GANState,
  real: jax.Array,
  low: jax.Array | None,
  noise_shape: tuple[int, ...],
  labels: jax.Array | None,
  rng: jax.Array,
  *,
  objective: losses.Objective,
  ema_decay: float,
  ema_warmup: bool,
  axis_name: str | None,
) -> tuple[state_lib.GANState, dict[str, jax.Array]]:
  """One D update and one G update of one level's GAN on its part of the real pyramid.

  ``low`` is the conditioning low-pass image ``l_k`` of a finer level, None for the coarse GAN.
  """
  g, d = gan.generator, gan.discriminator
  conditioning = () if low is None else (low,)

  def generate(params, noise):
    return g.apply_fn({"params": params}, *conditioning, noise, labels, train=True)

  def judge(params, x):
    return d.apply_fn({"params": params}, x, *conditioning, labels, train=True)

  fake = jax.lax.stop_gradient(
    generate(
      g.params, parallel.local_normal(jax.random.fold_in(rng, _D_NOISE), noise_shape, axis_name)
    )
  )

  def d_loss(params):
    return objective.discriminator(judge(params, real), judge(params, fake))

  d_grads, d_metrics = jax.grad(d_loss, has_aux=True)(d.params)
  d = d.apply_gradients(grads=parallel.pmean(d_grads, axis_name))

  g_noise = parallel.local_normal(jax.random.fold_in(rng, _G_NOISE), noise_shape, axis_name)
  real_logits = judge(d.params, real) if objective.generator_needs_real_logits else None

  def g_loss(params):
    return objective.generator(judge(d.params, generate(params, g_noise)), real_logits)

  g_grads, g_metrics = jax.grad(g_loss, has_aux=True)(g.params)
  g = g.apply_gradients(grads=parallel.pmean(g_grads, axis_name))
  ema = state_lib.update_ema(gan.ema_params, g.params, gan.step, ema_decay, ema_warmup)
  new = gan.replace(generator=g, discriminator=d, ema_params=ema, step=gan.step + 1)
  return new, parallel.pmean({**d_metrics, **g_metrics}, axis_name)


def train_step(
  state: dict[str, state_lib.GANState],
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  pyramid: Pyramid,
  objective: losses.Objective,
  ema_decay: float = 0.0,
  ema_warmup: bool = True,
  axis_name: str | None = None,
) -> tuple[dict[str, state_lib.GANState], dict[str, jax.Array]]:
  """Updates every level's D and G on the Laplacian pyramid of ``batch["image"]``.

  Levels are independent (Denton et al. 2015, Sec. 3.2): level ``k < K`` learns ``h_k`` given
  the real ``l_k = u(x_{k+1})``, the coarse level learns ``x_K``. Metrics are named
  ``level_k/<metric>``. Keys: the step, then the level, then the purpose are folded into ``rng``.
  """
  num_levels = pyramid.num_levels
  step = state[f"level_{num_levels}"].step
  rng = jax.random.fold_in(rng, step)
  images = batch["image"]
  labels = None
  if pyramid.num_classes:
    if "label" not in batch:
      raise ValueError(
        "A conditional LAPGAN needs labelled batches ({'image', 'label'}); this batch has "
        f"keys {sorted(batch)}."
      )
    labels = batch["label"]
  gauss = lapgan_lib.gaussian_pyramid(images, num_levels)
  batch_size = images.shape[0]
  new_state, metrics = {}, {}
  for k, name in enumerate(pyramid.names):
    if k == num_levels:
      real, low, noise_shape = gauss[k], None, (batch_size, pyramid.latent_dim)
    else:
      low = lapgan_lib.upsample(gauss[k + 1], gauss[k].shape)
      real = gauss[k] - low
      noise_shape = (batch_size, *gauss[k].shape[1:3], lapgan_lib.NOISE_CHANNELS)
    new_state[name], level_metrics = _level_step(
      state[name],
      real,
      low,
      noise_shape,
      labels,
      jax.random.fold_in(rng, k),
      objective=objective,
      ema_decay=ema_decay,
      ema_warmup=ema_warmup,
      axis_name=axis_name,
    )
    metrics.update({f"{name}/{key}": value for key, value in level_metrics.items()})
  return new_state, metrics


# ----------------------------------------------------------------------------------------------
# Generation.


@functools.lru_cache(maxsize=4)
def make_level_generate_fn(pyramid: Pyramid):
  """jit-compiled ``generate_levels(params, z, labels=None) -> [x~_K, ..., x~_0]`` (inference).

  ``params``: ``{level name: generator params}``; ``z``: flat latents ``(B, latent_size)``. One
  function per pyramid: equal pyramids share its compilations.
  """

  @jax.jit
  def generate_levels(params, z, labels=None):
    def coarse(z_coarse):
      name = f"level_{pyramid.num_levels}"
      return pyramid.generators[-1].apply({"params": params[name]}, z_coarse, labels, train=False)

    def level(k, low, noise):
      return pyramid.generators[k].apply(
        {"params": params[f"level_{k}"]}, low, noise, labels, train=False
      )

    return lapgan_lib.chain(
      coarse, level, z, pyramid.image_shape, pyramid.num_levels, pyramid.latent_dim
    )

  return generate_levels


def make_generate_fn(pyramid: Pyramid):
  """``generate(params, batch_stats, z, labels=None) -> images`` in [-1, 1], the signature of
  :func:`ganjax.systems.gan.make_generate_fn` that :mod:`ganjax.evaluation` calls (``batch_stats``
  is unused: the LAPGAN networks have no BatchNorm). The final level, clipped to [-1, 1]."""
  generate_levels = make_level_generate_fn(pyramid)

  def generate(params, batch_stats, z, labels=None):
    del batch_stats
    return jnp.clip(generate_levels(params, z, labels)[-1], -1.0, 1.0)

  return generate


def picture_columns(pyramid: Pyramid, num_samples: int) -> int:
  """Samples side by side in a pyramid picture: one class per column block when conditional."""
  if pyramid.num_classes:
    return max(1, num_samples // pyramid.num_classes)
  return min(_PICTURE_COLUMNS, num_samples)


def sample_inputs(pyramid: Pyramid, seed: int, num_samples: int):
  """Fixed ``(flat latents, labels or None)`` of the sample pictures.

  Conditional: ``max(1, num_samples // num_classes)`` latents repeated for every class (one
  class per block of rows).
  """
  if not pyramid.num_classes:
    return sampling.fixed_latents(seed, num_samples, pyramid.latent_size), None
  return sampling.class_grid_inputs(seed, pyramid.num_classes, num_samples, pyramid.latent_size)


def pyramid_picture(levels: list[np.ndarray], num_columns: int) -> np.ndarray:
  """Arranges every level of a batch of samples as a grid of images (float, [-1, 1]).

  ``levels``: ``[x_K, ..., x_0]`` (coarsest first), each ``(N, H_k, W_k, C)``. Returns the
  ``(rows * (K + 1) * ..., H, W, C)`` images in grid order for ``num_columns`` columns: each block
  of ``K + 1`` rows shows ``num_columns`` samples, one pyramid level per row, coarse (upsampled by
  pixel repetition) to final, so a column reads one sample from coarse to fine.
  """
  final = np.asarray(levels[-1])
  n, height, width, _ = final.shape
  full = []
  for x in levels:
    x = np.asarray(x)
    factor_h, factor_w = height // x.shape[1], width // x.shape[2]
    full.append(np.repeat(np.repeat(x, factor_h, axis=1), factor_w, axis=2))
  ordered = []
  for start in range(0, n, num_columns):
    for x in full:
      block = x[start : start + num_columns]
      if len(block) < num_columns:  # A white filler keeps the columns aligned.
        filler = np.ones((num_columns - len(block), *block.shape[1:]), block.dtype)
        block = np.concatenate([block, filler])
      ordered.append(block)
  return np.clip(np.concatenate(ordered), -1.0, 1.0)


def save_pyramid_picture(path: str, levels: list[np.ndarray], num_columns: int) -> np.ndarray:
  """Writes :func:`pyramid_picture` as a PNG grid; returns it as uint8 HWC RGB."""
  grid = sampling.save_image_grid(path, pyramid_picture(levels, num_columns), num_columns)
  return grid if grid.shape[-1] == 3 else np.repeat(grid, 3, axis=-1)


def real_levels(images: np.ndarray, num_levels: int) -> list[np.ndarray]:
  """``[x_K, ..., x_0]`` of real images, coarsest first (for ``samples/real.png``)."""
  gauss = lapgan_lib.gaussian_pyramid(jnp.asarray(images), num_levels)
  return [np.asarray(x) for x in reversed(gauss)]


# ----------------------------------------------------------------------------------------------
# Training.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, with the valid choices, on settings a LAPGAN run cannot use."""
  if config.get("task") != "lapgan":
    raise ConfigError(f"ganjax.systems.lapgan trains config.task='lapgan', got {config.task!r}.")
  for key in ("num_train_steps", "batch_size", "log_every_steps"):
    if config[key] < 1:
      raise ConfigError(f"config.{key} must be >= 1, got {config[key]}.")
  for key in ("sample_every_steps", "checkpoint_every_steps", "eval_every_steps"):
    if config.get(key, 0) < 0:
      raise ConfigError(f"config.{key} must be >= 0 (0 = only at the end), got {config[key]}.")
  parallel.check_mode(config.parallel.mode)
  if not 0.0 <= config.ema.decay < 1.0:
    raise ConfigError(f"ema.decay must be in [0, 1), got {config.ema.decay}.")
  num_levels = config.model.num_levels
  if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
    raise ConfigError(f"config.model.num_levels must be an integer >= 1, got {num_levels!r}.")
  losses.objective_from_config(config)


def run_info(config, source, pyramid: Pyramid, state, mesh) -> dict[str, Any]:
  """What a reader of the results needs to know about how they were made."""
  return {
    **loop.provenance(config, mesh),
    "data": loop.data_info(source, pyramid.image_shape, pyramid.num_classes is not None),
    "pyramid": {
      "num_levels": pyramid.num_levels,
      "shapes": [list(s) for s in pyramid.shapes],
      "latent_size": pyramid.latent_size,
      "downsample": "2x2 average pooling",
      "upsample": "bilinear (jax.image.resize, linear)",
    },
    "parameters": parameter_counts(state),
  }


def describe_run(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """Opens the data and builds the pyramid's networks as :func:`train_and_evaluate` would,
  abstractly (``jax.eval_shape``: shapes, no values) and without training, for ``--mode=config``:
  the data as one line of text and ``{"level_K.generator" / "level_K.discriminator": abstract
  params}``.
  """
  source = data_lib.create_source(config.data, seed=config.seed, batch_size=config.batch_size)
  pyramid = build_pyramid(config, source.element_shape, source.num_classes)
  state = abstract_state(config, pyramid)
  networks = {
    f"{level}.{name}": getattr(level_state, name).params
    for level, level_state in state.items()
    for name in ("generator", "discriminator")
  }
  return describe_source(source), networks


def evaluated_generator(pyramid: Pyramid) -> dict[str, Any]:
  """How :mod:`ganjax.evaluation` sees the chained pyramid: latents of the whole pyramid, and
  what the protocol records about them."""
  latents = (
    "normal(fold_in(key(seed), 0xE7A1), (num_generated, latent_size)): the coarse latent "
    f"({pyramid.latent_dim}), then one noise plane per finer level, coarsest first "
    f"(latent_size {pyramid.latent_size})"
  )
  return {
    "num_classes": pyramid.num_classes,
    "latent_dim": pyramid.latent_size,
    "protocol": {"system": "lapgan", "latents": latents},
  }


def _make_evaluator(config, pyramid: Pyramid, workdir: str):
  """``evaluate(state, step) -> scalars`` when a feature extractor is configured, else None
  (:func:`ganjax.evaluation.make_evaluator`; writes ``WORKDIR/eval/step_NNNNNN.json``)."""
  return evaluation.make_evaluator(
    config,
    make_generate_fn(pyramid),
    lambda state: (sample_params(config, state), {}),
    workdir=workdir,
    **evaluated_generator(pyramid),
  )


def _progress_line(scalars: dict[str, float], num_levels: int) -> str:
  parts = []
  for k in reversed(range(num_levels + 1)):
    d = scalars.get(f"level_{k}/d_loss", math.nan)
    g = scalars.get(f"level_{k}/g_loss", math.nan)
    parts.append(f"L{k} d {d:.3f} g {g:.3f}")
  return " | ".join(parts)


@workdir_lib.releases_lock
def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str
) -> dict[str, state_lib.GANState]:
  """Trains the LAPGAN the config describes; resumes from ``workdir`` when it holds checkpoints.

  Returns the final state ``{"level_0": GANState, ..., "level_K": GANState}``.
  """
  validate_config(config)
  mesh, source, checkpointer = loop.start(config, workdir, config.batch_size)
  is_chief = jax.process_index() == 0
  pyramid = build_pyramid(config, source.element_shape, source.num_classes)
  objective = losses.objective_from_config(config)
  state, start_step = loop.resume_or_create(
    checkpointer,
    lambda: abstract_state(config, pyramid, mesh),
    lambda: create_state(config, pyramid, mesh),
    config=config,
  )
  writer = loop.record_run(
    config, workdir, run_info(config, source, pyramid, state, mesh), start_step
  )
  compiled_step = compiled_train_step(
    pyramid, objective, config.ema.decay, config.ema.warmup, mesh, config.parallel.mode
  )
  generate_levels = make_level_generate_fn(pyramid)
  evaluate = _make_evaluator(config, pyramid, workdir)
  fixed_z, fixed_labels = sample_inputs(pyramid, config.seed, config.num_sample_images)
  columns = picture_columns(pyramid, len(fixed_z))
  base_rng = jax.random.fold_in(jax.random.key(config.seed), 0x7EA1)
  batches = source.batches(start_step)
  first_batch = next(batches)
  if start_step == 0 and is_chief:
    reference = first_batch["image"][: config.num_sample_images]
    picture = save_pyramid_picture(
      os.path.join(workdir, "samples", "real.png"),
      real_levels(reference, pyramid.num_levels),
      min(columns, len(reference)),
    )
    writer.write_images(0, {"real": picture[None]})

  def step_fn(state, host_batch):
    return compiled_step(state, parallel.host_batch_to_global(host_batch, mesh), base_rng)

  def write_samples(step: int, state) -> None:
    levels = generate_levels(sample_params(config, state), fixed_z, fixed_labels)
    levels = [np.asarray(x) for x in levels]
    if not is_chief:
      return
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    picture = save_pyramid_picture(path, levels, columns)
    writer.write_images(step, {"samples": picture[None]})
    logging.info("Wrote %s", path)

  logging.info(
    "Training a %d-level LAPGAN (levels %s) on %s (%s examples) for %d steps, global batch %d "
    "on %d device(s) (%s).",
    pyramid.num_levels + 1,
    " -> ".join(f"{h}x{w}" for h, w, _ in reversed(pyramid.shapes)),
    source.name,
    source.num_examples,
    config.num_train_steps,
    config.batch_size,
    mesh.devices.size,
    config.parallel.mode,
  )
  state = loop.run(
    config,
    workdir,
    state=state,
    start_step=start_step,
    step_fn=step_fn,
    batches=itertools.chain([first_batch], batches),
    checkpointer=checkpointer,
    writer=writer,
    examples_per_step=config.batch_size,
    write_samples=write_samples,
    evaluate=None if evaluate is None else lambda step, state: evaluate(state, step),
    progress=lambda scalars: _progress_line(scalars, pyramid.num_levels),
  )

  checkpointer.wait_until_finished()
  checkpointer.close()
  writer.flush()
  writer.close()
  return state


@functools.lru_cache(maxsize=4)
def compiled_train_step(
  pyramid: Pyramid,
  objective: losses.Objective,
  ema_decay: float,
  ema_warmup: bool,
  mesh,
  mode: str,
):
  """:func:`train_step` compiled for the mesh (:func:`ganjax.parallel.compile_step`); one
  function per process for equal arguments, so a run resumed in-process does not recompile."""

  def step_fn(state, batch, rng, *, axis_name=None):
    return train_step(
      state,
      batch,
      rng,
      pyramid=pyramid,
      objective=objective,
      ema_decay=ema_decay,
      ema_warmup=ema_warmup,
      axis_name=axis_name,
    )

  return parallel.compile_step(step_fn, mesh, mode)


# ----------------------------------------------------------------------------------------------
# A trained workdir: --mode=sample and --mode=evaluate.


def load_workdir(workdir: str, step: int | str | None = None):
  """``(config, pyramid, state, step)`` of a LAPGAN run's checkpoint.

  ``step``: None for the latest, an int, or ``"best"`` (``WORKDIR/checkpoints_best``).
  """
  config, info = workdir_lib.read_run(workdir)
  if config.get("task") != "lapgan":
    raise ConfigError(f"{workdir!r} is a {config.get('task', 'gan')!r} run, not a LAPGAN run.")
  data_info = info["data"]
  pyramid = build_pyramid(config, tuple(data_info["element_shape"]), data_info["num_classes"])
  state, step = checkpoint_lib.restore_from_workdir(workdir, step, abstract_state(config, pyramid))
  return config, pyramid, state, step


def load(workdir: str, step: int | str | None = None) -> TrainedRun:
  """The LAPGAN of ``workdir`` at ``step`` (None: latest, ``"best"``, or N); ``sample`` gives
  the final level, and its inputs every level (coarse to final) under ``"levels"``."""
  config, pyramid, state, step = load_workdir(workdir, step)
  generate_levels = make_level_generate_fn(pyramid)

  def sample_fn(num_samples: int, seed: int, labels):
    z, labels = sampling.latents_and_labels(
      seed, num_samples, pyramid.latent_size, pyramid.num_classes, labels
    )
    levels = [np.asarray(x) for x in generate_levels(sample_params(config, state), z, labels)]
    final = np.clip(levels[-1], -1.0, 1.0)
    return final, {"latents": np.asarray(z), "labels": labels, "levels": levels}

  def generate_fn(z, labels):
    return np.clip(generate_levels(sample_params(config, state), z, labels)[-1], -1.0, 1.0)

  return TrainedRun(
    workdir,
    config,
    int(step),
    state,
    pyramid.num_classes,
    sample_fn=sample_fn,
    latent_dim=pyramid.latent_size,
    generate_fn=generate_fn,
  )


def sample_from_workdir(
  workdir: str, num_samples: int, output: str, seed: int | None = None
) -> np.ndarray:
  """``--mode=sample``: writes ``output`` (every level of each sample, coarse to final, one column
  per sample), ``output``\\ _final.png (the final images) and ``output``.npz from the latest
  checkpoint (:func:`load`).

  Uses the EMA generators when the run kept them; ``seed`` None draws the run's fixed latents.
  Returns the final samples ``(N, H, W, C)``.
  """
  run = load(workdir)
  config = run.config
  num_samples = sampling.grid_size(num_samples, run.num_classes)
  final, inputs = run.sample_with_inputs(num_samples, config.seed if seed is None else seed)
  levels, labels = inputs["levels"], inputs["labels"]
  columns = (num_samples // run.num_classes) if run.num_classes else None
  columns = columns or min(_PICTURE_COLUMNS, num_samples)
  save_pyramid_picture(output, levels, columns)
  stem = os.path.splitext(output)[0]
  sampling.save_image_grid(stem + "_final.png", final, columns)
  extra = {} if labels is None else {"labels": np.asarray(labels)}
  np.savez_compressed(
    stem + ".npz",
    samples=final,
    latents=inputs["latents"],
    step=run.step,
    ema=config.ema.decay > 0,
    **{f"level_{k}": x for k, x in zip(reversed(range(len(levels))), levels, strict=True)},
    **extra,
  )
  logging.info(
    "Wrote %s, %s_final.png and %s.npz (%d samples from step %d).",
    output,
    stem,
    stem,
    num_samples,
    run.step,
  )
  return final


def evaluate_workdir(workdir: str, step: int | str | None = None, **options: Any) -> dict[str, Any]:
  """Scores the chained pyramid of a checkpoint like :func:`ganjax.systems.gan.evaluate_workdir`.

  Writes ``WORKDIR/eval/step_NNNNNN.json`` (values, protocol, details, workdir) and returns it
  with ``"path"``. ``step`` None = latest, ``"best"`` = the best checkpoint; ``options``:
  ``metrics``, ``num_samples``, ``extractor``, ``config_overrides`` of
  :func:`ganjax.evaluation.evaluate_checkpoint`.
  """
  config, pyramid, state, step = load_workdir(workdir, step)
  return evaluation.evaluate_checkpoint(
    config,
    make_generate_fn(pyramid),
    sample_params(config, state),
    {},
    workdir=workdir,
    step=step,
    **options,
    **evaluated_generator(pyramid),
  )
