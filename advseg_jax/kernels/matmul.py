"""Convolutions as matrix products, with hand-written backward passes (NHWC / HWIO).

Each function equals its convolution up to the order of the float summation; the variables
of the modules have the names, shapes and initialisers of the plain `nn.Conv`, so
checkpoints are interchangeable. They pay on XLA:CPU, which wraps convolutions (above all
their gradients) in layout transposes and runs channel-heavy ones below its matrix-product
rate (benchmarks/RESULTS.md):

* `channel_matmul`, `PointwiseConv`     -- a 1x1 convolution as a channel contraction;
* `conv3x3_matmul_dx`, `Conv3x3MatmulDx` -- a stride-1 3x3 convolution whose input gradient
                                           is a matrix product and a col2im;
* `dilated_conv3x3_sum`                 -- a sum of dilated 3x3 convolutions (the ASPP head)
                                           as one matrix product over the live taps and
                                           shifted adds.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax.precision import wide_dtype

Dtype = Any
Initializer = Callable[..., jax.Array]


# --------------------------------------------------------------------------- 1x1
@jax.custom_vjp
def channel_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  """[..., Cin] x [Cin, Cout] -> [..., Cout]: a 1x1 convolution over channels-last input.

  The backward is written out over the flattened [M, C] rows: dx = g w^T, dw = x^T g
  (autodiff of `dot_general` makes XLA:CPU copy g into a transposed [Cout, M] layout first).
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

  Variables: `kernel` [1, 1, Cin, Cout] (HWIO), optional `bias` [Cout]. A strided 1x1
  convolution without padding reads rows / columns 0, s, 2s, ...: the input is subsampled,
  then contracted over channels: [N, H, W, Cin] -> [N, H', W', Cout].
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


# --------------------------------------------------------------------------- 3x3
def shift(x: jax.Array, dh: int, dw: int) -> jax.Array:
  """[N, H, W, ...] -> same shape, `out[n, h, w] = x[n, h + dh, w + dw]` (0 outside)."""
  zero = jnp.zeros((), x.dtype)
  config = [(0, 0, 0), (-dh, dh, 0), (-dw, dw, 0)] + [(0, 0, 0)] * (x.ndim - 3)
  return lax.pad(x, zero, config)


def shifted_sum(cols: jax.Array, offsets: Sequence[Tuple[int, int]]) -> jax.Array:
  """cols [N, H, W, T, C] -> [N, H, W, C]: `out[p] = sum_t cols[p + offsets[t], t]` (0 where
  p + offset falls outside the map), summed in tap order."""
  out = None
  for t, (dh, dw) in enumerate(offsets):
    slab = shift(cols[:, :, :, t], dh, dw)
    out = slab if out is None else out + slab
  return out


def conv3x3(x: jax.Array, w: jax.Array, dilation: int) -> jax.Array:
  """`nn.Conv2d(Cin, Cout, 3, padding=dilation, dilation=dilation, bias=False)`:
  x [N, H, W, Cin], w [3, 3, Cin, Cout] -> [N, H, W, Cout] (XLA's convolution)."""
  d = dilation
  return lax.conv_general_dilated(x, w, (1, 1), ((d, d), (d, d)), rhs_dilation=(d, d),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3_matmul_dx(x: jax.Array, w: jax.Array, dilation: int) -> jax.Array:
  """`conv3x3(x, w, dilation)` whose input gradient is a matrix product and a col2im.

  x: [N, H, W, Cin], w: [3, 3, Cin, Cout] -> [N, H, W, Cout]. Forward and weight gradient
  are XLA's; the input gradient is
      cols = g w_mat^T          ([N, H, W, Cout] x [Cout, 9 * Cin]),
      d x  = sum over the nine taps of cols[..., tap, :] shifted by the tap's offset
  (XLA's own is a convolution with the kernel flipped and transposed, a layout XLA:CPU
  copies every kernel into first).
  """
  return conv3x3(x, w, dilation)


def _conv3x3_matmul_dx_fwd(x, w, dilation):
  return conv3x3(x, w, dilation), (x, w)


def _conv3x3_matmul_dx_bwd(dilation, residuals, g):
  x, w = residuals
  d = dilation
  n, h, wd, cin = x.shape
  g = g.astype(x.dtype)
  # Output position p received x[p + ((i - 1) d, (j - 1) d)] w[i, j]: send g[p] w[i, j]^T back.
  # The nine-tap sum runs in float32 (as a convolution accumulates) also for bfloat16 inputs.
  cols = lax.dot_general(g, w.reshape(9 * cin, -1).astype(g.dtype), (((3,), (1,)), ((), ())),
                         preferred_element_type=wide_dtype(g.dtype)).reshape(n, h, wd, 9, cin)
  g_x = shifted_sum(cols, [(-(i - 1) * d, -(j - 1) * d) for i in range(3) for j in range(3)])
  (g_w,) = jax.vjp(lambda w_: conv3x3(x, w_, d), w)[1](g)
  return g_x.astype(x.dtype), g_w.astype(w.dtype)


conv3x3_matmul_dx.defvjp(_conv3x3_matmul_dx_fwd, _conv3x3_matmul_dx_bwd)


class Conv3x3MatmulDx(nn.Module):
  """A bias-free stride-1 3x3 `nn.Conv2d` with `padding = dilation` computed by
  `conv3x3_matmul_dx`. Variable: `kernel` [3, 3, Cin, Cout] (HWIO)."""
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


# --------------------------------------------------------------------------- ASPP
def live_taps(height: int, width: int, dilations: Sequence[int]) -> Tuple[Tuple[int, int, int], ...]:
  """(branch, row, column) of the 3x3 taps of dilated convolutions (padding = dilation)
  that read at least one input pixel of an `height` x `width` map: a tap at offset
  ((row - 1) d, (col - 1) d) with |offset| >= the map's side reads only zero padding."""
  return tuple((b, i, j) for b, d in enumerate(dilations) for i in range(3) for j in range(3)
               if abs((i - 1) * d) < height and abs((j - 1) * d) < width)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def dilated_conv3x3_sum(x: jax.Array, kernels: jax.Array, dilations: Tuple[int, ...]) -> jax.Array:
  """Sum over branches b of `nn.Conv2d(Cin, C, 3, padding=d_b, dilation=d_b, bias=False)`,
  as one matrix product and shifted adds.

  x: [N, H, W, Cin]; kernels: [B, 3, 3, Cin, C] (HWIO per branch); dilations: B ints.
  Returns [N, H, W, C] in the wide dtype (float32; float64 for float64 inputs).

  Forward: cols = x_rows [N*H*W, Cin] x [Cin, T*C] over the T taps that read any input
  (`live_taps`: with dilation 12 on a 13x13 map 9 of 9, with 18 or 24 only the centre tap),
  then out[p] = sum_t cols_t[p + offset_t]. Backward (written out):
      g_cols_t[q] = g[q - offset_t],  d x = g_cols x kernels_T^T,  d kernels_T = x_rows^T g_cols.
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
  return shifted_sum(cols, _tap_offsets(taps, dilations)), (x, kernels, mat)


def _dilated_conv3x3_sum_bwd(dilations, residuals, g):
  x, kernels, mat = residuals
  n, h, w, cin = x.shape
  taps = live_taps(h, w, dilations)
  wide = wide_dtype(x.dtype)
  g = g.astype(wide)
  g_cols = jnp.stack([shift(g, -dh, -dw) for dh, dw in _tap_offsets(taps, dilations)],
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
