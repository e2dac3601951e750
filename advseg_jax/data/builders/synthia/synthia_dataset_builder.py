"""SYNTHIA-RAND-CITYSCAPES with the 16- and 13-class SYNTHIA -> Cityscapes protocols.

Manual download. `manual_dir` layout (the extracted `RAND_CITYSCAPES` folder):

  RGB/<name>.png          # 1280x760 RGB
  GT/LABELS/<name>.png    # 16-bit-per-channel PNG; class id in the FIRST channel
  train.txt               # optional: one <name>.png per line

Assumption (not checked on the real files here): `GT/LABELS` PNGs store 16 bits per channel
with the SYNTHIA class id (0..22) in channel 0 and the instance id in channel 1 -- the usual
readers do `imageio.imread(p, format='PNG-FI')[:, :, 0]` or
`cv2.imread(p, cv2.IMREAD_UNCHANGED)[:, :, 2]`. 8-bit grey or palette PNGs holding the class
id are accepted too. PIL's default reading of 16-bit colour PNGs keeps only the high byte, so
`advseg_jax.data.image_io.decode_label` decodes the full 16-bit value.

Builder configs: `16` (Cityscapes' 19 minus terrain, truck, train) and `13` (also minus
wall, fence, pole). Labels are stored as contiguous ids `0..15` / `0..12` (255 = ignore);
`advseg_jax.data.get_info('synthia/16').cityscapes_train_ids` gives the Cityscapes trainId
of each. One split, `train` (9,400 images in the full dataset).
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from advseg_jax.data import labels
from advseg_jax.data.builders import common


class Builder(common.ManualSegBuilder):
  """SYNTHIA-RAND-CITYSCAPES (16 / 13 classes)."""

  name = "advseg_synthia"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="16", description="16 classes shared with Cityscapes"),
      tfds.core.BuilderConfig(name="13", description="13 classes (no wall, fence, pole)"),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "16"
  VALID_RAW_IDS = tuple(range(labels.SYNTHIA_NUM_RAW_IDS))
  LABEL_CHANNEL = 0
  EXPECTED_SIZES = {"train": 9400}
  LAYOUT = ("<manual_dir>/RGB/<name>.png, <manual_dir>/GT/LABELS/<name>.png (16-bit, class in "
            "channel 0), optional <manual_dir>/train.txt")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Extract SYNTHIA-RAND-CITYSCAPES (RAND_CITYSCAPES/ with RGB/ and GT/LABELS/) into "
      "manual_dir.")
  DESCRIPTION = __doc__

  @classmethod
  def check_manual_dir(cls, manual_dir: str) -> None:
    common.require_dir(manual_dir, "manual_dir", cls.LAYOUT)
    for sub in ("RGB", os.path.join("GT", "LABELS")):
      common.require_dir(os.path.join(manual_dir, sub), f"SYNTHIA {sub}", cls.LAYOUT)

  def _split_names(self):
    return ("train",)

  def _label_mapping(self) -> dict[int, int]:
    return labels.synthia_mapping(self.builder_config.name)

  def _list_examples(self, manual_dir: str, split: str) -> list[common.ExampleRef]:
    return common.same_name_png_pairs(manual_dir, "RGB", os.path.join("GT", "LABELS"))
