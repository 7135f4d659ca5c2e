r"""SRResNet / SRGAN single-image super-resolution (Ledig et al. 2017, arXiv:1609.04802).

The default trains x4 SRResNet (pixel MSE) and then SRGAN (content + 1e-3 adversarial) on random
crops of the photographs shipped inside scikit-image (offline), evaluated on held-out photos
(chelsea, coffee) against bicubic upsampling, sized for one CPU core (about 20 minutes):

  python -m ganjax.main --config=configs/srgan.py --workdir=runs/srgan
  python -m ganjax.main --mode=upscale --workdir=runs/srgan --input=photo.png --output=photo_x4.png

``config.task = "srgan"`` makes ganjax.main call ``ganjax.systems.srgan.train_and_evaluate``.

CPU default vs the paper: 48x48 HR crops (paper: 96), batch 16, 32 features and 8 residual
blocks (paper: 64 and 16) plus a bicubic skip to the output (VDSR-style, not in the paper),
5,000 SRResNet steps at Adam 4e-4 with a cosine decay to 2e-5 (paper: 1e-4 for 1e6 updates),
then 1,000 SRGAN steps at 1e-4 with a discriminator of width 16 (paper: 64, 1e5 + 1e5 updates at
1e-4 and 1e-5).

Documented result (the defaults, 2026-11-26, jax 0.10.2 on the 2-core CPU machine, pinned to one
core that other jobs also used at times):

  taskset -c 1 nice -n 19 timeout 2100 python -m ganjax.main --config=configs/srgan.py \
      --workdir=/tmp/srgan_run2

Held-out: 48 crops of 96x96 (chelsea, coffee; never trained on), LR = Pillow BICUBIC x4
downsampling, SR clipped and rounded to uint8, 4 pixels shaved per border; PSNR/SSIM on RGB
(SSIM: 11x11 Gaussian, sigma 1.5), PSNR-Y on BT.601 luma; sharpness = mean luma gradient of the
output / of HR (WORKDIR/metrics.jsonl, WORKDIR/eval/step_N.json). Bicubic: PSNR 28.60 dB, SSIM
0.7427, PSNR-Y 30.16 dB, sharpness 0.345.

  step  phase     PSNR   vs bicubic  SSIM    PSNR-Y  sharpness  wall     steps/s
  500   SRResNet  29.22  +0.62 dB    0.7559  30.85   0.462       3.0 min  8.6
  1000  SRResNet  29.54  +0.94 dB    0.7649  31.21   0.449       4.6 min  5.0
  1500  SRResNet  29.62  +1.01 dB    0.7669  31.30   0.425       6.4 min  4.3
  2500  SRResNet  29.77  +1.17 dB    0.7706  31.48   0.439       9.7 min  6.9
  3500  SRResNet  29.80  +1.20 dB    0.7728  31.53   0.443      13.0 min  7.1
  5000  SRResNet  29.82  +1.22 dB    0.7740  31.55   0.444      17.0 min  8.5
  5500  SRGAN     29.37  +0.77 dB    0.7502  31.29   0.507      18.6 min  5.8
  6000  SRGAN     29.04  +0.44 dB    0.7459  31.08   0.504      20.0 min  5.9

(steps/s over the last 100 steps; 8.5 steps/s pre-training and about 5.9 adversarial when the
core was free, 4-5 when shared.) The whole run took 20m04s wall, 11.4 min user + 2.1 min system
CPU. SRResNet (pixel MSE) passes bicubic by 1 dB from step 1,500 and ends 1.22 dB above it;
SRGAN fine-tuning then trades PSNR/SSIM for texture (sharpness 0.44 -> 0.50; HR is 1.0), as in
Ledig et al. ``--mode=upscale`` of skimage.data.astronaut() (512x512 -> 2048x2048, an image of
the training pool) with the step-6000 checkpoint took 16 s wall (14 s CPU, 128-pixel tiles).
``:paper`` selects the paper's sizes and learning rates (crops 96,
F 64, B 16, D width 64; a GPU job):

  python -m ganjax.main --config=configs/srgan.py:paper --workdir=runs/srgan_paper

Config arguments (after ":"), e.g. ``configs/srgan.py:scale=2,dataset=folder,runlocal``:
  scale     4 (default) | 2.
  dataset   skimage (default; offline) | folder (--config.data.dir=IMAGE_FOLDER; train/ and
            test/ subfolders, else the last data.num_eval_images files are held out) | any TFDS
            image dataset name (held out: data.eval_split).
  paper     the paper's network sizes, crops and schedule.
  runlocal  a tiny smoke run (few steps, tiny networks).
"""

import ml_collections
from ml_collections import config_dict

from ganjax.config_base import add_parallelism, parse_arg, run_config


def get_config(arg=None):
  arg = parse_arg(arg, scale=4, dataset="skimage", paper=False, runlocal=False)
  config = run_config()
  add_parallelism(config)
  # What ganjax.main runs: "srgan" -> ganjax.systems.srgan.train_and_evaluate.
  config.task = "srgan"
  # Upscaling factor (2 or 4): HR side / LR side.
  config.scale = arg.scale
  # Total training steps: SRResNet pre-training (srgan.pretrain_steps) + SRGAN fine-tuning.
  config.num_train_steps = 6000
  # Global batch size of HR/LR crop pairs.
  config.batch_size = 16
  # Evaluate on the held-out set every this many steps (also at the end of each phase).
  config.eval_every_steps = 500
  # Keep the checkpoint with the best value of this evaluation metric (psnr, ssim, ...) in
  # WORKDIR/checkpoints_best; None = only the latest checkpoints.
  config.eval_best_metric = config_dict.placeholder(str)
  # Write LR | bicubic | SR | HR pictures of held-out crops every this many steps.
  config.sample_every_steps = 500
  # Held-out crops shown in each sample picture.
  config.num_sample_images = 4

  # Image source: skimage (photos in scikit-image, offline) | folder | a TFDS name; data.dir is
  # the image folder / .tar.gz (folder) or TFDS data_dir; data.image_size resizes TFDS and other
  # sources' images to that square size first.
  config.data.name = arg.dataset
  # Split held out for evaluation (folder with train/ and test/, TFDS).
  config.data.eval_split = "test"
  # Folder without splits: hold out this many images (the last files, sorted); the maximum used
  # from an eval split.
  config.data.num_eval_images = 64
  # Side of the HR training crops; must divide by the scale.
  config.data.crop_size = 48
  # Side of the held-out HR crops (tiles of the held-out images; capped by their size).
  config.data.eval_crop_size = 96
  # At most this many held-out crops (evenly spaced over the held-out images).
  config.data.eval_max_crops = 48
  # Mirror training crops left-right with probability 1/2.
  config.data.flip = True
  # skimage: also train on its grayscale photos (camera, coins, moon, brick, grass, gravel) as RGB.
  config.data.skimage_grayscale = True

  config.model = ml_collections.ConfigDict()
  # Keyword arguments of ganjax.models.srgan.Generator (besides the scale): hidden channels F and
  # residual blocks B (paper: 64 and 16).
  # upsample_skip: add the bicubic upsampling to the output (VDSR-style global residual; not in
  # the paper, off with :paper) so the short CPU run passes bicubic quickly.
  config.model.generator = ml_collections.ConfigDict(
    {"features": 32, "num_blocks": 8, "upsample_skip": True}
  )
  # Keyword arguments of ganjax.models.srgan.Discriminator: first conv width (paper: 64) and the
  # hidden dense layer (paper: 1024).
  config.model.discriminator = ml_collections.ConfigDict({"width": 16, "dense_features": 256})

  config.srgan = ml_collections.ConfigDict()
  # Steps of SRResNet pre-training on the content loss alone, before adversarial fine-tuning.
  config.srgan.pretrain_steps = 5000
  # Weight of the generator's adversarial loss -log D(G(lr)) (paper: 1e-3).
  config.srgan.adversarial_weight = 1e-3
  # VGG19 weights (.npz, see ganjax.systems.srgan.load_vgg19) for the feature-space content loss;
  # None = pixel MSE (SRResNet-MSE / SRGAN-MSE).
  config.srgan.content_features_path = config_dict.placeholder(str)
  # VGG19 layer of the feature loss (paper's VGG54: conv5_4; VGG22: conv2_2).
  config.srgan.content_layer = "conv5_4"
  # Features are multiplied by this before the MSE (paper: 1/12.75).
  config.srgan.content_feature_scale = 1 / 12.75
  # Pixels shaved at each border before PSNR/SSIM; None = the scale.
  config.srgan.eval_shave = config_dict.placeholder(int)
  # Held-out crops per generator call during evaluation.
  config.srgan.eval_batch_size = 16
  # --mode=upscale: LR tile side (memory is bounded by (tile + 2 * receptive radius)^2).
  config.srgan.upscale_tile = 128

  config.optim = ml_collections.ConfigDict()
  # Generator Adam: pre-training learning rate (constant, or cosine decay to final_learning_rate
  # over the pre-training), then gan_learning_rate in the adversarial phase (None = the same).
  config.optim.g = ml_collections.ConfigDict(
    {
      "learning_rate": 4e-4,
      "final_learning_rate": 2e-5,
      "schedule": "cosine",
      "gan_learning_rate": 1e-4,
      "b1": 0.9,
      "b2": 0.999,
    }
  )
  # Discriminator Adam (paper: 1e-4, b1 0.9).
  config.optim.d = ml_collections.ConfigDict({"learning_rate": 1e-4, "b1": 0.9, "b2": 0.999})

  if arg.paper:
    config.num_train_steps = 2_000_000
    config.srgan.pretrain_steps = 1_000_000
    config.data.crop_size = 96
    config.data.eval_crop_size = 192
    config.model.generator = ml_collections.ConfigDict(
      {"features": 64, "num_blocks": 16, "upsample_skip": False}
    )
    config.model.discriminator = ml_collections.ConfigDict({"width": 64, "dense_features": 1024})
    # Paper: 1e-4 for SRResNet; SRGAN 1e-4 (then 1e-5 for the second half, not modelled here).
    config.optim.g = ml_collections.ConfigDict(
      {
        "learning_rate": 1e-4,
        "final_learning_rate": 1e-4,
        "schedule": "constant",
        "gan_learning_rate": 1e-4,
        "b1": 0.9,
        "b2": 0.999,
      }
    )
    config.log_every_steps = 1000
    config.eval_every_steps = 50_000
    config.sample_every_steps = 50_000
    config.checkpoint_every_steps = 10_000

  if arg.runlocal:
    config.num_train_steps = 4
    config.srgan.pretrain_steps = 2
    config.batch_size = 8
    config.data.crop_size = 8 * config.scale
    config.data.eval_crop_size = 32
    config.data.eval_max_crops = 4
    config.log_every_steps = 1
    config.eval_every_steps = 0
    config.sample_every_steps = 0
    config.checkpoint_every_steps = 2
    config.num_sample_images = 4  # = eval_max_crops: one generator shape for both.
    config.model.generator = ml_collections.ConfigDict(
      {"features": 8, "num_blocks": 1, "upsample_skip": True}
    )
    config.model.discriminator = ml_collections.ConfigDict({"width": 4, "dense_features": 16})
  return config
