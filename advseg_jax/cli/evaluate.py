"""`python -m advseg_jax evaluate [CHECKPOINT]`: mIoU of a checkpoint on a dataset split, as
the originals compute it (`advseg_jax.inference.evaluate`).

Exit codes: 0 done (or --help), 2 a usage error or a problem the user must fix (one `error:`
line).
"""

from __future__ import annotations

import json
import sys
from typing import List, Optional, Sequence

from absl import flags

from advseg_jax import data
from advseg_jax.cli import common, outputs
from advseg_jax.data import registry
from advseg_jax.inference import bn_stats
from advseg_jax.inference import evaluate as ev
from advseg_jax.inference import loading

DOC = common.Help(
    usage="usage: python -m advseg_jax evaluate [CHECKPOINT] [--dataset NAME] [flags]",
    description=(
        "Mean IoU of a segmentation checkpoint on a dataset split, computed exactly as the\n"
        "originals do (--protocol voc = AdvSemiSeg evaluate_voc.py, cityscapes = AdaptSegNet\n"
        "evaluate_cityscapes.py + compute_iou.py), with a per-class IoU table. Prints the\n"
        "protocol's mean, the other means and the corrected mean over all classes."),
    positionals=[("CHECKPOINT", common.CHECKPOINT_HELP)],
    epilog=(
        "examples:\n"
        "  evaluate runs/demo                                 # workdir: its eval dataset\n"
        "  evaluate runs/demo --best                          # its best_model/ instead\n"
        "  evaluate runs/voc/best_model --dataset voc_aug --flip --scales 0.75,1,1.25\n"
        "  evaluate --torch_checkpoint AdvSemiSegVOC0.125-03c6f81c.pth --arch deeplabv2 \\\n"
        "      --dataset voc_aug --output_json semi0.125.json\n"
        "  evaluate --torch_checkpoint GTA2Cityscapes_multi-ed35151c.pth \\\n"
        "      --arch deeplabv2_multi --dataset cityscapes --save_predictions preds/\n"
        "Datasets are read from --data_dir (prepare them with `python -m advseg_jax prepare`;\n"
        "'shapes' is generated on the fly)."))


def _define_protocol_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("protocol", "auto", ev.PROTOCOLS,
                    "voc: pad to 505x505, upsample to the padded size, crop, mean over classes "
                    "with TP > 0; cityscapes: resize the input to 1024x512, upsample to the "
                    "full label size, nanmean; auto: the checkpoint's own eval settings for its "
                    "eval dataset, else voc for voc_aug, native size + nanmean for shapes, "
                    "cityscapes otherwise", flag_values=fv)
  flags.DEFINE_enum("mean_mode", "auto", ev.MEAN_MODES,
                    "headline mIoU: voc (classes with TP > 0), nanmean (classes present in gt "
                    "or prediction), all (corrected: every class, 0/0 = 0); auto = the "
                    "protocol's. All three are printed anyway", flag_values=fv)
  common.define_parsed(fv, "pad_size", None,
                       "H,W: pad images bottom/right to this size, voc style (default 505,505 "
                       "for the voc protocol)", common.parse_hw, "H,W")
  common.define_parsed(fv, "input_size", None,
                       "H,W: cityscapes protocol: network input size (default 512,1024)",
                       common.parse_hw, "H,W")
  flags.DEFINE_bool("flip", False,
                    "also predict the horizontally flipped image and average the softmax (not "
                    "in the originals)", flag_values=fv)
  common.define_parsed(fv, "scales", (1.0,),
                       "S[,S...]: multi-scale testing: input scale factors whose softmax "
                       "outputs are averaged, e.g. 0.75,1,1.25 (1 = the originals)",
                       common.parse_scales, "scales")
  flags.DEFINE_integer("batch_size", 1,
                       "images per forward pass (1 like the originals; results do not depend "
                       "on it)", lower_bound=1, flag_values=fv)
  flags.DEFINE_string("bn_stats_from", None,
                      "DATASET[:SPLIT]: before scoring, replace the model's BN running "
                      "statistics with statistics recomputed on these images (AdaBN; e.g. "
                      "digits_m/target:train for a source-only model; SPLIT defaults to "
                      "train; not in the originals)", flag_values=fv)
  flags.DEFINE_integer("bn_stats_images", 512,
                       "with --bn_stats_from: at most this many images (the split's first)",
                       lower_bound=2, flag_values=fv)
  flags.DEFINE_integer("bn_stats_batch_size", 8,
                       "with --bn_stats_from: images per train-mode batch; each BN's statistics "
                       "are averaged over the batches", lower_bound=2, flag_values=fv)


def define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  common.define_checkpoint_flags(fv)
  flags.DEFINE_string("dataset", None,
                      "dataset to evaluate on: voc_aug, cityscapes, gta5, synthia/16, "
                      "synthia/13, shapes/source, shapes/target (default: the eval dataset "
                      "recorded in the checkpoint). A 13/16-class SYNTHIA model on cityscapes "
                      "is scored on its 13/16 classes", flag_values=fv)
  flags.DEFINE_string("split", None,
                      "split to evaluate (default: the checkpoint's eval split, else "
                      "validation; 'val' works; TFDS slices such as 'validation[:100]' too)",
                      flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets)",
                      flag_values=fv)
  _define_protocol_flags(fv)
  flags.DEFINE_string("output_json", None,
                      "FILE: also write the results (means, per-class IoU, confusion matrix, "
                      "settings) as JSON", flag_values=fv)
  flags.DEFINE_string("save_predictions", None,
                      "DIR: write each prediction as a palette PNG (pixel = class id, dataset "
                      "colours embedded) under DIR, named after the input file; the files work "
                      "as compute_iou.py prediction files", flag_values=fv)
  flags.DEFINE_integer("max_batches", None, "stop after this many batches (quick checks)",
                       flag_values=fv)
  flags.DEFINE_bool("no_progress", False, "hide the progress bar", flag_values=fv)
  flags.DEFINE_bool("best", False,
                    "score a training WORKDIR's best_model/ (the step with the highest mIoU "
                    "on the evaluation set during training: selected on the data it is scored "
                    "on, so optimistic) instead of its final model (final_model/, else the "
                    "latest checkpoint), which the originals report", flag_values=fv)
  return fv


def _checks(fv: flags.FlagValues, checkpoint: Optional[str]) -> Optional[int]:
  """The cheap checks before the (slow) checkpoint load; the class count of --dataset when
  it is needed for --torch_checkpoint."""
  common.check_checkpoint_flags(fv, checkpoint)
  default_k = None
  if fv.dataset:
    try:
      name, cfg = registry.split_name(fv.dataset)
      info = data.get_info(name, cfg)
    except (KeyError, ValueError) as e:
      raise common.UsageError(f"--dataset: {common.one_line(e).strip(chr(34))}") from None
    if fv.torch_checkpoint and fv.num_classes is None:
      default_k = info.num_classes
    data.ensure_prepared(name, fv.data_dir, cfg)
  if fv.output_json:
    outputs.check_output_file("--output_json", fv.output_json)
  if fv.save_predictions:
    outputs.check_output_dir("--save_predictions", fv.save_predictions)
  return default_k


def _scored_model(kind: Optional[str], spec) -> Optional[str]:
  """The line naming which of a workdir's models is scored (None for a .pth)."""
  if kind is None:
    return None
  line = f"scored: the {kind} (step {spec.get('step', '?')})"
  if kind == loading.BEST or "miou" in spec:  # best_model/ records its training-time mIoU
    line += (" -- the best model, selected by its mIoU on the evaluation set during "
             "training, so this score is optimistic; the originals report the final model")
  return line


def _recompute_bn(fv: flags.FlagValues, variables, spec, protocol):
  """--bn_stats_from: (variables with recomputed BN statistics, the line that says so)."""
  dataset, _, split = fv.bn_stats_from.partition(":")
  try:
    registry.get_info(*registry.split_name(dataset))
  except (KeyError, ValueError) as e:
    raise common.UsageError(f"--bn_stats_from: {common.one_line(e).strip(chr(34))}") from None
  try:
    variables, n = bn_stats.recompute_on_split(
        variables, spec, dataset, split=split or "train", data_dir=fv.data_dir,
        input_size=protocol.input_size if protocol.eval_mode == "resize" else None,
        batch_size=fv.bn_stats_batch_size, max_images=fv.bn_stats_images)
  except bn_stats.BNStatsError as e:
    raise common.UsageError(f"--bn_stats_from {fv.bn_stats_from}: {e}") from None
  return variables, f"BN statistics: recomputed on {dataset} {split or 'train'} ({n} images)"


def _print_result(fv: flags.FlagValues, result: ev.EvalResult, source: str,
                  scored: Optional[str], bn_note: Optional[str] = None) -> None:
  protocol = result.protocol
  fill = "" if protocol.pad_fill == "mean" else f" with {protocol.pad_fill}"
  size = {"pad": f", padded to {protocol.pad_size}{fill}",
          "resize": f", input resized to {protocol.input_size}"}.get(protocol.eval_mode, "")
  print(f"checkpoint: {source}")
  if scored:
    print(scored)
  if bn_note:
    print(bn_note)
  print(f"dataset: {result.settings['dataset']} {result.settings['split']}, "
        f"{result.num_images} images, protocol {protocol.name}{size}, flip {fv.flip}, "
        f"scales {list(fv.scales)}")
  print(ev.format_table(result))
  if fv.output_json:
    doc = result.to_json()
    doc["checkpoint"] = source
    if scored:
      doc["scored"] = scored
    doc["bn_stats"] = bn_note or "stored running statistics"
    with open(fv.output_json, "w") as f:
      json.dump(doc, f, indent=2)
      f.write("\n")
    print(f"wrote {fv.output_json}")
  if fv.save_predictions:
    print(f"wrote {result.num_images} prediction PNGs under {fv.save_predictions}")


def _run(fv: flags.FlagValues, positional: List[str]) -> int:
  if len(positional) > 1:
    raise common.UsageError(f"expected at most one CHECKPOINT, got {positional}")
  checkpoint = positional[0] if positional else None
  default_k = _checks(fv, checkpoint)
  kind = None
  if fv.best and fv.torch_checkpoint:
    raise common.UsageError("--best chooses a training WORKDIR's best_model/; it does not apply "
                            "to --torch_checkpoint")
  if checkpoint and not fv.torch_checkpoint:
    kind, location = loading.choose_model(checkpoint, best=fv.best)
    checkpoint = location if kind == loading.BEST else checkpoint
  variables, spec, source = common.load_from_flags(fv, checkpoint, default_k)
  choice = ev.choose_dataset(fv.dataset, spec)
  protocol = ev.resolve_protocol(fv.protocol, spec, choice, pad_size=fv.pad_size,
                                 input_size=fv.input_size, mean_mode=fv.mean_mode)
  bn_note = None
  if fv.bn_stats_from:
    variables, bn_note = _recompute_bn(fv, variables, spec, protocol)
  split = fv.split or ev.default_split(spec, choice)
  bar = lambda batches, total: common.progress(  # noqa: E731
      batches, total=total, desc=f"evaluate {choice.full_name}", enabled=not fv.no_progress)
  result = ev.evaluate(variables, spec, choice, protocol, split=split, data_dir=fv.data_dir,
                       batch_size=fv.batch_size, flip=fv.flip, scales=fv.scales,
                       save_dir=fv.save_predictions, max_batches=fv.max_batches, progress=bar)
  if result.num_images == 0:
    raise common.UsageError(f"split {split!r} of {choice.full_name} has no images")
  _print_result(fv, result, source, _scored_model(kind, spec), bn_note)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`evaluate` command; returns the exit code (0 ok, 2 on a user error, one `error:` line)."""
  return common.run_command(argv, "evaluate", define_flags(), DOC, _run)


if __name__ == "__main__":
  sys.exit(main())
