"""Torch-exact primitives for the DeepLab-v2 / discriminator ports.

All tensors are NHWC. Each helper here reproduces one PyTorch operation of the
originals bit-for-bit up to float rounding (see tests/test_layers_parity.py):

* `conv`                         -- `nn.Conv2d` with explicit symmetric padding (1x1 ones
                                    optionally as a matrix product, `PointwiseConv`);
* `max_pool_ceil`                -- `nn.MaxPool2d(k, s, p, ceil_mode=True)`;
* `resize_bilinear_align_corners`-- `F.interpolate(mode='bilinear', align_corners=True)`;
* `BatchNorm`                    -- `nn.BatchNorm2d` in train mode (batch statistics, running
                                    stats updated with momentum 0.1 and the *unbiased* variance)
                                    or eval mode (running statistics);
* `channel_matmul`, `batch_norm_train`, `conv3x3_matmul_dx` -- the 1x1-conv product,
                                    train-mode BN and a stride-1 3x3 conv with hand-written
                                    backward passes (same values as autodiff up to float
                                    rounding, faster on XLA:CPU);
* `dilated_conv3x3_sum`          -- the ASPP head's sum of dilated 3x3 convs as one matrix
                                    product and shifted adds (idem);
* initialisers matching PyTorch's defaults and the originals' `normal_(0, 0.01)`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax.precision import to_wide, wide_dtype

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
POINTWISE_IMPLS = ("dot", "conv")
CONV_KERNEL_INIT = normal_init(0.01)  # the originals' `m.weight.data.normal_(0, 0.01)`


def conv_bias_init(in_features: int, kernel: int) -> Initializer:
  """PyTorch's default bias init of a `kernel` x `kernel` Conv2d over `in_features` channels."""
  return torch_default_bias_init(in_features * kernel * kernel)


@jax.custom_vjp
def channel_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """[..., Cin] x [Cin, Cout] -> [..., Cout]: a 1x1 convolution over channels-last input.

  The backward is written out: dx = g w^T and dw = x_rows^T g_rows over the flattened
  [M, C] rows. Autodiff of `dot_general` gives the same values, but XLA:CPU then copies the
  incoming gradient into a transposed [Cout, M] layout for every weight gradient (31 ms of
  thread time in ResNet-101's G backward at 2x97x97 on 2 cores, benchmarks/RESULTS.md).
  """
  return lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _channel_matmul_fwd(x, w):
  return channel_matmul(x, w), (x, w)


def _channel_matmul_bwd(residuals, g):
  x, w = residuals
  g_x = lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
  rows_x = x.reshape(-1, x.shape[-1])
  rows_g = g.reshape(-1, g.shape[-1])
  g_w = lax.dot_general(rows_x, rows_g, (((0,), (0,)), ((), ())))
  return g_x.astype(x.dtype), g_w.astype(w.dtype)


channel_matmul.defvjp(_channel_matmul_fwd, _channel_matmul_bwd)


class PointwiseConv(nn.Module):
  """A 1x1 `nn.Conv2d(in, features, 1, stride, padding=0)` computed as a matrix product.

  Same variables as `conv(features, 1, ...)` (`kernel` [1, 1, Cin, Cout] HWIO, optional
  `bias` [Cout]), same initialisers and names, so checkpoints are interchangeable. A strided
  1x1 convolution without padding reads the input at rows / columns 0, s, 2s, ...: the input
  is subsampled first, then contracted over channels (`channel_matmul`:
  [N, H', W', Cin] x [Cin, Cout] -> [N, H', W', Cout]; any channels-last rank works).

  Why: XLA:CPU wraps convolutions, and above all their weight gradients, in layout transposes
  that a channel contraction does not need. On 2 CPU cores this cut ResNet-101's G
  forward + backward from 680 to 429 ms (benchmarks/RESULTS.md). Only the order of the
  float32 summation differs from `conv`.
  """
  features: int
  stride: int = 1
  use_bias: bool = False
  kernel_init: Initializer = None
  bias_init: Initializer = nn.initializers.zeros
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (1, 1, x.shape[-1], self.features),
                        wide_dtype(self.dtype))
    dtype = self.dtype or jnp.result_type(x, jnp.float32)
    if self.stride > 1:
      if x.ndim != 4:
        raise ValueError(f"a strided PointwiseConv needs NHWC input, got shape {x.shape}")
      x = x[:, ::self.stride, ::self.stride]
    y = channel_matmul(x.astype(dtype), kernel[0, 0].astype(dtype))
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,),
                         wide_dtype(self.dtype)).astype(dtype)
    return y


CONV_DX_IMPLS = ("auto", "matmul", "xla")
ASPP_IMPLS = ("auto", "matmul", "conv")


def _resolve_impl(field: str, impl: str, impls: Sequence[str]) -> str:
  """`impl` from `impls` = ('auto', <the CPU choice>, <the other backends' choice>)."""
  if impl not in impls:
    raise ValueError(f"{field} must be one of {tuple(impls)}, got {impl!r}")
  if impl == "auto":
    return impls[1] if jax.default_backend() == "cpu" else impls[2]
  return impl


def resolve_conv_dx_impl(impl: str) -> str:
  """'auto' -> 'matmul' on CPU (measured faster there), 'xla' on other backends."""
  return _resolve_impl("conv_dx_impl", impl, CONV_DX_IMPLS)


def resolve_aspp_impl(impl: str) -> str:
  """'auto' -> 'matmul' on CPU (measured faster there), 'conv' on other backends."""
  return _resolve_impl("aspp_impl", impl, ASPP_IMPLS)


def _shift(x: jax.Array, dh: int, dw: int) -> jax.Array:
  """[N, H, W, ...] -> same shape, `out[n, h, w] = x[n, h + dh, w + dw]` (0 outside)."""
  zero = jnp.zeros((), x.dtype)
  config = [(0, 0, 0), (-dh, dh, 0), (-dw, dw, 0)] + [(0, 0, 0)] * (x.ndim - 3)
  return lax.pad(x, zero, config)


def _shifted_sum(cols: jax.Array, offsets: Sequence[Tuple[int, int]]) -> jax.Array:
  """cols [N, H, W, T, C] -> [N, H, W, C]: `out[p] = sum_t cols[p + offsets[t], t]` (0 where
  p + offset falls outside the map), summed in tap order."""
  out = None
  for t, (dh, dw) in enumerate(offsets):
    slab = _shift(cols[:, :, :, t], dh, dw)
    out = slab if out is None else out + slab
  return out


def _conv3x3(x, w, dilation):
  d = dilation
  return lax.conv_general_dilated(x, w, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_matmul_dx(x: jax.Array, w: jax.Array, dilation: int) -> jax.Array:
  """`nn.Conv2d(Cin, Cout, 3, stride=1, padding=dilation, dilation=dilation)`, NHWC / HWIO.

  x: [N, H, W, Cin], w: [3, 3, Cin, Cout] -> [N, H, W, Cout]. Forward and weight gradient
  are XLA's; the input gradient is a matrix product and a transposed im2col (col2im):
      cols = g w_mat^T          ([N, H, W, Cout] x [Cout, 9 * Cin]),
      d x  = sum over the nine taps of cols[..., tap, :] shifted by the tap's offset.
  XLA's own input gradient is a convolution with the kernel flipped and transposed, and
  XLA:CPU copies every kernel into that layout first (inside the step 1.4 ms for a
  3x3x256x256 kernel, up to 6.7 ms for a 3x3x512x512 one). On 2 CPU cores this took the ResNet-101 training steps 4-17% faster
  (benchmarks/RESULTS.md). Values equal autodiff's up to float rounding.
  """
  return _conv3x3(x, w, dilation)


def _conv3x3_matmul_dx_fwd(x, w, dilation):
  return _conv3x3(x, w, dilation), (x, w)


def _conv3x3_matmul_dx_bwd(dilation, residuals, g):
  x, w = residuals
  d = dilation
  n, h, wd, cin = x.shape
  g = g.astype(x.dtype)
  # Output position p received x[p + ((i - 1) d, (j - 1) d)] w[i, j]: send g[p] w[i, j]^T back.
  # The nine-tap sum runs in float32 (as a convolution accumulates) also for bfloat16 inputs.
  cols = lax.dot_general(g, w.reshape(9 * cin, -1).astype(g.dtype), (((3,), (1,)), ((), ())),
                         preferred_element_type=wide_dtype(g.dtype)).reshape(n, h, wd, 9, cin)
  g_x = _shifted_sum(cols, [(-(i - 1) * d, -(j - 1) * d) for i in range(3) for j in range(3)])
  (g_w,) = jax.vjp(lambda w_: _conv3x3(x, w_, d), w)[1](g)
  return g_x.astype(x.dtype), g_w.astype(w.dtype)


conv3x3_matmul_dx.defvjp(_conv3x3_matmul_dx_fwd, _conv3x3_matmul_dx_bwd)


class Conv3x3MatmulDx(nn.Module):
  """A bias-free stride-1 3x3 `nn.Conv2d` with `padding = dilation` whose input gradient
  is a matrix product (`conv3x3_matmul_dx`). Same variable (`kernel` [3, 3, Cin, Cout],
  HWIO), name and init as `conv(features, 3, padding=dilation, dilation=dilation)`."""
  features: int
  dilation: int = 1
  kernel_init: Initializer = None
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", self.kernel_init, (3, 3, x.shape[-1], self.features),
                        wide_dtype(self.dtype))
    dtype = self.dtype or jnp.result_type(x, jnp.float32)
    return conv3x3_matmul_dx(x.astype(dtype), kernel.astype(dtype), self.dilation)


def live_taps(height: int, width: int, dilations: Sequence[int]) -> Tuple[Tuple[int, int, int], ...]:
  """(branch, row, column) of the 3x3 taps of dilated convolutions (padding = dilation)
  that read at least one input pixel of an `height` x `width` map: a tap at offset
  ((row - 1) d, (col - 1) d) with |offset| >= the map's side reads only zero padding."""
  return tuple((b, i, j) for b, d in enumerate(dilations) for i in range(3) for j in range(3)
               if abs((i - 1) * d) < height and abs((j - 1) * d) < width)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dilated_conv3x3_sum(x: jax.Array, kernels: jax.Array, dilations: Tuple[int, ...]) -> jax.Array:
  """Sum over branches b of `nn.Conv2d(Cin, C, 3, padding=d_b, dilation=d_b, bias=False)`,
  computed as one matrix product and shifted adds (the ASPP head without its biases).

  x: [N, H, W, Cin]; kernels: [B, 3, 3, Cin, C] (HWIO per branch); dilations: B ints.
  Returns [N, H, W, C] in the wide dtype (float32; float64 for float64 inputs).

  Forward: cols = x_rows [N*H*W, Cin] x [Cin, T*C] over the T taps that read any input
  (`live_taps`: with dilation 12 on a 13x13 map 9 of 9, with 18 or 24 only the centre tap),
  then out[p] = sum_t cols_t[p + offset_t]. Backward (written out):
      g_cols_t[q] = g[q - offset_t],  d x = g_cols x kernels_T^T,  d kernels_T = x_rows^T g_cols.
  XLA:CPU runs these 2048 -> 21 channel convolutions at about 20 GFLOP/s, forward and
  backward; as products they run at the matrix-product rate (benchmarks/RESULTS.md).
  Values equal the convolutions' up to float rounding.
  """
  return _dilated_conv3x3_sum_fwd(x, kernels, dilations)[0]


def _tap_kernel_matrix(kernels, taps):
  """[B, 3, 3, Cin, C] -> [Cin, T * C], the live taps' kernels side by side."""
  mats = jnp.stack([kernels[b, i, j] for b, i, j in taps], axis=1)  # [Cin, T, C]
  return mats.reshape(mats.shape[0], -1)


def _tap_offsets(taps, dilations):
  return [((i - 1) * dilations[b], (j - 1) * dilations[b]) for b, i, j in taps]


def _dilated_conv3x3_sum_fwd(x, kernels, dilations):
  n, h, w, _ = x.shape
  c = kernels.shape[-1]
  taps = live_taps(h, w, dilations)
  wide = wide_dtype(x.dtype)
  mat = _tap_kernel_matrix(kernels, taps).astype(x.dtype)
  cols = lax.dot_general(x, mat, (((3,), (0,)), ((), ())),
                         preferred_element_type=wide).reshape(n, h, w, len(taps), c)
  return _shifted_sum(cols, _tap_offsets(taps, dilations)), (x, kernels, mat)


def _dilated_conv3x3_sum_bwd(dilations, residuals, g):
  x, kernels, mat = residuals
  n, h, w, cin = x.shape
  taps = live_taps(h, w, dilations)
  wide = wide_dtype(x.dtype)
  g = g.astype(wide)
  g_cols = jnp.stack([_shift(g, -dh, -dw) for dh, dw in _tap_offsets(taps, dilations)],
                     axis=3).reshape(n * h * w, -1).astype(x.dtype)  # [M, T * C]
  g_x = lax.dot_general(g_cols, mat, (((1,), (1,)), ((), ())),
                        preferred_element_type=wide).reshape(x.shape)
  g_mat = lax.dot_general(x.reshape(-1, cin), g_cols, (((0,), (0,)), ((), ())),
                          preferred_element_type=wide)  # [Cin, T * C]
  g_mat = g_mat.reshape(cin, len(taps), -1)
  g_k = jnp.zeros(kernels.shape, g_mat.dtype)
  for t, (b, i, j) in enumerate(taps):
    g_k = g_k.at[b, i, j].set(g_mat[:, t])
  return g_x.astype(x.dtype), g_k.astype(kernels.dtype)


dilated_conv3x3_sum.defvjp(_dilated_conv3x3_sum_fwd, _dilated_conv3x3_sum_bwd)


def conv(features: int,
         kernel: int,
         *,
         stride: int = 1,
         padding: int = 0,
         dilation: int = 1,
         use_bias: bool = False,
         kernel_init: Initializer = CONV_KERNEL_INIT,
         bias_init: Optional[Initializer] = None,
         in_features: Optional[int] = None,
         dtype: Optional[Dtype] = None,
         pointwise_impl: str = "conv",
         dx_impl: str = "xla",
         name: Optional[str] = None) -> nn.Module:
  """`nn.Conv2d(in, features, kernel, stride, padding, dilation, bias=use_bias)` as a Flax conv.

  Padding is explicit and symmetric, never 'SAME' (which differs from PyTorch on odd sizes).
  The kernel is HWIO (`torch_weight.transpose(2, 3, 1, 0)`). With `use_bias` and no
  `bias_init`, the bias gets PyTorch's default init, which needs `in_features`.
  `pointwise_impl='dot'` computes an unpadded 1x1 convolution as a matrix product
  (`PointwiseConv`, same variables); 'conv' always uses `nn.Conv`. `dx_impl='matmul'`
  ('auto' resolves by backend) gives a bias-free stride-1 3x3 convolution with
  `padding == dilation` a matrix-product input gradient (`Conv3x3MatmulDx`, same
  variables); other convolutions ignore it.
  """
  if pointwise_impl not in POINTWISE_IMPLS:
    raise ValueError(f"pointwise_impl must be one of {POINTWISE_IMPLS}, got {pointwise_impl!r}")
  if use_bias and bias_init is None:
    if in_features is None:
      raise ValueError("conv(): in_features is needed for PyTorch's default bias init")
    bias_init = conv_bias_init(in_features, kernel)
  if (resolve_conv_dx_impl(dx_impl) == "matmul" and kernel == 3 and stride == 1
      and padding == dilation and not use_bias):
    return Conv3x3MatmulDx(features=features, dilation=dilation, kernel_init=kernel_init,
                           dtype=dtype, name=name)
  if pointwise_impl == "dot" and kernel == 1 and padding == 0:
    return PointwiseConv(features=features, stride=stride, use_bias=use_bias,
                         kernel_init=kernel_init,
                         bias_init=bias_init if bias_init is not None else nn.initializers.zeros,
                         dtype=dtype, name=name)
  return nn.Conv(
      features=features,
      kernel_size=(kernel, kernel),
      strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      kernel_dilation=(dilation, dilation),
      use_bias=use_bias,
      kernel_init=kernel_init,
      bias_init=bias_init if bias_init is not None else nn.initializers.zeros,
      dtype=dtype,
      param_dtype=wide_dtype(dtype),
      name=name)


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
  upsample logits (and AdvSemiSeg's D maps) this way (ORIGINALS.md §5.3).
  """
  out_h, out_w = int(size[0]), int(size[1])
  return _interp_axis(_interp_axis(x, 1, out_h), 2, out_w)


# --------------------------------------------------------------------------- batch norm
BN_MODES = ("batch_stats", "frozen")


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: Optional[str], dtype: Dtype):
  """Train-mode batch norm over all axes but the last: returns `(y, mean, var)`.

  x: [..., C] (NHWC); scale, bias: [C] float32. `mean` and the biased `var` are float32 [C]
  (all float64 for float64 `x`, `advseg_jax.precision`)
  over this device's batch, averaged over `axis_name` when given (sync BN, equal per-device
  batches); y = (x - mean) / sqrt(var + epsilon) * scale + bias in `dtype`.

  The backward is written out (x_hat = (x - mean) / sqrt(var + epsilon), sums over the
  batch axes and, with `axis_name`, over devices):
      d bias = sum(g),  d scale = sum(g * x_hat),
      d x    = scale / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))
               + (d mean + 2 * d var * (x - mean)) / n.
  Autodiff of the two-pass variance gives the same values with four channel sums and
  several more passes over x; on 2 CPU cores this saved about 30 ms of ResNet-101's G
  forward + backward at 2x97x97 (benchmarks/RESULTS.md). `d scale` / `d bias` are this
  device's shares, as autodiff gives them; `d x` includes every device's contribution.
  """
  (y, mean, var), _ = _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, dtype)
  return y, mean, var


def _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, dtype):
  axes = tuple(range(x.ndim - 1))
  x32 = to_wide(x)
  mean = jnp.mean(x32, axes)
  if axis_name is not None:
    mean = lax.pmean(mean, axis_name)
  var = jnp.mean(jnp.square(x32 - mean), axes)
  if axis_name is not None:
    var = lax.pmean(var, axis_name)
  inv_std = lax.rsqrt(var + epsilon)
  y = ((x32 - mean) * (inv_std * scale) + bias).astype(dtype)
  return (y, mean, var), (x, mean, inv_std, scale)


def _batch_norm_train_bwd(epsilon, axis_name, dtype, residuals, cotangents):
  del epsilon, dtype
  x, mean, inv_std, scale = residuals
  g_y, g_mean, g_var = cotangents
  axes = tuple(range(x.ndim - 1))
  count = math.prod(x.shape[:-1])
  centred = to_wide(x) - mean
  g = g_y.astype(centred.dtype)
  g_bias = jnp.sum(g, axes)
  g_scale = jnp.sum(g * centred, axes) * inv_std
  sum_g, sum_g_xhat = g_bias, g_scale
  if axis_name is not None:
    # The statistics are global, so every device's outputs depend on every device's inputs.
    sum_g, sum_g_xhat, g_mean, g_var = lax.psum((sum_g, sum_g_xhat, g_mean, g_var), axis_name)
    count = count * lax.psum(1, axis_name)
  a = scale * inv_std
  b = (g_mean - a * sum_g) / count
  c = (2.0 * g_var - a * inv_std * sum_g_xhat) / count
  g_x = a * g + b + c * centred
  return g_x.astype(x.dtype), g_scale, g_bias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


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
  float64 model, `advseg_jax.precision`).
  """
  use_running_average: Optional[bool] = None
  momentum: float = 0.1  # PyTorch convention: weight of the *new* statistic.
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Optional[Dtype] = None

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

    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon, self.axis_name, dtype)
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
