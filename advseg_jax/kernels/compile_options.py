"""XLA compiler options for the library's compiled functions (train steps, evaluation).

One option, on CPU only: keep `lax.optimization_barrier`s until operator fusion.

XLA:CPU removes optimisation barriers early in its pipeline (the `cse_barrier_expander`
pass), before operator fusion. Its fusion pass may duplicate cheap elementwise producers
into every consumer, and in a residual network that runs away: each block output
`relu(bn3 + residual)` was fused into all later blocks of its layer, so the whole residual
stream was recomputed inside every block, in the forward and again in the backward.
`Kernels.block_output` (kernels.selection) puts a barrier on each block's output; with this
option the barrier survives to fusion and every block output is computed once (the training
steps 17-24% faster on 2 CPU cores, benchmarks/RESULTS.md). Values do not change (a barrier
is an identity).

On other backends `jit` and `pmap` are plain `jax.jit` / `jax.pmap`. An
`--xla_disable_hlo_passes` list in the environment's XLA_FLAGS is kept and extended.

    fn = compile_options.jit(body, donate_argnums=(0,))     # jax.jit + the options
    fn = compile_options.pmap(body, axis_name="batch", ...)  # jax.pmap + the options
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, Optional, Sequence

import jax

CPU_DISABLED_PASSES = ("cse_barrier_expander",)


def _env_disabled_passes() -> Sequence[str]:
  passes = []
  for flag in os.environ.get("XLA_FLAGS", "").split():
    if flag.startswith("--xla_disable_hlo_passes="):
      passes += [p for p in flag.split("=", 1)[1].split(",") if p]
  return passes


def for_platform(platform: str) -> Optional[Dict[str, Any]]:
  """The compiler options for a backend platform ('cpu', 'gpu', 'cuda', 'tpu', ...)."""
  if platform != "cpu":
    return None
  passes = list(dict.fromkeys(list(_env_disabled_passes()) + list(CPU_DISABLED_PASSES)))
  return {"xla_disable_hlo_passes": ",".join(passes)}


def for_devices(devices: Optional[Sequence[Any]] = None) -> Optional[Dict[str, Any]]:
  """The compiler options for `devices` (default: the default backend's)."""
  platform = devices[0].platform if devices else jax.default_backend()
  return for_platform(platform)


def jit(fun: Callable, *, devices: Optional[Sequence[Any]] = None, **jit_kwargs) -> Callable:
  """`jax.jit(fun, **jit_kwargs)` compiled with `for_devices(devices)`."""
  return jax.jit(fun, compiler_options=for_devices(devices), **jit_kwargs)


class _LoweredWithOptions:
  """A `jax.stages.Lowered` whose `compile()` adds the library's compiler options."""

  def __init__(self, lowered, options: Optional[Dict[str, Any]]):
    self._lowered = lowered
    self._options = options

  def compile(self, compiler_options: Optional[Dict[str, Any]] = None):
    options = dict(self._options or {})
    options.update(compiler_options or {})
    return self._lowered.compile(compiler_options=options or None)

  def __getattr__(self, name):
    return getattr(self._lowered, name)


class _PmapWithOptions:
  """`jax.pmap(...)` compiled ahead of time with compiler options (`jax.pmap` has no
  `compiler_options` argument). One executable per argument signature (tree structure,
  shapes, dtypes, shardings), compiled on the first call with that signature."""

  def __init__(self, pmapped: Callable, options: Optional[Dict[str, Any]]):
    self._pmapped = pmapped
    self._options = options
    self._compiled: Dict[Any, Any] = {}

  @staticmethod
  def _signature(args) -> Any:
    leaves, treedef = jax.tree.flatten(args)
    sig = []
    for x in leaves:
      shape, dtype = getattr(x, "shape", None), getattr(x, "dtype", None)
      sharding = x.sharding if isinstance(x, jax.Array) else type(x)
      sig.append((tuple(shape) if shape is not None else None, str(dtype), sharding))
    return treedef, tuple(sig)

  def lower(self, *args):
    return _LoweredWithOptions(self._pmapped.lower(*args), self._options)

  def _runs_plain_pmap(self) -> bool:
    # Several processes: a multi-process pmap takes process-local arrays, which `jax.pmap`
    # itself turns into global ones; its AOT executables expect the global arrays.
    return jax.process_count() > 1

  def _cache_size(self) -> Optional[int]:
    """Executables compiled so far (like a jitted function's `_cache_size()`); None where
    the plain pmap runs (it does not report one)."""
    return None if self._runs_plain_pmap() else len(self._compiled)

  def __call__(self, *args):
    if self._runs_plain_pmap():
      return self._pmapped(*args)
    key = self._signature(args)
    compiled = self._compiled.get(key)
    if compiled is None:
      compiled = self.lower(*args).compile()
      self._compiled[key] = compiled
    return compiled(*args)


def pmap(fun: Callable, *, devices: Optional[Sequence[Any]] = None, **pmap_kwargs) -> Callable:
  """`jax.pmap(fun, devices=devices, **pmap_kwargs)` compiled with `for_devices(devices)`.

  The result is called like the pmapped function; `.lower(...)` returns a `Lowered` whose
  `.compile()` adds the options. Without options (not CPU) it is the plain pmap; with
  several processes the call runs the plain pmap too (multi-process CPU runs are for
  tests)."""
  pmapped = jax.pmap(fun, devices=devices, **pmap_kwargs)
  options = for_devices(devices)
  return pmapped if options is None else _PmapWithOptions(pmapped, options)
