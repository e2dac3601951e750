"""Segmenting images of any size: files, folders, globs -> label PNGs and colour overlays.

    images = find_images(["photos/"], exclude_dir="out/")
    mode, input_size = resolve_mode("auto", dataset, spec, None)
    predict_images(variables, spec, images, "out/", mode=mode, input_size=input_size,
                   palette=palette)

For every input image `NAME.ext` it writes, under the output directory (folder inputs keep
their sub-folders):

* `NAME.png`          -- 'P' mode PNG: pixel value = class id, the dataset palette embedded;
* `NAME_overlay.png`  -- the colour labels blended over the image (unless `overlay_alpha` is None);
* `NAME_confidence.png` -- max softmax probability as 8-bit grey (with `save_confidence`).

Preprocessing (channel order, mean and std) comes from the checkpoint's spec; predictions are always
returned at the original image size (logits upsampled bilinearly, align_corners=True).
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from advseg_jax import data, models, visualize
from advseg_jax.data import image_io
from advseg_jax.data import transforms as T
from advseg_jax.inference.evaluate import CITYSCAPES_INPUT_SIZE, prediction_path, spec_dataset
from advseg_jax.inference.predictor import make_label_fn

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MODES = ("auto", "pad", "native", "resize")
CITYSCAPES_FAMILY = ("cityscapes", "gta5", "synthia")


class PredictError(ValueError):
  """A problem with the inputs or the model the user must fix (one line)."""


@dataclasses.dataclass
class InputImage:
  path: str
  rel: str          # output name stem, relative to the output directory (no extension)
  hw: Tuple[int, int]


def _is_image(path: str) -> bool:
  return path.lower().endswith(IMAGE_EXTENSIONS)


Skipped = List[Tuple[str, str]]  # (path, problem) of images that cannot be read


def find_images(inputs: Sequence[str], exclude_dir: Optional[str] = None,
                skipped: Optional[Skipped] = None) -> List[InputImage]:
  """Expands files, folders (recursively) and glob patterns; names outputs uniquely.

  An image whose header cannot be read raises BadExampleError, or with a `skipped` list is
  appended to it and left out.
  """

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
        raise PredictError(f"{item}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
      found.extend(hits)
    elif os.path.isfile(item):
      found.append((item, os.path.basename(item)))
    elif glob.has_magic(item):
      hits = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p)
                    and _is_image(p))
      if not hits:
        raise PredictError(f"{item}: pattern matches no image files")
      found.extend((p, os.path.basename(p)) for p in hits)
    else:
      raise PredictError(f"{item}: no such file or folder")
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
    try:
      out.append(InputImage(path, stem, image_io.image_size(path, path)))
    except image_io.BadExampleError as e:
      if skipped is None:
        raise
      skipped.append((path, e.problem))
  if not out and not skipped:
    raise PredictError("no input images found")
  return out


def choose_palette(dataset: Optional[str], spec: Mapping[str, Any]):
  """`(class_names, palette, dataset name or None)` for the model's classes."""

  k = int(spec["num_classes"])
  name = dataset or spec_dataset(spec)
  if name is None:
    name = {21: "voc_aug", 19: "cityscapes", 16: "synthia/16", 13: "synthia/13",
            5: "shapes"}.get(k)
  if name is not None:
    try:
      info = data.get_info(name)
    except (KeyError, ValueError) as e:
      raise PredictError(f"dataset {name!r}: {' '.join(str(e).split())}") from None
    if info.num_classes != k:
      raise PredictError(f"the checkpoint predicts {k} classes but dataset {name} has "
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
    input_size = recorded or CITYSCAPES_INPUT_SIZE
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
  """RGB uint8 -> network input float32 (channel order, mean and std from the spec)."""

  if mode == "resize":
    image = T.resize_pil(image, tuple(input_size), "bicubic")
  std = spec.get("std_bgr")
  return T.subtract_mean(image, tuple(spec["mean_bgr"]), spec["channel_order"],
                         tuple(std) if std else None)


def output_paths(out_dir: str, rel: str) -> Dict[str, str]:
  base = prediction_path(out_dir, rel, "")
  return {"label": base + ".png", "overlay": base + "_overlay.png",
          "confidence": base + "_confidence.png"}




def outputs_complete(out_dir: str, rel: str, overlay: bool, confidence: bool) -> bool:
  """Whether every requested output of image `rel` exists. Each file is written under a
  temporary name and renamed, the label PNG last, so an existing set is complete."""
  paths = output_paths(out_dir, rel)
  wanted = ["label"] + ["overlay"] * overlay + ["confidence"] * confidence
  return all(os.path.exists(paths[k]) for k in wanted)


def _save_atomically(save: Callable[..., Any], path: str, *args: Any) -> None:
  tmp = f"{path}.partial-{os.getpid()}"
  save(tmp, *args)
  os.replace(tmp, path)


def _write_outputs(paths: Dict[str, str], raw: np.ndarray, label: np.ndarray,
                   conf: Optional[np.ndarray], palette, overlay_alpha: Optional[float]) -> None:
  """The overlay and confidence PNGs (if wanted), then the label PNG."""
  if overlay_alpha is not None:
    _save_atomically(visualize.save_rgb_png, paths["overlay"],
                     visualize.overlay(raw, label, palette, overlay_alpha))
  if conf is not None:
    _save_atomically(visualize.save_rgb_png, paths["confidence"], visualize.confidence_png(conf))
  _save_atomically(visualize.save_label_png, paths["label"], label, palette)


def _decode(group: Sequence[InputImage], skipped: Optional[Skipped]
            ) -> Tuple[List[InputImage], List[np.ndarray]]:
  """The images of `group` that decode and their RGB arrays; the others raise
  BadExampleError, or with a `skipped` list are appended to it."""
  kept, raw = [], []
  for im in group:
    try:
      raw.append(image_io.decode_image(im.path, im.path))
      kept.append(im)
    except image_io.BadExampleError as e:
      if skipped is None:
        raise
      skipped.append((im.path, e.problem))
  return kept, raw


def predict_images(variables, spec: Mapping[str, Any], images: Sequence[InputImage],
                   out_dir: str, *, mode: str, input_size: Tuple[int, int], palette,
                   batch_size: int = 4, pad_multiple: int = 32, flip: bool = False,
                   scales: Sequence[float] = (1.0,), overlay_alpha: Optional[float] = 0.5,
                   save_confidence: bool = False,
                   progress: Optional[Callable[[Iterable, int], Iterable]] = None,
                   skipped: Optional[Skipped] = None) -> int:
  """Writes the PNGs of `output_paths` for every image; returns the number of batches.

  A batch holds only the images it has (`[n <= batch_size, H, W, 3]`, no padding to
  `batch_size`). `overlay_alpha` None: no overlay; `progress(plan, total)` may wrap the
  batches; `skipped`: a list that collects images which fail to decode (else they raise).
  """
  predictor = make_label_fn(models.build(spec), flip=flip, scales=scales)
  variables = jax.device_put(dict(variables))
  plan = plan_batches(images, mode, batch_size, pad_multiple)
  os.makedirs(out_dir, exist_ok=True)
  for key, group in (progress(plan, len(plan)) if progress else plan):
    group, raw = _decode(group, skipped)
    if not group:
      continue
    xs = [preprocess(r, spec, mode, input_size) for r in raw]
    in_hw, out_hw = (input_size, key) if mode == "resize" else (key, key)
    batch = np.zeros((len(xs),) + tuple(in_hw) + (3,), np.float32)
    for i, x in enumerate(xs):
      batch[i, :x.shape[0], :x.shape[1]] = x  # bottom/right padding with 0 (= the mean)
    pred, conf = predictor(variables, batch, tuple(int(v) for v in out_hw))
    pred, conf = np.asarray(pred), np.asarray(conf)
    for i, im in enumerate(group):
      h, w = im.hw
      _write_outputs(output_paths(out_dir, im.rel), raw[i], pred[i, :h, :w],
                     conf[i, :h, :w] if save_confidence else None, palette, overlay_alpha)
  return len(plan)


def dataset_classes(name: str) -> int:
  """The class count of dataset `name`."""
  try:
    return data.get_info(name).num_classes
  except (KeyError, ValueError) as e:
    raise PredictError(f"dataset {name!r}: {' '.join(str(e).split())}") from None
