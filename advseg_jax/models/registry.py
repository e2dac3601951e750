"""Architecture names (`advseg_jax.models.architectures`) and building a Flax module from a
`ModelSpec`.

    registry.architecture("fc")            # -> Architecture(name='fc_discriminator', ...)
    module = registry.build(spec)          # a models.spec.ModelSpec, or model.json content
    module = registry.build(spec, impls={"aspp_impl": "conv"})   # advseg_jax.kernels choices
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Union

from advseg_jax.kernels import selection
from advseg_jax.models.architectures import (ARCHITECTURES, DISCRIMINATOR_ARCHS, DTYPES,
                                             GENERATOR_ARCHS, Architecture, architecture, names,
                                             resolve_depths, resolve_dtype)
from advseg_jax.models.deeplab import DeepLabV2
from advseg_jax.models.discriminator import FCDiscriminator, ImageLabelDiscriminator
from advseg_jax.models.resnet import RESNET_DEPTHS
from advseg_jax.models.spec import ModelSpec

Impls = Union[Mapping[str, str], selection.Kernels, None]


def build(spec: Union[ModelSpec, Mapping[str, Any]], *, bn_axis_name: Optional[str] = None,
          impls: Impls = None):
  """The Flax module of `spec` (a `ModelSpec`, or a mapping read by `ModelSpec.from_json`).

  `bn_axis_name`: device axis for synchronised batch statistics; `impls`: how the generator's
  operations are computed, `{'pointwise_impl': ..., 'conv_dx_impl': ..., 'aspp_impl': ...}`
  (`advseg_jax.kernels.selection.select`) or a `Kernels`.
  """
  if not isinstance(spec, ModelSpec):
    spec = ModelSpec.from_json(spec)
  arch = architecture(spec.arch)
  dtype = resolve_dtype(spec.dtype, "dtype")
  if arch.config_name == "fc":
    return FCDiscriminator(ndf=int(spec.ndf), num_downsamples=int(spec.num_downsamples),
                           dtype=dtype)
  if arch.config_name != "fc" and int(spec.num_downsamples) != 5:
    raise ValueError(f"num_downsamples applies to the 'fc' discriminator only, got "
                     f"{spec.num_downsamples} for {arch.name!r}")
  if arch.config_name == "fc2":
    return FCDiscriminator(ndf=int(spec.ndf), padding=2, out_channels=2,
                           upsample_to_input=True, dtype=dtype)
  if arch.config_name == "image_label":
    return ImageLabelDiscriminator(dtype=dtype)
  kernels = (impls if isinstance(impls, selection.Kernels)
             else selection.select(**dict(impls or {})))
  return DeepLabV2(
      num_classes=int(spec.num_classes), multi_level=arch.name == "deeplabv2_multi",
      depths=spec.depths, width=int(spec.width), stride_in_1x1=bool(spec.stride_in_1x1),
      aspp_branches_used=int(spec.aspp_branches_used), bn_mode=str(spec.bn_mode),
      bn_axis_name=bn_axis_name, dtype=dtype, kernels=kernels)


__all__ = ["ARCHITECTURES", "Architecture", "DISCRIMINATOR_ARCHS", "DTYPES", "GENERATOR_ARCHS",
           "RESNET_DEPTHS", "architecture", "build", "names", "resolve_depths", "resolve_dtype"]
