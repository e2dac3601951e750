"""Real handwritten digits on black (source) and over real photos (target, MNIST-M style).

11 classes (background, digits 0-9), 96x96 RGB PNGs, 255 on a thin stroke boundary band.
Builder configs `source` (splits train 2000, validation 500) and `target` (train 2000,
validation 500, test 500) share the scene law and differ in appearance (see `render.py`);
digit instances and photo regions never cross splits. Generated from scikit-learn's and
scikit-image's bundled data (the `digits` extra), deterministic, no download.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from advseg_jax.data import image_io
from advseg_jax.data.builders import common
from advseg_jax.data.builders.digits_m import render

SPLIT_SIZES = {"source": {"train": 2000, "validation": 500},
               "target": {"train": 2000, "validation": 500, "test": 500}}


class Builder(common.SegBuilderBase):
  """Digit scenes in two appearance domains."""

  name = "advseg_digits_m"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="source", description="white digits on black"),
      tfds.core.BuilderConfig(name="target", description="|photo - digit| per channel over "
                              "scikit-image photo crops (MNIST-M construction)"),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "source"
  DESCRIPTION = __doc__

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    render.load_digit_images()  # a missing package fails here, before any thread starts
    if self.builder_config.name == "target":
      render.load_photos()
    sizes = SPLIT_SIZES[self.builder_config.name]
    return {split: self._generate_examples(split, n) for split, n in sizes.items()}

  def _generate_examples(self, split: str, n: int):
    style = self.builder_config.name

    def work(i: int):
      img, lab, _ = render.render_example(style, split, i)
      name = f"{style}_{split}_{i:05d}.png"
      return name, {"image": image_io.encode_png(img), "label": image_io.encode_png(lab),
                    "file_name": name}

    yield from common.ordered_parallel_map(work, range(n), self.num_threads)
