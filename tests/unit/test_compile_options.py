"""`advseg_jax.kernels.compile_options`: the XLA:CPU option that keeps optimisation barriers.

Without it XLA:CPU drops `Bottleneck`'s output barrier before fusion and fuses the residual
stream of a layer into every later block, so the largest fusion grows with the number of
blocks (45 operands for 8 blocks vs 10 with the barrier, measured when this was written).
These tests check the compiled HLO, not the time.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax.kernels import compile_options
from advseg_jax.models.deeplab import DeepLabV2
from advseg_jax.train.parallel import Parallel


def _max_fusion_operands(hlo_text: str) -> int:
  return max(len(re.findall(r"%[\w.\-]+", m.group(1)))
             for m in re.finditer(r"= \S+ fusion\((.*?)\), kind=", hlo_text))


def _train_forward_and_grad_hlo(blocks: int):
  net = DeepLabV2(num_classes=5, depths=(1, 1, blocks, 1), width=8)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 33, 33, 3)), jnp.float32)
  variables = net.init(jax.random.key(0), x)

  def forward(v, x):
    return net.apply(v, x, train=True, mutable=["batch_stats"])[0]

  def loss(v, x):
    return jnp.sum(forward(v, x) ** 2)

  fwd = compile_options.jit(forward).lower(variables, x).compile().as_text()
  grad = compile_options.jit(jax.grad(loss)).lower(variables, x).compile().as_text()
  return fwd, grad


def test_options_by_platform(monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert compile_options.for_platform("cpu") == {"xla_disable_hlo_passes": "cse_barrier_expander"}
  for platform in ("gpu", "cuda", "rocm", "tpu"):
    assert compile_options.for_platform(platform) is None
  # Passes the user disabled through XLA_FLAGS stay disabled.
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2 "
                     "--xla_disable_hlo_passes=algsimp,cse_barrier_expander")
  assert compile_options.for_platform("cpu") == {
      "xla_disable_hlo_passes": "algsimp,cse_barrier_expander"}


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU property")
def test_block_outputs_are_computed_once():
  """The barriers survive to the compiled module and the largest fusion does not grow with
  the number of residual blocks (forward and backward)."""
  fwd4, grad4 = _train_forward_and_grad_hlo(4)
  fwd8, grad8 = _train_forward_and_grad_hlo(8)
  # 1 + 1 + 8 + 1 bottlenecks, one barrier each (the backward adds the cotangents' own).
  assert fwd8.count("opt-barrier(") == 11
  assert grad8.count("opt-barrier(") >= 11
  for small, big in ((fwd4, fwd8), (grad4, grad8)):
    a, b = _max_fusion_operands(small), _max_fusion_operands(big)
    assert b <= a + 2 and b <= 20, (a, b)


@pytest.mark.parametrize("mode", ["jit", "pmap", "shard_map"])
def test_train_step_bindings_compile_with_the_options(mode):
  """Every `Parallel` binding compiles with the options: on the call path and through
  `.lower(...).compile()` (what benchmarks/speed/step_throughput.py uses)."""
  par = Parallel(mode)

  def body(states, batch, rng):
    del rng
    return jax.tree.map(lambda s: jax.lax.optimization_barrier(s * 2.0) + jnp.sum(batch),
                        states)

  step = par.bind_train_step(body)
  states = par.replicate({"w": np.ones(3, np.float32)})
  batch = par.shard_batch(np.ones((par.num_local, 2), np.float32))
  rng = jax.random.key(0)
  text = step.lower(states, batch, rng).compile().as_text()
  assert ("opt-barrier(" in text) == (jax.default_backend() == "cpu")
  for _ in range(2):
    states = step(states, batch, rng)
  np.testing.assert_allclose(par.unreplicate(states)["w"], [10.0] * 3)
  if mode != "pmap" or jax.default_backend() == "cpu":
    assert step._cache_size() == 1  # pylint: disable=protected-access


def test_other_backends_get_the_plain_transforms(monkeypatch):
  """Without options (any backend but CPU) `jit` and `pmap` are jax.jit / jax.pmap as is."""
  monkeypatch.setattr(compile_options, "for_devices", lambda devices=None: None)
  assert not isinstance(compile_options.pmap(lambda x: x * 2, axis_name="i"),
                        compile_options._PmapWithOptions)  # pylint: disable=protected-access
  f = compile_options.jit(lambda x: x * 2)
  assert float(f(jnp.float32(3.0))) == 6.0
