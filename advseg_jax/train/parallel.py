"""The one place that knows how step bodies are mapped over devices.

Modes:
  'pmap'      (default) `jax.pmap(body, axis_name='batch')`; states carry a leading local
              device axis, batches are [local_devices, per_device_batch, ...].
  'shard_map' `jax.jit(jax.shard_map(body, check_vma=False))` over a 1-D 'batch' mesh of all
              devices; states are replicated global arrays, batches are global arrays sharded
              on their first axis. Same body, same numbers as 'pmap'.
  'jit'       a single device, no collectives (axis_name None).

Multi-host: call `initialize_distributed()` first; each process then feeds its own devices
with its own slice of the global batch (`process_batch_size = global / process_count`).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from advseg_jax.kernels import compile_options

AXIS = "batch"
MODES = ("pmap", "shard_map", "jit")


def initialize_distributed(coordinator_address: Optional[str] = None,
                           num_processes: Optional[int] = None,
                           process_id: Optional[int] = None) -> None:
  """`jax.distributed.initialize` from flags or the environment (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID); a no-op for a single process."""
  addr = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  n = num_processes or (int(os.environ["JAX_NUM_PROCESSES"])
                        if "JAX_NUM_PROCESSES" in os.environ else None)
  pid = process_id if process_id is not None else (
      int(os.environ["JAX_PROCESS_ID"]) if "JAX_PROCESS_ID" in os.environ else None)
  if addr is None and n is None:
    return
  if addr is None or n is None or pid is None:
    raise ValueError("multi-host needs coordinator address, number of processes and process "
                     f"id; got address={addr!r}, num_processes={n!r}, process_id={pid!r}")
  jax.distributed.initialize(coordinator_address=addr, num_processes=n, process_id=pid)


class Parallel:
  """Binds per-device bodies and moves states and batches into the matching layout."""

  def __init__(self, mode: str = "pmap"):
    if mode not in MODES:
      raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
    self.mode = mode
    self.local_devices = jax.local_devices() if mode != "jit" else jax.local_devices()[:1]
    self.num_local = len(self.local_devices)
    self.num_devices = jax.device_count() if mode != "jit" else 1
    self.mesh = Mesh(np.array(jax.devices()), (AXIS,)) if mode == "shard_map" else None

  @property
  def axis_name(self) -> Optional[str]:
    return None if self.mode == "jit" else AXIS

  # ------------------------------------------------------------------------------ binding
  def bind_train_step(self, body: Callable, donate_states: bool = True):
    """body(states, batch, rng) with replicated states and rng, sharded batch; compiled with
    `advseg_jax.kernels.compile_options` (on CPU: optimisation barriers kept through fusion)."""
    donate = (0,) if donate_states else ()
    if self.mode == "jit":
      return compile_options.jit(body, devices=self.local_devices, donate_argnums=donate)
    if self.mode == "pmap":
      return compile_options.pmap(body, axis_name=AXIS, in_axes=(0, 0, None),
                                  donate_argnums=donate)

    def wrapped(states, batch, rng):
      fn = jax.shard_map(body, mesh=self.mesh, in_specs=(P(), P(AXIS), P()), out_specs=P(),
                         check_vma=False)
      return fn(states, batch, rng)

    return compile_options.jit(wrapped, devices=self.local_devices, donate_argnums=donate)

  # ------------------------------------------------------------------------------ layouts
  def replicate(self, tree: Any) -> Any:
    """Host / single-device tree -> the mode's replicated layout (a fresh copy)."""
    tree = jax.tree.map(lambda x: np.array(x), tree)
    if self.mode == "jit":
      return jax.device_put(tree, self.local_devices[0])
    if self.mode == "pmap":
      # Exactly the sharding pmap gives its outputs (a 'batch' mesh of this process's
      # devices, also under multi-process): with flax.jax_utils.replicate's sharding the
      # step compiled twice, once for the first call and once for the states it returned.
      sharding = NamedSharding(Mesh(np.array(self.local_devices), (AXIS,)), P(AXIS))
      return jax.tree.map(
          lambda x: jax.device_put(np.stack([x] * self.num_local), sharding), tree)
    sharding = NamedSharding(self.mesh, P())
    return jax.tree.map(
        lambda x: jax.make_array_from_callback(x.shape, sharding, lambda idx, x=x: x[idx]), tree)

  def unreplicate(self, tree: Any) -> Any:
    """Replicated layout -> host numpy tree (one copy; works across processes)."""

    def one(x):
      if not isinstance(x, jax.Array):
        return np.asarray(x)
      if self.mode == "pmap":
        return np.asarray(x.addressable_shards[0].data)[0]
      return np.asarray(x.addressable_shards[0].data)

    return jax.tree.map(one, tree)

  def shard_batch(self, batch: Any) -> Any:
    """This process's numpy batch [B_process, ...] -> the mode's device layout."""

    def one(x):
      x = np.asarray(x)
      if self.mode == "jit":
        return jax.device_put(x, self.local_devices[0])
      if x.shape[0] % self.num_local:
        raise ValueError(f"per-process batch {x.shape[0]} is not divisible by the "
                         f"{self.num_local} local devices")
      if self.mode == "pmap":
        return x.reshape((self.num_local, x.shape[0] // self.num_local) + x.shape[1:])
      sharding = NamedSharding(self.mesh, P(AXIS))
      return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(one, batch)

  def metrics_to_host(self, metrics: Any) -> dict:
    """Device metrics (replicated scalars) -> {name: float}."""
    host = self.unreplicate(metrics)
    return {k: float(v) for k, v in host.items()}
