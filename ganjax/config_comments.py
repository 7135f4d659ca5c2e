"""The comment of each config field, read from the source of the config files.

Every field of a config is assigned with a comment (``configs/*.py``, :mod:`ganjax.config_base`):
the comment lines just above ``config.a.b = ...`` (or at its end) describe ``a.b``; the comment of
``config.optim.g = ConfigDict({...})`` describes the section ``optim.g``, and a comment above a
key of that dict describes its field. Read with ``ast`` and ``tokenize``: nothing is executed.
"""

from __future__ import annotations

import ast
import io
import tokenize

# Comments that are instructions to tools, not descriptions.
_TOOL_PREFIXES = ("noqa", "type:", "pylint:", "fmt:")


def field_comments(*paths: str) -> dict[str, str]:
  """``{dotted field: comment}`` of the assignments in ``paths``; the first path that comments a
  field wins, and in each file its first commented assignment."""
  comments: dict[str, str] = {}
  for path in paths:
    with open(path) as f:
      source = f.read()
    for field, comment in _file_comments(source).items():
      comments.setdefault(field, comment)
  return comments


def _file_comments(source: str) -> dict[str, str]:
  lines = _comment_lines(source)
  tree = ast.parse(source)
  returned = _returned_prefixes(tree)
  found: dict[str, str] = {}
  for scope in ast.walk(tree):
    if not isinstance(scope, ast.FunctionDef | ast.Module):
      continue
    aliases = _aliases(scope, returned.get(getattr(scope, "name", None)))
    for node in _own_statements(scope):
      if not isinstance(node, ast.Assign | ast.AnnAssign):
        continue
      for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
        dotted = _dotted(target)
        if dotted is None or not dotted[1]:
          continue
        root, parts = dotted
        for prefix in aliases.get(root, [[]]):
          field = ".".join([*prefix, *parts])
          _add(found, field, _comment_at(lines, node.lineno))
          _add_entries(found, field, node.value, lines, node.lineno)
  return found


def _aliases(scope, returned: tuple[str, list[str]] | None) -> dict[str, list[list[str]]]:
  """The names in ``scope`` that stand for config sections: ``{name: [field parts, ...]}``.

  ``for optim in (config.optim.g, config.optim.d)`` makes ``optim`` both sections, ``g =
  config.model.generator`` makes ``g`` one; a function's returned variable is the field its
  caller assigns the result to (:func:`_returned_prefixes`). Other names are the root config.
  """
  aliases = {returned[0]: [returned[1]]} if returned else {}
  for node in _own_statements(scope):
    if isinstance(node, ast.For) and isinstance(node.target, ast.Name):
      items = node.iter.elts if isinstance(node.iter, ast.Tuple | ast.List) else [node.iter]
      name, values = node.target.id, items
    elif (
      isinstance(node, ast.Assign)
      and len(node.targets) == 1
      and isinstance(node.targets[0], ast.Name)
    ):
      name, values = node.targets[0].id, [node.value]
    else:
      continue
    dotted = [_dotted(value) for value in values]
    if dotted and all(d is not None and d[1] for d in dotted):
      aliases[name] = [[*aliases.get(root, [[]])[0], *parts] for root, parts in dotted]
  return aliases


def _add(found: dict[str, str], field: str, comment: str) -> None:
  if comment and not found.get(field):
    found[field] = comment


def _add_entries(found: dict[str, str], prefix: str, value, lines, line: int) -> None:
  """The entries of ``{...}``, ``dict(...)`` or ``ConfigDict({...})`` assigned to ``prefix`` at
  ``line``, as its fields: a comment above an entry's own line describes it."""
  entries = []
  if isinstance(value, ast.Call):
    entries = [(k.arg, k.value, k.lineno) for k in value.keywords if k.arg]
    value = value.args[0] if value.args else None
  if isinstance(value, ast.Dict):
    entries += [
      (key.value, entry, key.lineno)
      for key, entry in zip(value.keys, value.values, strict=True)
      if isinstance(key, ast.Constant) and isinstance(key.value, str)
    ]
  for key, entry, entry_line in entries:
    field = f"{prefix}.{key}"
    if entry_line != line:
      _add(found, field, _comment_at(lines, entry_line))
    _add_entries(found, field, entry, lines, entry_line)


def _own_statements(scope):
  """The statements of a function (or module), nested blocks included, nested functions not."""
  stack = list(scope.body)
  while stack:
    node = stack.pop(0)
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
      continue
    yield node
    stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def _dotted(node) -> tuple[str, list[str]] | None:
  """``config.a["b"].c`` -> ``("config", ["a", "b", "c"])``; None for other targets."""
  parts = []
  while True:
    if isinstance(node, ast.Attribute):
      parts.append(node.attr)
      node = node.value
    elif (
      isinstance(node, ast.Subscript)
      and isinstance(node.slice, ast.Constant)
      and isinstance(node.slice.value, str)
    ):
      parts.append(node.slice.value)
      node = node.value
    elif isinstance(node, ast.Name):
      return node.id, parts[::-1]
    else:
      return None


def _returned_prefixes(tree) -> dict[str, tuple[str, list[str]]]:
  """``{function: (the variable it returns, the field its caller assigns the result to)}``.

  ``resume_config()`` builds ``resume`` and returns it; ``config.resume = resume_config()`` makes
  its ``resume.x`` the field ``resume.x``. A result assigned to a bare name (``config =
  run_config()``) is the root config.
  """
  returns = {}
  for function in ast.walk(tree):
    if isinstance(function, ast.FunctionDef):
      for node in _own_statements(function):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Name):
          returns[function.name] = node.value.id
  prefixes = {name: (variable, []) for name, variable in returns.items()}
  for node in ast.walk(tree):
    if (
      isinstance(node, ast.Assign)
      and isinstance(node.value, ast.Call)
      and isinstance(node.value.func, ast.Name)
      and node.value.func.id in returns
    ):
      dotted = _dotted(node.targets[0])
      if dotted is not None:
        prefixes[node.value.func.id] = (returns[node.value.func.id], dotted[1])
  return prefixes


def _comment_lines(source: str) -> dict[int, tuple[str, bool]]:
  """``{line: (comment text, whether the comment is the whole line)}``."""
  comments = {}
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      text = token.string.lstrip("#").strip()
      whole_line = not token.line[: token.start[1]].strip()
      comments[token.start[0]] = (text, whole_line)
  return comments


def _comment_at(lines: dict[int, tuple[str, bool]], line: int) -> str:
  """The whole-line comments just above ``line`` and the comment at its end, as one text."""
  above = []
  previous = line - 1
  while previous in lines and lines[previous][1]:
    above.append(lines[previous][0])
    previous -= 1
  texts = above[::-1]
  if line in lines and not lines[line][1]:
    texts.append(lines[line][0])
  return " ".join(t for t in texts if t and not t.startswith(_TOOL_PREFIXES))
