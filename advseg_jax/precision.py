"""The library's one precision rule: losses, BN statistics, parameters and accumulations run
in float32 *or wider*.

Every compute dtype the models accept (`models.registry.DTYPES`) maps to a "wide" dtype:

    compute dtype      wide dtype (losses, BN statistics, parameters, accumulators)
    bfloat16, float16  float32
    float32            float32
    float64            float64   (needs `jax_enable_x64`; for numerical checks, not training)

So bfloat16 / float32 programs are exactly what they would be with a hard-coded float32,
and a float64 program stays float64 end to end: `tests/parity/test_step_parity.py` compares a
float64 JAX training step with a float64 PyTorch reference, where no ReLU / max-pool
decision can flip between the two, and so can check gradients tightly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def wide_dtype(dtype: Any = None) -> Any:
  """float32 for None, bfloat16, float16 and float32; float64 for float64 (`jnp.dtype`)."""
  if dtype is None:
    return jnp.dtype(jnp.float32)
  return jnp.promote_types(dtype, jnp.float32)


def to_wide(x: jax.Array) -> jax.Array:
  """`x` cast to `wide_dtype(x.dtype)` (integers and booleans become float32)."""
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    return x.astype(jnp.float32)
  return x.astype(wide_dtype(x.dtype))


def needs_x64(dtype: Any) -> bool:
  """True for a float64 `dtype` (or its name) while JAX runs without x64, where it would
  silently compute in float32."""
  return jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64


def require_x64_for(dtype: Any, what: str) -> None:
  """A clear error naming `what` where `needs_x64(dtype)`."""
  if needs_x64(dtype):
    raise ValueError(f"{what}='float64' needs 64-bit JAX: set JAX_ENABLE_X64=1 (or "
                     "jax.config.update('jax_enable_x64', True), or run inside "
                     "`with jax.enable_x64(True):`) before the model is built")
