"""``--mode=config``: the resolved config with each field's comment, and the checks a training run
makes before its first step, without training or writing anything.

:func:`report` lists every field as ``dotted.name = value  # comment`` (comments from the config
file and :mod:`ganjax.config_base`, :mod:`ganjax.config_comments`), then checks what the run
would check: the system's ``validate_config``, the devices and the batch split, then the system's
``describe_run(config)``: the data source (opened as the run opens it: available, element shape,
classes, size; no batch is read) and the networks, initialised with ``jax.eval_shape`` (shapes
only, nothing computed) to count their parameters. A system without ``describe_run`` is still
listed, validated and checked against the devices. A failed check raises the
:class:`ganjax.errors.UserError` the run would raise.
"""

from __future__ import annotations

import textwrap

import jax
import ml_collections

from ganjax import config_base, config_comments, config_fields, loop, parallel, systems
from ganjax.state import parameter_count

WIDTH = 100  # Columns of the listing; longer comments wrap.


def report(config: ml_collections.ConfigDict, spec: str) -> str:
  """The listing of ``config``, loaded from ``spec`` (``--config``'s ``PATH[:ARG]``), and its
  checks.

  Raises:
    UserError: the first check that fails, as the training run would raise it.
  """
  task = config.get("task", "gan")
  checks = check(config)
  header = f"Config {spec} (task {task}); override any field with --config.FIELD=VALUE."
  comments = config_comments.field_comments(spec.partition(":")[0], config_base.__file__)
  return "\n".join([header, "", *field_lines(config, comments), "", *checks])


def field_lines(config: ml_collections.ConfigDict, comments: dict[str, str]) -> list[str]:
  """Every field as ``name = value  # comment``: top-level fields, then each section."""
  lines = []

  def add(section, prefix: str, indent: str) -> None:
    keys = list(section.keys())
    for key in keys:
      if not config_fields.is_mapping(section[key]):
        line = f"{indent}{prefix}{key} = {section[key]!r}"
        lines.extend(_with_comment(line, comments.get(prefix + key), indent))
    for key in keys:
      child, name = section[key], prefix + key
      if not config_fields.is_mapping(child):
        continue
      # A section that only groups others (``optim``) gets no heading of its own.
      grouping = child and all(config_fields.is_mapping(v) for v in child.values())
      if not grouping or comments.get(name):
        lines.append("")
        lines.extend(_with_comment(f"{name}:", comments.get(name), ""))
      add(child, f"{name}.", "  ")

  add(config, "", "")
  return lines


def _with_comment(line: str, comment: str | None, indent: str) -> list[str]:
  if not comment:
    return [line]
  hang = len(line) + 2 if len(line) <= WIDTH // 2 else len(indent) + 4
  return textwrap.wrap(
    comment,
    width=WIDTH,
    initial_indent=f"{line}  # ",
    subsequent_indent=" " * hang + "# ",
    break_long_words=False,
    break_on_hyphens=False,
  )


def check(config: ml_collections.ConfigDict) -> list[str]:
  """The lines of the checks of a training run's start; raises the first failure."""
  task = config.get("task", "gan")
  system = systems.get_system(task)
  lines = ["Checks (those of a training run before its first step; nothing trains):"]
  validate = getattr(system, "validate_config", None)
  if validate is not None:
    validate(config)
    lines.append(f"  config      valid ({system.__name__}.validate_config)")
  lines.append(f"  devices     {_devices(config)}")
  loop.hide_gpus_from_tensorflow()
  describe = getattr(system, "describe_run", None)
  if describe is None:
    reason = f"{system.__name__} has no describe_run"
    lines.append(f"  data        not opened, networks not built: {reason}")
    return lines
  data, networks = describe(config)
  counts = {name: parameter_count(params) for name, params in networks.items()}
  parameters = ", ".join(f"{name} {count:,}" for name, count in counts.items())
  total = f" (total {sum(counts.values()):,})" if len(counts) > 1 else ""
  lines.append(f"  data        {data}")
  lines.append(f"  parameters  {parameters}{total}")
  return lines


def _devices(config: ml_collections.ConfigDict) -> str:
  """The devices the run would use and how its batch splits over them (checked)."""
  if "parallel" not in config:
    return f"1 {jax.devices()[0].platform} device (this task trains on one)"
  mesh = parallel.make_mesh(config.parallel.num_devices or None)
  parallel.check_batch_size(config.batch_size, mesh)
  count = mesh.devices.size
  return (
    f"{count} {mesh.devices.flat[0].platform} device{'s' if count > 1 else ''}, parallel.mode="
    f"{config.parallel.mode!r}: batch_size {config.batch_size} = {config.batch_size // count} "
    "per device"
  )
