"""PASCAL VOC 2012 + SBD augmented segmentation labels (`SegmentationClassAug`).

Manual download. `manual_dir` layout (the VOC2012 folder itself, or a folder containing
`VOC2012/` or `VOCdevkit/VOC2012/`):

  JPEGImages/<id>.jpg
  SegmentationClassAug/<id>.png            # indices 0..20, 255 = boundary / void
  ImageSets/SegmentationAug/train_aug.txt  # AdvSemiSeg dataset/voc_list/train_aug.txt (10,582 ids)
  ImageSets/SegmentationAug/val.txt        # AdvSemiSeg dataset/voc_list/val.txt (1,449 ids)

The two list files are AdvSemiSeg's `dataset/voc_list/*.txt` (one id such as
`2007_000032` per line); copy them there. They cannot be shipped with this package and the
train order matters: split index `i` is line `i` of `train_aug.txt`, which is what the
originals' `train_id.pkl` permutations index into.

Splits: `train` (train_aug.txt), `validation` (val.txt). Labels keep their values
(0..20 and 255); any other value is an error naming the file.
"""

from __future__ import annotations

import os

from advseg_jax.data import labels
from advseg_jax.data.builders import common


class Builder(common.ManualSegBuilder):
  """VOC 2012 augmented (train_aug / val) semantic segmentation."""

  name = "advseg_voc_aug"
  IMAGE_FORMAT = "jpeg"
  VALID_RAW_IDS = labels.VOC_VALID_RAW_IDS
  EXPECTED_SIZES = {"train": 10582, "validation": 1449}
  LISTS = {"train": "train_aug.txt", "validation": "val.txt"}
  LAYOUT = ("<manual_dir>/JPEGImages/<id>.jpg, <manual_dir>/SegmentationClassAug/<id>.png, "
            "<manual_dir>/ImageSets/SegmentationAug/{train_aug,val}.txt (AdvSemiSeg lists)")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put VOC2012 JPEGImages/, SegmentationClassAug/ and AdvSemiSeg's dataset/voc_list/"
      "{train_aug,val}.txt as ImageSets/SegmentationAug/{train_aug,val}.txt in manual_dir.")
  DESCRIPTION = __doc__

  @classmethod
  def find_root(cls, manual_dir: str) -> str:
    """The folder that holds `JPEGImages/` (manual_dir or a VOC2012 folder below it)."""
    for cand in (manual_dir, os.path.join(manual_dir, "VOC2012"),
                 os.path.join(manual_dir, "VOCdevkit", "VOC2012")):
      if os.path.isdir(os.path.join(cand, "JPEGImages")):
        return cand
    return manual_dir

  @classmethod
  def check_manual_dir(cls, manual_dir: str) -> None:
    common.require_dir(manual_dir, "manual_dir", cls.LAYOUT)
    root = cls.find_root(manual_dir)
    for sub in ("JPEGImages", "SegmentationClassAug"):
      common.require_dir(os.path.join(root, sub), sub, cls.LAYOUT)
    for fname in cls.LISTS.values():
      path = os.path.join(root, "ImageSets", "SegmentationAug", fname)
      if not os.path.isfile(path):
        raise common.LayoutError(
            f"missing list file {path} (copy AdvSemiSeg's dataset/voc_list/{fname}); "
            f"expected layout: {cls.LAYOUT}")

  def _label_mapping(self) -> dict[int, int]:
    return {i: i for i in range(21)}

  def _list_examples(self, manual_dir: str, split: str) -> list[common.ExampleRef]:
    root = self.find_root(manual_dir)
    ids = common.read_list_file(
        os.path.join(root, "ImageSets", "SegmentationAug", self.LISTS[split]))
    return [common.ExampleRef(
        file_name=i,
        image=os.path.join(root, "JPEGImages", f"{i}.jpg"),
        label=os.path.join(root, "SegmentationClassAug", f"{i}.png")) for i in ids]
