r"""Class-conditional GANs: labels reach G and D in the ways of the conditional-GAN literature.

G(z, y) gets the label by a concatenated code (Mirza & Osindero 2014, arXiv:1411.1784) or by
conditional BatchNorm (de Vries et al. 2017; Miyato & Koyama 2018); D(x, y) by concatenation of
one-hot label maps to its input (Mirza & Osindero 2014), a projection head (Miyato & Koyama 2018,
arXiv:1802.05637) or an auxiliary classifier (ACGAN, Odena et al. 2017, arXiv:1610.09585; its
cross-entropy is added to both players' losses with weight ``loss.classifier_weight``). Each fake
is generated for the class of the real example it is judged with, so both batches have the same
classes. Sample grids show one class per row (each column one latent).

  python -m ganjax.main --config=configs/cgan.py --workdir=runs/cgan
  python -m ganjax.main --config=configs/cgan.py:discriminator=acgan,generator=batchnorm \
      --workdir=runs/acgan
  python -m ganjax.main --config=configs/cgan.py:dataset=folder,arch=dcgan \
      --config.data.dir=PATH_WITH_CLASS_SUBFOLDERS --workdir=runs/cgan_folder

Config arguments (after ":"):
  dataset        embedded_mnist (default: the 5,000 digits shipped offline) | mnist |
                 fashion_mnist | cifar10 | folder (class subfolders are the labels; needs
                 --config.data.dir)
  arch           dcgan (default) | mlp (the conditional MLP GAN of Mirza & Osindero)
  generator      concat (default) | batchnorm
  discriminator  projection (default) | concat | acgan
  runlocal       a tiny smoke run (few steps, small networks)
"""

from ganjax.config_base import base_config, parse_arg
from ganjax.models import blocks

# dataset -> (data.name, steps).
_DATASETS = {
  "embedded_mnist": ("embedded_mnist", 3500),
  "mnist": ("mnist", 10000),
  "fashion_mnist": ("fashion_mnist", 10000),
  "cifar10": ("cifar10", 50000),
  "folder": ("folder", 50000),
}
_ARCHS = ("dcgan", "mlp")


def get_config(arg=None):
  arg = parse_arg(
    arg,
    dataset="embedded_mnist",
    arch="dcgan",
    generator="concat",
    discriminator="projection",
    runlocal=False,
  )
  if arg.dataset not in _DATASETS:
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: {', '.join(_DATASETS)}.")
  if arg.arch not in _ARCHS:
    raise ValueError(f"Unknown arch {arg.arch!r}; valid: {', '.join(_ARCHS)}.")
  if arg.generator not in blocks.GENERATOR_CONDITIONING:
    raise ValueError(
      f"Unknown generator conditioning {arg.generator!r}; valid: "
      f"{', '.join(blocks.GENERATOR_CONDITIONING)}."
    )
  if arg.discriminator not in blocks.DISCRIMINATOR_CONDITIONING:
    raise ValueError(
      f"Unknown discriminator conditioning {arg.discriminator!r}; valid: "
      f"{', '.join(blocks.DISCRIMINATOR_CONDITIONING)}."
    )
  data_name, num_steps = _DATASETS[arg.dataset]
  config = base_config()
  config.data.name = data_name
  config.num_train_steps = num_steps
  config.batch_size = 64
  config.log_every_steps = 50
  config.sample_every_steps = 250
  config.checkpoint_every_steps = 250
  # 10 samples per class: a 10 x 10 grid for 10 classes.
  config.num_sample_images = 100

  config.model.name = arg.arch
  config.model.conditional = True
  # num_classes comes from the data; these choose how the labels enter each network.
  config.model.generator.conditioning = arg.generator
  config.model.discriminator.conditioning = arg.discriminator
  if arg.arch == "dcgan":
    config.model.latent_dim = 100
    # The quickstart's half width on MNIST (see configs/dcgan.py); seed width 64 elsewhere.
    width = 32 if arg.dataset == "embedded_mnist" else 64
    config.model.generator.width = width
    config.model.discriminator.width = width
  else:
    # The MLP GAN of the seed tutorials (ganjax.models.mlp), conditioned.
    config.model.latent_dim = 64
    config.model.generator.hidden = (256, 512, 1024)
    config.model.discriminator.hidden = (512, 256, 128)
  # Weight of the ACGAN class loss (used with discriminator=acgan only).
  config.loss.classifier_weight = 1.0
  config.loss.name = "non_saturating"
  config.optim.g.learning_rate = 2e-4
  config.optim.d.learning_rate = 2e-4
  config.ema.decay = 0.999

  if arg.runlocal:
    config.num_train_steps = 6
    config.batch_size = 16
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_sample_images = 20
    if arg.arch == "dcgan":
      config.model.generator.width = 8
      config.model.discriminator.width = 8
    else:
      config.model.generator.hidden = (32,)
      config.model.discriminator.hidden = (32,)
  return config
