"""Training systems, selected by ``config.task``: :func:`get_system` finds each one's module.

Every task is one module here: ``config.task = "NAME"`` selects ``ganjax.systems.NAME``. The GAN
of :mod:`ganjax.systems.gan` (``task = "gan"``, the default) maps latents to images and is judged
by one discriminator; :mod:`ganjax.systems.classifier` (``task = "classifier"``) trains the domain
classifier that evaluations use; the others' networks see other inputs (a Laplacian pyramid of
conditional GANs, low-resolution images, an encoder). No system imports another. A system module
exposes

* ``train_and_evaluate(config, workdir)``: train from the config, resuming from ``workdir``;

and, where the system supports it,

* ``load(workdir, step)``: the trained run as a :class:`ganjax.trained.TrainedRun`
  (``ganjax.load``);
* ``sample_from_workdir(workdir, num_samples, output)``: ``--mode=sample``;
* ``evaluate_workdir(workdir, *, step, metrics, num_samples, config_overrides)``:
  ``--mode=evaluate``, returning ``{"values": ..., "path": ...}`` like
  :func:`ganjax.evaluation.evaluate_checkpoint`;
* ``upscale_file(workdir, input_path, output_path)``: ``--mode=upscale``;
* ``describe_run(config)``: ``--mode=config``, the data as one line of text and ``{network name:
  abstract params}``, opened and built (``jax.eval_shape``) as ``train_and_evaluate`` would.

A new system is one new module here plus one config; there is no registry to edit.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
from types import ModuleType

from ganjax.errors import ConfigError, MissingPathError


def available_systems() -> list[str]:
  """Sorted names of the system modules of this package."""
  return sorted(
    info.name for info in pkgutil.iter_modules(__path__) if not info.name.startswith("_")
  )


def get_system(task: str) -> ModuleType:
  """Imports and returns the module of ``task``: ``ganjax.systems.<task>``.

  Raises:
    ValueError: ``task`` is not a system module; the message lists the valid tasks.
  """
  if task in available_systems():
    return importlib.import_module(f"{__name__}.{task}")
  raise ConfigError(f"Unknown task {task!r}; valid choices: {', '.join(available_systems())}.")


def workdir_task(workdir: str) -> str:
  """The ``task`` of the run in ``workdir`` (from its ``config.json``; ``"gan"`` if unset).

  Raises:
    FileNotFoundError: ``workdir`` holds no ``config.json`` (no run was started there).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise MissingPathError(
      f"{path} does not exist: {workdir!r} is not a ganjax workdir (train a config there first)."
    )
  with open(path) as f:
    return json.load(f).get("task", "gan")


def mode_function(task: str, mode: str, function_name: str):
  """The system's function for a command-line mode; a clear error when it has none."""
  system = get_system(task)
  function = getattr(system, function_name, None)
  if function is None:
    raise ConfigError(f"--mode={mode} is not supported by task {task!r}.")
  return function
