r"""MLP GAN on the 2-D Gaussian mixtures of the mode-collapse literature (PacGAN protocol data).

ring: 8 Gaussians on a circle of radius 1, sigma 0.01; grid: 25 Gaussians at {-4,-2,0,2,4}^2,
sigma 0.05. Samples are drawn as scatter plots over the real data. Mode coverage (``modes``,
``hq_fraction``, ``reverse_kl`` of 2,500 samples; Srivastava et al. 2017, Lin et al. 2018) is
written to ``metrics.jsonl`` and TensorBoard every 1/10 of training and at the end.

Protocol (sized so that a run takes about 1-2 minutes on one CPU core; the study of every method
is ``experiments/mode_collapse_2d/run.py``): 5,000 steps at batch 256; G: 2-d latent, 3 x 256
LeakyReLU(0.2), linear output; D: 3 x 200 LeakyReLU(0.2); Adam(3e-4, b1 0.5) for both with the
learning rate decayed linearly to 0; samples and evaluations use the generator EMA (0.999).

  python -m ganjax.main --config=configs/gaussian_mixture.py:dataset=ring --workdir=runs/ring
  python -m ganjax.main --config=configs/gaussian_mixture.py:dataset=grid,method=pacgan2 \
      --workdir=runs/grid_pacgan2

Config arguments: dataset=ring (default) | grid; method= one of
  gan                       plain non-saturating GAN (Goodfellow et al. 2014), the default;
  pacgan2, pacgan3, pacgan4 PacGAN: D judges packs of 2/3/4 samples (Lin et al. 2018); the batch
                            is rounded down to a multiple of the pack (pacgan3: 255);
  unrolled5                 unrolled GAN, G looks through 5 D updates (Metz et al. 2017);
  minibatch_discrimination  minibatch discrimination in D (Salimans et al. 2016);
  mbstd                     minibatch standard deviation in D (Karras et al. 2018);
  wgan_gp                   WGAN-GP, n_critic 5, Adam b2 0.9 (Gulrajani et al. 2017);
and runlocal (a few steps of tiny networks).
"""

from ganjax.config_base import base_config, parse_arg

# The methods of the 2-D mode-collapse study (config argument ``method=``).
METHODS = (
    "gan",
    "pacgan2",
    "pacgan3",
    "pacgan4",
    "unrolled5",
    "minibatch_discrimination",
    "mbstd",
    "wgan_gp",
)


def get_config(arg=None):
  arg = parse_arg(arg, dataset="ring", method="gan", runlocal=False)
  if arg.dataset not in ("ring", "grid"):
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: ring, grid.")
  if arg.method not in METHODS:
    raise ValueError(f"Unknown method {arg.method!r}; valid: {', '.join(METHODS)}.")
  config = base_config()
  config.data.name = arg.dataset
  config.num_train_steps = 5000
  config.batch_size = 256
  config.log_every_steps = 500
  config.sample_every_steps = 2500
  config.checkpoint_every_steps = 2500
  # Points in each scatter plot (the mode-coverage protocol evaluates 2,500 samples).
  config.num_sample_images = 2500
  # Mode coverage every 1/10 of training (and at the end).
  config.eval_every_steps = 500
  # Samples per mode-coverage evaluation (the PacGAN protocol's 2,500).
  config.eval_num_samples = 2500

  config.model.name = "mlp"
  config.model.latent_dim = 2
  config.model.generator.hidden = (256, 256, 256)
  config.model.generator.batch_norm = False
  config.model.generator.leaky_slope = 0.2
  # Points are raw coordinates (the grid spans [-4, 4]), so no tanh.
  config.model.generator.output_activation = "linear"
  config.model.discriminator.hidden = (200, 200, 200)
  config.model.discriminator.leaky_slope = 0.2
  config.model.discriminator.dropout = 0.0
  config.loss.name = "non_saturating"
  config.optim.g = dict(name="adam", learning_rate=3e-4, b1=0.5, b2=0.999, schedule="linear")
  config.optim.d = dict(name="adam", learning_rate=3e-4, b1=0.5, b2=0.999, schedule="linear")
  # Samples and evaluations use the EMA of G's weights (with warm-up).
  config.ema.decay = 0.999

  if arg.runlocal:
    config.num_train_steps = 6
    config.batch_size = 32
    config.log_every_steps = 2
    config.sample_every_steps = 3
    config.checkpoint_every_steps = 3
    config.eval_every_steps = 3
    config.num_sample_images = 64
    config.model.generator.hidden = (16, 16)
    config.model.discriminator.hidden = (16, 16)

  if arg.method.startswith("pacgan"):
    # PacGAN: D sees this many samples per input; the batch must divide into packs.
    config.model.pack = int(arg.method[len("pacgan") :])
    config.batch_size -= config.batch_size % config.model.pack
  elif arg.method == "unrolled5":
    # G's loss looks through 5 differentiable D updates (Metz et al. 2017).
    config.unrolled_steps = 5
  elif arg.method == "minibatch_discrimination":
    # Minibatch discrimination before D's last layer (ganjax.models.mlp.Discriminator).
    config.model.discriminator.minibatch = arg.method
    # Number of kernels B of the minibatch features. Salimans et al. 2016 use 100 for images;
    # the cost is O(batch^2 B C), and 100 kernels take ~50 min per 2-D run on one core, so 32.
    config.model.discriminator.minibatch_kernels = 32
    # Dimension C of each kernel (Salimans et al. 2016: 5).
    config.model.discriminator.minibatch_kernel_dim = 5
  elif arg.method == "mbstd":
    # Minibatch standard deviation before D's last layer (ganjax.models.mlp.Discriminator).
    config.model.discriminator.minibatch = arg.method
    # Examples per standard-deviation group (Karras et al. 2018: 4); must divide the batch.
    config.model.discriminator.mbstd_group_size = 4
  elif arg.method == "wgan_gp":
    # Gulrajani et al. 2017, Algorithm 1: gradient penalty 10 (implied), 5 critic updates,
    # Adam b2 0.9 (the learning rate and schedule stay the protocol's).
    config.loss.name = "wgan_gp"
    config.n_critic = 5
    config.optim.g.b2 = 0.9
    config.optim.d.b2 = 0.9
  return config
