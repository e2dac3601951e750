"""Shared pieces of the training-loop tests (test_loop, test_configs, test_checkpoint).

Importing this module configures JAX for quick CPU tests: XLA's heavy optimisations off
(`jax_disable_most_optimizations`, the same numbers for these tiny nets, half the compile
time) and a persistent compilation cache, so test cases and subprocesses that build the
same step share one compilation. The settings are also exported as environment variables
so `python -m advseg_jax train` subprocesses compile identical programs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from typing import Dict, Optional

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
CACHE_DIR = os.environ.get("ADVSEG_JAX_TEST_CACHE",
                           os.path.join("/tmp", f"advseg_jax_test_cache_{os.getuid()}"))

JAX_ENV = {
    "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
    "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1",
}
for _k, _v in JAX_ENV.items():
  os.environ.setdefault(_k, _v)

import jax  # noqa: E402  (after the environment above)

jax.config.update("jax_disable_most_optimizations", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def subprocess_env(**extra: str) -> Dict[str, str]:
  env = dict(os.environ)
  env.update(JAX_ENV)
  env.update(extra)
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


# `python -m advseg_jax ...` with faults injected from the test side (the library has no test
# hooks): patches made in the child before the command runs.
_LAUNCHER = """
import os, runpy, signal, sys
KILL_AT_STEP, KILL_DURING_SAVE_AT_STEP, MAX_FILE_BYTES = {kill_at}, {kill_save}, {max_bytes}
if MAX_FILE_BYTES:  # before the library is imported: every file it writes is capped
  import resource
  resource.setrlimit(resource.RLIMIT_FSIZE, (MAX_FILE_BYTES, MAX_FILE_BYTES))
if KILL_AT_STEP or KILL_DURING_SAVE_AT_STEP:
  from advseg_jax.train import checkpoint, streams
  live = []
  real_init, real_save = checkpoint.TrainCheckpointer.__init__, checkpoint.TrainCheckpointer.save
  real_next = streams.Prefetcher.next

  def init(self, *args, **kwargs):
    real_init(self, *args, **kwargs)
    live.append(self)

  def save(self, step, *args, **kwargs):
    real_save(self, step, *args, **kwargs)
    if KILL_DURING_SAVE_AT_STEP and step == KILL_DURING_SAVE_AT_STEP:  # its write in flight
      os.kill(os.getpid(), signal.SIGKILL)

  def next_batch(self):
    self.batches_read = getattr(self, "batches_read", 0) + 1
    if KILL_AT_STEP and self.batches_read == KILL_AT_STEP + 1:  # that step is finished
      live[-1].wait()  # the saves so far are durable, then die without cleanup
      os.kill(os.getpid(), signal.SIGKILL)
    return real_next(self)

  checkpoint.TrainCheckpointer.__init__, checkpoint.TrainCheckpointer.save = init, save
  streams.Prefetcher.next = next_batch
sys.argv[0] = "advseg_jax"
runpy.run_module("advseg_jax", run_name="__main__", alter_sys=True)
"""


def command(args, *, kill_at_step: Optional[int] = None,
            kill_during_save_at_step: Optional[int] = None,
            max_file_bytes: Optional[int] = None) -> list:
  """The argv of `python -m advseg_jax ARGS` in a child process, SIGKILLed right after step
  `kill_at_step` of a fresh run (once the checkpoint saves started so far have completed),
  or right after the asynchronous save of step `kill_during_save_at_step` started; with
  `max_file_bytes`, every file the child writes is capped at that size (RLIMIT_FSIZE)."""
  code = _LAUNCHER.format(kill_at=int(kill_at_step or 0),
                          kill_save=int(kill_during_save_at_step or 0),
                          max_bytes=int(max_file_bytes or 0))
  return [sys.executable, "-c", code, *args]


def run_command(args, *, timeout: int = 900, env: Optional[Dict[str, str]] = None,
                **faults) -> subprocess.CompletedProcess:
  """Runs `command(args, **faults)` in the repository with the test JAX settings."""
  return subprocess.run(command(args, **faults), cwd=REPO, capture_output=True, text=True,
                        timeout=timeout, env=env or subprocess_env())


def load_preset(spec: str):
  """`'voc.py:semi_0.125,runlocal'` -> the ConfigDict (as `--config` would load it)."""
  path, _, arg = spec.partition(":")
  full = path if os.path.isabs(path) else os.path.join(CONFIGS, path)
  module_spec = importlib.util.spec_from_file_location(
      "preset_" + os.path.basename(full)[:-3], full)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


# ----------------------------------------------------------------------------- fake data
class FakeTrainIterator:
  """Deterministic random batches with grain-style get_state / set_state."""

  def __init__(self, batch_size: int, hw, num_classes: int, labels: bool, seed: int,
               num_examples: int):
    self.batch_size, self.hw, self.k = batch_size, tuple(hw), num_classes
    self.labels, self.seed, self.n = labels, seed, num_examples
    self.i = 0

  def __iter__(self):
    return self

  def __next__(self) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.i])
    self.i += 1
    h, w = self.hw
    out = {"image": (rng.normal(size=(self.batch_size, h, w, 3)) * 50).astype(np.float32)}
    if self.labels:
      label = rng.integers(0, self.k, size=(self.batch_size, h, w)).astype(np.int32)
      label[:, :2] = 255
      out["label"] = label
    return out

  def get_state(self):
    return {"i": self.i}

  def set_state(self, state):
    self.i = int(state["i"])


class FakeEvalIterable:
  def __init__(self, batch_size: int, num_classes: int, hw=(33, 33), num_batches: int = 1):
    self.batch_size, self.k, self.hw, self.n = batch_size, num_classes, hw, num_batches

  def __len__(self):
    return self.n

  def __iter__(self):
    for i in range(self.n):
      rng = np.random.default_rng([99, i])
      h, w = self.hw
      b = self.batch_size
      yield {"image": (rng.normal(size=(b, h, w, 3)) * 50).astype(np.float32),
             "label": rng.integers(0, self.k, size=(b, h, w)).astype(np.int32),
             "orig_hw": np.tile(np.array([h, w], np.int32), (b, 1)),
             "mask": np.ones((b,), bool), "file_name": np.array([f"x{i}"] * b, object)}


class FakeProvider:
  """Stands in for `advseg_jax.data` when a dataset is not available: real `get_info`
  (class counts, Cityscapes ids), random images of the configured crop / resize size."""

  def __init__(self, num_examples: int = 16, default_hw=(33, 33)):
    self.n = num_examples
    self.default_hw = default_hw
    self.calls = []

  def get_info(self, name, config_name=None):
    from advseg_jax import data
    return data.get_info(name, config_name)

  def num_examples(self, cfg, split):
    return self.n

  def make_train_iterator(self, cfg, *, split, indices=None, batch_size, seed,
                          process_index=0, process_count=1):
    self.calls.append(("train", cfg.name, split, None if indices is None else len(indices),
                       batch_size, seed))
    hw = cfg.crop_size or cfg.resize_size or self.default_hw
    k = self.get_info(cfg.name, cfg.config_name).num_classes
    return FakeTrainIterator(batch_size, hw, k, bool(cfg.use_labels), seed, self.n)

  def make_eval_iterator(self, cfg, *, split, batch_size=1, process_index=0, process_count=1):
    k = self.get_info(cfg.name, cfg.config_name).num_classes
    return FakeEvalIterable(batch_size, k)


def shrink_for_test(config, steps: int = 2):
  """The runlocal preset made smaller still: `steps` steps, one eval / checkpoint at the end."""
  config.num_steps = steps
  config.log_every = 1
  config.eval_every = steps
  config.checkpoint_every = steps
  config.eval_max_examples = 1
  return config


def prepare_shapes(data_dir: str) -> str:
  from advseg_jax import data
  data.ensure_prepared("shapes", data_dir, config_name="source")
  return data_dir


def demo_argv(workdir: str, data_dir: str, *extra: str, steps: int = 4) -> list:
  """CLI arguments of the tiny demo run shared by the loop tests."""
  return ["--config", os.path.join(CONFIGS, "demo.py") + ":semi,runlocal",
          f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.target_data.data_dir={data_dir}",
          f"--config.eval_data.data_dir={data_dir}", f"--config.num_steps={steps}",
          "--config.log_every=1", "--config.eval_every=2", "--config.checkpoint_every=2",
          "--config.eval_max_examples=4", "--config.method.semi_start=1", *extra]


def read_jsonl(path: str):
  import json
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def losses_by_step(path: str, prefix=("g/", "d/")) -> Dict[int, Dict[str, float]]:
  """Last logged value of every loss term per step (a resumed run logs a step again)."""
  out: Dict[int, Dict[str, float]] = {}
  for row in read_jsonl(path):
    terms = {k: v for k, v in row.items() if k.startswith(prefix)}
    if terms:
      out.setdefault(int(row["step"]), {}).update(terms)
  return out


def assert_same_variables(a, b) -> None:
  """Two variable trees have the same leaves, bit for bit."""
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))


def final_model_variables(workdir: str):
  from advseg_jax import model_io  # pylint: disable=import-outside-toplevel
  from advseg_jax.train import checkpoint as ck  # pylint: disable=import-outside-toplevel
  variables, _ = model_io.load_model(os.path.join(workdir, ck.FINAL_MODEL))
  return variables
