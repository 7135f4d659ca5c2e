"""The import graph of ganjax/: no cycles and no system importing another (issue 14), counting
imports inside functions. Read from the source with ast, so nothing is imported.
"""

import ast
import os

from conftest import REPO_ROOT

PACKAGE = os.path.join(REPO_ROOT, "ganjax")


def _module_name(path: str) -> str:
  relative = os.path.relpath(path, REPO_ROOT)[: -len(".py")].split(os.sep)
  if relative[-1] == "__init__":
    relative = relative[:-1]
  return ".".join(relative)


def _modules() -> dict[str, str]:
  found = {}
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        found[_module_name(path)] = path
  return found


def _resolve(name: str, modules: dict[str, str]) -> str | None:
  """The ganjax module ``name`` refers to (a module, or a name inside a package's module)."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def import_graph() -> dict[str, set[str]]:
  """``{module: the ganjax modules it imports}``, at any depth of its code."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          parent = package.split(".")[: len(package.split(".")) - node.level + 1]
          base = ".".join([*parent, base] if base else parent)
        # A submodule by its name, else a name defined in the module ``base``.
        names = [
          f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
          for alias in node.names
        ]
      else:
        continue
      for name in names:
        target = _resolve(name, modules)
        if target is not None and target != module and target != "ganjax":
          targets.add(target)
    graph[module] = targets
  return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[set[str]]:
  """Tarjan's algorithm: the groups of two or more modules that reach each other."""
  index, low, stack, on_stack, groups = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph.get(v, ()):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      group = set()
      while True:
        w = stack.pop()
        on_stack.discard(w)
        group.add(w)
        if w == v:
          break
      if len(group) > 1:
        groups.append(group)

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return groups


def test_the_graph_reader_sees_function_level_imports():
  graph = import_graph()
  # ganjax.api imports ganjax.systems only inside functions.
  assert "ganjax.systems" in graph["ganjax.api"]
  assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycles():
  cycles = strongly_connected(import_graph())
  assert not cycles, f"modules that import each other: {sorted(map(sorted, cycles))}"


def test_no_system_imports_another():
  graph = import_graph()
  system_imports = {
    (module, target)
    for module, targets in graph.items()
    if module.startswith("ganjax.systems.")
    for target in targets
    if target.startswith("ganjax.systems.")
  }
  assert not system_imports, f"systems importing other systems: {sorted(system_imports)}"
