"""What the commands share: absl flag helpers, `--help`, usage errors, the error wrapper,
progress bars and the checkpoint flags of `evaluate` / `predict`.

Every command defines its flags on its own `absl.flags.FlagValues` (several commands may run
in one process) and is `main(argv) -> int`:

    def main(argv=None) -> int:
      return common.run_command(argv, "evaluate", define_flags(), DOC, _run)

Exit codes: 0 done (or --help), 2 a usage error or a problem the user must fix (one
`error: <message>` line on stderr), 130 interrupted.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import textwrap
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from absl import flags

from advseg_jax import logging_utils, model_io
from advseg_jax.cli.outputs import OutputPathError
from advseg_jax.data.builders.common import LayoutError
from advseg_jax.data.image_io import BadExampleError
from advseg_jax.inference import loading
from advseg_jax.inference.evaluator import EvaluationError
from advseg_jax.inference.predict import PredictError
from advseg_jax.models.spec import ModelSpec, SpecError
from advseg_jax.torch_port import convert
from advseg_jax.torch_port.pth import ConversionError, read_state_dict
from advseg_jax.train.checkpoint import CheckpointError

HELP_ARGS = ("-h", "--help", "-help", "--helpfull", "help")


class UsageError(Exception):
  """A command-line problem (printed as one `error:` line, exit code 2)."""


# Exceptions whose message is meant for the user: one `error:` line, exit code 2.
KNOWN_ERRORS = (UsageError, EvaluationError, PredictError, FileNotFoundError,
                NotADirectoryError, PermissionError, model_io.ModelFormatError, ConversionError,
                BadExampleError, LayoutError, CheckpointError, SpecError, OutputPathError)


def one_line(e: Union[BaseException, str]) -> str:
  text = " ".join(str(e).split())
  return text or type(e).__name__


def root_cause(e: BaseException) -> BaseException:
  """The innermost exception `e` was raised from or while handling (unless suppressed)."""
  while True:
    inner = e.__cause__ if e.__cause__ is not None else (
        None if e.__suppress_context__ else e.__context__)
    if inner is None:
      return e
    e = inner


def flag_error_message(e: BaseException) -> str:
  """absl's message (its first line) and, when it wraps another error, that error's."""
  lines = [l for l in str(e).splitlines() if l.strip()]
  message = one_line(lines[0] if lines else e)
  root = root_cause(e)
  if root is not e:
    text = root.args[0] if root.args and isinstance(root.args[0], str) else str(root)
    if one_line(text) not in message:
      message = f"{message} {one_line(text)}"
  return message


# --------------------------------------------------------------------------- flag types
class _Parser(flags.ArgumentParser):
  """An absl parser from a function `text -> value` that raises ValueError."""

  def __init__(self, fn: Callable[[str], Any], kind: str):
    self._fn, self._kind = fn, kind

  def parse(self, argument):
    return argument if not isinstance(argument, str) else self._fn(argument)

  def flag_type(self) -> str:
    return self._kind


def parse_hw(text: str) -> Tuple[int, int]:
  """'505' -> (505, 505); '512,1024' -> (512, 1024) (height, width)."""
  parts = [p for p in str(text).replace("x", ",").split(",") if p.strip()]
  try:
    vals = tuple(int(p) for p in parts)
  except ValueError:
    raise ValueError(f"expected H,W or N, got {text!r}") from None
  vals = vals * 2 if len(vals) == 1 else vals
  if len(vals) != 2 or min(vals) < 1:
    raise ValueError(f"expected two positive ints H,W, got {text!r}")
  return vals  # type: ignore[return-value]


def parse_scales(text: str) -> Tuple[float, ...]:
  """'0.75,1,1.25' -> (0.75, 1.0, 1.25)."""
  try:
    vals = tuple(float(p) for p in str(text).split(",") if p.strip())
  except ValueError:
    raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
  if not vals or min(vals) <= 0:
    raise ValueError(f"scales must be positive, got {text!r}")
  return vals


def parse_depths(text: str) -> Any:
  """'resnet101' (a name) or '3,4,23,3' -> (3, 4, 23, 3)."""
  if "," not in text:
    return text
  try:
    return tuple(int(d) for d in text.split(","))
  except ValueError:
    raise ValueError(f"expected 4 comma-separated ints or a name, got {text!r}") from None


def define_parsed(fv: flags.FlagValues, name: str, default: Any, help_: str,
                  fn: Callable[[str], Any], kind: str) -> None:
  """A flag whose text is turned into a value by `fn` (a usage error if it raises)."""
  flags.DEFINE(_Parser(fn, kind), name, default, help_, flag_values=fv)


# --------------------------------------------------------------------------- help, parsing
@dataclasses.dataclass
class Help:
  """The text around the flag list of a command's `--help`."""
  usage: str
  description: str
  positionals: Sequence[Tuple[str, str]] = ()
  epilog: str = ""


def _flag_lines(flag) -> List[str]:
  names = (f"-{flag.short_name}, " if flag.short_name else "") + f"--{flag.name}"
  if not flag.boolean:
    names += "=VALUE"
  text = flag.help
  default = flag.default
  if default is not None and not (flag.boolean and default is False):
    shown = ",".join(str(v) for v in default) if isinstance(default, tuple) else default
    text += f" (default: {shown})"
  return [f"  {names}"] + textwrap.wrap(text, 92, initial_indent="      ",
                                         subsequent_indent="      ")


def help_text(fv: flags.FlagValues, doc: Help) -> str:
  """`--help`: usage, description, the positional arguments and every flag with its help."""
  lines = [doc.usage, "", doc.description.rstrip("\n")]
  if doc.positionals:
    lines += ["", "arguments:"]
    for name, text in doc.positionals:
      lines.append(f"  {name}")
      lines += textwrap.wrap(text, 92, initial_indent="      ", subsequent_indent="      ")
  lines += ["", "flags:"]
  seen = set()
  for name in list(fv):
    flag = fv[name]
    if id(flag) not in seen:
      seen.add(id(flag))
      lines += _flag_lines(flag)
  if doc.epilog:
    lines += ["", doc.epilog.rstrip("\n")]
  return "\n".join(lines) + "\n"


def strip_command(argv: Optional[Sequence[str]], command: str) -> List[str]:
  """`argv` (default sys.argv[1:]) without a leading command word."""
  argv = list(sys.argv[1:] if argv is None else argv)
  return argv[1:] if argv and argv[0] == command else argv


def parse(fv: flags.FlagValues, argv: Sequence[str], command: str) -> List[str]:
  """Parses `argv` (flags and positional arguments mixed); returns the positional ones.

  Raises UsageError with absl's message.
  """
  try:
    return fv([command] + list(argv))[1:]
  except flags.Error as e:
    raise UsageError(flag_error_message(e)) from None


def parse_or_exit(fv: flags.FlagValues, argv: Optional[Sequence[str]], command: str,
                  doc: Help) -> Union[List[str], int]:
  """The positional arguments, or the exit code when `--help` was printed (0) or the
  command line is wrong (2, one `error:` line)."""
  argv = strip_command(argv, command)
  if any(a in HELP_ARGS for a in argv):
    print(help_text(fv, doc), end="")
    return 0
  try:
    return parse(fv, argv, command)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def run(fn: Callable[[], Optional[int]], *, errors: Tuple[type, ...] = KNOWN_ERRORS,
        error_code: int = 2, log_level: Optional[int] = logging.WARNING) -> int:
  """Runs `fn()`; an error of `errors` becomes one `error:` line on stderr and `error_code`.

  Results go to stdout; stderr carries warnings and the error line, whatever logging an
  earlier command in the same process set up (`log_level`; None leaves it alone).
  """
  if log_level is not None:
    logging_utils.setup_console_logging(log_level)
  try:
    return int(fn() or 0)
  except errors as e:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else one_line(e)
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
      msg = f"{e.filename}: {e.strerror or msg}"
    print(f"error: {msg}", file=sys.stderr)
    return error_code
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130


def run_command(argv: Optional[Sequence[str]], command: str, fv: flags.FlagValues, doc: Help,
                fn: Callable[[flags.FlagValues, List[str]], Optional[int]], **run_kw) -> int:
  """Parses `argv` onto `fv` (`--help`, usage errors), then `run(fn(fv, positional))`."""
  positional = parse_or_exit(fv, argv, command, doc)
  if isinstance(positional, int):
    return positional
  return run(lambda: fn(fv, positional), **run_kw)


def progress(iterable, *, total: Optional[int], desc: str, enabled: bool, unit: str = "batch"):
  """A tqdm progress bar on stderr (tqdm comes with tensorflow-datasets), or the iterable."""
  if not enabled:
    return iterable
  from tqdm.auto import tqdm  # pylint: disable=import-outside-toplevel  (optional)
  return tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
              file=sys.stderr, leave=False)


# --------------------------------------------------------------------------- checkpoints
CHECKPOINT_HELP = ("a model directory (written by training as WORKDIR/best_model or "
                   "WORKDIR/final_model, or by `convert`) or a training WORKDIR (its final "
                   "model: final_model/, else the latest checkpoint; --best for best_model/); "
                   "omit it when --torch_checkpoint is given")


def define_checkpoint_flags(fv: flags.FlagValues) -> None:
  """The flags for loading an original PyTorch .pth directly (evaluate / predict)."""
  flags.DEFINE_string("torch_checkpoint", None,
                      "a PyTorch state_dict .pth of the originals (e.g. "
                      "AdvSemiSegVOC0.125-03c6f81c.pth), converted in memory, nothing written "
                      "(`convert` makes a reusable model directory); needs --arch",
                      flag_values=fv)
  flags.DEFINE_enum("arch", None, ("deeplabv2", "deeplabv2_multi"),
                    "architecture of --torch_checkpoint: deeplabv2 = Res_Deeplab (AdvSemiSeg, "
                    "AdaptSegNet oracle), deeplabv2_multi = DeeplabMulti (AdaptSegNet; its main "
                    "layer6 output is used)", flag_values=fv)
  flags.DEFINE_integer("num_classes", None,
                       "classes of --torch_checkpoint (default: the dataset's, 21 VOC / 19 "
                       "Cityscapes, else read off the file's classifier)", flag_values=fv)
  flags.DEFINE_enum("rule", "strict", ("strict", "advsemi", "adaptseg"),
                    "how .pth keys are matched (see `convert --help`); strict = every variable "
                    "must be present with the right shape, as evaluate_voc.py's "
                    "load_state_dict", flag_values=fv)
  flags.DEFINE_enum("channel_order", None, ("RGB", "BGR"),
                    "input channel order the .pth expects (default: RGB for a 21-class "
                    "deeplabv2 (AdvSemiSeg), BGR otherwise (AdaptSegNet)); for model "
                    "directories it comes from model.json", flag_values=fv)
  flags.DEFINE_integer("aspp_branches_used", 2,
                       "ASPP branches summed, 1-4: 2 = the released models (the originals' "
                       "early-return bug), 4 = corrected", lower_bound=1, upper_bound=4,
                       flag_values=fv)
  define_parsed(fv, "depths", "resnet101",
                "backbone depth of --torch_checkpoint: resnet101, resnet50, tiny, or 4 "
                "comma-separated ints", parse_depths, "depths")
  flags.DEFINE_integer("width", 64, "stem width of --torch_checkpoint (64 in the originals)",
                       flag_values=fv)
  flags.DEFINE_bool("trust_pickle", False,
                    "allow .pth files holding Python objects (torch.load weights_only=False); "
                    "only for files you trust", flag_values=fv)


def check_checkpoint_path(path: Optional[str]) -> None:
  """UsageError unless `path` is an existing directory (a model directory or a workdir)."""
  if not path:
    raise UsageError("no checkpoint given: pass a model directory / training workdir, or "
                     "--torch_checkpoint PTH --arch ARCH")
  if not os.path.exists(path):
    raise UsageError(f"{path}: no such file or directory (expected a model directory or a "
                     f"training workdir)")
  if os.path.isfile(path):
    hint = (" (a PyTorch file: pass it as --torch_checkpoint with --arch)"
            if path.endswith((".pth", ".pt", ".pkl")) else "")
    raise UsageError(f"{path}: is a file, expected a model directory or a training "
                     f"workdir{hint}")


def check_checkpoint_flags(fv: flags.FlagValues, checkpoint: Optional[str]) -> None:
  """The cheap checks (paths exist, the flags fit together), before any slow work."""
  if not fv.torch_checkpoint:
    check_checkpoint_path(checkpoint)
    return
  if checkpoint:
    raise UsageError("give either a checkpoint or --torch_checkpoint, not both")
  if not os.path.isfile(fv.torch_checkpoint):
    raise UsageError(f"{fv.torch_checkpoint}: no such file (--torch_checkpoint expects a "
                     f".pth file)")
  if fv.arch is None:
    raise UsageError("--torch_checkpoint needs --arch deeplabv2 (Res_Deeplab) or "
                     "deeplabv2_multi (DeeplabMulti)")


def _classes_in_state_dict(path: str, arch: str, trust_pickle: bool) -> Optional[int]:
  """Class count read off the main classifier's bias in a .pth (None if not found)."""
  head = "layer6" if arch == "deeplabv2_multi" else "layer5"
  for key, value in read_state_dict(path, trust_pickle=trust_pickle).items():
    for prefix in ("module.", "Scale."):
      key = key[len(prefix):] if key.startswith(prefix) else key
    if key == f"{head}.conv2d_list.0.bias":
      return int(np.shape(value)[0])
  return None


def _load_torch(fv: flags.FlagValues, default_classes: Optional[int]
                ) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  path, arch = fv.torch_checkpoint, fv.arch
  k = fv.num_classes or default_classes or _classes_in_state_dict(path, arch, fv.trust_pickle)
  if not k:
    raise UsageError("--torch_checkpoint needs --num_classes (or --dataset to take it from)")
  branches = fv.aspp_branches_used
  model_spec = ModelSpec.for_original(arch, k, depths=fv.depths, width=fv.width,
                                      aspp_branches_used=branches,
                                      channel_order=fv.channel_order)
  try:
    variables, report = convert.load_torch_checkpoint(
        path, model_spec, rule=fv.rule, trust_pickle=fv.trust_pickle, return_report=True)
  except ConversionError as e:
    msg = one_line(e)
    if "mismatch" in msg or "missing" in msg or "unexpected" in msg:
      msg += (f" -- the file does not fit --arch {arch} with {k} classes, --depths "
              f"{fv.depths}, --width {fv.width}; check those flags")
    raise ConversionError(msg) from None
  spec = model_spec.to_json()
  spec["source"] = {"file": os.path.basename(path), "rule": fv.rule}
  print(report.summary())  # what was loaded / skipped / freshly initialised, as `convert`
  return variables, spec


def load_from_flags(fv: flags.FlagValues, checkpoint: Optional[str],
                    default_classes: Optional[int] = None
                    ) -> Tuple[Dict[str, Any], Dict[str, Any], str]:
  """`(variables, spec, description)` of the generator the checkpoint flags name."""
  check_checkpoint_flags(fv, checkpoint)
  if fv.torch_checkpoint:
    variables, spec = _load_torch(fv, default_classes)
    return variables, spec, os.path.abspath(fv.torch_checkpoint)
  variables, spec = loading.load_generator(checkpoint)
  return variables, spec, os.path.abspath(checkpoint)
