"""DeepLab-v2 ASPP classifier (`Classifier_Module`, ORIGINALS.md §1.2).

Four 3x3 convs `in -> num_classes` with bias and dilation = padding in (6, 12, 18, 24),
weights N(0, 0.01), biases PyTorch default. Their outputs are **summed**. The released
models return after the second branch (an indentation bug), so only branches 0 and 1
contribute: `branches_used=2` reproduces that, `branches_used=4` is the corrected sum.
All four convs always exist (they are in every state_dict).

Parameters: `conv{i}/kernel` [3,3,in,C], `conv{i}/bias` [C]  <- `conv2d_list.{i}.{weight,bias}`.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from advseg_jax.models import layers

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
  """[N, H, W, Cin] -> logits [N, H, W, num_classes] (same spatial size)."""
  num_classes: int
  dilations: Sequence[int] = ASPP_DILATIONS
  branches_used: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not 1 <= self.branches_used <= len(self.dilations):
      raise ValueError(f"aspp_branches_used must be in 1..{len(self.dilations)}, "
                       f"got {self.branches_used}")
    in_features = x.shape[-1]
    out = None
    for i, d in enumerate(self.dilations):
      branch = layers.conv(self.num_classes, 3, padding=d, dilation=d, use_bias=True,
                           in_features=in_features, dtype=self.dtype, name=f"conv{i}")
      if i < self.branches_used:
        y = branch(x)
        out = y if out is None else out + y
      elif self.is_initializing():
        branch(x)  # Create the dead branches' parameters without using them.
    return out
