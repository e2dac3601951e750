"""Fixture trees for the data tests: the builders' dummy_data/ trees and variants of them."""

import os
import shutil

import numpy as np
from PIL import Image

from advseg_jax.data import prepare

BUILDERS = os.path.join(os.path.dirname(prepare.__file__), "builders")


def dummy(name):
  """The `dummy_data/` tree of builder `name`."""
  return os.path.join(BUILDERS, name, "dummy_data")


def palette_png(path, ids):
  """Writes `uint8 [H, W]` ids as a palette PNG whose indices are the ids (GTA5's format)."""
  ids = np.ascontiguousarray(ids, dtype=np.uint8)
  im = Image.frombytes("P", (ids.shape[1], ids.shape[0]), ids.tobytes())
  im.putpalette([c for i in range(256) for c in (i, 255 - i, 0)])
  im.save(path)


def gta5_as_released(tmp_path):
  """The dummy GTA5 tree with a label of another size than its image (00002, holding the
  unknown ids 34 and 200) and an unknown id 250 in a label of the right size (00003)."""
  manual = tmp_path / "gta5_released"
  shutil.copytree(dummy("gta5"), manual)
  rng = np.random.default_rng(20)
  small = rng.choice([0, 7, 8, 26, 33, 34, 200], size=(6, 10))
  small[0, :2] = (34, 200)
  palette_png(manual / "labels" / "00002.png", np.repeat(np.repeat(small, 4, 0), 4, 1))
  p = manual / "labels" / "00003.png"
  lab = np.asarray(Image.open(p)).copy()
  lab[:4, :4] = 250
  palette_png(p, lab)
  return manual
