"""Fields of an ml_collections config by dotted name, suggestions for a misspelt one, and a
config section as a module's keyword arguments.

Shared by the command line (``--config.optim.g.lr=...``) and :func:`ganjax.load_config`'s
overrides: both name fields as ``a.b.c`` and answer a wrong name with the closest real ones.
"""

from __future__ import annotations

import difflib
from typing import Any


def has_field(config, field: str) -> bool:
  if "[" in field:  # Indexing (field[0]): leave it to config_flags.
    return True
  node = config
  for part in field.split("."):
    if not is_mapping(node) or part not in node:
      return False
    node = node[part]
  return True


def is_mapping(node) -> bool:
  return hasattr(node, "keys") and hasattr(node, "__getitem__")


def dotted_fields(config, prefix: str = "") -> list[str]:
  """Every field of ``config`` as a dotted name, nested ConfigDicts included."""
  names = []
  for key in config.keys():
    name = f"{prefix}{key}"
    names.append(name)
    value = config[key]
    if is_mapping(value):
      names.extend(dotted_fields(value, f"{name}."))
  return names


def did_you_mean(config, field: str) -> str:
  """``"; did you mean model.name?"`` with the closest existing fields, or the parent's fields."""
  names = dotted_fields(config)
  parts = field.split(".")
  parent, depth = config, 0
  while depth < len(parts) and is_mapping(parent) and parts[depth] in parent:
    parent, depth = parent[parts[depth]], depth + 1
  prefix = ".".join(parts[:depth])
  prefix = f"{prefix}." if prefix else ""
  rest = ".".join(parts[depth + 1 :])
  suggestions = []
  if is_mapping(parent):
    bad = parts[depth]
    keys = list(parent.keys())
    close = difflib.get_close_matches(bad, keys, n=3, cutoff=0.6)
    close += [k for k in keys if k not in close and is_abbreviation(bad, k)]
    for key in close:
      candidate = f"{prefix}{key}" + (f".{rest}" if rest else "")
      suggestions.append(candidate if candidate in names else f"{prefix}{key}")
  if suggestions:
    return f"; did you mean {' or '.join(dict.fromkeys(suggestions))}?"
  if prefix and is_mapping(parent):
    return f"; config.{prefix[:-1]} has: {', '.join(sorted(parent.keys()))}"
  if prefix:
    return f"; config.{prefix[:-1]} is a value, not a group of fields"
  close = difflib.get_close_matches(field, names, n=3, cutoff=0.6)
  return f"; did you mean {' or '.join(close)}?" if close else ""


def is_abbreviation(short: str, name: str) -> bool:
  """``lr`` of ``learning_rate``: same first letter, the other letters in order."""
  if len(short) < 2 or len(short) >= len(name) or short[0] != name[0]:
    return False
  rest = iter(name[1:])
  return all(c in rest for c in short[1:])


def module_kwargs(section) -> dict[str, Any]:
  """A config section (e.g. ``config.model.generator``) as keyword arguments of a flax module,
  lists turned into tuples (a module's fields must be hashable)."""

  def hashable(value):
    return tuple(hashable(v) for v in value) if isinstance(value, list | tuple) else value

  return {key: hashable(value) for key, value in section.to_dict().items()}
