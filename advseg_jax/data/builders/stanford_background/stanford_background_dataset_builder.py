"""Stanford Background (Gould et al., ICCV 2009), the first benchmark of Luc et al. 2016.

Manual download (`iccv09Data.tar.gz`). `manual_dir` is the extracted `iccv09Data` folder, or
a folder containing it:

  images/<name>.jpg            # 715 outdoor scenes of about 320x240
  labels/<name>.regions.txt    # one line of integers per pixel row; negative = unknown

Classes 0..7: sky, tree, road, grass, water, building, mountain, foreground object. Negative
(unknown) pixels are stored as 255; any other value, or a regions file whose size differs
from its image, is an error naming the file. `file_name` is `<name>`.

Splits. Luc et al. follow the standard protocol of Gould et al.: 5-fold cross-validation,
572 training and 143 test images per fold. No fold list ships with the data, so the folds
here are seeded: the names sorted, permuted by `np.random.default_rng(FOLD_SEED)`, cut into
5 folds with `np.array_split` (143 images each). Builder config `k` (`0`..`4`, default `0`)
has split `test` = fold k and `train` = the other four folds, both in name order. The fold
lists are saved with the prepared data: `builder.info.metadata` holds `fold_seed`,
`test_fold` and `folds` (five lists of names).
"""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow_datasets as tfds

from advseg_jax.data.builders import common
from advseg_jax.data.errors import BadExampleError

NUM_CLASSES = 8
NUM_FOLDS = 5
FOLD_SEED = 0
_REGIONS_SUFFIX = ".regions.txt"


def fold_lists(names, seed: int = FOLD_SEED, num_folds: int = NUM_FOLDS) -> list[list[str]]:
  """`num_folds` disjoint lists of `names` (each sorted): a seeded permutation, cut evenly."""
  ordered = sorted(names)
  perm = np.random.default_rng(seed).permutation(len(ordered))
  return [sorted(ordered[i] for i in part) for part in np.array_split(perm, num_folds)]


def decode_regions(data: bytes, name: str) -> np.ndarray:
  """A `.regions.txt` file -> `int64 [H, W]` class ids with unknown (negative) as 255.

  Raises:
    BadExampleError: the text is not a rectangle of integers, or holds a value above 7.
  """
  if not data.strip():
    raise BadExampleError(name, "expected rows of integers -1..7, the file is empty")
  try:
    raw = np.loadtxt(io.StringIO(data.decode("ascii")), dtype=np.int64, ndmin=2)
  except (UnicodeDecodeError, ValueError) as e:
    raise BadExampleError(name, f"expected rows of integers -1..7 ({e})") from e
  above = np.unique(raw[raw >= NUM_CLASSES])
  if above.size:
    raise BadExampleError(name, f"values {above.tolist()[:10]} outside -1..7")
  return np.where(raw < 0, 255, raw)


class Builder(common.ManualSegBuilder):
  """Stanford Background, 8 classes, one builder config per cross-validation fold."""

  name = "advseg_stanford_background"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=str(k), description=f"fold {k} of {NUM_FOLDS} is the "
                              "test split, the other folds the train split")
      for k in range(NUM_FOLDS)]
  DEFAULT_BUILDER_CONFIG_NAME = "0"
  IMAGE_FORMAT = "jpeg"
  VALID_RAW_IDS = tuple(range(NUM_CLASSES)) + (255,)
  EXPECTED_SIZES = {"train": 572, "test": 143}
  LAYOUT = ("<manual_dir>/images/<name>.jpg, <manual_dir>/labels/<name>.regions.txt "
            "(the extracted iccv09Data folder, or a folder containing it)")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract iccv09Data.tar.gz (Stanford Background, dags.stanford.edu) into manual_dir.")
  DESCRIPTION = __doc__

  @classmethod
  def find_root(cls, manual_dir: str) -> str:
    """The folder that holds `images/` (manual_dir or its `iccv09Data/`)."""
    nested = os.path.join(manual_dir, "iccv09Data")
    return nested if os.path.isdir(os.path.join(nested, "images")) else manual_dir

  @classmethod
  def check_manual_dir(cls, manual_dir: str) -> None:
    common.require_dir(manual_dir, "manual_dir", cls.LAYOUT)
    root = cls.find_root(manual_dir)
    for sub in ("images", "labels"):
      common.require_dir(os.path.join(root, sub), f"Stanford Background {sub}", cls.LAYOUT)

  def _metadata(self) -> tfds.core.MetadataDict:
    return tfds.core.MetadataDict()  # the fold lists, filled in by `_folds`

  def _split_names(self):
    return ("train", "test")

  def _label_mapping(self) -> dict[int, int]:
    return {k: k for k in range(NUM_CLASSES)}

  def _folds(self, root: str) -> list[list[str]]:
    names = [f[: -len(".jpg")] for f in os.listdir(os.path.join(root, "images"))
             if f.endswith(".jpg")]
    folds = fold_lists(names)
    self.info.metadata.update(fold_seed=FOLD_SEED, test_fold=int(self.builder_config.name),
                              folds=folds)
    return folds

  def _list_examples(self, manual_dir: str, split: str) -> list[common.ExampleRef]:
    root = self.find_root(manual_dir)
    folds = self._folds(root)
    test_fold = int(self.builder_config.name)
    if split == "test":
      names = folds[test_fold]
    else:
      names = sorted(n for k, fold in enumerate(folds) if k != test_fold for n in fold)
    return [common.ExampleRef(
        file_name=n, image=os.path.join(root, "images", f"{n}.jpg"),
        label=os.path.join(root, "labels", n + _REGIONS_SUFFIX)) for n in names]

  def _read_raw_label(self, ref: common.FileRef, lab_name: str) -> np.ndarray:
    return decode_regions(common.read_bytes(ref), lab_name)
