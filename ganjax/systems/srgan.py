"""SRResNet pre-training and SRGAN adversarial fine-tuning (``config.task = "srgan"``).

Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
Network", CVPR 2017, arXiv:1609.04802. Networks: :mod:`ganjax.models.srgan`; data:
:mod:`ganjax.data.super_resolution` (HR random crops, LR by bicubic downsampling).

Training (:func:`train_and_evaluate`) has two phases over one step counter:

1. steps ``[0, srgan.pretrain_steps)``: SRResNet, the generator alone with the content loss
   (pixel MSE by default, the paper's SRResNet-MSE);
2. steps ``[pretrain_steps, num_train_steps)``: SRGAN, one discriminator update (non-saturating
   BCE, :func:`ganjax.losses.bce_discriminator_loss`) then one generator update on
   ``content + srgan.adversarial_weight * -log D(G(lr))`` (the paper's 1e-3,
   :func:`ganjax.losses.non_saturating_generator_loss`).

It trains through :func:`ganjax.loop.run` like every system: both values of ``parallel.mode`` (a
global-view ``jit`` over the ``data`` mesh, or per-device ``shard_map`` code with explicit ``pmean``
and per-device BatchNorm statistics; :func:`compiled_steps`), ``parallel.distributed``, img/s, and
``eval_best_metric`` (one of :data:`BEST_METRICS`, kept in ``WORKDIR/checkpoints_best``). The end
of the pre-training is a phase end of the loop: it is logged, evaluated and checkpointed whatever
the cadences say, and every ``metrics.jsonl`` record names its ``phase`` (:func:`phase`).

The content loss is the pixel MSE on [-1, 1] images, or, when ``srgan.content_features_path``
names a VGG19 weight file, the MSE of VGG19 feature maps (``srgan.content_layer``, the paper's
VGG54 = ``conv5_4`` after its ReLU) scaled by ``srgan.content_feature_scale`` (the paper's 1/12.75
per feature); see :func:`load_vgg19` for the file's layout.

Evaluation, on the held-out set of the data source (never trained on): PSNR and SSIM
(:mod:`ganjax.metrics.image_quality`) of the generator's output against the HR images, **on RGB**
uint8 images (output clipped to [-1, 1] and rounded to uint8, like a saved PNG), with
``srgan.eval_shave`` pixels (default: the scale) removed at each border, next to the same for the
bicubic upsampling of the same LR images: ``psnr``, ``ssim``, ``bicubic_psnr``, ``bicubic_ssim``;
also PSNR on the BT.601 luma (``psnr_y``, ``bicubic_psnr_y``, the Y-channel convention of most SR
papers). As a perceptual proxy, ``sharpness`` (and ``bicubic_sharpness``) is the ratio of the mean
gradient magnitude (finite differences of the luma) of the output to that of the HR images.
Justification: what the adversarial loss buys in Ledig et al. is the high-frequency texture that
MSE training averages away (their MOS test); a PSNR-oriented network and bicubic upsampling give
ratios well below 1 (blur), texture restored to natural statistics gives about 1, and
over-sharpening or GAN noise gives > 1. It needs no pretrained network (VGG/LPIPS weights cannot be
downloaded here), is stable across checkpoints (unlike a distance in the discriminator's changing
features) and is cheap; it measures the energy of the texture, not its correctness, so it is
always read together with PSNR/SSIM. The values go to ``metrics.jsonl`` (with the ``phase``),
TensorBoard, and ``WORKDIR/eval/step_NNNNNN.json`` (with the protocol).

Workdir: ``config.json``, ``run_info.json``, TensorBoard events, ``metrics.jsonl``, ``checkpoints/``
(generator and discriminator states with the data position), ``checkpoints_best/`` (with
``eval_best_metric``), ``samples/step_NNNNNN.png`` (rows of held-out crops: LR (nearest) | bicubic |
SR | HR).

Command-line modes: ``--mode=upscale`` (:func:`upscale_file`: any image size, in tiles with enough
context that the result equals the whole-image one), ``--mode=sample`` (:func:`sample_from_workdir`)
and ``--mode=evaluate`` (:func:`evaluate_workdir`).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from PIL import Image

from ganjax import checkpoint as checkpoint_lib
from ganjax import loop, losses, optimizers, parallel
from ganjax import workdir as workdir_lib
from ganjax.config_fields import module_kwargs
from ganjax.data import preprocessing
from ganjax.data import super_resolution as sr_data
from ganjax.data.source import describe_location
from ganjax.errors import ConfigError, MissingPathError
from ganjax.metrics import image_quality
from ganjax.models import srgan as srgan_models
from ganjax.state import TrainState, parameter_count
from ganjax.trained import TrainedRun

# The VGG19 convolution layers (Simonyan & Zisserman 2015) up to conv5_4, block by block; a 2x2
# max-pool follows every block.
VGG19_BLOCKS = (2, 2, 4, 4, 4)
# ImageNet normalisation of the VGG19 input (RGB in [0, 1]), the torchvision convention.
VGG_MEAN = (0.485, 0.456, 0.406)
VGG_STD = (0.229, 0.224, 0.225)


@flax.struct.dataclass
class SRGANState:
  """Everything that changes during training.

  Attributes:
    step: completed training steps (pre-training and adversarial together).
    generator: the SRResNet's params, Adam state and BatchNorm statistics.
    discriminator: the discriminator's (updated in the adversarial phase only).

  The TrainStates carry no ``apply_fn`` (it is None): the steps take the flax modules as static
  arguments instead. A static field of the state is part of the jit cache key, and a bound method
  ``module.apply`` compares equal only to the bound method *of the same module object* (Python
  >= 3.8 compares ``__self__`` by identity), so a state holding it would recompile the steps in
  every run, and on every resume, even for equal configs. Modules compare and hash by their fields.
  The ``tx`` static fields are shared through :func:`make_optimizers` for the same reason.
  """

  step: jax.Array
  generator: TrainState
  discriminator: TrainState


# ----------------------------------------------------------------------------------------------
# Networks, optimizers, state.


def build_networks(config: ml_collections.ConfigDict):
  """``(Generator, Discriminator)`` of :mod:`ganjax.models.srgan` for the config."""
  scale = srgan_models.check_scale(config.scale)
  g_kwargs = module_kwargs(config.model.generator)
  d_kwargs = module_kwargs(config.model.discriminator)
  return srgan_models.Generator(scale=scale, **g_kwargs), srgan_models.Discriminator(**d_kwargs)


def make_optimizers(config: ml_collections.ConfigDict):
  """Adam for G and D (:func:`ganjax.optimizers.make_optimizer`).

  G's schedule (``optim.g.schedule``, e.g. cosine decay to ``optim.g.final_learning_rate``) runs
  over the pre-training phase; ``optim.g.gan_learning_rate`` (None: the same rate) follows in the
  adversarial phase. D (``optim.d``) is constant.
  """
  g = config.optim.g.to_dict()
  g["second_phase_learning_rate"] = g.pop("gan_learning_rate", None)
  pretrain = int(config.srgan.pretrain_steps)
  g_tx = optimizers.make_optimizer(
    g, config.num_train_steps, phase_updates=pretrain, field="optim.g"
  )
  d_tx = optimizers.make_optimizer(config.optim.d, config.num_train_steps, field="optim.d")
  return g_tx, d_tx


def _lr_shape(config) -> tuple[int, int, int]:
  side = config.data.crop_size // config.scale
  return (side, side, 3)


def state_factory(config: ml_collections.ConfigDict):
  """``init(rng) -> SRGANState`` (pure; jit it with out_shardings)."""
  generator, discriminator = build_networks(config)
  g_tx, d_tx = make_optimizers(config)
  lr_shape = _lr_shape(config)
  hr_shape = (lr_shape[0] * config.scale, lr_shape[1] * config.scale, 3)

  def init(rng):
    g_key, d_key = jax.random.split(rng)
    g_vars = _init_variables(generator, g_key, (1, *lr_shape))
    d_vars = _init_variables(discriminator, d_key, (1, *hr_shape))
    return SRGANState(
      step=jnp.zeros((), jnp.int32),
      generator=_train_state(g_vars, g_tx),
      discriminator=_train_state(d_vars, d_tx),
    )

  return init


def _train_state(variables, tx) -> TrainState:
  """A network's TrainState: no ``apply_fn`` (see :class:`SRGANState`) and a strongly typed int32
  step counter, as a checkpoint restores it (``TrainState.create``'s Python 0 is weakly typed, and
  a weak type is part of the jit cache key: a resumed run would compile the steps again)."""
  return TrainState.create(
    apply_fn=None,
    params=variables["params"],
    tx=tx,
    batch_stats=variables.get("batch_stats", {}),
  ).replace(step=jnp.zeros((), jnp.int32))


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_variables(module, rng, shape):
  """``module.init`` on zeros of ``shape`` (jitted once per module and shape, across runs)."""
  return module.init(rng, jnp.zeros(shape, jnp.float32), train=False)


def create_state(config, mesh) -> SRGANState:
  """The initial state, replicated on the mesh."""
  rng = jax.random.fold_in(jax.random.key(config.seed), 0x5A6)
  return jax.device_put(state_factory(config)(rng), parallel.replicated(mesh))


def abstract_state(config, mesh=None):
  """Shapes (and shardings) of the state, without allocating it."""
  shapes = jax.eval_shape(state_factory(config), jax.random.key(0))
  if mesh is None:
    return shapes
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


# ----------------------------------------------------------------------------------------------
# Content loss: pixel MSE or VGG19 features.


def load_vgg19(path: str, layer: str = "conv5_4") -> dict[str, dict[str, np.ndarray]]:
  """Reads the VGG19 feature-extractor weights of the feature-space content loss.

  The file is a ``.npz`` with, for every convolution ``convB_I`` up to ``layer`` (B = block 1..5,
  I = 1.. within the block: conv1_1, conv1_2, conv2_1, conv2_2, conv3_1..conv3_4, conv4_1..4,
  conv5_1..4), the arrays ``convB_I/kernel`` of shape ``(3, 3, in, out)`` (HWIO) and
  ``convB_I/bias`` ``(out,)``. The network expects RGB in [0, 1] normalised with the ImageNet mean
  and std (:data:`VGG_MEAN`, :data:`VGG_STD`): torchvision's ``vgg19`` weights, e.g. converted with
  ``kernel = features[i].weight.permute(2, 3, 1, 0)``. Channel counts are read from the file.

  Raises:
    FileNotFoundError: the file does not exist (names the path and the expected content).
    ValueError: ``layer`` is not a VGG19 conv name, or a needed array is missing.
  """
  names = vgg19_layers(layer)
  if not os.path.isfile(path):
    raise MissingPathError(
      f"srgan.content_features_path={path!r} does not exist. Expected a .npz of VGG19 weights "
      f"with arrays 'convB_I/kernel' (3, 3, in, out) and 'convB_I/bias' for {names[0]} .. "
      f"{names[-1]} (see ganjax.systems.srgan.load_vgg19), or unset the field for the pixel "
      "MSE content loss."
    )
  with np.load(path) as f:
    missing = [f"{n}/{k}" for n in names for k in ("kernel", "bias") if f"{n}/{k}" not in f]
    if missing:
      raise ConfigError(f"{path} lacks the VGG19 arrays {missing[:6]} (needed up to {layer}).")
    return {
      n: {"kernel": f[f"{n}/kernel"].astype(np.float32), "bias": f[f"{n}/bias"].astype(np.float32)}
      for n in names
    }


def vgg19_layers(layer: str) -> list[str]:
  """The conv names from conv1_1 up to and including ``layer``."""
  all_names = [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG19_BLOCKS) for i in range(n)]
  if layer not in all_names:
    raise ConfigError(f"Unknown VGG19 layer {layer!r}; valid choices: {', '.join(all_names)}.")
  return all_names[: all_names.index(layer) + 1]


def vgg19_features(params: dict[str, Any], images: jax.Array) -> jax.Array:
  """VGG19 feature maps (after the ReLU of the last conv in ``params``) of images in [-1, 1]."""
  x = (images + 1.0) * 0.5
  x = (x - jnp.asarray(VGG_MEAN)) / jnp.asarray(VGG_STD)
  names = [f"conv{b + 1}_{i + 1}" for b, n in enumerate(VGG19_BLOCKS) for i in range(n)]
  last = max(names.index(n) for n in params)
  for index, name in enumerate(names[: last + 1]):
    if index and name.endswith("_1"):
      x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    p = params[name]
    x = jax.lax.conv_general_dilated(
      x, p["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    x = jax.nn.relu(x + p["bias"])
  return x


class LossSettings(NamedTuple):
  """The (hashable, static) loss hyperparameters of the steps."""

  adversarial_weight: float
  content_feature_scale: float

  @classmethod
  def from_config(cls, config) -> LossSettings:
    return cls(float(config.srgan.adversarial_weight), float(config.srgan.content_feature_scale))


def content_loss(loss: LossSettings, feature_params, sr: jax.Array, hr: jax.Array) -> jax.Array:
  """Pixel MSE, or the scaled VGG feature MSE when ``feature_params`` are given."""
  if not feature_params:
    return jnp.mean(jnp.square(sr - hr))
  s = loss.content_feature_scale
  return jnp.mean(
    jnp.square(s * vgg19_features(feature_params, sr) - s * vgg19_features(feature_params, hr))
  )


def load_content_features(config) -> dict[str, Any]:
  """The VGG19 params of the content loss, or ``{}`` (pixel MSE) when no file is configured."""
  path = config.srgan.get("content_features_path")
  if not path:
    return {}
  return jax.tree.map(jnp.asarray, load_vgg19(path, config.srgan.content_layer))


# ----------------------------------------------------------------------------------------------
# Steps.


def _variables(ts: TrainState, params) -> dict[str, Any]:
  return {"params": params, "batch_stats": ts.batch_stats}


def pretrain_step(
  state: SRGANState,
  batch,
  feature_params,
  *,
  generator: srgan_models.Generator,
  loss: LossSettings,
  axis_name: str | None = None,
):
  """One SRResNet update on the content loss; returns ``(state, metrics)``.

  Pure; :func:`compiled_steps` compiles it for the mesh. ``axis_name``: the mesh axis inside
  ``shard_map``, where gradients, metrics and BatchNorm statistics are averaged explicitly
  (:func:`ganjax.parallel.pmean`); None under a global-view ``jit``.
  """
  g = state.generator

  def loss_fn(params):
    sr, updates = generator.apply(
      _variables(g, params), batch["lr"], train=True, mutable=["batch_stats"]
    )
    value = content_loss(loss, feature_params, sr, batch["hr"])
    return value, (sr, updates["batch_stats"])

  (value, (sr, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g.params)
  grads = parallel.pmean(grads, axis_name)
  g = g.apply_gradients(grads=grads).replace(batch_stats=parallel.pmean(stats, axis_name))
  metrics = {
    "content_loss": value,
    "train_psnr": jnp.mean(image_quality.psnr(batch["hr"], jnp.clip(sr, -1, 1), 2.0)),
  }
  metrics = {**parallel.pmean(metrics, axis_name), "g_grad_norm": optax.global_norm(grads)}
  return state.replace(step=state.step + 1, generator=g), metrics


def adversarial_step(
  state: SRGANState,
  batch,
  feature_params,
  *,
  generator: srgan_models.Generator,
  discriminator: srgan_models.Discriminator,
  loss: LossSettings,
  axis_name: str | None = None,
):
  """One D update (BCE) then one G update (content + weight x non-saturating); pure, compiled by
  :func:`compiled_steps` (``axis_name`` as in :func:`pretrain_step`).

  The generator runs forward once: its output (without gradient) is D's fake batch, and the G
  gradient is pulled back through the same forward pass (``jax.vjp``) after D's update. This is
  the usual alternating SRGAN update (D on G(lr), then G against the updated D) with one G forward
  fewer than recomputing G(lr) inside the G loss.
  """
  g, d = state.generator, state.discriminator

  def g_forward(params):
    sr, updates = generator.apply(
      _variables(g, params), batch["lr"], train=True, mutable=["batch_stats"]
    )
    return sr, updates["batch_stats"]

  sr, g_pullback, g_stats = jax.vjp(g_forward, g.params, has_aux=True)

  def d_loss_fn(params):
    real, upd = discriminator.apply(
      _variables(d, params), batch["hr"], train=True, mutable=["batch_stats"]
    )
    fake, upd = discriminator.apply(
      {"params": params, **upd}, sr, train=True, mutable=["batch_stats"]
    )
    d_loss, m = losses.bce_discriminator_loss(real, fake)
    return d_loss, (m, upd["batch_stats"])

  (_, (d_metrics, d_stats)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d.params)
  d_grads = parallel.pmean(d_grads, axis_name)
  d = d.apply_gradients(grads=d_grads).replace(batch_stats=parallel.pmean(d_stats, axis_name))

  def g_loss_fn(sr):
    fake, _ = discriminator.apply(_variables(d, d.params), sr, train=True, mutable=["batch_stats"])
    adv, _ = losses.non_saturating_generator_loss(fake)
    content = content_loss(loss, feature_params, sr, batch["hr"])
    total = content + loss.adversarial_weight * adv
    return total, (content, adv)

  (g_loss, (content, adv)), sr_grad = jax.value_and_grad(g_loss_fn, has_aux=True)(sr)
  (g_grads,) = g_pullback(sr_grad)
  g_grads = parallel.pmean(g_grads, axis_name)
  g = g.apply_gradients(grads=g_grads).replace(batch_stats=parallel.pmean(g_stats, axis_name))
  metrics = {
    **d_metrics,
    "g_loss": g_loss,
    "content_loss": content,
    "adversarial_loss": adv,
    "train_psnr": jnp.mean(image_quality.psnr(batch["hr"], jnp.clip(sr, -1, 1), 2.0)),
  }
  metrics = {
    **parallel.pmean(metrics, axis_name),
    "g_grad_norm": optax.global_norm(g_grads),
    "d_grad_norm": optax.global_norm(d_grads),
  }
  return state.replace(step=state.step + 1, generator=g, discriminator=d), metrics


@functools.lru_cache(maxsize=4)
def compiled_steps(
  generator: srgan_models.Generator,
  discriminator: srgan_models.Discriminator,
  loss: LossSettings,
  mesh,
  mode: str,
):
  """``(pretrain, adversarial)``: the two steps as ``step(state, batch, feature_params)``, compiled
  for the mesh in ``parallel.mode`` ``mode`` (:func:`ganjax.parallel.compile_step`: the state and
  the feature params replicated, the batch sharded, the state donated).

  One pair per process for equal arguments (modules compare by their fields), so an equal config
  trained again, or resumed in-process, reuses the compilations.
  """
  pretrain = functools.partial(pretrain_step, generator=generator, loss=loss)
  adversarial = functools.partial(
    adversarial_step, generator=generator, discriminator=discriminator, loss=loss
  )
  return parallel.compile_step(pretrain, mesh, mode), parallel.compile_step(adversarial, mesh, mode)


# ----------------------------------------------------------------------------------------------
# Inference and evaluation.


@functools.partial(jax.jit, static_argnums=0)
def _generate(generator, params, batch_stats, lr):
  return generator.apply({"params": params, "batch_stats": batch_stats}, lr, train=False)


def make_generate_fn(generator):
  """``generate(params, batch_stats, lr) -> sr`` in inference mode (unclipped), jitted once per
  generator configuration and input shape."""
  return functools.partial(_generate, generator)


def super_resolve(generate, state_g, lr: np.ndarray, batch_size: int = 16) -> np.ndarray:
  """Generator outputs for float LR images in [-1, 1], in chunks; uint8 HR images."""
  outs = []
  for i in range(0, len(lr), batch_size):
    out = generate(state_g.params, state_g.batch_stats, jnp.asarray(lr[i : i + batch_size]))
    outs.append(preprocessing.to_uint8(np.asarray(out)))
  return np.concatenate(outs)


def _gradient_energy(images: jax.Array) -> jax.Array:
  """Mean |dx| + |dy| of the BT.601 luma of uint8-valued images."""
  y = image_quality.to_luma(images)[..., 0]
  dx = jnp.abs(jnp.diff(y, axis=-1)).mean()
  dy = jnp.abs(jnp.diff(y, axis=-2)).mean()
  return dx + dy


@functools.partial(jax.jit, static_argnames="shave")
def quality_metrics(hr: jax.Array, test: jax.Array, shave: int) -> dict[str, jax.Array]:
  """PSNR/SSIM (RGB, data range 255), PSNR on Y and the sharpness ratio of uint8 images."""
  hr = hr.astype(jnp.float32)
  test = test.astype(jnp.float32)
  if shave:
    hr, test = hr[:, shave:-shave, shave:-shave], test[:, shave:-shave, shave:-shave]
  return {
    "psnr": image_quality.psnr(hr, test, 255.0).mean(),
    "ssim": image_quality.ssim(hr, test, 255.0).mean(),
    "psnr_y": image_quality.psnr(
      image_quality.to_luma(hr), image_quality.to_luma(test), 255.0
    ).mean(),
    "sharpness": _gradient_energy(test) / _gradient_energy(hr),
  }


def evaluation_protocol(config, held_out) -> dict[str, Any]:
  """How the evaluation numbers are made (written next to them)."""
  shave = eval_shave(config)
  n, h, w, _ = held_out["hr"].shape
  return {
    "images": f"{n} held-out HR crops of {h}x{w} (never trained on): "
    f"{sorted({name.split('#')[0] for name in held_out['names']})}",
    "lr": f"Pillow BICUBIC downsampling x{config.scale} of the uint8 HR crop",
    "baseline": "bicubic_*: Pillow BICUBIC upsampling of the same uint8 LR images",
    "color": "psnr/ssim on RGB (mean over channels for SSIM); psnr_y on ITU-R BT.601 luma",
    "quantization": "outputs clipped to [-1, 1] and rounded to uint8; data_range 255",
    "border": f"{shave} pixels shaved at each border",
    "ssim": "Wang et al. 2004, 11x11 Gaussian window sigma 1.5, population covariances "
    "(skimage gaussian_weights=True, use_sample_covariance=False)",
    "sharpness": "mean luma gradient magnitude of the output / of the HR images (1 = HR's)",
  }


# Evaluation values that ``eval_best_metric`` may name (higher is better for each:
# ganjax.checkpoint.HIGHER_IS_BETTER); sharpness is best near 1, so it cannot pick a checkpoint.
BEST_METRICS = ("psnr", "ssim", "psnr_y", "psnr_gain_over_bicubic")


def eval_shave(config) -> int:
  shave = config.srgan.get("eval_shave", None)
  return int(config.scale if shave is None else shave)


def make_evaluator(config, held_out, generate):
  """``evaluate(state) -> scalars`` on the held-out set (the bicubic numbers are computed once)."""
  shave = eval_shave(config)
  hr = held_out["hr"]
  lr = preprocessing.to_float(held_out["lr"])
  bicubic = {
    f"bicubic_{k}": float(v) for k, v in quality_metrics(hr, held_out["bicubic"], shave).items()
  }
  batch_size = int(config.srgan.get("eval_batch_size", 16))

  def evaluate(state: SRGANState) -> dict[str, float]:
    sr = super_resolve(generate, state.generator, lr, batch_size)
    values = {k: float(v) for k, v in quality_metrics(hr, sr, shave).items()}
    values["psnr_gain_over_bicubic"] = values["psnr"] - bicubic["bicubic_psnr"]
    return {**values, **bicubic}

  return evaluate


def comparison_picture(held_out, sr: np.ndarray, count: int, scale: int) -> np.ndarray:
  """Rows of LR (nearest-neighbour enlarged) | bicubic | SR | HR, with white gaps; uint8."""
  rows = []
  gap = 4
  for i in range(min(count, len(sr))):
    lr_big = np.repeat(np.repeat(held_out["lr"][i], scale, axis=0), scale, axis=1)
    parts = [lr_big, held_out["bicubic"][i], sr[i], held_out["hr"][i]]
    h = parts[0].shape[0]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    row = np.concatenate([p for part in parts for p in (part, spacer)][:-1], axis=1)
    rows.append(row)
    rows.append(np.full((gap, row.shape[1], 3), 255, np.uint8))
  return np.concatenate(rows[:-1], axis=0)


def _save_png(path: str, picture: np.ndarray) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(picture).save(path)


# ----------------------------------------------------------------------------------------------
# Training.


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Fails early, with the valid choices, on settings the run cannot use."""
  srgan_models.check_scale(config.scale)
  for key in ("num_train_steps", "batch_size", "log_every_steps"):
    if config[key] < 1:
      raise ConfigError(f"config.{key} must be >= 1, got {config[key]}.")
  for key in ("sample_every_steps", "checkpoint_every_steps", "eval_every_steps"):
    if config.get(key, 0) < 0:
      raise ConfigError(f"config.{key} must be >= 0 (0 = only at the end), got {config[key]}.")
  pre = config.srgan.pretrain_steps
  if not 0 <= pre <= config.num_train_steps:
    raise ConfigError(
      f"srgan.pretrain_steps={pre} must be in [0, num_train_steps={config.num_train_steps}]."
    )
  if config.srgan.adversarial_weight < 0:
    raise ConfigError(
      f"srgan.adversarial_weight must be >= 0, got {config.srgan.adversarial_weight}."
    )
  sr_data.check_divisible(
    config.data.crop_size, config.data.crop_size, config.scale, "data.crop_size"
  )
  if config.data.get("channels") not in (None, 3):
    raise ConfigError(
      f"SRGAN upscales RGB images: data.channels must be 3 or None, got {config.data.channels}."
    )
  parallel.check_mode(config.parallel.mode)
  best = config.get("eval_best_metric")
  if best and best not in BEST_METRICS:
    raise ConfigError(
      f"eval_best_metric={best!r} is not an SRGAN evaluation value to maximise; valid choices: "
      f"{', '.join(BEST_METRICS)}."
    )
  if config.srgan.get("content_features_path"):
    path = config.srgan.content_features_path
    vgg19_layers(config.srgan.content_layer)
    if not os.path.isfile(path):
      load_vgg19(path, config.srgan.content_layer)  # Raises the FileNotFoundError.


def phase(config, step: int) -> str:
  """``"srresnet"`` for steps (1-based) of the pre-training, ``"srgan"`` after."""
  return "srresnet" if step <= config.srgan.pretrain_steps else "srgan"


def run_info(config, source, state, mesh) -> dict[str, Any]:
  """Versions, devices, data and network sizes of the run (``run_info.json``)."""
  return {
    **loop.provenance(config, mesh),
    "data": {
      "name": source.name,
      "scale": source.scale,
      "crop_size": source.crop_size,
      "description": source.description,
    },
    "parameters": {
      "generator": parameter_count(state.generator.params),
      "discriminator": parameter_count(state.discriminator.params),
    },
    "content_loss": (
      "vgg19 features" if config.srgan.get("content_features_path") else "pixel MSE"
    ),
  }


def describe_run(config: ml_collections.ConfigDict) -> tuple[str, dict[str, Any]]:
  """Opens the LR/HR pair source and builds the networks as :func:`train_and_evaluate` would,
  abstractly (``jax.eval_shape``: shapes, no values) and without training, for ``--mode=config``:
  the data as one line of text and ``{network name: abstract params}``.
  """
  source = sr_data.create_pair_source(
    config.data, scale=config.scale, seed=config.seed, batch_size=config.batch_size
  )
  hr, lr = source.crop_size, source.crop_size // source.scale
  data = (
    f"{source.name}: {source.num_images:,} training images, HR crops {hr}x{hr}x{source.channels}"
    f" from LR {lr}x{lr} (x{source.scale}){describe_location(source.description)}"
  )
  state = abstract_state(config)
  return data, {"generator": state.generator.params, "discriminator": state.discriminator.params}


@workdir_lib.releases_lock
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> SRGANState:
  """Trains SRResNet then SRGAN as the config says through :func:`ganjax.loop.run` (a forced log,
  evaluation and checkpoint where the pre-training ends); resumes from ``workdir``. Returns the
  state."""
  validate_config(config)
  pair_source = functools.partial(
    sr_data.create_pair_source, config.data, scale=config.scale, seed=config.seed
  )
  mesh, source, checkpointer = loop.start(
    config, workdir, config.batch_size, create_source=pair_source
  )
  is_chief = jax.process_index() == 0
  held_out = source.held_out()
  state, start_step = loop.resume_or_create(
    checkpointer,
    lambda: abstract_state(config, mesh),
    lambda: create_state(config, mesh),
    config=config,
  )
  protocol = evaluation_protocol(config, held_out)
  info = {**run_info(config, source, state, mesh), "evaluation": protocol}
  writer = loop.record_run(config, workdir, info, start_step)
  generator, discriminator = build_networks(config)
  pretrain, adversarial = compiled_steps(
    generator, discriminator, LossSettings.from_config(config), mesh, config.parallel.mode
  )
  feature_params = jax.device_put(load_content_features(config), parallel.replicated(mesh))
  generate = make_generate_fn(generator)
  evaluate = make_evaluator(config, held_out, generate)
  sample_lr = preprocessing.to_float(held_out["lr"][: config.num_sample_images])
  pre = config.srgan.pretrain_steps
  steps_done = itertools.count(start_step)  # On the host: no wait for the state's step.

  def step_fn(state, host_batch):
    update = pretrain if next(steps_done) < pre else adversarial
    return update(state, parallel.host_batch_to_global(host_batch, mesh), feature_params)

  def write_samples(step: int, state) -> None:
    sr = super_resolve(generate, state.generator, sample_lr)
    if not is_chief:
      return
    picture = comparison_picture(held_out, sr, config.num_sample_images, config.scale)
    path = os.path.join(workdir, "samples", f"step_{step:06d}.png")
    _save_png(path, picture)
    writer.write_images(step, {"lr_bicubic_sr_hr": picture[None]})
    logging.info("Wrote %s", path)

  def evaluate_step(step: int, state) -> dict[str, float]:
    values = evaluate(state)
    if is_chief:
      _save_evaluation(workdir, config, step, values, protocol)
    return values

  logging.info(
    "Training SRResNet x%d for %d steps, then SRGAN to step %d; batch %d of %dx%d HR crops "
    "from %s (%s training images) on %d device(s) (%s).",
    config.scale,
    pre,
    config.num_train_steps,
    config.batch_size,
    config.data.crop_size,
    config.data.crop_size,
    source.name,
    source.num_images,
    mesh.devices.size,
    config.parallel.mode,
  )
  state = loop.run(
    config,
    workdir,
    state=state,
    start_step=start_step,
    step_fn=step_fn,
    batches=source.batches(start_step),
    checkpointer=checkpointer,
    writer=writer,
    examples_per_step=config.batch_size,
    write_samples=write_samples,
    evaluate=evaluate_step,
    progress=_progress,
    phase_ends=(pre,) if 0 < pre < config.num_train_steps else (),
    phase_of=functools.partial(phase, config),
  )

  checkpointer.wait_until_finished()
  checkpointer.close()
  writer.flush()
  writer.close()
  return state


def _progress(scalars: dict[str, float]) -> str:
  """The losses of the progress line (D's only in the adversarial phase)."""
  line = f"content {scalars['content_loss']:.5f} train PSNR {scalars['train_psnr']:.2f}"
  if "d_loss" in scalars:
    line += (
      f" adv {scalars['adversarial_loss']:.3f} d_loss {scalars['d_loss']:.3f} "
      f"D(x) {scalars['d_real']:.3f} D(G(z)) {scalars['d_fake']:.3f}"
    )
  return line


def _save_evaluation(workdir, config, step: int, values, protocol) -> dict[str, Any]:
  """``WORKDIR/eval/step_NNNNNN.json`` (:func:`ganjax.evaluation.save_evaluation`) with the phase
  and the protocol."""
  from ganjax import evaluation

  result = {"step": step, "phase": phase(config, step), "values": values, "protocol": protocol}
  return evaluation.save_evaluation(workdir, step, result)


# ----------------------------------------------------------------------------------------------
# Using a trained workdir.


def load_trained(workdir: str, step: int | str | None = None):
  """``(config, state, step)`` of a workdir's checkpoint (None: latest, ``"best"``, or N)."""
  config, _ = workdir_lib.read_run(workdir)
  state, step = checkpoint_lib.restore_from_workdir(workdir, step, abstract_state(config))
  return config, state, int(step)


def load(workdir: str, step: int | str | None = None) -> TrainedRun:
  """The SRGAN of ``workdir`` at ``step``; ``upscale`` super-resolves a uint8 RGB image in tiles
  of ``srgan.upscale_tile`` LR pixels (:func:`upscale_array`)."""
  config, state, step = load_trained(workdir, step)
  tile = int(config.srgan.get("upscale_tile", 128))

  def upscale_fn(image: np.ndarray) -> np.ndarray:
    return upscale_array(config, state.generator, image, tile=tile)

  return TrainedRun(workdir, config, step, state, upscale_fn=upscale_fn)


def receptive_radius(config) -> int:
  """LR pixels of context each output pixel of the generator depends on, per side (rounded up).

  9x9 conv (4) + 2 per residual block + the post-block conv (1) + the first upsampling conv (1),
  then each further 3x3 conv at resolution 2^k counts 1 / 2^k LR pixels, and the final 9x9 conv 4 /
  scale.
  """
  blocks = config.model.generator.get("num_blocks", 16)
  stages = int(math.log2(config.scale))
  radius = 4 + 2 * blocks + 1 + sum(1 / 2**k for k in range(stages)) + 4 / config.scale
  return int(math.ceil(radius))


def upscale_array(
  config, state_g, image: np.ndarray, tile: int = 128, margin: int | None = None
) -> np.ndarray:
  """Super-resolves one uint8 ``(H, W, 3)`` image of any size in tiles; returns uint8.

  The image is cut into ``tile`` x ``tile`` LR blocks; each is processed with ``margin`` LR pixels
  of context on every side (clamped at the image border, where the network's own zero padding
  applies as for the whole image) and only the block's own part of the output is kept. With the
  default margin (:func:`receptive_radius`) every output pixel sees exactly the inputs it would
  see in a whole-image pass, so there are no seams, and memory is bounded by the tile size.
  """
  generator, _ = build_networks(config)
  generate = make_generate_fn(generator)
  margin = receptive_radius(config) if margin is None else int(margin)
  s = config.scale
  h, w = image.shape[:2]
  out = np.zeros((h * s, w * s, 3), np.uint8)
  x = preprocessing.to_float(image)
  for top in range(0, h, tile):
    for left in range(0, w, tile):
      bottom, right = min(top + tile, h), min(left + tile, w)
      t0, l0 = max(0, top - margin), max(0, left - margin)
      b0, r0 = min(h, bottom + margin), min(w, right + margin)
      sr = generate(state_g.params, state_g.batch_stats, jnp.asarray(x[None, t0:b0, l0:r0]))
      sr = preprocessing.to_uint8(np.asarray(sr[0]))
      out[top * s : bottom * s, left * s : right * s] = sr[
        (top - t0) * s : (bottom - t0) * s, (left - l0) * s : (right - l0) * s
      ]
  return out


def upscale_file(
  workdir: str, input_path: str, output_path: str, scale: int | None = None, tile: int | None = None
) -> dict[str, str]:
  """``--mode=upscale``: super-resolves ``input_path`` into the PNG ``output_path``.

  Also writes ``<output stem>_compare.png``: bicubic upsampling | SR side by side (4 white pixels
  between). ``scale`` None uses the trained scale; another value fails (the workdir's config fixes
  it). ``tile``: LR tile side (default ``srgan.upscale_tile``).

  Raises:
    FileNotFoundError: the input does not exist (or the workdir has no checkpoint).
    ValueError: the input is not a readable image, or ``scale`` differs from the trained one.

  Returns:
    ``{"output": path, "compare": path}``.
  """
  if os.path.isdir(input_path):
    raise ConfigError(f"--input {input_path!r} is a directory, not an image file.")
  if not os.path.isfile(input_path):
    raise MissingPathError(f"--input image {input_path!r} does not exist.")
  image = preprocessing.decode_image(input_path, channels=3)  # ValueError naming the file.
  config, state, step = load_trained(workdir)
  if scale is not None and int(scale) != config.scale:
    raise ConfigError(
      f"The model in {workdir!r} was trained for x{config.scale}; x{scale} was requested. "
      f"Valid choice for this workdir: {config.scale} (train another config.scale for others)."
    )
  tile = int(tile or config.srgan.get("upscale_tile", 128))
  sr = upscale_array(config, state.generator, image, tile=tile)
  h, w = image.shape[:2]
  bicubic = sr_data.bicubic_resize(image, w * config.scale, h * config.scale)
  gap = np.full((sr.shape[0], 4, 3), 255, np.uint8)
  compare = np.concatenate([bicubic, gap, sr], axis=1)
  stem, _ = os.path.splitext(output_path)
  compare_path = f"{stem}_compare.png"
  os.makedirs(os.path.dirname(os.path.abspath(output_path)) or ".", exist_ok=True)
  Image.fromarray(sr).save(output_path, format="PNG")
  Image.fromarray(compare).save(compare_path, format="PNG")
  logging.info(
    "Wrote %s (%dx%d -> %dx%d, step %d) and %s (bicubic | SR).",
    output_path,
    w,
    h,
    sr.shape[1],
    sr.shape[0],
    step,
    compare_path,
  )
  return {"output": output_path, "compare": compare_path}


def sample_from_workdir(workdir: str, num_samples: int, output: str) -> np.ndarray:
  """``--mode=sample``: LR | bicubic | SR | HR rows for ``num_samples`` held-out crops."""
  config, state, step = load_trained(workdir)
  source = sr_data.create_pair_source(
    config.data, scale=config.scale, seed=config.seed, batch_size=config.batch_size
  )
  held_out = source.held_out()
  generator, _ = build_networks(config)
  lr = preprocessing.to_float(held_out["lr"][:num_samples])
  sr = super_resolve(make_generate_fn(generator), state.generator, lr)
  picture = comparison_picture(held_out, sr, num_samples, config.scale)
  _save_png(output, picture)
  logging.info("Wrote %s (step %d).", output, step)
  return picture


def evaluate_workdir(
  workdir: str, *, step=None, metrics=None, num_samples=None, config_overrides=None
) -> dict[str, Any]:
  """``--mode=evaluate``: held-out PSNR/SSIM/sharpness vs bicubic -> WORKDIR/eval/step_N.json.

  ``step``: None (latest), N, or ``"best"`` (``WORKDIR/checkpoints_best``, kept with
  ``eval_best_metric``). ``num_samples`` keeps the first held-out crops; ``metrics`` and
  ``config_overrides`` of the GAN evaluation do not apply (the held-out set is fixed by the data
  config).
  """
  del metrics, config_overrides
  config, state, step = load_trained(workdir, step)
  source = sr_data.create_pair_source(
    config.data, scale=config.scale, seed=config.seed, batch_size=config.batch_size
  )
  held_out = source.held_out()
  if num_samples:
    held_out = {k: v[:num_samples] for k, v in held_out.items()}
  generator, _ = build_networks(config)
  values = make_evaluator(config, held_out, make_generate_fn(generator))(state)
  return _save_evaluation(workdir, config, step, values, evaluation_protocol(config, held_out))
