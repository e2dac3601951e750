"""Train-mode batch normalisation with a hand-written backward pass (`batch_norm_train`).

Same values as autodiff of `batch_norm_statistics`, with four channel sums fewer and fewer
passes over x in the backward (faster on XLA:CPU, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax.precision import to_wide

Dtype = Any


def batch_norm_statistics(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                          axis_name: Optional[str], dtype: Dtype):
  """Train-mode batch norm over all axes but the last: returns `(y, mean, var)`.

  x: [..., C] (NHWC); scale, bias: [C] float32. `mean` and the biased `var` are float32 [C]
  (all float64 for float64 `x`, `advseg_jax.precision`) over this device's batch, averaged
  over `axis_name` when given (sync BN, equal per-device batches);
  y = (x - mean) / sqrt(var + epsilon) * scale + bias in `dtype`. Differentiated by autodiff.
  """
  return _batch_norm_train_fwd(x, scale, bias, epsilon, axis_name, dtype)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float,
                     axis_name: Optional[str], dtype: Dtype):
  """`batch_norm_statistics` with its backward written out.

  With x_hat = (x - mean) / sqrt(var + epsilon) and sums over the batch axes (and, with
  `axis_name`, over devices):
      d bias = sum(g),  d scale = sum(g * x_hat),
      d x    = scale / sqrt(var + eps) * (g - mean(g) - x_hat * mean(g * x_hat))
               + (d mean + 2 * d var * (x - mean)) / n.
  `d scale` / `d bias` are this device's shares, as autodiff gives them; `d x` includes
  every device's contribution.
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
