"""The `predict` command: images (files, folders, globs) -> label PNGs and colour overlays.

    python -m advseg_jax predict photos/ -c runs/voc/best_model -o out/
    python -m advseg_jax predict 'frames/*.png' --torch_checkpoint GTA2Cityscapes_multi-ed35151c.pth \
        --arch deeplabv2_multi --num_classes 19 -o out/ --mode resize --input_size 512,1024

For every input image `NAME.ext` it writes, under the output directory (folder inputs keep
their sub-folders):

* `NAME.png`          -- 'P' mode PNG: pixel value = class id, the dataset palette embedded;
* `NAME_overlay.png`  -- the colour labels blended over the image (unless --no_overlay);
* `NAME_confidence.png` -- max softmax probability as 8-bit grey (with --save_confidence).

Preprocessing (channel order and mean) comes from the checkpoint's spec; predictions are always
returned at the original image size (logits upsampled bilinearly, align_corners=True).
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from advseg_jax.inference import evaluate as ev

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MODES = ("auto", "pad", "native", "resize")
CITYSCAPES_FAMILY = ("cityscapes", "gta5", "synthia")


@dataclasses.dataclass
class InputImage:
  path: str
  rel: str          # output name stem, relative to the output directory (no extension)
  hw: Tuple[int, int]


def _is_image(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


def find_images(inputs: Sequence[str], exclude_dir: Optional[str] = None) -> List[InputImage]:
  """Expands files, folders (recursively) and glob patterns; names outputs uniquely."""
  from advseg_jax.data import image_io  # pylint: disable=import-outside-toplevel

  exclude = os.path.abspath(exclude_dir) + os.sep if exclude_dir else None
  found: List[Tuple[str, str]] = []  # (path, relative name)
  for item in inputs:
    if os.path.isdir(item):
      hits = []
      for root, dirs, files in os.walk(item):
        dirs.sort()
        for f in sorted(files):
          p = os.path.join(root, f)
          if _is_image(p):
            hits.append((p, os.path.relpath(p, item)))
      if not hits:
        raise ev.CLIError(f"{item}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
      found.extend(hits)
    elif os.path.isfile(item):
      found.append((item, os.path.basename(item)))
    elif glob.has_magic(item):
      hits = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p)
                    and _is_image(p))
      if not hits:
        raise ev.CLIError(f"{item}: pattern matches no image files")
      found.extend((p, os.path.basename(p)) for p in hits)
    else:
      raise ev.CLIError(f"{item}: no such file or folder")
  if exclude:
    found = [(p, r) for p, r in found if not os.path.abspath(p).startswith(exclude)]
  seen: Dict[str, int] = {}
  out: List[InputImage] = []
  done = set()
  for path, rel in found:
    key = os.path.abspath(path)
    if key in done:
      continue
    done.add(key)
    stem = os.path.splitext(rel.replace(os.sep, "/"))[0]
    n = seen.get(stem, 0)
    seen[stem] = n + 1
    if n:
      stem = f"{stem}_{n}"
    out.append(InputImage(path, stem, image_io.image_size(path, path)))
  if not out:
    raise ev.CLIError("no input images found")
  return out


def choose_palette(dataset: Optional[str], spec: Mapping[str, Any]):
  """`(class_names, palette, dataset name or None)` for the model's classes."""
  from advseg_jax import data, visualize  # pylint: disable=import-outside-toplevel

  k = int(spec["num_classes"])
  name = dataset or ev.spec_dataset(spec)
  if name is None:
    name = {21: "voc_aug", 19: "cityscapes", 16: "synthia/16", 13: "synthia/13",
            5: "shapes"}.get(k)
  if name is not None:
    try:
      info = data.get_info(name)
    except (KeyError, ValueError) as e:
      raise ev.CLIError(f"--dataset: {ev.one_line(e)}") from None
    if info.num_classes != k:
      raise ev.CLIError(f"the checkpoint predicts {k} classes but dataset {name} has "
                        f"{info.num_classes}; pass the matching --dataset")
    return tuple(info.class_names), np.asarray(info.palette, np.uint8), name
  return tuple(f"class{i}" for i in range(k)), visualize.fallback_palette(k), None


def resolve_mode(mode: str, dataset: Optional[str], spec: Mapping[str, Any],
                 input_size: Optional[Tuple[int, int]]) -> Tuple[str, Tuple[int, int]]:
  """`(mode, resize-mode input size)`; auto = how the checkpoint was evaluated in training
  (its spec's eval settings), else resize for Cityscapes-family models, pad otherwise."""
  e = spec.get("eval") if isinstance(spec.get("eval"), Mapping) else {}
  if input_size is None:
    recorded = e.get("eval_resize_size") if e.get("eval_mode") == "resize" else None
    input_size = recorded or ev.CITYSCAPES_INPUT_SIZE
  if mode != "auto":
    return mode, tuple(input_size)
  if e.get("eval_mode") in ("pad", "none"):
    return "pad", tuple(input_size)
  base = (dataset or "").split("/")[0]
  return ("resize" if e.get("eval_mode") == "resize" or base in CITYSCAPES_FAMILY
          else "pad"), tuple(input_size)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def plan_batches(images: Sequence[InputImage], mode: str, batch_size: int, pad_multiple: int
                 ) -> List[Tuple[Tuple[int, int], List[InputImage]]]:
  """Groups images that can share one forward pass: `[(group size, images)]`.

  pad: padded to the group's size (H, W rounded up to `pad_multiple`); native: equal sizes;
  resize: equal original sizes (the output is upsampled to it).
  """
  groups: Dict[Tuple[int, int], List[InputImage]] = {}
  for im in images:
    h, w = im.hw
    key = (_round_up(h, pad_multiple), _round_up(w, pad_multiple)) if mode == "pad" else (h, w)
    groups.setdefault(key, []).append(im)
  plan = []
  for key in sorted(groups):
    members = groups[key]
    for i in range(0, len(members), batch_size):
      plan.append((key, members[i:i + batch_size]))
  return plan


def preprocess(image: np.ndarray, spec: Mapping[str, Any], mode: str,
               input_size: Optional[Tuple[int, int]]) -> np.ndarray:
  """RGB uint8 -> network input float32 (channel order + mean from the spec)."""
  from advseg_jax.data import transforms as T  # pylint: disable=import-outside-toplevel

  if mode == "resize":
    image = T.resize_pil(image, tuple(input_size), "bicubic")
  return T.subtract_mean(image, tuple(spec["mean_bgr"]), spec["channel_order"])


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m advseg_jax predict",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Segment images of any size with a checkpoint. For each image NAME it writes\n"
          "NAME.png (palette PNG: pixel = class id, dataset colours embedded) and\n"
          "NAME_overlay.png (colours blended over the image) under --output_dir; folder\n"
          "inputs keep their sub-folders. Preprocessing (channel order, mean) comes from the\n"
          "checkpoint; predictions are upsampled back to the original image size."),
      epilog=(
          "examples:\n"
          "  predict photo.jpg -c runs/voc/best_model -o out/\n"
          "  predict photos/ 'more/*.png' -c runs/demo -o out/ --batch_size 8 --flip\n"
          "  predict frames/ --torch_checkpoint GTA2Cityscapes_multi-ed35151c.pth \\\n"
          "      --arch deeplabv2_multi --num_classes 19 -o out/   # resized to 1024x512"))
  p.add_argument("inputs", nargs="+", metavar="INPUT",
                 help="image files, folders (searched recursively) or quoted glob patterns")
  p.add_argument("-c", "--checkpoint",
                 help="a model directory (WORKDIR/best_model, a `convert` output) or a "
                      "training WORKDIR; or use --torch_checkpoint")
  p.add_argument("-o", "--output_dir", required=True,
                 help="where to write the PNGs (created if missing)")
  ev.add_checkpoint_args(p, positional=False)
  g = p.add_argument_group("inference")
  g.add_argument("--dataset",
                 help="dataset whose class names / palette to use (default: the checkpoint's "
                      "dataset, else guessed from the class count: 21 voc_aug, 19 cityscapes, "
                      "16/13 synthia, 5 shapes)")
  g.add_argument("--mode", choices=MODES, default="auto",
                 help="pad: pad each image bottom/right (with the mean colour) to a multiple of "
                      "--pad_multiple, predict, crop (like evaluate_voc.py); native: run at the "
                      "exact image size; resize: resize to --input_size, upsample the output "
                      "to the image size (like evaluate_cityscapes.py); auto (default): resize "
                      "for Cityscapes/GTA5/SYNTHIA models, pad otherwise")
  g.add_argument("--pad_multiple", type=int, default=32,
                 help="pad mode: round H and W up to this multiple, so images of similar size "
                      "share a compiled shape and a batch (default 32)")
  g.add_argument("--input_size", type=ev.parse_hw, metavar="H,W",
                 help="resize mode: network input size (default: the checkpoint's eval "
                      "resize size, else 512,1024)")
  g.add_argument("--batch_size", type=int, default=4,
                 help="images per forward pass (images are grouped by size; default 4)")
  g.add_argument("--flip", action="store_true",
                 help="average the softmax with that of the horizontally flipped image")
  g.add_argument("--scales", type=ev.parse_scales, default=(1.0,), metavar="S[,S...]",
                 help="average the softmax over these input scales, e.g. 0.75,1,1.25")
  o = p.add_argument_group("output")
  o.add_argument("--no_overlay", action="store_true", help="do not write NAME_overlay.png")
  o.add_argument("--alpha", type=float, default=0.5,
                 help="overlay opacity of the label colours, 0..1 (default 0.5)")
  o.add_argument("--save_confidence", action="store_true",
                 help="also write NAME_confidence.png: the max softmax probability, 0-255 grey")
  o.add_argument("--overwrite", action="store_true",
                 help="replace existing output files (default: refuse)")
  o.add_argument("--no_progress", action="store_true", help="hide the progress bar")
  return p


def output_paths(out_dir: str, rel: str) -> Dict[str, str]:
  base = ev.prediction_path(out_dir, rel, "")
  return {"label": base + ".png", "overlay": base + "_overlay.png",
          "confidence": base + "_confidence.png"}


def run(args: argparse.Namespace) -> Dict[str, Any]:
  import jax  # pylint: disable=import-outside-toplevel

  from advseg_jax import model_io, visualize  # pylint: disable=import-outside-toplevel
  from advseg_jax.data import image_io  # pylint: disable=import-outside-toplevel

  if args.batch_size < 1:
    raise ev.CLIError(f"--batch_size must be >= 1, got {args.batch_size}")
  if args.pad_multiple < 1:
    raise ev.CLIError(f"--pad_multiple must be >= 1, got {args.pad_multiple}")
  if not 0.0 <= args.alpha <= 1.0:
    raise ev.CLIError(f"--alpha must be in [0, 1], got {args.alpha}")
  if os.path.isfile(args.output_dir):
    raise ev.CLIError(f"{args.output_dir}: is a file, --output_dir must be a folder")
  images = find_images(args.inputs, exclude_dir=args.output_dir)
  if not args.overwrite:
    for im in images:
      path = output_paths(args.output_dir, im.rel)["label"]
      if os.path.exists(path):
        raise ev.CLIError(f"{path}: exists; pass --overwrite or another --output_dir")
  default_k = None
  if args.torch_checkpoint and args.num_classes is None and args.dataset:
    default_k = _dataset_classes(args.dataset)
  variables, spec, source = ev.load_from_args(args, default_k)
  class_names, palette, dataset = choose_palette(args.dataset, spec)
  mode, input_size = resolve_mode(args.mode, dataset, spec, args.input_size)

  model = model_io.build_from_spec(dict(spec))
  predictor = ev.make_batch_predictor(model, flip=args.flip, scales=args.scales)
  variables = jax.device_put(dict(variables))
  plan = plan_batches(images, mode, args.batch_size, args.pad_multiple)
  os.makedirs(args.output_dir, exist_ok=True)
  start = time.time()
  written = 0
  for key, group in ev.progress(plan, total=len(plan), desc="predict",
                                enabled=not args.no_progress):
    raw = [image_io.decode_image(im.path, im.path) for im in group]
    xs = [preprocess(r, spec, mode, input_size) for r in raw]
    if mode == "resize":
      in_hw, out_hw = input_size, key
    else:
      in_hw = out_hw = key
    batch = np.zeros((args.batch_size,) + tuple(in_hw) + (3,), np.float32)
    for i, x in enumerate(xs):
      batch[i, :x.shape[0], :x.shape[1]] = x  # bottom/right padding with 0 (= the mean)
    pred, conf = predictor(variables, batch, tuple(int(v) for v in out_hw))
    pred, conf = np.asarray(pred), np.asarray(conf)
    for i, im in enumerate(group):
      h, w = im.hw
      label = pred[i, :h, :w]
      paths = output_paths(args.output_dir, im.rel)
      visualize.save_label_png(paths["label"], label, palette)
      if not args.no_overlay:
        visualize.save_rgb_png(paths["overlay"],
                               visualize.overlay(raw[i], label, palette, args.alpha))
      if args.save_confidence:
        visualize.save_rgb_png(paths["confidence"], visualize.confidence_png(conf[i, :h, :w]))
      written += 1
  return dict(images=written, seconds=time.time() - start, mode=mode, source=source,
              dataset=dataset, class_names=class_names, batches=len(plan))


def _dataset_classes(name: str) -> int:
  from advseg_jax import data  # pylint: disable=import-outside-toplevel
  try:
    return data.get_info(name).num_classes
  except (KeyError, ValueError) as e:
    raise ev.CLIError(f"--dataset: {ev.one_line(e)}") from None


def _run(args: argparse.Namespace) -> int:
  out = run(args)
  print(f"checkpoint: {out['source']}")
  print(f"wrote {out['images']} label PNGs" + ("" if args.no_overlay else " and overlays")
        + f" under {args.output_dir} ({out['mode']} mode, {out['batches']} batches, "
        f"{out['seconds']:.1f} s)")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`predict` command; returns the exit code (0 ok, 2 on a user error, one `error:` line)."""
  args, rc = ev.parse(build_parser(), argv, "predict")
  if args is None:
    return rc
  return ev.run_cli(_run, args)


if __name__ == "__main__":
  sys.exit(main())
