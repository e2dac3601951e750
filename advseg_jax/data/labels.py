"""Label tables: class names, colour palettes and raw-id -> train-id lookup tables.

All label maps in this package are `uint8` arrays of shape `[H, W]` (or `[H, W, 1]` as
stored by TFDS) whose values are *train ids* `0..K-1` plus `IGNORE_LABEL` (255).

Raw ids are mapped with a 256-entry lookup table (`np.uint8[256]`); entries for raw values
that are not allowed in the source format hold `INVALID` so that a builder can report them.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

IGNORE_LABEL = 255
# Sentinel used only inside lookup tables for raw values that are not a valid id of the
# source format; never appears in prepared data. Kept outside 0..255 (int16 table).
INVALID = -1


class CityscapesLabel(NamedTuple):
  """One row of the Cityscapes label table (the columns used here)."""

  name: str
  id: int
  train_id: int
  color: tuple[int, int, int]


# The Cityscapes label table (labelId, trainId, colour), as published with the dataset in
# `cityscapesscripts/helpers/labels.py`. Used when `cityscapesscripts` is not installed;
# `tests/unit/test_data_labels.py` asserts it equals the package's table when it is.
_CITYSCAPES_FALLBACK: tuple[CityscapesLabel, ...] = (
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    CityscapesLabel("license plate", -1, -1, (0, 0, 142)),
)


def cityscapes_label_table(use_package: bool = True) -> tuple[CityscapesLabel, ...]:
  """The Cityscapes label table, from `cityscapesscripts` when importable.

  Args:
    use_package: if False, always return the table shipped in this module.
  """
  if use_package:
    try:  # an optional dependency
      from cityscapesscripts.helpers import labels as cs_labels  # type: ignore
    except ImportError:
      pass
    else:
      return tuple(
          CityscapesLabel(row.name, int(row.id), int(row.trainId),
                          tuple(int(c) for c in row.color))
          for row in cs_labels.labels)
  return _CITYSCAPES_FALLBACK


def cityscapes_id_to_train_id(table: Sequence[CityscapesLabel] | None = None) -> dict[int, int]:
  """labelId -> trainId for the 19 evaluated classes (all other ids map to 255).

  Equals AdaptSegNet's `id_to_trainid` / `info.json:label2train`.
  """
  table = cityscapes_label_table() if table is None else table
  return {row.id: row.train_id for row in table if 0 <= row.train_id < 255}


def _cityscapes_train_classes() -> list[CityscapesLabel]:
  """The 19 train classes in trainId order (first table row per trainId)."""
  by_tid: dict[int, CityscapesLabel] = {}
  for row in cityscapes_label_table():
    if 0 <= row.train_id < 255 and row.train_id not in by_tid:
      by_tid[row.train_id] = row
  return [by_tid[t] for t in sorted(by_tid)]


CITYSCAPES_CLASS_NAMES: tuple[str, ...] = tuple(row.name for row in _cityscapes_train_classes())
CITYSCAPES_PALETTE: np.ndarray = np.array(
    [row.color for row in _cityscapes_train_classes()], dtype=np.uint8)  # [19, 3] RGB

# Raw labelIds allowed in Cityscapes gtFine *_labelIds.png and GTA5 labels: 0..33, plus
# 255, which is how a "-1" (license plate) would read back from a uint8 PNG.
CITYSCAPES_VALID_RAW_IDS: tuple[int, ...] = tuple(range(34)) + (255,)


def make_lut(mapping: Mapping[int, int], valid_raw_ids: Sequence[int] | None) -> np.ndarray:
  """Builds an `int16[256]` lookup table raw value -> train id.

  Args:
    mapping: raw id -> train id for the kept classes; all other valid raw ids -> 255.
    valid_raw_ids: the raw values allowed in the source format; others map to `INVALID`.
      `None` allows every value 0..255.
  Returns:
    `np.int16[256]`; apply with `lut[label]` then check for `INVALID`.
  """
  lut = np.full(256, IGNORE_LABEL if valid_raw_ids is None else INVALID, dtype=np.int16)
  if valid_raw_ids is not None:
    lut[np.asarray(list(valid_raw_ids), dtype=np.int64)] = IGNORE_LABEL
  for raw, train in mapping.items():
    if 0 <= raw < 256:
      lut[raw] = train
  return lut


def apply_lut(label: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Maps a raw `uint8`/`uint16` label through `lut`.

  Args:
    label: raw ids, `[H, W]`.
    lut: a table from `make_lut`; values >= `len(lut)` are INVALID as well.

  Returns:
    `(mapped uint8 [H, W], sorted array of the raw values that were INVALID)`; INVALID
    pixels map to 255.
  """
  raw = np.asarray(label)
  too_big = raw >= lut.shape[0]
  safe = np.where(too_big, 0, raw).astype(np.intp)
  mapped = lut[safe]
  bad_mask = too_big | (mapped == INVALID)
  bad = np.unique(raw[bad_mask]) if bad_mask.any() else np.zeros((0,), raw.dtype)
  return np.where(bad_mask, IGNORE_LABEL, mapped).astype(np.uint8), bad


# ----------------------------------------------------------------------------- VOC

VOC_CLASS_NAMES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)


def voc_palette(n: int = 256) -> np.ndarray:
  """The PASCAL VOC colour map (bit-interleaved label index), `uint8 [n, 3]` RGB."""
  pal = np.zeros((n, 3), dtype=np.uint8)
  for i in range(n):
    r = g = b = 0
    c = i
    for j in range(8):
      r |= ((c >> 0) & 1) << (7 - j)
      g |= ((c >> 1) & 1) << (7 - j)
      b |= ((c >> 2) & 1) << (7 - j)
      c >>= 3
    pal[i] = (r, g, b)
  return pal


VOC_PALETTE: np.ndarray = voc_palette(21)
# VOC SegmentationClass(Aug) PNGs hold class indices 0..20 and 255 (void / boundary).
VOC_VALID_RAW_IDS: tuple[int, ...] = tuple(range(21)) + (255,)

# ----------------------------------------------------------------------------- SYNTHIA

# SYNTHIA-RAND-CITYSCAPES class ids (first channel of GT/LABELS/*.png), from the dataset's
# README: 0 void, 1 sky, 2 building, 3 road, 4 sidewalk, 5 fence, 6 vegetation, 7 pole,
# 8 car, 9 traffic sign, 10 pedestrian, 11 bicycle, 12 motorcycle, 13 parking-slot,
# 14 road-work, 15 traffic light, 16 terrain, 17 rider, 18 truck, 19 bus, 20 train,
# 21 wall, 22 lanemarking.
SYNTHIA_NUM_RAW_IDS = 23
# The usual SYNTHIA -> Cityscapes trainId correspondence (as in the SYNTHIA->Cityscapes
# protocol of AdaptSegNet-era papers); unmapped ids (void, parking-slot, road-work,
# lanemarking) are ignored.
SYNTHIA_TO_CITYSCAPES_TRAIN_ID: dict[int, int] = {
    3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10, 10: 11, 17: 12,
    8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18,
}
# Cityscapes trainIds evaluated by each protocol (in contiguous-id order).
SYNTHIA_PROTOCOL_TRAIN_IDS: dict[str, tuple[int, ...]] = {
    # 19 minus terrain (9), truck (14), train (16)
    "16": (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
    # additionally minus wall (3), fence (4), pole (5)
    "13": (0, 1, 2, 6, 7, 8, 10, 11, 12, 13, 15, 17, 18),
}


def synthia_mapping(protocol: str) -> dict[int, int]:
  """SYNTHIA raw id -> contiguous id `0..K-1` for protocol `'16'` or `'13'`."""
  kept = SYNTHIA_PROTOCOL_TRAIN_IDS[protocol]
  contiguous = {tid: k for k, tid in enumerate(kept)}
  return {raw: contiguous[tid] for raw, tid in SYNTHIA_TO_CITYSCAPES_TRAIN_ID.items()
          if tid in contiguous}


def cityscapes_to_protocol_lut(protocol: str) -> np.ndarray:
  """`uint8[256]`: Cityscapes trainId -> contiguous protocol id (others -> 255).

  Use it to evaluate a SYNTHIA-trained model on Cityscapes labels stored as trainIds.
  """
  lut = np.full(256, IGNORE_LABEL, dtype=np.uint8)
  for k, tid in enumerate(SYNTHIA_PROTOCOL_TRAIN_IDS[protocol]):
    lut[tid] = k
  return lut


# ----------------------------------------------------------------------------- shapes

SHAPES_CLASS_NAMES: tuple[str, ...] = ("background", "disc", "square", "triangle", "ring")
SHAPES_PALETTE: np.ndarray = np.array(
    [(30, 30, 36), (230, 25, 75), (60, 180, 75), (255, 200, 20), (0, 130, 200)], dtype=np.uint8)
