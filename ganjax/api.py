"""ganjax from Python (a notebook, a script): load a config, train it, load what it trained.

    import ganjax
    config = ganjax.load_config("configs/dcgan.py:runlocal", num_train_steps=20)
    ganjax.train(config, "runs/nb")             # the CLI's progress lines, on stderr
    run = ganjax.load("runs/nb")                # the latest checkpoint; step=N or "best"
    images = run.sample(16, seed=0)             # (16, 28, 28, 1) in [-1, 1]

The command line (:mod:`ganjax.main`) calls the same functions; ``config.task`` finds its code
with :func:`ganjax.systems.get_system`.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections

from ganjax import config_base, config_fields
from ganjax.errors import ConfigError
from ganjax.trained import TrainedRun


def load_config(spec: str, **overrides: Any) -> ml_collections.ConfigDict:
  """The config of ``spec`` (``"path.py"`` or ``"path.py:args"``, as ``--config=`` takes it) with
  ``overrides`` applied, as ``--config.FIELD=VALUE`` would.

  An override names a field directly (``num_train_steps=100``) or by its dotted path
  (``**{"optim.g.learning_rate": 1e-3}``); a value of the field's type is required (ints are
  accepted for floats).

  Raises:
    MissingPathError: the config file does not exist.
    ConfigError: an override names no field of the config (the message suggests the closest).
  """
  path, _, arg = spec.partition(":")
  config = config_base.load_config(path, arg or None)
  for field, value in overrides.items():
    if not config_fields.has_field(config, field):
      hint = config_fields.did_you_mean(config, field)
      raise ConfigError(f"{os.path.basename(path)} has no field {field!r}{hint}")
    try:
      config.update_from_flattened_dict({field: value})
    except TypeError as e:
      raise ConfigError(f"Cannot set {field}={value!r}: {e}") from None
  return config


def train(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint), writes the run report
  (``WORKDIR/report/report.html``) and returns the final state. Outside the command line, INFO
  logs (progress lines) go to stderr."""
  from absl import flags

  from ganjax import logs

  if not flags.FLAGS.is_parsed():
    logs.show_progress()
  from ganjax import systems

  state = systems.get_system(config.get("task", "gan")).train_and_evaluate(config, workdir)
  _write_report(workdir)
  return state


def _write_report(workdir: str) -> None:
  """The run report (:func:`ganjax.report.write_report`), on process 0. A failure only warns:
  the trained run is whole without its report, and ``--mode=report`` writes it again."""
  import jax
  from absl import logging

  from ganjax import report

  if jax.process_index() != 0:
    return
  try:
    report.write_report(workdir)
  except Exception as e:  # The report must never fail a run that trained.
    logging.warning("Could not write the run report of %s: %s: %s", workdir, type(e).__name__, e)


def load(workdir: str, step: int | str | None = None) -> TrainedRun:
  """The run in ``workdir`` at ``step`` (None: the latest checkpoint, ``"best"``, or a step
  number) as a :class:`ganjax.trained.TrainedRun`: ``run.config``, ``run.step``,
  ``run.sample(num, seed=0, labels=None)``, ``run.upscale(image)``.

  Raises:
    MissingPathError: ``workdir`` holds no run, or no such checkpoint.
    ConfigError: the run's task cannot be loaded (the domain classifier: see
      :func:`ganjax.evaluation.domain_classifier.load_classifier`).
  """
  from ganjax import systems

  task = systems.workdir_task(workdir)
  module = systems.get_system(task)
  if not hasattr(module, "load"):
    raise ConfigError(
      f"{workdir!r} holds a {task!r} run, which ganjax.load does not load; use "
      "ganjax.evaluation.domain_classifier.load_classifier for the domain classifier."
    )
  return module.load(workdir, step)
