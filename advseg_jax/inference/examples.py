"""Predictions of a training run's generator on a few eval examples, with a confidence map
(for `advseg_jax.report`).

    examples = collect_examples("runs/demo", num=4, split=None, data_dir=None, dataset=None,
                                model_path=None)

The confidence map is D's belief that the prediction is "real" (sigmoid of D's output on the
softmax, upsampled to the image, as AdvSemiSeg's confidence map) when the workdir's
discriminator can be loaded, otherwise the max softmax probability of G.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import jax
import numpy as np

from advseg_jax import data, losses, models, visualize
from advseg_jax.inference import evaluate as ev
from advseg_jax.inference import loading
from advseg_jax.inference.evaluator import EvaluationError
from advseg_jax.inference.predictor import jit_predict_fn
from advseg_jax.models.deeplab import upsample_logits


def _load_discriminator(workdir: str):
  """`(fn(probs [B,H,W,K]) -> P(real) [B,H,W] or None, why there is none)` from the workdir's
  discriminator; any failure means "no D" (the max softmax is shown instead)."""
  try:
    loaded = loading.load_discriminator_for_inference(workdir)
  except Exception as e:  # pylint: disable=broad-except
    return None, f"discriminator not loadable ({' '.join(str(e).split())[:120]})"
  if loaded is None:
    return None, "no discriminator in the checkpoint"
  d_vars, d_spec = loaded
  return _discriminator_fn(d_vars, d_spec), None


def _discriminator_fn(d_vars, d_spec: Mapping[str, Any]):
  if d_spec.get("arch") in ("image_label",):
    return None
  d_model = models.build(d_spec)
  gan = d_spec.get("gan", "softmax2" if d_spec.get("arch") == "fc2_discriminator" else "vanilla")

  @jax.jit
  def fn(probs):
    out = d_model.apply(d_vars, probs)
    if tuple(out.shape[1:3]) != tuple(probs.shape[1:3]):
      out = upsample_logits(out, probs.shape[1:3])
    return losses.real_probability(out, gan)

  return fn


def collect_examples(workdir: str, *, num: int, split: str, data_dir: Optional[str],
                     dataset: Optional[str], model_path: Optional[str]) -> Dict[str, Any]:
  """Predictions on the first `num` examples of `split` (at most one batch)."""

  variables, spec = loading.load_generator(model_path or workdir)
  choice = ev.choose_dataset(dataset, spec)
  protocol = ev.resolve_protocol("auto", spec, choice)
  split = split or ev.default_split(spec, choice)
  cfg = ev.eval_stream(spec, choice, protocol, split=split, data_dir=data_dir)
  batch = next(iter(data.make_eval_iterator(cfg, split=split, batch_size=num)), None)
  if batch is None:
    raise EvaluationError(f"split {split!r} of {choice.full_name} has no examples")
  model = models.build(spec)
  predict = jit_predict_fn(model)
  d_fn, d_note = _load_discriminator(model_path or workdir)
  images = np.asarray(batch["image"], np.float32)
  out: List[Dict[str, Any]] = []
  for i in np.nonzero(np.asarray(batch["mask"]))[0]:
    h, w = (int(v) for v in batch["orig_hw"][i])
    x = images[i:i + 1]
    out_hw = (h, w) if protocol.eval_mode == "resize" else tuple(x.shape[1:3])
    probs = predict(variables, x, out_hw)
    if d_fn is not None:
      conf = np.asarray(d_fn(probs))[0]
    else:
      conf = np.asarray(probs.max(axis=-1))[0]
    pred = np.asarray(probs.argmax(axis=-1))[0][:h, :w]
    gt = np.asarray(batch["label"][i])[:h, :w]
    if choice.label_lut is not None:
      gt = choice.label_lut[np.clip(gt, 0, 255)]
    shown = x[0] if protocol.eval_mode == "resize" else x[0, :h, :w]
    rgb = visualize.to_display_rgb(shown, cfg.mean_bgr, cfg.channel_order, cfg.std_bgr)
    out.append(dict(image=rgb, gt=gt, pred=pred, conf=conf[:h, :w],
                    name=str(batch["file_name"][i])))
  conf_title = ("D confidence: P(real) of the prediction" if d_fn is not None
                else "max softmax probability (no D loaded)")
  return dict(examples=out, class_names=tuple(choice.info.class_names),
              palette=np.asarray(choice.info.palette), conf_title=conf_title,
              conf_note=d_note, dataset=choice.full_name, split=split, spec=spec,
              protocol=protocol.name)
