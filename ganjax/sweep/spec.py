"""Sweep files: ``get_sweep()`` -> runs, their names and groups, checked before anything starts.

A sweep file (``experiments/<study>/sweep.py``) defines ``get_sweep()``, which returns a list of
plain dicts, one per run: ``"config"`` holds a config string (``"configs/dcgan.py:runlocal"``, as
``--config=`` takes it) and every other key is a dotted override of a config field
(``"optim.g.learning_rate": 1e-4``), the seed included (``"seed": 0``). :func:`product`,
:func:`zip_runs`, :func:`runs` and :func:`seeds` build such lists, in the spirit of big_vision's
sweep configs; a hand-written list works as well::

    from ganjax.sweep import product, runs, seeds

    def get_sweep():
      return product(
        {"config": "configs/gaussian_mixture.py:dataset=ring"},
        runs("optim.g.learning_rate", [1e-4, 1e-3]),
        seeds(3),
      )

A run's name is made of what varies across the sweep: the config file (``config=dcgan``), the
config string's arguments and the overrides, each ``key=value``, joined by commas with the seed
last (``optim.g.learning_rate=0.0001,seed=2``). It is the run's workdir under
``SWEEP_WORKDIR/runs/``. Runs that differ only in their seed form a group, named by the rest.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ganjax import errors

CONFIG_KEY = "config"
SEED_KEY = "seed"
# Shown for a key that other runs set and this one leaves at its default.
DEFAULT_VALUE = "default"
# A run name is one path component; longer ones end in a hash of the full name.
MAX_NAME_LENGTH = 200
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]+")


class SweepError(errors.UserError, ValueError):
  """A sweep file, or a run it defines, is not valid; the message names the run and the fix."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: its workdir name, config string, overrides (seed included) and group."""

  name: str
  config: str
  overrides: dict[str, Any]
  group: str

  def to_json(self) -> dict[str, Any]:
    return {
      "name": self.name,
      "group": self.group,
      "config": self.config,
      "overrides": dict(self.overrides),
    }


# ---------------------------------------------------------------------------------------------
# Building run lists.


def runs(key: str, values: Iterable[Any]) -> list[dict[str, Any]]:
  """One run per value: ``runs("optim.g.learning_rate", [1e-4, 1e-3])``."""
  return [{key: value} for value in values]


def seeds(n_or_values: int | Iterable[int]) -> list[dict[str, int]]:
  """``seeds(3)``: runs with seeds 0, 1, 2; ``seeds([0, 7])``: those seeds."""
  values = range(n_or_values) if isinstance(n_or_values, int) else n_or_values
  return runs(SEED_KEY, [int(v) for v in values])


def product(*parts: Mapping[str, Any] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """Every combination of one run from each part (a dict is a part with one run), merged.

  ``product({"config": C}, runs("a", [1, 2]), seeds(2))`` is 4 runs. A key set by two parts
  is an error (a sweep does not silently override itself).
  """
  result: list[dict[str, Any]] = [{}]
  for part in parts:
    options = _options(part, "product")
    result = [_merge(a, b, "product") for a in result for b in options]
  return result


def zip_runs(*parts: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
  """The i-th runs of all parts merged (the parts must have the same length), as ``zip`` pairs:
  ``zip_runs(runs("optim.g.learning_rate", [1e-4, 1e-3]), runs("optim.d.learning_rate", [4e-4,
  4e-3]))`` is 2 runs."""
  lists = [_options(part, "zip_runs") for part in parts]
  lengths = sorted({len(options) for options in lists})
  if len(lengths) > 1:
    raise SweepError(
      f"zip_runs: the parts have different lengths {[len(o) for o in lists]}; zip_runs pairs the "
      "i-th runs of each part, so they must have the same length (product combines all)."
    )
  return [_merge_all(group, "zip_runs") for group in zip(*lists, strict=True)]


def _options(part: Any, where: str) -> list[Mapping[str, Any]]:
  if isinstance(part, Mapping):
    return [part]
  if isinstance(part, str) or not isinstance(part, Iterable):
    raise SweepError(f"{where}: expected a dict or a list of dicts, got {part!r}.")
  options = list(part)
  for option in options:
    if not isinstance(option, Mapping):
      raise SweepError(f"{where}: expected a dict or a list of dicts, got an item {option!r}.")
  return options


def _merge(a: Mapping[str, Any], b: Mapping[str, Any], where: str) -> dict[str, Any]:
  both = sorted(set(a) & set(b))
  if both:
    raise SweepError(f"{where}: two parts set {', '.join(map(repr, both))}; set each key once.")
  return {**a, **b}


def _merge_all(parts: Sequence[Mapping[str, Any]], where: str) -> dict[str, Any]:
  merged: dict[str, Any] = {}
  for part in parts:
    merged = _merge(merged, part, where)
  return merged


# ---------------------------------------------------------------------------------------------
# Loading and checking a sweep file.


def load_sweep(path: str) -> list[Run]:
  """The runs of the sweep file at ``path``, named and checked (:func:`make_runs`).

  Raises:
    MissingPathError: no file at ``path`` (with the closest sweep files).
    SweepError: the file has no ``get_sweep()``, or a run is not valid.
  """
  if not os.path.isfile(path):
    raise errors.MissingPathError(f"--sweep={path}: no such file{_close_files(path)}")
  name = re.sub(r"\W", "_", os.path.splitext(os.path.abspath(path))[0])
  spec = importlib.util.spec_from_file_location(f"ganjax_sweep_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  get_sweep = getattr(module, "get_sweep", None)
  if not callable(get_sweep):
    defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
    raise SweepError(
      f"--sweep={path} defines no get_sweep() (it defines: {', '.join(defined) or 'nothing'}); "
      "a sweep file's get_sweep() returns the runs as a list of dicts."
    )
  return make_runs(get_sweep(), source=path)


def make_runs(entries: Any, source: str = "get_sweep()") -> list[Run]:
  """Checks the run dicts ``entries`` and names them; ``source`` prefixes the error messages.

  Each entry must be a dict with a ``"config"`` string whose file exists and loads, and whose
  other keys name fields of that config (with values it accepts); two runs may not get the same
  name.
  """
  if isinstance(entries, Mapping) or not isinstance(entries, Iterable):
    raise SweepError(
      f"{source}: get_sweep() returned {type(entries).__name__}, not a list of dicts (runs)."
    )
  entries = list(entries)
  if not entries:
    raise SweepError(f"{source}: get_sweep() returned no runs.")
  configs: dict[str, Any] = {}
  for index, entry in enumerate(entries):
    _check_entry(entry, index, len(entries), source, configs)
  names = _names(entries)
  seen: dict[str, int] = {}
  for index, (name, _) in enumerate(names):
    if name in seen:
      first = seen[name]
      same = _plain(entries[first]) == _plain(entries[index])
      why = (
        "they are the same run" if same else "their values differ only in characters a name drops"
      )
      raise SweepError(
        f"{source}: runs {first} and {index} both get the name {name!r} ({why}); remove one or "
        "give them an override that tells them apart."
      )
    seen[name] = index
  return [
    Run(
      name=name,
      config=entry[CONFIG_KEY],
      overrides={k: v for k, v in entry.items() if k != CONFIG_KEY},
      group=group,
    )
    for entry, (name, group) in zip(entries, names, strict=True)
  ]


def _check_entry(entry: Any, index: int, total: int, source: str, configs: dict) -> None:
  from ganjax import api, config_fields

  where = f"{source}: run {index} (of {total})"
  if not isinstance(entry, Mapping):
    raise SweepError(f"{where} is a {type(entry).__name__}, not a dict of config and overrides.")
  config = entry.get(CONFIG_KEY)
  if config is None:
    keys = ", ".join(map(repr, entry)) or "none"
    raise SweepError(
      f"{where} has no {CONFIG_KEY!r} key (the config string, e.g. "
      f"'configs/dcgan.py:runlocal'); its keys: {keys}."
    )
  if not isinstance(config, str):
    raise SweepError(f"{where}: {CONFIG_KEY!r} must be a config string, got {config!r}.")
  for key in entry:
    if not isinstance(key, str) or not key:
      raise SweepError(f"{where}: override keys must be dotted field names, got {key!r}.")
  if config not in configs:
    try:
      configs[config] = api.load_config(config)
    except errors.MissingPathError as e:
      path = config.partition(":")[0]
      raise errors.MissingPathError(f"{where}: {e}{_close_files(path)}") from None
    except (errors.UserError, ValueError) as e:  # get_config's check of its arguments.
      raise SweepError(f"{where}: config {config!r}: {e}") from None
  base = configs[config]
  overrides = {k: v for k, v in entry.items() if k != CONFIG_KEY}
  for field in overrides:
    if not config_fields.has_field(base, field):
      hint = config_fields.did_you_mean(base, field)
      path = config.partition(":")[0]
      raise SweepError(f"{where}: {path} has no field {field!r}{hint}")
  checked = copy.deepcopy(base)
  for field, value in overrides.items():
    try:  # As api.load_config applies it, without loading the config file again.
      checked.update_from_flattened_dict({field: value})
    except (TypeError, ValueError) as e:
      raise SweepError(f"{where}: cannot set {field}={value!r}: {e}") from None


def _close_files(path: str) -> str:
  folder = os.path.dirname(path) or "."
  try:
    files = [f for f in os.listdir(folder) if f.endswith(".py")]
  except OSError:
    return f" (the folder {folder!r} does not exist either)"
  close = difflib.get_close_matches(os.path.basename(path), files, n=2, cutoff=0.6)
  if not close:
    return ""
  return f"; did you mean {' or '.join(os.path.join(os.path.dirname(path), f) for f in close)}?"


def _plain(entry: Mapping[str, Any]) -> dict[str, str]:
  return {k: repr(v) for k, v in entry.items()}


# ---------------------------------------------------------------------------------------------
# Names.


def parse_config_string(config: str) -> tuple[str, dict[str, str | None]]:
  """``"configs/x.py:a=1,runlocal"`` -> ``("configs/x.py", {"a": "1", "runlocal": None})``."""
  path, _, arg = config.partition(":")
  args: dict[str, str | None] = {}
  for item in filter(None, (part.strip() for part in arg.split(","))):
    key, eq, value = item.partition("=")
    args[key.strip()] = value.strip() if eq else None
  return path, args


def format_value(value: Any) -> str:
  """A value as it appears in a run name: ``1e-4`` -> ``0.0001``, ``(16, 16)`` -> ``16_16``."""
  if isinstance(value, bool) or value is None:
    return str(value)
  if isinstance(value, float):
    return repr(value)
  if isinstance(value, list | tuple):
    return "_".join(format_value(v) for v in value) or "empty"
  return str(value)


def _items(entry: Mapping[str, Any]) -> dict[str, tuple[str, str | None]]:
  """``{key: (sort class, shown value)}`` of everything that can name a run."""
  path, args = parse_config_string(entry[CONFIG_KEY])
  items: dict[str, tuple[str, str | None]] = {CONFIG_KEY: ("file", path)}
  for key, value in args.items():
    items[f"arg:{key}"] = ("arg", value)
  for key, value in entry.items():
    if key != CONFIG_KEY:
      items[key] = ("override", format_value(value))
  return items


def _names(entries: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
  """``(name, group)`` of each run: the ``key=value`` parts that vary across ``entries``."""
  all_items = [_items(entry) for entry in entries]
  order: dict[str, None] = {}
  for items in all_items:
    order.update(dict.fromkeys(items))
  missing = object()
  varying = [
    key for key in order if len({repr(items.get(key, missing)) for items in all_items}) > 1
  ]
  rank = {"file": 0, "arg": 1, "override": 2}
  kinds = {key: next(items[key][0] for items in all_items if key in items) for key in varying}
  varying.sort(key=lambda k: (k == SEED_KEY, rank[kinds[k]]))  # Stable: first-seen order.
  stems = {os.path.splitext(os.path.basename(i[CONFIG_KEY][1]))[0] for i in all_items}
  paths = {i[CONFIG_KEY][1] for i in all_items}
  names = []
  for entry, items in zip(entries, all_items, strict=True):
    parts, group_parts = [], []
    for key in varying:
      part = _part(key, items, len(stems) == len(paths))
      parts.append(part)
      if key != SEED_KEY:
        group_parts.append(part)
    if not parts:  # A single run (or copies of one): named after its config file.
      path = parse_config_string(entry[CONFIG_KEY])[0]
      parts = group_parts = [os.path.splitext(os.path.basename(path))[0]]
    group = ",".join(group_parts)
    names.append((_safe(",".join(parts)), _safe(group) if group else ""))
  return names


def _part(key: str, items: dict[str, tuple[str, str | None]], stems_unique: bool) -> str:
  if key not in items:
    return f"{key.removeprefix('arg:')}={DEFAULT_VALUE}"
  kind, value = items[key]
  if kind == "file":
    stem = os.path.splitext(os.path.basename(value))[0]
    return f"config={stem if stems_unique else value}"
  if kind == "arg":
    name = key.removeprefix("arg:")
    return name if value is None else f"{name}={value}"
  return f"{key}={value}"


def _safe(name: str) -> str:
  """One path component of at most :data:`MAX_NAME_LENGTH` characters."""
  name = _UNSAFE.sub("_", name).strip(".") or "run"
  if len(name) > MAX_NAME_LENGTH:
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    name = f"{name[: MAX_NAME_LENGTH - 11]}-{digest}"
  return name


def group_of(name: str) -> str:
  """The group of a run name: the name without its ``seed=N`` part."""
  return ",".join(p for p in name.split(",") if not re.fullmatch(r"seed=-?\d+", p))
