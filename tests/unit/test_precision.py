"""advseg_jax.precision: float32-or-wider parameters, BN statistics and losses for every
compute dtype, float64 end to end under x64, and a clear error for float64 without x64."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax import losses, precision
from advseg_jax.config.defaults import base_config
from advseg_jax.config.validation import ConfigError, validate
from advseg_jax.models import build_discriminator, build_generator
from advseg_jax.train import optim


def test_wide_dtype_table():
  assert precision.wide_dtype(None) == jnp.float32
  for dt in (jnp.bfloat16, jnp.float16, jnp.float32):
    assert precision.wide_dtype(dt) == jnp.float32, dt
  assert precision.to_wide(jnp.ones(2, jnp.bfloat16)).dtype == jnp.float32
  assert precision.to_wide(jnp.ones(2, jnp.int32)).dtype == jnp.float32
  with jax.enable_x64(True):
    assert precision.wide_dtype(jnp.float64) == jnp.float64
    assert precision.to_wide(jnp.ones(2, jnp.float64)).dtype == jnp.float64


def _tiny(dtype: str):
  c = base_config()
  c.model.depths, c.model.width, c.model.num_classes = "tiny", 8, 3
  c.disc.ndf = 4
  c.model.dtype = c.disc.dtype = dtype
  return c


def _leaf_dtypes(tree):
  return {str(np.asarray(x).dtype) for x in jax.tree_util.tree_leaves(tree)}


def test_float64_without_x64_is_a_clear_error():
  c = _tiny("float64")
  with jax.enable_x64(False):
    with pytest.raises(ConfigError, match=r"model\.dtype.*JAX_ENABLE_X64"):
      validate(c)
    with pytest.raises(ValueError, match=r"model\.dtype='float64' needs 64-bit JAX"):
      build_generator(c.model)
    with pytest.raises(ValueError, match=r"disc\.dtype='float64' needs 64-bit JAX"):
      build_discriminator(c.disc)


@pytest.mark.parametrize("dtype,wide", [
    pytest.param("bfloat16", "float32", marks=pytest.mark.slow), ("float32", "float32"),
    pytest.param("float64", "float64", marks=pytest.mark.slow)])
def test_variables_outputs_and_losses_are_wide(dtype, wide):
  with jax.enable_x64(dtype == "float64"):
    c = _tiny(dtype)
    validate(c)
    g, d = build_generator(c.model), build_discriminator(c.disc)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 33, 3)), jnp.float32)
    gv = g.init(jax.random.key(0), x, train=False)
    assert _leaf_dtypes(gv) == {wide}, _leaf_dtypes(gv)
    logits, new_vars = g.apply(gv, x, train=True, mutable=["batch_stats"])
    assert logits.dtype == wide and _leaf_dtypes(new_vars) == {wide}
    probs = jax.nn.softmax(logits, -1)
    dv = d.init(jax.random.key(1), probs)
    assert _leaf_dtypes(dv) == {wide}
    out = d.apply(dv, probs)
    assert out.dtype == wide
    labels = jnp.zeros(logits.shape[:3], jnp.int32)
    assert losses.cross_entropy(logits, labels).dtype == wide
    assert losses.gan_loss(out, 1.0, "ls").dtype == wide
    assert losses.gan_loss(out, 1.0, "vanilla").dtype == wide


def test_poly_schedule_is_float32_and_exact_in_float64_under_x64():
  sched = optim.poly_schedule(2.5e-4, 10, 0.9)
  v32 = sched(jnp.asarray(3, jnp.int32))
  assert v32.dtype == jnp.float32
  exact = 2.5e-4 * (1 - 3 / 10) ** 0.9           # the originals' Python-float lr_poly
  with jax.enable_x64(True):
    v64 = jax.jit(sched)(jnp.asarray(3, jnp.int32))
    after = jax.jit(sched)(jnp.asarray(12, jnp.int32))
  assert v64.dtype == jnp.float64 and abs(float(v64) - exact) <= 1e-18
  assert float(after) == 0.0
  assert abs(float(v32) - exact) <= 1e-6 * exact             # float32 rounding only
