"""Regenerates the tiny `dummy_data/` fixture trees of the manual builders.

Run `python -m advseg_jax.data.builders.make_dummy_data` (deterministic). Each tree has the
real layout with a handful of small images; labels use raw ids of the real format (VOC
indices, Cityscapes labelIds, SYNTHIA 16-bit ids) so the builders' mappings are exercised.
"""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
from PIL import Image

from advseg_jax.data import image_io
from advseg_jax.data import labels

HERE = os.path.dirname(os.path.abspath(__file__))


def _write(path: str, data: bytes) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1),
                   (xx + yy) * 127 // max(h + w - 2, 1)], -1)
  return np.clip(base + rng.integers(-20, 21, (h, w, 3)), 0, 255).astype(np.uint8)


def _blocky(rng: np.random.Generator, h: int, w: int, values) -> np.ndarray:
  """A label of 4x4 blocks drawn from `values`."""
  small = rng.choice(np.asarray(values), size=((h + 3) // 4, (w + 3) // 4))
  return np.repeat(np.repeat(small, 4, 0), 4, 1)[:h, :w]


def make_voc(root: str) -> None:
  rng = np.random.default_rng(1)
  train = ["2007_000032", "2007_000039", "2008_000002", "2010_000005"]
  val = ["2007_000033", "2011_000003"]
  sizes = [(30, 40), (36, 28), (24, 32), (40, 30), (28, 36), (32, 32)]
  for i, (name, (h, w)) in enumerate(zip(train + val, sizes)):
    _write(f"{root}/JPEGImages/{name}.jpg", image_io.encode_jpeg(_image(rng, h, w)))
    lab = _blocky(rng, h, w, [0, 0, 1, 7, 15, 20, 255]).astype(np.uint8)
    # odd ones as palette PNGs (like VOC's SegmentationClass): the indices are the ids
    data = _palette_label(lab) if i % 2 else image_io.encode_png(lab)
    _write(f"{root}/SegmentationClassAug/{name}.png", data)
  os.makedirs(f"{root}/ImageSets/SegmentationAug", exist_ok=True)
  with open(f"{root}/ImageSets/SegmentationAug/train_aug.txt", "w") as f:
    f.write("\n".join(train) + "\n")
  with open(f"{root}/ImageSets/SegmentationAug/val.txt", "w") as f:
    f.write("\n".join(val) + "\n")


def _png_bytes(im: Image.Image) -> bytes:
  buf = io.BytesIO()
  im.save(buf, format="PNG")
  return buf.getvalue()


def _palette_label(lab: np.ndarray) -> bytes:
  """`uint8 [H, W]` ids as a palette ("P") PNG whose indices are the ids."""
  lab = np.ascontiguousarray(lab, dtype=np.uint8)
  im = Image.frombytes("P", (lab.shape[1], lab.shape[0]), lab.tobytes())
  im.putpalette(labels.voc_palette(256).reshape(-1).tolist())
  return _png_bytes(im)


def make_cityscapes(root: str) -> None:
  rng = np.random.default_rng(2)
  files = {"train": [("aachen", "aachen_000000_000019"), ("aachen", "aachen_000001_000019"),
                     ("bochum", "bochum_000000_000313")],
           "val": [("frankfurt", "frankfurt_000000_000294"),
                   ("lindau", "lindau_000000_000019")]}
  h, w = 16, 32
  for split, items in files.items():
    for city, stem in items:
      _write(f"{root}/leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png",
             image_io.encode_png(_image(rng, h, w)))
      lab = _blocky(rng, h, w, list(range(34))).astype(np.uint8)
      _write(f"{root}/gtFine/{split}/{city}/{stem}_gtFine_labelIds.png",
             image_io.encode_png(lab))


def make_gta5(root: str) -> None:
  rng = np.random.default_rng(3)
  h, w = 18, 32
  for i in range(1, 4):
    name = f"{i:05d}.png"
    _write(f"{root}/images/{name}", image_io.encode_png(_image(rng, h, w)))
    lab = _blocky(rng, h, w, list(range(34))).astype(np.uint8)
    _write(f"{root}/labels/{name}", _palette_label(lab))  # GTA5 labels are palette PNGs


def make_synthia(root: str) -> None:
  rng = np.random.default_rng(4)
  h, w = 19, 32
  for i in range(3):
    name = f"{i:07d}.png"
    _write(f"{root}/RGB/{name}", image_io.encode_png(_image(rng, h, w)))
    cls = _blocky(rng, h, w, list(range(labels.SYNTHIA_NUM_RAW_IDS))).astype(np.uint16)
    inst = rng.integers(0, 1000, (h, w)).astype(np.uint16)  # > 255: high byte matters
    lab = np.stack([cls, inst, np.zeros_like(cls)], -1)
    _write(f"{root}/GT/LABELS/{name}", image_io.encode_png16(lab, filters=(0, 1, 2)))


def make_stanford_background(root: str) -> None:
  """10 JPEG images (landscape and portrait) and `.regions.txt` labels with -1 pixels."""
  rng = np.random.default_rng(5)
  names = ["0000047", "0000051", "0000059", "0000062", "0000063", "0000067", "0000074",
           "6000124", "9004669", "9005294"]
  for i, name in enumerate(names):
    h, w = ((24, 32), (32, 24), (20, 28))[i % 3]
    _write(f"{root}/images/{name}.jpg", image_io.encode_jpeg(_image(rng, h, w)))
    lab = _blocky(rng, h, w, list(range(-1, 8)))
    text = "\n".join(" ".join(str(int(v)) for v in row) for row in lab) + "\n"
    _write(f"{root}/labels/{name}.regions.txt", text.encode("ascii"))


def main() -> None:
  for name, fn in (("voc_aug", make_voc), ("cityscapes", make_cityscapes),
                   ("gta5", make_gta5), ("synthia", make_synthia),
                   ("stanford_background", make_stanford_background)):
    root = os.path.join(HERE, name, "dummy_data")
    shutil.rmtree(root, ignore_errors=True)
    fn(root)
    print("wrote", root)


if __name__ == "__main__":
  main()
