"""Colouring label maps, overlays, confidence maps and PNG writing (numpy + PIL; matplotlib
for colour maps and legends).

    rgb = colorize(label, palette)                    # uint8 [H, W, 3]
    save_label_png("out/x.png", label, palette)       # 'P' PNG: pixel = class id, palette embedded
    over = overlay(image_rgb, label, palette, 0.5)    # uint8 [H, W, 3]
    img = to_display_rgb(x, mean_bgr, "BGR")          # network input -> uint8 RGB

Label maps hold class ids 0..K-1 and `IGNORE_LABEL` (255, void); ids outside the palette are
drawn in `IGNORE_COLOR`. A 'P' PNG written here reads back (PIL, or `np.array(Image.open(f))`)
as the class ids, so it doubles as a prediction file for `compute_iou`-style scripts.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from advseg_jax.data import labels

IGNORE_LABEL = 255
IGNORE_COLOR = (255, 255, 255)


def full_palette(palette: np.ndarray, ignore_color: Sequence[int] = IGNORE_COLOR) -> np.ndarray:
  """`uint8 [256, 3]`: the K class colours, black for unused ids, `ignore_color` at 255."""
  palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
  if palette.shape[0] > 256:
    raise ValueError(f"a palette holds at most 256 colours, got {palette.shape[0]}")
  out = np.zeros((256, 3), np.uint8)
  out[:palette.shape[0]] = palette
  if palette.shape[0] <= IGNORE_LABEL:
    out[IGNORE_LABEL] = np.asarray(ignore_color, np.uint8)
  return out


def colorize(label: np.ndarray, palette: np.ndarray,
             ignore_color: Sequence[int] = IGNORE_COLOR) -> np.ndarray:
  """Class-id map `[H, W]` -> `uint8 [H, W, 3]` RGB; ids >= K (incl. 255) get `ignore_color`."""
  label = np.asarray(label)
  palette = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
  k = palette.shape[0]
  table = np.concatenate([palette, np.asarray(ignore_color, np.uint8)[None]], axis=0)
  idx = np.where((label >= 0) & (label < k), label, k).astype(np.intp)
  return table[idx]


def label_image(label: np.ndarray, palette: np.ndarray,
                ignore_color: Sequence[int] = IGNORE_COLOR) -> Image.Image:
  """A 'P' mode PIL image: pixel values are the class ids, the dataset palette embedded."""
  label = np.asarray(label)
  if label.ndim != 2:
    raise ValueError(f"label map must be [H, W], got shape {label.shape}")
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f"label ids must lie in 0..255, got {label.min()}..{label.max()}")
  im = Image.fromarray(label.astype(np.uint8), mode="P")
  im.putpalette(full_palette(palette, ignore_color).reshape(-1).tolist())
  return im


def _prepare_path(path: str) -> str:
  path = os.fspath(path)
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  return path


def save_label_png(path: str, label: np.ndarray, palette: np.ndarray,
                   ignore_color: Sequence[int] = IGNORE_COLOR) -> str:
  """Writes `label` as a palette ('P') PNG; creates missing parent directories."""
  path = _prepare_path(path)
  label_image(label, palette, ignore_color).save(path, format="PNG", optimize=False)
  return path


def save_rgb_png(path: str, rgb: np.ndarray) -> str:
  """Writes `uint8 [H, W, 3]` (or `[H, W]` grey) as PNG; creates missing parent directories."""
  path = _prepare_path(path)
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8:
    raise ValueError(f"expected a uint8 image, got {rgb.dtype}")
  Image.fromarray(rgb).save(path, format="PNG")
  return path


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, alpha: float = 0.5,
            ignore_color: Optional[Sequence[int]] = None) -> np.ndarray:
  """Blends the coloured `label` over an RGB `uint8 [H, W, 3]` image.

  `alpha` is the weight of the label colours (0 = image only, 1 = colours only). Ignored
  pixels (ids outside the palette) keep the image unless `ignore_color` is given.
  """
  image = np.asarray(image)
  label = np.asarray(label)
  if image.shape[:2] != label.shape:
    raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  colours = colorize(label, palette, ignore_color if ignore_color is not None else (0, 0, 0))
  blend = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
  if ignore_color is None:
    k = np.asarray(palette).reshape(-1, 3).shape[0]
    void = (label < 0) | (label >= k)
    blend[void] = image[void]
  return np.clip(np.rint(blend), 0, 255).astype(np.uint8)


def to_display_rgb(image: np.ndarray, mean_bgr: Sequence[float], channel_order: str,
                   std_bgr: Optional[Sequence[float]] = None) -> np.ndarray:
  """Inverse of the input preprocessing: normalised network input -> `uint8` RGB.

  `image` is `[..., H, W, 3]` float on the 0-255 scale in `channel_order` ('RGB' or 'BGR')
  with `mean_bgr` (B, G, R order) subtracted and, when given, divided by `std_bgr`, as
  produced by `advseg_jax.data`.
  """
  mean = np.asarray(mean_bgr, np.float32)
  std = np.ones(3, np.float32) if std_bgr is None else np.asarray(std_bgr, np.float32)
  x = np.asarray(image, np.float32)
  if channel_order == "BGR":
    x = (x * std + mean)[..., ::-1]
  elif channel_order == "RGB":
    x = x * std[::-1] + mean[::-1]
  else:
    raise ValueError(f"channel_order must be 'RGB' or 'BGR', got {channel_order!r}")
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def confidence_rgb(conf: np.ndarray, cmap: str = "viridis") -> np.ndarray:
  """A `[H, W]` map in [0, 1] -> `uint8 [H, W, 3]` through a matplotlib colour map."""
  from matplotlib import colormaps  # pylint: disable=import-outside-toplevel  (optional)

  c = np.clip(np.nan_to_num(np.asarray(conf, np.float32)), 0.0, 1.0)
  return (colormaps[cmap](c)[..., :3] * 255.0 + 0.5).astype(np.uint8)


def confidence_png(conf: np.ndarray) -> np.ndarray:
  """A `[H, W]` map in [0, 1] -> `uint8 [H, W]` grey (0 = 0.0, 255 = 1.0)."""
  c = np.clip(np.nan_to_num(np.asarray(conf, np.float32)), 0.0, 1.0)
  return np.rint(c * 255.0).astype(np.uint8)


def legend_patches(class_names: Sequence[str], palette: np.ndarray):
  """matplotlib legend handles, one per class colour."""
  from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel  (optional)

  pal = np.asarray(palette, np.float32).reshape(-1, 3) / 255.0
  return [Patch(facecolor=tuple(pal[i]), edgecolor="none", label=str(n))
          for i, n in enumerate(class_names)]


def fallback_palette(num_classes: int) -> np.ndarray:
  """A deterministic `uint8 [K, 3]` palette for class counts no dataset defines."""
  return labels.voc_palette(max(int(num_classes), 1))[:num_classes]
