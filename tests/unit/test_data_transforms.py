"""Each transform of advseg_jax.data.transforms against a direct numpy computation."""

import math

import numpy as np
import pytest
from PIL import Image

from advseg_jax.data import config as config_lib
from advseg_jax.data import image_io
from advseg_jax.data import pipeline
from advseg_jax.data import transforms as T

MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)


def _img(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _lab(h, w, seed=1):
  return np.random.default_rng(seed).choice([0, 3, 7, 255], (h, w)).astype(np.uint8)


def _ref_bilinear(img, oh, ow, sy, sx):
  """Pixel-by-pixel cv2 INTER_LINEAR reference (half-pixel centres, border clamp)."""
  h, w = img.shape[:2]
  out = np.zeros((oh, ow) + img.shape[2:], np.float64)

  def taps(d, s, n):
    src = (d + 0.5) * s - 0.5
    i0 = math.floor(src)
    f = src - i0
    if i0 < 0:
      i0, f = 0, 0.0
    i0 = min(i0, n - 1)
    return i0, min(i0 + 1, n - 1), f

  for y in range(oh):
    y0, y1, fy = taps(y, sy, h)
    for x in range(ow):
      x0, x1, fx = taps(x, sx, w)
      out[y, x] = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
                   + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
  return out


@pytest.mark.parametrize("f", [0.5, 0.7, 1.3, 1.6])
def test_scale_by_matches_cv2_semantics(f):
  img, lab = _img(9, 13), _lab(9, 13)
  out_img, out_lab = T.scale_by(img, lab, f)
  oh, ow = int(np.rint(9 * f)), int(np.rint(13 * f))
  assert out_img.shape == (oh, ow, 3) and out_lab.shape == (oh, ow)
  ref = _ref_bilinear(img.astype(np.float64), oh, ow, 1 / f, 1 / f)
  assert np.abs(out_img.astype(np.float64) - ref).max() <= 0.5 + 1e-3
  ys = [min(int(math.floor(y / f)), 8) for y in range(oh)]
  xs = [min(int(math.floor(x / f)), 12) for x in range(ow)]
  assert np.array_equal(out_lab, lab[np.ix_(ys, xs)])
  assert set(np.unique(out_lab)) <= set(np.unique(lab))  # nearest never invents ids


def test_cv2_scaled_size_rounds_half_to_even():
  assert T.cv2_scaled_size((375, 500), 0.7) == (262, 350)  # 262.49999 in float
  assert T.cv2_scaled_size((5, 7), 0.5) == (2, 4)          # 2.5 -> 2, 3.5 -> 4


def test_random_scale_factor_set_is_advsemiseg():
  # Python's random.randint(0, 11) includes 11: factors 0.5 ... 1.6.
  assert np.allclose(T.ADVSEMI_SCALE_FACTORS, [0.5 + k / 10 for k in range(12)])
  rng = np.random.default_rng(0)
  seen = set()
  for _ in range(400):
    _, _, f = T.random_scale(_img(4, 4), None, rng)
    seen.add(round(f, 1))
  assert seen == {round(0.5 + k / 10, 1) for k in range(12)}


def test_resize_bilinear_explicit_size_and_float():
  img = np.random.default_rng(3).uniform(0, 255, (7, 5, 3)).astype(np.float32)
  out = T.resize_bilinear(img, (11, 4))
  ref = _ref_bilinear(img.astype(np.float64), 11, 4, 7 / 11, 5 / 4)
  np.testing.assert_allclose(out, ref, atol=1e-3)


def test_resize_pil_modes_match_pil():
  img, lab = _img(20, 30), _lab(20, 30)
  out_img, out_lab = T.resize_example_pil(img, lab, (12, 17))
  np.testing.assert_array_equal(
      out_img, np.asarray(Image.fromarray(img).resize((17, 12), Image.BICUBIC)))
  np.testing.assert_array_equal(
      out_lab, np.asarray(Image.fromarray(lab).resize((17, 12), Image.NEAREST)))


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_subtract_mean_per_channel(order):
  img = _img(3, 4)
  out = T.subtract_mean(img, MEAN_BGR, order)
  assert out.dtype == np.float32
  r, g, b = (img[..., i].astype(np.float32) for i in range(3))
  mb, mg, mr = (np.float32(m) for m in MEAN_BGR)
  want = [r - mr, g - mg, b - mb] if order == "RGB" else [b - mb, g - mg, r - mr]
  np.testing.assert_allclose(out, np.stack(want, -1), rtol=0, atol=1e-4)
  with pytest.raises(ValueError):
    T.subtract_mean(img, MEAN_BGR, "GBR")


def test_pad_bottom_right_values():
  x = np.random.default_rng(0).normal(size=(3, 5, 3)).astype(np.float32)
  lab = _lab(3, 5)
  px, pl = T.pad_bottom_right(x, lab, (6, 4))
  assert px.shape == (6, 5, 3) and pl.shape == (6, 5)
  np.testing.assert_array_equal(px[:3], x)
  assert (px[3:] == 0).all()
  np.testing.assert_array_equal(pl[:3], lab)
  assert (pl[3:] == 255).all()
  same_x, same_l = T.pad_bottom_right(x, lab, (2, 2))
  assert same_x is x and same_l is lab


def test_random_crop_offsets_inclusive_and_content():
  x = np.arange(5 * 6 * 3, dtype=np.float32).reshape(5, 6, 3)
  lab = np.arange(30, dtype=np.uint8).reshape(5, 6)
  rng = np.random.default_rng(0)
  offsets = set()
  for _ in range(300):
    cx, cl, (ho, wo) = T.random_crop(x, lab, (3, 4), rng)
    offsets.add((ho, wo))
    np.testing.assert_array_equal(cx, x[ho:ho + 3, wo:wo + 4])
    np.testing.assert_array_equal(cl, lab[ho:ho + 3, wo:wo + 4])
  assert offsets == {(h, w) for h in range(3) for w in range(3)}  # 0..H-crop inclusive
  with pytest.raises(ValueError):
    T.random_crop(x, lab, (6, 4), rng)


def test_random_mirror_probability_and_content():
  x = _img(2, 5).astype(np.float32)
  lab = _lab(2, 5)
  rng = np.random.default_rng(0)
  flips = 0
  for _ in range(2000):
    mx, ml, flip = T.random_mirror(x, lab, rng)
    flips += flip
    np.testing.assert_array_equal(mx, x[:, ::-1] if flip else x)
    np.testing.assert_array_equal(ml, lab[:, ::-1] if flip else lab)
  assert 900 < flips < 1100


def test_advsemi_gt_rescale_without_scale_resizes_small_images():
  img, lab = _img(8, 6), _lab(8, 6)
  out_img, out_lab = T.advsemi_gt_rescale(img, lab, (10, 10), None, scale=False)
  assert out_img.shape == (10, 10, 3) and out_lab.shape == (10, 10)
  np.testing.assert_array_equal(out_lab, T.resize_nearest(lab, (10, 10)))
  big_img, big_lab = _img(12, 14), _lab(12, 14)
  same_img, same_lab = T.advsemi_gt_rescale(big_img, big_lab, (10, 10), None, scale=False)
  assert same_img is big_img and same_lab is big_lab


def test_advsemi_gt_rescale_is_cumulative():
  img, lab = _img(9, 9), _lab(9, 9)
  seed = 5
  out_img, out_lab = T.advsemi_gt_rescale(img, lab, (10, 10), np.random.default_rng(seed),
                                          scale=True)
  # Direct re-computation: draw factors, scale the scaled arrays until big enough.
  rng = np.random.default_rng(seed)
  ri, rl = img, lab
  for attempt in range(10):
    f = T.ADVSEMI_SCALE_FACTORS[int(rng.integers(0, 12))]
    ri, rl = T.scale_by(ri, rl, f)
    if rl.shape[0] >= 10 and rl.shape[1] >= 10:
      break
  else:
    ri, rl = T.resize_bilinear(ri, (10, 10)), T.resize_nearest(rl, (10, 10))
  np.testing.assert_array_equal(out_img, ri)
  np.testing.assert_array_equal(out_lab, rl)
  assert out_lab.shape[0] >= 10 and out_lab.shape[1] >= 10


def test_train_transform_composes_in_order():
  cfg = config_lib.dataset_config(name="voc_aug", crop_size=(7, 9), random_scale=True,
                                  random_mirror=True, channel_order="RGB")
  tr = pipeline.TrainTransform(cfg)
  img, lab = _img(6, 8), _lab(6, 8)
  raw = {"image": image_io.encode_png(img), "label": image_io.encode_png(lab),
         "file_name": "x", "index": 0}
  out = tr(raw, np.random.default_rng(11))
  rng = np.random.default_rng(11)
  si, sl, _ = T.random_scale(img, lab, rng)
  x = T.subtract_mean(si, MEAN_BGR, "RGB")
  x, sl = T.pad_bottom_right(x, sl, (7, 9))
  x, sl, _ = T.random_crop(x, sl, (7, 9), rng)
  x, sl, _ = T.random_mirror(x, sl, rng)
  np.testing.assert_array_equal(out["image"], x)
  np.testing.assert_array_equal(out["label"], sl)
  assert out["image"].dtype == np.float32 and out["image"].shape == (7, 9, 3)


def test_train_transform_resize_mode_bgr():
  cfg = config_lib.dataset_config(name="gta5", resize_size=(5, 10))
  tr = pipeline.TrainTransform(cfg)
  img, lab = _img(9, 16), _lab(9, 16)
  raw = {"image": image_io.encode_png(img), "label": image_io.encode_png(lab),
         "file_name": "x", "index": 0}
  out = tr(raw, np.random.default_rng(0))
  ri, rl = T.resize_example_pil(img, lab, (5, 10))
  np.testing.assert_allclose(out["image"], T.subtract_mean(ri, MEAN_BGR, "BGR"))
  np.testing.assert_array_equal(out["label"], rl)


def test_eval_transform_pad_and_resize():
  img, lab = _img(6, 8), _lab(6, 8)
  raw = {"image": image_io.encode_png(img), "label": image_io.encode_png(lab),
         "file_name": "a", "index": 0}
  pad = pipeline.EvalTransform(config_lib.dataset_config(
      name="voc_aug", eval_mode="pad", eval_pad_size=(10, 9)))(raw)
  assert pad["image"].shape == (10, 9, 3) and tuple(pad["orig_hw"]) == (6, 8)
  assert (pad["label"][6:] == 255).all() and (pad["image"][6:] == 0).all()
  res = pipeline.EvalTransform(config_lib.dataset_config(
      name="cityscapes", eval_mode="resize", eval_resize_size=(3, 4)))(raw)
  assert res["image"].shape == (3, 4, 3) and res["label"].shape == (6, 8)
  np.testing.assert_array_equal(res["label"], lab)
  np.testing.assert_allclose(
      res["image"], T.subtract_mean(T.resize_pil(img, (3, 4), "bicubic"), MEAN_BGR, "BGR"))
