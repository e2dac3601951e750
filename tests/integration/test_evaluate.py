"""`evaluate` end to end: converted random-weight .pth checkpoints (tiny DeepLab-v2) on the
voc_aug and cityscapes dummy datasets, checked against reference implementations of the
originals' metrics (evaluate_voc.py's ConfusionMatrix.jaccard, compute_iou.py's fast_hist /
per_class_iu) and against a PyTorch forward of the same weights; plus the error paths.
"""

import copy
import glob
import json
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import jax.numpy as jnp

from advseg_jax import data
from advseg_jax.cli import evaluate
from advseg_jax.config import defaults
from advseg_jax.data import prepare
from advseg_jax.inference import evaluate as ev
from advseg_jax.inference import evaluator
from advseg_jax.models.spec import ModelSpec
from advseg_jax.torch_port import convert
from advseg_jax.train import export
from advseg_jax.train.parallel import Parallel

from tests.torch_ref import models as tr

TINY = (1, 1, 1, 1)
WIDTH = 8
MEAN_BGR = np.array([104.00698793, 116.66876762, 122.67891434], np.float32)
DUMMY = os.path.join(os.path.dirname(prepare.__file__), "builders")
# AdaptSegNet's cityscapes_list/info.json label2train, written out independently of labels.py.
LABEL2TRAIN = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
               24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


# --------------------------------------------------------------------------- references
def voc_jaccard(gts, preds, nclass):
  """evaluate_voc.py: ConfusionMatrix.generateM (gt < nclass) + jaccard() (TP > 0 classes)."""
  m = np.zeros((nclass, nclass))
  for gt, pred in zip(gts, preds):
    for g, p in zip(gt.ravel(), pred.ravel()):
      if g < nclass:
        m[g, p] += 1.0
  per_class = []
  for i in range(nclass):
    if not m[i, i] == 0:
      per_class.append(m[i, i] / (np.sum(m[i, :]) + np.sum(m[:, i]) - m[i, i]))
  return np.sum(per_class) / len(per_class), m


def fast_hist(a, b, n):
  k = (a >= 0) & (a < n)
  return np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)


def per_class_iu(hist):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))


def compute_iou(gts, preds, n):
  """compute_iou.py: accumulated fast_hist, nanmean of per_class_iu."""
  hist = np.zeros((n, n))
  for gt, pred in zip(gts, preds):
    if gt.shape != pred.shape:
      continue
    hist += fast_hist(gt.flatten(), pred.flatten(), n)
  return np.nanmean(per_class_iu(hist)), hist


def label2train(raw):
  out = np.full(raw.shape, 255, np.uint8)
  for k, v in LABEL2TRAIN.items():
    out[raw == k] = v
  return out


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  d = str(tmp_path_factory.mktemp("tfds"))
  for name in ("voc_aug", "cityscapes"):
    prepare.prepare_dataset(name, data_dir=d, manual_dir=os.path.join(DUMMY, name, "dummy_data"))
  return d


def _save(model, path):
  torch.save(tr.state_dict_without_counters(model), path)
  return str(path)


@pytest.fixture(scope="module")
def voc_model(tmp_path_factory):
  model = tr.randomize_(tr.Res_Deeplab(21, layers=TINY, width=WIDTH), seed=5,
                     conv_gain=2.0).eval()
  return model, _save(model, tmp_path_factory.mktemp("voc") / "voc_tiny.pth")


@pytest.fixture(scope="module")
def city_model(tmp_path_factory):
  model = tr.randomize_(tr.DeeplabMulti(19, layers=TINY, width=WIDTH), seed=7,
                     conv_gain=2.0).eval()
  return model, _save(model, tmp_path_factory.mktemp("city") / "city_tiny.pth")


def _torch_arch_flags(arch):
  return ["--arch", arch, "--depths", "1,1,1,1", "--width", str(WIDTH), "--no_progress"]


def _voc_val():
  root = os.path.join(DUMMY, "voc_aug", "dummy_data")
  ids = open(os.path.join(root, "ImageSets/SegmentationAug/val.txt")).read().split()
  return root, ids


# --------------------------------------------------------------------------- VOC protocol
def test_voc_protocol_matches_evaluate_voc(voc_model, data_dir, tmp_path, capsys):
  model, pth = voc_model
  out_json, preds = tmp_path / "voc.json", tmp_path / "pred"
  rc = evaluate.main(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2"),
                      "--dataset", "voc_aug", "--data_dir", data_dir,
                      "--output_json", str(out_json), "--save_predictions", str(preds)])
  printed = capsys.readouterr().out
  assert rc == 0, printed
  res = json.loads(out_json.read_text())
  assert res["protocol"] == "voc" and res["pad_size"] == [505, 505] and res["num_images"] == 2

  root, ids = _voc_val()
  gts, ours, ref = [], [], []
  for i in ids:
    gt = np.array(Image.open(os.path.join(root, "SegmentationClassAug", f"{i}.png")))
    im = Image.open(preds / f"{i}.png")
    assert im.mode == "P" and im.size == (gt.shape[1], gt.shape[0])
    ours.append(np.array(im).astype(np.int64))
    gts.append(gt.astype(np.int64))
    # evaluate_voc.py's forward: RGB minus mean, pad bottom/right to 505, upsample the
    # stride-8 logits (align_corners=True) to 505, crop, argmax.
    rgb = np.asarray(Image.open(os.path.join(root, "JPEGImages", f"{i}.jpg")).convert("RGB"),
                     np.float32) - MEAN_BGR[::-1]
    h, w = rgb.shape[:2]
    x = np.zeros((505, 505, 3), np.float32)
    x[:h, :w] = rgb
    with torch.no_grad():
      logits = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
      up = F.interpolate(logits, size=(505, 505), mode="bilinear", align_corners=True)
    ref.append(up[0].numpy().transpose(1, 2, 0)[:h, :w].argmax(-1))

  # The metric: our JSON equals evaluate_voc's jaccard over our saved predictions.
  miou, m = voc_jaccard(gts, ours, 21)
  assert res["miou"] == pytest.approx(miou, abs=1e-9)
  np.testing.assert_array_equal(np.asarray(res["confusion"]), m.astype(np.int64))
  assert f"{100 * miou:.2f}" in printed
  # The forward: our predictions equal a PyTorch forward of the same .pth.
  agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(ours, ref)]))
  assert agree >= 0.999, agree
  ref_miou, _ = voc_jaccard(gts, ref, 21)
  assert res["miou"] == pytest.approx(ref_miou, abs=0.02)
  # Non-trivial fixture: several classes predicted.
  assert len(np.unique(np.concatenate([o.ravel() for o in ours]))) >= 3


def test_voc_batch_flip_and_scales(voc_model, data_dir, tmp_path):
  _, pth = voc_model
  outs = []
  for extra in ([], ["--batch_size", "2"], ["--batch_size", "2", "--flip", "--scales",
                                             "0.5,1"]):
    path = tmp_path / f"r{len(outs)}.json"
    rc = evaluate.main(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2"),
                        "--dataset", "voc_aug", "--data_dir", data_dir, "--pad_size", "64",
                        "--output_json", str(path), *extra])
    assert rc == 0
    outs.append(json.loads(path.read_text()))
  # batch > 1 pads examples into one batch; the result must not change.
  assert outs[0]["confusion"] == outs[1]["confusion"]
  assert outs[2]["flip"] is True and outs[2]["scales"] == [0.5, 1.0]
  assert sum(map(sum, outs[2]["confusion"])) == sum(map(sum, outs[0]["confusion"]))
  # corrected mean over all 21 classes is never above the TP>0 mean.
  assert outs[0]["miou_all_classes"] <= outs[0]["miou"] + 1e-12


# --------------------------------------------------------------------------- Cityscapes protocol
def test_cityscapes_protocol_matches_compute_iou(city_model, data_dir, tmp_path, capsys):
  model, pth = city_model
  out_json, preds = tmp_path / "city.json", tmp_path / "pred"
  rc = evaluate.main(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2_multi"),
                      "--dataset", "cityscapes", "--data_dir", data_dir,
                      "--output_json", str(out_json), "--save_predictions", str(preds)])
  printed = capsys.readouterr().out
  assert rc == 0, printed
  res = json.loads(out_json.read_text())
  assert res["protocol"] == "cityscapes" and res["input_size"] == [512, 1024]
  assert res["channel_order"] == "BGR"

  root = os.path.join(DUMMY, "cityscapes", "dummy_data")
  gts, ours, ref = [], [], []
  for city, stem in (("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")):
    raw = np.array(Image.open(os.path.join(root, "gtFine", "val", city,
                                           f"{stem}_gtFine_labelIds.png")))
    gts.append(label2train(raw).astype(np.int64))
    ours.append(np.array(Image.open(preds / city / f"{stem}_leftImg8bit.png")).astype(np.int64))
    # evaluate_cityscapes.py: PIL bicubic resize to 1024x512, RGB->BGR, minus mean; main
    # output upsampled (align_corners=True) to the label size; argmax.
    img = Image.open(os.path.join(root, "leftImg8bit", "val", city,
                                  f"{stem}_leftImg8bit.png")).convert("RGB")
    x = np.asarray(img.resize((1024, 512), Image.BICUBIC), np.float32)[:, :, ::-1] - MEAN_BGR
    with torch.no_grad():
      _, main = model(torch.from_numpy(x.transpose(2, 0, 1)[None].copy()))
      up = F.interpolate(main, size=raw.shape, mode="bilinear", align_corners=True)
    ref.append(up[0].numpy().argmax(0))

  miou, hist = compute_iou(gts, ours, 19)
  assert res["miou"] == pytest.approx(miou, abs=1e-9)
  np.testing.assert_array_equal(np.asarray(res["confusion"]), hist.astype(np.int64))
  iu = per_class_iu(hist)
  for name, v in zip(res["per_class_iou"], iu):
    got = res["per_class_iou"][name]
    assert (got is None and np.isnan(v)) or got == pytest.approx(v, abs=1e-12)
  assert f"{100 * miou:.2f}" in printed
  agree = np.mean(np.concatenate([(a == b).ravel() for a, b in zip(ours, ref)]))
  assert agree >= 0.999, agree


def _resized_bgr(path):
  img = Image.open(path).convert("RGB").resize((1024, 512), Image.BICUBIC)
  return np.asarray(img, np.float32)[:, :, ::-1] - MEAN_BGR


def test_bn_stats_recomputed_on_target_images_match_torch(city_model, data_dir, tmp_path,
                                                          capsys):
  """--bn_stats_from cityscapes:train, all 3 dummy train images in one batch: the running
  statistics torch keeps after one train-mode forward of that batch (momentum None, from
  reset), then evaluation as in test_cityscapes_protocol_matches_compute_iou."""
  model, pth = city_model
  preds = tmp_path / "pred"
  printed, res = _evaluate_json(
      ["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2_multi"), "--dataset",
       "cityscapes", "--data_dir", data_dir, "--save_predictions", str(preds),
       "--bn_stats_from", "cityscapes:train", "--bn_stats_images", "3",
       "--bn_stats_batch_size", "3"], tmp_path / "bn.json", capsys)
  assert "BN statistics: recomputed on cityscapes train (3 images)" in printed
  assert res["bn_stats"].startswith("BN statistics: recomputed")

  root = os.path.join(DUMMY, "cityscapes", "dummy_data")
  train = sorted(glob.glob(os.path.join(root, "leftImg8bit", "train", "*", "*.png")))
  assert len(train) == 3
  adapted = copy.deepcopy(model)
  for m in adapted.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.reset_running_stats()
      m.momentum = None
  x = np.stack([_resized_bgr(p) for p in train]).transpose(0, 3, 1, 2)
  with torch.no_grad():
    adapted.train()(torch.from_numpy(x.copy()))
  adapted.eval()
  agree, changed = [], []
  for city, stem in (("frankfurt", "frankfurt_000000_000294"), ("lindau", "lindau_000000_000019")):
    ours = np.array(Image.open(preds / city / f"{stem}_leftImg8bit.png"))
    x = _resized_bgr(os.path.join(root, "leftImg8bit", "val", city, f"{stem}_leftImg8bit.png"))
    with torch.no_grad():
      t = torch.from_numpy(x.transpose(2, 0, 1)[None].copy())
      ref = F.interpolate(adapted(t)[1], size=ours.shape, mode="bilinear", align_corners=True)
      stored = F.interpolate(model(t)[1], size=ours.shape, mode="bilinear", align_corners=True)
    agree.append((ref[0].numpy().argmax(0) == ours).ravel())
    changed.append((stored[0].numpy().argmax(0) != ours).ravel())
  assert np.mean(np.concatenate(agree)) >= 0.999
  assert np.mean(np.concatenate(changed)) > 0.01  # the recomputation changed predictions


def test_bn_stats_errors(city_model, data_dir, capsys):
  _, pth = city_model
  base = ["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2_multi"), "--dataset",
          "cityscapes", "--data_dir", data_dir]
  assert evaluate.main([*base, "--bn_stats_from", "nope:train"]) == 2
  assert "--bn_stats_from" in _one_error_line(capsys)
  assert evaluate.main([*base, "--bn_stats_from", "cityscapes:train",
                        "--bn_stats_images", "2", "--bn_stats_batch_size", "4"]) == 2
  assert "no images to recompute BN statistics on" in _one_error_line(capsys)


# --------------------------------------------------------------------------- errors and help
def _one_error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  assert "Traceback" not in err[0]
  return err[0]


# --------------------------------------------------------------------------- which model
@pytest.fixture(scope="module")
def voc_workdir(voc_model, tmp_path_factory):
  """A training workdir: final_model/ (step 20) holds voc_model's weights, best_model/
  (step 10, mIoU 0.5 during training) other random weights."""
  _, pth = voc_model
  spec = ModelSpec.for_original("deeplabv2", 21, depths=TINY, width=WIDTH)
  wd = tmp_path_factory.mktemp("workdir")
  other = tr.randomize_(tr.Res_Deeplab(21, layers=TINY, width=WIDTH), seed=11,
                        conv_gain=2.0).eval()
  doc = spec.to_json()
  export.export_model(str(wd / "final_model"), convert.load_torch_checkpoint(pth, spec),
                      dict(doc, step=20))
  export.export_model(str(wd / "best_model"),
                      convert.load_torch_checkpoint(_save(other, wd / "other.pth"), spec),
                      dict(doc, step=10, miou=0.5))
  return str(wd)


def _evaluate_json(args, out, capsys):
  rc = evaluate.main([*args, "--output_json", str(out)])
  printed, err = capsys.readouterr()
  assert rc == 0, printed + err
  return printed, json.loads(out.read_text())


def test_workdir_scores_its_final_model_unless_best(voc_model, voc_workdir, data_dir,
                                                    tmp_path, capsys):
  common = ["--dataset", "voc_aug", "--data_dir", data_dir, "--no_progress"]
  final_out, final = _evaluate_json([voc_workdir, *common], tmp_path / "final.json", capsys)
  assert "scored: the final model (step 20)\n" in final_out and "optimistic" not in final_out
  best_out, best = _evaluate_json([voc_workdir, "--best", *common], tmp_path / "best.json",
                                  capsys)
  assert "scored: the best model (step 10) -- the best model, selected by its mIoU on the " \
         "evaluation set during training, so this score is optimistic" in best_out
  assert best["scored"].startswith("scored: the best model")
  # The final model is voc_model's .pth; the best one is not.
  _, pth = voc_model
  _, direct = _evaluate_json(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2"),
                              *common], tmp_path / "pth.json", capsys)
  assert final["confusion"] == direct["confusion"] != best["confusion"]
  # best_model/ named directly is recognised as the best model too.
  named_out, _ = _evaluate_json([os.path.join(voc_workdir, "best_model"), *common],
                                tmp_path / "named.json", capsys)
  assert "selected by its mIoU on the evaluation set" in named_out


def test_best_needs_a_workdir_with_a_best_model(voc_model, voc_workdir, data_dir, tmp_path,
                                                capsys):
  _, pth = voc_model
  args = ["--dataset", "voc_aug", "--data_dir", data_dir, "--best"]
  assert evaluate.main(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2"), *args]) == 2
  assert "--best" in _one_error_line(capsys)
  assert evaluate.main([os.path.join(voc_workdir, "final_model"), *args]) == 2
  assert "chosen from a training workdir" in _one_error_line(capsys)
  (tmp_path / "checkpoints").mkdir()
  assert evaluate.main([str(tmp_path), *args]) == 2
  assert "no best_model/" in _one_error_line(capsys)


def test_missing_checkpoint(capsys, tmp_path):
  assert evaluate.main([str(tmp_path / "nope"), "--dataset", "voc_aug"]) == 2
  assert "no such file or directory" in _one_error_line(capsys)


def test_wrong_architecture(city_model, data_dir, capsys):
  _, pth = city_model  # a DeeplabMulti .pth loaded as Res_Deeplab
  rc = evaluate.main(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2"),
                      "--dataset", "cityscapes", "--data_dir", data_dir])
  assert rc == 2
  line = _one_error_line(capsys)
  assert "mismatch" in line and "--arch deeplabv2" in line


def test_wrong_class_count(voc_model, data_dir, capsys):
  _, pth = voc_model
  rc = evaluate.main(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2"),
                      "--num_classes", "21", "--dataset", "cityscapes", "--data_dir", data_dir])
  assert rc == 2
  line = _one_error_line(capsys)
  assert "21 classes" in line and "19" in line


def test_dataset_not_prepared(voc_model, tmp_path, capsys):
  _, pth = voc_model
  rc = evaluate.main(["--torch_checkpoint", pth, *_torch_arch_flags("deeplabv2"),
                      "--dataset", "voc_aug", "--data_dir", str(tmp_path / "empty")])
  assert rc == 2
  assert "prepare" in _one_error_line(capsys)


class _Background:
  """A stand-in generator that predicts class 0 (background) at every pixel."""

  def apply(self, variables, x, train=False):
    del variables, train
    return jnp.zeros(x.shape[:3] + (21,), jnp.float32).at[..., 0].set(1.0)


@pytest.mark.parametrize("on", [False, True])
def test_ignore_as_background_scores_255_as_background(data_dir, on):
  """ICLR-2018's IgnoreLabelClass on the validation labels (train.py:463, :470): predicting
  background on a 255 pixel is correct with `ignore_as_background`, unscored without it;
  the padding to eval_pad_size stays unscored either way."""
  root, ids = _voc_val()
  raw = [np.asarray(Image.open(os.path.join(root, "SegmentationClassAug", f"{i}.png")))
         for i in ids]
  n255 = sum(int((r == 255).sum()) for r in raw)
  n_bg = sum(int((r == 0).sum()) for r in raw)
  scored = sum(int((r != 255).sum()) for r in raw)
  assert n255 > 0 and n_bg > 0
  c = defaults.base_config()
  c.eval_data.data_dir = data_dir
  c.eval_data.eval_pad_size = (45, 45)
  c.eval_data.ignore_as_background = on
  par = Parallel("jit")
  # the training loop's evaluator, on config.eval_data
  train_hist, n = evaluator.Evaluator(c, _Background(), par, data, ())({})
  # the evaluate command's path: the settings recorded in model.json, protocol 'auto'
  spec = export.generator_spec_from_config(c)
  choice = ev.choose_dataset(None, spec)
  protocol = ev.resolve_protocol("auto", spec, choice)
  assert protocol.ignore_as_background is on
  cfg = ev.eval_stream(spec, choice, protocol, split="validation", data_dir=data_dir)
  step = evaluator.make_confusion_step(_Background(), 21, par)
  cli_hist, _ = evaluator.accumulate_confusion(
      step, par, {}, data.make_eval_iterator(cfg, split="validation", batch_size=2),
      num_classes=21)
  for hist in (train_hist, cli_hist):
    assert n == len(ids) and (hist[:, 1:] == 0).all()  # every prediction is background
    assert hist[0, 0] == n_bg + (n255 if on else 0)
    assert hist.sum() == scored + (n255 if on else 0)


def test_help_explains_every_flag(capsys):
  assert evaluate.main(["--help"]) == 0
  text = capsys.readouterr().out
  fv = evaluate.define_flags()
  for name in fv:
    flag = fv[name]
    assert f"--{flag.name}" in text and flag.help, name
    if flag.short_name:
      assert f"-{flag.short_name}, --{flag.name}" in text
  assert "CHECKPOINT" in text
  assert evaluate.main(["--batch_size", "0"]) == 2
  assert "--batch_size" in _one_error_line(capsys)
