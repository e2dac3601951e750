"""Fixtures shared by the training-loop tests (test_loop, test_faults)."""

import pytest

from tests import loop_helpers  # first: it configures JAX for quick CPU tests

from advseg_jax.cli import train as cli  # noqa: E402

REFERENCE_STEPS = 4


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The `shapes` dataset, prepared once per session (modules with their own `data_dir`
  fixture, e.g. the data-builder tests, override this one)."""
  return loop_helpers.prepare_shapes(str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="session")
def reference(data_dir, tmp_path_factory):
  """One uninterrupted demo run of REFERENCE_STEPS steps (checkpoints 2 and 4, final_model).
  Tests that inject faults work on copies of it."""
  wd = str(tmp_path_factory.mktemp("reference"))
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=REFERENCE_STEPS)) == 0
  return wd
