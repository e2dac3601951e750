"""DeepLab-v2 ASPP classifier (`Classifier_Module`, docs/FIDELITY.md §1.2).

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

from advseg_jax.kernels.selection import Kernels
from advseg_jax.models import layers
from advseg_jax.precision import wide_dtype

ASPP_DILATIONS = (6, 12, 18, 24)


class ASPPClassifier(nn.Module):
  """[N, H, W, Cin] -> logits [N, H, W, num_classes] (same spatial size). `kernels` chooses
  how the sum of dilated convolutions is computed (`advseg_jax.kernels`)."""
  num_classes: int
  dilations: Sequence[int] = ASPP_DILATIONS
  branches_used: int = 2
  dtype: Any = jnp.float32
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if not 1 <= self.branches_used <= len(self.dilations):
      raise ValueError(f"aspp_branches_used must be in 1..{len(self.dilations)}, "
                       f"got {self.branches_used}")
    branches = [BranchParams(self.num_classes, x.shape[-1], self.dtype, name=f"conv{i}")()
                for i in range(len(self.dilations))]  # every branch's variables, used or not
    used = range(self.branches_used)
    dtype = self.dtype or jnp.result_type(x, jnp.float32)
    return self.kernels.dilated_conv_sum(x, [branches[i] for i in used],
                                         [self.dilations[i] for i in used], dtype)


class BranchParams(nn.Module):
  """The variables of one ASPP branch, with `layers.conv(..., use_bias=True)`'s names, shapes
  and initialisers (`kernel` [3, 3, Cin, C] `layers.CONV_KERNEL_INIT`, `bias` [C]
  `layers.conv_bias_init`): returns `(kernel, bias)`."""
  features: int
  in_features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    wide = wide_dtype(self.dtype)
    kernel = self.param("kernel", layers.CONV_KERNEL_INIT,
                        (3, 3, self.in_features, self.features), wide)
    bias = self.param("bias", layers.conv_bias_init(self.in_features, 3), (self.features,), wide)
    return kernel, bias
