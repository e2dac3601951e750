"""`python -m advseg_jax report WORKDIR`: one PNG sheet and a markdown summary of a training
workdir (`advseg_jax.report`).

Exit codes: 0 written (or --help), 2 a usage error or a workdir that cannot be reported on
(one `error:` line).
"""

from __future__ import annotations

import os
import sys
from typing import List, Optional, Sequence

from absl import flags

from advseg_jax import report
from advseg_jax.cli import common, outputs

DOC = common.Help(
    usage="usage: python -m advseg_jax report WORKDIR [flags]",
    description=(
        "Summarise a training workdir in one PNG sheet (loss curves of G and D, D's outputs\n"
        "on real and fake inputs, validation mIoU, and image / ground truth / prediction /\n"
        "confidence for a few validation examples) plus a markdown summary report.md."),
    positionals=[("WORKDIR", "a training workdir (holds metrics.jsonl and best_model/ / "
                             "final_model/)")],
    epilog=(
        "examples:\n"
        "  report runs/demo                         # writes runs/demo/report.{png,md}\n"
        "  report runs/voc --num_examples 6 --output_dir /tmp/voc_report\n"
        "  report runs/gta2city --num_examples 0    # curves only, no dataset needed"))


def define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_string("output_dir", None,
                      "where to write report.png and report.md (default: WORKDIR)",
                      flag_values=fv)
  flags.DEFINE_string("name", "report", "file name stem of the outputs", flag_values=fv)
  flags.DEFINE_integer("num_examples", 4,
                       "validation examples in the image grid (0 = curves only, no model or "
                       "dataset needed)", lower_bound=0, flag_values=fv)
  flags.DEFINE_string("model", None,
                      "model directory for the examples (default: the workdir's final model: "
                      "final_model/, else its latest checkpoint; WORKDIR/best_model for the "
                      "best one)", flag_values=fv)
  flags.DEFINE_string("dataset", None,
                      "dataset of the examples (default: the checkpoint's dataset)",
                      flag_values=fv)
  flags.DEFINE_string("split", None,
                      "split the examples come from (default: the run's eval split, else "
                      "validation)", flag_values=fv)
  flags.DEFINE_string("data_dir", None, "TFDS data directory (default ~/tensorflow_datasets)",
                      flag_values=fv)
  flags.DEFINE_integer("dpi", 60, "resolution of the PNG (60: about 100-300 KB)",
                       lower_bound=1, flag_values=fv)
  return fv


def _run(fv: flags.FlagValues, positional: List[str]) -> int:
  if len(positional) != 1:
    raise common.UsageError(f"expected one WORKDIR, got {positional or 'none'}")
  if fv.output_dir:
    outputs.check_output_dir("--output_dir", fv.output_dir)
  elif os.path.isdir(positional[0]):
    outputs.check_output_dir("WORKDIR (where the report goes without --output_dir)",
                             positional[0])
  out = report.write_report(positional[0], output_dir=fv.output_dir, name=fv.name,
                            num_examples=fv.num_examples, model=fv.model, dataset=fv.dataset,
                            split=fv.split, data_dir=fv.data_dir, dpi=fv.dpi)
  print(f"wrote {out['png']}")
  print(f"wrote {out['md']}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`report` command; returns the exit code (0 ok, 2 on a user error, one `error:` line)."""
  return common.run_command(argv, "report", define_flags(), DOC, _run,
                            errors=common.KNOWN_ERRORS + (report.ReportError,))


if __name__ == "__main__":
  sys.exit(main())
