"""`python -m advseg_jax train`: flags -> config -> `advseg_jax.train.loop.train`.

Exit codes: 0 done (or --help / --print_config), 2 a usage / config / workdir problem
(one `error:` line naming the flag, field or path), 1 the run failed while training
(non-finite loss, no readable checkpoint, ...).
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from typing import List, Optional, Sequence

import jax
from absl import flags
from ml_collections import config_flags

from advseg_jax import logging_utils
from advseg_jax.cli import common, outputs
from advseg_jax.config import validation as config_validation
from advseg_jax.data.image_io import BadExampleError
from advseg_jax.inference.evaluator import EvaluationError
from advseg_jax.train import checkpoint, diagnostics, loop, parallel

USAGE = """\
usage: python -m advseg_jax train --config configs/FILE.py[:PRESET[,runlocal]] --workdir DIR
                                  [--config.FIELD=VALUE ...] [flags]"""

DESCRIPTION = """\
Train a segmentation network with one of the originals' methods (AdvSemiSeg, AdaptSegNet,
Luc et al., or the supervised baseline). Running it again on the same --workdir resumes from
the latest complete checkpoint (same losses and parameters as an uninterrupted run).

Presets (ARG after the colon; append ',runlocal' for a tiny smoke run):
  configs/demo.py[:semi|adv|baseline|adaptseg]     embedded synthetic 'shapes' data, minutes on CPU
  configs/voc.py:{baseline,adv,semi}_{0.125,0.25,0.5,1.0}   AdvSemiSeg, PASCAL VOC
  configs/gta5_cityscapes.py:{multi,single,lsgan,multi_torch04}   AdaptSegNet
  configs/synthia_cityscapes.py:{multi,single}_{16,13}   AdaptSegNet, SYNTHIA source
  configs/luc.py:[stanford_]{basic,product,scaling}   Luc et al. image+label discriminator
  configs/iclr2018.py:{base,adv}_{1.0,0.5}|semi_0.5   the ICLR-2018 reproduction, VOC
  configs/digits.py:CELL                             digits_m benchmark (needs the digits extra)

Any config field can be overridden, e.g. --config.num_steps=1000 --config.method.lambda_adv=0.02
--config.data.crop_size="(321,321)" --config.init.checkpoint=resnet101COCO-41f33a49.pth;
--print_config shows every field of the chosen preset.

Workdir: checkpoints/ (orbax, last N), best_model/ and final_model/ (model directories for
evaluate / predict), metrics.jsonl, tensorboard/, config.json, split.json, summary.md/.json,
train.log (other libraries' messages), train.lock (one run at a time).

Override any config field with --config.FIELD=VALUE (nested fields with dots).
"""

def define_flags(argv: Sequence[str] = ()) -> flags.FlagValues:
  """The train flags; `argv` supplies the --config.FIELD overrides config_flags defines."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
      "config", None,
      "preset file and argument, configs/FILE.py[:ARG]; override fields with "
      "--config.FIELD=VALUE", flag_values=fv, lock_config=True,
      sys_argv=["train"] + list(argv))  # the override flags come from these, not sys.argv
  flags.DEFINE_string("workdir", None,
                      "run directory: checkpoints, logs, exported models (resumed if it "
                      "holds a checkpoint)", flag_values=fv)
  flags.DEFINE_bool("allow_config_change", False,
                    "resume even if the config differs from the one saved in --workdir "
                    "(the differing fields are logged)", flag_values=fv)
  flags.DEFINE_bool("print_config", False,
                    "print the resolved config (after overrides) and exit", flag_values=fv)
  flags.DEFINE_string("coordinator_address", None,
                      "multi-host: host:port of process 0 (or env JAX_COORDINATOR_ADDRESS)",
                      flag_values=fv)
  flags.DEFINE_integer("num_processes", None,
                       "multi-host: number of processes (or env JAX_NUM_PROCESSES)",
                       flag_values=fv)
  flags.DEFINE_integer("process_id", None,
                       "multi-host: index of this process (or env JAX_PROCESS_ID)",
                       flag_values=fv)
  flags.DEFINE_enum("log_level", "info", ["debug", "info", "warning", "error"],
                    "verbosity of the log lines on stderr", flag_values=fv)
  return fv


DOC = common.Help(USAGE, DESCRIPTION)
LOG_FILE = "train.log"


def parse(argv: Sequence[str]) -> flags.FlagValues:
  """Parses `argv` (without the program / command name); returns the FlagValues with the
  config loaded. Raises common.UsageError."""
  fv = define_flags(argv)
  try:
    rest = common.parse(fv, argv, "train")
    config = fv["config"].value  # a config file that cannot be read raises on first use
    if config is not None:
      list(config.keys())
  except AttributeError as e:  # an override of a field the config does not have
    cause = e.__context__ or e  # ConfigDict's KeyError: the field and a suggestion
    raise common.UsageError(f"unknown config field {common.one_line(cause.args[0])}") from None
  except (OSError, ImportError, SyntaxError) as e:
    raise common.UsageError(f"--config: could not load the config ({common.one_line(e)})"
                            ) from None
  if rest:
    raise common.UsageError(f"unexpected arguments {rest}; flags look like --name=value")
  return fv


def main(argv: Optional[List[str]] = None) -> int:
  argv = common.strip_command(argv, "train")
  if any(a in common.HELP_ARGS for a in argv):
    print(common.help_text(define_flags(), DOC), end="")
    return 0
  try:
    fv = parse(argv)
  except common.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  config = fv["config"].value
  if config is None:
    print("error: --config is required, e.g. --config configs/demo.py "
          "(see --help for the presets)", file=sys.stderr)
    return 2
  if fv.print_config:
    print(config)
    return 0
  if not fv.workdir:
    print("error: --workdir is required (the run directory; an existing one is resumed)",
          file=sys.stderr)
    return 2
  logging_utils.setup_console_logging(getattr(logging, fv.log_level.upper()))
  return run(config, fv.workdir, allow_config_change=fv.allow_config_change,
             coordinator_address=fv.coordinator_address, num_processes=fv.num_processes,
             process_id=fv.process_id, config_source=fv["config"].config_filename)


def _report_failure(message: str, details: logging_utils.LibraryLog) -> None:
  """Writes `error: message` as the last line of stderr, in one piece, with where the
  libraries' messages went.

  After a failed asynchronous checkpoint write, orbax's and tensorstore's background threads
  still report their aborted writes (to `details`' file) and asyncio logs futures nobody
  awaited when they are garbage-collected. Let them finish first, so that the one line that
  says what happened and what to do comes last.
  """
  gc.collect()
  time.sleep(0.5)
  gc.collect()
  if details.has_details():
    message += f" (details: {details.path})"
  sys.stderr.flush()
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  # What asyncio still logs while the process exits (tasks of the aborted write destroyed
  # unawaited) repeats what the line above reports.
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def _log_file(workdir: str) -> str:
  """WORKDIR/train.log (process 0) or train.process<N>.log: the libraries' messages."""
  index = jax.process_index()
  return os.path.join(workdir, LOG_FILE if index == 0 else f"train.process{index}.log")


def run(config, workdir: str, *, allow_config_change: bool = False,
        coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
        process_id: Optional[int] = None, config_source: Optional[str] = None) -> int:
  """Validates and trains; maps the known failures to one `error:` line and an exit code.
  Other libraries' log records and background-thread tracebacks go to WORKDIR/train.log."""
  try:
    parallel.initialize_distributed(coordinator_address, num_processes, process_id)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    workdir = outputs.check_output_dir("--workdir", workdir)
    par = parallel.Parallel(config.parallel.mode)
    config_validation.validate(config, num_devices=par.num_devices)
    os.makedirs(workdir, exist_ok=True)
  except (outputs.OutputPathError, config_validation.ConfigError, OSError) as e:
    print(f"error: {common.one_line(e)}", file=sys.stderr)
    return 2
  with logging_utils.LibraryLog(_log_file(workdir)) as details:
    return _train(config, workdir, details, allow_config_change=allow_config_change,
                  config_source=config_source)


def _train(config, workdir: str, details: logging_utils.LibraryLog, *,
           allow_config_change: bool, config_source: Optional[str]) -> int:
  try:
    loop.train(config, workdir, allow_config_change=allow_config_change,
               config_source=config_source)
  except (config_validation.ConfigError, checkpoint.ConfigChangeError, loop.TrainingError,
          EvaluationError, FileNotFoundError) as e:
    print(f"error: {common.one_line(e)}", file=sys.stderr)
    return 2
  except (checkpoint.CheckpointError, diagnostics.NonFiniteError) as e:
    _report_failure(common.one_line(e), details)
    return 1
  except BadExampleError as e:
    _report_failure(
        f"bad example in the data: {common.one_line(e)}. Re-create the file (and the dataset "
        "with `python -m advseg_jax prepare ... --overwrite`), or skip such examples with "
        "--config.data.skip_bad_examples=True (target_data / eval_data likewise). The "
        "checkpoints and logs written so far are unchanged.", details)
    return 1
  return 0
