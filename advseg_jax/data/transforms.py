"""Pure numpy transforms of one example (no state, explicit `np.random.Generator`).

Layouts: `image` is `[H, W, 3]` (`uint8` RGB before `subtract_mean`, `float32` in
the requested channel order after it); `label` is `uint8 [H, W]` with 255 = ignore, or
`None` for unlabelled data. Sizes are `(height, width)` tuples.

The geometry follows the originals:

- AdvSemiSeg `VOCDataSet` (cv2, docs/FIDELITY.md §6.5): `random_scale` (`INTER_LINEAR`
  image, `INTER_NEAREST` label, `fx = fy = f`), `subtract_mean`, `pad_bottom_right`
  (image 0.0 after mean subtraction, label 255), `random_crop` (inclusive offsets),
  `random_mirror` (p = 0.5).
- AdvSemiSeg `VOCGTDataSet`: `advsemi_gt_rescale`.
- AdaptSegNet (PIL, docs/FIDELITY.md §7.3): `resize_pil` to a fixed size, `BICUBIC` image /
  `NEAREST` label.
- The ICLR-2018 reproduction (PIL, docs/FIDELITY.md §8): `random_sized_crop`, its
  `RandomSizedCrop` (`BILINEAR` image / `NEAREST` label), with the fallback `scale_shorter_side`
  + `center_crop`.
"""

from __future__ import annotations

from typing import Optional, Sequence

import math

import numpy as np
from PIL import Image

from advseg_jax.data.labels import IGNORE_LABEL

HW = tuple[int, int]

# AdvSemiSeg: `f_scale = 0.5 + random.randint(0, 11) / 10.0` with Python's `random`,
# whose randint includes both ends: 12 factors 0.5, 0.6, ..., 1.6.
ADVSEMI_SCALE_FACTORS: tuple[float, ...] = tuple(0.5 + k / 10.0 for k in range(12))


# ----------------------------------------------------------------------------- resizing

def cv2_scaled_size(hw: HW, f: float) -> HW:
  """Output size of `cv2.resize(x, None, fx=f, fy=f)`: `round_half_even(size * f)`."""
  return int(np.rint(hw[0] * f)), int(np.rint(hw[1] * f))


def _linear_taps(n_out: int, n_in: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """cv2 INTER_LINEAR source taps: `src = (dst + 0.5) * scale - 0.5`, clamped to the border."""
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5
  i0 = np.floor(src).astype(np.int64)
  frac = (src - i0).astype(np.float32)
  frac = np.where(i0 < 0, 0.0, frac).astype(np.float32)
  i0 = np.clip(i0, 0, n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, frac


def resize_bilinear(image: np.ndarray, out_hw: HW, scale: Optional[tuple[float, float]] = None
                    ) -> np.ndarray:
  """`cv2.resize(..., interpolation=INTER_LINEAR)` semantics (no antialiasing).

  Args:
    image: `[H, W, C]` or `[H, W]`, any numeric dtype.
    out_hw: output `(h, w)`.
    scale: source pixels per output pixel `(sy, sx)`; default `in / out`. cv2 uses
      `1 / f` when called with `fx = fy = f`.
  Returns:
    Same dtype as `image` (uint8 is rounded to nearest; cv2's 11-bit fixed point can
    differ by 1 level).
  """
  h, w = image.shape[:2]
  oh, ow = out_hw
  sy, sx = scale if scale is not None else (h / oh, w / ow)
  y0, y1, fy = _linear_taps(oh, h, sy)
  x0, x1, fx = _linear_taps(ow, w, sx)
  extra = (None,) * (image.ndim - 2)
  # separable: interpolate rows first (output height), then columns
  a = image[y0].astype(np.float32)
  rows = a + (image[y1].astype(np.float32) - a) * fy[(slice(None), None) + extra]
  c = np.take(rows, x0, axis=1)  # np.take is much faster than fancy indexing on axis 1
  out = c + (np.take(rows, x1, axis=1) - c) * fx[(None, slice(None)) + extra]
  if image.dtype == np.uint8:  # convex combination: already in [0, 255]; round half up
    return (out + np.float32(0.5)).astype(np.uint8)
  if np.issubdtype(image.dtype, np.integer):
    info = np.iinfo(image.dtype)
    out = np.clip(np.rint(out), info.min, info.max)
  return out.astype(image.dtype)


def resize_nearest(label: np.ndarray, out_hw: HW, scale: Optional[tuple[float, float]] = None
                   ) -> np.ndarray:
  """`cv2.resize(..., interpolation=INTER_NEAREST)`: `src = min(floor(dst * scale), n - 1)`."""
  h, w = label.shape[:2]
  oh, ow = out_hw
  sy, sx = scale if scale is not None else (h / oh, w / ow)
  ys = np.minimum(np.floor(np.arange(oh) * sy).astype(np.int64), h - 1)
  xs = np.minimum(np.floor(np.arange(ow) * sx).astype(np.int64), w - 1)
  return np.take(label[ys], xs, axis=1)


def scale_by(image: np.ndarray, label: Optional[np.ndarray], f: float
             ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """`cv2.resize(x, None, fx=f, fy=f)`: bilinear image, nearest label."""
  out_hw = cv2_scaled_size(image.shape[:2], f)
  sc = (1.0 / f, 1.0 / f)
  image = resize_bilinear(image, out_hw, sc)
  if label is not None:
    label = resize_nearest(label, out_hw, sc)
  return image, label


def random_scale(image: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator,
                 factors: Sequence[float] = ADVSEMI_SCALE_FACTORS
                 ) -> tuple[np.ndarray, Optional[np.ndarray], float]:
  """Rescales by `f = factors[rng.integers(len(factors))]`; returns `(image, label, f)`."""
  f = float(factors[int(rng.integers(0, len(factors)))])
  image, label = scale_by(image, label, f)
  return image, label, f


def resize_pil(array: np.ndarray, out_hw: HW, method: str) -> np.ndarray:
  """PIL `Image.resize((w, h), BICUBIC | NEAREST | BILINEAR)` of a `uint8` array."""
  resample = {"bicubic": Image.BICUBIC, "nearest": Image.NEAREST,
              "bilinear": Image.BILINEAR}[method]
  if array.shape[:2] == tuple(out_hw):
    return array
  im = Image.fromarray(np.ascontiguousarray(array))
  return np.asarray(im.resize((out_hw[1], out_hw[0]), resample))


def resize_example_pil(image: np.ndarray, label: Optional[np.ndarray], out_hw: HW
                       ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """AdaptSegNet whole-image resize: image BICUBIC, label NEAREST."""
  image = resize_pil(image, out_hw, "bicubic")
  if label is not None:
    label = resize_pil(label, out_hw, "nearest")
  return image, label


# ----------------------------------------------------------------------------- values

def subtract_mean(image: np.ndarray, mean_bgr: Sequence[float], channel_order: str,
                  std_bgr: Optional[Sequence[float]] = None) -> np.ndarray:
  """RGB `uint8 [H, W, 3]` -> `float32 [H, W, 3]` in `channel_order`, minus the mean.

  `mean_bgr` (and `std_bgr`) are given in B, G, R order on the 0-255 scale; they are
  reordered to match, so each channel always gets its own values. With `std_bgr` the result
  is also divided by it: `(x - 255 m) / (255 s)` equals torchvision's `Normalize(m, s)` after
  `ToTensor()` (the ICLR-2018 reproduction, docs/FIDELITY.md §8). None: no division.
  """
  if channel_order not in ("BGR", "RGB"):
    raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
  flip = slice(None, None, -1) if channel_order == "RGB" else slice(None)
  x = image[..., ::-1] if channel_order == "BGR" else image
  x = x.astype(np.float32) - np.asarray(mean_bgr, np.float32)[flip]
  if std_bgr is not None:
    x = x / np.asarray(std_bgr, np.float32)[flip]
  return x


def ignore_as_background(label: Optional[np.ndarray]) -> Optional[np.ndarray]:
  """The ICLR-2018 reproduction's `IgnoreLabelClass`: 255 (ignore) -> 0 (background)."""
  if label is None:
    return None
  return np.where(label == IGNORE_LABEL, 0, label).astype(label.dtype)


# ----------------------------------------------------------------------------- geometry

def pad_bottom_right(image: np.ndarray, label: Optional[np.ndarray], min_hw: HW,
                     image_value: float = 0.0, label_value: int = IGNORE_LABEL
                     ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Pads at the bottom / right to at least `min_hw` (`cv2.copyMakeBorder` constant)."""
  h, w = image.shape[:2]
  ph, pw = max(min_hw[0] - h, 0), max(min_hw[1] - w, 0)
  if ph == 0 and pw == 0:
    return image, label
  image = np.pad(image, ((0, ph), (0, pw)) + ((0, 0),) * (image.ndim - 2),
                 constant_values=image_value)
  if label is not None:
    label = np.pad(label, ((0, ph), (0, pw)), constant_values=label_value)
  return image, label


def random_crop(image: np.ndarray, label: Optional[np.ndarray], crop_hw: HW,
                rng: np.random.Generator) -> tuple[np.ndarray, Optional[np.ndarray], HW]:
  """Crops `crop_hw` at `h_off = randint(0, H - ch)`, `w_off = randint(0, W - cw)`.

  Offsets are inclusive (Python `random.randint`), drawn height first. Requires
  `H >= ch` and `W >= cw` (pad first).

  Returns:
    `(image [ch, cw, C], label [ch, cw] or None, (h_off, w_off))`.
  """
  h, w = image.shape[:2]
  ch, cw = crop_hw
  if h < ch or w < cw:
    raise ValueError(f"random_crop: image {h}x{w} is smaller than the crop {ch}x{cw}")
  ho = int(rng.integers(0, h - ch, endpoint=True))
  wo = int(rng.integers(0, w - cw, endpoint=True))
  image = image[ho:ho + ch, wo:wo + cw]
  if label is not None:
    label = label[ho:ho + ch, wo:wo + cw]
  return image, label, (ho, wo)


def random_mirror(image: np.ndarray, label: Optional[np.ndarray], rng: np.random.Generator
                  ) -> tuple[np.ndarray, Optional[np.ndarray], bool]:
  """Horizontal flip with p = 0.5 (`flip = choice(2) * 2 - 1`: a draw of 0 flips)."""
  flip = int(rng.integers(0, 2)) == 0
  if flip:
    image = image[:, ::-1]
    if label is not None:
      label = label[:, ::-1]
  return image, label, flip


def advsemi_gt_rescale(image: np.ndarray, label: np.ndarray, crop_hw: HW,
                       rng: Optional[np.random.Generator], scale: bool,
                       factors: Sequence[float] = ADVSEMI_SCALE_FACTORS, max_attempts: int = 10
                       ) -> tuple[np.ndarray, np.ndarray]:
  """AdvSemiSeg `VOCGTDataSet` sizing, so that no padding is ever needed.

  Up to `max_attempts` times: if `scale`, rescale by a random factor *cumulatively* (on the
  already rescaled arrays); stop as soon as the label is at least `crop_hw`. After
  `max_attempts` failures (always the case without `scale` for a too-small image), resize
  to exactly `crop_hw` (bilinear image, nearest label; aspect distorted). The original
  passes `crop_size` (h, w) as cv2's `(w, h)` `dsize`; identical for square crops.
  """
  attempt = 0
  while attempt < max_attempts:
    if scale:
      image, label, _ = random_scale(image, label, rng, factors)
    h, w = label.shape[:2]
    if h < crop_hw[0] or w < crop_hw[1]:
      attempt += 1
      continue
    break
  if attempt == max_attempts:
    image = resize_bilinear(image, crop_hw)
    label = resize_nearest(label, crop_hw)
  return image, label


# ----------------------------------------------------------------------------- ICLR-2018 crop

def _round_half_up(x: float) -> int:
  """Python 2's `round` of a non-negative number (halves away from zero), as an int."""
  return int(math.floor(x + 0.5))


def scale_shorter_side(image: np.ndarray, label: Optional[np.ndarray], size: int
                       ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """torchvision `Scale(size)`: the shorter side to `size`, the longer to
  `int(size * long / short)`; PIL bilinear image, nearest label (unchanged if already so)."""
  h, w = image.shape[:2]
  out_hw = (size, size * w // h) if h <= w else (size * h // w, size)
  image = resize_pil(image, out_hw, "bilinear")
  if label is not None:
    label = resize_pil(label, out_hw, "nearest")
  return image, label


def center_crop(image: np.ndarray, label: Optional[np.ndarray], crop_hw: HW
                ) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """torchvision `CenterCrop`: offsets `round((H - ch) / 2)`, `round((W - cw) / 2)` with the
  halves rounded up (the original ran on Python 2). Requires `H >= ch` and `W >= cw`."""
  h, w = image.shape[:2]
  ch, cw = crop_hw
  if h < ch or w < cw:
    raise ValueError(f"center_crop: image {h}x{w} is smaller than the crop {ch}x{cw}")
  ho, wo = _round_half_up((h - ch) / 2.0), _round_half_up((w - cw) / 2.0)
  image = image[ho:ho + ch, wo:wo + cw]
  if label is not None:
    label = label[ho:ho + ch, wo:wo + cw]
  return image, label


def random_sized_crop(image: np.ndarray, label: Optional[np.ndarray], out_hw: HW,
                      rng: np.random.Generator, max_attempts: int = 10
                      ) -> tuple[np.ndarray, Optional[np.ndarray], Optional[tuple[int, ...]]]:
  """The ICLR-2018 reproduction's `RandomSizedCrop`, jointly on a `uint8` image and label.

  Up to `max_attempts` times: with `A = H * W`, draw `f ~ U(0.08, 1)` and `r ~ U(3/4, 4/3)`;
  `w = round(sqrt(A f r))`, `h = round(sqrt(A f / r))`, swapped with p = 0.5; if the box fits
  (`1 <= w <= W`, `1 <= h <= H`) take it at `x1 = randint(0, W - w)`, `y1 = randint(0, H - h)`
  (inclusive) and resize it to `out_hw` (PIL bilinear image, nearest label). After
  `max_attempts` misses: `scale_shorter_side` to `max(out_hw)` then `center_crop(out_hw)`.
  Draws per attempt: f, r, swap, then x1, y1 for the box taken.

  Returns:
    `(image uint8 [oh, ow, 3], label [oh, ow] or None, (y1, x1, h, w) of the box or None
    after the fallback)`.
  """
  H, W = image.shape[:2]
  area = H * W
  for _ in range(max_attempts):
    frac = rng.uniform(0.08, 1.0)
    aspect = rng.uniform(3.0 / 4.0, 4.0 / 3.0)
    w = _round_half_up(math.sqrt(area * frac * aspect))
    h = _round_half_up(math.sqrt(area * frac / aspect))
    if rng.random() < 0.5:
      w, h = h, w
    if 1 <= w <= W and 1 <= h <= H:  # a 0-pixel box (images under 5 pixels) misses
      x1 = int(rng.integers(0, W - w, endpoint=True))
      y1 = int(rng.integers(0, H - h, endpoint=True))
      image = resize_pil(image[y1:y1 + h, x1:x1 + w], out_hw, "bilinear")
      if label is not None:
        label = resize_pil(label[y1:y1 + h, x1:x1 + w], out_hw, "nearest")
      return image, label, (y1, x1, h, w)
  image, label = scale_shorter_side(image, label, max(out_hw))
  image, label = center_crop(image, label, out_hw)
  return image, label, None
