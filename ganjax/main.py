"""Command line: train a GAN from a config, or sample from a trained workdir.

  python -m ganjax.main --config=configs/dcgan.py --workdir=runs/dcgan
  python -m ganjax.main --mode=sample --workdir=runs/dcgan --num_samples=64 --output=grid.png
  python -m ganjax.main --config=configs/classifier.py:dataset=mnist \
      --config.data.dir=../shared/data/mnist --workdir=runs/classifier_mnist

A config with ``task = "classifier"`` (configs/classifier.py) trains the domain classifier of
``ganjax.classifier`` instead of a GAN.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:args]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample"], "train: train (resuming); sample: draw.")
flags.DEFINE_integer("num_samples", 64, "--mode=sample: number of samples.")
flags.DEFINE_string("output", None, "--mode=sample: output PNG (default WORKDIR/sample.png).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  from ganjax import train  # Heavy imports after flag parsing, so --help stays fast.

  if FLAGS.mode == "train":
    if FLAGS.config is None:
      raise app.UsageError("--config is required to train, e.g. --config=configs/dcgan.py")
    if FLAGS.config.get("task", "gan") == "classifier":
      from ganjax import classifier

      classifier.train_classifier(FLAGS.config, FLAGS.workdir)
    else:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    output = FLAGS.output or f"{FLAGS.workdir.rstrip('/')}/sample.png"
    train.sample_from_workdir(FLAGS.workdir, FLAGS.num_samples, output)
  logging.info("Done.")


if __name__ == "__main__":
  app.run(main)
