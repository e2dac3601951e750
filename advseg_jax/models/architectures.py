"""The one table of architecture names, and the dtype / depth names of a model description.

    architecture("fc")          # -> Architecture(name='fc_discriminator', config_name='fc', ...)
    names("generator")          # ('deeplabv2', 'deeplabv2_multi')
    names(convertible=True)     # the architectures with a PyTorch state_dict layout

Each architecture has one name (stored in `model.json`, given to `convert --arch`) and the
short name the training config uses (`config.model.arch`, `config.disc.arch`); both are
accepted everywhere. `advseg_jax.models.registry` builds the modules.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax.numpy as jnp

from advseg_jax.models.resnet import RESNET_DEPTHS
from advseg_jax.precision import require_x64_for


@dataclasses.dataclass(frozen=True)
class Architecture:
  name: str          # model.json / convert name
  config_name: str   # config.model.arch / config.disc.arch value
  kind: str          # 'generator' | 'discriminator'
  original: str      # the network in the original code
  convertible: bool  # has a PyTorch state_dict layout (advseg_jax.torch_port)


ARCHITECTURES: Dict[str, Architecture] = {a.name: a for a in (
    Architecture("deeplabv2", "deeplabv2", "generator", "Res_Deeplab", True),
    Architecture("deeplabv2_multi", "deeplabv2_multi", "generator", "DeeplabMulti", True),
    Architecture("fc_discriminator", "fc", "discriminator", "FCDiscriminator", True),
    Architecture("fc2_discriminator", "fc2", "discriminator", "Dis (ICLR-2018 reproduction)",
                 True),
    Architecture("image_label_discriminator", "image_label", "discriminator",
                 "Luc et al. 2016 image + label-map discriminator", False),
)}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}


def names(kind: Optional[str] = None, *, config: bool = False,
          convertible: Optional[bool] = None) -> Tuple[str, ...]:
  """Architecture names (config names with `config=True`), optionally of one kind."""
  return tuple(a.config_name if config else a.name for a in ARCHITECTURES.values()
               if (kind is None or a.kind == kind)
               and (convertible is None or a.convertible == convertible))


GENERATOR_ARCHS = names("generator")
DISCRIMINATOR_ARCHS = names("discriminator", config=True)   # config.disc.arch values


def architecture(name: str) -> Architecture:
  """The architecture called `name` (its name or config name)."""
  for a in ARCHITECTURES.values():
    if name in (a.name, a.config_name):
      return a
  raise ValueError(f"unknown architecture {name!r}: expected one of {names()} (or the config "
                   f"names {tuple(a.config_name for a in ARCHITECTURES.values())})")


def resolve_dtype(name: Any, what: str = "dtype", check_x64: bool = True) -> Any:
  """A dtype name in DTYPES (or a dtype) -> the dtype; float64 only with x64 enabled."""
  if name is None:
    return jnp.float32
  if isinstance(name, str):
    if name not in DTYPES:
      raise ValueError(f"{what} must be one of {sorted(DTYPES)}, got {name!r}")
    name = DTYPES[name]
  if check_x64:
    require_x64_for(name, what)
  return name


def resolve_depths(depths: Any) -> Tuple[int, ...]:
  """4 ints, or a name in RESNET_DEPTHS ('resnet101', 'resnet50', 'tiny') -> 4 ints."""
  if isinstance(depths, str):
    if depths not in RESNET_DEPTHS:
      raise ValueError(f"model.depths must be one of {sorted(RESNET_DEPTHS)} or 4 ints, "
                       f"got {depths!r}")
    return tuple(RESNET_DEPTHS[depths])
  depths = tuple(int(d) for d in depths)
  if len(depths) != 4 or min(depths) < 1:
    raise ValueError(f"model.depths must be 4 positive ints, got {depths}")
  return depths
