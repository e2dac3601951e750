"""Reading and writing PyTorch `.pth` state_dicts; torch is imported lazily, only here.

`read_state_dict(path)` returns `{name: np.ndarray}` (float tensors as float32, NCHW/OIHW
layouts untouched) from any of the files the originals and their forks produce:

* a plain state_dict (`torch.save(model.state_dict())`), zip (torch >= 1.6) or legacy format;
* wrappers `{'state_dict': ...}` (e.g. `{'epoch', 'state_dict', 'miou'}` snapshots) and
  `{'model': ...}`, nested any number of times.

Prefixes (`module.`, `Scale.`) are left to the caller. Every failure raises `ConversionError`
naming the file and what was expected.
"""

from __future__ import annotations

import os
import uuid
from collections import OrderedDict
from typing import Any, Dict, Mapping

import numpy as np

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
_ZIP_MAGIC = b"PK\x03\x04"
# pickle PROTO opcode + protocol 2..5: legacy torch files (and pickles) start with one.
_PICKLE_MAGICS = tuple(b"\x80" + bytes([p]) for p in range(2, 6))
_NOT_A_CHECKPOINT = "not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)"


class ConversionError(ValueError):
  """A checkpoint could not be converted: bad file, missing/unexpected key, wrong shape.

  The message is one line naming the file and the key, with expected and found shapes.
  """


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - depends on the environment
    raise ConversionError("reading/writing .pth files needs PyTorch; install the `convert` "
                          "extra: pip install 'advseg-jax[convert]'") from e
  return torch


def _check_readable(path: str) -> None:
  if not os.path.exists(path):
    raise ConversionError(f"{path}: no such file (expected a PyTorch .pth checkpoint)")
  if os.path.isdir(path):
    raise ConversionError(f"{path}: is a directory, expected a PyTorch .pth checkpoint file")
  if not os.access(path, os.R_OK):
    raise ConversionError(f"{path}: permission denied (cannot read the checkpoint)")
  if os.path.getsize(path) == 0:
    raise ConversionError(f"{path}: empty file, expected a PyTorch .pth checkpoint")


def _describe_format(path: str) -> str:
  with open(path, "rb") as f:
    head = f.read(4)
  if head.startswith(_ZIP_MAGIC):
    return "zip"
  if head.startswith(_PICKLE_MAGICS):
    return "legacy"
  return "unknown"


def _head_hex(path: str) -> str:
  with open(path, "rb") as f:
    return f.read(4).hex(" ")


def _load(path: str, trust_pickle: bool) -> Any:
  torch = _import_torch()
  _check_readable(path)
  fmt = _describe_format(path)
  if fmt == "unknown":  # before torch.load, whose weights-only error would advise unpickling
    raise ConversionError(f"{path}: {_NOT_A_CHECKPOINT}; it starts with bytes "
                          f"{_head_hex(path)}")
  try:
    return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except Exception as e:  # torch raises many types: UnpicklingError, RuntimeError, EOFError...
    reason = " ".join(str(e).split()) or type(e).__name__
    if "weights_only" in reason.lower() or "weights only" in reason.lower():
      first = reason.split(". ")[0][:200]
      raise ConversionError(
          f"{path}: holds Python objects other than tensors, which torch.load(weights_only=True) "
          f"refuses ({first}); if you trust the file, re-run with --trust_pickle") from None
    what = f"a truncated or corrupt {fmt}-format PyTorch checkpoint"
    first = reason.split(". ")[0][:200]
    raise ConversionError(f"{path}: {what}; torch.load failed: {type(e).__name__}: "
                          f"{first}") from None


def unwrap(obj: Any, path: str) -> Mapping[str, Any]:
  """The state_dict inside `obj`: follows 'state_dict' / 'model' wrapper keys."""
  for _ in range(8):
    if not isinstance(obj, Mapping):
      raise ConversionError(f"{path}: contains a {type(obj).__name__}, expected a state_dict "
                            f"(a dict of tensors) or a dict wrapping one under {WRAPPER_KEYS}")
    inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
    if inner is None:
      return obj
    obj = inner
  raise ConversionError(f"{path}: state_dict wrappers nested too deeply")


def to_numpy(value: Any, key: str, path: str) -> np.ndarray:
  torch = _import_torch()
  if isinstance(value, np.ndarray):
    arr = value
  elif isinstance(value, torch.Tensor):
    t = value.detach().cpu()
    if t.is_floating_point() and t.dtype != torch.float64 and t.dtype != torch.float32:
      t = t.float()  # float16 / bfloat16 (numpy has no bfloat16)
    arr = t.numpy()
  else:
    raise ConversionError(f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor")
  if np.issubdtype(arr.dtype, np.floating):
    arr = arr.astype(np.float32, copy=False)
  return arr


def read_state_dict(path: str, *, trust_pickle: bool = False) -> "OrderedDict[str, np.ndarray]":
  """`{key: np.ndarray}` from a `.pth` file (see the module docstring for accepted layouts)."""
  path = os.fspath(path)
  sd = unwrap(_load(path, trust_pickle), path)
  if not sd:
    raise ConversionError(f"{path}: the state_dict is empty")
  out: "OrderedDict[str, np.ndarray]" = OrderedDict()
  for key, value in sd.items():
    if not isinstance(key, str):
      raise ConversionError(f"{path}: key {key!r} is not a string; not a state_dict")
    out[key] = to_numpy(value, key, path)
  return out


def write_state_dict(state_dict: Mapping[str, Any], path: str, *, overwrite: bool = False,
                     legacy_format: bool = False) -> None:
  """`torch.save` of `{key: tensor or ndarray}` to `path`, atomically (temp file + rename).

  `legacy_format=True` writes the pre-1.6 (non-zip) serialisation.
  """
  torch = _import_torch()
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise ConversionError(f"{path}: exists; pass --overwrite to replace it")
  parent = os.path.dirname(path)
  if not os.path.isdir(parent):
    raise ConversionError(f"{path}: parent directory {parent} does not exist")
  tensors: Dict[str, Any] = OrderedDict(
      (k, torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) else v)
      for k, v in state_dict.items())
  # A fresh name (not mkstemp, whose 0600 mode would stick to the result) in the same dir.
  tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:12]}")
  try:
    torch.save(tensors, tmp, _use_new_zipfile_serialization=not legacy_format)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
