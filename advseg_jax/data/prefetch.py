"""Host batches -> device arrays, a few batches ahead of the training step."""

from __future__ import annotations

import collections
import itertools
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np


def shard_batch(batch: dict, devices: Sequence, mode: str = "pmap") -> dict:
    """Puts the numeric arrays of ``batch`` on ``devices``, split along the batch axis.

    Args:
      batch: numpy dict with leading batch axis ``B`` (must divide by ``len(devices)``).
      devices: local devices.
      mode: ``'pmap'``: arrays become ``[D, B // D, ...]`` with device ``d`` holding row ``d``
        (what ``jax.pmap`` expects); ``'global'``: ``[B, ...]`` arrays sharded along axis 0 over
        a 1-D mesh named ``'batch'`` (for ``jit`` / ``shard_map``).
    Non-numeric leaves (``file_name``) stay on the host unchanged.
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    n = len(devices)
    mesh = Mesh(np.asarray(devices), ("batch",))
    out = {}
    for k, v in batch.items():
        v = np.asarray(v)
        if v.dtype == object or v.dtype.kind in "US":
            out[k] = v
            continue
        if v.shape[0] % n:
            raise ValueError(f"batch['{k}'] has {v.shape[0]} rows, not divisible by {n} devices")
        if mode == "pmap":
            v = v.reshape((n, v.shape[0] // n) + v.shape[1:])
        elif mode != "global":
            raise ValueError(f"mode must be 'pmap' or 'global', got {mode!r}")
        per = v.shape[0] // n if mode == "global" else 1
        pieces = [jax.device_put(v[i * per:(i + 1) * per], d) for i, d in enumerate(devices)]
        sharding = NamedSharding(mesh, P("batch"))
        out[k] = jax.make_array_from_single_device_arrays(v.shape, sharding, pieces)
    return out


def prefetch_to_device(iterator: Iterable[dict], size: int = 2, devices: Optional[Sequence] = None,
                       mode: str = "pmap") -> Iterator[dict]:
    """Yields :func:`shard_batch` of each batch, keeping ``size`` batches in flight.

    Device transfers are asynchronous, so filling a queue ahead overlaps host-to-device copies
    with the running step. ``devices`` defaults to ``jax.local_devices()``.
    """
    import jax

    devices = list(devices) if devices is not None else jax.local_devices()
    queue: collections.deque = collections.deque()
    it = iter(iterator)

    def enqueue(n: int) -> None:
        for batch in itertools.islice(it, n):
            queue.append(shard_batch(batch, devices, mode))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
