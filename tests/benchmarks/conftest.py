"""Tests of the benchmark scripts' plumbing: all in the slow tier (CI runs them)."""

import os

import pytest

_HERE = os.path.dirname(os.path.abspath(__file__))


def pytest_collection_modifyitems(config, items):  # noqa: ARG001 (hook signature)
  for item in items:
    if str(item.fspath).startswith(_HERE):
      item.add_marker(pytest.mark.slow)
