"""`python -m advseg_jax prepare NAME`: build a dataset into TFDS array_record files.

Exit codes: 0 prepared (or already prepared), 1 the data is incomplete or bad (one `error:`
line naming the file or folder), 2 a usage error.
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional, Sequence

import tensorflow_datasets as tfds
from absl import flags

from advseg_jax.cli import common
from advseg_jax.data import registry
from advseg_jax.data.builders.common import LayoutError
from advseg_jax.data.image_io import BadExampleError
from advseg_jax.data.prepare import prepare_dataset

ERRORS = (LayoutError, BadExampleError, FileNotFoundError, KeyError, ValueError)
MAX_LISTED = 5  # examples named on each summary line of adjusted examples


def _doc() -> common.Help:
  names = ", ".join(registry.dataset_names())
  return common.Help(
      usage="usage: python -m advseg_jax prepare NAME [--manual_dir DIR] [--data_dir DIR] "
            "[flags]",
      description=(
          "Build a dataset into TFDS array_record files that the grain pipelines read (no\n"
          f"TensorFlow needed). Datasets: {names}.\n'shapes' is generated procedurally and "
          "needs no --manual_dir."),
      positionals=[("NAME", f"dataset to prepare: {names} (a builder config may be "
                            "appended, e.g. synthia/13)")],
      epilog=(
          "expected --manual_dir layouts:\n"
          "  voc_aug:    JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png,\n"
          "              ImageSets/SegmentationAug/{train_aug,val}.txt (AdvSemiSeg lists)\n"
          "  cityscapes: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and\n"
          "              gtFine/{train,val}/<city>/*_gtFine_labelIds.png,\n"
          "              or leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip\n"
          "  gta5:       images/<name>.png, labels/<name>.png, optional train.txt;\n"
          "              as AdaptSegNet does, a pair of different sizes is resized to\n"
          "              1280x720 and unknown label ids become 255 (both counted)\n"
          "  synthia:    RGB/<name>.png, GT/LABELS/<name>.png, optional train.txt\n"
          "  stanford_background: images/<name>.jpg, labels/<name>.regions.txt\n"
          "              (the extracted iccv09Data folder); builder config k = 0..4 tests\n"
          "              on fold k of a seeded 5-fold split (572 train / 143 test)"))


def define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("manual_dir", None,
                      "folder with the raw downloaded files in the layout below (default: "
                      "<data_dir>/downloads/manual)", flag_values=fv)
  flags.DEFINE_string("data_dir", None,
                      "TFDS data dir to write to (default: ~/tensorflow_datasets)",
                      flag_values=fv)
  flags.DEFINE_string("config", None,
                      "builder config to prepare (synthia: 16 or 13; shapes: source or "
                      "target; stanford_background: the test fold, 0..4); default: all "
                      "configs of the dataset", flag_values=fv)
  flags.DEFINE_bool("overwrite", False,
                    "rebuild even if already prepared; the old version is replaced only after "
                    "the new one is complete", flag_values=fv)
  flags.DEFINE_bool("skip_bad_examples", False,
                    "log and skip corrupt, size-mismatched, missing or unmappable examples "
                    "instead of stopping at the first one; a count is printed at the end",
                    flag_values=fv)
  flags.DEFINE_integer("num_threads", None,
                       "threads decoding and checking examples (default: min(8, CPUs))",
                       flag_values=fv)
  flags.DEFINE_bool("no_progress", False, "hide the progress bars", flag_values=fv)
  flags.DEFINE_bool("verbose", False, "debug logging and full tracebacks", flag_values=fv)
  return fv


def _print_result(label: str, res) -> None:
  counts = ", ".join(f"{k}: {v}" for k, v in sorted(res.num_examples.items()))
  state = "already prepared" if res.reused else "prepared"
  print(f"{label}: {state} in {res.path} ({counts})")
  for kind, examples in sorted(res.adjusted.items()):
    shown = ", ".join(examples[:MAX_LISTED]) + (", ..." if len(examples) > MAX_LISTED else "")
    print(f"{label}: {len(examples)} {kind}" + (f": {shown}" if examples else ""))
  n_skipped = sum(len(v) for v in res.skipped.values())
  if n_skipped:
    print(f"{label}: skipped {n_skipped} bad examples:")
    for split, errs in res.skipped.items():
      for e in errs:
        print(f"  [{split}] {e}")


def _run(fv: flags.FlagValues, positional: List[str]) -> int:
  name, cfg = positional[0], fv.config
  if "/" in name:
    name, cfg = registry.split_name(name, cfg)
  else:
    registry.split_name(name, cfg)  # validates name / config
  configs = [cfg] if cfg is not None else list(registry.CONFIG_NAMES.get(name, (None,)))
  for c in configs:
    res = prepare_dataset(name, config_name=c, data_dir=fv.data_dir, manual_dir=fv.manual_dir,
                          overwrite=fv.overwrite, skip_bad_examples=fv.skip_bad_examples,
                          num_threads=fv.num_threads)
    _print_result(name + (f"/{c}" if c else ""), res)
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`prepare` command; returns the exit code (0 ok, 1 bad / missing data, 2 usage)."""
  fv = define_flags()
  positional = common.parse_or_exit(fv, argv, "prepare", _doc())
  if isinstance(positional, int):
    return positional
  logging.basicConfig(level=logging.DEBUG if fv.verbose else logging.INFO,
                      format="%(levelname)s %(name)s: %(message)s")
  if fv.no_progress:
    tfds.disable_progress_bar()
  else:
    tfds.enable_progress_bar()
  if len(positional) != 1:
    print(f"error: expected one dataset NAME, got {positional or 'none'}", file=sys.stderr)
    return 2
  return common.run(lambda: _run(fv, positional), errors=() if fv.verbose else ERRORS,
                    error_code=1, log_level=None)


if __name__ == "__main__":
  sys.exit(main())
