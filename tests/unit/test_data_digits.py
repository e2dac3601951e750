"""The `digits_m` dataset: determinism, class balance, disjoint splits, the MNIST-M
construction, TFDS preparation, and the error when the `digits` extra is missing."""

import sys

import numpy as np
import pytest

from advseg_jax.data.builders.digits_m import render

# Smaller than the real sizes so that the suite stays fast on 2 cores.
TEST_SIZES = {"source": {"train": 24, "validation": 8},
              "target": {"train": 24, "validation": 8, "test": 8}}
ALL_SPLITS = [(s, p) for s in render.STYLES for p in render.SPLITS[s]]


@pytest.fixture(scope="module")
def extra():
  pytest.importorskip("sklearn")
  pytest.importorskip("skimage")


def test_missing_package_names_the_extra(monkeypatch):
  render.load_digit_images.cache_clear()
  render.load_photos.cache_clear()
  monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
  monkeypatch.setitem(sys.modules, "skimage.data", None)
  try:
    with pytest.raises(ImportError) as e:
      render.load_digit_images()
    msg = str(e.value)
    assert "scikit-learn" in msg and 'pip install -e ".[digits]"' in msg and "\n" not in msg
    with pytest.raises(ImportError, match=r"scikit-image.*\.\[digits\]"):
      render.load_photos()
  finally:
    render.load_digit_images.cache_clear()
    render.load_photos.cache_clear()


def test_shapes_dtypes_and_label_values(extra):
  for style, split in ALL_SPLITS:
    img, lab, digits = render.render_example(style, split, 3)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert lab.shape == (96, 96) and lab.dtype == np.uint8
    assert set(np.unique(lab)) <= set(range(11)) | {255}
    assert 2 <= len(digits) <= 4
    assert {1 + d.digit for d in digits} == set(np.unique(lab)) - {0, 255}


def test_deterministic_and_order_independent(extra):
  a = render.render_example("target", "validation", 7)
  render.render_example("target", "validation", 8)
  b = render.render_example("target", "validation", 7)
  np.testing.assert_array_equal(a[0], b[0])
  np.testing.assert_array_equal(a[1], b[1])
  assert a[2] == b[2]
  c = render.render_example("target", "validation", 9)
  assert not np.array_equal(a[0], c[0])


def test_digits_do_not_overlap(extra):
  for i in range(40):
    digits = render.render_example("source", "train", i)[2]
    for j, d in enumerate(digits):
      for e in digits[j + 1:]:
        t, l, h, w = d.box
        t2, l2, h2, w2 = e.box
        assert t + h <= t2 or t2 + h2 <= t or l + w <= l2 or l2 + w2 <= l


def test_pools_disjoint_and_cover_every_instance(extra):
  pools = render.digit_pools()
  _, targets = render.load_digit_images()
  seen = np.concatenate([np.concatenate(p) for p in pools.values()])
  assert np.array_equal(np.sort(seen), np.arange(targets.size))  # each instance exactly once
  for key, per_class in pools.items():
    for c, idx in enumerate(per_class):
      assert idx.size >= 15 and np.all(targets[idx] == c), key


def test_no_digit_instance_crosses_splits(extra):
  used = {}
  for style, split in ALL_SPLITS:
    used[(style, split)] = {d.instance for i in range(60)
                            for d in render.render_example(style, split, i)[2]}
  keys = list(used)
  for i, a in enumerate(keys):
    for b in keys[i + 1:]:
      assert not used[a] & used[b], (a, b)


def test_photo_regions_are_disjoint():
  for shape in [(300, 451, 3), (512, 512, 3), (660, 400, 3)]:
    spans = []
    for split in ("train", "validation", "test"):
      t, l, h, w = render.photo_region(shape, split)
      long_axis = 0 if shape[0] >= shape[1] else 1
      spans.append((t, t + h) if long_axis == 0 else (l, l + w))
      assert min(h, w) >= render.CROP_SIDE[0]
    assert spans[0][1] <= spans[1][0] and spans[1][1] <= spans[2][0]


def test_class_balance(extra):
  counts = np.zeros(10)
  pixels = np.zeros(11)
  for i in range(300):
    img, lab, digits = render.render_example("source", "train", i)
    for d in digits:
      counts[d.digit] += 1
    pixels += np.bincount(lab[lab != 255].reshape(-1), minlength=11)
  assert counts.sum() > 2.5 * 300
  np.testing.assert_allclose(counts / counts.mean(), 1.0, atol=0.3)
  fg = pixels[1:] / pixels[1:].sum()
  assert fg.min() > 0.04 and fg.max() < 0.18        # every digit class present, none dominant
  assert 0.05 < pixels[1:].sum() / pixels.sum() < 0.3  # foreground share


def test_source_white_on_black_and_target_is_mnist_m(extra):
  img, lab, digits = render.render_example("source", "train", 5)
  assert np.all(img[lab == 0] < 80) and np.all(img[(lab > 0) & (lab < 255)] >= 127)
  assert np.all(img[..., 0] == img[..., 1]) and np.all(img[..., 0] == img[..., 2])
  img, lab, digits = render.render_example("target", "train", 5)
  v, lab2 = render.render_digits(digits)
  np.testing.assert_array_equal(lab, lab2)
  photo = render.photo_crop(render.example_rng("target", "train", 5, stream=1), "train")
  expected = np.clip(np.rint(np.abs(photo - 255 * v[..., None])), 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(img, expected)
  assert img.reshape(-1, 3).std(0).mean() > 30   # a photo, not a flat background


def test_prepare_and_pipeline(extra, tmp_path_factory):
  import tensorflow_datasets as tfds
  from advseg_jax import data
  from advseg_jax.data import image_io
  from advseg_jax.data import source as source_lib
  from advseg_jax.data.builders.digits_m import digits_m_dataset_builder as builder
  tfds.disable_progress_bar()
  d = str(tmp_path_factory.mktemp("tfds"))
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(builder, "SPLIT_SIZES", TEST_SIZES)
    data.ensure_prepared("digits_m", d)  # both configs
  for style in render.STYLES:
    b = source_lib.make_builder("digits_m", style, d)
    assert {k: v.num_examples for k, v in b.info.splits.items()} == TEST_SIZES[style]
  rec = source_lib.RawSource("digits_m", "target", d, "test")[5]
  img, lab, _ = render.render_example("target", "test", 5)
  np.testing.assert_array_equal(image_io.decode_image(rec["image"]), img)
  np.testing.assert_array_equal(image_io.decode_label(rec["label"]), lab)
  assert rec["file_name"] == "target_test_00005.png"
  cfg = data.dataset_config(name="digits_m", config_name="target", data_dir=d)
  batch = next(data.make_train_iterator(cfg, split="train", batch_size=4, seed=0))
  assert batch["image"].shape == (4, 96, 96, 3) and batch["label"].shape == (4, 96, 96)
  info = data.get_info("digits_m/target")
  assert info.num_classes == 11 and info.splits == ("train", "validation", "test")
  assert not info.needs_manual_download and info.palette.shape == (11, 3)
