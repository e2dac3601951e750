"""Discriminators (docs/FIDELITY.md §4), NHWC.

* `FCDiscriminator` -- AdvSemiSeg / AdaptSegNet: five 4x4/s2/p1 convs (ndf, 2ndf, 4ndf, 8ndf, 1)
  with LeakyReLU(0.2) between them, raw logits, no normalisation. Input: class probabilities
  [N, H, W, C]; output [N, floor(H/32), floor(W/32), 1] (321 -> 10, 512x1024 -> 16x32).
  Parameters `conv{1..4}`, `classifier` (kernel HWIO, bias) <- `conv{1..4}.*`, `classifier.*`.
  `num_downsamples=n < 5` (not in the originals) keeps the first n convs at stride 2 and runs
  the others at stride 1 on an input padded by (1, 2) zeros, which keeps the size: output
  [N, ~H/2^n, ~W/2^n, 1] with the same parameters, a finer map for small inputs.
* `FCDiscriminator(padding=2, out_channels=2, upsample_to_input=True)` -- the ICLR-2018
  reproduction (mohitzsh `Dis`): 2-class logits upsampled inside the module by five
  (bilinear x2, drop last row/column) steps: 321 -> 11 -> 21 -> ... -> 321.
* `ImageLabelDiscriminator` -- Luc et al. 2016: an image branch and a label-map branch, each
  mapped to 64 channels, concatenated, then a conv / max-pool stack and global average
  pooling to one logit per image: [N, H, W, 3] x [N, H, W, K] -> [N, 1].
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from advseg_jax.models import layers
from advseg_jax.precision import to_wide


def _torch_conv(features: int, kernel: int, in_features: int, *, stride: int = 1,
                padding: int = 0, dtype: Any = jnp.float32, name: str) -> nn.Conv:
  """Conv with bias and PyTorch's default initialisation (what the discriminators use)."""
  return layers.conv(features, kernel, stride=stride, padding=padding, use_bias=True,
                     kernel_init=layers.torch_default_kernel_init, in_features=in_features,
                     dtype=dtype, name=name)


class FCDiscriminator(nn.Module):
  """Fully-convolutional discriminator on probability maps."""
  ndf: int = 64
  padding: int = 1
  out_channels: int = 1
  upsample_to_input: bool = False
  negative_slope: float = 0.2
  num_downsamples: int = 5
  dtype: Any = jnp.float32

  def _conv(self, x: jax.Array, features: int, index: int, name: str) -> jax.Array:
    """The index-th 4x4 conv: stride 2 for the first `num_downsamples`, else size-keeping."""
    if index < self.num_downsamples:
      return _torch_conv(features, 4, x.shape[-1], stride=2, padding=self.padding,
                         dtype=self.dtype, name=name)(x)
    x = jnp.pad(x, ((0, 0), (1, 2), (1, 2), (0, 0)))
    return _torch_conv(features, 4, x.shape[-1], dtype=self.dtype, name=name)(x)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not 1 <= self.num_downsamples <= 5:
      raise ValueError(f"num_downsamples must be 1..5, got {self.num_downsamples}")
    if self.upsample_to_input and self.num_downsamples != 5:
      raise ValueError("upsample_to_input (the ICLR-2018 D) needs num_downsamples=5")
    in_hw = x.shape[1:3]
    x = x.astype(self.dtype)
    widths = (self.ndf, self.ndf * 2, self.ndf * 4, self.ndf * 8)
    for i, width in enumerate(widths):
      x = layers.leaky_relu(self._conv(x, width, i, f"conv{i + 1}"), self.negative_slope)
    x = self._conv(x, self.out_channels, 4, "classifier")
    x = to_wide(x)
    if self.upsample_to_input:
      for _ in range(5):  # F.upsample_bilinear(x, scale_factor=2)[:, :, :-1, :-1]
        h, w = x.shape[1:3]
        x = layers.resize_bilinear_align_corners(x, (2 * h, 2 * w))[:, :-1, :-1, :]
      if tuple(x.shape[1:3]) != tuple(in_hw):
        # The original only reaches the input size when H, W = 32k + 1 (e.g. 321); other
        # sizes are resized once more so the map always covers the input.
        x = layers.resize_bilinear_align_corners(x, in_hw)
    return x


class ImageLabelDiscriminator(nn.Module):
  """Luc et al. (2016) discriminator that sees the image together with a label map.

  Image branch: conv3x3(3 -> 16) ReLU, conv3x3(16 -> 64) ReLU. Label branch:
  conv3x3(K -> 64) ReLU. Both at full resolution; concatenated (128 ch), then the LargeFOV
  stack: conv3x3 128, 128, max-pool 2, conv3x3 256, 256, max-pool 2, conv3x3 512, conv3x3
  -> 1, global average pool. Returns one logit per image, [N, 1].
  """
  branch_features: int = 64
  stack_features: Sequence[int] = (128, 128, 256, 256, 512)
  pool_after: Sequence[int] = (1, 3)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, label_map: jax.Array) -> jax.Array:
    if image.shape[:3] != label_map.shape[:3]:
      raise ValueError(f"image {image.shape} and label map {label_map.shape} must share N, H, W")
    img = image.astype(self.dtype)
    img = nn.relu(_torch_conv(16, 3, img.shape[-1], padding=1, dtype=self.dtype,
                              name="image_conv1")(img))
    img = nn.relu(_torch_conv(self.branch_features, 3, 16, padding=1, dtype=self.dtype,
                              name="image_conv2")(img))
    lab = label_map.astype(self.dtype)
    lab = nn.relu(_torch_conv(self.branch_features, 3, lab.shape[-1], padding=1,
                              dtype=self.dtype, name="label_conv1")(lab))
    x = jnp.concatenate([img, lab], axis=-1)
    for i, width in enumerate(self.stack_features):
      x = nn.relu(_torch_conv(width, 3, x.shape[-1], padding=1, dtype=self.dtype,
                              name=f"conv{i + 1}")(x))
      if i in self.pool_after:
        x = nn.max_pool(x, (2, 2), (2, 2))
    x = _torch_conv(1, 3, x.shape[-1], padding=1, dtype=self.dtype, name="classifier")(x)
    return jnp.mean(to_wide(x), axis=(1, 2))
