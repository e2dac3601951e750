"""Flax linen models (NHWC): DeepLab-v2 and the discriminators, described by `ModelSpec`.

    spec = ModelSpec("deeplabv2", 21)
    module = build(spec)                               # any architecture
    g = build_generator(config.model)                  # from a training config
    d = build_discriminator(config.disc, num_classes)  # (input channels)
"""

from typing import Any, Optional

from advseg_jax.models import registry
from advseg_jax.models.aspp import ASPPClassifier
from advseg_jax.models.deeplab import (DeepLabV2, classifier_names, count_params, output_size,
                                       upsample_logits)
from advseg_jax.models.discriminator import FCDiscriminator, ImageLabelDiscriminator
from advseg_jax.models.layers import BatchNorm, max_pool_ceil, resize_bilinear_align_corners
from advseg_jax.models.registry import build
from advseg_jax.models.spec import ModelSpec, SpecError

IMPL_FIELDS = ("pointwise_impl", "conv_dx_impl", "aspp_impl")


def build_generator(model: Any, *, bn_axis_name: Optional[str] = None) -> DeepLabV2:
  """The generator of `config.model`; `bn_axis_name` is used only when `sync_bn` is set."""
  registry.resolve_dtype(model.get("dtype", "float32"), "model.dtype")
  spec = ModelSpec.from_config(model)
  if not spec.is_generator:
    raise ValueError(f"model.arch must be one of {registry.GENERATOR_ARCHS}, got "
                     f"{model.get('arch')!r}")
  impls = {k: str(model.get(k)) for k in IMPL_FIELDS if model.get(k) is not None}
  sync = bool(model.get("sync_bn", False))
  return build(spec, bn_axis_name=bn_axis_name if sync else None, impls=impls)


def build_discriminator(disc: Any, num_classes: int = 1):
  """The discriminator of `config.disc`; `num_classes` is its input channels."""
  registry.resolve_dtype(disc.get("dtype", "float32"), "disc.dtype")
  spec = ModelSpec.from_config(disc, num_classes=num_classes)
  if spec.is_generator:
    raise ValueError(f"disc.arch must be one of {registry.DISCRIMINATOR_ARCHS}, got "
                     f"{disc.get('arch')!r}")
  return build(spec)


__all__ = [
    "ASPPClassifier", "BatchNorm", "DeepLabV2", "FCDiscriminator", "ImageLabelDiscriminator",
    "ModelSpec", "SpecError", "build", "build_discriminator", "build_generator",
    "classifier_names", "count_params", "max_pool_ceil", "output_size",
    "resize_bilinear_align_corners", "upsample_logits",
]
