r"""MLP GAN on the 2-D Gaussian mixtures of the mode-collapse literature (PacGAN protocol data).

ring: 8 Gaussians on a circle of radius 1, sigma 0.01; grid: 25 Gaussians at {-4,-2,0,2,4}^2,
sigma 0.05. Samples are drawn as scatter plots over the real data. Mode coverage (``modes``,
``hq_fraction``, ``reverse_kl`` of 2,500 samples; Srivastava et al. 2017, Lin et al. 2018) is
written to ``metrics.jsonl`` and TensorBoard every 1/10 of training and at the end.

Protocol (sized so that a run takes about 2 minutes on one CPU core; the study of every method
is ``experiments/mode_collapse_2d/run.py``): 10,000 steps at batch 100; G: 2-d latent, 3 x 256
LeakyReLU(0.2), linear output; D: 3 x 128 maxout units of 5 pieces with N(0, 0.02^2) kernels (the
VEEGAN/PacGAN discriminator); Adam(1e-3, b1 0.5) for both with the learning rate decayed linearly
to 0; samples and evaluations use the generator EMA (0.999). The methods that cost more per step
train for fewer steps so that every run stays within 3 minutes (``STEPS``).

  python -m ganjax.main --config=configs/gaussian_mixture.py:dataset=ring --workdir=runs/ring
  python -m ganjax.main --config=configs/gaussian_mixture.py:dataset=grid,method=pacgan2 \
      --workdir=runs/grid_pacgan2

Config arguments: dataset=ring (default) | grid; method= one of
  gan                       plain non-saturating GAN (Goodfellow et al. 2014), the default;
  pacgan2, pacgan3, pacgan4 PacGAN: D judges packs of 2/3/4 samples (Lin et al. 2018); the batch
                            is rounded down to a multiple of the pack (pacgan3: 99);
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

# Generator steps of each method. The methods that cost more per step train for fewer steps, so
# that every run of the study stays within 3 minutes on one core (2-core AMD EPYC VM, this
# protocol: plain GAN ~110 steps/s; minibatch discrimination ~1.3x, WGAN-GP with 5 critic
# updates ~4x and unrolled5 ~6x its cost per step).
STEPS = {"minibatch_discrimination": 8000, "wgan_gp": 4000, "unrolled5": 2500}
DEFAULT_STEPS = 10000


def get_config(arg=None):
  arg = parse_arg(arg, dataset="ring", method="gan", runlocal=False)
  if arg.dataset not in ("ring", "grid"):
    raise ValueError(f"Unknown dataset {arg.dataset!r}; valid: ring, grid.")
  if arg.method not in METHODS:
    raise ValueError(f"Unknown method {arg.method!r}; valid: {', '.join(METHODS)}.")
  config = base_config()
  config.data.name = arg.dataset
  config.num_train_steps = STEPS.get(arg.method, DEFAULT_STEPS)
  config.batch_size = 100
  config.log_every_steps = 500
  config.sample_every_steps = config.num_train_steps // 2
  config.checkpoint_every_steps = config.num_train_steps // 2
  # Points in each scatter plot (the mode-coverage protocol evaluates 2,500 samples).
  config.num_sample_images = 2500
  # Mode coverage every 1/10 of training (and at the end).
  config.eval_every_steps = config.num_train_steps // 10
  # Samples per mode-coverage evaluation (the PacGAN protocol's 2,500).
  config.eval_num_samples = 2500

  config.model.name = "mlp"
  config.model.latent_dim = 2
  config.model.generator.hidden = (256, 256, 256)
  config.model.generator.batch_norm = False
  config.model.generator.leaky_slope = 0.2
  # Points are raw coordinates (the grid spans [-4, 4]), so no tanh.
  config.model.generator.output_activation = "linear"
  config.model.discriminator.hidden = (128, 128, 128)
  config.model.discriminator.leaky_slope = 0.2
  config.model.discriminator.dropout = 0.0
  # Maxout hidden units of this many pieces (VEEGAN/PacGAN's D: 5); 1 = LeakyReLU units.
  config.model.discriminator.maxout_pieces = 5
  # Dense kernels ~ N(0, std^2) (VEEGAN/PacGAN: 0.02); None = LeCun normal.
  config.model.discriminator.kernel_init_std = 0.02
  config.loss.name = "non_saturating"
  config.optim.g = dict(name="adam", learning_rate=1e-3, b1=0.5, b2=0.999, schedule="linear")
  config.optim.d = dict(name="adam", learning_rate=1e-3, b1=0.5, b2=0.999, schedule="linear")
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
    # G differentiates through D's Adam updates; a maxout piece that no input selects has an
    # exactly zero gradient, and d sqrt(v) / dv at v = 0 is infinite (0 * inf = NaN). eps_root
    # inside the square root (optax) keeps it finite; 1e-16 = (Adam's eps 1e-8)^2.
    config.optim.d.eps_root = 1e-16
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
