"""Random seeds of the tests: drawn fresh each run, printed when a test fails.

    seed = seeds.draw()            # ADVSEG_TEST_SEED=<int> replays a printed seed

Loaded as a pytest plugin (`-p tests.seeds` in pyproject.toml): a failing test's report gets
a "random seeds" section listing every seed it drew.
"""

import os

import numpy as np
import pytest

ENV = "ADVSEG_TEST_SEED"
_drawn = []


def draw(bits: int = 63) -> int:
  """A seed below 2**bits: ADVSEG_TEST_SEED if set, else fresh entropy (recorded)."""
  if os.environ.get(ENV):
    seed = int(os.environ[ENV])
  else:
    seed = int(np.random.SeedSequence().entropy % (2**bits - 1))
  _drawn.append(seed)
  return seed


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):  # noqa: ARG001 (hook signature)
  _drawn.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ARG001 (hook signature)
  outcome = yield
  report = outcome.get_result()
  if report.failed and _drawn:
    report.sections.append(("random seeds", f"drawn: {list(_drawn)}; rerun with {ENV}=<seed>"))
