"""`python -m advseg_jax train`: flags -> config -> `advseg_jax.train.loop.train`.

Exit codes: 0 done (or --help / --print_config), 2 a usage / config / workdir problem
(one `error:` line naming the flag, field or path), 1 the run failed while training
(non-finite loss, no readable checkpoint, ...).
"""

from __future__ import annotations

import logging
import re
import sys
from typing import List, Optional, Sequence

HELP = """\
usage: python -m advseg_jax train --config configs/FILE.py[:PRESET[,runlocal]] --workdir DIR
                                  [--config.FIELD=VALUE ...] [flags]

Train a segmentation network with one of the originals' methods (AdvSemiSeg, AdaptSegNet,
Luc et al., or the supervised baseline). Running it again on the same --workdir resumes from
the latest complete checkpoint (same losses and parameters as an uninterrupted run).

Presets (ARG after the colon; append ',runlocal' for a tiny smoke run):
  configs/demo.py[:semi|adv|baseline|adaptseg]     embedded synthetic 'shapes' data, minutes on CPU
  configs/voc.py:{baseline,adv,semi}_{0.125,0.25,0.5,1.0}   AdvSemiSeg, PASCAL VOC
  configs/gta5_cityscapes.py:{multi,single,lsgan,multi_torch04}   AdaptSegNet
  configs/synthia_cityscapes.py:{multi,single}_{16,13}   AdaptSegNet, SYNTHIA source
  configs/luc.py:{basic,product,scaling}            Luc et al. image+label discriminator

Any config field can be overridden, e.g. --config.num_steps=1000 --config.method.lambda_adv=0.02
--config.data.crop_size="(321,321)" --config.init.checkpoint=resnet101COCO-41f33a49.pth;
--print_config shows every field of the chosen preset.

Workdir: checkpoints/ (orbax, last N), best_model/ and final_model/ (model directories for
evaluate / predict), metrics.jsonl, tensorboard/, config.json, split.json, summary.md/.json.

flags:
"""


class UsageError(Exception):
  """A command-line problem (exit 2)."""


def _define_flags(argv: Sequence[str] = ()):
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

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


FLAG_ORDER = ("config", "workdir", "allow_config_change", "print_config",
              "coordinator_address", "num_processes", "process_id", "log_level")


def help_text(fv) -> str:
  lines = [HELP.rstrip("\n")]
  for name in FLAG_ORDER:
    f = fv[name]
    default = "" if f.default is None else f" (default: {f.default!r})"
    kind = "" if f.boolean else "=VALUE"
    lines.append(f"  --{name}{kind}")
    lines.append(f"      {f.help}{default}")
  lines.append("  --config.FIELD=VALUE")
  lines.append("      override one config field (nested fields with dots)")
  return "\n".join(lines) + "\n"


def _unknown_field_message(e: BaseException, argv: Sequence[str]) -> str:
  text = " ".join(str(e).replace("\\n", " ").split())
  m = (re.search(r'instead of "([^"]+)"', text)
       or re.search(r"([A-Za-z_][A-Za-z0-9_]*)", text.replace("\\'", "'")))
  field = m.group(1) if m else None
  hint = re.search(r'Did you mean "([^"]+)"', text)
  flag = next((a.split("=", 1)[0] for a in argv if field and a.startswith("--config.")
               and re.search(rf"\.{re.escape(field)}(=|$)", a.split("=", 1)[0] + "=")), None)
  where = flag or "--config.*"
  msg = f"{where}: unknown config field {field!r}" if field else f"{where}: {text}"
  if hint:
    msg += f" (did you mean {hint.group(1)!r}?)"
  return msg


def _short(e: BaseException) -> str:
  text = " ".join(str(e).split())
  return text if len(text) < 1200 else text[:1200] + "..."


def config_argument(argv: Sequence[str]) -> Optional[str]:
  """The value of --config (`--config=X` or `--config X`), if given."""
  for i, a in enumerate(argv):
    if a.startswith(("--config=", "-config=")):
      return a.split("=", 1)[1]
    if a in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse(argv: Sequence[str]):
  """Parses `argv` (without the program / command name); returns the FlagValues."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  fv = _define_flags(argv)
  try:
    rest = fv(["train"] + list(argv))
  except flags.Error as e:
    raw = str(e)
    if "Error whilst parsing config file" in raw or "Traceback" in raw:
      last = [l.strip() for l in raw.splitlines() if l.strip()][-1]
      raise UsageError(f"--config={config_argument(argv)}: could not load the config "
                       f"({_short(last)})") from None
    raise UsageError(_short(e)) from None
  except AttributeError as e:
    raise UsageError(_unknown_field_message(e, argv)) from None
  except (OSError, ImportError, SyntaxError, ValueError, TypeError, KeyError) as e:
    cause = e.__cause__ or e.__context__
    detail = _short(cause) if cause is not None else _short(e)
    path = config_argument(argv)
    raise UsageError(f"--config={path}: could not load the config ({detail})") from None
  if len(rest) > 1:
    raise UsageError(f"unexpected arguments {rest[1:]}; flags look like --name=value")
  try:
    cfg = fv["config"].value  # loaded lazily: a failed load raises on first use
    if cfg is not None:
      list(cfg.keys())
  except (OSError, ImportError, SyntaxError, ValueError, TypeError, KeyError) as e:
    last = [l.strip() for l in str(e).splitlines() if l.strip()]
    raise UsageError(f"--config={config_argument(argv)}: could not load the config "
                     f"({_short(last[-1] if last else e)})") from None
  return fv


def main(argv: Optional[List[str]] = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(a in ("-h", "--help", "-help", "--helpfull", "help") for a in argv):
    print(help_text(_define_flags()), end="")
    return 0
  try:
    fv = parse(argv)
  except UsageError as e:
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

  from advseg_jax import logging_utils  # pylint: disable=import-outside-toplevel
  logging_utils.setup_console_logging(getattr(logging, fv.log_level.upper()))
  return run(config, fv.workdir, allow_config_change=fv.allow_config_change,
             coordinator_address=fv.coordinator_address, num_processes=fv.num_processes,
             process_id=fv.process_id, config_source=config_argument(argv))


def _report_failure(message: str) -> None:
  """Writes `error: message` as the last line of stderr, in one piece.

  After a failed asynchronous checkpoint write, orbax's and tensorstore's background threads
  still print tracebacks of their aborted writes (and asyncio logs futures nobody awaited when
  they are garbage-collected). Let them finish first, so that the one line that says what
  happened and what to do comes last and is not split by their output.
  """
  import gc  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  gc.collect()
  time.sleep(0.5)
  gc.collect()
  sys.stderr.flush()
  sys.stderr.write(f"error: {message}\n")
  sys.stderr.flush()
  # What asyncio still logs while the process exits (tasks of the aborted write destroyed
  # unawaited) repeats what the line above reports.
  logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def run(config, workdir: str, *, allow_config_change: bool = False,
        coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
        process_id: Optional[int] = None, config_source: Optional[str] = None,
        argv: Sequence[str] = ()) -> int:
  """Validates and trains; maps the known failures to one `error:` line and an exit code."""
  from advseg_jax.train import checkpoint  # pylint: disable=import-outside-toplevel
  from advseg_jax.config import validation as config_validation  # pylint: disable=import-outside-toplevel
  from advseg_jax.train import diagnostics  # pylint: disable=import-outside-toplevel
  from advseg_jax.data.image_io import BadExampleError  # pylint: disable=import-outside-toplevel
  from advseg_jax.inference.evaluator import EvaluationError  # pylint: disable=import-outside-toplevel
  from advseg_jax.train import loop, parallel  # pylint: disable=import-outside-toplevel

  src = config_source or config_argument(argv)
  try:
    parallel.initialize_distributed(coordinator_address, num_processes, process_id)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    par = parallel.Parallel(config.parallel.mode)
    config_validation.validate(config, num_devices=par.num_devices)
    loop.train(config, workdir, allow_config_change=allow_config_change, config_source=src)
  except (config_validation.ConfigError, checkpoint.ConfigChangeError, loop.TrainingError,
          EvaluationError, FileNotFoundError) as e:
    print(f"error: {_short(e)}", file=sys.stderr)
    return 2
  except checkpoint.CheckpointError as e:
    _report_failure(_short(e))
    return 1
  except diagnostics.NonFiniteError as e:
    print(f"error: {_short(e)}", file=sys.stderr)
    return 1
  except BadExampleError as e:
    print(f"error: bad example in the data: {_short(e)}. Re-create the file (and the dataset "
          "with `python -m advseg_jax prepare ... --overwrite`), or skip such examples with "
          "--config.data.skip_bad_examples=True (target_data / eval_data likewise). The "
          "checkpoints and logs written so far are unchanged.", file=sys.stderr)
    return 1
  return 0
