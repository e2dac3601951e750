"""advseg_jax.metrics against direct numpy re-implementations of the originals' evaluation.

References written out from the originals' code (docs/FIDELITY.md §6.6, §7.4):
* AdvSemiSeg `utils/metric.py`: `ConfusionMatrix.generateM` counts (gt, pred) pairs with
  gt < nclass in Python loops; `jaccard()` averages the IoU of the classes whose M[i, i] != 0.
* AdaptSegNet `compute_iou.py`: `fast_hist` via bincount over 0 <= gt < n; `per_class_iu` =
  diag / (sum(1) + sum(0) - diag); `np.nanmean`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax import metrics


# ----------------------------------------------------------------------------- references
class RefConfusionMatrix:
  """evaluate_voc.py's ConfusionMatrix, element by element."""

  def __init__(self, nclass):
    self.nclass = nclass
    self.M = np.zeros((nclass, nclass))

  def add(self, gt, pred):
    for g, p in zip(gt, pred):
      if g < self.nclass:
        self.M[g, p] += 1.0

  def jaccard(self):
    per_class = []
    for i in range(self.nclass):
      if not self.M[i, i] == 0:
        per_class.append(self.M[i, i] / (np.sum(self.M[i, :]) + np.sum(self.M[:, i])
                                         - self.M[i, i]))
    return np.sum(per_class) / len(per_class), per_class


def ref_fast_hist(a, b, n):
  k = (a >= 0) & (a < n)
  return np.bincount(n * a[k].astype(int) + b[k], minlength=n ** 2).reshape(n, n)


def ref_per_class_iu(hist):
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.diag(hist) / (hist.sum(1) + hist.sum(0) - np.diag(hist))


def _images(seed, k=6, n=3, hw=(23, 31)):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    gt = rng.integers(0, k, size=hw)
    pred = rng.integers(0, k, size=hw)
    # Correlate predictions with ground truth, add ignore pixels, drop one class entirely
    # from the ground truth and make another present but never predicted right.
    keep = rng.random(hw) < 0.6
    pred = np.where(keep, gt, pred)
    gt[rng.random(hw) < 0.1] = 255
    gt[gt == 4] = 0          # class 4: never in gt (predicted sometimes -> IoU 0, not NaN)
    pred[pred == 5] = 1      # class 5: in gt, never predicted -> TP = 0
    out.append((gt, pred))
  return out


def test_confusion_matrix_matches_both_originals():
  k = 6
  ref = RefConfusionMatrix(k)
  hist = np.zeros((k, k), np.int64)
  ours = np.zeros((k, k), np.int64)
  for gt, pred in _images(0, k):
    ref.add(gt.reshape(-1), pred.reshape(-1))
    hist += ref_fast_hist(gt.reshape(-1), pred.reshape(-1), k)
    ours += metrics.confusion_matrix(gt, pred, k)
  np.testing.assert_array_equal(ours, ref.M.astype(np.int64))
  np.testing.assert_array_equal(ours, hist)


def test_mean_modes_match_the_originals():
  k = 6
  ref = RefConfusionMatrix(k)
  hist = np.zeros((k, k), np.int64)
  for gt, pred in _images(1, k):
    ref.add(gt.reshape(-1), pred.reshape(-1))
    hist += ref_fast_hist(gt.reshape(-1), pred.reshape(-1), k)
  ref_voc, _ = ref.jaccard()
  ref_iu = ref_per_class_iu(hist)
  assert metrics.mean_iou(hist, "voc") == pytest.approx(ref_voc, abs=1e-12)
  assert metrics.mean_iou(hist, "nanmean") == pytest.approx(np.nanmean(ref_iu), abs=1e-12)
  np.testing.assert_allclose(metrics.per_class_iou(hist), ref_iu)
  # Class 5 (present, TP 0) is dropped by jaccard() but counts as 0 for nanmean / all.
  assert hist[5, 5] == 0 and hist[5].sum() > 0
  assert metrics.mean_iou(hist, "voc") > metrics.mean_iou(hist, "nanmean")
  s = metrics.summarize_confusion(hist, "voc")
  assert s["miou"] == s["miou_voc"] and s["mean_mode"] == "voc"
  s = metrics.summarize_confusion(hist, "cityscapes")
  assert s["miou"] == pytest.approx(np.nanmean(ref_iu), abs=1e-12)
  assert s["pixel_accuracy"] == pytest.approx(np.trace(hist) / hist.sum())


def test_absent_class_nan_vs_all():
  k = 4
  gt = np.array([0, 0, 1, 1, 2, 255])
  pred = np.array([0, 1, 1, 1, 2, 3])
  hist = metrics.confusion_matrix(gt, pred, k)
  iou = metrics.per_class_iou(hist)
  assert math.isnan(iou[3])                       # class 3: absent from gt and prediction
  np.testing.assert_allclose(iou[:3], [0.5, 2 / 3, 1.0])
  assert metrics.mean_iou(hist, "nanmean") == pytest.approx((0.5 + 2 / 3 + 1) / 3)
  assert metrics.mean_iou(hist, "all") == pytest.approx((0.5 + 2 / 3 + 1) / 4)
  assert metrics.mean_iou(hist, "voc") == pytest.approx((0.5 + 2 / 3 + 1) / 3)
  assert math.isnan(metrics.mean_iou(np.zeros((3, 3)), "voc"))
  with pytest.raises(ValueError, match="mean_mode"):
    metrics.mean_iou(hist, "median")


def test_jax_confusion_and_clu_metric():
  k = 6
  imgs = _images(2, k)
  expected = sum(metrics.confusion_matrix(g, p, k) for g, p in imgs)
  fn = jax.jit(lambda g, p, v: metrics.confusion_matrix_jax(g, p, k, v))
  total = None
  for g, p in imgs:
    m = metrics.ConfusionMetric(matrix=fn(jnp.asarray(g), jnp.asarray(p),
                                          jnp.ones(g.shape, bool)))
    total = m if total is None else total.merge(m)
  np.testing.assert_array_equal(np.asarray(total.matrix), expected)
  assert total.summary("voc")["miou"] == pytest.approx(metrics.mean_iou(expected, "voc"))
  # the valid mask removes pixels
  g, p = imgs[0]
  half = np.zeros(g.shape, bool)
  half[: g.shape[0] // 2] = True
  got = np.asarray(fn(jnp.asarray(g), jnp.asarray(p), jnp.asarray(half)))
  np.testing.assert_array_equal(got, metrics.confusion_matrix(np.where(half, g, 255), p, k))
  m2 = metrics.ConfusionMetric.from_model_output(labels=jnp.asarray(g), predictions=jnp.asarray(p),
                                                  num_classes=k)
  np.testing.assert_array_equal(np.asarray(m2.matrix), metrics.confusion_matrix(g, p, k))


def test_metric_accumulator_average_and_last_value():
  acc = metrics.MetricAccumulator()
  acc.update({"g/loss": 1.0, "lr/g": 0.1})
  acc.update({"g/loss": 3.0, "lr/g": 0.05, "d/loss": 0.5})
  out = acc.compute()
  assert out["g/loss"] == pytest.approx(2.0)
  assert out["lr/g"] == pytest.approx(0.05)
  assert out["d/loss"] == pytest.approx(0.5)
  assert acc.count == 2
  acc.reset()
  assert acc.compute() == {}
