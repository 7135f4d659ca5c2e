r"""MLP GAN on the 2-D Gaussian mixtures of the mode-collapse literature (PacGAN protocol data).

ring: 8 Gaussians on a circle of radius 1, sigma 0.01; grid: 25 Gaussians at {-4,-2,0,2,4}^2,
sigma 0.05. Samples are drawn as scatter plots over the real data.

  python -m ganjax.main --config=configs/gaussian_mixture.py:dataset=ring --workdir=runs/ring
  python -m ganjax.main --config=configs/gaussian_mixture.py:dataset=grid --workdir=runs/grid

Config arguments: dataset=ring (default) | grid; runlocal.
"""

from ganjax.config_base import base_config, parse_arg


def get_config(arg=None):
  arg = parse_arg(arg, dataset="ring", runlocal=False)
  if arg.dataset not in ("ring", "grid"):
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: ring, grid.")
  config = base_config()
  config.data.name = arg.dataset
  config.num_train_steps = 10000
  config.batch_size = 500
  config.log_every_steps = 500
  config.sample_every_steps = 2000
  config.checkpoint_every_steps = 2000
  # Points in each scatter plot (the mode-coverage protocol evaluates 2,500 samples).
  config.num_sample_images = 2500

  config.model.name = "mlp"
  config.model.latent_dim = 2
  config.model.generator.hidden = (400, 400, 400, 400)
  config.model.generator.batch_norm = False
  config.model.generator.leaky_slope = 0.2
  # Points are raw coordinates (the grid spans [-4, 4]), so no tanh.
  config.model.generator.output_activation = "linear"
  config.model.discriminator.hidden = (200, 200, 200)
  config.model.discriminator.leaky_slope = 0.2
  config.model.discriminator.dropout = 0.0
  config.loss.name = "non_saturating"
  config.optim.g = dict(name="adam", learning_rate=1e-4, b1=0.5, b2=0.999)
  config.optim.d = dict(name="adam", learning_rate=1e-4, b1=0.5, b2=0.999)

  if arg.runlocal:
    config.num_train_steps = 6
    config.batch_size = 32
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.num_sample_images = 64
    config.model.generator.hidden = (16, 16)
    config.model.discriminator.hidden = (16, 16)
  return config
