"""Throughput of the grain training input pipelines (images/s) for several worker counts.

Builds a synthetic on-disk fixture of realistic image sizes in a temporary folder (no real
data needed), prepares it with the project's TFDS builders, then times
``advseg_jax.data.make_train_iterator`` for each case and worker count:

* ``voc321``: AdvSemiSeg VOC stream, ~500x375 JPEGs, random scale (0.5-1.6) + mirror +
  321x321 crop, RGB, batch 10.
* ``gta5_1280x720``: AdaptSegNet source stream, 1914x1052 PNGs resized to 1280x720
  (bicubic image, nearest label), BGR, batch 1.
* ``cityscapes_1024x512``: AdaptSegNet target stream, 2048x1024 PNGs resized to 1024x512,
  no labels, BGR, batch 1.

Example: ``python benchmarks/speed/input_pipeline.py --workers 0,1,2 --batches 20``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Optional

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from advseg_jax import data  # noqa: E402
from advseg_jax.data import image_io  # noqa: E402
from advseg_jax.data import prepare  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    dataset: str
    batch_size: int
    overrides: dict


CASES = {
    "voc321": Case("voc321", "voc_aug", 10, dict(
        crop_size=(321, 321), random_scale=True, random_mirror=True, channel_order="RGB")),
    "gta5_1280x720": Case("gta5_1280x720", "gta5", 1, dict(
        resize_size=(720, 1280), channel_order="BGR")),
    "cityscapes_1024x512": Case("cityscapes_1024x512", "cityscapes", 1, dict(
        resize_size=(512, 1024), channel_order="BGR", use_labels=False)),
}


# ----------------------------------------------------------------------------- fixture

def _photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour blobs + edges + mild noise: compresses roughly like a photo."""
    small = rng.uniform(0, 255, (max(h // 32, 2), max(w // 32, 2), 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    yy = np.arange(h)[:, None]
    img += 40 * ((yy // 40 + np.arange(w)[None, :] // 60) % 2)[..., None]
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _blocky_label(rng: np.random.Generator, h: int, w: int, values) -> np.ndarray:
    small = rng.choice(np.asarray(values, np.uint8), (h // 16 + 1, w // 16 + 1))
    return np.repeat(np.repeat(small, 16, 0), 16, 1)[:h, :w]


def _write(path: str, blob: bytes) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(blob)


def _png(arr: np.ndarray) -> bytes:
    import io
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # default compression, like the datasets
    return buf.getvalue()


def make_fixture(root: str, dataset: str, n: int, seed: int = 0) -> str:
    """Writes ``n`` examples of ``dataset`` in its real layout under ``root``; returns it."""
    rng = np.random.default_rng(seed)
    if dataset == "voc_aug":
        ids = [f"2008_{i:06d}" for i in range(n)]
        for i in ids:
            h, w = (375, 500) if rng.uniform() < 0.7 else (500, int(rng.integers(333, 501)))
            _write(f"{root}/JPEGImages/{i}.jpg", image_io.encode_jpeg(_photo_like(rng, h, w)))
            _write(f"{root}/SegmentationClassAug/{i}.png",
                   _png(_blocky_label(rng, h, w, [0, 0, 0, 5, 15, 255])))
        os.makedirs(f"{root}/ImageSets/SegmentationAug", exist_ok=True)
        for lst in ("train_aug.txt", "val.txt"):
            with open(f"{root}/ImageSets/SegmentationAug/{lst}", "w") as f:
                f.write("\n".join(ids) + "\n")
    elif dataset == "gta5":
        for k in range(n):
            name = f"{k + 1:05d}.png"
            _write(f"{root}/images/{name}", _png(_photo_like(rng, 1052, 1914)))
            _write(f"{root}/labels/{name}", _png(_blocky_label(rng, 1052, 1914, range(34))))
    elif dataset == "cityscapes":
        for split in ("train", "val"):
            for k in range(n if split == "train" else 1):
                stem = f"{root}/%s/{split}/bench/bench_{k:06d}_000019"
                _write(stem % "leftImg8bit" + "_leftImg8bit.png", _png(_photo_like(rng, 1024, 2048)))
                _write(stem % "gtFine" + "_gtFine_labelIds.png",
                       _png(_blocky_label(rng, 1024, 2048, range(34))))
    else:
        raise ValueError(dataset)
    return root


# ----------------------------------------------------------------------------- timing

def time_case(case: Case, data_dir: str, workers: int, batches: int, warmup: int,
              read_threads: int) -> dict:
    cfg = data.dataset_config(name=case.dataset, data_dir=data_dir, num_workers=workers,
                              read_threads=read_threads, **case.overrides)
    t0 = time.perf_counter()
    it = data.make_train_iterator(cfg, split="train", batch_size=case.batch_size, seed=0)
    for _ in range(warmup):
        next(it)
    t1 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    t2 = time.perf_counter()
    if hasattr(it, "close"):
        it.close()
    n_img = batches * case.batch_size
    return {"case": case.name, "workers": workers, "batch_size": case.batch_size,
            "image_shape": list(b["image"].shape[1:]), "images": n_img,
            "seconds": t2 - t1, "images_per_s": n_img / (t2 - t1), "startup_s": t1 - t0}


def cpu_cost_ms(case: Case, data_dir: str, n: int) -> float:
    """CPU milliseconds per image of read + decode + augment, single-threaded.

    Uses ``time.process_time`` so that, unlike wall-clock images/s, it is hardly affected by
    other processes competing for the cores; ``1000 / cost`` is the images/s one core can
    feed. Batching and inter-process transfer are not included.
    """
    from advseg_jax.data import pipeline, source as source_lib
    cfg = data.dataset_config(name=case.dataset, data_dir=data_dir, **case.overrides)
    src = source_lib.RawSource(cfg.name, cfg.config_name, data_dir, "train")
    tr = pipeline.TrainTransform(cfg)
    rng = np.random.default_rng(0)
    tr(src[0], rng)  # warm caches
    t = time.process_time()
    for i in range(n):
        tr(src[i % len(src)], rng)
    return (time.process_time() - t) / n * 1000


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="images/s of the grain train pipelines on a synthetic on-disk fixture "
                    "(cases: " + ", ".join(CASES) + ")")
    p.add_argument("--cases", default=",".join(CASES),
                   help="comma-separated cases to run (default: all)")
    p.add_argument("--workers", default=None,
                   help="comma-separated grain worker counts; 0 = in-process "
                        "(default: 0,1,2,<CPU count>)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    p.add_argument("--warmup", type=int, default=2,
                   help="untimed batches first (worker start-up, first reads)")
    p.add_argument("--read_threads", type=int, default=4,
                   help="threads per process decoding/augmenting (cfg.read_threads)")
    p.add_argument("--num_images", type=int, default=None,
                   help="fixture size per dataset (default: 40 VOC, 12 GTA5/Cityscapes)")
    p.add_argument("--workdir", default=None,
                   help="where to write the fixture and prepared data (default: a temp dir, "
                        "deleted at the end)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


def main(argv: Optional[list] = None) -> int:
    args = build_parser().parse_args(argv)
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()
    cases = [CASES[c] for c in args.cases.split(",") if c]
    ncpu = os.cpu_count() or 1
    workers = ([int(w) for w in args.workers.split(",")] if args.workers
               else sorted({0, 1, 2, ncpu}))
    tmp = args.workdir or tempfile.mkdtemp(prefix="advseg_input_bench_")
    try:
        data_dir = os.path.join(tmp, "tfds")
        for case in cases:
            n = args.num_images or (40 if case.dataset == "voc_aug" else 12)
            t = time.perf_counter()
            manual = make_fixture(os.path.join(tmp, "raw", case.dataset), case.dataset, n)
            prepare.prepare_dataset(case.dataset, data_dir=data_dir, manual_dir=manual)
            print(f"# fixture {case.dataset}: {n} images written and prepared in "
                  f"{time.perf_counter() - t:.1f} s", flush=True)
        costs = {}
        for case in cases:
            costs[case.name] = cpu_cost_ms(case, data_dir, 40 if case.batch_size > 1 else 12)
            print(f"# {case.name}: {costs[case.name]:.1f} CPU ms per image single-threaded "
                  f"(= {1000 / costs[case.name]:.1f} images/s per fully used core)", flush=True)
        results = []
        print(f"# {platform.node()} {ncpu} CPUs, python {platform.python_version()}, "
              f"read_threads={args.read_threads}, {args.batches} timed batches")
        print(f"{'case':<22}{'workers':>8}{'batch':>7}{'images/s':>10}{'startup s':>11}  shape")
        for case in cases:
            for w in workers:
                r = time_case(case, data_dir, w, args.batches, args.warmup, args.read_threads)
                results.append(r)
                print(f"{r['case']:<22}{w:>8}{r['batch_size']:>7}{r['images_per_s']:>10.1f}"
                      f"{r['startup_s']:>11.1f}  {tuple(r['image_shape'])}", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"cpus": ncpu, "cpu_ms_per_image": costs, "results": results}, f, indent=1)
    finally:
        if args.workdir is None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
