"""The procedural shapes dataset: determinism, preparation, and a measurable domain shift."""

import time

import numpy as np
import pytest

from advseg_jax import data
from advseg_jax.data import image_io
from advseg_jax.data import source as source_lib
from advseg_jax.data.builders.shapes import render
from advseg_jax.data.builders.shapes import shapes_dataset_builder

# Smaller than the real 400 / 100 so that the suite stays fast on 2 cores.
TEST_SIZES = {"train": 128, "validation": 40}


def test_real_split_sizes():
  assert shapes_dataset_builder.SPLIT_SIZES == {"train": 400, "validation": 100}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  d = str(tmp_path_factory.mktemp("tfds"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(shapes_dataset_builder, "SPLIT_SIZES", TEST_SIZES)
    data.ensure_prepared("shapes", d)  # both styles
  return d


@pytest.fixture(scope="module")
def arrays(data_dir):
  out = {}
  for style in ("source", "target"):
    src = source_lib.RawSource("shapes", style, data_dir, "train")
    recs = [src[i] for i in range(len(src))]
    out[style] = (np.stack([image_io.decode_image(r["image"]) for r in recs]),
                  np.stack([image_io.decode_label(r["label"]) for r in recs]))
  return out


def test_prepared_sizes_and_idempotent(data_dir):
  for style in ("source", "target"):
    b = source_lib.make_builder("shapes", style, data_dir)
    assert {k: v.num_examples for k, v in b.info.splits.items()} == TEST_SIZES
  t = time.time()
  data.ensure_prepared("shapes", data_dir)
  assert time.time() - t < 2.0  # nothing rebuilt


def test_deterministic_and_stored_exactly(data_dir):
  a = render.render_example("target", "validation", 7)
  b = render.render_example("target", "validation", 7)
  np.testing.assert_array_equal(a[0], b[0])
  rec = source_lib.RawSource("shapes", "target", data_dir, "validation")[7]
  np.testing.assert_array_equal(image_io.decode_image(rec["image"]), a[0])
  np.testing.assert_array_equal(image_io.decode_label(rec["label"]), a[1])
  assert rec["file_name"] == "target_validation_00007.png"


def test_label_distributions_match(arrays):
  fr = {s: np.bincount(lab.reshape(-1), minlength=5) / lab.size for s, (_, lab) in arrays.items()}
  assert set(np.unique(arrays["source"][1])) == {0, 1, 2, 3, 4}
  np.testing.assert_allclose(fr["source"], fr["target"], atol=0.02)
  assert 0.1 < 1 - fr["source"][0] < 0.35  # foreground share


def _brightness(img):
  return img.astype(np.float32).mean(-1)


def test_appearance_statistics_differ(arrays):
  stats = {}
  for s, (img, lab) in arrays.items():
    v = _brightness(img)
    fg = lab > 0
    lap = np.abs(4 * v[:, 1:-1, 1:-1] - v[:, :-2, 1:-1] - v[:, 2:, 1:-1]
                 - v[:, 1:-1, :-2] - v[:, 1:-1, 2:])
    bg_inner = ~fg[:, 1:-1, 1:-1]
    stats[s] = dict(fg=v[fg].mean(), bg=v[~fg].mean(), bg_tex=lap[bg_inner].mean(),
                    mean_rgb=img.reshape(-1, 3).mean(0))
  assert stats["source"]["fg"] > stats["source"]["bg"] + 80   # bright shapes, dark ground
  assert stats["target"]["fg"] < stats["target"]["bg"] - 80   # dark shapes, bright ground
  assert stats["target"]["bg_tex"] > 2 * stats["source"]["bg_tex"]
  assert np.abs(stats["source"]["mean_rgb"] - stats["target"]["mean_rgb"]).max() > 50


def test_source_appearance_cue_fails_on_target(arrays):
  """A per-pixel nearest-centroid fg/bg classifier fit on source colours: near perfect on
  source, wrong on most target pixels -> appearance-only models degrade under the shift."""
  img, lab = arrays["source"]
  x = img.reshape(-1, 3).astype(np.float32)
  y = lab.reshape(-1) > 0
  c_fg, c_bg = x[y].mean(0), x[~y].mean(0)

  def fg_iou(images, labels):
    p = images.reshape(-1, 3).astype(np.float32)
    pred = ((p - c_fg) ** 2).sum(1) < ((p - c_bg) ** 2).sum(1)
    t = labels.reshape(-1) > 0
    return (pred & t).sum() / (pred | t).sum()

  assert fg_iou(*arrays["source"]) > 0.8
  assert fg_iou(*arrays["target"]) < 0.3


def test_train_pipeline_on_shapes(data_dir):
  cfg = data.dataset_config(name="shapes", config_name="target", data_dir=data_dir,
                            random_mirror=True)
  b = next(data.make_train_iterator(cfg, split="train", batch_size=4, seed=0))
  assert b["image"].shape == (4, 128, 128, 3) and b["label"].shape == (4, 128, 128)
  assert b["label"].max() <= 4
  ev = data.make_eval_iterator(cfg, split="validation", batch_size=16)
  assert len(ev) == 3 and data.num_examples(cfg, "validation") == 40
