"""Builds models from plain config data (an `ml_collections.ConfigDict` or a dict).

Generator spec fields (`config.model`):
  arch               'deeplabv2' (Res_Deeplab) | 'deeplabv2_multi' (DeeplabMulti)
  num_classes        int
  depths             4 ints, or a name in RESNET_DEPTHS ('resnet101', 'resnet50', 'tiny')
  width              stem width (64 in the originals)
  stride_in_1x1      True = MSRA/Caffe bottleneck (originals), False = torchvision
  aspp_branches_used 2 (released models) | 4 (corrected ASPP)
  bn_mode            'batch_stats' | 'frozen'
  sync_bn            bool: batch statistics averaged over the device axis
  dtype              'float32' | 'bfloat16' | 'float16' (activations; params, BN stats and
                     losses stay float32) | 'float64' (everything float64: numerical checks,
                     needs JAX_ENABLE_X64=1; see advseg_jax.precision)

Discriminator spec fields (`config.disc`):
  arch               'fc' (FCDiscriminator) | 'fc2' (ICLR 2-channel, in-module upsampling)
                     | 'image_label' (Luc et al.)
  ndf                base width of 'fc'/'fc2' (64)
  dtype
"""

from __future__ import annotations

from typing import Any, Mapping

import jax.numpy as jnp

from advseg_jax.models.deeplab import DeepLabV2
from advseg_jax.models.discriminator import FCDiscriminator, ImageLabelDiscriminator
from advseg_jax.models.resnet import RESNET_DEPTHS
from advseg_jax.precision import require_x64_for

GENERATOR_ARCHS = ("deeplabv2", "deeplabv2_multi")
DISCRIMINATOR_ARCHS = ("fc", "fc2", "image_label")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16,
          "float64": jnp.float64}


def _get(spec: Any, key: str, default: Any) -> Any:
  if isinstance(spec, Mapping):
    return spec.get(key, default)
  return getattr(spec, key, default) if key in spec else default


def resolve_dtype(name: Any, what: str = "dtype") -> Any:
  """A dtype name in DTYPES (or a dtype) -> the dtype; float64 only with x64 enabled."""
  if name is None:
    return jnp.float32
  if isinstance(name, str):
    if name not in DTYPES:
      raise ValueError(f"{what} must be one of {sorted(DTYPES)}, got {name!r}")
    name = DTYPES[name]
  require_x64_for(name, what)
  return name


def resolve_depths(depths: Any) -> tuple:
  if isinstance(depths, str):
    if depths not in RESNET_DEPTHS:
      raise ValueError(f"model.depths must be one of {sorted(RESNET_DEPTHS)} or 4 ints, "
                       f"got {depths!r}")
    return tuple(RESNET_DEPTHS[depths])
  depths = tuple(int(d) for d in depths)
  if len(depths) != 4 or min(depths) < 1:
    raise ValueError(f"model.depths must be 4 positive ints, got {depths}")
  return depths


def build_generator(spec: Any, *, bn_axis_name: str | None = None) -> DeepLabV2:
  """DeepLabV2 from a generator spec; `bn_axis_name` is used only when `sync_bn` is set."""
  arch = _get(spec, "arch", "deeplabv2")
  if arch not in GENERATOR_ARCHS:
    raise ValueError(f"model.arch must be one of {GENERATOR_ARCHS}, got {arch!r}")
  sync = bool(_get(spec, "sync_bn", False))
  return DeepLabV2(
      num_classes=int(_get(spec, "num_classes", 21)),
      multi_level=arch == "deeplabv2_multi",
      depths=resolve_depths(_get(spec, "depths", "resnet101")),
      width=int(_get(spec, "width", 64)),
      stride_in_1x1=bool(_get(spec, "stride_in_1x1", True)),
      aspp_branches_used=int(_get(spec, "aspp_branches_used", 2)),
      bn_mode=str(_get(spec, "bn_mode", "batch_stats")),
      bn_axis_name=bn_axis_name if sync else None,
      dtype=resolve_dtype(_get(spec, "dtype", "float32"), "model.dtype"),
      pointwise_impl=str(_get(spec, "pointwise_impl", "dot")),
      conv_dx_impl=str(_get(spec, "conv_dx_impl", "auto")),
      aspp_impl=str(_get(spec, "aspp_impl", "auto")),
  )


def build_discriminator(spec: Any):
  """A discriminator module from a discriminator spec."""
  arch = _get(spec, "arch", "fc")
  dtype = resolve_dtype(_get(spec, "dtype", "float32"), "disc.dtype")
  ndf = int(_get(spec, "ndf", 64))
  if arch == "fc":
    return FCDiscriminator(ndf=ndf, dtype=dtype)
  if arch == "fc2":
    return FCDiscriminator(ndf=ndf, padding=2, out_channels=2, upsample_to_input=True,
                           dtype=dtype)
  if arch == "image_label":
    return ImageLabelDiscriminator(dtype=dtype)
  raise ValueError(f"disc.arch must be one of {DISCRIMINATOR_ARCHS}, got {arch!r}")
