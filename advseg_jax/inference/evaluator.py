"""The one evaluator: confusion matrix of a generator on an eval stream, on device.

    evaluator = Evaluator(config, g_model, par, provider, class_names)
    confusion, num_images = evaluator(variables)
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

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
    predict = make_predict_fn(g_model)
    axis = par.axis_name
    k = self.k

    def body(variables, batch, rng):
      del rng
      label = batch["label"]
      probs = predict(variables, batch["image"], label.shape[1:3])
      pred = jnp.argmax(probs, axis=-1)
      valid = batch["mask"][:, None, None] & (label != 255)
      hist = metrics_lib.confusion_matrix_jax(label, pred, k, valid)
      if axis is not None:
        hist = jax.lax.psum(hist, axis)
      return hist

    self._fn = par.bind_train_step(body, donate_states=False)

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
    total = None
    count = 0
    for i, b in enumerate(it):
      if i >= n:
        break
      label = np.asarray(b["label"]).astype(np.int64)
      if self.lut is not None:
        label = self.lut[np.clip(label, 0, 255)]
      mask = np.asarray(b["mask"], bool)
      count += int(mask.sum())
      batch = {"image": np.asarray(b["image"], np.float32), "label": label.astype(np.int32),
               "mask": mask}
      hist = self._fn(variables, self.par.shard_batch(batch), None)
      total = hist if total is None else total + hist
    if total is None:
      return np.zeros((self.k, self.k), np.int64), 0
    host = self.par.unreplicate(total)
    return np.asarray(host, np.int64), count
