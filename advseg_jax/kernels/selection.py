"""Which implementation computes each operation of the networks: chosen here, once.

The model files (`advseg_jax.models`) describe the networks of the papers and call four
generic operations through one `Kernels` attribute:

    kernels.conv(...)              a torch-exact `nn.Conv2d` (a Flax module)
    kernels.batch_norm_train(...)  train-mode batch statistics and normalisation
    kernels.dilated_conv_sum(...)  the ASPP head: a sum of dilated 3x3 convolutions + biases
    kernels.block_output(x)        a residual block's output

Every choice gives the same variables and the same values up to float rounding:

    pointwise   'dot': unpadded 1x1 convolutions as matrix products (`matmul.PointwiseConv`);
                'conv': XLA convolutions.                          (config.model.pointwise_impl)
    conv_dx     'matmul': bias-free stride-1 3x3 convolutions with padding = dilation get a
                matrix-product input gradient (`matmul.Conv3x3MatmulDx`); 'xla': XLA's;
                'auto': matmul on CPU, xla elsewhere.                (config.model.conv_dx_impl)
    aspp        'matmul': the ASPP sum as one matrix product (`matmul.dilated_conv3x3_sum`);
                'conv': one convolution per branch; 'auto': matmul on CPU, conv elsewhere.
                                                                     (config.model.aspp_impl)
    batch_norm  'vjp': hand-written backward (`batch_norm.batch_norm_train`); 'autodiff'.
    block_barrier  an optimisation barrier on each residual block's output: XLA:CPU would
                otherwise fuse the block output into every later block of the layer and
                recompute the residual stream there (`compile_options` keeps the barrier
                through XLA:CPU's fusion); a no-op for the values.

`Kernels()` is the default of every model (and of the config fields); `Kernels.reference()`
is plain XLA convolutions and autodiff. 'auto' is resolved by `jax.default_backend()` when
the model is traced, or for a given `backend` by `select(..., backend=...)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax.kernels import matmul
from advseg_jax.kernels.batch_norm import batch_norm_statistics, batch_norm_train
from advseg_jax.precision import wide_dtype

# The values of each choice; with 'auto', the second is CPU's and the third other backends'.
POINTWISE_IMPLS = ("dot", "conv")
CONV_DX_IMPLS = ("auto", "matmul", "xla")
ASPP_IMPLS = ("auto", "matmul", "conv")
BATCH_NORM_IMPLS = ("vjp", "autodiff")
_FIELDS = {"pointwise": ("pointwise_impl", POINTWISE_IMPLS),
           "conv_dx": ("conv_dx_impl", CONV_DX_IMPLS),
           "aspp": ("aspp_impl", ASPP_IMPLS),
           "batch_norm": ("batch_norm", BATCH_NORM_IMPLS)}


def _resolve(impl: str, choices: Sequence[str], backend: Optional[str]) -> str:
  """'auto' -> choices[1] on CPU, choices[2] on other backends; anything else unchanged."""
  if impl != "auto":
    return impl
  return choices[1] if (backend or jax.default_backend()) == "cpu" else choices[2]


@dataclasses.dataclass(frozen=True)
class Kernels:
  """One choice of implementation per operation (see the module docstring)."""
  pointwise: str = "dot"
  conv_dx: str = "auto"
  aspp: str = "auto"
  batch_norm: str = "vjp"
  block_barrier: bool = True

  def __post_init__(self):
    for attr, (field, choices) in _FIELDS.items():
      if getattr(self, attr) not in choices:
        raise ValueError(f"{field} must be one of {choices}, got {getattr(self, attr)!r}")

  @classmethod
  def reference(cls) -> "Kernels":
    """Plain XLA convolutions, autodiff, no barriers: the operations as written."""
    return cls(pointwise="conv", conv_dx="xla", aspp="conv", batch_norm="autodiff",
               block_barrier=False)

  def resolved(self, backend: Optional[str] = None) -> "Kernels":
    """This choice with 'auto' resolved for `backend` (default: JAX's default backend)."""
    return dataclasses.replace(self, conv_dx=_resolve(self.conv_dx, CONV_DX_IMPLS, backend),
                               aspp=_resolve(self.aspp, ASPP_IMPLS, backend))

  # ------------------------------------------------------------------------- operations
  def conv(self, features: int, kernel: int, *, stride: int = 1, padding: int = 0,
           dilation: int = 1, use_bias: bool = False, kernel_init: Callable = None,
           bias_init: Callable = nn.initializers.zeros, dtype: Any = None,
           name: Optional[str] = None) -> nn.Module:
    """`nn.Conv2d(in, features, kernel, stride, padding, dilation, bias=use_bias)`: NHWC in
    and out, kernel HWIO, explicit symmetric padding, parameters in the wide dtype."""
    if (_resolve(self.conv_dx, CONV_DX_IMPLS, None) == "matmul" and kernel == 3
        and stride == 1 and padding == dilation and not use_bias):
      return matmul.Conv3x3MatmulDx(features=features, dilation=dilation,
                                    kernel_init=kernel_init, dtype=dtype, name=name)
    if self.pointwise == "dot" and kernel == 1 and padding == 0:
      return matmul.PointwiseConv(features=features, stride=stride, use_bias=use_bias,
                                  kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
                                  name=name)
    return nn.Conv(features=features, kernel_size=(kernel, kernel), strides=(stride, stride),
                   padding=((padding, padding), (padding, padding)),
                   kernel_dilation=(dilation, dilation), use_bias=use_bias,
                   kernel_init=kernel_init, bias_init=bias_init, dtype=dtype,
                   param_dtype=wide_dtype(dtype), name=name)

  def batch_norm_train(self, x: jax.Array, scale: jax.Array, bias: jax.Array,
                       epsilon: float, axis_name: Optional[str], dtype: Any):
    """`(y, mean, var)` of train-mode BN over all axes of x [..., C] but the last
    (`batch_norm.batch_norm_statistics`)."""
    fn = batch_norm_train if self.batch_norm == "vjp" else batch_norm_statistics
    return fn(x, scale, bias, epsilon, axis_name, dtype)

  def dilated_conv_sum(self, x: jax.Array, branches: Sequence[Tuple[jax.Array, jax.Array]],
                       dilations: Sequence[int], dtype: Any) -> jax.Array:
    """sum_b `nn.Conv2d(Cin, C, 3, padding=d_b, dilation=d_b)(x)` with branch b's
    (kernel [3, 3, Cin, C], bias [C]) in `branches`: x [N, H, W, Cin] -> [N, H, W, C] in
    `dtype`."""
    if _resolve(self.aspp, ASPP_IMPLS, None) == "matmul":
      kernels = jnp.stack([k for k, _ in branches]).astype(dtype)
      out = matmul.dilated_conv3x3_sum(x.astype(dtype), kernels,
                                       tuple(int(d) for d in dilations))
      return (out + sum(b for _, b in branches)).astype(dtype)
    out = None
    for (k, b), d in zip(branches, dilations):
      y = matmul.conv3x3(x.astype(dtype), k.astype(dtype), int(d)) + b.astype(dtype)
      out = y if out is None else out + y
    return out

  def block_output(self, x: jax.Array) -> jax.Array:
    """A residual block's output, behind an optimisation barrier with `block_barrier`."""
    return lax.optimization_barrier(x) if self.block_barrier else x


def select(pointwise_impl: str = "dot", conv_dx_impl: str = "auto", aspp_impl: str = "auto",
           backend: Optional[str] = None) -> Kernels:
  """The kernels of `config.model.{pointwise,conv_dx,aspp}_impl`; 'auto' resolved for
  `backend` when given, else when the model is traced (by `jax.default_backend()`)."""
  kernels = Kernels(pointwise=pointwise_impl, conv_dx=conv_dx_impl, aspp=aspp_impl)
  return kernels.resolved(backend) if backend is not None else kernels


__all__ = ["ASPP_IMPLS", "BATCH_NORM_IMPLS", "CONV_DX_IMPLS", "Kernels", "POINTWISE_IMPLS",
           "select"]
