"""PyTorch checkpoints of the originals <-> Flax variables (the `convert` command is
`advseg_jax.cli.convert`).

    spec = ModelSpec.for_original("deeplabv2", 21)                  # advseg_jax.models.spec
    variables = load_torch_checkpoint("AdvSemiSegVOC0.125-03c6f81c.pth", spec)
    variables = load_torch_checkpoint("DeepLab_resnet_pretrained_init-f81d91e8.pth",
                                      ModelSpec.for_original("deeplabv2_multi", 19),
                                      rule="adaptseg")
    state_dict = to_torch_state_dict(variables, "deeplabv2")      # OrderedDict of tensors

Architectures (`ARCHS`, the convertible ones of `models.registry`): 'deeplabv2'
(`Res_Deeplab`), 'deeplabv2_multi' (`DeeplabMulti`), 'fc_discriminator' (`FCDiscriminator`;
`num_classes` = its input channels) and 'fc2_discriminator' (the ICLR-2018 reproduction's
`Dis`, keys `conv1..conv5`). The spec's depths, width and stride_in_1x1 (or ndf) give the
shapes; its other fields do not change the variables.

Loading rules (`rule`), mirroring how each original loads weights (docs/FIDELITY.md §3.3):

* 'strict'      every model variable must be in the checkpoint with the right shape; extra
                keys are errors except the known-ignorable ones (`*.num_batches_tracked`,
                `fc.*`). Use for the released models (`evaluate_voc.py` loads strictly).
* 'advsemi'     AdvSemiSeg `train.py`: copy a variable iff its name is in the checkpoint and
                the shape matches; everything else is freshly initialised; extra keys ignored.
* 'adaptseg'    AdaptSegNet `train_gta2cityscapes_multi.py`: drop the `Scale.` prefix and,
                when num_classes == 19, skip every `layer5.*` key; all other checkpoint keys
                must fit the model (the original's `load_state_dict` would fail otherwise);
                model variables the checkpoint does not provide are freshly initialised.
* 'torchvision' an ImageNet ResNet-101 from torchvision: `fc.*` dropped, the classifier(s)
                freshly initialised, every backbone variable required; give the spec the
                torchvision stride layout (`stride_in_1x1=False`).

Always: `module.` (DataParallel) and `Scale.` (MS_Deeplab) prefixes are stripped, wrappers
`{'state_dict': ...}` / `{'model': ...}` are unwrapped, `num_batches_tracked` is ignored.
Fresh variables use the Flax model's initialisers (conv N(0, 0.01), BN 1/0, running 0/1,
classifier biases and discriminator convs PyTorch's defaults) with `jax.random.PRNGKey(seed)`.

Conv kernels are OIHW in PyTorch and HWIO in Flax; see `advseg_jax.torch_port.names`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zlib
from collections import OrderedDict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import jax
import numpy as np
from flax import traverse_util

from advseg_jax import model_io
from advseg_jax.models import layers, registry
from advseg_jax.models.spec import ModelSpec
from advseg_jax.torch_port import names as torch_names
from advseg_jax.torch_port.names import ARCHS, FlaxPath
from advseg_jax.torch_port.pth import ConversionError, read_state_dict, write_state_dict

__all__ = [
    "ARCHS", "RULES", "ConversionError", "ConversionReport", "load_torch_checkpoint",
    "convert_state_dict", "to_numpy_state_dict", "to_torch_state_dict",
    "save_torch_checkpoint",
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

    def by_reason(pairs: Sequence[Tuple[str, str]]) -> Dict[str, List[str]]:
      out: Dict[str, List[str]] = {}
      for key, why in pairs:
        out.setdefault(why, []).append(key)
      return out

    lines = [f"converted {self.source} as {self.arch} (rule {self.rule!r}):",
             f"  loaded  {len(self.loaded)} tensors"]
    if self.stripped_prefixes:
      lines.append("  stripped prefixes: " + ", ".join(
          f"{p!r} from {n} keys" for p, n in self.stripped_prefixes.items()))
    if self.ignored:
      lines.append(f"  ignored {len(self.ignored)} known extra keys (num_batches_tracked, fc.*)")
    for why, keys in by_reason(self.skipped).items():
      lines.append(f"  skipped {len(keys)} checkpoint keys ({why}): {names(keys)}")
    for why, keys in by_reason(self.fresh).items():
      lines.append(f"  freshly initialised {len(keys)} tensors ({why}): {names(keys)}")
    lines.extend(f"  note: {n}" for n in self.notes)
    return "\n".join(lines)


# --------------------------------------------------------------------------- fresh init
def _fresh_value(path: FlaxPath, shape: Tuple[int, ...], siblings: Mapping[str, Tuple[int, ...]],
                 generator: bool, seed: int) -> np.ndarray:
  """A freshly initialised variable, drawn like the Flax model's own initialiser would.

  Generators: conv kernels N(0, 0.01); conv (ASPP) biases U(+-1/sqrt(fan_in)); BN scale 1,
  bias 0, mean 0, var 1. Discriminators: PyTorch's default conv init. The key is derived from
  `seed` and the variable's path, so it does not depend on which other variables are fresh.
  """
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


# --------------------------------------------------------------------------- torch -> Flax
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


def _checkpoint_tensors(state_dict: Mapping[str, Any], source: str,
                        report: ConversionReport) -> "OrderedDict[str, np.ndarray]":
  """The prefix-stripped, non-ignorable tensors of `state_dict`, floats as float32."""
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
  return ckpt


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


def _is_classifier(name: str) -> bool:
  return name.split(".")[0] in torch_names.CLASSIFIER_MODULES


def _select_tensors(ckpt: Mapping[str, np.ndarray], shapes: Mapping[str, Tuple[int, ...]],
                    spec: ModelSpec, rule: str, report: ConversionReport,
                    problems: List[str]) -> Dict[str, np.ndarray]:
  """The checkpoint tensors the rule loads, by PyTorch name; skips go to `report`, errors to
  `problems`. `shapes`: the model's variables (PyTorch names and shapes)."""
  take: Dict[str, np.ndarray] = {}
  for key, value in ckpt.items():
    if (rule == "adaptseg" and spec.num_classes == ADAPTSEG_SKIP_CLASSES
        and key.startswith("layer5.")):
      report.skipped.append((key, "rule adaptseg: layer5 is skipped when num_classes == 19"))
    elif rule == "torchvision" and _is_classifier(key):
      report.skipped.append((key, "rule torchvision: classifiers are freshly initialised"))
    elif key not in shapes:
      if rule == "advsemi":
        report.skipped.append((key, "not in model"))
      else:
        problems.append(f"unexpected key {key!r} (shape {_fmt_shape(value.shape)}) is not a "
                        f"variable of {spec.arch}")
    elif tuple(value.shape) != shapes[key]:
      want = shapes[key]
      if rule == "advsemi":
        report.skipped.append((key, f"shape mismatch: checkpoint {_fmt_shape(value.shape)} vs "
                                    f"model {_fmt_shape(want)}"))
      else:
        problems.append(f"shape mismatch for key {key!r}: expected {_fmt_shape(want)}, found "
                        f"{_fmt_shape(value.shape)}")
    else:
      take[key] = value
  return take


def _fresh_reasons(ckpt: Mapping[str, np.ndarray], shapes: Mapping[str, Tuple[int, ...]],
                   take: Mapping[str, np.ndarray], rule: str,
                   problems: List[str]) -> Dict[str, str]:
  """{PyTorch name: why} of the model variables the rule leaves freshly initialised; a
  variable the rule requires and the checkpoint lacks goes to `problems`."""
  fresh: Dict[str, str] = {}
  for name in shapes:
    if name in take:
      continue
    if rule == "strict" or (rule == "torchvision" and not _is_classifier(name)):
      if name not in ckpt:
        problems.append(f"missing key {name!r} (expected shape {_fmt_shape(shapes[name])})")
    elif rule == "torchvision":
      fresh[name] = "rule torchvision: new classifier"
    else:
      fresh[name] = "checkpoint tensor skipped" if name in ckpt else "not in checkpoint"
  return fresh


def _check_rule(rule: str, spec: ModelSpec, report: ConversionReport) -> None:
  if rule not in RULES:
    raise ConversionError(f"rule must be one of {RULES}, got {rule!r}")
  if spec.arch not in ARCHS:
    raise ConversionError(f"arch must be one of {ARCHS}, got {spec.arch!r}")
  if rule == "torchvision" and not spec.is_generator:
    raise ConversionError(f"rule 'torchvision' loads an ImageNet ResNet into a generator; "
                          f"arch {spec.arch!r} is not a generator")
  if rule == "torchvision" and spec.stride_in_1x1:
    report.notes.append("torchvision weights in the MSRA (stride_in_1x1) layout are not "
                        "equivalent to the ImageNet network (docs/FIDELITY.md §1.1)")


def convert_state_dict(state_dict: Mapping[str, Any], spec: Union[ModelSpec, Mapping[str, Any]],
                       *, rule: str = "strict", seed: int = 0, source: str = "<state_dict>"
                       ) -> Tuple[Dict[str, Any], ConversionReport]:
  """Flax variables of the model `spec` from a PyTorch state_dict `{name: ndarray or tensor}`
  (NCHW/OIHW) under loading `rule`; `seed` draws the freshly initialised variables.

  Returns `(variables, report)`; `variables` = {'params': ..., 'batch_stats': ...} (nested
  dicts of float32 numpy arrays, NHWC/HWIO layout; discriminators have only 'params').
  Raises `ConversionError` naming `source`, the key and the shapes on any mismatch that the
  rule does not allow.
  """
  spec = model_io.to_model_spec(spec)
  report = ConversionReport(source=source, arch=spec.arch, rule=rule)
  _check_rule(rule, spec, report)
  abstract = traverse_util.flatten_dict(model_io.abstract_variables(spec))
  expected = torch_names.name_map(abstract, spec.arch)  # torch name -> flax path
  shapes = {name: torch_names.torch_shape(path, abstract[path].shape)
            for name, path in expected.items()}
  ckpt = _checkpoint_tensors(state_dict, source, report)
  problems: List[str] = []
  take = _select_tensors(ckpt, shapes, spec, rule, report, problems)
  fresh = _fresh_reasons(ckpt, shapes, take, rule, problems)
  guess = guess_arch(list(ckpt))
  _raise_problems(source, problems, "" if guess in (None, spec.arch) else
                  f"; the keys look like a {guess} checkpoint, check --arch")

  flat: Dict[FlaxPath, np.ndarray] = {}
  for name, path in expected.items():
    if name in take:
      flat[path] = torch_names.to_flax_layout(path, take[name])
      report.loaded.append(name)
    else:
      siblings = {p[-1]: abstract[p].shape for p in abstract if p[1:-1] == path[1:-1]}
      flat[path] = _fresh_value(path, tuple(abstract[path].shape), siblings,
                                spec.is_generator, seed)
      report.fresh.append((name, fresh[name]))
  logger.info("%s", report.summary())
  return traverse_util.unflatten_dict(flat), report


def load_torch_checkpoint(path: str, spec: Union[ModelSpec, Mapping[str, Any]], *,
                          rule: str = "strict", seed: int = 0, trust_pickle: bool = False,
                          return_report: bool = False):
  """Flax variables `{'params', 'batch_stats'}` of the model `spec` from a PyTorch `.pth`.

  Args:
    path: `.pth` file (zip or legacy serialisation, plain or wrapped state_dict).
    spec: the model (`ModelSpec` of an arch in `ARCHS`); see `convert_state_dict`.
    rule: one of `RULES` (module docstring).
    seed: PRNG seed for freshly initialised variables.
    trust_pickle: allow `torch.load(weights_only=False)` for files holding Python objects.
    return_report: also return the `ConversionReport`.
  """
  state_dict = read_state_dict(path, trust_pickle=trust_pickle)
  variables, report = convert_state_dict(state_dict, spec, rule=rule, seed=seed,
                                         source=os.fspath(path))
  return (variables, report) if return_report else variables


# --------------------------------------------------------------------------- Flax -> torch
def _check_variables(variables: Mapping[str, Any], arch: str) -> None:
  if arch not in ARCHS:
    raise ConversionError(f"arch must be one of {ARCHS}, got {arch!r}")
  params = variables.get("params") if isinstance(variables, Mapping) else None
  if not isinstance(params, Mapping):
    raise ConversionError("variables must be a dict with a 'params' collection")
  top = set(params)
  if registry.architecture(arch).kind == "generator":
    need = {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "layer5"}
    if arch == "deeplabv2_multi":
      need.add("layer6")
    if not need <= top or (arch == "deeplabv2" and "layer6" in top):
      raise ConversionError(f"variables are not a {arch}: top-level modules {sorted(top)}")
  elif top != {"conv1", "conv2", "conv3", "conv4", "classifier"}:
    raise ConversionError(f"variables are not a {arch}: top-level modules {sorted(top)}")


def to_numpy_state_dict(variables: Mapping[str, Any], arch: str, *,
                        include_num_batches_tracked: bool = False
                        ) -> "OrderedDict[str, np.ndarray]":
  """PyTorch state_dict of the originals as numpy arrays (OIHW kernels), in state_dict order.

  `arch`: one of `ARCHS` (only the architecture matters). Exact (transposes only).
  `include_num_batches_tracked` adds the int64 zero counters of PyTorch >= 0.4.1; without
  them (the originals' format) `load_state_dict(strict=True)` still works, PyTorch fills
  them in.
  """
  _check_variables(variables, arch)
  flat = {p: v for p, v in traverse_util.flatten_dict(dict(variables)).items()
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
  """Writes the PyTorch state_dict of `variables` (`arch` in `ARCHS`) to `path` atomically."""
  write_state_dict(to_numpy_state_dict(variables, arch,
                                       include_num_batches_tracked=include_num_batches_tracked),
                   path, overwrite=overwrite, legacy_format=legacy_format)
