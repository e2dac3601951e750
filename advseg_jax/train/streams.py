"""The data streams of a training run, and the one prefetch path.

One step consumes one batch from every stream the method needs (`methods.streams`):

    labelled    config.data on the labelled ids (`labelled_fraction`, split by `split_rule`)
    gt          config.data on the labelled ids again, independent order; `config.data.
                gt_loader` picks AdvSemiSeg's VOCGTDataSet sizing ('advsemi') or 'plain'
    unlabelled  config.data on the remaining ids, labels not decoded
    source      config.data (labelled)            target  config.target_data, no labels

The ICLR-2018 reproduction ('iclr2018') alternates at random between a labelled and an
unlabelled batch: both streams are read every step and the step itself draws which one it
trains on (`advseg_jax.methods.iclr2018.labelled_turn`, from the seed and the step number, so the
draws survive a resume).

The originals' `--batch-size` is per sub-iteration, so each stream yields
`batch_size * iter_size` images per step (the step splits them into `iter_size` chunks);
each process reads `batch_size * iter_size / process_count` of them.

A `provider` is `advseg_jax.data` or anything with the same four functions (`get_info`,
`num_examples`, `make_train_iterator`, `make_eval_iterator`).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np
from jax.experimental import multihost_utils

from advseg_jax import data
from advseg_jax.data import splits
from advseg_jax.train.errors import TrainingError

SPLIT_FILE = "split.json"
STREAM_SEED_OFFSETS = {"labelled": 0, "gt": 1, "unlabelled": 2, "source": 3, "target": 4}


def stream_config(config: Any, stream: str):
  """The dataset config of one stream (a resolved copy of config.data / target_data)."""
  base = config.target_data if stream == "target" else config.data
  c = base.copy_and_resolve_references()
  with c.unlocked():
    if stream in ("labelled", "unlabelled", "source", "target"):
      c.gt_loader = "plain"
    c.use_labels = stream in ("labelled", "gt", "source")
  return c


def sync(name: str) -> None:
  """A barrier across processes (nothing with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def prepare_generated_datasets(config: Any, streams: Sequence[str]) -> None:
  """Builds datasets that need no download (`shapes`) on first use (process 0)."""
  cfgs = [stream_config(config, s) for s in streams] + [config.eval_data]
  if jax.process_index() == 0:
    done = set()
    for c in cfgs:
      key = (c.name, c.config_name, c.data_dir)
      if key in done:
        continue
      done.add(key)
      if not data.get_info(c.name, c.config_name).needs_manual_download:
        data.ensure_prepared(c.name, c.data_dir, config_name=c.config_name)
  sync("prepare")


@dataclasses.dataclass
class SplitInfo:
  """The labelled / unlabelled ids of a run (None arrays: every example, no split file)."""
  path: Optional[str]
  fraction: float
  num_examples: int
  num_labelled: int
  seed: Optional[int]
  source: str
  labelled: Optional[np.ndarray]
  unlabelled: Optional[np.ndarray]

  def to_json(self) -> Dict[str, Any]:
    return {"path": self.path, "fraction": self.fraction, "num_examples": self.num_examples,
            "num_labelled": self.num_labelled, "seed": self.seed, "source": self.source}


def make_split(config: Any, workdir: str, provider: Any, streams: Sequence[str]) -> SplitInfo:
  """Labelled / unlabelled ids of config.data's split (saved to WORKDIR/split.json)."""
  fraction = float(config.labelled_fraction)
  n = int(provider.num_examples(config.data, config.data.split))
  uses_data = any(s in streams for s in ("labelled", "gt", "unlabelled", "source"))
  if not uses_data or (fraction >= 1.0 and not config.split_file):
    return SplitInfo(None, fraction, n, n, None, "all", None, None)
  path = os.path.join(workdir, SPLIT_FILE)
  if jax.process_index() == 0:
    try:
      split = splits.load_or_create(workdir, n, fraction, int(config.seed),
                                    partial_id=config.split_file, filename=SPLIT_FILE,
                                    rule=config.get("split_rule", "advsemi"))
    except (ValueError, OSError) as e:
      raise TrainingError(f"labelled split: {e}") from None
  sync("split")
  if jax.process_index() != 0:
    split = splits.load_split(path)
  if split.num_labelled == 0:
    raise TrainingError(f"labelled_fraction {fraction} of {n} examples leaves no labelled "
                        f"example")
  if "unlabelled" in streams and split.unlabelled.size == 0:
    raise TrainingError(f"labelled_fraction {fraction} of {n} examples leaves no unlabelled "
                        f"example for the semi-supervised terms")
  source = config.split_file or ("saved" if split.seed is None else f"seed {split.seed}"
                                 + ("" if split.rule in (None, "advsemi")
                                    else f" ({split.rule} rule)"))
  return SplitInfo(path, split.fraction, split.num_examples, split.num_labelled, split.seed,
                   source, split.labelled, split.unlabelled)


def make_train_iterators(config: Any, provider: Any, streams: Sequence[str], split: SplitInfo,
                         per_process_batch: int) -> Dict[str, Any]:
  """`{stream: iterator}` of this process's batches (each seeded by the stream's offset)."""
  out = {}
  for s in streams:
    cfg = stream_config(config, s)
    indices = None
    if s in ("labelled", "gt", "source"):
      indices = split.labelled
    elif s == "unlabelled":
      indices = split.unlabelled
    seed = int(config.seed) + 1009 * STREAM_SEED_OFFSETS[s]
    out[s] = provider.make_train_iterator(
        cfg, split=cfg.split, indices=None if indices is None else indices.tolist(),
        batch_size=per_process_batch, seed=seed, process_index=jax.process_index(),
        process_count=jax.process_count())
  return out


class Prefetcher:
  """Reads the next batches of all streams in a background thread.

  Each item is `(batch, states)` where `states` are the iterators' `get_state()` right after
  producing that batch, i.e. what a checkpoint taken after consuming it must store.
  """

  def __init__(self, iterators: Mapping[str, Any], size: int = 2):
    self.iterators = dict(iterators)
    self._q: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="advseg-prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        batch = {k: next(it) for k, it in self.iterators.items()}
        states = {k: it.get_state() for k, it in self.iterators.items()}
        if not self._put((batch, states)):
          return
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def next(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The next `(batch, iterator states)`; re-raises an error of the data thread."""
    while True:
      try:
        item = self._q.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive():
          raise TrainingError("the data thread stopped without an error") from None
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    while True:
      try:
        self._q.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)
