"""Loading a benchmark script (benchmarks/<folder>/<name>.py) as a module for its tests."""

import importlib.util
import os
import sys
from types import ModuleType

BENCHMARKS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))


def load(relpath: str, name: str) -> ModuleType:
  """The script at benchmarks/`relpath`, imported as module `name`; its folder goes on
  sys.path first, so its sibling imports resolve."""
  path = os.path.join(BENCHMARKS, relpath)
  folder = os.path.dirname(path)
  if folder not in sys.path:
    sys.path.insert(0, folder)
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[name] = mod   # dataclasses resolve their annotations through it
  spec.loader.exec_module(mod)
  return mod
