"""Evaluating a segmentation network as the originals do: mIoU on a dataset split.

    choice = choose_dataset("voc_aug", spec)
    protocol = resolve_protocol("auto", spec, choice)
    result = evaluate(variables, spec, choice, protocol, split="validation", data_dir=None)
    print(format_table(result))

Protocols (docs/FIDELITY.md §6.6 and §7.4):

* `voc` (`evaluate_voc.py`): each image padded bottom/right to 505x505 (0 after mean
  subtraction), the stride-8 logits upsampled (bilinear, align_corners=True) to 505x505,
  cropped to the original size, argmax; confusion matrix over pixels with gt < K; per-class
  IoU = TP / (TP + FP + FN); **mIoU averages only the classes with TP > 0**.
* `cityscapes` (`evaluate_cityscapes.py` + `compute_iou.py`): image resized (PIL bicubic) to
  1024x512, the main output upsampled to the full label size (1024x2048), argmax; `fast_hist`
  over 0 <= gt < K; **mIoU = nanmean** of the per-class IoU (classes absent from both gt and
  prediction are skipped).

Both also report the corrected mean over all K classes (see `advseg_jax.metrics`).
Additions the originals lack: horizontal-flip and multi-scale testing (softmax averaged),
batch > 1, JSON output, prediction PNGs. The confusion matrix is computed on device by
`advseg_jax.inference.evaluator`, the evaluator of the training loop.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import numpy as np

from advseg_jax import data, metrics, models, visualize
from advseg_jax.data import labels as labels_lib
from advseg_jax.data import registry
from advseg_jax.inference.evaluator import (EvaluationError, accumulate_confusion,
                                            make_confusion_step)
from advseg_jax.train.parallel import Parallel

PROTOCOLS = ("auto", "voc", "cityscapes")
MEAN_MODES = ("auto", "voc", "nanmean", "all")
VOC_PAD_SIZE = (505, 505)          # evaluate_voc.py crop_size (VOC images are at most 500)
CITYSCAPES_INPUT_SIZE = (512, 1024)  # evaluate_cityscapes.py input (h, w)


def spec_dataset(spec: Mapping[str, Any], *, for_eval: bool = True) -> Optional[str]:
  """The dataset a checkpoint is evaluated on (`'voc_aug'`, `'shapes/target'`, ...), if recorded.

  Training exports record the eval stream (`spec['eval']`, e.g. Cityscapes for a GTA5 ->
  Cityscapes run) and the labelled / source stream (`spec['dataset']`); the eval stream wins
  when `for_eval`.
  """
  candidates = []
  ev_spec = spec.get("eval")
  if for_eval and isinstance(ev_spec, Mapping):
    candidates.append((ev_spec.get("dataset"), ev_spec.get("config_name")))
  candidates.append((spec.get("dataset") or spec.get("dataset_name"),
                     spec.get("config_name") or spec.get("dataset_config")))
  for name, cfg in candidates:
    if isinstance(name, str) and name:
      return f"{name}/{cfg}" if cfg and "/" not in name else name
  return None


# --------------------------------------------------------------------------- datasets
@dataclasses.dataclass
class DatasetChoice:
  name: str                       # 'voc_aug', 'cityscapes', 'synthia' ...
  config_name: Optional[str]
  info: Any                       # DatasetInfo of the labels the model predicts
  label_lut: Optional[np.ndarray]  # dataset label -> model class id, or None

  @property
  def full_name(self) -> str:
    return self.name + (f"/{self.config_name}" if self.config_name else "")


def choose_dataset(dataset: Optional[str], spec: Mapping[str, Any]) -> DatasetChoice:
  """Resolves `dataset` (default: the checkpoint's) and checks the class count against the model."""

  dataset = dataset or spec_dataset(spec)
  if not dataset:
    raise EvaluationError("the checkpoint does not record its dataset; pass --dataset (one of "
                   f"{', '.join(data.dataset_names())})")
  try:
    name, cfg = registry.split_name(dataset)
  except (KeyError, ValueError) as e:
    raise EvaluationError(f"dataset {dataset!r}: {' '.join(str(e).split()).strip(chr(34))}"
                          ) from None
  info = data.get_info(name, cfg)
  k_model = int(spec["num_classes"])
  lut = None
  if k_model != info.num_classes:
    if name == "cityscapes" and str(k_model) in labels_lib.SYNTHIA_PROTOCOL_TRAIN_IDS:
      # A SYNTHIA-trained model on Cityscapes: evaluate its 13 / 16 classes only.
      lut = labels_lib.cityscapes_to_protocol_lut(str(k_model))
      info = data.get_info("synthia", str(k_model))
    else:
      raise EvaluationError(f"the checkpoint predicts {k_model} classes but dataset {dataset} has "
                     f"{info.num_classes}; pass the dataset the model was trained for "
                     f"(--dataset) or a checkpoint for {dataset}")
  return DatasetChoice(name, cfg, info, lut)



@dataclasses.dataclass
class Protocol:
  """How images are fed and how the per-class IoU is averaged."""
  name: str                              # 'voc' | 'cityscapes' | 'native' (as the run evaluated)
  eval_mode: str                         # data pipeline: 'pad' | 'resize' | 'none'
  pad_size: Optional[Tuple[int, int]]    # 'pad'
  input_size: Optional[Tuple[int, int]]  # 'resize'
  mean_mode: str                         # advseg_jax.metrics mean mode of the headline mIoU
  pad_fill: str = "mean"                 # 'pad': 'mean' | 'black' (data eval_pad_fill)
  ignore_as_background: bool = False     # labels' 255 scored as class 0 (ICLR-2018, §8)


def _spec_eval(spec: Mapping[str, Any], choice: "DatasetChoice") -> Optional[Mapping[str, Any]]:
  """The checkpoint's own eval settings, if they are for `choice`'s dataset."""
  e = spec.get("eval")
  if not isinstance(e, Mapping) or not e.get("dataset"):
    return None
  name, cfg = e["dataset"], e.get("config_name")
  if "/" in name:
    name, cfg = name.split("/", 1)
  if name != choice.name or (cfg and choice.config_name and cfg != choice.config_name):
    return None
  return e


def resolve_protocol(protocol: str, spec: Mapping[str, Any], choice: "DatasetChoice", *,
                     pad_size: Optional[Tuple[int, int]] = None,
                     input_size: Optional[Tuple[int, int]] = None,
                     mean_mode: str = "auto") -> Protocol:
  """A protocol name (+ overrides) -> Protocol.

  voc: pad to 505 (or `pad_size`), TP>0 mean; cityscapes: resize to 1024x512 (or
  `input_size`), nanmean. auto: the checkpoint's own eval settings when it was evaluated on
  this dataset during training (the training loop's rule: pad -> voc mean, otherwise
  nanmean, or the recorded `mean_mode`, pad fill and `ignore_as_background`); otherwise voc
  for voc_aug, native size + nanmean for shapes, cityscapes for the rest.
  """
  if protocol not in PROTOCOLS:
    raise EvaluationError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
  if mean_mode not in MEAN_MODES:
    raise EvaluationError(f"mean_mode must be one of {MEAN_MODES}, got {mean_mode!r}")
  if protocol == "voc":
    p = Protocol("voc", "pad", tuple(pad_size or VOC_PAD_SIZE), None, "voc")
  elif protocol == "cityscapes":
    p = Protocol("cityscapes", "resize", None, tuple(input_size or CITYSCAPES_INPUT_SIZE),
                 "nanmean")
  else:
    e = _spec_eval(spec, choice)
    mode = e.get("eval_mode") if e else None
    if mode == "pad" or (mode is None and choice.name == "voc_aug"):
      size = pad_size or (tuple(e["eval_pad_size"]) if e and e.get("eval_pad_size")
                          else VOC_PAD_SIZE)
      p = Protocol("voc", "pad", tuple(size), None, "voc",
                   pad_fill=str(e.get("eval_pad_fill") or "mean") if e else "mean")
    elif mode == "resize" or (mode is None and choice.name != "shapes"):
      size = input_size or (tuple(e["eval_resize_size"]) if e and e.get("eval_resize_size")
                            else CITYSCAPES_INPUT_SIZE)
      p = Protocol("cityscapes", "resize", None, tuple(size), "nanmean")
    elif pad_size is not None:
      p = Protocol("voc", "pad", tuple(pad_size), None, "voc")
    else:
      p = Protocol("native", "none", None, None, "nanmean")
    recorded = spec.get("mean_mode")
    if e is not None and recorded in ("voc", "nanmean", "all"):
      p.mean_mode = recorded
    p.ignore_as_background = bool(e.get("ignore_as_background", False)) if e else False
  if pad_size is not None and p.eval_mode == "pad":
    p.pad_size = tuple(pad_size)
  if input_size is not None and p.eval_mode == "resize":
    p.input_size = tuple(input_size)
  if mean_mode != "auto":
    p.mean_mode = mean_mode
  return p


# --------------------------------------------------------------------------- evaluation
@dataclasses.dataclass
class EvalResult:
  confusion: np.ndarray            # int64 [K, K], rows = ground truth, cols = prediction
  class_names: Tuple[str, ...]
  protocol: Protocol
  num_images: int
  settings: Dict[str, Any]
  seconds: float

  def summary(self) -> Dict[str, Any]:

    return metrics.summarize_confusion(self.confusion, self.protocol.mean_mode)

  def to_json(self) -> Dict[str, Any]:
    s = self.summary()
    per_class = {n: _f(v) for n, v in zip(self.class_names, s["per_class_iou"])}
    out = dict(self.settings)
    out.update(protocol=self.protocol.name, mean_mode=s["mean_mode"],
               miou_definition=s["definition"], num_images=self.num_images,
               miou=_f(s["miou"]), miou_voc=_f(s["miou_voc"]),
               miou_nanmean=_f(s["miou_nanmean"]), miou_all_classes=_f(s["miou_all"]),
               pixel_accuracy=_f(s["pixel_accuracy"]), per_class_iou=per_class,
               gt_pixels={n: int(v) for n, v in zip(self.class_names, self.confusion.sum(1))},
               confusion=self.confusion.tolist(), seconds=round(self.seconds, 3))
    return out


def _f(x) -> Optional[float]:
  x = float(x)
  return x if np.isfinite(x) else None


def prediction_path(out_dir: str, file_name: str, suffix: str = ".png") -> str:
  """`out_dir/<file_name without extension><suffix>`, never escaping `out_dir`."""
  rel = os.path.normpath(str(file_name).replace("\\", "/")).lstrip("/")
  parts = [p for p in rel.split("/") if p not in ("", ".", "..")]
  rel = "/".join(parts) or "image"
  root, _ = os.path.splitext(rel)
  return os.path.join(out_dir, root + suffix)


def default_split(spec: Mapping[str, Any], choice: DatasetChoice) -> str:
  e = _spec_eval(spec, choice)
  return str(e["split"]) if e and e.get("split") else "validation"


def eval_stream(spec: Mapping[str, Any], choice: DatasetChoice, protocol: Protocol, *,
                split: str, data_dir: Optional[str]):
  """The `advseg_jax.data` eval stream config for `spec`'s model on `split`.

  Checks that the split is labelled and prepares the dataset if needed ('shapes' is generated;
  the others raise FileNotFoundError naming the `prepare` command).
  """

  base_split = split.partition("[")[0]
  base_split = {"val": "validation"}.get(base_split, base_split)
  ds_info = data.get_info(choice.name, choice.config_name)
  if base_split not in ds_info.labelled_splits:
    raise EvaluationError(f"dataset {choice.full_name} has no labelled split {base_split!r} "
                   f"(labelled splits: {', '.join(ds_info.labelled_splits)})")
  data.ensure_prepared(choice.name, data_dir, choice.config_name)
  return model_input_stream(
      spec, choice, data_dir=data_dir, eval_mode=protocol.eval_mode,
      eval_pad_size=tuple(protocol.pad_size or VOC_PAD_SIZE), eval_pad_fill=protocol.pad_fill,
      ignore_as_background=protocol.ignore_as_background,
      eval_resize_size=tuple(protocol.input_size or CITYSCAPES_INPUT_SIZE))


def model_input_stream(spec: Mapping[str, Any], choice: DatasetChoice, *,
                       data_dir: Optional[str], **fields: Any):
  """A stream config of `choice` whose images are normalised as `spec`'s model expects
  (its channel order, mean and std, else the dataset's defaults); `fields` set the rest
  (sizing, labels)."""
  ds_info = data.get_info(choice.name, choice.config_name)
  return data.dataset_config(
      name=choice.name, config_name=choice.config_name, data_dir=data_dir,
      channel_order=spec.get("channel_order") or ds_info.default_channel_order,
      mean_bgr=tuple(spec.get("mean_bgr") or ds_info.mean_bgr),
      std_bgr=tuple(spec["std_bgr"]) if spec.get("std_bgr") else None, **fields)


def evaluate(variables, spec: Mapping[str, Any], choice: DatasetChoice, protocol: Protocol, *,
             split: str, data_dir: Optional[str], batch_size: int = 1, flip: bool = False,
             scales: Sequence[float] = (1.0,), save_dir: Optional[str] = None,
             max_batches: Optional[int] = None,
             progress: Optional[Callable[[Iterable, int], Iterable]] = None) -> EvalResult:
  """Runs the model over `split` on one device and accumulates the confusion matrix (see the
  module docstring); `save_dir` receives a palette PNG per image, `progress(batches, total)`
  may wrap the batches (a progress bar)."""
  cfg = eval_stream(spec, choice, protocol, split=split, data_dir=data_dir)
  batches = data.make_eval_iterator(cfg, split=split, batch_size=batch_size)
  total = len(batches) if max_batches is None else min(len(batches), max_batches)
  batches = itertools.islice(batches, total)
  if progress is not None:
    batches = progress(batches, total)
  k = int(spec["num_classes"])
  par = Parallel("jit")
  step = make_confusion_step(models.build(spec), k, par, flip=flip,
                             scales=scales, with_predictions=bool(save_dir))
  palette = choice.info.palette

  def save(batch, examples, pred):
    for i in np.nonzero(examples)[0]:
      h, w = (int(v) for v in batch["orig_hw"][i])
      visualize.save_label_png(prediction_path(save_dir, batch["file_name"][i]),
                               pred[i, :h, :w], palette)

  start = time.time()
  confusion, n_images = accumulate_confusion(
      step, par, par.replicate(dict(variables)), batches, num_classes=k,
      label_lut=choice.label_lut, per_example_size=protocol.eval_mode == "resize",
      on_predictions=save if save_dir else None)
  settings = dict(dataset=choice.full_name, split=split, batch_size=batch_size, flip=flip,
                  scales=list(scales), eval_mode=protocol.eval_mode,
                  pad_size=list(protocol.pad_size) if protocol.eval_mode == "pad" else None,
                  pad_fill=protocol.pad_fill if protocol.eval_mode == "pad" else None,
                  ignore_as_background=protocol.ignore_as_background,
                  input_size=(list(protocol.input_size) if protocol.eval_mode == "resize"
                              else None),
                  channel_order=cfg.channel_order, arch=spec.get("arch"),
                  aspp_branches_used=spec.get("aspp_branches_used"))
  return EvalResult(confusion, tuple(choice.info.class_names), protocol, n_images, settings,
                    time.time() - start)


def format_table(result: EvalResult) -> str:
  """Per-class IoU table plus the means, as printed by the command."""
  s = result.summary()
  iou = np.asarray(s["per_class_iou"], np.float64)
  tp = np.diag(result.confusion)
  gt = result.confusion.sum(1)
  width = max([len(n) for n in result.class_names] + [5])
  rule = "-" * (width + 44)
  lines = [f"{'class':<{width}}  {'IoU %':>7}  {'gt pixels':>11}  note", rule]
  for c, name in enumerate(result.class_names):
    if not np.isfinite(iou[c]):
      val, note = "    nan", "absent from gt and prediction"
    else:
      val, note = f"{100 * iou[c]:7.2f}", ""
      if tp[c] == 0 and s["mean_mode"] == "voc":
        note = "TP = 0: left out of the VOC mean"
    lines.append(f"{name:<{width}}  {val}  {int(gt[c]):>11}  {note}".rstrip())
  lines.append(rule)
  lines.append(f"mIoU: {_pct(s['miou'])}  ({s['definition']})")
  others = [(m, s[f"miou_{m}"]) for m in ("voc", "nanmean", "all") if m != s["mean_mode"]]
  lines.append("also: " + ", ".join(
      f"{'all ' + str(len(result.class_names)) + ' classes (corrected)' if m == 'all' else m} "
      f"{_pct(v)}" for m, v in others))
  lines.append(f"pixel accuracy: {_pct(s['pixel_accuracy'])}   images: {result.num_images}   "
               f"time: {result.seconds:.1f} s")
  return "\n".join(lines)


def _pct(x: float) -> str:
  return f"{100 * float(x):.2f}" if np.isfinite(float(x)) else "nan"
