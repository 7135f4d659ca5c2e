r"""The loss study of Lucic et al. 2018 on MNIST and Fashion-MNIST: one loss at its default setting.

Reference: Lucic, Kurach, Michalski, Gelly, Bousquet, "Are GANs Created Equal? A Large-Scale
Study", NeurIPS 2018, arXiv:1711.10337; its code, google/compare_gan (first release:
``src/gan_lib.py``, ``src/params.py``, ``src/generate_tasks_lib.py``, ``src/gans/*.py``).

  python -m ganjax.main --config=configs/gans_created_equal.py:loss=wgan_gp \
      --config.data.dir=../shared/data/mnist --workdir=runs/gce_mnist_wgan_gp
  python -m ganjax.main --config=configs/gans_created_equal.py:dataset=fashion_mnist,loss=ns \
      --config.data.dir=/usr/share/datasets/fashion-mnist --workdir=runs/gce_fashion_ns

Fixed here, as in the study: the InfoGAN networks (``ganjax.models.infogan``), z of 64, batch 64,
Adam with b2 0.999 and one learning rate for both networks, constant, no EMA of G, and 20 epochs
of the 60,000 training images, i.e. 18,750 discriminator updates (compare_gan counts a step per
discriminator update; here a step is one generator update with ``n_critic`` discriminator updates,
so ``num_train_steps`` = 18,750 / ``n_critic``; compare_gan's tuning tasks counted an epoch as
50,000 images, 15,625 updates).

Searched by the study's sweep (not by this config), wide range (narrow range in brackets): the
learning rate, log-uniform in [1e-5, 1e-2] ([1e-4, 1e-3]); Adam b1 in [0, 1] ([0.5]); n_critic in
{1, ..., 5} ({1}); batch norm in D or none ({BN, none} for MM, NS, LSGAN, WGAN; none for WGAN-GP and
DRAGAN); WGAN's clipping log-uniform in [1e-3, 1] ([1e-2, 1]); the penalty weight lambda of WGAN-GP
and DRAGAN log-uniform in [0.1, 100] ([0.1, 10]; DRAGAN's regularizer.dragan is lambda / 2). The
defaults below are compare_gan's (``params.py``).

Not reproduced: compare_gan draws z from U(-1, 1) (here N(0, I)); its LSGAN squares sigmoid(D)
rather than D; its DRAGAN penalises the gradient of sigmoid(D) at a random point between x and
its perturbation (here of the logit at the perturbation); BatchNorm eps 1e-3 (here 1e-5).

Config arguments (after ":"), e.g. ``configs/gans_created_equal.py:loss=dragan,runlocal``:
  dataset   mnist (default) | fashion_mnist. Full data from IDX files in --config.data.dir
            (MNIST: ../shared/data/mnist; Fashion-MNIST: /usr/share/datasets/fashion-mnist, from
            Debian's dataset-fashion-mnist package), else TFDS.
  loss      mm | ns (default) | lsgan | wgan | wgan_gp | dragan (see LOSSES).
  runlocal  a tiny smoke run (few steps, tiny widths).
"""

from ganjax.config_base import base_config, parse_arg
from ganjax.errors import ConfigError

DATASETS = ("mnist", "fashion_mnist")

# loss -> (loss.name, learning rate, Adam b1, n_critic, D normalisation, regularizer weights):
# compare_gan's defaults (src/params.py: *HyperParams, UpdateDefaults; the penalty weight "lambda"
# and WGAN's "weight_clipping"). D normalisation: its "discriminator_batchnorm" (DRAGAN's default
# is batch norm, but its narrowed search fixes "none", as for WGAN-GP: batch norm makes a gradient
# penalty couple the examples of a batch).
LOSSES = {
  # MM GAN: the saturating minimax game (Goodfellow et al. 2014).
  "mm": ("minimax", 5e-5, 0.0, 1, "batch_norm", {}),
  # NS GAN: the non-saturating generator loss (Goodfellow et al. 2014).
  "ns": ("non_saturating", 5e-5, 0.0, 1, "batch_norm", {}),
  # LSGAN, a=0, b=1, c=1 (Mao et al. 2017).
  "lsgan": ("least_squares", 2e-4, 0.5, 1, "batch_norm", {}),
  # WGAN with the critic's weights clipped to [-0.01, 0.01] (Arjovsky et al. 2017), with Adam.
  "wgan": ("wgan", 5e-5, 0.5, 5, "batch_norm", {"weight_clip": 0.01}),
  # WGAN-GP, gradient penalty 10 (Gulrajani et al. 2017).
  "wgan_gp": ("wgan_gp", 1e-4, 0.5, 5, "none", {"gradient_penalty": 10.0}),
  # DRAGAN: the NS GAN with a penalty around perturbed real data (Kodali et al. 2017). compare_gan's
  # lambda 10 weighs the sum of the two cross-entropies, ganjax's D loss is their mean: 5 here.
  "dragan": ("non_saturating", 1e-4, 0.5, 1, "none", {"dragan": 5.0}),
}

# runlocal: three steps of tiny networks, every step logged, samples and a checkpoint at the end.
RUNLOCAL = {
  "num_train_steps": 3,
  "batch_size": 8,
  "log_every_steps": 1,
  "sample_every_steps": 3,
  "checkpoint_every_steps": 3,
  "num_sample_images": 16,
  "model.generator.hidden": 16,
  "model.generator.width": 4,
  "model.discriminator.hidden": 16,
  "model.discriminator.width": 4,
}

EPOCHS = 20
TRAIN_EXAMPLES = 60_000
BATCH_SIZE = 64


def get_config(arg=None):
  arg = parse_arg(arg, dataset="mnist", loss="ns", runlocal=False)
  for what, value, valid in (("dataset", arg.dataset, DATASETS), ("loss", arg.loss, tuple(LOSSES))):
    if value not in valid:
      raise ConfigError(f"Unknown {what} {value!r}; valid choices: {', '.join(valid)}.")
  loss_name, learning_rate, b1, n_critic, normalization, weights = LOSSES[arg.loss]
  config = base_config()
  # MNIST-format IDX files in data.dir (the datasets' full 60,000 training images), else TFDS.
  config.data.name = arg.dataset
  # Images per discriminator update (and per generator update): 64 in the study.
  config.batch_size = BATCH_SIZE
  # Discriminator updates per generator update, each on its own batch.
  config.n_critic = n_critic
  # Generator steps: 20 epochs of the training images = 18,750 discriminator updates.
  config.num_train_steps = EPOCHS * TRAIN_EXAMPLES // (BATCH_SIZE * n_critic)
  # Scalars every this many generator steps.
  config.log_every_steps = 100
  # Sample grids every epoch.
  config.sample_every_steps = TRAIN_EXAMPLES // (BATCH_SIZE * n_critic)
  # Checkpoints every epoch.
  config.checkpoint_every_steps = TRAIN_EXAMPLES // (BATCH_SIZE * n_critic)

  # ganjax.models.infogan: the InfoGAN networks of the study for MNIST-like data.
  config.model.name = "infogan"
  # Size of z, 64 for every GAN of the study (compare_gan draws it from U(-1, 1); here N(0, I)).
  config.model.latent_dim = 64
  # Units of G's first dense layer.
  config.model.generator.hidden = 1024
  # Channels of G's 14x14 map (its 7x7 map has twice as many).
  config.model.generator.width = 64
  # Units of D's hidden dense layer.
  config.model.discriminator.hidden = 1024
  # Channels of D's first convolution (the second has twice as many).
  config.model.discriminator.width = 64
  # Normalisation of D's second and third layers: batch_norm | layer_norm | none.
  config.model.discriminator.normalization = normalization

  # The adversarial objective in ganjax/losses.py.
  config.loss.name = loss_name
  # Adam for G, with the loss's default learning rate and b1 (the sweep searches both).
  config.optim.g = dict(
    name="adam", learning_rate=learning_rate, b1=b1, b2=0.999, schedule="constant"
  )
  # Adam for D, the same setting as G's (the study uses one learning rate for both).
  config.optim.d = dict(
    name="adam", learning_rate=learning_rate, b1=b1, b2=0.999, schedule="constant"
  )
  # The loss's penalty weight or WGAN's clipping (config.regularizer; the sweep searches it).
  for name, weight in weights.items():
    config.regularizer[name] = weight

  if arg.runlocal:
    config.update_from_flattened_dict(RUNLOCAL)
  return config
