"""The package's shape: module and function sizes, import layering, no cycles, no notes
from outside the repository. Read from the source with `ast`; nothing is imported."""

import ast
import collections
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE = os.path.join(REPO, "advseg_jax")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80
MAX_LOCAL_PACKAGE_IMPORTS = 40
# Which top-level parts of the package each part may import (data flows one way: configs ->
# data -> train <- models / losses / methods -> checkpoints / metrics -> inference -> cli).
LOWER = {"precision", "normalization"}
ALLOWED = {
    "kernels": LOWER,
    "models": LOWER | {"kernels"},
    "losses": LOWER,
    "data": LOWER,
    "methods": LOWER | {"losses", "models"},
    "metrics": LOWER,
}
SHIPPED = ("advseg_jax", "configs", "docs", "benchmarks", "tests", ".ci", "README.md",
           "pyproject.toml", "requirements.txt")
OUTSIDE_NOTES = re.compile(r"ORIGINALS\.md|STACK\.md|DESIGN\.md|\.\./shared")


def _modules():
  """{dotted module name: (path, ast tree)} of every module in the package."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(root, f)
        rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".")
        name = rel[:-len(".__init__")] if rel.endswith(".__init__") else rel
        with open(path) as fh:
          out[name] = (path, ast.parse(fh.read(), path))
  return out


MODULES = _modules()


def _resolve(name):
  """The longest prefix of `name` that is a package module, or None."""
  while name and name not in MODULES:
    name = name.rpartition(".")[0]
  return name or None


def _imported(node):
  """advseg_jax modules an import node names (the package uses absolute imports only)."""
  if isinstance(node, ast.Import):
    found = {_resolve(a.name) for a in node.names}
  elif node.level:
    raise AssertionError(f"relative import of {node.module!r}: use absolute imports")
  else:
    found = {_resolve(f"{node.module}.{a.name}") for a in node.names}
    if None in found or not found:
      found.add(_resolve(node.module or ""))
  return {m for m in found if m and m.startswith("advseg_jax")}


def _imports(top_level_only):
  graph = collections.defaultdict(set)
  for name, (_, tree) in MODULES.items():
    nodes = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        graph[name] |= _imported(node) - {name}
  return graph


def _part(module):
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else "advseg_jax"


def test_module_sizes():
  big = {m: n for m, (p, _) in MODULES.items()
         if (n := sum(1 for _ in open(p))) > MAX_MODULE_LINES}
  assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_function_sizes():
  long = {}
  for m, (_, tree) in MODULES.items():
    for node in ast.walk(tree):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION_LINES:
          long[f"{m}.{node.name}"] = n
  assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycle():
  graph = _imports(top_level_only=False)
  state, stack, cycles = {}, [], []

  def visit(m):
    state[m] = "open"
    stack.append(m)
    for n in sorted(graph.get(m, ())):
      if n.startswith(m + ".") or m.startswith(n + "."):
        continue  # a package and its own modules
      if state.get(n) == "open":
        cycles.append(stack[stack.index(n):] + [n])
      elif n not in state:
        visit(n)
    stack.pop()
    state[m] = "done"

  for m in sorted(MODULES):
    if m not in state:
      visit(m)
  assert not cycles, f"import cycles: {cycles[:5]}"


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_lower_layers_import_nothing_above_them(part):
  graph = _imports(top_level_only=False)
  bad = {m: sorted(n for n in targets if _part(n) not in ALLOWED[part] | {part})
         for m, targets in graph.items() if _part(m) == part}
  bad = {m: t for m, t in bad.items() if t}
  assert not bad, f"{part} imports from above its layer: {bad}"


def test_function_local_package_imports_are_few():
  top = _imports(top_level_only=True)
  every = _imports(top_level_only=False)
  local = sum(len(every[m] - top[m]) for m in every)
  assert local <= MAX_LOCAL_PACKAGE_IMPORTS, f"{local} function-local package imports"


def test_no_process_reexec():
  offenders = [m for m, (p, _) in MODULES.items() if re.search(r"\bos\.exec\w*\(", open(p).read())]
  assert not offenders, offenders


def test_shipped_files_cite_no_notes_outside_the_repository():
  hits = []
  for top in SHIPPED:
    path = os.path.join(REPO, top)
    files = [path] if os.path.isfile(path) else [
        os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs
        if f.endswith((".py", ".md", ".sh", ".toml", ".txt"))]
    for f in files:
      with open(f, errors="replace") as fh:
        for i, line in enumerate(fh, 1):
          if OUTSIDE_NOTES.search(line):
            hits.append(f"{os.path.relpath(f, REPO)}:{i}")
  assert not hits, f"{len(hits)} references to notes outside the repository: {hits[:10]}"
