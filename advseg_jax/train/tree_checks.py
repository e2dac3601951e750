"""Checks of a restored checkpoint item against the model and against what was written.

    shape_problem("g_state", restored, template)    # None, or the first leaf that differs
    sums = checksums(host_tree)           # {"params/conv1/kernel": (crc32, "float32"), ...}
    checksum_problem("g_state", restored, sums)     # None, or the leaves whose bytes changed

`checksums` are CRC-32s of each leaf's bytes (with its dtype), computed on the host arrays when a step is saved
and stored in its meta; a restored item whose bytes differ (flipped bits on disk, a file
edited after the save) is reported like a truncated one. The functions return a one-line
problem (or None) and raise nothing, so `advseg_jax.train.checkpoint` decides what to do.
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, Mapping, Optional, Tuple

import jax
import numpy as np

CHECKSUM_KIND = "crc32 of each leaf's bytes"


def _key(path: Tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def leaf_shapes(tree: Any) -> Dict[str, Tuple[int, ...]]:
  """`{'a/b/c': shape}` of the leaves of a tree (None is no leaf)."""
  return {_key(p): tuple(np.shape(v)) for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def shape_problem(item: str, restored: Any, template: Any) -> Optional[str]:
  """The first leaf whose presence or shape differs between `restored` and `template`
  (orbax restores the stored shapes whatever the template says), or None."""
  got, want = leaf_shapes(restored), leaf_shapes(template)
  for key in want:
    if key not in got:
      return f"{item}/{key} is missing (the model has it, shape {want[key]})"
    if tuple(got[key]) != tuple(want[key]):
      return (f"{item}/{key} has shape {tuple(got[key])} in the checkpoint, the model wants "
              f"{tuple(want[key])}")
  extra = sorted(set(got) - set(want))
  if extra:
    return (f"{item}/{extra[0]} is in the checkpoint but not in the model"
            + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
  return None


def _crc(x: np.ndarray) -> int:
  flat = np.ascontiguousarray(x).reshape(-1)
  return zlib.crc32(flat.view(np.uint8)) & 0xFFFFFFFF


def checksums(tree: Any) -> Dict[str, Tuple[int, str]]:
  """`{leaf path: (CRC-32 of its bytes, dtype name)}` of a tree of arrays."""
  out = {}
  for p, v in jax.tree_util.tree_leaves_with_path(tree):
    x = np.asarray(v)
    out[_key(p)] = (_crc(x), str(x.dtype))
  return out


def _matches(x: Any, crc: int, dtype: str) -> bool:
  """Whether leaf `x` has the checksum `crc` of its bytes as `dtype` (orbax casts to the
  restore template's dtype, e.g. a saved int64 step restores as int32)."""
  x = np.asarray(x)
  if str(x.dtype) != dtype:
    try:
      x = x.astype(np.dtype(dtype))
    except TypeError:  # a dtype numpy cannot name: nothing to compare with
      return True
  return _crc(x) == int(crc)


def checksum_problem(item: str, restored: Any, stored: Mapping[str, Any]) -> Optional[str]:
  """None when every leaf of `restored` has the checksum stored at save time; else a line
  naming the changed leaves (their bytes differ from what was written)."""
  leaves = {_key(p): v for p, v in jax.tree_util.tree_leaves_with_path(restored)}
  changed = sorted(k for k, (crc, dtype) in stored.items()
                   if k not in leaves or not _matches(leaves[k], crc, dtype))
  if not changed:
    return None
  more = f" and {len(changed) - 1} more" if len(changed) > 1 else ""
  return (f"{item}/{changed[0]}{more}: the bytes read differ from those written (checksum "
          f"mismatch; the files were changed or damaged after the save)")
