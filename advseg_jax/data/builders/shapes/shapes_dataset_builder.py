"""Procedural shapes segmentation with a source / target domain shift (no download).

5 classes (background, disc, square, triangle, ring), 128x128 RGB PNGs. Builder configs
`source` and `target` share the geometry distribution and differ in colour, texture, blur
and noise (see `render.py`). Splits `train` (400) and `validation` (100) per style,
deterministic from a fixed seed, generated in a few seconds on one CPU.
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from advseg_jax.data import image_io
from advseg_jax.data.builders import common
from advseg_jax.data.builders.shapes import render

SPLIT_SIZES = {"train": 400, "validation": 100}


class Builder(common.SegBuilderBase):
  """Synthetic shapes over textured backgrounds, two appearance styles."""

  name = "advseg_shapes"
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="source", description="bright flat shapes, dark smooth "
                              "backgrounds"),
      tfds.core.BuilderConfig(name="target", description="dark noisy shapes, bright striped "
                              "blurred backgrounds"),
  ]
  DEFAULT_BUILDER_CONFIG_NAME = "source"
  DESCRIPTION = __doc__

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {split: self._generate_examples(split, n) for split, n in SPLIT_SIZES.items()}

  def _generate_examples(self, split: str, n: int):
    style = self.builder_config.name

    def work(i: int):
      img, lab = render.render_example(style, split, i)
      name = f"{style}_{split}_{i:05d}.png"
      return name, {"image": image_io.encode_png(img), "label": image_io.encode_png(lab),
                    "file_name": name}

    yield from common.ordered_parallel_map(work, range(n), self.num_threads)
