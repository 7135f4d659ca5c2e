"""The VAE baseline (``config.task = "vae"``): trained, logged, sampled and evaluated like a GAN.

Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014, arXiv:1312.6114; the weight
``config.loss.beta`` on the KL term is the beta-VAE of Higgins et al., ICLR 2017. The networks are
:mod:`ganjax.models.vae` (DCGAN-shaped encoder and decoder).

:func:`train_and_evaluate` has the features of :func:`ganjax.systems.gan.train_and_evaluate`: the
data sources of :func:`ganjax.data.create_source`, a pure jit-compiled ``train_step(state, batch,
rng) -> (state, metrics)`` (one flax TrainState, optax optimizer) over the device mesh
(``parallel.mode`` ``global`` or ``shard_map``), orbax checkpoints with the data position (a resumed
run continues exactly), TensorBoard scalars and ``metrics.jsonl``, progress lines with steps/s and
the ETA, ``samples/step_NNNNNN.png`` (the decoder's mean images of fixed prior latents),
``samples/reconstruction_step_NNNNNN.png`` (rows of real images, each followed by a row of their
reconstructions from the posterior mean) and, when a feature extractor is configured, the evaluation
of :mod:`ganjax.evaluation` (``eval/step_NNNNNN.json``), with the same latents and protocol as a
GAN's, so GAN and VAE numbers go into one table.

Samples are the mean images of p(x | z) for z ~ N(0, I) (the usual way VAE samples are shown and
measured), not pixel draws from the likelihood.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from ganjax import checkpoint as checkpoint_lib
from ganjax import data as data_lib
from ganjax import evaluation, loop, optimizers, parallel, sampling
from ganjax import state as state_lib
from ganjax import workdir as workdir_lib
from ganjax.config_fields import module_kwargs
from ganjax.data.source import describe_source
from ganjax.errors import ConfigError
from ganjax.models import vae as vae_lib
from ganjax.trained import TrainedRun

TASK = "vae"
# Training scalars of every logged step (batch means; nats per image).
METRIC_NAMES = ("loss", "reconstruction", "kl", "elbo", "grad_norm")
# Rows of real images (each followed by its reconstructions) in the reconstruction grids.
RECONSTRUCTION_ROWS = 4


def build_model(config: ml_collections.ConfigDict, element_shape: tuple[int, ...]) -> vae_lib.VAE:
  """The :class:`ganjax.models.vae.VAE` of ``config.model`` for images of ``element_shape``."""
  if len(element_shape) != 3:
    raise ConfigError(
      f"The VAE needs image data (H, W, C), got examples of shape {tuple(element_shape)}; "
      f"image sizes: {', '.join(map(str, vae_lib.SUPPORTED_SIZES))} pixels."
    )
  return vae_lib.build(
    tuple(element_shape),
    config.model.latent_dim,
    encoder=module_kwargs(config.model.encoder),
    decoder=module_kwargs(config.model.decoder),
    likelihood=config.model.likelihood,
  )


def create_train_state(
  rng: jax.Array,
  model: vae_lib.VAE,
  element_shape: tuple[int, ...],
  optimizer: optax.GradientTransformation,
) -> state_lib.TrainState:
  """Initialises the encoder, the decoder and the optimizer (pure: jit it with out_shardings)."""
  x = jnp.zeros((2, *element_shape), jnp.float32)
  noise = jnp.zeros((2, model.encoder.latent_dim), jnp.float32)
  variables = dict(model.init(rng, x, noise, train=False))
  params = variables.pop("params")
  return state_lib.TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=optimizer,
    batch_stats=variables.get("batch_stats", {}),
  )


def state_factory(config: ml_collections.ConfigDict, model: vae_lib.VAE, element_shape):
  """Returns ``init(rng) -> TrainState`` for this model and ``config.optim``."""
  optimizer = optimizers.make_optimizer(config.optim, config.num_train_steps, field="optim")
  return functools.partial(
    create_train_state, model=model, element_shape=tuple(element_shape), optimizer=optimizer
  )


def create_state(config, model, element_shape, mesh) -> state_lib.TrainState:
  """Creates the state directly replicated on the mesh."""
  init = state_factory(config, model, element_shape)
  rng = jax.random.fold_in(jax.random.key(config.seed), 0x1217)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)


def abstract_state(config, model, element_shape, mesh=None):
  """Shapes, dtypes (and shardings, with a mesh) of the state, computed without allocating it."""
  shapes = jax.eval_shape(state_factory(config, model, element_shape), jax.random.key(0))
  if mesh is None:
    return shapes
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def train_step(
  state: state_lib.TrainState,
  batch: dict[str, jax.Array],
  rng: jax.Array,
  *,
  latent_dim: int,
  beta: float = 1.0,
  likelihood: str = "bernoulli",
  gaussian_std: float = 0.1,
  axis_name: str | None = None,
) -> tuple[state_lib.TrainState, dict[str, jax.Array]]:
  """One Adam step on ``mean(reconstruction + beta * kl)`` of ``batch["image"]``.

  Args:
    state: The VAE's TrainState (replicated).
    batch: ``{"image": (B, H, W, C)}`` in [-1, 1], sharded on its leading axis.
    rng: The run's base key; the step number is folded in here.
    latent_dim: The size of z.
    beta: The KL weight (1: the ELBO; Higgins et al. 2017).
    likelihood, gaussian_std: The decoder's pixel likelihood (:mod:`ganjax.models.vae`).
    axis_name: The mesh axis inside ``shard_map``; None under a global-view ``jit``.

  Returns:
    The new state and batch-mean scalars :data:`METRIC_NAMES` (``elbo`` = -(reconstruction + kl)).
  """
  rng = jax.random.fold_in(rng, state.step)
  images = batch["image"]
  noise = parallel.local_normal(rng, (images.shape[0], latent_dim), axis_name)

  def loss_fn(params):
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    (output, mean, logvar), updates = state.apply_fn(
      variables, images, noise, train=True, mutable=["batch_stats"]
    )
    terms = vae_lib.elbo_terms(output, images, mean, logvar, likelihood, gaussian_std)
    value = vae_lib.loss(terms, beta)
    return value, (terms, updates.get("batch_stats", state.batch_stats))

  (value, (terms, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.pmean(grads, axis_name)
  reconstruction, kl = jnp.mean(terms["reconstruction"]), jnp.mean(terms["kl"])
  metrics = {
    "loss": value,
    "reconstruction": reconstruction,
    "kl": kl,
    "elbo": -(reconstruction + kl),
    "grad_norm": optax.global_norm(grads),
  }
  new_state = state.apply_gradients(grads=grads, batch_stats=parallel.pmean(batch_stats, axis_name))
  return new_state, parallel.pmean(metrics, axis_name)


def step_arguments(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's static arguments of :func:`train_step` (hashable values)."""
  return {
    "latent_dim": config.model.latent_dim,
    "beta": float(config.loss.beta),
    "likelihood": config.model.likelihood,
    "gaussian_std": float(config.model.gaussian_std),
  }


def make_train_step(config: ml_collections.ConfigDict):
  """``train_step`` with the config's static arguments bound (``axis_name`` left open)."""
  return functools.partial(train_step, **step_arguments(config))


@functools.lru_cache(maxsize=4)
def make_generate_fn(model: vae_lib.VAE):
  """jit-compiled ``generate(params, batch_stats, z, labels=None) -> images in [-1, 1]``.

  The signature of :func:`ganjax.systems.gan.make_generate_fn`, so :mod:`ganjax.evaluation`
  measures VAE samples exactly like GAN samples (``labels`` are ignored: the VAE is unconditional).
  """

  @jax.jit
  def generate(params, batch_stats, z, labels=None):
    del labels
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return model.apply(variables, z, train=False, method=vae_lib.VAE.generate)

  return generate


@functools.lru_cache(maxsize=4)
def make_reconstruct_fn(model: vae_lib.VAE):
  """jit-compiled ``reconstruct(params, batch_stats, images) -> images`` (posterior means)."""

  @jax.jit
  def reconstruct(params, batch_stats, images):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return model.apply(variables, images, train=False, method=vae_lib.VAE.reconstruct)

  return reconstruct


def reconstruction_grid(images: np.ndarray, reconstructions: np.ndarray, columns: int):
  """Interleaves rows: ``columns`` real images, then their reconstructions, and so on."""
  rows = len(images) // columns
  pairs = np.stack(
    [
      images[: rows * columns].reshape(rows, columns, *images.shape[1:]),
      reconstructions[: rows * columns].reshape(rows, columns, *images.shape[1:]),
    ],
    axis=1,
  )
  return pairs.reshape(2 * rows * columns, *images.shape[1:])


# What the evaluation measures: the decoder (no EMA), recorded in the protocol.
EVALUATED_GENERATOR = {
  "ema": False,
  "protocol": {
    "system": TASK,
    "samples": "VAE decoder mean images of the evaluation latents, z ~ N(0, I)",
  },
}


def make_evaluator(config, generate, workdir: str | None = None):
  """``evaluate(state, step) -> scalars``, or None when no feature extractor is configured
  (:func:`ganjax.evaluation.make_evaluator`; writes ``WORKDIR/eval/step_NNNNNN.json``)."""
  return evaluation.make_evaluator(
    config,
    generate,
    lambda state: (state.params, state.batch_stats),
    workdir=workdir,
    **EVALUATED_GENERATOR,
  )


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, with the valid choices, on settings the run cannot use."""
  for key in ("num_train_steps", "batch_size", "log_every_steps"):
    if config[key] < 1:
      raise ConfigError(f"config.{key} must be >= 1, got {config[key]}.")
  for key in ("sample_every_steps", "checkpoint_every_steps", "eval_every_steps"):
    if config.get(key, 0) < 0:
      raise ConfigError(f"config.{key} must be >= 0 (0 = only at the end), got {config[key]}.")
  if config.get("eval_num_samples", 2) < 2:
    raise ConfigError(f"config.eval_num_samples must be >= 2, got {config.eval_num_samples}.")
  if config.model.latent_dim < 1:
    raise ConfigError(f"config.model.latent_dim must be >= 1, got {config.model.latent_dim}.")
  if config.loss.beta < 0:
    raise ConfigError(f"config.loss.beta must be >= 0 (1 = the ELBO), got {config.loss.beta}.")
  vae_lib.check_likelihood(config.model.likelihood)
  if config.model.gaussian_std <= 0:
    raise ConfigError(f"config.model.gaussian_std must be > 0, got {config.model.gaussian_std}.")
  parallel.check_mode(config.parallel.mode)


def run_info(config, source, model: vae_lib.VAE, state, mesh) -> dict[str, Any]:
  """What a reader of the results needs to know about how they were made."""
  return {
    "task": TASK,
    **loop.provenance(config, mesh),
    "data": loop.data_info(source, source.element_shape, conditional=False),
    "parameters": {
      "encoder": state_lib.parameter_count(state.params["encoder"]),
      "decoder": state_lib.parameter_count(state.params["decoder"]),
    },
    "likelihood": model.decoder.likelihood,
  }


def describe_run(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """Opens the data and builds the encoder and decoder as :func:`train_and_evaluate` would,
  abstractly (``jax.eval_shape``: shapes, no values) and without training, for ``--mode=config``:
  the data as one line of text and ``{network name: abstract params}``.
  """
  source = data_lib.create_source(config.data, seed=config.seed, batch_size=config.batch_size)
  element_shape = tuple(source.element_shape)
  state = abstract_state(config, build_model(config, element_shape), element_shape)
  return describe_source(source), {
    "encoder": state.params["encoder"],
    "decoder": state.params["decoder"],
  }


@workdir_lib.releases_lock
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.TrainState:
  """Trains the VAE the config describes; resumes from ``workdir`` when it holds checkpoints.

  Returns the final state.
  """
  validate_config(config)
  mesh, source, checkpointer = loop.start(config, workdir, config.batch_size)
  is_chief = jax.process_index() == 0
  element_shape = tuple(source.element_shape)
  model = build_model(config, element_shape)
  state, start_step = loop.resume_or_create(
    checkpointer,
    lambda: abstract_state(config, model, element_shape, mesh),
    lambda: create_state(config, model, element_shape, mesh),
    config=config,
  )
  info = run_info(config, source, model, state, mesh)
  writer = loop.record_run(config, workdir, info, start_step)
  compiled_step = parallel.compile_step(make_train_step(config), mesh, config.parallel.mode)
  generate = make_generate_fn(model)
  reconstruct = make_reconstruct_fn(model)
  evaluate = make_evaluator(config, generate, workdir)
  fixed_z = sampling.fixed_latents(config.seed, config.num_sample_images, config.model.latent_dim)
  base_rng = jax.random.fold_in(jax.random.key(config.seed), 0x7EA1)
  batches = source.batches(start_step)
  first_batch = next(batches)
  reference = first_batch["image"][: config.num_sample_images]
  if start_step == 0 and is_chief:
    real_path = os.path.join(workdir, "samples", "real.png")
    writer.write_images(0, {"real": sampling.save_samples(real_path, reference)[None]})
  columns = max(1, math.isqrt(config.num_sample_images))

  def step_fn(state, host_batch):
    batch = parallel.host_batch_to_global({"image": host_batch["image"]}, mesh)
    return compiled_step(state, batch, base_rng)

  def write_samples(step: int, state) -> None:
    samples = np.asarray(generate(state.params, state.batch_stats, fixed_z))
    originals = reference[: RECONSTRUCTION_ROWS * columns]
    recons = np.asarray(reconstruct(state.params, state.batch_stats, originals))
    if not is_chief:
      return
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    picture = sampling.save_samples(path, samples, title=f"step {step}")
    recon_path = os.path.join(workdir, "samples", f"reconstruction_step_{step:06d}.png")
    grid = reconstruction_grid(originals, recons, min(columns, len(originals)))
    recon_picture = sampling.save_samples(recon_path, grid, num_columns=min(columns, len(grid)))
    writer.write_images(step, {"samples": picture[None], "reconstructions": recon_picture[None]})
    logging.info("Wrote %s and %s", path, recon_path)

  def progress(scalars: dict[str, float]) -> str:
    return (
      f"loss {scalars['loss']:.2f} = reconstruction {scalars['reconstruction']:.2f} + "
      f"{config.loss.beta:g} * KL {scalars['kl']:.2f}"
    )

  logging.info(
    "Training the VAE (beta %g, %s likelihood, latent %d) on %s (%s examples, shape %s) for %d "
    "steps, global batch %d on %d device(s) (%s).",
    config.loss.beta,
    config.model.likelihood,
    config.model.latent_dim,
    source.name,
    source.num_examples,
    element_shape,
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
    progress=progress,
  )

  checkpointer.wait_until_finished()
  checkpointer.close()
  writer.flush()
  writer.close()
  return state


# ---------------------------------------------------------------------------------------------
# A trained run's workdir: --mode=sample and --mode=evaluate.


def load_checkpoint(
  workdir: str, step: int | str | None = None, config_overrides: dict | None = None
) -> tuple[ml_collections.ConfigDict, vae_lib.VAE, state_lib.TrainState, int]:
  """``(config, model, state, step)`` of a VAE run's checkpoint.

  ``step``: None for the latest, a step number, or ``"best"`` (``WORKDIR/checkpoints_best``).
  """
  config, info = workdir_lib.read_run(workdir)
  if config.get("task", "gan") != TASK:
    raise ConfigError(
      f"{workdir!r} holds a run of task {config.get('task', 'gan')!r}, not {TASK!r}."
    )
  for field, value in (config_overrides or {}).items():
    config[field] = value
  element_shape = tuple(info["data"]["element_shape"])
  model = build_model(config, element_shape)
  state, step = checkpoint_lib.restore_from_workdir(
    workdir, step, abstract_state(config, model, element_shape)
  )
  return config, model, state, int(step)


def load(workdir: str, step: int | str | None = None) -> TrainedRun:
  """The VAE of ``workdir`` at ``step`` (None: latest, ``"best"``, or N); ``sample`` decodes
  prior latents to the decoder's mean images."""
  config, model, state, step = load_checkpoint(workdir, step)
  generate = make_generate_fn(model)

  def sample_fn(num_samples: int, seed: int, labels):
    del labels  # Unconditional: TrainedRun refuses labels.
    z = sampling.fixed_latents(seed, num_samples, config.model.latent_dim)
    samples = np.asarray(generate(state.params, state.batch_stats, z))
    return samples, {"latents": np.asarray(z), "labels": None}

  def generate_fn(z, labels):
    del labels  # Unconditional: TrainedRun refuses labels.
    return generate(state.params, state.batch_stats, z)

  return TrainedRun(
    workdir,
    config,
    int(step),
    state,
    sample_fn=sample_fn,
    latent_dim=config.model.latent_dim,
    generate_fn=generate_fn,
  )


def sample_from_workdir(
  workdir: str, num_samples: int, output: str, seed: int | None = None
) -> np.ndarray:
  """``--mode=sample``: writes ``output`` (a PNG grid) and ``output``.npz from the latest
  checkpoint (:func:`load`).

  The samples are the decoder's mean images of ``num_samples`` prior latents: the run's fixed
  latents (:func:`ganjax.sampling.fixed_latents` of its seed) unless ``seed`` is given.
  """
  run = load(workdir)
  samples, inputs = run.sample_with_inputs(num_samples, run.config.seed if seed is None else seed)
  sampling.save_samples(output, samples, title=f"{os.path.basename(workdir)} step {run.step}")
  npz_path = os.path.splitext(output)[0] + ".npz"
  np.savez_compressed(npz_path, samples=samples, latents=inputs["latents"], step=run.step)
  logging.info(
    "Wrote %s and %s (%d VAE samples from step %d).", output, npz_path, num_samples, run.step
  )
  return samples


def evaluate_workdir(
  workdir: str,
  step: int | str | None = None,
  *,
  config_overrides: dict | None = None,
  **options: Any,
) -> dict[str, Any]:
  """Evaluates a VAE checkpoint like :func:`ganjax.systems.gan.evaluate_workdir` does a GAN's.

  Writes ``WORKDIR/eval/step_NNNNNN.json`` and returns ``{"values", "protocol", "details",
  "workdir", "path"}``; ``options``: ``metrics``, ``num_samples``, ``extractor`` of
  :func:`ganjax.evaluation.evaluate_checkpoint`.
  """
  config, model, state, step = load_checkpoint(workdir, step, config_overrides)
  return evaluation.evaluate_checkpoint(
    config,
    make_generate_fn(model),
    state.params,
    state.batch_stats,
    workdir=workdir,
    step=step,
    **options,
    **EVALUATED_GENERATOR,
  )
