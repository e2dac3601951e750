"""GTA5 ("Playing for Data"), labels in Cityscapes labelIds mapped to the 19 trainIds.

Manual download. `manual_dir` layout:

  images/<name>.png      # 00001.png ... 24966.png
  labels/<name>.png      # palette PNG whose indices are Cityscapes labelIds
  train.txt              # optional: one <name>.png per line (AdaptSegNet gta5_list/train.txt)

Without `train.txt` all `images/*.png` are used, sorted by name. One split, `train`
(24,966 examples in the full dataset). The labelId -> trainId table is Cityscapes' (the same
`id_to_trainid` AdaptSegNet uses).

The public release has pairs whose image and label differ in size, and label ids outside
Cityscapes' 0..33. AdaptSegNet's `dataset/gta5_dataset.py` resizes each image (bicubic) and
label (nearest) to 1280x720 on its own and maps every id outside `id_to_trainid` to 255
(docs/FIDELITY.md §7.3); so does this builder: a pair of different sizes is stored resized to
1280x720 (what the `gta5_cityscapes` presets' `resize_size` then leaves as is), any unknown
id becomes 255, and `prepare` prints how many examples each applied to.
"""

from __future__ import annotations

import os

from advseg_jax.data import labels
from advseg_jax.data.builders import common


class Builder(common.ManualSegBuilder):
  """GTA5 synthetic driving scenes, 19 Cityscapes trainIds."""

  name = "advseg_gta5"
  VALID_RAW_IDS = labels.CITYSCAPES_VALID_RAW_IDS
  MISMATCH_RESIZE_HW = (720, 1280)    # AdaptSegNet --input-size 1280,720 (§7.1, §7.3)
  UNKNOWN_IDS_TO_IGNORE = True        # AdaptSegNet: label_copy = 255 outside id_to_trainid
  EXPECTED_SIZES = {"train": 24966}
  LAYOUT = ("<manual_dir>/images/<name>.png, <manual_dir>/labels/<name>.png, "
            "optional <manual_dir>/train.txt")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract the GTA5 images/ and labels/ folders (download.visinf.tu-darmstadt.de) into "
      "manual_dir; optionally add AdaptSegNet's dataset/gta5_list/train.txt as train.txt.")
  DESCRIPTION = __doc__

  @classmethod
  def check_manual_dir(cls, manual_dir: str) -> None:
    common.require_dir(manual_dir, "manual_dir", cls.LAYOUT)
    for sub in ("images", "labels"):
      common.require_dir(os.path.join(manual_dir, sub), f"GTA5 {sub}", cls.LAYOUT)

  def _split_names(self):
    return ("train",)

  def _label_mapping(self) -> dict[int, int]:
    return labels.cityscapes_id_to_train_id()

  def _list_examples(self, manual_dir: str, split: str) -> list[common.ExampleRef]:
    return common.same_name_png_pairs(manual_dir, "images", "labels")
