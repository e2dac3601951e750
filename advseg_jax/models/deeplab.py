"""DeepLab-v2 (`Res_Deeplab`, `DeeplabMulti`) in Flax linen, NHWC (docs/FIDELITY.md §1-2).

    model = DeepLabV2(num_classes=21)                     # Res_Deeplab(21)
    variables = model.init(key, jnp.zeros((1, 321, 321, 3)))
    logits = model.apply(variables, x)                    # [N, 41, 41, 21], stride 8
    logits, mut = model.apply(variables, x, train=True, mutable=['batch_stats'])

    multi = DeepLabV2(num_classes=19, multi_level=True)   # DeeplabMulti(19)
    aux, main = multi.apply(variables, x)                 # layer5 on layer3, layer6 on layer4

Inputs are mean-subtracted images on the 0-255 scale in the channel order the
checkpoint expects (AdvSemiSeg RGB, AdaptSegNet BGR); see `advseg_jax.data`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from advseg_jax.kernels.selection import Kernels
from advseg_jax.models import layers
from advseg_jax.models.aspp import ASPP_DILATIONS, ASPPClassifier
from advseg_jax.models.resnet import EXPANSION, RESNET_DEPTHS, ResLayer
from advseg_jax.precision import to_wide

Logits = Union[jax.Array, Tuple[jax.Array, jax.Array]]


def upsample_logits(logits: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear `align_corners=True` resize of NHWC logits to `size=(H, W)` (torch-exact)."""
  return layers.resize_bilinear_align_corners(logits, size)


def output_size(n: int) -> int:
  """Spatial size of the stride-8 logits for an input side of length `n` (e.g. 321 -> 41)."""
  a = layers.conv_output_size(n, 7, 2, 3)
  b = a + 2 * 1 + layers.ceil_mode_extra_padding(a, 3, 2, 1)
  b = (b - 3) // 2 + 1
  return layers.conv_output_size(b, 1, 2, 0)


class DeepLabV2(nn.Module):
  """DeepLab-v2 dilated ResNet with ASPP.

  Attributes:
    num_classes: classifier outputs.
    multi_level: False -> `Res_Deeplab` (returns [N,h,w,C] logits of layer5 on layer4);
      True -> `DeeplabMulti` (returns `(aux, main)`: layer5 on the 1024-ch layer3 output,
      layer6 on the 2048-ch layer4 output; both stride 8).
    depths: bottlenecks per layer; (3,4,23,3) = ResNet-101, (3,4,6,3) = ResNet-50.
    width: stem width / planes of layer1 (64 in the originals; smaller only for demos).
    stride_in_1x1: True = MSRA/Caffe bottleneck (originals), False = torchvision layout.
    aspp_branches_used: 2 = the released models' buggy ASPP, 4 = the corrected sum.
    bn_mode: 'batch_stats' (batch statistics when `train=True`, running statistics at eval)
      or 'frozen' (running statistics always).
    bn_axis_name: mapped axis for cross-device (sync) batch statistics, or None.
    dtype: activation/computation dtype; parameters, BN statistics and the returned logits
      are `precision.wide_dtype(dtype)` (float32; float64 for a float64 model).
    kernels: how the convolutions, batch norms and the ASPP sum are computed
      (`advseg_jax.kernels.selection.Kernels`: same variables, same values up to float
      rounding).
  """
  num_classes: int
  multi_level: bool = False
  depths: Sequence[int] = RESNET_DEPTHS["resnet101"]
  width: int = 64
  stride_in_1x1: bool = True
  aspp_branches_used: int = 2
  aspp_dilations: Sequence[int] = ASPP_DILATIONS
  bn_mode: str = "batch_stats"
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  kernels: Kernels = Kernels()

  def _layer(self, idx: int, planes: int, stride: int, dilation: int) -> ResLayer:
    return ResLayer(planes=planes, blocks=self.depths[idx], stride=stride, dilation=dilation,
                    stride_in_1x1=self.stride_in_1x1, bn_mode=self.bn_mode,
                    bn_axis_name=self.bn_axis_name, dtype=self.dtype, kernels=self.kernels,
                    name=f"layer{idx + 1}")

  def _classifier(self, name: str) -> ASPPClassifier:
    return ASPPClassifier(num_classes=self.num_classes, dilations=tuple(self.aspp_dilations),
                          branches_used=self.aspp_branches_used, dtype=self.dtype,
                          kernels=self.kernels, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> Logits:
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"DeepLabV2 expects NHWC images [N, H, W, 3], got shape {x.shape}")
    if len(self.depths) != 4:
      raise ValueError(f"depths must have 4 entries, got {tuple(self.depths)}")
    x = x.astype(self.dtype)
    w = self.width
    # The originals name the stem conv1/bn1 at the top level; keep those names.
    x = layers.conv(w, 7, stride=2, padding=3, dtype=self.dtype, kernels=self.kernels,
                    name="conv1")(x)
    x = layers.BatchNorm(use_running_average=layers.resolve_bn_mode(self.bn_mode, train),
                         axis_name=self.bn_axis_name, dtype=self.dtype, kernels=self.kernels,
                         name="bn1")(x)
    x = layers.max_pool_ceil(nn.relu(x), 3, 2, 1)
    x = self._layer(0, w, 1, 1)(x, train)
    x = self._layer(1, w * 2, 2, 1)(x, train)
    x3 = self._layer(2, w * 4, 1, 2)(x, train)
    x4 = self._layer(3, w * 8, 1, 4)(x3, train)
    if self.multi_level:
      aux = self._classifier("layer5")(x3)
      main = self._classifier("layer6")(x4)
      return to_wide(aux), to_wide(main)
    return to_wide(self._classifier("layer5")(x4))


def classifier_names(multi_level: bool) -> Tuple[str, ...]:
  """Top-level module names of the classifier head(s) (the 10x learning-rate group)."""
  return ("layer5", "layer6") if multi_level else ("layer5",)


def count_params(tree: Any) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


__all__ = ["DeepLabV2", "upsample_logits", "output_size", "classifier_names", "count_params",
           "EXPANSION", "RESNET_DEPTHS"]
