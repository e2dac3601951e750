"""``python -m advseg_jax prepare NAME``: build a dataset into TFDS array_record files.

A failed preparation never touches a previously prepared version: a first preparation is
written by TFDS into ``<version>.incomplete.*`` and renamed at the end; a re-preparation with
``--overwrite`` is built in a staging folder next to it and swapped in by two renames only
after it succeeded (TFDS's own overwrite would delete the old version first).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import uuid
from typing import Optional, Sequence

from advseg_jax.data import registry
from advseg_jax.data import source as source_lib
from advseg_jax.data.image_io import BadExampleError

log = logging.getLogger(__name__)


@dataclasses.dataclass
class PrepareResult:
    """What ``prepare_dataset`` did: the version folder, counts and skipped examples."""

    name: str
    config_name: Optional[str]
    path: str
    num_examples: dict
    skipped: dict
    reused: bool = False


def default_manual_dir(data_dir: Optional[str]) -> str:
    """TFDS's default: ``<data_dir>/downloads/manual``."""
    return os.path.join(source_lib.default_data_dir(data_dir), "downloads", "manual")


def _build(builder, manual_dir: Optional[str]) -> None:
    import tensorflow_datasets as tfds
    dl_cfg = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    builder.download_and_prepare(download_config=dl_cfg, file_format="array_record")


def prepare_dataset(name: str, *, config_name: Optional[str] = None,
                    data_dir: Optional[str] = None, manual_dir: Optional[str] = None,
                    overwrite: bool = False, skip_bad_examples: bool = False,
                    num_threads: Optional[int] = None) -> PrepareResult:
    """Prepares one builder config of ``name`` into ``data_dir``.

    Raises:
      advseg_jax.data.builders.common.LayoutError: ``manual_dir`` lacks part of the layout.
      BadExampleError: a corrupt / inconsistent / missing file (unless ``skip_bad_examples``).
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
        skipped = builder.skipped
    else:
        staging = os.path.join(data_dir, f".advseg_staging-{uuid.uuid4().hex[:8]}")
        try:
            staged = source_lib.make_builder(name, config_name, staging, **kw)
            _build(staged, manual_dir)
            skipped = staged.skipped
            _swap_in(os.fspath(staged.data_dir), final_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    built = source_lib.make_builder(name, config_name, data_dir)
    skipped = {k: v for k, v in skipped.items() if v}
    return PrepareResult(name, config_name, final_dir, _counts(built), skipped)


def _swap_in(new_dir: str, final_dir: str) -> None:
    """Replaces ``final_dir`` by ``new_dir`` with renames; restores the old one on failure."""
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


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    names = ", ".join(registry.dataset_names())
    p = argparse.ArgumentParser(
        prog="python -m advseg_jax prepare",
        description=(
            "Build a dataset into TFDS array_record files that the grain pipelines read "
            "(no TensorFlow needed). Datasets: " + names + ". 'shapes' is generated "
            "procedurally and needs no --manual_dir."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "expected --manual_dir layouts:\n"
            "  voc_aug:    JPEGImages/<id>.jpg, SegmentationClassAug/<id>.png,\n"
            "              ImageSets/SegmentationAug/{train_aug,val}.txt (AdvSemiSeg lists)\n"
            "  cityscapes: leftImg8bit/{train,val}/<city>/*_leftImg8bit.png and\n"
            "              gtFine/{train,val}/<city>/*_gtFine_labelIds.png,\n"
            "              or leftImg8bit_trainvaltest.zip + gtFine_trainvaltest.zip\n"
            "  gta5:       images/<name>.png, labels/<name>.png, optional train.txt\n"
            "  synthia:    RGB/<name>.png, GT/LABELS/<name>.png, optional train.txt\n"))
    p.add_argument("name", help="dataset to prepare: " + names +
                   " (a builder config may be appended, e.g. synthia/13)")
    p.add_argument("--manual_dir", default=None,
                   help="folder with the raw downloaded files in the layout below "
                        "(default: <data_dir>/downloads/manual)")
    p.add_argument("--data_dir", default=None,
                   help="TFDS data dir to write to (default: ~/tensorflow_datasets)")
    p.add_argument("--config", default=None,
                   help="builder config to prepare (synthia: 16 or 13; shapes: source or "
                        "target); default: all configs of the dataset")
    p.add_argument("--overwrite", action="store_true",
                   help="rebuild even if already prepared; the old version is replaced only "
                        "after the new one is complete")
    p.add_argument("--skip_bad_examples", action="store_true",
                   help="log and skip corrupt, size-mismatched, missing or unmappable examples "
                        "instead of stopping at the first one; a count is printed at the end")
    p.add_argument("--num_threads", type=int, default=None,
                   help="threads decoding and checking examples (default: min(8, CPUs))")
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    p.add_argument("--verbose", action="store_true", help="debug logging and full tracebacks")
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of ``prepare``; returns the process exit code (0 ok, 1 error, 2 usage)."""
    args = build_parser().parse_args(list(argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    import tensorflow_datasets as tfds
    from advseg_jax.data.builders.common import LayoutError
    if args.no_progress:
        tfds.disable_progress_bar()
    else:
        tfds.enable_progress_bar()
    try:
        name, cfg = args.name, args.config
        if "/" in name:
            name, cfg = registry.split_name(name, cfg)
        else:
            registry.split_name(name, cfg)  # validates name / config
        configs = [cfg] if cfg is not None else list(registry.CONFIG_NAMES.get(name, (None,)))
        for c in configs:
            res = prepare_dataset(name, config_name=c, data_dir=args.data_dir,
                                  manual_dir=args.manual_dir, overwrite=args.overwrite,
                                  skip_bad_examples=args.skip_bad_examples,
                                  num_threads=args.num_threads)
            label = name + (f"/{c}" if c else "")
            counts = ", ".join(f"{k}: {v}" for k, v in sorted(res.num_examples.items()))
            state = "already prepared" if res.reused else "prepared"
            print(f"{label}: {state} in {res.path} ({counts})")
            n_skipped = sum(len(v) for v in res.skipped.values())
            if n_skipped:
                print(f"{label}: skipped {n_skipped} bad examples:")
                for split, errs in res.skipped.items():
                    for e in errs:
                        print(f"  [{split}] {e}")
    except (LayoutError, BadExampleError, FileNotFoundError, KeyError, ValueError) as e:
        if args.verbose:
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
