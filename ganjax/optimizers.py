"""The one optimizer factory: an optax optimizer from an optimizer config, for every system.

An optimizer config is ``{name: "adam", learning_rate: ..., **kwargs of optax.<name>}`` plus the
keys of the learning-rate schedule:

- ``schedule``: ``"constant"`` (the default), ``"linear"`` decay (as in SNGAN's and Mimicry's
  training, Miyato et al. 2018) or ``"cosine"`` decay (Loshchilov & Hutter 2017) over the
  schedule's updates, down to ``final_learning_rate`` (default 0);
- ``second_phase_learning_rate``: with ``phase_updates``, the schedule runs over the first
  ``phase_updates`` updates and this constant rate follows (SRGAN's pre-training, then its
  adversarial phase; Ledig et al. 2017). None keeps ``learning_rate``.

``name`` defaults to ``"adam"``. Equal settings give the same optax object, so a jitted step
that carries the optimizer as a static field of its state is compiled once per process.
"""

from __future__ import annotations

import functools
import json
from typing import Any

import ml_collections
import optax

from ganjax.errors import ConfigError

# Learning-rate schedules (the ``schedule`` key of an optimizer config).
SCHEDULES = ("constant", "linear", "cosine")
# The keys this module reads; the others go to the optax optimizer function.
_SCHEDULE_KEYS = ("schedule", "final_learning_rate", "second_phase_learning_rate")


def make_optimizer(
  optim_config: ml_collections.ConfigDict | dict[str, Any],
  total_updates: int | None = None,
  *,
  phase_updates: int | None = None,
  field: str = "optim",
) -> optax.GradientTransformation:
  """The optax optimizer of ``optim_config`` (see the module docstring).

  Args:
    optim_config: the optimizer's config.
    total_updates: how many updates the run makes with this optimizer (the length of a
      non-constant schedule).
    phase_updates: the length of the first phase when the optimizer has two (the schedule then
      runs over it, and ``second_phase_learning_rate`` follows).
    field: the config field's name, for error messages (e.g. ``"optim.g"``).
  """
  settings = dict(optim_config.to_dict() if hasattr(optim_config, "to_dict") else optim_config)
  if phase_updates is not None or (settings.get("schedule") or "constant") == "constant":
    total_updates = None  # Not part of the schedule: equal optimizers whatever the run's length.
  try:
    key = json.dumps([settings, total_updates, phase_updates, field], sort_keys=True)
  except TypeError:  # A value JSON cannot write (e.g. a schedule function): not memoized.
    return _build(settings, total_updates, phase_updates, field)
  return _memoized(key)


@functools.lru_cache(maxsize=64)
def _memoized(key: str) -> optax.GradientTransformation:
  settings, total_updates, phase_updates, field = json.loads(key)
  return _build(settings, total_updates, phase_updates, field)


def _build(
  settings: dict[str, Any], total_updates: int | None, phase_updates: int | None, field: str
) -> optax.GradientTransformation:
  kwargs = {k: v for k, v in settings.items() if k not in _SCHEDULE_KEYS}
  name = kwargs.pop("name", None) or "adam"
  optimizer = getattr(optax, name, None)
  if not callable(optimizer) or name.startswith("_"):
    raise ConfigError(
      f"Unknown optimizer {field}.name={name!r}; use an optax optimizer function such as "
      "'adam', 'adamw', 'sgd', 'rmsprop', 'lion'."
    )
  schedule = settings.get("schedule") or "constant"
  if schedule not in SCHEDULES:
    raise ConfigError(
      f"Unknown learning-rate schedule {field}.schedule={schedule!r}; valid: "
      f"{', '.join(SCHEDULES)}."
    )
  peak = kwargs.get("learning_rate")
  schedule_updates = total_updates if phase_updates is None else phase_updates
  if schedule != "constant":
    if not isinstance(peak, int | float):
      raise ConfigError(
        f"{field}.schedule={schedule!r} needs a numeric learning_rate, got {peak!r}."
      )
    if schedule_updates is None or schedule_updates < 0:
      raise ValueError(f"schedule={schedule!r} needs the number of updates, got {total_updates}.")
    kwargs["learning_rate"] = _decay(schedule, peak, settings, schedule_updates)
  if phase_updates is not None:
    second = settings.get("second_phase_learning_rate")
    first = kwargs["learning_rate"]
    if not callable(first):
      first = optax.constant_schedule(first)
    kwargs["learning_rate"] = optax.join_schedules(
      [first, optax.constant_schedule(peak if second is None else second)], [phase_updates]
    )
  try:
    return optimizer(**kwargs)
  except TypeError as e:
    raise ConfigError(f"Bad arguments {kwargs} for optax.{name} ({field}): {e}") from e


def _decay(schedule: str, peak: float, settings: dict[str, Any], updates: int) -> optax.Schedule:
  """``peak`` decayed to ``final_learning_rate`` over ``updates`` updates (constant when 0)."""
  final = float(settings.get("final_learning_rate") or 0.0)
  if updates == 0:
    return optax.constant_schedule(peak)
  if schedule == "linear":
    return optax.linear_schedule(peak, final, updates)
  return optax.cosine_decay_schedule(peak, updates, alpha=final / peak if peak else 0.0)
