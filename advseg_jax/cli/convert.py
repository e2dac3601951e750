"""`python -m advseg_jax convert INPUT OUTPUT`: PyTorch .pth <-> model directory.

Exit codes: 0 written, 2 a usage error or a file that cannot be converted (one `error:` line;
nothing is written).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import flags

from advseg_jax import model_io
from advseg_jax.cli import common
from advseg_jax.models.spec import ModelSpec
from advseg_jax.normalization import CHANNEL_ORDERS, NORMALIZATIONS
from advseg_jax.torch_port import convert
from advseg_jax.torch_port.pth import ConversionError

DOC = common.Help(
    usage="usage: python -m advseg_jax convert INPUT OUTPUT --arch ARCH --num_classes K "
          "[flags]\n       python -m advseg_jax convert --reverse MODEL_DIR OUTPUT.pth",
    description=(
        "Convert an original PyTorch checkpoint (.pth) into a Flax model directory\n"
        "(OUTPUT/variables written by orbax + OUTPUT/model.json), or back with --reverse.\n"
        "Nothing is downloaded; nothing is written if anything fails."),
    positionals=[("INPUT", "the .pth checkpoint (or, with --reverse, a model directory)"),
                 ("OUTPUT", "the model directory to create (or, with --reverse, the .pth to "
                            "write)")],
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


def _define_model_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_enum("arch", None, convert.ARCHS,
                    "deeplabv2 = Res_Deeplab (AdvSemiSeg, AdaptSegNet oracle); deeplabv2_multi "
                    "= DeeplabMulti (AdaptSegNet, layer5 aux + layer6 main); fc_discriminator = "
                    "FCDiscriminator; fc2_discriminator = the ICLR-2018 reproduction's 2-class "
                    "Dis (keys conv1..conv5). Required unless --reverse", flag_values=fv)
  flags.DEFINE_integer("num_classes", None,
                       "classes of the generator (21 VOC, 19 Cityscapes), or input channels of "
                       "a discriminator. Required unless --reverse", flag_values=fv)
  flags.DEFINE_enum("rule", "strict", convert.RULES,
                    "how checkpoint keys are matched: strict (every variable must match, e.g. "
                    "released models), advsemi (copy name+shape matches, init the rest: "
                    "AdvSemiSeg train.py), adaptseg (strip 'Scale.', skip layer5 when "
                    "num_classes == 19: AdaptSegNet train), torchvision (ImageNet ResNet-101: "
                    "drop fc.*, torchvision stride layout, new classifiers)", flag_values=fv)
  flags.DEFINE_integer("aspp_branches_used", 2,
                       "ASPP branches summed in the forward pass, 1-4: 2 reproduces the "
                       "released models (the originals' early-return bug), 4 is the corrected "
                       "sum; does not change the stored variables", lower_bound=1,
                       upper_bound=4, flag_values=fv)
  flags.DEFINE_enum("channel_order", None, CHANNEL_ORDERS,
                    "input channel order recorded in model.json: RGB for AdvSemiSeg VOC models, "
                    "BGR for AdaptSegNet models and Caffe-converted inits (default: RGB for "
                    "21-class deeplabv2, BGR otherwise)", flag_values=fv)
  flags.DEFINE_enum("normalization", "caffe", tuple(NORMALIZATIONS),
                    "input normalisation recorded in model.json: caffe (subtract the Caffe "
                    "DeepLab mean: AdvSemiSeg, AdaptSegNet and their inits) or imagenet "
                    "(torchvision's ImageNet mean and std: ImageNet ResNets from torchvision, "
                    "the ICLR-2018 reproduction)", flag_values=fv)
  common.define_parsed(fv, "depths", "resnet101",
                       "bottlenecks per layer, 4 comma-separated ints (3,4,23,3 = ResNet-101) "
                       "or resnet101 / resnet50 / tiny", common.parse_depths, "depths")
  flags.DEFINE_integer("width", 64, "stem width / layer1 planes (64 in the originals)",
                       flag_values=fv)
  flags.DEFINE_bool("stride_in_1x1", None,
                    "MSRA/Caffe bottleneck: stride in the 1x1 conv1 (the originals; default "
                    "except for --rule torchvision)", flag_values=fv)
  flags.DEFINE_bool("torchvision_layout", None,
                    "torchvision bottleneck: stride in the 3x3 conv2 (default for --rule "
                    "torchvision)", flag_values=fv)
  flags.mark_bool_flags_as_mutual_exclusive(["stride_in_1x1", "torchvision_layout"],
                                            flag_values=fv)
  flags.DEFINE_enum("bn_mode", "batch_stats", ("batch_stats", "frozen"),
                    "BatchNorm in training: batch_stats (the originals: batch statistics, "
                    "running stats updated) or frozen (running stats always); recorded in "
                    "model.json", flag_values=fv)
  flags.DEFINE_integer("ndf", 64, "discriminator base width", flag_values=fv)


def define_flags() -> flags.FlagValues:
  fv = flags.FlagValues()
  flags.DEFINE_bool("reverse", False,
                    "convert a Flax model directory (written by this command or "
                    "advseg_jax.model_io.save_model) back to a PyTorch state_dict .pth; arch "
                    "and shapes come from its model.json", flag_values=fv)
  _define_model_flags(fv)
  flags.DEFINE_integer("seed", 0, "PRNG seed for freshly initialised variables",
                       flag_values=fv)
  flags.DEFINE_bool("overwrite", False,
                    "replace an existing non-empty OUTPUT directory (or .pth file)",
                    flag_values=fv)
  flags.DEFINE_bool("trust_pickle", False,
                    "load files holding Python objects besides tensors with "
                    "torch.load(weights_only=False); only for files you trust", flag_values=fv)
  flags.DEFINE_bool("legacy_format", False,
                    "with --reverse: write the pre-1.6 non-zip torch serialisation",
                    flag_values=fv)
  flags.DEFINE_bool("include_num_batches_tracked", False,
                    "with --reverse: add BN num_batches_tracked counters (PyTorch >= 0.4.1 "
                    "keys; the originals' checkpoints have none)", flag_values=fv)
  flags.DEFINE_bool("quiet", False, "print only errors", flag_values=fv)
  return fv


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _provenance(path: str, rule: str) -> Tuple[Dict[str, Any], Optional[str]]:
  """`(model.json 'source' record, warning when the model_zoo hash in the name differs)`."""
  digest = _sha256(path)
  name = os.path.basename(path)
  warning = None
  m = re.search(r"-([0-9a-f]{6,})\.pth$", name)
  if m and not digest.startswith(m.group(1)):
    warning = (f"{name}: sha256 {digest[:12]}... does not start with the {m.group(1)} in its "
               f"name (torch.utils.model_zoo would reject it); the file may be corrupt")
  return {"file": name, "sha256": digest, "rule": rule}, warning


def _run_forward(fv: flags.FlagValues, source: str, output: str) -> None:
  if fv.arch is None or fv.num_classes is None:
    raise common.UsageError("--arch and --num_classes are required (unless --reverse)")
  if fv.stride_in_1x1 is not None:
    stride = fv.stride_in_1x1
  elif fv.torchvision_layout is not None:
    stride = not fv.torchvision_layout
  else:
    stride = fv.rule != "torchvision"
  mean_bgr, std_bgr = NORMALIZATIONS[fv.normalization]
  model = dict(depths=fv.depths, width=fv.width, stride_in_1x1=stride,
               aspp_branches_used=fv.aspp_branches_used, bn_mode=fv.bn_mode, ndf=fv.ndf,
               mean_bgr=mean_bgr, std_bgr=std_bgr)
  model_spec = ModelSpec.for_original(fv.arch, fv.num_classes,
                                      channel_order=fv.channel_order, **model)
  target = os.path.abspath(output)
  model_io._check_target(target, fv.overwrite)  # fail before the slow part
  variables, report = convert.load_torch_checkpoint(
      source, model_spec, rule=fv.rule, seed=fv.seed, trust_pickle=fv.trust_pickle,
      return_report=True)
  spec = model_spec.to_json()
  spec["source"], warning = _provenance(source, fv.rule)
  path = model_io.save_model(target, variables, spec, overwrite=fv.overwrite)
  if not fv.quiet:
    print(report.summary())
    if warning:
      print(f"  warning: {warning}")
    extra = "" if spec["kind"] == "discriminator" else (
        f", channel_order {spec['channel_order']}, aspp_branches_used "
        f"{spec['aspp_branches_used']}")
    print(f"wrote {path} ({spec['arch']}, {spec['num_classes']} classes{extra})")


def _run_reverse(fv: flags.FlagValues, source: str, output: str) -> None:
  target = os.path.abspath(output)
  if os.path.exists(target) and not fv.overwrite:
    raise ConversionError(f"{target}: exists; pass --overwrite to replace it")
  variables, spec = model_io.load_model(source)
  convert.save_torch_checkpoint(variables, spec["arch"], target, overwrite=fv.overwrite,
                                legacy_format=fv.legacy_format,
                                include_num_batches_tracked=fv.include_num_batches_tracked)
  if not fv.quiet:
    print(f"wrote {target} ({spec['arch']}, {spec['num_classes']} classes) from {source}")


def _run(fv: flags.FlagValues, positional: List[str]) -> None:
  if len(positional) != 2:
    raise common.UsageError(f"expected INPUT and OUTPUT, got {len(positional)} arguments "
                            f"{positional}")
  (_run_reverse if fv.reverse else _run_forward)(fv, *positional)


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`convert` command; returns the exit code (0 ok, 2 on any error, one `error:` line)."""
  return common.run_command(argv, "convert", define_flags(), DOC, _run,
                            errors=common.KNOWN_ERRORS + (OSError,), log_level=None)


if __name__ == "__main__":
  sys.exit(main())
