"""Per-dataset facts: classes, palettes, channel order, means, TFDS builder and splits.

`get_info(name)` needs no TFDS import; `builder_class(name)` imports the builder lazily.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Optional

import numpy as np

from advseg_jax.data import labels
from advseg_jax.normalization import CAFFE_MEAN_BGR


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """Static description of one dataset (one builder config).

  Attributes:
    name: short name (`voc_aug`, `cityscapes`, `gta5`, `synthia`, `shapes`, ...).
    config_name: builder config (`'16'`/`'13'` for synthia, `'source'`/`'target'`
      for shapes, the test fold `'0'`..`'4'` for stanford_background) or None.
    tfds_name: the TFDS builder name (directory under `data_dir`).
    num_classes: K; labels hold `0..K-1` and `ignore_label`.
    class_names: K names.
    palette: `uint8 [K, 3]` RGB colours for visualisation.
    ignore_label: 255.
    default_channel_order: 'RGB' (AdvSemiSeg) or 'BGR' (AdaptSegNet) network input order.
    mean_bgr: per-channel mean in B, G, R order on the 0-255 scale.
    splits: split names the builder produces.
    labelled_splits: splits whose examples carry a `label`.
    needs_manual_download: whether `prepare` needs `--manual_dir`.
    cityscapes_train_ids: for each class k, the Cityscapes trainId it corresponds to
      (`None` when the classes are not a subset of Cityscapes'); with SYNTHIA use
      `advseg_jax.data.labels.cityscapes_to_protocol_lut` to evaluate on Cityscapes.
    expected_sizes: number of examples per split of the full real dataset (for warnings).
  """

  name: str
  config_name: Optional[str]
  tfds_name: str
  num_classes: int
  class_names: tuple[str, ...]
  palette: np.ndarray
  ignore_label: int = labels.IGNORE_LABEL
  default_channel_order: str = "RGB"
  mean_bgr: tuple[float, float, float] = CAFFE_MEAN_BGR
  splits: tuple[str, ...] = ("train", "validation")
  labelled_splits: tuple[str, ...] = ("train", "validation")
  needs_manual_download: bool = True
  cityscapes_train_ids: Optional[tuple[int, ...]] = None
  expected_sizes: Optional[dict] = None


_BUILDER_MODULES = {
    "voc_aug": "advseg_jax.data.builders.voc_aug",
    "cityscapes": "advseg_jax.data.builders.cityscapes",
    "gta5": "advseg_jax.data.builders.gta5",
    "synthia": "advseg_jax.data.builders.synthia",
    "shapes": "advseg_jax.data.builders.shapes",
    "digits_m": "advseg_jax.data.builders.digits_m",
    "stanford_background": "advseg_jax.data.builders.stanford_background",
}
DEFAULT_CONFIGS = {"synthia": "16", "shapes": "source", "digits_m": "source",
                   "stanford_background": "0"}
CONFIG_NAMES = {"synthia": ("16", "13"), "shapes": ("source", "target"),
                "digits_m": ("source", "target"),
                "stanford_background": ("0", "1", "2", "3", "4")}  # test fold

# Stanford Background's classes 0..7 (the dataset's README) and colours for drawing them.
STANFORD_BACKGROUND_CLASS_NAMES = ("sky", "tree", "road", "grass", "water", "building",
                                   "mountain", "foreground object")
STANFORD_BACKGROUND_PALETTE = np.array(
    [(70, 130, 180), (107, 142, 35), (128, 64, 128), (152, 251, 152), (0, 90, 200),
     (70, 70, 70), (150, 100, 100), (220, 20, 60)], dtype=np.uint8)


def dataset_names() -> tuple[str, ...]:
  """All dataset names known to `get_info` / `prepare`."""
  return tuple(_BUILDER_MODULES)


def split_name(name: str, config_name: Optional[str] = None) -> tuple[str, Optional[str]]:
  """Parses `'synthia/13'` style names; fills in the default builder config."""
  if "/" in name:
    name, cfg = name.split("/", 1)
    if config_name is not None and config_name != cfg:
      raise ValueError(f"conflicting builder configs {cfg!r} and {config_name!r} for {name}")
    config_name = cfg
  if name not in _BUILDER_MODULES:
    raise KeyError(f"unknown dataset {name!r}; known: {', '.join(_BUILDER_MODULES)}")
  if config_name is None:
    config_name = DEFAULT_CONFIGS.get(name)
  allowed = CONFIG_NAMES.get(name, (None,))
  if config_name not in allowed:
    raise ValueError(f"dataset {name!r} has builder configs {allowed}, got {config_name!r}")
  return name, config_name


def get_info(name: str, config_name: Optional[str] = None) -> DatasetInfo:
  """Returns the `DatasetInfo` of `name` (`'synthia'`, `'synthia/13'`, ...)."""
  name, config_name = split_name(name, config_name)
  cs_ids = tuple(range(19))
  if name == "voc_aug":
    return DatasetInfo(
        name, None, "advseg_voc_aug", 21, labels.VOC_CLASS_NAMES, labels.VOC_PALETTE,
        default_channel_order="RGB",  # AdvSemiSeg's BGR->RGB flip (docs/FIDELITY.md §6.5)
        expected_sizes={"train": 10582, "validation": 1449})
  if name == "cityscapes":
    return DatasetInfo(
        name, None, "advseg_cityscapes", 19, labels.CITYSCAPES_CLASS_NAMES,
        labels.CITYSCAPES_PALETTE,
        default_channel_order="BGR", cityscapes_train_ids=cs_ids,
        expected_sizes={"train": 2975, "validation": 500})
  if name == "gta5":
    return DatasetInfo(
        name, None, "advseg_gta5", 19, labels.CITYSCAPES_CLASS_NAMES, labels.CITYSCAPES_PALETTE,
        default_channel_order="BGR", splits=("train",), labelled_splits=("train",),
        cityscapes_train_ids=cs_ids, expected_sizes={"train": 24966})
  if name == "synthia":
    tids = labels.SYNTHIA_PROTOCOL_TRAIN_IDS[config_name]
    return DatasetInfo(
        name, config_name, "advseg_synthia", len(tids),
        tuple(labels.CITYSCAPES_CLASS_NAMES[t] for t in tids),
        labels.CITYSCAPES_PALETTE[list(tids)],
        default_channel_order="BGR", splits=("train",), labelled_splits=("train",),
        cityscapes_train_ids=tids, expected_sizes={"train": 9400})
  if name == "shapes":
    return DatasetInfo(
        name, config_name, "advseg_shapes", len(labels.SHAPES_CLASS_NAMES),
        labels.SHAPES_CLASS_NAMES, labels.SHAPES_PALETTE, default_channel_order="RGB",
        needs_manual_download=False)
  if name == "digits_m":  # classes: background, digits 0-9 (builders/digits_m/render.py)
    splits = ("train", "validation") + (("test",) if config_name == "target" else ())
    return DatasetInfo(
        name, config_name, "advseg_digits_m", 11, ("background",) + tuple("0123456789"),
        labels.voc_palette(11), default_channel_order="RGB", splits=splits,
        labelled_splits=splits, needs_manual_download=False)
  if name == "stanford_background":  # config = the test fold of 5 (builder docstring)
    return DatasetInfo(
        name, config_name, "advseg_stanford_background", 8, STANFORD_BACKGROUND_CLASS_NAMES,
        STANFORD_BACKGROUND_PALETTE, default_channel_order="RGB", splits=("train", "test"),
        labelled_splits=("train", "test"), expected_sizes={"train": 572, "test": 143})
  raise AssertionError(name)


def builder_class(name: str) -> type:
  """The TFDS builder class of `name` (imports tensorflow_datasets)."""
  name, _ = split_name(name)
  return importlib.import_module(_BUILDER_MODULES[name]).Builder
