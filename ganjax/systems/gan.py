"""Training loop: ``train_and_evaluate(config, workdir)``.

Builds the data source, the networks and the GAN state, resumes from the latest checkpoint, runs the
jit-compiled step over the device mesh, and writes everything a researcher looks at into the
workdir: ``config.json``, ``run_info.json``, TensorBoard events, ``metrics.jsonl``,
``samples/step_NNNNNN.png`` and ``checkpoints/``. On the 2-D Gaussian mixtures the run is also
evaluated (mode coverage: ``modes``, ``hq_fraction``, ``reverse_kl``) every
``config.eval_every_steps`` and at the end, as TensorBoard scalars and lines of ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from ganjax import checkpoint as checkpoint_lib
from ganjax import data as data_lib
from ganjax import (
  evaluation,
  loop,
  losses,
  models,
  optimizers,
  parallel,
  regularizers,
  sampling,
  steps,
)
from ganjax import metrics as metrics_lib
from ganjax import state as state_lib
from ganjax import workdir as workdir_lib
from ganjax.config_fields import module_kwargs
from ganjax.data import gaussian_mixture
from ganjax.data.source import describe_source
from ganjax.errors import ConfigError
from ganjax.models import blocks
from ganjax.trained import TrainedRun

# Raised when a loss or metric becomes NaN/inf (defined with the loop that raises it).
NonFiniteLossError = loop.NonFiniteLossError


@dataclasses.dataclass(frozen=True)
class Networks:
  """The two networks of a run and the shape of what they generate."""

  generator: Any
  discriminator: Any
  element_shape: tuple[int, ...]
  num_classes: int | None  # The number of classes of a conditional GAN; None when unconditional.


def build_networks(
  config: ml_collections.ConfigDict, element_shape: tuple[int, ...], num_classes: int | None
) -> Networks:
  """Instantiates ``ganjax.models.<config.model.name>``'s Generator and Discriminator.

  With ``config.model.pack = m > 1`` the discriminator is wrapped in :class:`blocks.Packed`
  (PacGAN, Lin et al. 2018): it sees ``m`` samples per input and returns ``B / m`` logits.
  With ``config.model.conditional`` both networks get ``num_classes`` (the data's number of
  classes, ``num_classes``) and become class-conditional.
  """
  module = models.get_model_module(config.model.name)
  dtype = config.model.get("dtype", "float32")
  g_kwargs = _with_dtype(module.Generator, dtype, module_kwargs(config.model.generator))
  d_kwargs = _with_dtype(module.Discriminator, dtype, module_kwargs(config.model.discriminator))
  conditional = bool(config.model.get("conditional", False))
  if conditional:
    check_conditional(config.model.name, module, num_classes)
    g_kwargs["num_classes"] = d_kwargs["num_classes"] = num_classes
  generator = module.Generator(image_shape=tuple(element_shape), **g_kwargs)
  discriminator = module.Discriminator(**d_kwargs)
  pack = config.model.get("pack", 1)
  if pack > 1:
    if conditional:
      raise ConfigError(
        f"config.model.pack={pack} (PacGAN) cannot be combined with model.conditional=True: a "
        "pack mixes examples of different classes. Use pack=1 for a conditional GAN."
      )
    discriminator = blocks.Packed(discriminator, pack=pack)
  return Networks(
    generator, discriminator, tuple(element_shape), num_classes if conditional else None
  )


def check_conditional(model_name: str, module: Any, num_classes: int | None) -> None:
  """A conditional GAN needs labelled data and a model whose networks take ``num_classes``."""
  if not num_classes:
    raise ConfigError(
      "config.model.conditional=True needs labelled data, but this dataset has no labels "
      f"(num_classes={num_classes!r}). Use a labelled dataset (e.g. an image folder with class "
      "subfolders) or set model.conditional=False."
    )
  for network in (module.Generator, module.Discriminator):
    if not _takes_num_classes(network):
      raise ConfigError(
        f"config.model.conditional=True, but model {model_name!r} has no class-conditional "
        f"{network.__name__}; conditional models: {', '.join(conditional_models())}."
      )


def conditional_models() -> list[str]:
  """Names of the model modules whose networks can be class-conditional."""
  names = []
  for name in models.available_models():
    module = models.get_model_module(name)
    if _takes_num_classes(module.Generator) and _takes_num_classes(module.Discriminator):
      names.append(name)
  return names


def _takes_num_classes(network: type) -> bool:
  return any(f.name == "num_classes" for f in dataclasses.fields(network))


def _with_dtype(network: type, dtype: str, kwargs: dict[str, Any]) -> dict[str, Any]:
  """Adds ``config.model.dtype`` to a network's kwargs; models without that field run float32."""
  if any(field.name == "dtype" for field in dataclasses.fields(network)):
    return {"dtype": dtype, **kwargs}
  if dtype != "float32":
    raise ConfigError(
      f"config.model.dtype={dtype!r} is not supported by {network.__module__}.{network.__name__}"
      " (it has no dtype field); valid: 'float32'."
    )
  return kwargs


def discriminator_optimizer(config: ml_collections.ConfigDict):
  """``config.optim.d``, followed by WGAN weight clipping when ``regularizer.weight_clip`` > 0."""
  tx = optimizers.make_optimizer(
    config.optim.d, config.num_train_steps * config.n_critic, field="optim.d"
  )
  clip = config.get("regularizer", {}).get("weight_clip", 0.0)
  if clip:
    tx = optax.chain(tx, regularizers.weight_clipping(clip))
  return tx


def state_factory(config: ml_collections.ConfigDict, networks: Networks):
  """Returns ``init(rng) -> GANState`` for these networks and the config's optimizers."""

  def init(rng):
    return state_lib.create_gan_state(
      rng,
      generator=networks.generator,
      discriminator=networks.discriminator,
      latent_dim=config.model.latent_dim,
      element_shape=networks.element_shape,
      generator_optimizer=optimizers.make_optimizer(
        config.optim.g, config.num_train_steps, field="optim.g"
      ),
      discriminator_optimizer=discriminator_optimizer(config),
      num_classes=networks.num_classes,
    )

  return init


def create_state(config, networks: Networks, mesh) -> state_lib.GANState:
  """Creates the state directly replicated on the mesh."""
  init = state_factory(config, networks)
  rng = jax.random.fold_in(jax.random.key(config.seed), 0x1217)
  return jax.jit(init, out_shardings=parallel.replicated(mesh))(rng)


def abstract_state(config, networks: Networks, mesh=None):
  """Shapes, dtypes (and shardings, with a mesh) of the state, computed without allocating it."""
  init = state_factory(config, networks)
  shapes = jax.eval_shape(init, jax.random.key(0))
  if mesh is None:
    return shapes
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def sample_params(config, state: state_lib.GANState):
  """The generator params used for samples: the EMA when it is on."""
  return state.ema_params if config.ema.decay > 0 else state.generator.params


def make_generate_fn(networks: Networks):
  """jit-compiled ``generate(params, batch_stats, z, labels=None) -> samples`` in inference mode.

  ``labels`` are the classes of a conditional generator (ignored by unconditional ones).
  """

  @jax.jit
  def generate(params, batch_stats, z, labels=None):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    return networks.generator.apply(variables, z, labels, train=False)

  return generate


def sample_inputs(seed: int, num_samples: int, latent_dim: int, num_classes: int | None):
  """The fixed ``(latents, labels, num_columns)`` of a run's sample pictures.

  Unconditional: ``num_samples`` latents, no labels, a square-ish grid. Conditional: a grid with
  one class per row and ``max(1, num_samples // num_classes)`` columns; each column repeats one
  latent, so a row shows the class and a column one "style".
  """
  if not num_classes:
    return sampling.fixed_latents(seed, num_samples, latent_dim), None, None
  z, labels = sampling.class_grid_inputs(seed, num_classes, num_samples, latent_dim)
  return z, labels, z.shape[0] // num_classes


def eval_latents(config) -> jax.Array:
  """The fixed latents of every evaluation: ``eval_num_samples`` draws derived from the seed."""
  return sampling.evaluation_latents(
    config.seed, config.get("eval_num_samples", 2500), config.model.latent_dim
  )


def eval_labels(config, num_classes: int | None) -> jax.Array | None:
  """The classes of the evaluation samples of a conditional GAN (each class equally often)."""
  if not num_classes:
    return None
  return jax.numpy.arange(config.get("eval_num_samples", 2500), dtype=jax.numpy.int32) % num_classes


def evaluate_modes(
  generate, params, batch_stats, latents, dataset_name: str, labels=None
) -> dict[str, Any]:
  """Mode coverage of the generator's samples on a 2-D Gaussian mixture (PacGAN protocol).

  Srivastava et al. 2017, "VEEGAN"; Lin et al. 2018, "PacGAN": ``modes`` captured, the fraction
  of high-quality samples ``hq_fraction`` (0..1) and ``reverse_kl`` (see
  :func:`ganjax.metrics.mixture_mode_coverage`), for the samples of ``latents`` in inference mode.
  """
  samples = np.asarray(generate(params, batch_stats, latents, labels))
  result = metrics_lib.mixture_mode_coverage(samples.reshape(len(samples), -1), dataset_name)
  return {
    "modes": int(result["modes"]),
    "hq_fraction": float(result["hq_fraction"]),
    "reverse_kl": float(result["reverse_kl"]),
  }


def make_evaluator(config, source, generate, num_classes: int | None = None, workdir=None):
  """``evaluate(state, step) -> scalars`` for this run's data, or None when it has none.

  The 2-D Gaussian mixtures (``source.name`` in ``gaussian_mixture.NAMES``): mode coverage of the
  EMA generator when EMA is on (:func:`sample_params`), on fixed latents. Image data, when a
  feature extractor is configured: :func:`ganjax.evaluation.make_evaluator` (the ``eval_metrics``
  of ``eval_num_samples`` samples, also written to ``WORKDIR/eval/step_NNNNNN.json``).
  """
  if source.name in gaussian_mixture.NAMES:
    latents, labels = eval_latents(config), eval_labels(config, num_classes)

    def evaluate_mixture(state, step) -> dict[str, Any]:
      del step
      params = sample_params(config, state)
      batch_stats = state.generator.batch_stats
      return evaluate_modes(generate, params, batch_stats, latents, source.name, labels)

    return evaluate_mixture
  return evaluation.make_evaluator(
    config,
    generate,
    lambda state: (sample_params(config, state), state.generator.batch_stats),
    num_classes=num_classes,
    workdir=workdir,
  )


def run_info(config, source, networks: Networks, state, mesh) -> dict[str, Any]:
  """What a reader of the results needs to know about how they were made."""
  return {
    **loop.provenance(config, mesh),
    "data": loop.data_info(source, networks.element_shape, networks.num_classes is not None),
    "parameters": {
      "generator": state_lib.parameter_count(state.generator.params),
      "discriminator": state_lib.parameter_count(state.discriminator.params),
    },
  }


def describe_run(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """Opens the data and builds the networks as :func:`train_and_evaluate` would, abstractly
  (``jax.eval_shape``: shapes, no values) and without training, for ``--mode=config``: the data
  as one line of text and ``{network name: abstract params}``.
  """
  source = data_lib.create_source(
    config.data, seed=config.seed, batch_size=config.batch_size * config.n_critic
  )
  devices = config.parallel.num_devices or jax.device_count()
  check_pack(config.model.get("pack", 1), config.batch_size, devices)
  networks = build_networks(config, source.element_shape, source.num_classes)
  state = abstract_state(config, networks)
  return describe_source(source), {
    "generator": state.generator.params,
    "discriminator": state.discriminator.params,
  }


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, with the valid choices, on settings the run cannot use."""
  for key in ("num_train_steps", "batch_size", "n_critic", "log_every_steps"):
    if config[key] < 1:
      raise ConfigError(f"config.{key} must be >= 1, got {config[key]}.")
  for key in ("sample_every_steps", "checkpoint_every_steps", "eval_every_steps"):
    if config.get(key, 0) < 0:
      raise ConfigError(f"config.{key} must be >= 0 (0 = only at the end), got {config[key]}.")
  if config.get("eval_num_samples", 1) < 1:
    raise ConfigError(f"config.eval_num_samples must be >= 1, got {config.eval_num_samples}.")
  if config.get("unrolled_steps", 0) < 0:
    raise ConfigError(f"config.unrolled_steps must be >= 0, got {config.unrolled_steps}.")
  check_pack(config.model.get("pack", 1), config.batch_size)
  parallel.check_mode(config.parallel.mode)
  if not 0.0 <= config.ema.decay < 1.0:
    raise ConfigError(f"ema.decay must be in [0, 1), got {config.ema.decay}.")
  if config.get("regularizer", {}).get("weight_clip", 0.0) < 0:
    raise ConfigError(
      f"regularizer.weight_clip must be >= 0, got {config.regularizer.weight_clip}."
    )
  steps.regularization_from_config(config, losses.objective_from_config(config))
  models.get_model_module(config.model.name)


def check_pack(pack: int, batch_size: int, num_devices: int = 1) -> None:
  """PacGAN packs consecutive samples on each device: its share of a D batch divides by ``pack``."""
  if pack < 1:
    raise ConfigError(f"config.model.pack must be >= 1 (1 = no packing), got {pack}.")
  if batch_size % (pack * num_devices):
    raise ConfigError(
      f"batch_size={batch_size} does not split into packs of model.pack={pack} samples on each "
      f"of {num_devices} device(s); use a multiple of {pack * num_devices}."
    )


def _discriminator_outputs(scalars: dict[str, float]) -> str:
  """D's mean verdicts for the progress line: probabilities for classifier objectives (D(x),
  D(G(z))), raw critic outputs for the others (WGAN, hinge, LSGAN: C(x), C(G(z)))."""
  if "d_real" in scalars:
    return f"D(x) {scalars['d_real']:.3f} D(G(z)) {scalars.get('d_fake', math.nan):.3f}"
  real, fake = scalars.get("d_real_logit", math.nan), scalars.get("d_fake_logit", math.nan)
  return f"C(x) {real:.3f} C(G(z)) {fake:.3f}"


def _progress(scalars: dict[str, float]) -> str:
  """The losses and D's verdicts for the progress line."""
  d_loss, g_loss = scalars.get("d_loss", math.nan), scalars.get("g_loss", math.nan)
  return f"d_loss {d_loss:.4f} g_loss {g_loss:.4f} {_discriminator_outputs(scalars)}"


@workdir_lib.releases_lock
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> state_lib.GANState:
  """Trains the GAN the config describes; resumes from ``workdir`` when it holds checkpoints.

  Returns the final state.
  """
  validate_config(config)
  examples_per_step = config.batch_size * config.n_critic
  mesh, source, checkpointer = loop.start(config, workdir, examples_per_step)
  check_pack(config.model.get("pack", 1), config.batch_size, mesh.devices.size)
  is_chief = jax.process_index() == 0
  networks = build_networks(config, source.element_shape, source.num_classes)
  objective = losses.objective_from_config(config)
  state, start_step = loop.resume_or_create(
    checkpointer,
    lambda: abstract_state(config, networks, mesh),
    lambda: create_state(config, networks, mesh),
    config=config,
  )
  info = run_info(config, source, networks, state, mesh)
  writer = loop.record_run(config, workdir, info, start_step)
  train_step = steps.make_train_step(config, objective)
  compiled_step = parallel.compile_step(train_step, mesh, config.parallel.mode)
  generate = make_generate_fn(networks)
  evaluate = make_evaluator(config, source, generate, networks.num_classes, workdir)
  fixed_z, fixed_labels, grid_columns = sample_inputs(
    config.seed, config.num_sample_images, config.model.latent_dim, networks.num_classes
  )
  base_rng = jax.random.fold_in(jax.random.key(config.seed), 0x7EA1)
  batches = source.batches(start_step)
  first_batch = next(batches)
  reference = first_batch["image"][: config.num_sample_images]
  if start_step == 0 and is_chief:
    real_path = os.path.join(workdir, "samples", "real.png")
    writer.write_images(0, {"real": sampling.save_samples(real_path, reference)[None]})

  def step_fn(state, host_batch):
    return compiled_step(state, parallel.host_batch_to_global(host_batch, mesh), base_rng)

  def write_samples(step: int, state) -> None:
    samples = np.asarray(
      generate(sample_params(config, state), state.generator.batch_stats, fixed_z, fixed_labels)
    )
    if not is_chief:
      return
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    picture = sampling.save_samples(
      path, samples, reference, title=f"step {step}", num_columns=grid_columns
    )
    writer.write_images(step, {"samples": picture[None]})
    logging.info("Wrote %s", path)

  logging.info(
    "Training %s on %s (%s examples, shape %s) for %d steps, global batch %d on %d device(s) (%s).",
    config.model.name,
    source.name,
    source.num_examples,
    source.element_shape,
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
    examples_per_step=examples_per_step,
    write_samples=write_samples,
    evaluate=None if evaluate is None else lambda step, state: evaluate(state, step),
    progress=_progress,
  )

  checkpointer.wait_until_finished()
  checkpointer.close()
  writer.flush()
  writer.close()
  return state


def load_checkpoint(workdir: str, step: int | str | None = None):
  """``(config, networks, state, step)`` of a GAN run's checkpoint (``step``: None for the
  latest, ``"best"``, or N)."""
  config, info = workdir_lib.read_run(workdir)
  data_info = info["data"]
  networks = build_networks(config, tuple(data_info["element_shape"]), data_info["num_classes"])
  state, step = checkpoint_lib.restore_from_workdir(workdir, step, abstract_state(config, networks))
  return config, networks, state, step


def load(workdir: str, step: int | str | None = None) -> TrainedRun:
  """The GAN (or conditional GAN) of ``workdir`` at ``step`` (None: latest, ``"best"``, or N).

  ``sample`` draws from the EMA generator when the run kept one; ``seed=config.seed`` gives the
  latents of the run's sample pictures.
  """
  config, networks, state, step = load_checkpoint(workdir, step)
  generate = make_generate_fn(networks)

  def sample_fn(num_samples: int, seed: int, labels):
    z, labels = sampling.latents_and_labels(
      seed, num_samples, config.model.latent_dim, networks.num_classes, labels
    )
    samples = generate(sample_params(config, state), state.generator.batch_stats, z, labels)
    return np.asarray(samples), {"latents": np.asarray(z), "labels": labels}

  def generate_fn(z, labels):
    return generate(sample_params(config, state), state.generator.batch_stats, z, labels)

  return TrainedRun(
    workdir,
    config,
    int(step),
    state,
    networks.num_classes,
    sample_fn=sample_fn,
    latent_dim=config.model.latent_dim,
    generate_fn=generate_fn,
  )


def evaluate_workdir(workdir: str, step: int | str | None = None, **options: Any) -> dict[str, Any]:
  """``--mode=evaluate``: measures the generator of a checkpoint; writes ``eval/step_NNNNNN.json``.

  Restores the latest checkpoint (or ``step``; ``"best"`` for the run's best checkpoint,
  ``config.eval_best_metric``) as :func:`load` does and measures the EMA generator when the run
  kept one. ``options``: ``metrics``, ``num_samples``, ``extractor``, ``config_overrides`` of
  :func:`ganjax.evaluation.evaluate_checkpoint`.

  Returns:
    What was written: ``{"values", "protocol", "details", "workdir", "path"}``.
  """
  config, networks, state, step = load_checkpoint(workdir, step)
  return evaluation.evaluate_checkpoint(
    config,
    make_generate_fn(networks),
    sample_params(config, state),
    state.generator.batch_stats,
    workdir=workdir,
    step=step,
    num_classes=networks.num_classes,
    **options,
  )


def sample_from_workdir(
  workdir: str, num_samples: int, output: str, seed: int | None = None
) -> np.ndarray:
  """``--mode=sample``: writes ``output`` (a grid, one class per row when conditional, or a
  scatter plot) and ``output``.npz from the latest checkpoint (:func:`load`).

  Uses the EMA generator when the run kept one. ``seed`` None draws the run's fixed latents.
  """
  run = load(workdir)
  config = run.config
  num_samples = sampling.grid_size(num_samples, run.num_classes)
  samples, inputs = run.sample_with_inputs(num_samples, config.seed if seed is None else seed)
  columns = num_samples // run.num_classes if run.num_classes else None
  sampling.save_samples(
    output, samples, title=f"{os.path.basename(workdir)} step {run.step}", num_columns=columns
  )
  npz_path = os.path.splitext(output)[0] + ".npz"
  labels = inputs["labels"]
  extra = {} if labels is None else {"labels": np.asarray(labels)}
  np.savez_compressed(
    npz_path,
    samples=samples,
    latents=inputs["latents"],
    step=run.step,
    ema=config.ema.decay > 0,
    **extra,
  )
  logging.info(
    "Wrote %s and %s (%d samples from step %d, %s params).",
    output,
    npz_path,
    num_samples,
    run.step,
    "EMA" if config.ema.decay > 0 else "raw",
  )
  return samples
