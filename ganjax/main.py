"""Command line: train a GAN from a config, or sample from a trained workdir.

  python -m ganjax.main --config=configs/dcgan.py --workdir=runs/dcgan
  python -m ganjax.main --mode=sample --workdir=runs/dcgan --num_samples=64 --output=grid.png
  python -m ganjax.main --mode=evaluate --workdir=runs/dcgan [--step=N] [--metrics=kid,is] \
      [--eval_classifier_workdir=runs/classifier_mnist | --eval_inception_weights=PATH]
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
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "sample", "evaluate"],
    "train: train (resuming); sample: draw; evaluate: measure a checkpoint (WORKDIR/eval/).",
)
flags.DEFINE_integer("num_samples", 64, "--mode=sample: number of samples.")
flags.DEFINE_string("output", None, "--mode=sample: output PNG (default WORKDIR/sample.png).")
flags.DEFINE_string(
    "step", None, "--mode=evaluate: checkpoint step, or 'best' (default: the latest)."
)
flags.DEFINE_list("metrics", None, "--mode=evaluate: metric names (default: the extractor's).")
flags.DEFINE_integer("eval_num_samples", None, "--mode=evaluate: generated samples.")
flags.DEFINE_string("eval_inception_weights", None, "--mode=evaluate: FID Inception weights.")
flags.DEFINE_string("eval_classifier_workdir", None, "--mode=evaluate: classifier workdir.")
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
  elif FLAGS.mode == "evaluate":
    from ganjax import evaluation

    overrides = {
        name: FLAGS[name].value
        for name in ("eval_inception_weights", "eval_classifier_workdir")
        if FLAGS[name].value
    }
    result = evaluation.evaluate_workdir(
        FLAGS.workdir,
        step=_parse_step(FLAGS.step),
        metrics=FLAGS.metrics,
        num_samples=FLAGS.eval_num_samples,
        config_overrides=overrides,
    )
    logging.info("Evaluation: %s (written to %s)", result["values"], result["path"])
  else:
    output = FLAGS.output or f"{FLAGS.workdir.rstrip('/')}/sample.png"
    train.sample_from_workdir(FLAGS.workdir, FLAGS.num_samples, output)
  logging.info("Done.")


def _parse_step(step: str | None) -> int | str | None:
  if step is None or step == "best":
    return step
  try:
    return int(step)
  except ValueError:
    raise app.UsageError(f"--step must be a step number or 'best', got {step!r}.") from None


if __name__ == "__main__":
  app.run(main)
