"""Procedural "shapes" scenes with a controllable domain shift (pure numpy).

Each scene is `SIZE x SIZE` with 2-4 shapes (disc, square, triangle, ring; random size,
position, rotation; later shapes occlude earlier ones) over a textured background. Class
identity is carried by the *outline* only: fill colours are drawn independently of the class.

The two styles share the geometry distribution (so label statistics match) and differ in
appearance only:

* `source`: dark, smooth, bluish backgrounds (low-frequency blobs); bright, saturated,
  flat shapes; almost no noise.
* `target`: bright, warm, striped backgrounds (high-frequency texture); dark, desaturated,
  noisy shapes; Gaussian blur and sensor noise on the whole image.

A model that learns "bright and smooth = object" on `source` is wrong on `target`, so
source-only training scores clearly lower there, while shape cues transfer.
"""

from __future__ import annotations

import colorsys

import numpy as np

SIZE = 128
NUM_CLASSES = 5  # background, disc, square, triangle, ring
STYLES = ("source", "target")
BASE_SEED = 20261122


def example_rng(style: str, split: str, index: int) -> np.random.Generator:
  """Deterministic per-example generator (independent of generation order)."""
  return np.random.default_rng(
      [BASE_SEED, STYLES.index(style), ("train", "validation").index(split), index])


def _shape_mask(cls: int, cy: float, cx: float, r: float, theta: float,
                yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
  dy, dx = yy - cy, xx - cx
  c, s = np.cos(theta), np.sin(theta)
  u, v = c * dx + s * dy, -s * dx + c * dy
  d = np.hypot(dx, dy)
  if cls == 1:  # disc
    return d <= r
  if cls == 2:  # square (half side 0.8 r)
    return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * r
  if cls == 3:  # equilateral triangle inscribed in radius r
    m = np.ones_like(d, dtype=bool)
    for k in range(3):
      a = theta + np.pi / 2 + k * 2 * np.pi / 3
      m &= (np.cos(a) * dx + np.sin(a) * dy) <= 0.5 * r
    return m
  if cls == 4:  # ring
    return (d <= r) & (d >= 0.55 * r)
  raise ValueError(cls)


def render_label(rng: np.random.Generator, size: int = SIZE) -> tuple[np.ndarray, list]:
  """Samples the geometry: `uint8 [size, size]` label and the list of shape masks."""
  label = np.zeros((size, size), np.uint8)
  masks = []
  for _ in range(int(rng.integers(2, 5))):
    cls = int(rng.integers(1, NUM_CLASSES))
    r = rng.uniform(0.09, 0.2) * size
    cy, cx = rng.uniform(r, size - r, size=2)
    theta = rng.uniform(0, 2 * np.pi)
    # evaluate the shape only on its bounding box
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    m = np.zeros((size, size), bool)
    m[y0:y1, x0:x1] = _shape_mask(cls, cy, cx, r, theta, yy, xx)
    label[m] = cls
    masks.append(m)
  return label, masks


def _hsv(h: float, s: float, v: float) -> np.ndarray:
  return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
  """Bilinearly upsampled `cells x cells` uniform noise in [0, 1], `[size, size]`."""
  g = rng.uniform(0, 1, (cells + 1, cells + 1)).astype(np.float32)
  t = np.linspace(0, cells, size, dtype=np.float32)
  i0 = np.minimum(t.astype(int), cells - 1)
  f = t - i0
  rows = g[i0] * (1 - f)[:, None] + g[i0 + 1] * f[:, None]
  return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
  """Separable Gaussian blur of `[H, W, C]` with edge replication."""
  rad = int(np.ceil(3 * sigma))
  k = np.exp(-0.5 * (np.arange(-rad, rad + 1) / sigma) ** 2)
  k /= k.sum()
  for axis in (0, 1):
    pad = [(0, 0)] * img.ndim
    pad[axis] = (rad, rad)
    p = np.pad(img, pad, mode="edge")
    n = img.shape[axis]
    sl = [slice(None)] * img.ndim
    out = np.zeros_like(img)
    for j, w in enumerate(k):
      sl[axis] = slice(j, j + n)
      out += np.float32(w) * p[tuple(sl)]
    img = out
  return img


def render_example(style: str, split: str, index: int,
                   size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
  """One scene: `(image uint8 [size, size, 3] RGB, label uint8 [size, size])`."""
  rng = example_rng(style, split, index)
  label, masks = render_label(rng, size)
  # Appearance draws come from a separate stream so both styles see the same geometry law.
  arng = np.random.default_rng([BASE_SEED, 7, STYLES.index(style),
                                ("train", "validation").index(split), index])
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  if style == "source":
    field = _smooth_field(arng, size, 4)[..., None]
    c1 = _hsv(arng.uniform(0.55, 0.75), arng.uniform(0.3, 0.7), arng.uniform(0.15, 0.3))
    c2 = _hsv(arng.uniform(0.55, 0.75), arng.uniform(0.3, 0.7), arng.uniform(0.3, 0.45))
    img = c1 * (1 - field) + c2 * field
    shade = np.float32(1.0) - np.float32(0.1) * (yy[..., None] - np.float32(0.5))
    for m in masks:
      col = _hsv(arng.uniform(0, 1), arng.uniform(0.6, 1.0), arng.uniform(0.8, 1.0))
      img[m] = (col * shade)[m]
    img = img + np.float32(1.5 / 255) * arng.standard_normal(img.shape, dtype=np.float32)
  elif style == "target":
    phi = arng.uniform(0, np.pi)
    freq = arng.uniform(0.15, 0.3) * size
    stripes = 0.5 + 0.5 * np.sin(np.float32(2 * np.pi * freq) * (
        xx * np.float32(np.cos(phi)) + yy * np.float32(np.sin(phi))))
    base = _hsv(arng.uniform(0.02, 0.18), arng.uniform(0.3, 0.6), arng.uniform(0.7, 0.85))
    img = base * (np.float32(0.75) + np.float32(0.3) * stripes[..., None])
    for m in masks:
      col = _hsv(arng.uniform(0, 1), arng.uniform(0.1, 0.5), arng.uniform(0.1, 0.35))
      n = int(m.sum())
      img[m] = col + np.float32(0.08) * arng.standard_normal((n, 3), dtype=np.float32)
    img = _blur(img, 1.0)
    img = img + np.float32(8 / 255) * arng.standard_normal(img.shape, dtype=np.float32)
  else:
    raise ValueError(f"unknown shapes style {style!r}; expected one of {STYLES}")
  image = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
  return image, label
