"""Command line: train a GAN from a config, or sample from a trained workdir.

  python -m ganjax.main --config=configs/dcgan.py --workdir=runs/dcgan
  python -m ganjax.main --mode=sample --workdir=runs/dcgan --num_samples=64 --output=grid.png
  python -m ganjax.main --mode=evaluate --workdir=runs/dcgan [--step=N] [--metrics=kid,is] \
      [--eval_classifier_workdir=runs/classifier_mnist | --eval_inception_weights=PATH]
  python -m ganjax.main --config=configs/classifier.py:dataset=mnist \
      --config.data.dir=../shared/data/mnist --workdir=runs/classifier_mnist

  python -m ganjax.main --mode=upscale --workdir=runs/srgan --input=photo.png --output=photo_x4.png

``config.task`` selects what a config trains: ``"gan"`` (the default, :mod:`ganjax.train`),
``"classifier"`` (the domain classifier of :mod:`ganjax.classifier`, configs/classifier.py) or a
system of :mod:`ganjax.systems` (e.g. ``"srgan"``). ``--mode=sample|evaluate|upscale`` read the
task from the workdir's ``config.json``.
"""

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py[:args]).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum(
    "mode",
    "train",
    ["train", "sample", "evaluate", "upscale"],
    "train: train (resuming); sample: draw; evaluate: measure a checkpoint (WORKDIR/eval/); "
    "upscale: super-resolve --input into --output (super-resolution tasks).",
)
flags.DEFINE_integer("num_samples", 64, "--mode=sample: number of samples.")
flags.DEFINE_string(
    "output", None, "--mode=sample|upscale: output PNG (sample default: WORKDIR/sample.png)."
)
flags.DEFINE_string("input", None, "--mode=upscale: the image to super-resolve.")
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
  from ganjax import systems  # Heavy imports after flag parsing, so --help stays fast.

  if FLAGS.mode == "train":
    if FLAGS.config is None:
      raise app.UsageError("--config is required to train, e.g. --config=configs/dcgan.py")
    task = FLAGS.config.get("task", "gan")
  else:
    task = systems.workdir_task(FLAGS.workdir)
  if task in systems.BUILTIN_TASKS:
    _run_builtin(task)
  elif FLAGS.mode == "train":
    systems.get_system(task).train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "sample":
    sample = systems.mode_function(task, "sample", "sample_from_workdir")
    sample(FLAGS.workdir, FLAGS.num_samples, _sample_output())
  elif FLAGS.mode == "evaluate":
    evaluate = systems.mode_function(task, "evaluate", "evaluate_workdir")
    _log_evaluation(evaluate(FLAGS.workdir, **_evaluate_kwargs()))
  else:
    upscale = systems.mode_function(task, "upscale", "upscale_file")
    if not FLAGS.input or not FLAGS.output:
      raise app.UsageError("--mode=upscale needs --input=IMAGE and --output=PNG.")
    upscale(FLAGS.workdir, FLAGS.input, FLAGS.output)
  logging.info("Done.")


def _run_builtin(task: str) -> None:
  """The GAN (:mod:`ganjax.train`) and classifier (:mod:`ganjax.classifier`) tasks."""
  from ganjax import train

  if FLAGS.mode == "train" and task == "classifier":
    from ganjax import classifier

    classifier.train_classifier(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif task == "classifier":
    raise app.UsageError(f"--mode={FLAGS.mode} applies to generative models, not the classifier.")
  elif FLAGS.mode == "evaluate":
    from ganjax import evaluation

    _log_evaluation(evaluation.evaluate_workdir(FLAGS.workdir, **_evaluate_kwargs()))
  elif FLAGS.mode == "sample":
    train.sample_from_workdir(FLAGS.workdir, FLAGS.num_samples, _sample_output())
  else:
    raise app.UsageError("--mode=upscale needs a super-resolution workdir (task 'srgan').")


def _sample_output() -> str:
  return FLAGS.output or f"{FLAGS.workdir.rstrip('/')}/sample.png"


def _evaluate_kwargs() -> dict:
  overrides = {
      name: FLAGS[name].value
      for name in ("eval_inception_weights", "eval_classifier_workdir")
      if FLAGS[name].value
  }
  return dict(
      step=_parse_step(FLAGS.step),
      metrics=FLAGS.metrics,
      num_samples=FLAGS.eval_num_samples,
      config_overrides=overrides,
  )


def _log_evaluation(result: dict) -> None:
  logging.info("Evaluation: %s (written to %s)", result["values"], result["path"])


def _parse_step(step: str | None) -> int | str | None:
  if step is None or step == "best":
    return step
  try:
    return int(step)
  except ValueError:
    raise app.UsageError(f"--step must be a step number or 'best', got {step!r}.") from None


if __name__ == "__main__":
  app.run(main)
