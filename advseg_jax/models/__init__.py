"""Flax linen models (NHWC): DeepLab-v2 and the discriminators."""

from advseg_jax.models.aspp import ASPPClassifier
from advseg_jax.models.deeplab import (DeepLabV2, classifier_names, count_params, output_size,
                                       upsample_logits)
from advseg_jax.models.discriminator import FCDiscriminator, ImageLabelDiscriminator
from advseg_jax.models.layers import BatchNorm, max_pool_ceil, resize_bilinear_align_corners

__all__ = [
    "ASPPClassifier", "BatchNorm", "DeepLabV2", "FCDiscriminator", "ImageLabelDiscriminator",
    "classifier_names", "count_params", "max_pool_ceil", "output_size",
    "resize_bilinear_align_corners", "upsample_logits",
]
