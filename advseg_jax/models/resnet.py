"""DeepLab-v2 dilated ResNet backbone (docs/FIDELITY.md §1.1), NHWC.

Module names mirror the PyTorch state_dict so conversion is a renaming:

    conv1, bn1                         <- conv1.*, bn1.*
    layer{L}/block{B}/conv{1,2,3}      <- layer{L}.{B}.conv{1,2,3}.weight
    layer{L}/block{B}/bn{1,2,3}        <- layer{L}.{B}.bn{1,2,3}.*
    layer{L}/block0/downsample_conv    <- layer{L}.0.downsample.0.weight
    layer{L}/block0/downsample_bn      <- layer{L}.0.downsample.1.*
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from advseg_jax.kernels.selection import Kernels
from advseg_jax.models import layers

RESNET_DEPTHS: Dict[str, Sequence[int]] = {
    "resnet101": (3, 4, 23, 3),
    "resnet50": (3, 4, 6, 3),
    "tiny": (1, 1, 1, 1),
}
EXPANSION = 4


class Bottleneck(nn.Module):
  """Bottleneck block, expansion 4.

  MSRA/Caffe layout (`stride_in_1x1=True`, the originals): the block stride sits in the 1x1
  `conv1`; torchvision layout (`stride_in_1x1=False`) puts it in the 3x3 `conv2`. The 3x3 conv
  has `dilation = padding = dilation`. `kernels` chooses how the convolutions and batch
  norms are computed (`advseg_jax.kernels`).

  Input [N, H, W, Cin] -> output [N, H', W', 4 * planes].
  """
  planes: int
  stride: int = 1
  dilation: int = 1
  downsample: bool = False
  stride_in_1x1: bool = True
  bn_mode: str = "batch_stats"
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    use_ra = layers.resolve_bn_mode(self.bn_mode, train)
    norm = lambda name: layers.BatchNorm(use_running_average=use_ra, axis_name=self.bn_axis_name,
                                         dtype=self.dtype, kernels=self.kernels, name=name)
    conv = lambda features, kernel, **kw: layers.conv(features, kernel, dtype=self.dtype,
                                                      kernels=self.kernels, **kw)
    s1, s3 = (self.stride, 1) if self.stride_in_1x1 else (1, self.stride)

    out = conv(self.planes, 1, stride=s1, name="conv1")(x)
    out = nn.relu(norm("bn1")(out))
    out = conv(self.planes, 3, stride=s3, padding=self.dilation, dilation=self.dilation,
               name="conv2")(out)
    out = nn.relu(norm("bn2")(out))
    out = conv(self.planes * EXPANSION, 1, name="conv3")(out)
    out = norm("bn3")(out)

    residual = x
    if self.downsample:
      residual = conv(self.planes * EXPANSION, 1, stride=self.stride, name="downsample_conv")(x)
      residual = norm("downsample_bn")(residual)
    return self.kernels.block_output(nn.relu(out + residual))


class ResLayer(nn.Module):
  """`_make_layer`: `blocks` bottlenecks; block 0 has a downsample branch whenever
  `stride != 1 or inplanes != 4 * planes or dilation in (2, 4)` (so in every layer of
  the originals)."""
  planes: int
  blocks: int
  stride: int = 1
  dilation: int = 1
  stride_in_1x1: bool = True
  bn_mode: str = "batch_stats"
  bn_axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    inplanes = x.shape[-1]
    downsample = (self.stride != 1 or inplanes != self.planes * EXPANSION
                  or self.dilation in (2, 4))
    for b in range(self.blocks):
      x = Bottleneck(
          planes=self.planes,
          stride=self.stride if b == 0 else 1,
          dilation=self.dilation,
          downsample=downsample and b == 0,
          stride_in_1x1=self.stride_in_1x1,
          bn_mode=self.bn_mode,
          bn_axis_name=self.bn_axis_name,
          dtype=self.dtype,
          kernels=self.kernels,
          name=f"block{b}")(x, train)
    return x

