"""Scenes of real handwritten digits, on black (source) or blended over real photos (target).

Digits: the 1,797 8x8 handwritten digits of `sklearn.datasets.load_digits` (10 classes).
Photos: colour photographs shipped inside scikit-image (`skimage.data`). Both packages are
the `digits` extra (`pip install -e ".[digits]"`); nothing is downloaded.

A scene is `SIZE x SIZE` with 2-4 non-overlapping digits, each bilinearly upsampled to a
random height in `DIGIT_SIZE` (width jittered by `ASPECT`) at a random position. With `v` the
upsampled intensity in [0, 1]:

* label: `1 + digit` where `v >= STROKE`, 255 (ignored) on the thin anti-aliased band
  `BAND <= v < STROKE`, 0 (background) elsewhere; 11 classes.
* `source` image: `255 v` on every channel (white strokes on black, the MNIST look).
* `target` image: `|photo - 255 v|` per channel over a random photo crop resized to the
  scene (the MNIST-M construction, Ganin et al. 2016): appearance changes, labels do not.

Disjointness: each class's digit instances are split once (seeded) into five pools, one per
(style, split) in `POOL_FRACTIONS`; each photo is cut along its longer side into a train /
validation / test region (`PHOTO_REGIONS`). Every draw comes from a generator seeded by
(style, split, index), so any example can be re-rendered alone.
"""

from __future__ import annotations

import functools
import importlib
from typing import NamedTuple

import numpy as np
from PIL import Image

SIZE = 96                 # the 5-layer D sees 3x3 at this size (2x2 at 64)
NUM_CLASSES = 11          # background, digits 0-9
CLASS_NAMES: tuple[str, ...] = ("background",) + tuple(str(d) for d in range(10))
STYLES = ("source", "target")
SPLITS = {"source": ("train", "validation"), "target": ("train", "validation", "test")}
BASE_SEED = 20261203
DIGIT_SIZE = (24, 36)     # digit height in pixels, inclusive range
ASPECT = (0.8, 1.1)       # width / height
MARGIN = 2                # minimum gap between digit boxes
MAX_TRIES = 50            # placement attempts per digit before it is dropped
STROKE = 0.5              # v >= STROKE: the digit's class
BAND = 0.25               # BAND <= v < STROKE: 255 (ignored)
POOL_FRACTIONS = (("source", "train", 0.35), ("source", "validation", 0.10),
                  ("target", "train", 0.35), ("target", "validation", 0.10),
                  ("target", "test", 0.10))
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
          "stereo_motorcycle")
PHOTO_REGIONS = {"train": (0.0, 0.6), "validation": (0.6, 0.8), "test": (0.8, 1.0)}
CROP_SIDE = (64, 192)     # photo crop side before resizing to SIZE (capped by the region)
EXTRA_HINT = 'pip install -e ".[digits]"'


class Digit(NamedTuple):
  """One placed digit: its `load_digits` index, class and box (top, left, height, width)."""

  instance: int
  digit: int
  box: tuple[int, int, int, int]


def require(module: str, package: str):
  """Imports `module`, or raises a one-line ImportError naming `package` and the extra."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise ImportError(f"dataset digits_m needs {package} (module {module!r}, not installed); "
                      f"install the extra: {EXTRA_HINT}") from None


@functools.lru_cache(maxsize=1)
def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
  """`(float32 [1797, 8, 8] in [0, 1], int64 [1797] classes)` from scikit-learn."""
  datasets = require("sklearn.datasets", "scikit-learn")
  d = datasets.load_digits()
  return (np.asarray(d.images, np.float32) / np.float32(16.0),
          np.asarray(d.target, np.int64))


@functools.lru_cache(maxsize=1)
def digit_pools() -> dict:
  """`{(style, split): [10 int64 arrays]}`: disjoint instance indices per class."""
  _, targets = load_digit_images()
  rng = np.random.default_rng([BASE_SEED, 1])
  cum = np.cumsum([f for _, _, f in POOL_FRACTIONS])
  pools: dict = {(s, p): [] for s, p, _ in POOL_FRACTIONS}
  for c in range(10):
    idx = rng.permutation(np.flatnonzero(targets == c))
    cuts = np.rint(cum * idx.size).astype(int)
    for (style, split, _), lo, hi in zip(POOL_FRACTIONS, np.r_[0, cuts[:-1]], cuts):
      pools[(style, split)].append(idx[lo:hi])
  return pools


@functools.lru_cache(maxsize=1)
def load_photos() -> tuple[np.ndarray, ...]:
  """The `PHOTOS` as `uint8 [H, W, 3]` RGB arrays from scikit-image."""
  sk_data = require("skimage.data", "scikit-image")
  out = []
  for name in PHOTOS:
    img = getattr(sk_data, name)()
    img = img[0] if isinstance(img, tuple) else img   # stereo pairs: the left view
    out.append(np.ascontiguousarray(img[..., :3], np.uint8))
  return tuple(out)


def photo_region(shape: tuple, split: str) -> tuple[int, int, int, int]:
  """`(top, left, height, width)` of `split`'s band along the photo's longer side."""
  h, w = shape[:2]
  lo, hi = PHOTO_REGIONS[split]
  if h >= w:
    return int(lo * h), 0, int(hi * h) - int(lo * h), w
  return 0, int(lo * w), h, int(hi * w) - int(lo * w)


def example_rng(style: str, split: str, index: int, stream: int = 0) -> np.random.Generator:
  """Deterministic per-example generator (independent of generation order)."""
  return np.random.default_rng(
      [BASE_SEED, stream, STYLES.index(style), SPLITS["target"].index(split), index])


def _resize(arr: np.ndarray, h: int, w: int) -> np.ndarray:
  """Bilinear resize of `float32 [H, W]` to `[h, w]`."""
  return np.asarray(Image.fromarray(arr, mode="F").resize((w, h), Image.BILINEAR), np.float32)


def _free(box: tuple[int, int, int, int], placed: list) -> bool:
  t, l, h, w = box
  for d in placed:
    t2, l2, h2, w2 = d.box
    if (t < t2 + h2 + MARGIN and t2 < t + h + MARGIN and l < l2 + w2 + MARGIN
        and l2 < l + w + MARGIN):
      return False
  return True


def sample_digits(rng: np.random.Generator, style: str, split: str,
                  size: int = SIZE) -> list:
  """Draws 2-4 non-overlapping `Digit`s from the (style, split) pool."""
  pool = digit_pools()[(style, split)]
  placed: list = []
  for _ in range(int(rng.integers(2, 5))):
    c = int(rng.integers(0, 10))
    inst = int(rng.choice(pool[c]))
    h = int(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1))
    w = int(round(h * rng.uniform(*ASPECT)))
    for _ in range(MAX_TRIES):
      box = (int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1)), h, w)
      if _free(box, placed):
        placed.append(Digit(inst, c, box))
        break
  return placed


def render_digits(digits: list, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
  """`(intensity float32 [size, size] in [0, 1], label uint8 [size, size])`."""
  images, _ = load_digit_images()
  v = np.zeros((size, size), np.float32)
  label = np.zeros((size, size), np.uint8)
  for d in digits:
    t, l, h, w = d.box
    patch = np.clip(_resize(images[d.instance], h, w), 0.0, 1.0)
    v[t:t + h, l:l + w] = np.maximum(v[t:t + h, l:l + w], patch)
    lab = label[t:t + h, l:l + w]
    lab[(patch >= BAND) & (patch < STROKE)] = 255
    lab[patch >= STROKE] = 1 + d.digit
  return v, label


def photo_crop(rng: np.random.Generator, split: str, size: int = SIZE) -> np.ndarray:
  """A random crop of a random photo's `split` region, resized to `float32 [size, size, 3]`."""
  photos = load_photos()
  photo = photos[int(rng.integers(0, len(photos)))]
  top, left, rh, rw = photo_region(photo.shape, split)
  side = int(rng.integers(CROP_SIDE[0], max(CROP_SIDE[0], min(rh, rw, CROP_SIDE[1])) + 1))
  side = min(side, rh, rw)
  y = top + int(rng.integers(0, rh - side + 1))
  x = left + int(rng.integers(0, rw - side + 1))
  crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
  return np.asarray(crop, np.float32)


def render_example(style: str, split: str, index: int,
                   size: int = SIZE) -> tuple[np.ndarray, np.ndarray, list]:
  """One scene: `(image uint8 [size, size, 3] RGB, label uint8 [size, size], digits)`."""
  if style not in STYLES or split not in SPLITS[style]:
    raise ValueError(f"digits_m has no split {style}/{split}; splits: {SPLITS}")
  digits = sample_digits(example_rng(style, split, index), style, split, size)
  v, label = render_digits(digits, size)
  ink = np.float32(255.0) * v[..., None]
  if style == "source":
    img = np.repeat(ink, 3, axis=-1)
  else:
    img = np.abs(photo_crop(example_rng(style, split, index, stream=1), split, size) - ink)
  return np.clip(np.rint(img), 0, 255).astype(np.uint8), label, digits
