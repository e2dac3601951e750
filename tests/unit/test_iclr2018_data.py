"""The ICLR-2018 reproduction's data options (docs/FIDELITY.md §8), each off by default:
ImageNet std division (`std_bgr`), carried into model specs and inference; the eval padding
of the raw image (`eval_pad_fill='black'`); `RandomSizedCrop` (`crop_mode='random_sized'`);
255 read as background (`ignore_as_background`; its scoring is in
tests/integration/test_evaluate.py)."""

import math

import ml_collections
import numpy as np
import pytest
from PIL import Image

from advseg_jax import visualize
from advseg_jax.config import defaults
from advseg_jax.config import validation
from advseg_jax.data import config as config_lib
from advseg_jax.data import image_io
from advseg_jax.data import pipeline
from advseg_jax.data import transforms as T
from advseg_jax.inference import evaluate
from advseg_jax.inference import predict
from advseg_jax.models.spec import ModelSpec, SpecError
from advseg_jax.train import export

from tests import seeds

# torchvision Normalize's ImageNet statistics (R, G, B, 0-1 scale), written out here.
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
MEAN_BGR = tuple(255 * m for m in IMAGENET_MEAN_RGB[::-1])
STD_BGR = tuple(255 * s for s in IMAGENET_STD_RGB[::-1])


def _img(h, w, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, 3)).astype(np.uint8)


def _raw(img, lab=None, name="x"):
  return {"image": image_io.encode_png(img),
          "label": None if lab is None else image_io.encode_png(lab),
          "file_name": name, "index": 0}


# --------------------------------------------------------------------------- std_bgr
@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_std_division_is_torchvision_normalize(order):
  img = _img(5, 6)
  out = T.subtract_mean(img, MEAN_BGR, order, STD_BGR)
  rgb = img.astype(np.float64) / 255.0  # ToTensor
  want = (rgb - np.array(IMAGENET_MEAN_RGB)) / np.array(IMAGENET_STD_RGB)  # Normalize
  want = want if order == "RGB" else want[..., ::-1]
  assert out.dtype == np.float32
  np.testing.assert_allclose(out, want, rtol=0, atol=1e-5)
  # without a std the mean subtraction alone, as before
  np.testing.assert_array_equal(T.subtract_mean(img, MEAN_BGR, order, None),
                                T.subtract_mean(img, MEAN_BGR, order))
  back = visualize.to_display_rgb(out, MEAN_BGR, order, STD_BGR)
  np.testing.assert_array_equal(back, img)


def test_pipeline_divides_by_the_std_in_training_and_evaluation():
  img = _img(6, 8)
  kw = dict(name="voc_aug", channel_order="RGB", mean_bgr=MEAN_BGR, std_bgr=STD_BGR)
  train = pipeline.TrainTransform(config_lib.dataset_config(crop_size=None, **kw))
  out = train(_raw(img), np.random.default_rng(0))["image"]
  np.testing.assert_allclose(out, T.subtract_mean(img, MEAN_BGR, "RGB", STD_BGR))
  ev = pipeline.EvalTransform(config_lib.dataset_config(eval_mode="none", **kw))(_raw(img))
  np.testing.assert_allclose(ev["image"], out)
  assert np.abs(out).max() < 3  # the ImageNet-normalised scale, not 0-255


def test_model_spec_carries_the_std_and_old_specs_load():
  spec = ModelSpec("deeplabv2", 21, mean_bgr=MEAN_BGR, std_bgr=STD_BGR)
  doc = spec.to_json()
  assert doc["std_bgr"] == list(STD_BGR)
  assert ModelSpec.from_json(doc) == spec
  old = ModelSpec("deeplabv2", 21).to_json()
  assert "std_bgr" not in old  # unchanged model.json when no std is used
  assert ModelSpec.from_json(old).std_bgr is None
  assert ModelSpec.from_json(dict(old, std_bgr=None)).std_bgr is None
  for bad in ((58.0, 57.0), (58.0, 0.0, 57.0), "abc"):
    with pytest.raises(SpecError, match="std_bgr"):
      ModelSpec("deeplabv2", 21, std_bgr=bad)


def test_export_and_predict_normalise_as_training_did():
  c = defaults.base_config()
  c.data.mean_bgr, c.data.std_bgr = MEAN_BGR, STD_BGR
  spec = export.generator_spec_from_config(c)
  assert spec["std_bgr"] == list(STD_BGR)
  img = _img(4, 5)
  np.testing.assert_array_equal(predict.preprocess(img, spec, "pad", None),
                                T.subtract_mean(img, MEAN_BGR, "RGB", STD_BGR))
  # a config saved before the field existed: no std, the mean alone
  old = ml_collections.ConfigDict(defaults.base_config().to_dict())
  del old.data["std_bgr"]
  old_spec = export.generator_spec_from_config(old)
  assert "std_bgr" not in old_spec
  np.testing.assert_array_equal(predict.preprocess(img, old_spec, "pad", None),
                                T.subtract_mean(img, tuple(old.data.mean_bgr), "RGB"))


@pytest.mark.parametrize("value", [(58.0, 57.0), (58.0, -1.0, 57.0), (0, 1, 1), (1, "a", 1)])
def test_validation_rejects_a_bad_std(value):
  c = defaults.base_config()
  c.eval_data.std_bgr = value
  with pytest.raises(validation.ConfigError, match=r"^config\.eval_data\.std_bgr = .*expected "
                                                   r"None or three positive numbers"):
    validation.validate(c)


# --------------------------------------------------------------------------- eval_pad_fill
@pytest.mark.parametrize("std", [None, STD_BGR])
def test_eval_pad_fill_black_pads_the_raw_image_before_normalising(std):
  img, lab = _img(6, 8), np.full((6, 8), 3, np.uint8)
  kw = dict(name="voc_aug", channel_order="RGB", mean_bgr=MEAN_BGR, std_bgr=std,
            eval_mode="pad", eval_pad_size=(9, 11))
  black = pipeline.EvalTransform(config_lib.dataset_config(eval_pad_fill="black", **kw))
  mean = pipeline.EvalTransform(config_lib.dataset_config(**kw))  # the default
  b, m = black(_raw(img, lab)), mean(_raw(img, lab))
  assert b["image"].shape == m["image"].shape == (9, 11, 3)
  # the image itself and the label (255 padding) are the same either way
  np.testing.assert_array_equal(b["image"][:6, :8], m["image"][:6, :8])
  np.testing.assert_array_equal(b["label"], m["label"])
  assert (m["label"][6:] == 255).all() and (m["label"][:, 8:] == 255).all()
  # the padding: 0 after normalisation ('mean') or a normalised black pixel ('black')
  zero = T.subtract_mean(np.zeros((1, 1, 3), np.uint8), MEAN_BGR, "RGB", std)[0, 0]
  assert (m["image"][6:] == 0).all() and (m["image"][:, 8:] == 0).all()
  np.testing.assert_array_equal(b["image"][6:], np.broadcast_to(zero, (3, 11, 3)))
  np.testing.assert_array_equal(b["image"][:, 8:], np.broadcast_to(zero, (9, 3, 3)))
  assert (zero < 0).all()


def test_evaluate_uses_the_recorded_pad_fill():
  c = defaults.base_config()
  c.eval_data.eval_pad_fill = "black"
  spec = export.generator_spec_from_config(c)
  choice = evaluate.choose_dataset("voc_aug", spec)
  auto = evaluate.resolve_protocol("auto", spec, choice)
  assert (auto.eval_mode, auto.pad_fill) == ("pad", "black")
  assert evaluate.resolve_protocol("voc", spec, choice).pad_fill == "mean"  # the VOC protocol
  plain = export.generator_spec_from_config(defaults.base_config())
  assert evaluate.resolve_protocol("auto", plain, choice).pad_fill == "mean"


def test_validation_rejects_a_bad_pad_fill():
  c = defaults.base_config()
  c.eval_data.eval_pad_fill = "zero"
  with pytest.raises(validation.ConfigError, match=r"^config\.eval_data\.eval_pad_fill = 'zero'"):
    validation.validate(c)
  with pytest.raises(ValueError, match="eval_pad_fill"):
    pipeline.EvalTransform(config_lib.dataset_config(eval_pad_fill="zero"))


# --------------------------------------------------------------------------- random_sized_crop
def _coords(h, w):
  """uint8 image whose R is the column and G the row of each pixel; label = the row."""
  img = np.zeros((h, w, 3), np.uint8)
  img[..., 0] = np.arange(w)[None, :]
  img[..., 1] = np.arange(h)[:, None]
  return img, np.repeat(np.arange(h, dtype=np.uint8)[:, None], w, axis=1)


def _reference_box(H, W, rng):
  """utils/transforms.py RandomSizedCrop's box loop, restated with a numpy Generator."""
  for _ in range(10):
    target = H * W * rng.uniform(0.08, 1.0)
    ratio = rng.uniform(3.0 / 4.0, 4.0 / 3.0)
    w, h = (int(math.floor(math.sqrt(target * ratio) + 0.5)),
            int(math.floor(math.sqrt(target / ratio) + 0.5)))
    if rng.random() < 0.5:
      h, w = w, h
    if w <= W and h <= H:
      x1 = int(rng.integers(0, W - w + 1))
      y1 = int(rng.integers(0, H - h + 1))
      return y1, x1, h, w
  return None


@pytest.mark.parametrize("hw", [(50, 70), (12, 90)])
def test_random_sized_crop_is_the_box_resized(hw):
  H, W = hw
  img, lab = _coords(H, W)
  seed = seeds.draw()
  for k in range(25):
    img_out, lab_out, box = T.random_sized_crop(img, lab, (16, 20), np.random.default_rng(
        [seed, k]))
    assert img_out.shape == (16, 20, 3) and img_out.dtype == np.uint8
    assert lab_out.shape == (16, 20) and lab_out.dtype == np.uint8
    assert box == _reference_box(H, W, np.random.default_rng([seed, k]))
    if box is None:
      continue
    y1, x1, h, w = box
    assert 0.08 * H * W * 0.5 <= h * w <= H * W
    # the pixels come from the box: coordinates (R = column, G = row, label = row) inside it
    assert x1 <= img_out[..., 0].min() and img_out[..., 0].max() <= x1 + w - 1
    assert y1 <= img_out[..., 1].min() and img_out[..., 1].max() <= y1 + h - 1
    assert set(np.unique(lab_out)) <= set(range(y1, y1 + h))
    ref = Image.fromarray(img).crop((x1, y1, x1 + w, y1 + h))
    np.testing.assert_array_equal(img_out, np.asarray(ref.resize((20, 16), Image.BILINEAR)))
    ref_lab = Image.fromarray(lab).crop((x1, y1, x1 + w, y1 + h))
    np.testing.assert_array_equal(lab_out, np.asarray(ref_lab.resize((20, 16), Image.NEAREST)))


def test_random_sized_crop_labels_keep_their_values_and_draws_are_seeded():
  img = _img(40, 60)
  lab = np.random.default_rng(3).choice([0, 5, 12, 255], (40, 60)).astype(np.uint8)
  outs = [T.random_sized_crop(img, lab, (21, 21), np.random.default_rng(s)) for s in (7, 7, 8)]
  for _, lab_out, _ in outs:
    assert set(np.unique(lab_out)) <= {0, 5, 12, 255}
  np.testing.assert_array_equal(outs[0][0], outs[1][0])
  assert outs[0][2] == outs[1][2] and outs[0][2] != outs[2][2]


def test_random_sized_crop_falls_back_to_scale_and_center_crop():
  # 1 x 40: every box has a side of at least round(sqrt(0.06 * 40)) = 2 > 1, so all 10 miss
  img, _ = _coords(1, 40)
  lab = np.arange(40, dtype=np.uint8)[None, :]
  img_out, lab_out, box = T.random_sized_crop(img, lab, (8, 8), np.random.default_rng(0))
  assert box is None
  # Scale(8): 1 x 40 -> 8 x 320 (shorter side 8, longer int(8 * 40 / 1)); CenterCrop(8):
  # columns from round((320 - 8) / 2) = 156
  big = np.asarray(Image.fromarray(img).resize((320, 8), Image.BILINEAR))
  np.testing.assert_array_equal(img_out, big[:, 156:164])
  big_lab = np.asarray(Image.fromarray(lab).resize((320, 8), Image.NEAREST))
  np.testing.assert_array_equal(lab_out, big_lab[:, 156:164])


def test_scale_and_center_crop_follow_torchvision():
  img, lab = _coords(30, 12)  # tall: width to 8, height int(8 * 30 / 12) = 20
  si, sl = T.scale_shorter_side(img, lab, 8)
  assert si.shape == (20, 8, 3) and sl.shape == (20, 8)
  same, _ = T.scale_shorter_side(img[:8], None, 8)  # shorter side already 8: unchanged
  assert same is img[:8] or np.array_equal(same, img[:8])
  # (9 - 4) / 2 = 2.5 rounds to 3 (Python 2's round, which the original ran on)
  ci, cl = T.center_crop(img[:9, :6], lab[:9, :6], (4, 4))
  assert (int(ci[0, 0, 1]), int(ci[0, 0, 0]), int(cl[0, 0])) == (3, 1, 3)


def test_train_transform_random_sized_then_normalise_then_mirror():
  img = _img(30, 40)
  lab = np.random.default_rng(2).choice([0, 4, 255], (30, 40)).astype(np.uint8)
  cfg = config_lib.dataset_config(name="voc_aug", crop_size=(11, 11), crop_mode="random_sized",
                                  channel_order="RGB", mean_bgr=MEAN_BGR, std_bgr=STD_BGR,
                                  random_mirror=True)
  out = pipeline.TrainTransform(cfg)(_raw(img, lab), np.random.default_rng(5))
  rng = np.random.default_rng(5)
  ci, cl, _ = T.random_sized_crop(img, lab, (11, 11), rng)
  x = T.subtract_mean(ci, MEAN_BGR, "RGB", STD_BGR)
  x, cl, _ = T.random_mirror(x, cl, rng)
  np.testing.assert_array_equal(out["image"], x)
  np.testing.assert_array_equal(out["label"], cl)


@pytest.mark.parametrize("changes", [dict(crop_mode="random_sized", crop_size=None),
                                     dict(crop_mode="random_sized", gt_loader="advsemi"),
                                     dict(crop_mode="resized")])
def test_validation_rejects_a_bad_crop_mode(changes):
  c = defaults.base_config()
  for k, v in changes.items():
    c.data[k] = v
  with pytest.raises(validation.ConfigError, match=r"^config\.data\.crop_mode = "):
    validation.validate(c)
  with pytest.raises(ValueError, match="crop_mode"):
    pipeline.TrainTransform(config_lib.dataset_config(**{"name": "voc_aug",
                                                         "crop_size": (5, 5), **changes}))


# --------------------------------------------------------------------------- ignore_as_background
@pytest.mark.parametrize("crop_mode", ["random", "random_sized"])
def test_training_labels_read_255_as_background_and_padding_stays_ignored(crop_mode):
  img = _img(6, 7)
  lab = np.random.default_rng(4).choice([0, 9, 255], (6, 7)).astype(np.uint8)
  kw = dict(name="voc_aug", crop_size=(8, 9), crop_mode=crop_mode)
  off = pipeline.TrainTransform(config_lib.dataset_config(**kw))(_raw(img, lab),
                                                                   np.random.default_rng(1))
  on = pipeline.TrainTransform(config_lib.dataset_config(ignore_as_background=True, **kw))(
      _raw(img, lab), np.random.default_rng(1))
  np.testing.assert_array_equal(on["image"], off["image"])  # the same draws
  if crop_mode == "random":  # 6x7 padded to 8x9: the padding is still 255 (ignored)
    assert (on["label"][6:] == 255).all() and (on["label"][:, 7:] == 255).all()
    inside_on, inside_off = on["label"][:6, :7], off["label"][:6, :7]
  else:
    inside_on, inside_off = on["label"], off["label"]
  assert 255 in inside_off and 255 not in inside_on
  np.testing.assert_array_equal(inside_on, np.where(inside_off == 255, 0, inside_off))

