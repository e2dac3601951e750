"""`ModelSpec`: the one description of a network and of the input it expects.

Training, checkpoints, model directories (`model.json`), conversion and evaluation all
describe a model with this dataclass:

    spec = ModelSpec("deeplabv2", 21)                       # Res_Deeplab(21), RGB input
    spec = ModelSpec.from_json(json.load(open("model.json")))
    module = registry.build(spec)                           # the Flax module
    json.dump(spec.to_json(), f)

Generator fields: depths, width, stride_in_1x1, aspp_branches_used, bn_mode, channel_order,
mean_bgr, std_bgr, dtype. Discriminator fields: ndf, num_downsamples, dtype. `num_classes` is
the classifier's outputs of a generator and the input channels of a discriminator. Images are
NHWC on the 0-255 scale; subtract `mean_bgr` and, when `std_bgr` is set (None by default, and
for specs saved before the field existed), divide by `std_bgr` (both re-ordered to
`channel_order`) before feeding a generator.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Tuple

from advseg_jax.normalization import CAFFE_MEAN_BGR, CHANNEL_ORDERS
from advseg_jax.models import architectures
from advseg_jax.models.layers import BN_MODES

GENERATOR_FIELDS = ("depths", "width", "stride_in_1x1", "aspp_branches_used", "bn_mode",
                    "channel_order", "mean_bgr", "std_bgr")
DISCRIMINATOR_FIELDS = ("ndf", "num_downsamples")


class SpecError(ValueError):
  """A model description names an unknown architecture or holds an invalid field."""


def _check(cond: bool, field: str, expected: str, value: Any) -> None:
  if not cond:
    raise SpecError(f"model spec field {field} = {value!r} is invalid: expected {expected}")


def _floats(value: Any, field: str) -> Tuple[float, ...]:
  try:
    return tuple(float(v) for v in value)
  except (TypeError, ValueError):
    raise SpecError(f"model spec field {field} = {value!r} is invalid: expected 3 numbers "
                    f"(B, G, R)") from None


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Architecture and input convention of one network (see the module docstring)."""
  arch: str
  num_classes: int
  depths: Tuple[int, ...] = architectures.RESNET_DEPTHS["resnet101"]
  width: int = 64
  stride_in_1x1: bool = True
  aspp_branches_used: int = 2
  bn_mode: str = "batch_stats"
  channel_order: str = "RGB"
  mean_bgr: Tuple[float, ...] = CAFFE_MEAN_BGR
  std_bgr: Optional[Tuple[float, ...]] = None
  ndf: int = 64
  num_downsamples: int = 5
  dtype: str = "float32"

  def __post_init__(self):
    try:
      arch = architectures.architecture(self.arch).name
      depths = architectures.resolve_depths(self.depths)
      architectures.resolve_dtype(self.dtype, "dtype", check_x64=False)
    except ValueError as e:
      raise SpecError(str(e)) from None
    set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
    set_("arch", arch)
    set_("depths", depths)
    set_("num_classes", int(self.num_classes))
    set_("mean_bgr", tuple(float(m) for m in self.mean_bgr))
    if self.std_bgr is not None:
      set_("std_bgr", _floats(self.std_bgr, "std_bgr"))
    _check(self.num_classes >= 1, "num_classes", "a positive int", self.num_classes)
    _check(self.channel_order in CHANNEL_ORDERS, "channel_order", f"one of {CHANNEL_ORDERS}",
           self.channel_order)
    _check(self.aspp_branches_used in (1, 2, 3, 4), "aspp_branches_used", "1..4",
           self.aspp_branches_used)
    _check(self.bn_mode in BN_MODES, "bn_mode", f"one of {BN_MODES}", self.bn_mode)
    _check(len(self.mean_bgr) == 3, "mean_bgr", "3 values (B, G, R)", self.mean_bgr)
    _check(self.std_bgr is None or (len(self.std_bgr) == 3 and min(self.std_bgr) > 0),
           "std_bgr", "None or 3 positive values (B, G, R)", self.std_bgr)
    _check(self.num_downsamples in (1, 2, 3, 4, 5), "num_downsamples", "1..5",
           self.num_downsamples)

  @property
  def kind(self) -> str:
    """'generator' or 'discriminator'."""
    return architectures.architecture(self.arch).kind

  @property
  def is_generator(self) -> bool:
    return self.kind == "generator"

  def replace(self, **changes: Any) -> "ModelSpec":
    return dataclasses.replace(self, **changes)

  def to_json(self) -> Dict[str, Any]:
    """The `model.json` fields of this spec (plain JSON types)."""
    out: Dict[str, Any] = {"kind": self.kind, "arch": self.arch, "num_classes": self.num_classes}
    if self.is_generator:
      out.update(depths=list(self.depths), width=int(self.width),
                 stride_in_1x1=bool(self.stride_in_1x1),
                 aspp_branches_used=int(self.aspp_branches_used), bn_mode=str(self.bn_mode),
                 channel_order=self.channel_order, mean_bgr=list(self.mean_bgr))
      if self.std_bgr is not None:  # written only when set: older specs stay as they were
        out["std_bgr"] = list(self.std_bgr)
    else:
      out["ndf"] = int(self.ndf)
      if self.num_downsamples != 5:  # written only when set, so older readers still load
        out["num_downsamples"] = int(self.num_downsamples)
    out["dtype"] = str(self.dtype)
    return out

  @classmethod
  def from_json(cls, data: Mapping[str, Any]) -> "ModelSpec":
    """A spec from `model.json` content; keys other than the spec's fields are ignored."""
    if not isinstance(data, Mapping) or "arch" not in data or "num_classes" not in data:
      raise SpecError(f"a model spec needs 'arch' and 'num_classes', got "
                      f"{sorted(data) if isinstance(data, Mapping) else type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names and v is not None})

  @classmethod
  def from_config(cls, model: Any, *, num_classes: Optional[int] = None,
                  channel_order: str = "RGB",
                  mean_bgr: Optional[Tuple[float, ...]] = None,
                  std_bgr: Optional[Tuple[float, ...]] = None) -> "ModelSpec":
    """The spec of `config.model` (a generator) or of `config.disc` (a discriminator; pass
    its input channels as `num_classes`)."""
    get = (model.get if isinstance(model, Mapping) or hasattr(model, "get")
           else lambda k, d=None: getattr(model, k, d))
    arch = architectures.architecture(get("arch", "deeplabv2"))
    fields: Dict[str, Any] = {"arch": arch.name,
                              "num_classes": num_classes or get("num_classes", 21),
                              "dtype": str(get("dtype", "float32") or "float32")}
    if arch.kind == "generator":
      fields.update({k: get(k) for k in GENERATOR_FIELDS[:5] if get(k) is not None})
      fields["channel_order"] = channel_order
      fields["mean_bgr"] = tuple(mean_bgr) if mean_bgr is not None else CAFFE_MEAN_BGR
      fields["std_bgr"] = tuple(std_bgr) if std_bgr is not None else None
    else:
      fields.update({k: get(k) for k in DISCRIMINATOR_FIELDS if get(k) is not None})
    return cls(**fields)

  @classmethod
  def for_original(cls, arch: str, num_classes: int, **fields: Any) -> "ModelSpec":
    """The spec of a released checkpoint: channel order by the originals' convention (RGB
    for the 21-class `deeplabv2` of AdvSemiSeg, BGR for AdaptSegNet and the Caffe inits;
    docs/FIDELITY.md §6.5 and §7.3) unless given."""
    if fields.get("channel_order") is None:
      name = architectures.architecture(arch).name
      fields["channel_order"] = "RGB" if (name == "deeplabv2" and int(num_classes) == 21) \
          else "BGR"
    return cls(arch, num_classes, **fields)

  def input_shape(self, size: int = 33) -> Tuple[int, int, int, int]:
    """NHWC shape of an example input: images for a generator, class maps for D."""
    if self.is_generator:
      return (1, size, size, 3)
    return (1, max(size, 64), max(size, 64), self.num_classes)
