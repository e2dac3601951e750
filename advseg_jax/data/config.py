"""`ml_collections` description of one dataset stream (what a pipeline reads and how).

Defaults reproduce nothing in particular; the experiment configs set the original values, e.g.

* AdvSemiSeg VOC train: `name='voc_aug', crop_size=(321, 321), channel_order='RGB'`
  (`random_scale` / `random_mirror` are off in the README command), labelled-D stream
  `gt_loader='advsemi'`; eval `eval_mode='pad', eval_pad_size=(505, 505)`.
* AdaptSegNet GTA5 -> Cityscapes: source `name='gta5', resize_size=(720, 1280)`, target
  `name='cityscapes', resize_size=(512, 1024), use_labels=False`, both `channel_order='BGR'`;
  eval `eval_mode='resize', eval_resize_size=(512, 1024)`.
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

from advseg_jax.data.transforms import ADVSEMI_SCALE_FACTORS
from advseg_jax.normalization import CAFFE_MEAN_BGR


def dataset_config(**overrides: Any) -> ml_collections.ConfigDict:
  """Returns the default stream config with `overrides` applied.

  Args:
    **overrides: values of any of the fields below (an unknown name is a `KeyError`).

  Returns:
    A ConfigDict with these fields:
      name: dataset (`voc_aug`, `cityscapes`, `gta5`, `synthia`, `stanford_background`,
        `shapes`, `digits_m`).
      config_name: builder config (`'16'`/`'13'` synthia, `'source'`/`'target'` shapes)
        or None for the dataset's default.
      data_dir: TFDS data dir (None: TFDS default, `~/tensorflow_datasets`).
      manual_dir: raw files for `prepare` (None: `<data_dir>/downloads/manual`).
      crop_size: `(h, w)` random crop after padding, or None (no crop).
      crop_mode: how the training crop is taken: 'random' (pad bottom / right to `crop_size`,
        then a `crop_size` window at a random offset; AdvSemiSeg) or 'random_sized' (the
        ICLR-2018 reproduction's `RandomSizedCrop`: a random box of 8-100 % of the area and
        aspect 3/4-4/3, resized to `crop_size`, PIL bilinear image / nearest label;
        `advseg_jax.data.transforms.random_sized_crop`).
      resize_size: `(h, w)` whole-image resize (Pillow bicubic / nearest) before anything
        else.
      random_scale: cv2-style rescale by a factor from `scale_factors`.
      scale_factors: AdvSemiSeg's `0.5 + random.randint(0, 11) / 10` = 0.5 ... 1.6.
      random_mirror: horizontal flip with p = 0.5.
      channel_order: 'RGB' or 'BGR' network input order (None: the dataset's default).
      mean_bgr: per-channel mean, given in B, G, R order, 0-255 scale.
      std_bgr: per-channel std the mean-subtracted image is divided by (B, G, R order,
        0-255 scale), or None: no division (AdvSemiSeg, AdaptSegNet). The ICLR-2018
        reproduction's ImageNet `Normalize` is `mean_bgr = 255 * (0.406, 0.456, 0.485)`,
        `std_bgr = 255 * (0.225, 0.224, 0.229)`.
      gt_loader: 'plain' or 'advsemi' (`VOCGTDataSet`: rescale until no padding is needed).
      eval_mode: 'pad' (to `eval_pad_size`), 'resize' (image to `eval_resize_size`, label
        kept at full size) or 'none'.
      eval_pad_size: `(h, w)`, e.g. (505, 505).
      eval_pad_fill: what 'pad' fills the image with: 'mean' (0 after the normalisation, the
        mean colour; AdvSemiSeg) or 'black' (RGB 0 before it, `(0 - mean) / std` after; the
        ICLR-2018 reproduction's `ZeroPadding`).
      eval_resize_size: `(h, w)`, e.g. (512, 1024).
      use_labels: decode and return labels (False for unlabelled target streams).
      ignore_as_background: read the labels' ignore value 255 as class 0 (background), in
        training and evaluation, as the ICLR-2018 reproduction's `IgnoreLabelClass` does;
        padding the pipeline adds afterwards stays 255 (ignored).
      num_workers: grain worker processes (0 = in-process).
      read_threads: threads per process decoding / transforming examples.
      skip_bad_examples: log and skip undecodable examples at read time instead of failing.
  """
  c = ml_collections.ConfigDict()
  c.name = "shapes"
  c.config_name = config_dict.placeholder(str)
  c.data_dir = config_dict.placeholder(str)
  c.manual_dir = config_dict.placeholder(str)
  c.crop_size = config_dict.placeholder(tuple)
  c.crop_mode = "random"
  c.resize_size = config_dict.placeholder(tuple)
  c.random_scale = False
  c.scale_factors = ADVSEMI_SCALE_FACTORS
  c.random_mirror = False
  c.channel_order = config_dict.placeholder(str)
  c.mean_bgr = CAFFE_MEAN_BGR
  c.std_bgr = config_dict.placeholder(tuple)
  c.gt_loader = "plain"
  c.eval_mode = "none"
  c.eval_pad_size = (505, 505)
  c.eval_pad_fill = "mean"
  c.eval_resize_size = (512, 1024)
  c.use_labels = True
  c.ignore_as_background = False
  c.num_workers = 0
  c.read_threads = 4
  c.skip_bad_examples = False
  for k, v in overrides.items():
    if k not in c:
      raise KeyError(f"unknown dataset config field {k!r}; known: {', '.join(c.keys())}")
    setattr(c, k, v)
  return c
