r"""SNGAN (Miyato et al. 2018): spectrally normalised discriminator, hinge loss, CIFAR-10.

Reference: Miyato, Kataoka, Koyama, Yoshida, "Spectral Normalization for Generative Adversarial
Networks", ICLR 2018, arXiv:1802.05957.

  python -m ganjax.main --config=configs/sngan.py --workdir=runs/sngan
  python -m ganjax.main --config=configs/sngan.py:dataset=folder --workdir=runs/sngan \
      --config.data.dir=../shared/data/cifar10-jpeg/cifar10-jpeg-images.tar.gz

The default is the ResNet of Table 4 (``ganjax.models.resnet``: G 256 channels, 4,276,739
parameters; D 128 channels, 1,053,825 parameters) with the authors' CIFAR-10 ResNet training
setting: hinge loss, Adam(lr 2e-4, b1 0, b2 0.9) for both networks, n_critic = 5 discriminator
updates (each on its own batch of 64) per generator update, z ~ N(0, I) of size 128, 50,000
generator updates. Not reproduced: the authors decay both learning rates linearly to 0 over the
run and give the generator update a batch of 128; here the rates are constant and the generator
update uses one batch of 64. No EMA of G's weights (as in the paper).

``arch=sndcgan`` uses the standard CNN of Table 3 (``ganjax.models.sndcgan``, w = 64) with the
same training setting; the paper swept the settings of its Table 1 for that network (e.g.
``--config.n_critic=1 --config.optim.g.b1=0.5 --config.optim.g.b2=0.999`` and the same for
``optim.d`` is its setting C).

Config arguments (after ":"), e.g. ``configs/sngan.py:arch=sndcgan,runlocal``:
  dataset   cifar10 (default, TFDS) | folder (an image folder or .tar.gz in --config.data.dir,
            e.g. ../shared/data/cifar10-jpeg/cifar10-jpeg-images.tar.gz; resized to 32x32).
  arch      resnet (default) | sndcgan.
  runlocal  a tiny smoke run (few steps, widths 8-16, batch 8).
"""

from ganjax.config_base import base_config, parse_arg

# dataset -> (data.name, image_size); CIFAR-10 is 32x32 already.
_DATASETS = {
  "cifar10": ("cifar10", None),
  "folder": ("folder", 32),
}

# arch -> (model.name, generator width, discriminator width) at the paper's sizes.
_ARCHS = {
  "resnet": ("resnet", 256, 128),
  "sndcgan": ("sndcgan", 64, 64),
}


def get_config(arg=None):
  arg = parse_arg(arg, dataset="cifar10", arch="resnet", runlocal=False)
  if arg.dataset not in _DATASETS:
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: {', '.join(_DATASETS)}.")
  if arg.arch not in _ARCHS:
    raise ValueError(f"Unknown arch {arg.arch!r}; valid: {', '.join(_ARCHS)}.")
  data_name, image_size = _DATASETS[arg.dataset]
  model_name, g_width, d_width = _ARCHS[arg.arch]
  config = base_config()
  # CIFAR-10 from TFDS, or an image folder / archive (--config.data.dir).
  config.data.name = data_name
  # None keeps CIFAR-10's 32x32; folders are resized to 32x32 (the models' 32-pixel layouts).
  config.data.image_size = image_size
  # Generator updates (the paper's 50k for the ResNet on CIFAR-10).
  config.num_train_steps = 50000
  # Batch of each discriminator update (and of the generator update), as in the paper.
  config.batch_size = 64
  # Discriminator updates per generator update (n_dis = 5).
  config.n_critic = 5
  # Scalars every this many generator steps.
  config.log_every_steps = 100
  # Sample grids every this many generator steps.
  config.sample_every_steps = 1000
  # Checkpoints every this many generator steps.
  config.checkpoint_every_steps = 1000

  # ganjax.models.resnet (Table 4) or ganjax.models.sndcgan (Table 3).
  config.model.name = model_name
  # z ~ N(0, I) of size 128.
  config.model.latent_dim = 128
  # Generator channel multiplier (ResNet: channels of every block; standard CNN: 8w-4w-2w-w).
  config.model.generator.width = g_width
  # Discriminator channel multiplier (ResNet: channels of every block; standard CNN: w..8w).
  config.model.discriminator.width = d_width
  # Spectral normalisation on every discriminator layer (the paper's method).
  config.model.discriminator.spectral_norm = True
  # No spectral normalisation in the generator (as in the paper).
  config.model.generator.spectral_norm = False
  # Hinge loss: D relu(1 - D(x)) + relu(1 + D(G(z))), G -D(G(z)).
  config.loss.name = "hinge"
  # Adam(2e-4, b1=0, b2=0.9) for both networks (the paper's ResNet setting; constant rate).
  for optim in (config.optim.g, config.optim.d):
    optim.name = "adam"  # Adam (Kingma & Ba 2015).
    optim.learning_rate = 2e-4  # alpha.
    optim.b1 = 0.0  # beta1.
    optim.b2 = 0.9  # beta2.
  # No EMA of the generator's weights (the paper uses none).
  config.ema.decay = 0.0

  if arg.runlocal:
    config.num_train_steps = 4
    config.batch_size = 8
    config.log_every_steps = 2
    config.sample_every_steps = 2
    config.checkpoint_every_steps = 2
    config.num_sample_images = 16
    config.model.generator.width = 16
    config.model.discriminator.width = 8
  return config
