"""Labelled / unlabelled partitions of a training split (AdvSemiSeg `--partial-data`).

AdvSemiSeg (docs/FIDELITY.md §6.2): `train_ids = range(N)` shuffled,
`partial_size = int(partial_data * N)`, labelled = `train_ids[:partial_size]`, unlabelled =
the rest; the permutation is pickled to `train_id.pkl` and can be reloaded with
`--partial-id`. Here the permutation is seeded (`np.random.default_rng(seed).permutation(N)`)
and saved as JSON; the originals' `train_id.pkl` (Python 2 pickles included) loads too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from typing import Optional, Sequence

import numpy as np

FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Split:
  """A partition of `range(num_examples)`.

  Attributes:
    permutation: `int64 [N]`, the shuffled ids.
    fraction: labelled fraction (1/8, 1/4, 1/2, 1.0, ...).
    seed: the seed that produced `permutation` (None when loaded from a pickle).
  """

  permutation: np.ndarray
  fraction: float
  seed: Optional[int] = None

  @property
  def num_examples(self) -> int:
    """N, the size of the split."""
    return int(self.permutation.size)

  @property
  def num_labelled(self) -> int:
    """`int(fraction * N)`."""
    return int(self.fraction * self.num_examples)

  @property
  def labelled(self) -> np.ndarray:
    """`perm[:int(fraction * N)]` (1322 / 2645 / 5291 of 10582 for 1/8, 1/4, 1/2)."""
    return self.permutation[: self.num_labelled]

  @property
  def unlabelled(self) -> np.ndarray:
    """`perm[int(fraction * N):]`."""
    return self.permutation[self.num_labelled:]


def _check_fraction(fraction: float) -> float:
  fraction = float(fraction)
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"labelled fraction must be in (0, 1], got {fraction}")
  return fraction


def make_split(num_examples: int, fraction: float, seed: int) -> Split:
  """Seeded permutation of `range(num_examples)` split at `int(fraction * N)`."""
  perm = np.random.default_rng(seed).permutation(int(num_examples)).astype(np.int64)
  return Split(perm, _check_fraction(fraction), int(seed))


def split_from_permutation(permutation: Sequence[int], fraction: float,
                           num_examples: Optional[int] = None) -> Split:
  """Wraps a given permutation (e.g. from `train_id.pkl`), checking it is one."""
  perm = np.asarray(list(permutation) if not isinstance(permutation, np.ndarray)
                    else permutation).astype(np.int64).reshape(-1)
  n = perm.size if num_examples is None else int(num_examples)
  if perm.size != n or not np.array_equal(np.sort(perm), np.arange(n)):
    raise ValueError(f"not a permutation of range({n}) ({perm.size} ids)")
  return Split(perm, _check_fraction(fraction), None)


def save_split(split: Split, path: str) -> None:
  """Writes the split as JSON (atomically: temp file + rename)."""
  data = {"format_version": FORMAT_VERSION, "num_examples": split.num_examples,
          "fraction": split.fraction, "seed": split.seed,
          "permutation": split.permutation.tolist()}
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(data, f)
  os.replace(tmp, path)


def load_split(path: str, fraction: Optional[float] = None) -> Split:
  """Reads a JSON split (`save_split`) or an originals' `train_id.pkl`.

  Args:
    path: `.json` file, or a pickle of a list / array of ints (`encoding='latin1'` so
      Python 2 numpy pickles load).
    fraction: override the stored fraction (required for pickles, which do not store it).

  Returns:
    The `Split`.
  """
  if path.endswith(".json"):
    with open(path) as f:
      data = json.load(f)
    return Split(np.asarray(data["permutation"], np.int64).reshape(-1),
                 _check_fraction(fraction if fraction is not None else data["fraction"]),
                 data.get("seed"))
  if fraction is None:
    raise ValueError(f"{path}: a pickled train_id list needs an explicit labelled fraction")
  with open(path, "rb") as f:
    ids = pickle.load(f, encoding="latin1")
  return split_from_permutation(np.asarray(ids).reshape(-1), fraction)


def load_or_create(workdir: str, num_examples: int, fraction: float, seed: int,
                   partial_id: Optional[str] = None, filename: str = "split.json") -> Split:
  """The run's split, always (re)written to `workdir/filename`.

  Args:
    workdir: the run's folder.
    num_examples: N, the size of the training split.
    fraction: labelled fraction.
    seed: seed of a new split.
    partial_id: a split file to use (JSON or an originals' `train_id.pkl`); else
      `workdir/filename` if present, else a new seeded split.
    filename: the split's file name in `workdir`.

  Returns:
    The `Split`.
  """
  path = os.path.join(workdir, filename)
  if partial_id:
    split = load_split(partial_id, fraction)
  elif os.path.exists(path):
    split = load_split(path)
    if split.num_examples != num_examples or abs(split.fraction - fraction) > 1e-12:
      raise ValueError(
          f"{path}: stored split has N={split.num_examples}, fraction={split.fraction}; "
          f"the run asks for N={num_examples}, fraction={fraction}")
  else:
    split = make_split(num_examples, fraction, seed)
  if split.num_examples != num_examples:
    raise ValueError(f"split has {split.num_examples} ids but the dataset has {num_examples}")
  save_split(split, path)
  return split
