"""`python -m advseg_jax predict INPUT... -c CHECKPOINT -o DIR`: label PNGs and colour
overlays for images of any size (`advseg_jax.inference.predict`).

Exit codes: 0 written (or --help), 2 a usage error or a problem the user must fix (one
`error:` line).
"""

from __future__ import annotations

import sys
import time
from typing import List, Optional, Sequence, Tuple

from absl import flags

from advseg_jax.cli import common, outputs
from advseg_jax.data.image_io import BadExampleError
from advseg_jax.inference import predict as pr

DOC = common.Help(
    usage="usage: python -m advseg_jax predict INPUT [INPUT...] -c CHECKPOINT -o DIR [flags]",
    description=(
        "Segment images of any size with a checkpoint. For each image NAME it writes\n"
        "NAME.png (palette PNG: pixel = class id, dataset colours embedded) and\n"
        "NAME_overlay.png (colours blended over the image) under --output_dir; folder\n"
        "inputs keep their sub-folders. Preprocessing (channel order, mean) comes from the\n"
        "checkpoint; predictions are upsampled back to the original image size."),
    positionals=[("INPUT", "image files, folders (searched recursively) or quoted glob "
                           "patterns")],
    epilog=(
        "examples:\n"
        "  predict photo.jpg -c runs/voc/best_model -o out/\n"
        "  predict photos/ 'more/*.png' -c runs/demo -o out/ --batch_size 8 --flip\n"
        "  predict frames/ --torch_checkpoint GTA2Cityscapes_multi-ed35151c.pth \\\n"
        "      --arch deeplabv2_multi --num_classes 19 -o out/   # resized to 1024x512"))


def _define_inference_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("mode", "auto", pr.MODES,
                    "pad: pad each image bottom/right (with the mean colour) to a multiple of "
                    "--pad_multiple, predict, crop (like evaluate_voc.py); native: run at the "
                    "exact image size; resize: resize to --input_size, upsample the output to "
                    "the image size (like evaluate_cityscapes.py); auto: resize for "
                    "Cityscapes/GTA5/SYNTHIA models, pad otherwise", flag_values=fv)
  flags.DEFINE_integer("pad_multiple", 32,
                       "pad mode: round H and W up to this multiple, so images of similar size "
                       "share a compiled shape and a batch", lower_bound=1, flag_values=fv)
  common.define_parsed(fv, "input_size", None,
                       "H,W: resize mode: network input size (default: the checkpoint's eval "
                       "resize size, else 512,1024)", common.parse_hw, "H,W")
  flags.DEFINE_integer("batch_size", 4, "images per forward pass (images are grouped by size)",
                       lower_bound=1, flag_values=fv)
  flags.DEFINE_bool("flip", False,
                    "average the softmax with that of the horizontally flipped image",
                    flag_values=fv)
  common.define_parsed(fv, "scales", (1.0,),
                       "S[,S...]: average the softmax over these input scales, e.g. "
                       "0.75,1,1.25", common.parse_scales, "scales")


def define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("checkpoint", None,
                      "a model directory (WORKDIR/final_model, WORKDIR/best_model, a "
                      "`convert` output) or a training WORKDIR (its final model: "
                      "final_model/, else the latest checkpoint); or use --torch_checkpoint",
                      short_name="c", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "where to write the PNGs (created if missing)",
                      short_name="o", flag_values=fv)
  common.define_checkpoint_flags(fv)
  flags.DEFINE_string("dataset", None,
                      "dataset whose class names / palette to use (default: the checkpoint's "
                      "dataset, else guessed from the class count: 21 voc_aug, 19 cityscapes, "
                      "16/13 synthia, 5 shapes)", flag_values=fv)
  _define_inference_flags(fv)
  flags.DEFINE_bool("no_overlay", False, "do not write NAME_overlay.png", flag_values=fv)
  flags.DEFINE_float("alpha", 0.5, "overlay opacity of the label colours, 0..1",
                     lower_bound=0.0, upper_bound=1.0, flag_values=fv)
  flags.DEFINE_bool("save_confidence", False,
                    "also write NAME_confidence.png: the max softmax probability, 0-255 grey",
                    flag_values=fv)
  flags.DEFINE_bool("overwrite", False,
                    "redo images whose outputs exist (default: skip them, so that a rerun "
                    "continues where an interrupted one stopped)", flag_values=fv)
  flags.DEFINE_bool("skip_bad", False,
                    "skip images that cannot be read (each is reported on stderr) instead of "
                    "stopping at the first", flag_values=fv)
  flags.DEFINE_bool("no_progress", False, "hide the progress bar", flag_values=fv)
  flags.mark_flag_as_required("output_dir", flag_values=fv)
  return fv


def _images(fv: flags.FlagValues, inputs: List[str], skipped: pr.Skipped
            ) -> Tuple[List[pr.InputImage], int]:
  """The images still to predict and how many were left out because their outputs exist
  (unless --overwrite)."""
  try:
    images = pr.find_images(inputs, exclude_dir=fv.output_dir,
                            skipped=skipped if fv.skip_bad else None)
  except BadExampleError as e:
    raise BadExampleError(e.file_name, f"{e.problem}; pass --skip_bad to skip such "
                                       f"images") from None
  if fv.overwrite:
    return images, 0
  todo = [im for im in images if not pr.outputs_complete(
      fv.output_dir, im.rel, overlay=not fv.no_overlay, confidence=fv.save_confidence)]
  return todo, len(images) - len(todo)


def _run(fv: flags.FlagValues, inputs: List[str]) -> int:
  if not inputs:
    raise common.UsageError("no INPUT given: image files, folders or glob patterns")
  outputs.check_output_dir("--output_dir", fv.output_dir)
  skipped: pr.Skipped = []
  images, done = _images(fv, inputs, skipped)
  if images:
    default_k = None
    if fv.torch_checkpoint and fv.num_classes is None and fv.dataset:
      default_k = pr.dataset_classes(fv.dataset)
    variables, spec, source = common.load_from_flags(fv, fv.checkpoint, default_k)
    _, palette, dataset = pr.choose_palette(fv.dataset, spec)
    mode, input_size = pr.resolve_mode(fv.mode, dataset, spec, fv.input_size)
    bar = lambda plan, total: common.progress(  # noqa: E731
        plan, total=total, desc="predict", enabled=not fv.no_progress)
    start, unlisted = time.time(), len(skipped)
    batches = pr.predict_images(
        variables, spec, images, fv.output_dir, mode=mode, input_size=input_size,
        palette=palette, batch_size=fv.batch_size, pad_multiple=fv.pad_multiple,
        flip=fv.flip, scales=fv.scales, overlay_alpha=None if fv.no_overlay else fv.alpha,
        save_confidence=fv.save_confidence, progress=bar,
        skipped=skipped if fv.skip_bad else None)
    print(f"checkpoint: {source}")
    print(f"wrote {len(images) - (len(skipped) - unlisted)} label PNGs"
          + ("" if fv.no_overlay else " and overlays") + f" under {fv.output_dir} ({mode} "
          f"mode, {batches} batches, {time.time() - start:.1f} s)")
  if done:
    print(f"skipped {done} images whose outputs exist under {fv.output_dir} (pass "
          f"--overwrite to redo them)")
  for path, problem in skipped:
    print(f"warning: skipped {path}: {problem}", file=sys.stderr)
  if skipped:
    print(f"skipped {len(skipped)} images that cannot be read (listed on stderr)")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`predict` command; returns the exit code (0 ok, 2 on a user error, one `error:` line)."""
  return common.run_command(argv, "predict", define_flags(), DOC, _run)


if __name__ == "__main__":
  sys.exit(main())
