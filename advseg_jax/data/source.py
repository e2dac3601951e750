"""Opening prepared datasets: TFDS builders and raw (undecoded) random-access sources."""

from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np

from advseg_jax.data import registry

SPLIT_ALIASES = {"val": "validation", "valid": "validation", "eval": "validation"}


def canonical_split(split: str) -> str:
  """`'val'` -> `'validation'`; TFDS slicing syntax (`'train[:10]'`) is passed through."""
  base, sep, rest = split.partition("[")
  return SPLIT_ALIASES.get(base, base) + sep + rest


def default_data_dir(data_dir: Optional[str]) -> str:
  """`data_dir`, or TFDS's default `~/tensorflow_datasets`, with `~` expanded."""
  return os.path.expanduser(data_dir or os.path.join("~", "tensorflow_datasets"))


def make_builder(name: str, config_name: Optional[str] = None, data_dir: Optional[str] = None,
                 **kwargs):
  """A TFDS builder of `name` (`'synthia/13'` style names allowed) in `data_dir`."""
  name, config_name = registry.split_name(name, config_name)
  cls = registry.builder_class(name)
  if config_name is not None:
    kwargs["config"] = config_name
  return cls(data_dir=default_data_dir(data_dir), **kwargs)


def is_prepared(builder) -> bool:
  """Whether `builder`'s version directory holds a finished preparation."""
  return os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))


def not_prepared_error(name: str, config_name: Optional[str], data_dir: Optional[str],
                       detail: str = "") -> FileNotFoundError:
  """The error for a dataset missing from `data_dir`, with the `prepare` command to run."""
  full = name + (f"/{config_name}" if config_name else "")
  where = default_data_dir(data_dir)
  return FileNotFoundError(
      f"dataset {full} is not prepared in {where}{detail}; run `python -m advseg_jax prepare "
      f"{full} --manual_dir DIR --data_dir {where}`")


class RawSource:
  """Random access to one split, images and labels left encoded.

  `source[i]` is `{"image": bytes, "label": bytes | None, "file_name": str, "index": i}`.
  Picklable (grain worker processes re-open the array_record files).
  """

  def __init__(self, name: str, config_name: Optional[str], data_dir: Optional[str],
               split: str):
    self.name, self.config_name = registry.split_name(name, config_name)
    self.data_dir = default_data_dir(data_dir)
    self.split = canonical_split(split)
    self._src = None
    self._open()

  def _open(self) -> None:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    builder = make_builder(self.name, self.config_name, self.data_dir)
    if not is_prepared(builder):
      raise not_prepared_error(self.name, self.config_name, self.data_dir,
                               f" (no {builder.data_dir}/dataset_info.json)")
    self.has_labels = "label" in builder.info.features
    decoders = {"image": tfds.decode.SkipDecoding()}
    if self.has_labels:
      decoders["label"] = tfds.decode.SkipDecoding()
    try:
      self._src = builder.as_data_source(split=self.split, decoders=decoders)
    except (KeyError, ValueError) as e:
      raise ValueError(f"dataset {self.name}: no split {self.split!r} "
                       f"(available: {list(builder.info.splits)})") from e

  def __len__(self) -> int:
    return len(self._src)

  def __getitem__(self, index: int) -> dict:
    ex = self._src[int(index)]
    fname = ex["file_name"]
    return {
        "image": ex["image"],
        "label": ex.get("label") if self.has_labels else None,
        "file_name": fname.decode() if isinstance(fname, bytes) else str(fname),
        "index": int(index),
    }

  def __getstate__(self):
    d = dict(self.__dict__)
    d["_src"] = None
    return d

  def __setstate__(self, d):
    self.__dict__.update(d)
    self._open()


class SubsetSource:
  """`source` restricted to `indices` (positions in the split), in that order."""

  def __init__(self, source, indices: Sequence[int]):
    self.source = source
    self.indices = np.asarray(indices, dtype=np.int64)
    n = len(source)
    if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= n):
      raise IndexError(f"indices outside 0..{n - 1} for a split of {n} examples")

  def __len__(self) -> int:
    return int(self.indices.size)

  def __getitem__(self, i: int) -> dict:
    return self.source[int(self.indices[int(i)])]
