"""The one evaluator: confusion matrix of a generator over eval batches, on device.

Training (config.eval_data, every process):

    evaluator = Evaluator(config, g_model, par, provider, class_names)
    confusion, num_images = evaluator(variables)

Any batch iterator (the `evaluate` command):

    step = make_confusion_step(g_model, num_classes, par, flip=True, scales=(0.75, 1.0))
    confusion, num_images = accumulate_confusion(step, par, variables, batches,
                                                 num_classes=num_classes, label_lut=lut)

Batches are the `advseg_jax.data` eval batches: image float32 [B, H, W, 3], label int32
[B, Hl, Wl] (255 = ignore), orig_hw int32 [B, 2], mask bool [B]. The confusion matrix counts
pixels with 0 <= label < K (rows ground truth, columns prediction) as the originals do.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from advseg_jax import metrics as metrics_lib
from advseg_jax.inference.predictor import make_predict_fn


class EvaluationError(RuntimeError):
  """An evaluation set-up the user must fix (the message names the field)."""


def eval_label_lut(config: Any, provider: Any) -> Optional[np.ndarray]:
  """Maps eval labels to the model's classes when they differ (SYNTHIA 16/13 -> Cityscapes)."""
  k = int(config.model.num_classes)
  eval_info = provider.get_info(config.eval_data.name, config.eval_data.config_name)
  if eval_info.num_classes == k:
    return None
  train_info = provider.get_info(config.data.name, config.data.config_name)
  tids = getattr(train_info, "cityscapes_train_ids", None)
  eval_ids = getattr(eval_info, "cityscapes_train_ids", None)
  if tids is not None and eval_ids is not None and train_info.num_classes == k:
    lut = np.full(256, 255, np.int64)
    for cls, tid in enumerate(tids):
      lut[int(eval_ids.index(tid)) if tid in eval_ids else 255] = cls
    lut[255] = 255
    return lut
  raise EvaluationError(
      f"config.eval_data ({config.eval_data.name}) has {eval_info.num_classes} classes but "
      f"config.model.num_classes is {k}, and there is no class mapping between them")


def resolve_mean_mode(config: Any) -> str:
  mode = config.get("eval_mean_mode", "auto")
  if mode in (None, "auto"):
    return "voc" if config.eval_data.eval_mode == "pad" else "nanmean"
  return metrics_lib.resolve_mean_mode(mode)


def make_confusion_step(g_model, num_classes: int, par: Any, *, flip: bool = False,
                        scales: Sequence[float] = (1.0,), with_predictions: bool = False):
  """`step(variables, batch, None) -> confusion int32 [K, K]` (summed over devices), bound by
  `par` (an `advseg_jax.train.parallel.Parallel`); with `with_predictions` (mode 'jit' only)
  `(confusion, class ids int32 [B, Hl, Wl])`.

  The main-level logits are upsampled to the label size (bilinear, align_corners=True),
  softmaxed and averaged over `scales` / flips (`make_predict_fn`); pixels of examples with
  `mask` False and labels 255 are not counted.
  """
  predict = make_predict_fn(g_model, flip=flip, scales=tuple(scales))
  axis = par.axis_name
  k = int(num_classes)

  def body(variables, batch, rng):
    del rng
    label = batch["label"]
    probs = predict(variables, batch["image"], label.shape[1:3])
    pred = jnp.argmax(probs, axis=-1)
    valid = batch["mask"][:, None, None] & (label != 255)
    hist = metrics_lib.confusion_matrix_jax(label, pred, k, valid)
    if axis is not None:
      hist = jax.lax.psum(hist, axis)
    return (hist, pred.astype(jnp.int32)) if with_predictions else hist

  return par.bind_train_step(body, donate_states=False)


def output_groups(batch: Dict[str, Any], per_example_size: bool
                  ) -> List[Tuple[Tuple[int, int], np.ndarray]]:
  """`[(label size the logits are upsampled to, examples bool [B])]` for one batch.

  One group at the batch's label size (pad / native: the padded input size, each example
  cropped to its original size by the 255 padding of its label), or with `per_example_size`
  one group per original size (resize protocol: evaluate_cityscapes.py upsamples to the
  full label size of each image).
  """
  real = np.asarray(batch["mask"], bool)
  if not per_example_size:
    return [(tuple(int(v) for v in np.shape(batch["label"])[1:3]), real)]
  orig = np.asarray(batch["orig_hw"])
  sizes: Dict[Tuple[int, int], np.ndarray] = {}
  for i in np.nonzero(real)[0]:
    hw = (int(orig[i][0]), int(orig[i][1]))
    sizes.setdefault(hw, np.zeros_like(real))[i] = True
  return list(sizes.items())


# Pixels counted in int32 on device before the matrix is added to the int64 total on host.
_DEVICE_PIXELS = 1 << 30


def accumulate_confusion(step: Callable, par: Any, variables: Any, batches: Iterable[Dict],
                         *, num_classes: int, label_lut: Optional[np.ndarray] = None,
                         per_example_size: bool = False,
                         on_predictions: Optional[Callable] = None) -> Tuple[np.ndarray, int]:
  """`(confusion int64 [K, K], number of real examples)` of `step` over `batches`.

  `label_lut` maps dataset labels to model classes (256 entries, 255 kept); `on_predictions
  (batch, examples bool [B], class ids [B, H, W])` receives each group's predictions (a step
  made `with_predictions`).
  """
  k = int(num_classes)
  total = np.zeros((k, k), np.int64)
  pending, pending_pixels, count = None, 0, 0
  for b in batches:
    label = np.asarray(b["label"]).astype(np.int64)
    if label_lut is not None:
      label = label_lut[np.clip(label, 0, 255)]
    for (h, w), examples in output_groups(b, per_example_size):
      if pending is not None and pending_pixels + label[:, :h, :w].size > _DEVICE_PIXELS:
        total += np.asarray(par.unreplicate(pending), np.int64)
        pending, pending_pixels = None, 0
      batch = {"image": np.asarray(b["image"], np.float32),
               "label": np.ascontiguousarray(label[:, :h, :w]).astype(np.int32),
               "mask": examples}
      out = step(variables, par.shard_batch(batch), None)
      hist = out[0] if on_predictions is not None else out
      if on_predictions is not None:
        on_predictions(b, examples, np.asarray(out[1]))
      pending = hist if pending is None else pending + hist
      pending_pixels += batch["label"].size
      count += int(examples.sum())
  if pending is not None:
    total += np.asarray(par.unreplicate(pending), np.int64)
  return total, count


class Evaluator:
  """Confusion matrix of the current generator on config.eval_data (all processes)."""

  def __init__(self, config: Any, g_model, par: Any, provider: Any,
               class_names: Sequence[str]):
    self.config = config
    self.par = par
    self.provider = provider
    self.k = int(config.model.num_classes)
    self.class_names = tuple(class_names)
    self.lut = eval_label_lut(config, provider)
    self.mean_mode = resolve_mean_mode(config)
    self.batch_per_process = par.num_local
    self._step = make_confusion_step(g_model, self.k, par)

  def _batches(self):
    e = self.config.eval_data
    it = self.provider.make_eval_iterator(
        e, split=e.split, batch_size=self.batch_per_process,
        process_index=jax.process_index(), process_count=jax.process_count())
    n = len(it)
    if int(self.config.eval_max_examples) > 0:
      global_batch = self.batch_per_process * jax.process_count()
      n = min(n, math.ceil(int(self.config.eval_max_examples) / global_batch))
    return it, n

  def __call__(self, variables) -> Tuple[np.ndarray, int]:
    it, n = self._batches()
    return accumulate_confusion(self._step, self.par, variables, itertools.islice(it, n),
                                num_classes=self.k, label_lut=self.lut)
