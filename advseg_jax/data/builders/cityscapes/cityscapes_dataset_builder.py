"""Cityscapes fine annotations, labelIds mapped to the 19 trainIds (255 = ignore).

Manual download. `manual_dir` holds either the extracted folders:

  leftImg8bit/{train,val}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
  gtFine/{train,val}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png

or the official archives `leftImg8bit_trainvaltest.zip` and `gtFine_trainvaltest.zip`
(members are read directly, nothing is extracted). Folders win when both are present.

Splits `train` (2,975) and `validation` (500), sorted by `<city>/<file>`; `file_name`
is `<city>/<city>_<seq>_<frame>_leftImg8bit.png` as in AdaptSegNet's
`dataset/cityscapes_list/*.txt`. labelIds map to trainIds with the Cityscapes label table
(`cityscapesscripts.helpers.labels` when installed); raw values outside 0..33 (and 255, a
`-1` read back from uint8) are an error naming the file.
"""

from __future__ import annotations

import os
import zipfile

from advseg_jax.data import labels
from advseg_jax.data.builders import common

_IMG_SUFFIX = "_leftImg8bit.png"
_LAB_SUFFIX = "_gtFine_labelIds.png"
_ZIPS = {"leftImg8bit": "leftImg8bit_trainvaltest.zip", "gtFine": "gtFine_trainvaltest.zip"}
_SPLIT_DIRS = {"train": "train", "validation": "val"}


class Builder(common.ManualSegBuilder):
  """Cityscapes gtFine semantic segmentation (19 trainIds)."""

  name = "advseg_cityscapes"
  VALID_RAW_IDS = labels.CITYSCAPES_VALID_RAW_IDS
  EXPECTED_SIZES = {"train": 2975, "validation": 500}
  LAYOUT = ("<manual_dir>/leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and "
            "<manual_dir>/gtFine/{train,val}/<city>/*_gtFine_labelIds.png, or "
            "<manual_dir>/leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip (or their extracted "
      "leftImg8bit/ and gtFine/ folders) from cityscapes-dataset.com in manual_dir.")
  DESCRIPTION = __doc__

  @classmethod
  def _mode(cls, manual_dir: str) -> str:
    if all(os.path.isdir(os.path.join(manual_dir, d)) for d in _ZIPS):
      return "folders"
    if all(os.path.isfile(os.path.join(manual_dir, z)) for z in _ZIPS.values()):
      return "zips"
    return "missing"

  @classmethod
  def check_manual_dir(cls, manual_dir: str) -> None:
    common.require_dir(manual_dir, "manual_dir", cls.LAYOUT)
    if cls._mode(manual_dir) != "missing":
      return
    missing = [d for d in _ZIPS if not os.path.isdir(os.path.join(manual_dir, d))
               and not os.path.isfile(os.path.join(manual_dir, _ZIPS[d]))]
    missing = missing or list(_ZIPS)
    what = " and ".join(f"{d}/ (or {_ZIPS[d]})" for d in missing)
    raise common.LayoutError(
        f"missing {what} in {manual_dir}; expected layout: {cls.LAYOUT}")

  def _label_mapping(self) -> dict[int, int]:
    return labels.cityscapes_id_to_train_id()

  def _list_examples(self, manual_dir: str, split: str) -> list[common.ExampleRef]:
    sdir = _SPLIT_DIRS[split]
    if self._mode(manual_dir) == "folders":
      img_root = common.require_dir(os.path.join(manual_dir, "leftImg8bit", sdir),
                                    "Cityscapes images", self.LAYOUT)
      lab_root = os.path.join(manual_dir, "gtFine", sdir)
      names = sorted(
          f"{city}/{f}" for city in os.listdir(img_root)
          if os.path.isdir(os.path.join(img_root, city))
          for f in os.listdir(os.path.join(img_root, city)) if f.endswith(_IMG_SUFFIX))
      return [common.ExampleRef(
          file_name=n, image=os.path.join(img_root, n),
          label=os.path.join(lab_root, n[: -len(_IMG_SUFFIX)] + _LAB_SUFFIX))
          for n in names]
    img_zip = os.path.join(manual_dir, _ZIPS["leftImg8bit"])
    lab_zip = os.path.join(manual_dir, _ZIPS["gtFine"])
    prefix = f"leftImg8bit/{sdir}/"
    with zipfile.ZipFile(img_zip) as zf:
      names = sorted(m[len(prefix):] for m in zf.namelist()
                     if m.startswith(prefix) and m.endswith(_IMG_SUFFIX))
    return [common.ExampleRef(
        file_name=n, image=common.ZipMember(img_zip, prefix + n),
        label=common.ZipMember(lab_zip, f"gtFine/{sdir}/" + n[: -len(_IMG_SUFFIX)] + _LAB_SUFFIX))
        for n in names]
