"""The `evaluate` command: mIoU of a checkpoint on a dataset split, as the originals compute it.

    python -m advseg_jax evaluate runs/voc/best_model --dataset voc_aug
    python -m advseg_jax evaluate --torch_checkpoint GTA2Cityscapes_multi-ed35151c.pth \
        --arch deeplabv2_multi --dataset cityscapes --output_json gta2city.json

Protocols (ORIGINALS.md §6.6 and §7.4):

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
batch > 1, JSON output, prediction PNGs.

The loading helpers (`add_checkpoint_args`, `load_from_args`, `CLIError`) are shared with
`predict` and `report`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

log = logging.getLogger(__name__)

PROTOCOLS = ("auto", "voc", "cityscapes")
VOC_PAD_SIZE = (505, 505)          # evaluate_voc.py crop_size (VOC images are at most 500)
CITYSCAPES_INPUT_SIZE = (512, 1024)  # evaluate_cityscapes.py input (h, w)
IGNORE_LABEL = 255


class CLIError(Exception):
  """A user-facing problem; the commands print it as one `error:` line and exit with 2."""


# --------------------------------------------------------------------------- parsing helpers
def parse_hw(text: str) -> Tuple[int, int]:
  """'505' -> (505, 505); '512,1024' -> (512, 1024) (height, width)."""
  parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
  try:
    vals = tuple(int(p) for p in parts)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected H,W or N, got {text!r}") from None
  if len(vals) == 1:
    vals = vals * 2
  if len(vals) != 2 or min(vals) < 1:
    raise argparse.ArgumentTypeError(f"expected two positive ints H,W, got {text!r}")
  return vals  # type: ignore[return-value]


def parse_scales(text: str) -> Tuple[float, ...]:
  """'0.75,1,1.25' -> (0.75, 1.0, 1.25)."""
  try:
    vals = tuple(float(p) for p in str(text).split(",") if p.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
  if not vals or min(vals) <= 0:
    raise argparse.ArgumentTypeError(f"scales must be positive, got {text!r}")
  return vals


def parse_depths(text: str) -> Any:
  if "," in text:
    try:
      vals = tuple(int(d) for d in text.split(","))
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected 4 comma-separated ints or a name, got "
                                       f"{text!r}") from None
    return vals
  return text


def one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


# --------------------------------------------------------------------------- checkpoints
def add_checkpoint_args(p: argparse.ArgumentParser, *, positional: bool = True) -> None:
  """The checkpoint flags shared by evaluate / predict."""
  if positional:
    p.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="a model directory (written by training as WORKDIR/best_model or "
                        "WORKDIR/final_model, or by `convert`) or a training WORKDIR (its best "
                        "model is used, see advseg_jax.train.checkpoint); omit it when "
                        "--torch_checkpoint is given")
  g = p.add_argument_group(
      "original PyTorch checkpoints",
      "Evaluate a .pth file of the originals directly (converted in memory, nothing written; "
      "`python -m advseg_jax convert` makes a reusable model directory instead).")
  g.add_argument("--torch_checkpoint", metavar="PTH",
                 help="a PyTorch state_dict .pth (e.g. AdvSemiSegVOC0.125-03c6f81c.pth, "
                      "GTA2Cityscapes_multi-ed35151c.pth); needs --arch")
  g.add_argument("--arch", choices=("deeplabv2", "deeplabv2_multi"),
                 help="architecture of --torch_checkpoint: deeplabv2 = Res_Deeplab "
                      "(AdvSemiSeg, AdaptSegNet oracle), deeplabv2_multi = DeeplabMulti "
                      "(AdaptSegNet; its main layer6 output is evaluated)")
  g.add_argument("--num_classes", type=int,
                 help="classes of --torch_checkpoint (default: the dataset's, 21 VOC / 19 "
                      "Cityscapes, else read off the file's classifier)")
  g.add_argument("--rule", choices=("strict", "advsemi", "adaptseg"), default="strict",
                 help="how .pth keys are matched (see `convert --help`); strict (default) = "
                      "every variable must be present with the right shape, as "
                      "evaluate_voc.py's load_state_dict")
  g.add_argument("--channel_order", choices=("RGB", "BGR"),
                 help="input channel order the .pth expects (default: RGB for a 21-class "
                      "deeplabv2 (AdvSemiSeg), BGR otherwise (AdaptSegNet)); for model "
                      "directories it comes from model.json")
  g.add_argument("--aspp_branches_used", type=int, choices=(1, 2, 3, 4), default=2,
                 help="ASPP branches summed: 2 = the released models (the originals' "
                      "early-return bug, default), 4 = corrected")
  g.add_argument("--depths", type=parse_depths, default="resnet101",
                 help="backbone depth of --torch_checkpoint: resnet101 (default), resnet50, "
                      "tiny, or 4 comma-separated ints")
  g.add_argument("--width", type=int, default=64,
                 help="stem width of --torch_checkpoint (64 in the originals)")
  g.add_argument("--trust_pickle", action="store_true",
                 help="allow .pth files holding Python objects (torch.load weights_only=False)"
                      "; only for files you trust")


def check_checkpoint_args(args: argparse.Namespace) -> None:
  """The cheap checks of the checkpoint flags (paths exist, the flags fit together), so that a
  command fails on them before any slow work."""
  if args.torch_checkpoint:
    if getattr(args, "checkpoint", None):
      raise CLIError("give either CHECKPOINT or --torch_checkpoint, not both")
    if not os.path.isfile(args.torch_checkpoint):
      raise CLIError(f"{args.torch_checkpoint}: no such file (--torch_checkpoint expects a "
                     f".pth file)")
    if args.arch is None:
      raise CLIError("--torch_checkpoint needs --arch deeplabv2 (Res_Deeplab) or "
                     "deeplabv2_multi (DeeplabMulti)")
    return
  check_checkpoint_path(getattr(args, "checkpoint", None))


def check_checkpoint_path(path: Optional[str]) -> None:
  """CLIError unless `path` is an existing directory (a model directory or a workdir)."""
  if not path:
    raise CLIError("no checkpoint given: pass a model directory / training workdir, or "
                   "--torch_checkpoint PTH --arch ARCH")
  if not os.path.exists(path):
    raise CLIError(f"{path}: no such file or directory (expected a model directory or a "
                   f"training workdir)")
  if os.path.isfile(path):
    hint = (" (a PyTorch file: pass it as --torch_checkpoint with --arch)"
            if path.endswith((".pth", ".pt", ".pkl")) else "")
    raise CLIError(f"{path}: is a file, expected a model directory or a training "
                   f"workdir{hint}")


def load_checkpoint(path: Optional[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """`(variables, spec)` of a generator from a model directory or a training workdir."""
  from advseg_jax.inference import loading  # pylint: disable=import-outside-toplevel

  check_checkpoint_path(path)
  variables, spec = loading.load_for_inference(path)
  spec = dict(spec)
  if spec.get("kind", "generator") != "generator":
    raise CLIError(f"{path}: holds a {spec.get('kind')} ({spec.get('arch')}), not a "
                   f"segmentation network")
  return variables, spec


def load_torch(args: argparse.Namespace, default_classes: Optional[int]
               ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  from advseg_jax.torch_port import convert  # pylint: disable=import-outside-toplevel

  path = args.torch_checkpoint  # checked by load_from_args
  k = args.num_classes or default_classes or _classes_in_state_dict(path, args.arch,
                                                                    args.trust_pickle)
  if not k:
    raise CLIError("--torch_checkpoint needs --num_classes (or --dataset to take it from)")
  spec = convert.model_spec(args.arch, k, depths=args.depths, width=args.width,
                            aspp_branches_used=args.aspp_branches_used,
                            channel_order=args.channel_order)
  try:
    variables, report = convert.load_torch_checkpoint(
        path, args.arch, k, rule=args.rule, depths=args.depths, width=args.width,
        aspp_branches_used=args.aspp_branches_used, trust_pickle=args.trust_pickle,
        return_report=True)
  except convert.ConversionError as e:
    msg = one_line(e)
    if "mismatch" in msg or "missing" in msg or "unexpected" in msg:
      msg += (f" -- the file does not fit --arch {args.arch} with {k} classes, --depths "
              f"{args.depths}, --width {args.width}; check those flags")
    raise CLIError(msg) from None
  spec["source"] = {"file": os.path.basename(path), "rule": args.rule}
  print(report.summary())  # what was loaded / skipped / freshly initialised, as `convert`
  return variables, spec


def _classes_in_state_dict(path: str, arch: str, trust_pickle: bool) -> Optional[int]:
  """Class count read off the main classifier's bias in a .pth (None if not found)."""
  from advseg_jax.torch_port.pth import read_state_dict  # pylint: disable=import-outside-toplevel

  head = "layer6" if arch == "deeplabv2_multi" else "layer5"
  for key, value in read_state_dict(path, trust_pickle=trust_pickle).items():
    for prefix in ("module.", "Scale."):
      key = key[len(prefix):] if key.startswith(prefix) else key
    if key == f"{head}.conv2d_list.0.bias":
      return int(np.shape(value)[0])
  return None


def load_from_args(args: argparse.Namespace, default_classes: Optional[int] = None
                   ) -> Tuple[Dict[str, Any], Dict[str, Any], str]:
  """`(variables, spec, description)` from the checkpoint flags."""
  check_checkpoint_args(args)
  if args.torch_checkpoint:
    v, s = load_torch(args, default_classes)
    return v, s, os.path.abspath(args.torch_checkpoint)
  v, s = load_checkpoint(getattr(args, "checkpoint", None))
  return v, s, os.path.abspath(args.checkpoint)


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


def known_error_types() -> Tuple[type, ...]:
  """Exceptions that carry a message meant for the user (printed as one line, exit 2)."""
  from advseg_jax import model_io  # pylint: disable=import-outside-toplevel
  from advseg_jax.data import BadExampleError  # pylint: disable=import-outside-toplevel
  from advseg_jax.torch_port.pth import ConversionError  # pylint: disable=import-outside-toplevel

  types: List[type] = [CLIError, FileNotFoundError, NotADirectoryError, PermissionError,
                       model_io.ModelFormatError, ConversionError, BadExampleError]
  try:
    from advseg_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
    for name in dir(checkpoint):
      obj = getattr(checkpoint, name)
      if isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == \
          checkpoint.__name__:
        types.append(obj)
  except ImportError:
    pass
  return tuple(types)


def run_cli(fn, args) -> int:
  """Runs `fn(args)`; user-facing errors become one `error:` line on stderr and exit code 2.

  The command's results go to stdout; stderr carries warnings (e.g. skipped bad examples) and
  the error line, whatever logging an earlier command in the same process set up.
  """
  from advseg_jax import logging_utils  # pylint: disable=import-outside-toplevel

  logging_utils.setup_console_logging(logging.WARNING)
  try:
    return int(fn(args) or 0)
  except known_error_types() as e:
    msg = one_line(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
      msg = f"{e.filename}: {msg}"
    print(f"error: {msg}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


def parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]], command: str):
  """Parses `argv` (a leading `command` word is dropped); returns (args, None) or (None, rc)."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == command:
    argv = argv[1:]
  try:
    return parser.parse_args(argv), None
  except SystemExit as e:  # --help (0) or a usage error (2; argparse printed one line)
    return None, int(e.code or 0)


def progress(iterable, *, total: Optional[int], desc: str, enabled: bool):
  """A tqdm progress bar on stderr (tqdm comes with tensorflow-datasets), or the iterable."""
  if not enabled:
    return iterable
  try:
    from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel
  except ImportError:  # pragma: no cover
    return iterable
  return tqdm(iterable, total=total, desc=desc, unit="batch", dynamic_ncols=True,
              file=sys.stderr, leave=False)


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
  """Resolves `--dataset` (or the checkpoint's) and checks the class count against the model."""
  from advseg_jax import data  # pylint: disable=import-outside-toplevel
  from advseg_jax.data import labels as L  # pylint: disable=import-outside-toplevel
  from advseg_jax.data import registry  # pylint: disable=import-outside-toplevel

  dataset = dataset or spec_dataset(spec)
  if not dataset:
    raise CLIError("the checkpoint does not record its dataset; pass --dataset (one of "
                   f"{', '.join(data.dataset_names())})")
  try:
    name, cfg = registry.split_name(dataset)
  except (KeyError, ValueError) as e:
    raise CLIError(f"--dataset: {one_line(e).strip(chr(34))}") from None
  info = data.get_info(name, cfg)
  k_model = int(spec["num_classes"])
  lut = None
  if k_model != info.num_classes:
    if name == "cityscapes" and str(k_model) in L.SYNTHIA_PROTOCOL_TRAIN_IDS:
      # A SYNTHIA-trained model on Cityscapes: evaluate its 13 / 16 classes only.
      lut = L.cityscapes_to_protocol_lut(str(k_model))
      info = data.get_info("synthia", str(k_model))
    else:
      raise CLIError(f"the checkpoint predicts {k_model} classes but dataset {dataset} has "
                     f"{info.num_classes}; pass the dataset the model was trained for "
                     f"(--dataset) or a checkpoint for {dataset}")
  return DatasetChoice(name, cfg, info, lut)


MEAN_MODES = ("auto", "voc", "nanmean", "all")


@dataclasses.dataclass
class Protocol:
  """How images are fed and how the per-class IoU is averaged."""
  name: str                              # 'voc' | 'cityscapes' | 'native' (as the run evaluated)
  eval_mode: str                         # data pipeline: 'pad' | 'resize' | 'none'
  pad_size: Optional[Tuple[int, int]]    # 'pad'
  input_size: Optional[Tuple[int, int]]  # 'resize'
  mean_mode: str                         # advseg_jax.metrics mean mode of the headline mIoU


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
  """`--protocol` (+ overrides) -> Protocol.

  voc: pad to 505 (or `pad_size`), TP>0 mean; cityscapes: resize to 1024x512 (or
  `input_size`), nanmean. auto: the checkpoint's own eval settings when it was evaluated on
  this dataset during training (the training loop's rule: pad -> voc mean, otherwise
  nanmean, or the recorded `mean_mode`); otherwise voc for voc_aug, native size + nanmean for
  shapes, cityscapes for the rest.
  """
  if protocol not in PROTOCOLS:
    raise CLIError(f"--protocol must be one of {PROTOCOLS}, got {protocol!r}")
  if mean_mode not in MEAN_MODES:
    raise CLIError(f"--mean_mode must be one of {MEAN_MODES}, got {mean_mode!r}")
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
      p = Protocol("voc", "pad", tuple(size), None, "voc")
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
    from advseg_jax import metrics  # pylint: disable=import-outside-toplevel

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


def make_batch_predictor(model, *, flip: bool, scales: Sequence[float]):
  """`fn(variables, images, out_hw) -> (class ids int32 [B,H,W], max prob f32 [B,H,W])`, jitted."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from advseg_jax.kernels import compile_options  # pylint: disable=import-outside-toplevel
  from advseg_jax.inference.predictor import make_predict_fn  # pylint: disable=import-outside-toplevel

  predict = make_predict_fn(model, flip=flip, scales=tuple(scales))

  def fn(variables, images, out_hw):
    probs = predict(variables, images, out_hw)
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)

  return compile_options.jit(fn, static_argnums=2)


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
  from advseg_jax import data  # pylint: disable=import-outside-toplevel

  base_split = split.partition("[")[0]
  base_split = {"val": "validation"}.get(base_split, base_split)
  ds_info = data.get_info(choice.name, choice.config_name)
  if base_split not in ds_info.labelled_splits:
    raise CLIError(f"dataset {choice.full_name} has no labelled split {base_split!r} "
                   f"(labelled splits: {', '.join(ds_info.labelled_splits)})")
  data.ensure_prepared(choice.name, data_dir, choice.config_name)
  return data.dataset_config(
      name=choice.name, config_name=choice.config_name, data_dir=data_dir,
      channel_order=spec.get("channel_order") or ds_info.default_channel_order,
      mean_bgr=tuple(spec.get("mean_bgr") or ds_info.mean_bgr), eval_mode=protocol.eval_mode,
      eval_pad_size=tuple(protocol.pad_size or VOC_PAD_SIZE),
      eval_resize_size=tuple(protocol.input_size or CITYSCAPES_INPUT_SIZE))


def output_sizes(protocol: Protocol, images: np.ndarray, orig_hw: np.ndarray,
                 real: np.ndarray) -> Dict[Tuple[int, int], List[int]]:
  """`{upsampling size: example indices}` for one batch.

  pad / native: the logits go to the (padded) input size and each example is then cropped to
  its original size (evaluate_voc.py); resize: straight to each example's original (label)
  size (evaluate_cityscapes.py upsamples to 1024x2048).
  """
  if protocol.eval_mode != "resize":
    return {tuple(int(v) for v in images.shape[1:3]): [int(i) for i in np.nonzero(real)[0]]}
  sizes: Dict[Tuple[int, int], List[int]] = {}
  for i in np.nonzero(real)[0]:
    sizes.setdefault(tuple(int(v) for v in orig_hw[i]), []).append(int(i))
  return sizes


def evaluate(variables, spec: Mapping[str, Any], choice: DatasetChoice, protocol: Protocol, *,
             split: str, data_dir: Optional[str], batch_size: int = 1, flip: bool = False,
             scales: Sequence[float] = (1.0,), save_dir: Optional[str] = None,
             show_progress: bool = True, max_batches: Optional[int] = None) -> EvalResult:
  """Runs the model over `split` and accumulates the confusion matrix (see module docstring)."""
  import jax  # pylint: disable=import-outside-toplevel

  from advseg_jax import data, metrics, model_io  # pylint: disable=import-outside-toplevel
  from advseg_jax import visualize  # pylint: disable=import-outside-toplevel

  cfg = eval_stream(spec, choice, protocol, split=split, data_dir=data_dir)
  batches = data.make_eval_iterator(cfg, split=split, batch_size=batch_size)
  model = model_io.build_from_spec(dict(spec))
  predictor = make_batch_predictor(model, flip=flip, scales=scales)
  variables = jax.device_put(dict(variables))
  k = int(spec["num_classes"])
  confusion = np.zeros((k, k), np.int64)
  palette = choice.info.palette
  n_images = 0
  start = time.time()
  total = len(batches) if max_batches is None else min(len(batches), max_batches)
  for b, batch in enumerate(progress(batches, total=total, desc=f"evaluate {choice.full_name}",
                                     enabled=show_progress)):
    if max_batches is not None and b >= max_batches:
      break
    images = np.asarray(batch["image"], np.float32)
    labels = np.asarray(batch["label"])
    orig = np.asarray(batch["orig_hw"])
    real = np.asarray(batch["mask"], bool)
    for out_hw, idx in output_sizes(protocol, images, orig, real).items():
      pred = np.asarray(predictor(variables, images, out_hw)[0])
      for i in idx:
        h, w = (int(v) for v in orig[i])
        p = pred[i, :h, :w]
        gt = labels[i, :h, :w]
        if choice.label_lut is not None:
          gt = choice.label_lut[np.clip(gt, 0, 255)]
        confusion += metrics.confusion_matrix(gt, p, k)
        n_images += 1
        if save_dir:
          visualize.save_label_png(prediction_path(save_dir, batch["file_name"][i]), p, palette)
  seconds = time.time() - start
  settings = dict(dataset=choice.full_name, split=split, batch_size=batch_size, flip=flip,
                  scales=list(scales), eval_mode=protocol.eval_mode,
                  pad_size=list(protocol.pad_size) if protocol.eval_mode == "pad" else None,
                  input_size=(list(protocol.input_size) if protocol.eval_mode == "resize"
                              else None),
                  channel_order=cfg.channel_order, arch=spec.get("arch"),
                  aspp_branches_used=spec.get("aspp_branches_used"))
  return EvalResult(confusion, tuple(choice.info.class_names), protocol, n_images, settings,
                    seconds)


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


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m advseg_jax evaluate",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Mean IoU of a segmentation checkpoint on a dataset split, computed exactly as the\n"
          "originals do (--protocol voc = AdvSemiSeg evaluate_voc.py, cityscapes = AdaptSegNet\n"
          "evaluate_cityscapes.py + compute_iou.py), with a per-class IoU table. Prints the\n"
          "protocol's mean, the other means and the corrected mean over all classes."),
      epilog=(
          "examples:\n"
          "  evaluate runs/demo                                 # workdir: its eval dataset\n"
          "  evaluate runs/voc/best_model --dataset voc_aug --flip --scales 0.75,1,1.25\n"
          "  evaluate --torch_checkpoint AdvSemiSegVOC0.125-03c6f81c.pth --arch deeplabv2 \\\n"
          "      --dataset voc_aug --output_json semi0.125.json\n"
          "  evaluate --torch_checkpoint GTA2Cityscapes_multi-ed35151c.pth \\\n"
          "      --arch deeplabv2_multi --dataset cityscapes --save_predictions preds/\n"
          "Datasets are read from --data_dir (prepare them with `python -m advseg_jax "
          "prepare`;\n'shapes' is generated on the fly)."))
  add_checkpoint_args(p)
  d = p.add_argument_group("data")
  d.add_argument("--dataset",
                 help="dataset to evaluate on: voc_aug, cityscapes, gta5, synthia/16, "
                      "synthia/13, shapes/source, shapes/target (default: the eval dataset "
                      "recorded in the checkpoint). A 13/16-class SYNTHIA model on cityscapes "
                      "is scored on its 13/16 classes")
  d.add_argument("--split",
                 help="split to evaluate (default: the checkpoint's eval split, else "
                      "validation; 'val' works; TFDS slices such as 'validation[:100]' too)")
  d.add_argument("--data_dir", help="TFDS data directory (default ~/tensorflow_datasets)")
  e = p.add_argument_group("protocol")
  e.add_argument("--protocol", choices=PROTOCOLS, default="auto",
                 help="voc: pad to 505x505, upsample to the padded size, crop, mean over "
                      "classes with TP > 0; cityscapes: resize the input to 1024x512, upsample "
                      "to the full label size, nanmean; auto (default): the checkpoint's own "
                      "eval settings for its eval dataset, else voc for voc_aug, native size "
                      "+ nanmean for shapes, cityscapes otherwise")
  e.add_argument("--mean_mode", choices=MEAN_MODES, default="auto",
                 help="headline mIoU: voc (classes with TP > 0), nanmean (classes present in "
                      "gt or prediction), all (corrected: every class, 0/0 = 0); auto "
                      "(default) = the protocol's. All three are printed anyway")
  e.add_argument("--pad_size", type=parse_hw, metavar="H,W",
                 help="pad images bottom/right to this size, voc style (default 505,505 for "
                      "the voc protocol)")
  e.add_argument("--input_size", type=parse_hw, metavar="H,W",
                 help="cityscapes protocol: network input size (default 512,1024)")
  e.add_argument("--flip", action="store_true",
                 help="also predict the horizontally flipped image and average the softmax "
                      "(not in the originals)")
  e.add_argument("--scales", type=parse_scales, default=(1.0,), metavar="S[,S...]",
                 help="multi-scale testing: input scale factors whose softmax outputs are "
                      "averaged, e.g. 0.75,1,1.25 (default 1 = the originals)")
  e.add_argument("--batch_size", type=int, default=1,
                 help="images per forward pass (default 1 like the originals; results do not "
                      "depend on it)")
  o = p.add_argument_group("output")
  o.add_argument("--output_json", metavar="FILE",
                 help="also write the results (means, per-class IoU, confusion matrix, "
                      "settings) as JSON")
  o.add_argument("--save_predictions", metavar="DIR",
                 help="write each prediction as a palette PNG (pixel = class id, dataset "
                      "colours embedded) under DIR, named after the input file; the files "
                      "work as compute_iou.py prediction files")
  o.add_argument("--max_batches", type=int,
                 help="stop after this many batches (quick checks)")
  o.add_argument("--no_progress", action="store_true", help="hide the progress bar")
  return p


def _run(args: argparse.Namespace) -> int:
  if args.batch_size < 1:
    raise CLIError(f"--batch_size must be >= 1, got {args.batch_size}")
  check_checkpoint_args(args)  # the cheap checks first
  default_k = None
  if args.dataset:
    from advseg_jax import data  # pylint: disable=import-outside-toplevel
    from advseg_jax.data import registry  # pylint: disable=import-outside-toplevel
    try:
      name, cfg = registry.split_name(args.dataset)
      info = data.get_info(name, cfg)
    except (KeyError, ValueError) as e:
      raise CLIError(f"--dataset: {one_line(e).strip(chr(34))}") from None
    if args.torch_checkpoint and args.num_classes is None:
      default_k = info.num_classes
    data.ensure_prepared(name, args.data_dir, cfg)  # before the (slow) checkpoint load
  if args.output_json:
    parent = os.path.dirname(os.path.abspath(args.output_json))
    if not os.path.isdir(parent):
      raise CLIError(f"--output_json: directory {parent} does not exist")
  variables, spec, source = load_from_args(args, default_k)
  choice = choose_dataset(args.dataset, spec)
  protocol = resolve_protocol(args.protocol, spec, choice, pad_size=args.pad_size,
                              input_size=args.input_size, mean_mode=args.mean_mode)
  split = args.split or default_split(spec, choice)
  result = evaluate(variables, spec, choice, protocol, split=split, data_dir=args.data_dir,
                    batch_size=args.batch_size, flip=args.flip, scales=args.scales,
                    save_dir=args.save_predictions, show_progress=not args.no_progress,
                    max_batches=args.max_batches)
  if result.num_images == 0:
    raise CLIError(f"split {split!r} of {choice.full_name} has no images")
  size = {"pad": f", padded to {protocol.pad_size}",
          "resize": f", input resized to {protocol.input_size}"}.get(protocol.eval_mode, "")
  print(f"checkpoint: {source}")
  print(f"dataset: {choice.full_name} {split}, {result.num_images} images, protocol "
        f"{protocol.name}{size}, flip {args.flip}, scales {list(args.scales)}")
  print(format_table(result))
  if args.output_json:
    doc = result.to_json()
    doc["checkpoint"] = source
    with open(args.output_json, "w") as f:
      json.dump(doc, f, indent=2)
      f.write("\n")
    print(f"wrote {args.output_json}")
  if args.save_predictions:
    print(f"wrote {result.num_images} prediction PNGs under {args.save_predictions}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`evaluate` command; returns the exit code (0 ok, 2 on a user error, one `error:` line)."""
  args, rc = parse(build_parser(), argv, "evaluate")
  if args is None:
    return rc
  return run_cli(_run, args)


if __name__ == "__main__":
  sys.exit(main())
