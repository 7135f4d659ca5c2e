r"""The MLP GAN of the seed tutorials (Goodfellow et al. 2014 architecture family) on MNIST digits.

G: z 64 -> 256 -> 512 -> 1024 -> 784 with BatchNorm + LeakyReLU(0.2) and tanh;
D: 784 -> 512 -> 256 -> 128 -> 1 with LeakyReLU(0.1) and dropout 0.2.

  python -m ganjax.main --config=configs/vanilla_gan.py --workdir=runs/gan

Config arguments: dataset=embedded_mnist (default) | mnist | fashion_mnist; runlocal.
"""

from ganjax.config_base import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="embedded_mnist", runlocal=False)
  valid = ("embedded_mnist", "mnist", "fashion_mnist")
  if arg.dataset not in valid:
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: {', '.join(valid)}.")
  config = base_config()
  config.data.name = arg.dataset
  config.num_train_steps = 5000
  config.batch_size = 64
  config.log_every_steps = 100
  config.sample_every_steps = 1000
  config.checkpoint_every_steps = 1000

  config.model.name = "mlp"
  config.model.latent_dim = 64
  config.model.generator.hidden = (256, 512, 1024)
  config.model.generator.batch_norm = True
  config.model.generator.leaky_slope = 0.2
  config.model.generator.output_activation = "tanh"
  config.model.discriminator.hidden = (512, 256, 128)
  config.model.discriminator.leaky_slope = 0.1
  config.model.discriminator.dropout = 0.2
  config.loss.name = "non_saturating"
  config.optim.g.learning_rate = 2e-4
  config.optim.d.learning_rate = 2e-4

  if arg.runlocal:
    config.num_train_steps = 6
    config.batch_size = 16
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_sample_images = 16
    config.model.generator.hidden = (32, 32)
    config.model.discriminator.hidden = (32, 32)
  return config
