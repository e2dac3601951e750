"""PyTorch checkpoints of the originals <-> Flax variables, and the `convert` command.

    variables = load_torch_checkpoint("AdvSemiSegVOC0.125-03c6f81c.pth", "deeplabv2", 21)
    variables = load_torch_checkpoint("DeepLab_resnet_pretrained_init-f81d91e8.pth",
                                      "deeplabv2_multi", 19, rule="adaptseg")
    state_dict = to_torch_state_dict(variables, "deeplabv2")      # OrderedDict of tensors

Architectures (`arch`): 'deeplabv2' (`Res_Deeplab`), 'deeplabv2_multi' (`DeeplabMulti`),
'fc_discriminator' (`FCDiscriminator`; `num_classes` = its input channels) and
'fc2_discriminator' (the ICLR-2018 reproduction's `Dis`, keys `conv1..conv5`).

Loading rules (`rule`), mirroring how each original loads weights (ORIGINALS.md §3.3):

* 'strict'      every model variable must be in the checkpoint with the right shape; extra
                keys are errors except the known-ignorable ones (`*.num_batches_tracked`,
                `fc.*`). Use for the released models (`evaluate_voc.py` loads strictly).
* 'advsemi'     AdvSemiSeg `train.py`: copy a variable iff its name is in the checkpoint and
                the shape matches; everything else is freshly initialised; extra keys ignored.
* 'adaptseg'    AdaptSegNet `train_gta2cityscapes_multi.py`: drop the `Scale.` prefix and,
                when num_classes == 19, skip every `layer5.*` key; all other checkpoint keys
                must fit the model (the original's `load_state_dict` would fail otherwise);
                model variables the checkpoint does not provide are freshly initialised.
* 'torchvision' an ImageNet ResNet-101 from torchvision: `fc.*` dropped, the torchvision stride
                layout (`stride_in_1x1=False` unless given), the classifier(s) freshly
                initialised, every backbone variable required.

Always: `module.` (DataParallel) and `Scale.` (MS_Deeplab) prefixes are stripped, wrappers
`{'state_dict': ...}` / `{'model': ...}` are unwrapped, `num_batches_tracked` is ignored.
Fresh variables use the Flax model's initialisers (conv N(0, 0.01), BN 1/0, running 0/1,
classifier biases and discriminator convs PyTorch's defaults) with `jax.random.PRNGKey(seed)`.

Conv kernels are OIHW in PyTorch and HWIO in Flax; see `advseg_jax.torch_port.names`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import re
import sys
import zlib
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from advseg_jax import model_io
from advseg_jax.torch_port import names as torch_names
from advseg_jax.torch_port.pth import ConversionError, read_state_dict, write_state_dict
from advseg_jax.torch_port.names import ARCHS, DISCRIMINATOR_ARCHS, GENERATOR_ARCHS, FlaxPath

__all__ = [
    "ARCHS", "RULES", "ConversionError", "ConversionReport", "load_torch_checkpoint",
    "convert_state_dict", "model_spec", "to_numpy_state_dict", "to_torch_state_dict",
    "save_torch_checkpoint", "main",
]

logger = logging.getLogger(__name__)

RULES = ("strict", "advsemi", "adaptseg", "torchvision")
PREFIXES = ("module.", "Scale.")
ADAPTSEG_SKIP_CLASSES = 19


def _is_ignorable(key: str) -> bool:
  """Keys every rule drops silently: BN counters and an ImageNet `fc` head."""
  return key.endswith("num_batches_tracked") or key.startswith("fc.")


def _fmt_shape(shape: Sequence[int]) -> str:
  return "[" + ", ".join(str(int(s)) for s in shape) + "]"


# --------------------------------------------------------------------------- report
@dataclasses.dataclass
class ConversionReport:
  """What a conversion did; `summary()` is what the CLI prints and the logger logs."""
  source: str
  arch: str
  rule: str
  loaded: List[str] = dataclasses.field(default_factory=list)
  fresh: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (key, why)
  skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)  # (ckpt key, why)
  ignored: List[str] = dataclasses.field(default_factory=list)
  stripped_prefixes: Dict[str, int] = dataclasses.field(default_factory=dict)
  notes: List[str] = dataclasses.field(default_factory=list)

  def summary(self, max_names: int = 12) -> str:
    def names(items: Sequence[str]) -> str:
      shown = ", ".join(items[:max_names])
      return shown + (f", ... (+{len(items) - max_names} more)" if len(items) > max_names else "")

    lines = [f"converted {self.source} as {self.arch} (rule {self.rule!r}):",
             f"  loaded  {len(self.loaded)} tensors"]
    if self.stripped_prefixes:
      lines.append("  stripped prefixes: " + ", ".join(
          f"{p!r} from {n} keys" for p, n in self.stripped_prefixes.items()))
    if self.ignored:
      lines.append(f"  ignored {len(self.ignored)} known extra keys (num_batches_tracked, fc.*)")
    by_reason: Dict[str, List[str]] = {}
    for key, why in self.skipped:
      by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
      lines.append(f"  skipped {len(keys)} checkpoint keys ({why}): {names(keys)}")
    by_reason = {}
    for key, why in self.fresh:
      by_reason.setdefault(why, []).append(key)
    for why, keys in by_reason.items():
      lines.append(f"  freshly initialised {len(keys)} tensors ({why}): {names(keys)}")
    lines.extend(f"  note: {n}" for n in self.notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------- model specs
def model_spec(arch: str, num_classes: int, *, depths: Any = (3, 4, 23, 3), width: int = 64,
               stride_in_1x1: bool = True, aspp_branches_used: int = 2,
               bn_mode: str = "batch_stats", ndf: int = 64,
               channel_order: Optional[str] = None,
               mean_bgr: Sequence[float] = model_io.MEAN_BGR) -> Dict[str, Any]:
  """The `model.json` spec for `arch`; `channel_order=None` picks the originals' convention:
  RGB for 21-class `deeplabv2` (AdvSemiSeg VOC), BGR otherwise (AdaptSegNet, Caffe inits)."""
  if arch not in ARCHS:
    raise ConversionError(f"arch must be one of {ARCHS}, got {arch!r}")
  try:
    if arch in DISCRIMINATOR_ARCHS:
      return model_io.discriminator_spec(arch, num_classes, ndf=ndf)
    if channel_order is None:
      channel_order = "RGB" if (arch == "deeplabv2" and int(num_classes) == 21) else "BGR"
    return model_io.generator_spec(
        arch, num_classes, depths=depths, width=width, stride_in_1x1=stride_in_1x1,
        aspp_branches_used=aspp_branches_used, bn_mode=bn_mode, channel_order=channel_order,
        mean_bgr=mean_bgr)
  except ValueError as e:
    raise ConversionError(str(e)) from None


# --------------------------------------------------------------------------- fresh init
def _fresh_value(path: FlaxPath, shape: Tuple[int, ...], siblings: Mapping[str, Tuple[int, ...]],
                 generator: bool, seed: int) -> np.ndarray:
  """A freshly initialised variable, drawn like the Flax model's own initialiser would.

  Generators: conv kernels N(0, 0.01); conv (ASPP) biases U(+-1/sqrt(fan_in)); BN scale 1,
  bias 0, mean 0, var 1. Discriminators: PyTorch's default conv init. The key is derived from
  `seed` and the variable's path, so it does not depend on which other variables are fresh.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from advseg_jax.models import layers  # pylint: disable=import-outside-toplevel

  key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32("/".join(path).encode()))
  collection, leaf = path[0], path[-1]
  is_conv = "kernel" in siblings
  if collection == "batch_stats":
    return np.zeros(shape, np.float32) if leaf == "mean" else np.ones(shape, np.float32)
  if leaf == "scale":
    return np.ones(shape, np.float32)
  if leaf == "bias" and not is_conv:
    return np.zeros(shape, np.float32)
  if leaf == "kernel":
    init = layers.CONV_KERNEL_INIT if generator else layers.torch_default_kernel_init
    return np.asarray(init(key, shape, jax.numpy.float32))
  if leaf == "bias":
    fan_in = int(np.prod(siblings["kernel"][:-1]))
    return np.asarray(layers.torch_default_bias_init(fan_in)(key, shape, jax.numpy.float32))
  raise ConversionError(f"don't know how to initialise {'/'.join(path)}")


# --------------------------------------------------------------------------- conversion
def _strip_prefixes(state_dict: Mapping[str, np.ndarray], source: str,
                    report: ConversionReport) -> "OrderedDict[str, np.ndarray]":
  out: "OrderedDict[str, np.ndarray]" = OrderedDict()
  origin: Dict[str, str] = {}
  for key, value in state_dict.items():
    name = key
    changed = True
    while changed:
      changed = False
      for prefix in PREFIXES:
        if name.startswith(prefix):
          name = name[len(prefix):]
          report.stripped_prefixes[prefix] = report.stripped_prefixes.get(prefix, 0) + 1
          changed = True
    if name in out:
      raise ConversionError(f"{source}: keys {origin[name]!r} and {key!r} both become {name!r} "
                            f"after stripping the {PREFIXES} prefixes")
    out[name] = value
    origin[name] = key
  return out


def guess_arch(keys: Sequence[str]) -> Optional[str]:
  """The architecture a state_dict's (prefix-stripped) keys most likely belong to."""
  keys = set(keys)
  if any(k.startswith("layer6.") for k in keys):
    return "deeplabv2_multi"
  if any(k.startswith("layer1.") for k in keys):
    return "deeplabv2"
  if "conv5.weight" in keys:
    return "fc2_discriminator"
  if "classifier.weight" in keys:
    return "fc_discriminator"
  return None


def _raise_problems(source: str, problems: List[str], hint: str = "") -> None:
  if not problems:
    return
  more = f" (and {len(problems) - 1} more problems: " + "; ".join(problems[1:4]) + \
      ("; ..." if len(problems) > 4 else "") + ")" if len(problems) > 1 else ""
  err = ConversionError(f"{source}: {problems[0]}{more}{hint}")
  err.problems = problems  # type: ignore[attr-defined]
  raise err


def convert_state_dict(state_dict: Mapping[str, Any], arch: str, num_classes: int, *,
                       rule: str = "strict", depths: Any = (3, 4, 23, 3), width: int = 64,
                       stride_in_1x1: Optional[bool] = None, aspp_branches_used: int = 2,
                       bn_mode: str = "batch_stats", ndf: int = 64, seed: int = 0,
                       source: str = "<state_dict>"
                       ) -> Tuple[Dict[str, Any], ConversionReport]:
  """Flax variables from a PyTorch state_dict `{name: ndarray or tensor}` (NCHW/OIHW).

  Returns `(variables, report)`; `variables` = {'params': ..., 'batch_stats': ...} (nested
  dicts of float32 numpy arrays, NHWC/HWIO layout; discriminators have only 'params').
  Raises `ConversionError` naming `source`, the key and the shapes on any mismatch that the
  rule does not allow.
  """
  if rule not in RULES:
    raise ConversionError(f"rule must be one of {RULES}, got {rule!r}")
  if rule == "torchvision" and arch not in GENERATOR_ARCHS:
    raise ConversionError(f"rule 'torchvision' loads an ImageNet ResNet into a generator; "
                          f"arch {arch!r} is not one of {GENERATOR_ARCHS}")
  if stride_in_1x1 is None:
    stride_in_1x1 = rule != "torchvision"
  spec = model_spec(arch, num_classes, depths=depths, width=width, stride_in_1x1=stride_in_1x1,
                    aspp_branches_used=aspp_branches_used, bn_mode=bn_mode, ndf=ndf,
                    channel_order="RGB")
  report = ConversionReport(source=source, arch=arch, rule=rule)
  if rule == "torchvision" and stride_in_1x1:
    report.notes.append("torchvision weights in the MSRA (stride_in_1x1) layout are not "
                        "equivalent to the ImageNet network (ORIGINALS.md §1.1)")

  abstract = torch_names.flatten(model_io.abstract_variables(spec))
  expected = torch_names.name_map(abstract, arch)  # torch name -> flax path
  ckpt: "OrderedDict[str, np.ndarray]" = OrderedDict()
  cast = 0
  for key, value in _strip_prefixes(state_dict, source, report).items():
    if _is_ignorable(key):
      report.ignored.append(key)
      continue
    value = value if isinstance(value, np.ndarray) else np.asarray(value)
    if np.issubdtype(value.dtype, np.floating) and value.dtype != np.float32:
      value, cast = value.astype(np.float32), cast + 1
    ckpt[key] = value
  if cast:
    report.notes.append(f"cast {cast} tensors to float32")

  def model_shape(name: str) -> Tuple[int, ...]:
    path = expected[name]
    return torch_names.torch_shape(path, abstract[path].shape)

  is_classifier = lambda name: name.split(".")[0] in torch_names.CLASSIFIER_MODULES
  take: Dict[str, np.ndarray] = {}
  fresh: Dict[str, str] = {}
  problems: List[str] = []

  # Which checkpoint keys the rule consumes.
  for key, value in ckpt.items():
    if rule == "adaptseg" and int(num_classes) == ADAPTSEG_SKIP_CLASSES and \
        key.startswith("layer5."):
      report.skipped.append((key, "rule adaptseg: layer5 is skipped when num_classes == 19"))
      continue
    if rule == "torchvision" and is_classifier(key):
      report.skipped.append((key, "rule torchvision: classifiers are freshly initialised"))
      continue
    if key not in expected:
      if rule == "advsemi":
        report.skipped.append((key, "not in model"))
      else:
        problems.append(f"unexpected key {key!r} (shape {_fmt_shape(value.shape)}) is not a "
                        f"variable of {arch}")
      continue
    want = model_shape(key)
    if tuple(value.shape) != want:
      if rule == "advsemi":
        report.skipped.append((key, f"shape mismatch: checkpoint {_fmt_shape(value.shape)} vs "
                                    f"model {_fmt_shape(want)}"))
      else:
        problems.append(f"shape mismatch for key {key!r}: expected {_fmt_shape(want)}, found "
                        f"{_fmt_shape(value.shape)}")
      continue
    take[key] = value

  # Which model variables stay fresh.
  for name in expected:
    if name in take:
      continue
    if rule == "strict" or (rule == "torchvision" and not is_classifier(name)):
      if name not in ckpt:
        problems.append(f"missing key {name!r} (expected shape {_fmt_shape(model_shape(name))})")
      continue
    if rule == "torchvision":
      fresh[name] = "rule torchvision: new classifier"
    elif name in ckpt:
      fresh[name] = "checkpoint tensor skipped"
    else:
      fresh[name] = "not in checkpoint"
  guess = guess_arch(list(ckpt))
  hint = "" if guess in (None, arch) else \
      f"; the keys look like a {guess} checkpoint, check --arch"
  _raise_problems(source, problems, hint)

  flat: Dict[FlaxPath, np.ndarray] = {}
  generator = arch in GENERATOR_ARCHS
  for name, path in expected.items():
    if name in take:
      flat[path] = torch_names.to_flax_layout(path, take[name])
      report.loaded.append(name)
    else:
      siblings = {p[-1]: abstract[p].shape for p in abstract if p[1:-1] == path[1:-1]}
      flat[path] = _fresh_value(path, tuple(abstract[path].shape), siblings, generator, seed)
      report.fresh.append((name, fresh[name]))
  variables = torch_names.unflatten(flat)
  logger.info("%s", report.summary())
  return variables, report


def load_torch_checkpoint(path: str, arch: str, num_classes: int, *, rule: str = "strict",
                          depths: Any = (3, 4, 23, 3), width: int = 64,
                          stride_in_1x1: Optional[bool] = None, aspp_branches_used: int = 2,
                          bn_mode: str = "batch_stats", ndf: int = 64, seed: int = 0,
                          trust_pickle: bool = False, return_report: bool = False):
  """Flax variables `{'params', 'batch_stats'}` from a PyTorch `.pth` checkpoint.

  Args:
    path: `.pth` file (zip or legacy serialisation, plain or wrapped state_dict).
    arch: one of `ARCHS`. num_classes: classes (discriminators: input channels).
    rule: one of `RULES` (module docstring). depths/width/stride_in_1x1: backbone shape
      (`stride_in_1x1=None` = True, or False for rule 'torchvision'). aspp_branches_used
      and bn_mode do not change shapes; they are checked. ndf: discriminator width.
    seed: PRNG seed for freshly initialised variables.
    trust_pickle: allow `torch.load(weights_only=False)` for files holding Python objects.
    return_report: also return the `ConversionReport`.
  """
  state_dict = read_state_dict(path, trust_pickle=trust_pickle)
  variables, report = convert_state_dict(
      state_dict, arch, num_classes, rule=rule, depths=depths, width=width,
      stride_in_1x1=stride_in_1x1, aspp_branches_used=aspp_branches_used, bn_mode=bn_mode,
      ndf=ndf, seed=seed, source=os.fspath(path))
  return (variables, report) if return_report else variables


# --------------------------------------------------------------------------- Flax -> torch
def _check_variables(variables: Mapping[str, Any], arch: str) -> None:
  if arch not in ARCHS:
    raise ConversionError(f"arch must be one of {ARCHS}, got {arch!r}")
  params = variables.get("params") if isinstance(variables, Mapping) else None
  if not isinstance(params, Mapping):
    raise ConversionError("variables must be a dict with a 'params' collection")
  top = set(params)
  if arch in GENERATOR_ARCHS:
    need = {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "layer5"}
    if arch == "deeplabv2_multi":
      need.add("layer6")
    if not need <= top or (arch == "deeplabv2" and "layer6" in top):
      raise ConversionError(f"variables are not a {arch}: top-level modules {sorted(top)}")
  else:
    need = {"conv1", "conv2", "conv3", "conv4", "classifier"}
    if top != need:
      raise ConversionError(f"variables are not a {arch}: top-level modules {sorted(top)}")


def to_numpy_state_dict(variables: Mapping[str, Any], arch: str, *,
                        include_num_batches_tracked: bool = False
                        ) -> "OrderedDict[str, np.ndarray]":
  """PyTorch state_dict of the originals as numpy arrays (OIHW kernels), in state_dict order.

  Exact (transposes only). `include_num_batches_tracked` adds the int64 zero counters of
  PyTorch >= 0.4.1; without them (the originals' format) `load_state_dict(strict=True)` still
  works, PyTorch fills them in.
  """
  _check_variables(variables, arch)
  flat = {p: v for p, v in torch_names.flatten(variables).items()
          if p[0] in ("params", "batch_stats")}
  out: "OrderedDict[str, np.ndarray]" = OrderedDict()
  for name, path in torch_names.name_map(flat, arch).items():
    out[name] = torch_names.to_torch_layout(path, np.asarray(flat[path]))
  if include_num_batches_tracked:
    for name in [n for n in out if n.endswith(".running_var")]:
      out[name[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    out = OrderedDict((k, out[k]) for k in sorted(out, key=torch_names.torch_sort_key))
  return out


def to_torch_state_dict(variables: Mapping[str, Any], arch: str, *,
                        include_num_batches_tracked: bool = False):
  """`OrderedDict[str, torch.Tensor]` loadable with `model.load_state_dict(sd, strict=True)`."""
  import torch  # pylint: disable=import-outside-toplevel

  return OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in to_numpy_state_dict(
      variables, arch, include_num_batches_tracked=include_num_batches_tracked).items())


def save_torch_checkpoint(variables: Mapping[str, Any], arch: str, path: str, *,
                          overwrite: bool = False, legacy_format: bool = False,
                          include_num_batches_tracked: bool = False) -> None:
  """Writes the PyTorch state_dict of `variables` to `path` atomically."""
  write_state_dict(to_numpy_state_dict(variables, arch,
                                       include_num_batches_tracked=include_num_batches_tracked),
                   path, overwrite=overwrite, legacy_format=legacy_format)


# --------------------------------------------------------------------------- provenance
def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _provenance(path: str, rule: str) -> Tuple[Dict[str, Any], Optional[str]]:
  digest = _sha256(path)
  name = os.path.basename(path)
  warning = None
  m = re.search(r"-([0-9a-f]{6,})\.pth$", name)
  if m and not digest.startswith(m.group(1)):
    warning = (f"{name}: sha256 {digest[:12]}... does not start with the {m.group(1)} in its "
               f"name (torch.utils.model_zoo would reject it); the file may be corrupt")
  return {"file": name, "sha256": digest, "rule": rule}, warning


# --------------------------------------------------------------------------- CLI
def _depths(text: str) -> Any:
  if "," in text:
    try:
      return tuple(int(d) for d in text.split(","))
    except ValueError:
      raise argparse.ArgumentTypeError(f"--depths: expected 4 comma-separated ints or a "
                                       f"name, got {text!r}") from None
  return text


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m advseg_jax convert",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Convert an original PyTorch checkpoint (.pth) into a Flax model directory\n"
          "(OUTPUT_DIR/variables written by orbax + OUTPUT_DIR/model.json), or back with\n"
          "--reverse. Nothing is downloaded; nothing is written if anything fails."),
      epilog=(
          "examples:\n"
          "  convert AdvSemiSegVOC0.125-03c6f81c.pth out/voc_semi0.125 --arch deeplabv2 "
          "--num_classes 21\n"
          "  convert GTA2Cityscapes_multi-ed35151c.pth out/gta2city --arch deeplabv2_multi "
          "--num_classes 19\n"
          "  convert DeepLab_resnet_pretrained_init-f81d91e8.pth out/init --arch "
          "deeplabv2_multi --num_classes 19 --rule adaptseg\n"
          "  convert --reverse out/voc_semi0.125 voc_semi0.125.pth\n"
          "See docs/MODEL_ZOO.md for every released checkpoint."))
  p.add_argument("input", metavar="INPUT",
                 help="the .pth checkpoint (or, with --reverse, a model directory)")
  p.add_argument("output", metavar="OUTPUT",
                 help="the model directory to create (or, with --reverse, the .pth to write)")
  p.add_argument("--reverse", action="store_true",
                 help="convert a Flax model directory (written by this command or "
                      "advseg_jax.model_io.save_model) back to a PyTorch state_dict .pth; "
                      "arch and shapes come from its model.json")
  p.add_argument("--arch", choices=ARCHS,
                 help="deeplabv2 = Res_Deeplab (AdvSemiSeg, AdaptSegNet oracle); "
                      "deeplabv2_multi = DeeplabMulti (AdaptSegNet, layer5 aux + layer6 main); "
                      "fc_discriminator = FCDiscriminator; fc2_discriminator = the ICLR-2018 "
                      "reproduction's 2-class Dis (keys conv1..conv5). Required unless --reverse")
  p.add_argument("--num_classes", type=int,
                 help="classes of the generator (21 VOC, 19 Cityscapes), or input channels of "
                      "a discriminator. Required unless --reverse")
  p.add_argument("--rule", choices=RULES, default="strict",
                 help="how checkpoint keys are matched: strict (default; every variable must "
                      "match, e.g. released models), advsemi (copy name+shape matches, init the "
                      "rest: AdvSemiSeg train.py), adaptseg (strip 'Scale.', skip layer5 when "
                      "num_classes == 19: AdaptSegNet train), torchvision (ImageNet ResNet-101: "
                      "drop fc.*, torchvision stride layout, new classifiers)")
  p.add_argument("--aspp_branches_used", type=int, choices=(1, 2, 3, 4), default=2,
                 help="ASPP branches summed in the forward pass: 2 reproduces the released "
                      "models (the originals' early-return bug), 4 is the corrected sum; does "
                      "not change the stored variables (default 2)")
  p.add_argument("--channel_order", choices=model_io.CHANNEL_ORDERS, default=None,
                 help="input channel order recorded in model.json: RGB for AdvSemiSeg VOC "
                      "models, BGR for AdaptSegNet models and Caffe-converted inits (default: "
                      "RGB for 21-class deeplabv2, BGR otherwise)")
  p.add_argument("--depths", type=_depths, default="resnet101",
                 help="bottlenecks per layer, 4 comma-separated ints (3,4,23,3 = ResNet-101) "
                      "or resnet101 / resnet50 / tiny (default resnet101)")
  p.add_argument("--width", type=int, default=64,
                 help="stem width / layer1 planes (64 in the originals)")
  layout = p.add_mutually_exclusive_group()
  layout.add_argument("--stride_in_1x1", dest="stride_in_1x1", action="store_const", const=True,
                      default=None,
                      help="MSRA/Caffe bottleneck: stride in the 1x1 conv1 (the originals; "
                           "default except for --rule torchvision)")
  layout.add_argument("--torchvision_layout", dest="stride_in_1x1", action="store_const",
                      const=False,
                      help="torchvision bottleneck: stride in the 3x3 conv2 (default for "
                           "--rule torchvision)")
  p.add_argument("--bn_mode", choices=("batch_stats", "frozen"), default="batch_stats",
                 help="BatchNorm in training: batch_stats (the originals: batch statistics, "
                      "running stats updated) or frozen (running stats always); recorded in "
                      "model.json")
  p.add_argument("--ndf", type=int, default=64, help="discriminator base width (64)")
  p.add_argument("--seed", type=int, default=0,
                 help="PRNG seed for freshly initialised variables (default 0)")
  p.add_argument("--overwrite", action="store_true",
                 help="replace an existing non-empty OUTPUT directory (or .pth file)")
  p.add_argument("--trust_pickle", action="store_true",
                 help="load files holding Python objects besides tensors with "
                      "torch.load(weights_only=False); only for files you trust")
  p.add_argument("--legacy_format", action="store_true",
                 help="with --reverse: write the pre-1.6 non-zip torch serialisation")
  p.add_argument("--include_num_batches_tracked", action="store_true",
                 help="with --reverse: add BN num_batches_tracked counters (PyTorch >= 0.4.1 "
                      "keys; the originals' checkpoints have none)")
  p.add_argument("--quiet", action="store_true", help="print only errors")
  return p


def _run_forward(args: argparse.Namespace, out) -> None:
  if args.arch is None or args.num_classes is None:
    raise ConversionError("--arch and --num_classes are required (unless --reverse)")
  stride = args.stride_in_1x1
  if stride is None:
    stride = args.rule != "torchvision"
  spec = model_spec(args.arch, args.num_classes, depths=args.depths, width=args.width,
                    stride_in_1x1=stride, aspp_branches_used=args.aspp_branches_used,
                    bn_mode=args.bn_mode, ndf=args.ndf, channel_order=args.channel_order)
  target = os.path.abspath(args.output)
  model_io._check_target(target, args.overwrite)  # fail before the slow part
  variables, report = load_torch_checkpoint(
      args.input, args.arch, args.num_classes, rule=args.rule, depths=args.depths,
      width=args.width, stride_in_1x1=stride, aspp_branches_used=args.aspp_branches_used,
      bn_mode=args.bn_mode, ndf=args.ndf, seed=args.seed, trust_pickle=args.trust_pickle,
      return_report=True)
  spec["source"], warning = _provenance(args.input, args.rule)
  path = model_io.save_model(target, variables, spec, overwrite=args.overwrite)
  if not args.quiet:
    print(report.summary(), file=out)
    if warning:
      print(f"  warning: {warning}", file=out)
    extra = "" if spec["kind"] == "discriminator" else (
        f", channel_order {spec['channel_order']}, aspp_branches_used "
        f"{spec['aspp_branches_used']}")
    print(f"wrote {path} ({spec['arch']}, {spec['num_classes']} classes{extra})", file=out)


def _run_reverse(args: argparse.Namespace, out) -> None:
  target = os.path.abspath(args.output)
  if os.path.exists(target) and not args.overwrite:
    raise ConversionError(f"{target}: exists; pass --overwrite to replace it")
  variables, spec = model_io.load_model(args.input)
  save_torch_checkpoint(variables, spec["arch"], target, overwrite=args.overwrite,
                        legacy_format=args.legacy_format,
                        include_num_batches_tracked=args.include_num_batches_tracked)
  if not args.quiet:
    print(f"wrote {target} ({spec['arch']}, {spec['num_classes']} classes) from {args.input}",
          file=out)


def main(argv: Optional[List[str]] = None) -> int:
  """`convert` command; returns the exit code (0 ok, 2 on any error, with one `error:` line).

  `argv` may start with the word 'convert' (as passed by `python -m advseg_jax convert ...`).
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "convert":
    argv = argv[1:]
  parser = build_parser()
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # --help (0) or a usage error (2, message already printed)
    return int(e.code or 0)
  try:
    if args.reverse:
      _run_reverse(args, sys.stdout)
    else:
      _run_forward(args, sys.stdout)
  except (ConversionError, model_io.ModelFormatError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
