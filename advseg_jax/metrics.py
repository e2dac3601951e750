"""Segmentation metrics (confusion-matrix IoU) and per-term training metrics (clu).

Confusion matrices are `int64 [K, K]`, rows = ground truth, columns = prediction, counting
only pixels with `0 <= gt < K` (255 = ignore and any padding are skipped). Both originals
build exactly this matrix: AdvSemiSeg `utils/metric.py:ConfusionMatrix.generateM` (pairs
with `gt < 21`, docs/FIDELITY.md §6.6) and AdaptSegNet `compute_iou.py:fast_hist`
(`k = (a >= 0) & (a < n)`, `bincount(n * a[k] + b[k])`, docs/FIDELITY.md §7.4).

They differ in how they average the per-class IoU `TP / (TP + FP + FN)`:

  mean_mode 'voc'      `evaluate_voc.py` `jaccard()`: mean over the classes with TP > 0
                       (a class that is present but never predicted right is dropped, not 0).
  mean_mode 'nanmean'  `compute_iou.py`: `np.nanmean` of the per-class IoU (only classes
                       absent from both ground truth and prediction, 0/0, are skipped).
  mean_mode 'all'      corrected: sum of the per-class IoU over all K classes / K, a class
                       with 0/0 counting as 0. Equals 'nanmean' whenever every class occurs.

`summarize_confusion(confusion, protocol)` reports all three; `protocol` 'voc' picks 'voc' as
the headline `miou`, 'cityscapes' picks 'nanmean'.

Training metrics: `MetricAccumulator` keeps one `clu.metrics.Average` per term the step
returns (and `LastValue` for learning rates) between two log points; `ConfusionMetric` is a
`clu.metrics.Metric` over confusion matrices for code that prefers clu's interface.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from clu import metrics as clu_metrics

MEAN_MODES = ("voc", "nanmean", "all")
PROTOCOL_MEAN_MODE = {"voc": "voc", "cityscapes": "nanmean", "shapes": "voc"}
DEFINITIONS = {
    "voc": "mean IoU over the classes with TP > 0 (AdvSemiSeg evaluate_voc.py jaccard)",
    "nanmean": "nanmean of the per-class IoU; classes absent from ground truth and prediction "
               "skipped (AdaptSegNet compute_iou.py)",
    "all": "mean IoU over all classes, 0/0 counted as 0 (corrected)",
}


# ----------------------------------------------------------------------------- confusion
def confusion_matrix(gt: Any, pred: Any, num_classes: int) -> np.ndarray:
  """`int64 [K, K]` counts of (gt, pred) pairs over pixels with `0 <= gt < K` (numpy).

  `pred` values outside `[0, K)` are counted in no column (argmax never produces them).
  """
  k = int(num_classes)
  gt = np.asarray(gt).reshape(-1).astype(np.int64)
  pred = np.asarray(pred).reshape(-1).astype(np.int64)
  if gt.shape != pred.shape:
    raise ValueError(f"gt has {gt.size} pixels, pred {pred.size}")
  keep = (gt >= 0) & (gt < k) & (pred >= 0) & (pred < k)
  return np.bincount(k * gt[keep] + pred[keep], minlength=k * k).reshape(k, k)


def confusion_matrix_jax(gt: jax.Array, pred: jax.Array, num_classes: int,
                         valid: Optional[jax.Array] = None) -> jax.Array:
  """The same as `confusion_matrix` inside jit: `int32 [K, K]`; `valid` masks pixels."""
  k = int(num_classes)
  gt = gt.reshape(-1).astype(jnp.int32)
  pred = pred.reshape(-1).astype(jnp.int32)
  keep = (gt >= 0) & (gt < k) & (pred >= 0) & (pred < k)
  if valid is not None:
    keep = keep & valid.reshape(-1).astype(bool)
  idx = jnp.where(keep, k * gt + pred, 0)
  counts = jnp.bincount(idx, weights=keep.astype(jnp.int32), length=k * k)
  return counts.astype(jnp.int32).reshape(k, k)


# ----------------------------------------------------------------------------- IoU
def per_class_iou(confusion: Any) -> np.ndarray:
  """`TP / (TP + FP + FN)` per class, float64; NaN where the denominator is 0."""
  m = np.asarray(confusion, np.float64)
  tp = np.diag(m)
  denom = m.sum(axis=1) + m.sum(axis=0) - tp
  with np.errstate(divide="ignore", invalid="ignore"):
    return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def mean_iou(confusion: Any, mean_mode: str = "voc") -> float:
  """Mean IoU in one of `MEAN_MODES` (module docstring); NaN if no class qualifies."""
  if mean_mode not in MEAN_MODES:
    raise ValueError(f"mean_mode must be one of {MEAN_MODES}, got {mean_mode!r}")
  m = np.asarray(confusion, np.float64)
  iou = per_class_iou(m)
  if mean_mode == "voc":
    keep = np.diag(m) != 0
    return float(iou[keep].mean()) if keep.any() else float("nan")
  if mean_mode == "nanmean":
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")
  return float(np.nan_to_num(iou, nan=0.0).sum() / max(len(iou), 1))


def pixel_accuracy(confusion: Any) -> float:
  m = np.asarray(confusion, np.float64)
  total = m.sum()
  return float(np.trace(m) / total) if total > 0 else float("nan")


def resolve_mean_mode(protocol_or_mode: str) -> str:
  """'voc' | 'cityscapes' | 'shapes' (protocols) or a mean mode -> a mean mode."""
  if protocol_or_mode in MEAN_MODES:
    return protocol_or_mode
  if protocol_or_mode in PROTOCOL_MEAN_MODE:
    return PROTOCOL_MEAN_MODE[protocol_or_mode]
  raise ValueError(f"unknown protocol / mean mode {protocol_or_mode!r}; expected one of "
                   f"{tuple(PROTOCOL_MEAN_MODE) + MEAN_MODES}")


def summarize_confusion(confusion: Any, protocol: str = "voc") -> Dict[str, Any]:
  """Everything derived from a confusion matrix.

  Keys: `per_class_iou` (float64 [K], NaN = undefined), `miou` (the protocol's mean),
  `mean_mode`, `definition`, `miou_voc`, `miou_nanmean`, `miou_all`, `pixel_accuracy`,
  `num_pixels`, `present` (bool [K]: class occurs in the ground truth).
  """
  m = np.asarray(confusion, np.int64)
  mode = resolve_mean_mode(protocol)
  out = {
      "per_class_iou": per_class_iou(m),
      "mean_mode": mode,
      "definition": DEFINITIONS[mode],
      "miou_voc": mean_iou(m, "voc"),
      "miou_nanmean": mean_iou(m, "nanmean"),
      "miou_all": mean_iou(m, "all"),
      "pixel_accuracy": pixel_accuracy(m),
      "num_pixels": int(m.sum()),
      "present": m.sum(axis=1) > 0,
  }
  out["miou"] = out[f"miou_{mode}"]
  return out


# ----------------------------------------------------------------------------- clu metrics
@flax.struct.dataclass
class ConfusionMetric(clu_metrics.Metric):
  """clu metric over confusion matrices; `compute()` returns `summarize_confusion` ('all'
  means included) with the 'nanmean' headline unless `protocol` is passed to `summary`."""
  matrix: jax.Array

  @classmethod
  def from_model_output(cls, *, labels: jax.Array, predictions: jax.Array, num_classes: int,
                        mask: Optional[jax.Array] = None, **_) -> "ConfusionMetric":
    return cls(matrix=confusion_matrix_jax(labels, predictions, num_classes, mask))

  def merge(self, other: "ConfusionMetric") -> "ConfusionMetric":
    return type(self)(matrix=self.matrix + other.matrix)

  def reduce(self) -> "ConfusionMetric":
    m = self.matrix
    return type(self)(matrix=m.sum(axis=0) if m.ndim == 3 else m)

  def compute(self) -> Dict[str, Any]:
    return summarize_confusion(np.asarray(self.matrix), "nanmean")

  def summary(self, protocol: str) -> Dict[str, Any]:
    return summarize_confusion(np.asarray(self.matrix), protocol)


def _is_last_value(name: str) -> bool:
  return name.startswith("lr/")


class MetricAccumulator:
  """Per-term clu metrics between two log points.

  `update(metrics)` takes one step's metrics (host floats, or arrays); terms named `lr/*`
  keep the last value, every other term the average over the steps since `reset()`.
  """

  def __init__(self) -> None:
    self._metrics: Dict[str, clu_metrics.Metric] = {}
    self.count = 0

  def update(self, metrics: Mapping[str, Any]) -> None:
    for name, value in metrics.items():
      v = jnp.asarray(value, jnp.float32)
      if _is_last_value(name):
        new = clu_metrics.LastValue.from_model_output(v)
      else:
        new = clu_metrics.Average.from_model_output(v)
      old = self._metrics.get(name)
      self._metrics[name] = new if old is None else old.merge(new)
    self.count += 1

  def compute(self) -> Dict[str, float]:
    return {k: float(m.compute()) for k, m in sorted(self._metrics.items())}

  def reset(self) -> None:
    self._metrics = {}
    self.count = 0
