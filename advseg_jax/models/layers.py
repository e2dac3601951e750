"""Torch-exact primitives of the DeepLab-v2 / discriminator ports (NHWC).

Each helper reproduces one PyTorch operation of the originals up to float rounding (see
tests/parity/test_layers_parity.py):

* `conv`                          -- `nn.Conv2d` with explicit symmetric padding;
* `max_pool_ceil`                 -- `nn.MaxPool2d(k, s, p, ceil_mode=True)`;
* `resize_bilinear_align_corners` -- `F.interpolate(mode='bilinear', align_corners=True)`;
* `BatchNorm`                     -- `nn.BatchNorm2d` in train mode (batch statistics, running
                                     stats updated with momentum 0.1 and the *unbiased*
                                     variance) or eval mode (running statistics);
* initialisers matching PyTorch's defaults and the originals' `normal_(0, 0.01)`.

How a convolution or a batch norm is computed (matrix products, hand-written backward
passes) is chosen by the `kernels` argument (`advseg_jax.kernels.selection.Kernels`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax.kernels.selection import Kernels
from advseg_jax.precision import wide_dtype

Dtype = Any
Initializer = Callable[..., jax.Array]


# --------------------------------------------------------------------------- initialisers
def normal_init(stddev: float) -> Initializer:
  """`weight.data.normal_(0, stddev)` (the originals' conv init)."""
  return nn.initializers.normal(stddev=stddev)


def torch_default_kernel_init(key, shape, dtype=jnp.float32):
  """PyTorch's Conv2d default: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

  `shape` is HWIO, so fan_in = H * W * I.
  """
  fan_in = math.prod(shape[:-1])
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, dtype, -bound, bound)


def torch_default_bias_init(fan_in: int) -> Initializer:
  """PyTorch's Conv2d default bias: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


# --------------------------------------------------------------------------- convolution
CONV_KERNEL_INIT = normal_init(0.01)  # the originals' `m.weight.data.normal_(0, 0.01)`


def conv_bias_init(in_features: int, kernel: int) -> Initializer:
  """PyTorch's default bias init of a `kernel` x `kernel` Conv2d over `in_features` channels."""
  return torch_default_bias_init(in_features * kernel * kernel)


def conv(features: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1,
         use_bias: bool = False, kernel_init: Initializer = CONV_KERNEL_INIT,
         bias_init: Optional[Initializer] = None, in_features: Optional[int] = None,
         dtype: Optional[Dtype] = None, kernels: Kernels = Kernels(),
         name: Optional[str] = None) -> nn.Module:
  """`nn.Conv2d(in, features, kernel, stride, padding, dilation, bias=use_bias)` as a Flax module.

  Padding is explicit and symmetric, never 'SAME' (which differs from PyTorch on odd sizes).
  The kernel is HWIO (`torch_weight.transpose(2, 3, 1, 0)`). With `use_bias` and no
  `bias_init`, the bias gets PyTorch's default init, which needs `in_features`. `kernels`
  chooses how the convolution is computed (same variables whichever it is).
  """
  if use_bias and bias_init is None:
    if in_features is None:
      raise ValueError("conv(): in_features is needed for PyTorch's default bias init")
    bias_init = conv_bias_init(in_features, kernel)
  return kernels.conv(features, kernel, stride=stride, padding=padding, dilation=dilation,
                      use_bias=use_bias, kernel_init=kernel_init,
                      bias_init=bias_init if bias_init is not None else nn.initializers.zeros,
                      dtype=dtype, name=name)


# --------------------------------------------------------------------------- pooling
def ceil_mode_extra_padding(n: int, kernel: int, stride: int, padding: int) -> int:
  """Extra high-side padding that turns floor-mode pooling into PyTorch's ceil_mode.

  PyTorch: out = ceil((n + 2p - k) / s) + 1, minus one if the last window would start
  inside the right padding. Returns how many more -inf cells the high side needs.
  """
  out = -(-(n + 2 * padding - kernel) // stride) + 1
  if (out - 1) * stride >= n + padding:
    out -= 1
  return max((out - 1) * stride + kernel - (n + 2 * padding), 0)


def max_pool_ceil(x: jax.Array, kernel: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
  """`nn.MaxPool2d(kernel, stride, padding, ceil_mode=True)` on NHWC input [N, H, W, C]."""
  h, w = x.shape[1], x.shape[2]
  pad_h = (padding, padding + ceil_mode_extra_padding(h, kernel, stride, padding))
  pad_w = (padding, padding + ceil_mode_extra_padding(w, kernel, stride, padding))
  return nn.max_pool(x, (kernel, kernel), (stride, stride), padding=(pad_h, pad_w))


def conv_output_size(n: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
  """PyTorch's Conv2d output length for input length `n`."""
  return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


# --------------------------------------------------------------------------- resizing
def _interp_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
  n_in = x.shape[axis]
  if n_in == n_out:
    return x
  scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
  # PyTorch computes the source coordinate as `scale * dst_index` in float32 (in float64 for
  # float64 tensors).
  cdt = wide_dtype(x.dtype)
  coords = jnp.arange(n_out, dtype=cdt) * jnp.asarray(scale, cdt)
  i0 = jnp.clip(jnp.floor(coords).astype(jnp.int32), 0, n_in - 1)
  i1 = jnp.minimum(i0 + 1, n_in - 1)
  frac = coords - i0.astype(cdt)
  shape = [1] * x.ndim
  shape[axis] = n_out
  frac = frac.reshape(shape).astype(x.dtype)
  x0 = jnp.take(x, i0, axis=axis)
  x1 = jnp.take(x, i1, axis=axis)
  return x0 + (x1 - x0) * frac


def resize_bilinear_align_corners(x: jax.Array, size: Sequence[int]) -> jax.Array:
  """Bilinear resize of NHWC `x` to `size=(H, W)` with PyTorch's `align_corners=True`.

  `jax.image.resize` uses half-pixel centres and cannot express this; the originals
  upsample logits (and AdvSemiSeg's D maps) this way (docs/FIDELITY.md §5.3).
  """
  out_h, out_w = int(size[0]), int(size[1])
  return _interp_axis(_interp_axis(x, 1, out_h), 2, out_w)


# --------------------------------------------------------------------------- batch norm
BN_MODES = ("batch_stats", "frozen")


class BatchNorm(nn.Module):
  """PyTorch-semantics BatchNorm2d over NHWC input.

  Variables: params `scale`, `bias` [C]; batch_stats `mean`, `var` [C] (PyTorch's
  `weight`, `bias`, `running_mean`, `running_var`).

  `use_running_average=False` normalises with the batch statistics (biased variance) and,
  when the `batch_stats` collection is mutable and the module is not initialising, updates
  `mean <- (1 - momentum) * mean + momentum * batch_mean` and
  `var  <- (1 - momentum) * var + momentum * batch_var * n / (n - 1)` exactly like torch.
  With `axis_name` the statistics are averaged over that mapped axis (sync BN); the
  per-device batches must then be of equal size. Statistics are float32 (float64 for a
  float64 model, `advseg_jax.precision`). `kernels` chooses how the train-mode statistics
  and their gradients are computed.
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.1  # PyTorch convention: weight of the *new* statistic.
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Optional[Dtype] = None
  kernels: Kernels = Kernels()

  @nn.compact
  def __call__(self, x: jax.Array, use_running_average: Optional[bool] = None) -> jax.Array:
    use_ra = nn.merge_param("use_running_average", self.use_running_average, use_running_average)
    features = x.shape[-1]
    dtype = self.dtype or x.dtype
    wide = wide_dtype(dtype)
    scale = self.param("scale", nn.initializers.ones, (features,), wide)
    bias = self.param("bias", nn.initializers.zeros, (features,), wide)
    ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), wide))
    ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), wide))

    if use_ra:
      mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
      return ((x.astype(wide) - ra_mean.value) * mul + bias).astype(dtype)

    y, mean, var = self.kernels.batch_norm_train(x, scale, bias, self.epsilon, self.axis_name,
                                                 dtype)
    if not self.is_initializing() and self.is_mutable_collection("batch_stats"):
      count = math.prod(x.shape[:-1])
      if self.axis_name is not None:
        count = count * lax.psum(1, self.axis_name)
      unbiased = var * (count / jnp.maximum(count - 1, 1))
      ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
      ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
    return y


def resolve_bn_mode(bn_mode: str, train: bool) -> bool:
  """Returns `use_running_average` for a BN mode.

  'batch_stats' (the originals: `model.train()` with frozen affine) uses batch statistics
  in training and running statistics at evaluation; 'frozen' always uses running stats.
  """
  if bn_mode not in BN_MODES:
    raise ValueError(f"bn_mode must be one of {BN_MODES}, got {bn_mode!r}")
  return (not train) or bn_mode == "frozen"


def leaky_relu(x: jax.Array, slope: float = 0.2) -> jax.Array:
  return jnp.where(x >= 0, x, slope * x)


def pair(v) -> Tuple[int, int]:
  if isinstance(v, int):
    return (v, v)
  return (int(v[0]), int(v[1]))
