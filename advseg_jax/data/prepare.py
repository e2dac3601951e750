"""Building a dataset into TFDS array_record files (the `prepare` command is cli/prepare.py).

A failed preparation never touches a previously prepared version: a first preparation is
written by TFDS into `<version>.incomplete.*` and renamed at the end; a re-preparation with
`--overwrite` is built in a staging folder next to it and swapped in by two renames only
after it succeeded (TFDS's own overwrite would delete the old version first).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import uuid
from typing import Optional

from advseg_jax.data import registry
from advseg_jax.data import source as source_lib

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareResult:
  """What `prepare_dataset` did: the version folder, counts, skipped and adjusted examples.

  `adjusted` maps a kind of adjustment the builder made as the original code does (e.g.
  GTA5's resized pairs and unknown ids) to the examples it was applied to; empty when the
  data needed none or was already prepared.
  """

  name: str
  config_name: Optional[str]
  path: str
  num_examples: dict
  skipped: dict
  reused: bool = False
  adjusted: dict = dataclasses.field(default_factory=dict)


def default_manual_dir(data_dir: Optional[str]) -> str:
  """TFDS's default: `<data_dir>/downloads/manual`."""
  return os.path.join(source_lib.default_data_dir(data_dir), "downloads", "manual")


def _build(builder, manual_dir: Optional[str]) -> None:
  """Runs TFDS's `download_and_prepare` of `builder` into array_record files."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  dl_cfg = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
  builder.download_and_prepare(download_config=dl_cfg, file_format="array_record")


def prepare_dataset(name: str, *, config_name: Optional[str] = None,
                    data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                    overwrite: bool = False, skip_bad_examples: bool = False,
                    num_threads: Optional[int] = None) -> PrepareResult:
  """Prepares one builder config of `name` into `data_dir`.

  Args:
    name: dataset name (`'synthia/13'` style names allowed).
    config_name: builder config, or None for the dataset's default.
    data_dir: TFDS data dir (None: `~/tensorflow_datasets`).
    manual_dir: raw files (None: `<data_dir>/downloads/manual`); unused by `shapes`.
    overwrite: rebuild a prepared version; it is replaced only after the new one is built.
    skip_bad_examples: log and skip bad examples instead of failing.
    num_threads: threads decoding and checking examples (None: min(8, CPUs)).

  Returns:
    A `PrepareResult`.

  Raises:
    LayoutError: `manual_dir` lacks part of the layout.
    BadExampleError: a corrupt / inconsistent / missing file (unless `skip_bad_examples`).
  """
  name, config_name = registry.split_name(name, config_name)
  info = registry.get_info(name, config_name)
  data_dir = source_lib.default_data_dir(data_dir)
  kw = dict(skip_bad_examples=skip_bad_examples, num_threads=num_threads)
  builder = source_lib.make_builder(name, config_name, data_dir, **kw)
  if info.needs_manual_download:
    manual_dir = os.path.abspath(manual_dir or default_manual_dir(data_dir))
    builder.check_manual_dir(manual_dir)
  else:
    manual_dir = None
  final_dir = os.fspath(builder.data_dir)
  if source_lib.is_prepared(builder) and not overwrite:
    log.info("%s already prepared in %s (use --overwrite to rebuild)", name, final_dir)
    return PrepareResult(name, config_name, final_dir, _counts(builder), {}, reused=True)

  if not source_lib.is_prepared(builder):
    _build(builder, manual_dir)
    skipped, adjusted = builder.skipped, builder.adjusted
  else:
    staging = os.path.join(data_dir, f".advseg_staging-{uuid.uuid4().hex[:8]}")
    try:
      staged = source_lib.make_builder(name, config_name, staging, **kw)
      _build(staged, manual_dir)
      skipped, adjusted = staged.skipped, staged.adjusted
      _swap_in(os.fspath(staged.data_dir), final_dir)
    finally:
      shutil.rmtree(staging, ignore_errors=True)
  built = source_lib.make_builder(name, config_name, data_dir)
  skipped = {k: v for k, v in skipped.items() if v}
  return PrepareResult(name, config_name, final_dir, _counts(built), skipped,
                       adjusted={k: sorted(v) for k, v in adjusted.items()})


def _swap_in(new_dir: str, final_dir: str) -> None:
  """Replaces `final_dir` by `new_dir` with renames; restores the old one on failure."""
  old = f"{final_dir}.old-{uuid.uuid4().hex[:8]}"
  os.rename(final_dir, old)
  try:
    os.rename(new_dir, final_dir)
  except BaseException:
    os.rename(old, final_dir)
    raise
  shutil.rmtree(old, ignore_errors=True)


def _counts(builder) -> dict:
  return {k: int(v.num_examples) for k, v in builder.info.splits.items()}


def ensure_prepared(name: str, data_dir: Optional[str] = None, config_name: Optional[str] = None,
                    manual_dir: Optional[str] = None) -> None:
  """Prepares `name` into `data_dir` unless already there.

  Datasets without a manual download (`shapes`) are generated on the fly; with
  `config_name=None` every builder config of `shapes` is prepared. Datasets that need
  raw files are prepared from `manual_dir` if given, else a `FileNotFoundError` says how.
  """
  if "/" in name:
    name, config_name = registry.split_name(name, config_name)
  info = registry.get_info(name, config_name)
  configs = ([config_name] if config_name is not None
             else list(registry.CONFIG_NAMES.get(name, (None,))))
  for cfg in configs:
    if source_lib.is_prepared(source_lib.make_builder(name, cfg, data_dir)):
      continue
    if info.needs_manual_download and manual_dir is None:
      raise source_lib.not_prepared_error(name, cfg, data_dir)
    prepare_dataset(name, config_name=cfg, data_dir=data_dir, manual_dir=manual_dir)
