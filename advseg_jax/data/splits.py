"""Labelled / unlabelled partitions of a training split (AdvSemiSeg `--partial-data`).

Two rules draw a new split (`make_split(..., rule=...)`, config field `split_rule`):

* 'advsemi' (AdvSemiSeg, docs/FIDELITY.md §6.2): `train_ids = range(N)` shuffled,
  `partial_size = int(partial_data * N)`, labelled = `train_ids[:partial_size]`, unlabelled =
  the rest; the original pickles the permutation to `train_id.pkl` (reloaded with
  `--partial-id`). Here the permutation is seeded (`np.random.default_rng(seed).permutation(N)`).
* 'iclr2018' (the ICLR-2018 reproduction, docs/FIDELITY.md §8, `datasets/pascalvoc.py:27`,
  `:38`): `np.random.seed(100)`, labelled = `np.random.choice(range(N), int(N * fraction),
  replace=False)` in the order drawn, unlabelled = the other ids in increasing order. The
  seed is always 100, whatever the run's seed. The ids are positions in the split as stored,
  so the subset equals the original's when the list order does (`voc_aug`'s `train_aug.txt`
  is, line for line, the original's `datasets/lists/train.txt`).

Either way the split is kept as one permutation (labelled first) and saved as JSON; the
originals' `train_id.pkl` (Python 2 pickles included) loads too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from typing import Optional, Sequence

import numpy as np

FORMAT_VERSION = 1
SPLIT_RULES = ("advsemi", "iclr2018")
ICLR2018_SEED = 100  # datasets/pascalvoc.py:27 np.random.seed(100)


@dataclasses.dataclass(frozen=True)
class Split:
  """A partition of `range(num_examples)`.

  Attributes:
    permutation: `int64 [N]`, the shuffled ids.
    fraction: labelled fraction (1/8, 1/4, 1/2, 1.0, ...).
    seed: the seed that produced `permutation` (None when loaded from a pickle).
    rule: the `SPLIT_RULES` entry that drew it (None when loaded from a pickle).
  """

  permutation: np.ndarray
  fraction: float
  seed: Optional[int] = None
  rule: Optional[str] = None

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


def make_split(num_examples: int, fraction: float, seed: int, rule: str = "advsemi") -> Split:
  """A new split of `range(num_examples)`, labelled = the first `int(fraction * N)` ids.

  Args:
    num_examples: N.
    fraction: labelled fraction in (0, 1].
    seed: seed of the 'advsemi' rule (a seeded permutation); 'iclr2018' ignores it and uses
      `np.random.seed(100)` (see the module docstring).
    rule: one of `SPLIT_RULES`.

  Returns:
    The `Split` (its permutation `int64 [N]`, labelled ids first).
  """
  n, fraction = int(num_examples), _check_fraction(fraction)
  if rule == "advsemi":
    perm = np.random.default_rng(seed).permutation(n).astype(np.int64)
    return Split(perm, fraction, int(seed), rule)
  if rule != "iclr2018":
    raise ValueError(f"split rule must be one of {SPLIT_RULES}, got {rule!r}")
  # the legacy RandomState stream of np.random.seed(100); choice(range(n)) == choice(n)
  labelled = np.random.RandomState(ICLR2018_SEED).choice(n, int(n * fraction), replace=False)
  rest = np.setdiff1d(np.arange(n), labelled)  # increasing order
  perm = np.concatenate([labelled, rest]).astype(np.int64)
  return Split(perm, fraction, ICLR2018_SEED, rule)


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
          "fraction": split.fraction, "seed": split.seed, "rule": split.rule,
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
    seed = data.get("seed")  # files written before `rule` existed are 'advsemi' ones
    return Split(np.asarray(data["permutation"], np.int64).reshape(-1),
                 _check_fraction(fraction if fraction is not None else data["fraction"]),
                 seed, data.get("rule", "advsemi" if seed is not None else None))
  if fraction is None:
    raise ValueError(f"{path}: a pickled train_id list needs an explicit labelled fraction")
  with open(path, "rb") as f:
    ids = pickle.load(f, encoding="latin1")
  return split_from_permutation(np.asarray(ids).reshape(-1), fraction)


def load_or_create(workdir: str, num_examples: int, fraction: float, seed: int,
                   partial_id: Optional[str] = None, filename: str = "split.json",
                   rule: str = "advsemi") -> Split:
  """The run's split, always (re)written to `workdir/filename`.

  Args:
    workdir: the run's folder.
    num_examples: N, the size of the training split.
    fraction: labelled fraction.
    seed: seed of a new split.
    partial_id: a split file to use (JSON or an originals' `train_id.pkl`); else
      `workdir/filename` if present, else a new split by `rule`.
    filename: the split's file name in `workdir`.
    rule: the `SPLIT_RULES` entry of a new split; a stored split drawn by another rule is
      an error.

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
    if split.rule is not None and split.rule != rule:
      raise ValueError(f"{path}: stored split was drawn by split_rule {split.rule!r}; the run "
                       f"asks for {rule!r} (keep the run's split_rule or use a new workdir)")
  else:
    split = make_split(num_examples, fraction, seed, rule)
  if split.num_examples != num_examples:
    raise ValueError(f"split has {split.num_examples} ids but the dataset has {num_examples}")
  save_split(split, path)
  return split
