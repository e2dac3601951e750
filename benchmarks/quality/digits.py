"""The `digits_m` quality table (issue 22): does adversarial training beat its baseline on
real digits with a real appearance shift?

    pip install -e ".[digits]"                      # scikit-learn + scikit-image (the data)
    python benchmarks/quality/digits.py --quick     # 1 seed per cell, short runs (a smoke test)
    python benchmarks/quality/digits.py             # the table: 13 cells x 5 seeds
    python benchmarks/quality/digits.py --report_only --docs docs   # table + PNGs from runs

Cells (`configs/digits.py`): semi-supervised on `digits_m/source` at 1/16 and 1/8 labels
(supervised, AdvSemiSeg L_adv, AdvSemiSeg L_adv + L_semi) and with all labels (ceiling),
evaluated on source validation; domain adaptation `digits_m/source -> digits_m/target`
(source only, source only with target BN statistics, AdaptSegNet single-level, multi-level,
LS-GAN, and the target-supervised oracle), evaluated on target validation. The test split of
`digits_m/target` is never read here.

Each run is `python -m advseg_jax train --config configs/digits.py:CELL --workdir
OUT/TAG/CELL/seedS --config.seed=S ...` in a child process (log in RUN/train.log). The seed
fixes the labelled subset and the initialisation, so a method and its baseline pair by seed.
Resumable: a run whose `summary.json` says it finished at the requested step is kept, an
unfinished one resumes from its checkpoint. The run bookkeeping (summaries, curves, mean and
std, the train command) is `benchmarks/quality/methods.py`'s; this script adds the paired
statistics.

Reported: mean and sample std of the final mIoU per cell; for each method against its
baseline the paired difference over common seeds with its 95% Student-t interval and the
one-sided p-value (H1: method > baseline); for the adaptation methods the share of the
source-only -> oracle gap closed, (method - source only) / (oracle - source only), against
the better source-only cell. Written to OUT/TAG: digits.md, digits.json, digits_curves.png
(mean mIoU vs step, +/- 1 std bands) and digits_samples.png (first seed: source rendering and
target image of a scene, ground truth, source-only and best adapted predictions).

Hyper-parameters: the originals' adversarial weights and D learning rate in every cell.
`--adv_scales 1,10` adds a weight search: each adversarial cell (adv_*, semi_*, single, multi,
lsgan) also runs with all of its adversarial weights (lambda_adv, lambda_adv_aux,
lambda_semi_adv) multiplied by each other scale, as cell `CELL@xS` (e.g. `single@x10`:
lambda_adv 0.01), paired with the same baselines. The report keeps every scale, the
originals' (x1) included; the scale is chosen on validation, which is also where the cells
are scored, so the best scale's figure is mildly optimistic (`--test` gives the held-out
figure). `--d_lr_scales 1,20` searches D's learning rate the same way (`CELL@dlr20`, or
`CELL@x10_dlr20` with a weight scale): G's rate here is 20x the originals' (no pretrained
backbone), so D at 20x keeps the originals' G:D ratio.

Shared source pretraining (adaptation cells): the originals adapt a pretrained network, and
from a random initialisation the source task is not learned before ~1000 steps, while the
discriminator already separates the domains (measured: see the issue notes). So for each
seed one run of `configs/digits.py:source_only` (`--pretrain_steps`, default 1500) is
trained first (RUN = OUT/TAG/pretrain/seedS), and every adaptation cell of that seed,
source-only and oracle included, starts from its final model (`init.checkpoint`) and trains
its own schedule. The semi-supervised cells start from the random initialisation (a
pretraining on source labels would leak the labels they do without).

Cost (not measured end to end): at batch 8 on 96x96 scenes a supervised step took ~0.3 s and
an adversarial step ~0.9-1.4 s on 2 CPU cores shared with other jobs (load 4-7); the full
table is 65 runs of 1500 steps (many hours on 2 cores; `--steps` shortens every cell alike),
`--quick` is 13 runs of 200 steps, planned for <= 20 minutes on 2 idle cores.

BN (configs/digits.py): the adaptation cells that see target images train on joint source +
target batches (`method.bn_domains='joint'`); `source_only` never sees a target image. After
training, each adaptation run except the oracle is scored a second time with BN statistics
recomputed on 512 target train images (`evaluate --bn_stats_from digits_m/target:train`,
kept in RUN/eval_target_bn.json), reported as row '<cell>+adabn'. The adaptation methods are
compared with all four source-only rows; the best of them is the baseline to beat.

Held out (`--test`): the adaptation runs are also scored on digits_m/target test, with the
stored BN statistics and, for the '+adabn' cells, recomputed ones (RUN/eval_test*.json), and
reported in a second table with the same comparisons. Nothing is chosen on it: the
adversarial weights (`--adv_scales`) are chosen on validation.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def _load_shared():
  """`benchmarks/quality/methods.py` (run bookkeeping shared with the shapes table)."""
  spec = importlib.util.spec_from_file_location(
      "benchmarks_methods", os.path.join(REPO, "benchmarks", "quality", "methods.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


shared = _load_shared()

CONFIG = "configs/digits.py"
SOURCE_VAL = "digits_m/source validation"
TARGET_VAL = "digits_m/target validation"
# cell -> (description, evaluated on)
CELLS: Dict[str, Tuple[str, str]] = {
    "sup_1/16": ("supervised, 1/16 labels", SOURCE_VAL),
    "adv_1/16": ("AdvSemiSeg L_adv, 1/16 labels", SOURCE_VAL),
    "semi_1/16": ("AdvSemiSeg L_adv + L_semi, 1/16 labels", SOURCE_VAL),
    "sup_1/8": ("supervised, 1/8 labels", SOURCE_VAL),
    "adv_1/8": ("AdvSemiSeg L_adv, 1/8 labels", SOURCE_VAL),
    "semi_1/8": ("AdvSemiSeg L_adv + L_semi, 1/8 labels", SOURCE_VAL),
    "sup_full": ("supervised, all labels (ceiling)", SOURCE_VAL),
    "source_only": ("source only, no target image in training", TARGET_VAL),
    "source_only_tbn": ("source only, target images in BN batches", TARGET_VAL),
    "single": ("AdaptSegNet single-level", TARGET_VAL),
    "multi": ("AdaptSegNet multi-level", TARGET_VAL),
    "lsgan": ("AdaptSegNet single-level LS-GAN", TARGET_VAL),
    "oracle": ("supervised on target labels (ceiling)", TARGET_VAL),
}
SEMI_CELLS = ("sup_1/16", "adv_1/16", "semi_1/16", "sup_1/8", "adv_1/8", "semi_1/8",
              "sup_full")
ADAPT_METHODS = ("single", "multi", "lsgan")
# The adversarial weights that --adv_scales multiplies (every other field stays).
ADV_WEIGHTS = ("method.lambda_adv", "method.lambda_adv_aux", "method.lambda_semi_adv")
ADVERSARIAL = ("adv_1/16", "semi_1/16", "adv_1/8", "semi_1/8") + ADAPT_METHODS
# Cells also scored with BN statistics recomputed on target train images (AdaBN, `evaluate
# --bn_stats_from`): row "<cell>+adabn".
ADABN_CELLS = ("source_only", "source_only_tbn") + ADAPT_METHODS
ADABN = "+adabn"
ADABN_IMAGES = 512
SOURCE_ONLY = ("source_only", "source_only+adabn", "source_only_tbn", "source_only_tbn+adabn")
SEMI_COMPARISONS = (("adv_1/16", "sup_1/16"), ("semi_1/16", "sup_1/16"),
                    ("adv_1/8", "sup_1/8"), ("semi_1/8", "sup_1/8"))
PROFILES = {
    # The table: the presets' schedule (configs/digits.py NUM_STEPS), whole validation split.
    "full": {"seeds": 5, "num_steps": None, "eval_every": 150, "eval_max_examples": 0,
             "pretrain_steps": 1500},
    # One seed, short runs, 200 validation scenes: checks the whole pipeline, not the targets.
    "quick": {"seeds": 1, "num_steps": 200, "eval_every": 100, "eval_max_examples": 200,
              "pretrain_steps": 100},
}
# The shared source pretraining of the adaptation cells: configs/digits.py:source_only for
# PROFILES[...]["pretrain_steps"] steps, once per seed; every adaptation cell of that seed
# (source-only, AdaptSegNet and oracle alike) starts from its final model.
PRETRAIN = "pretrain"
ADAPT_CELLS = tuple(c for c, (_, evaluated_on) in CELLS.items() if evaluated_on == TARGET_VAL)
BN_NOTE = ("BN: the adaptation cells that see target images (source_only_tbn, single, "
           "multi, lsgan) train on joint source + target batches (method.bn_domains="
           "'joint'); source_only never sees a target image. Rows '+adabn' score the same "
           f"final models with BN statistics recomputed on {ADABN_IMAGES} target train "
           "images (evaluate --bn_stats_from digits_m/target:train); the best of the four "
           "source-only rows is the baseline to beat.")
NUM_SAMPLES = 6


@dataclasses.dataclass(frozen=True)
class Scoring:
  """An evaluation of finished runs besides the one in training: a split of digits_m/target,
  with the stored BN statistics or ones recomputed on target train images (AdaBN)."""
  split: str        # 'validation' | 'test'
  target_bn: bool
  file: str         # RUN/<file>.json (and .log)

  @property
  def cells(self) -> Tuple[str, ...]:
    """The cells (presets) whose runs this scoring evaluates."""
    return ADABN_CELLS if self.target_bn else ADAPT_CELLS


ADABN_VAL = Scoring("validation", True, "eval_target_bn")
TEST = Scoring("test", False, "eval_test")
ADABN_TEST = Scoring("test", True, "eval_test_target_bn")


# ----------------------------------------------------------------------------- cell names
# A variant's name is its preset and tags: 'single@x10' (adversarial weights x10),
# 'single@dlr20' (D learning rate x20), 'single@x10_dlr20' (both).
ADV_TAG, D_LR_TAG, TAG_SEP = "x", "dlr", "_"


def variant(cell: str, scale: float, d_lr_scale: float = 1.0) -> str:
  """The name of `cell` with its adversarial weights times `scale` and D's learning rate
  times `d_lr_scale`."""
  tags = [f"{tag}{v:g}" for tag, v in ((ADV_TAG, scale), (D_LR_TAG, d_lr_scale)) if v != 1]
  return f"{cell}@{TAG_SEP.join(tags)}" if tags else cell


def base_cell(name: str) -> str:
  """The preset of a cell name: 'single@x10' -> 'single'."""
  return name.partition("@")[0]


def _tag(name: str, tag: str) -> float:
  for t in filter(None, name.partition("@")[2].split(TAG_SEP)):
    if t.startswith(tag) and t[len(tag):][:1].isdigit():
      return float(t[len(tag):])
  return 1.0


def adv_scale(name: str) -> float:
  """The adversarial-weight factor of a cell name: 'single@x10' -> 10.0, 'single' -> 1.0."""
  return _tag(name, ADV_TAG)


def d_lr_scale(name: str) -> float:
  """The D learning-rate factor of a cell name: 'single@x10_dlr20' -> 20.0."""
  return _tag(name, D_LR_TAG)


def is_cell_name(name: str) -> bool:
  """A preset, or an adversarial preset with valid tags ('single@x10_dlr20')."""
  cell = base_cell(name)
  if "@" not in name:
    return cell in CELLS
  try:
    scales = (adv_scale(name), d_lr_scale(name))
  except ValueError:
    return False
  return cell in ADVERSARIAL and min(scales) > 0 and name == variant(cell, *scales)


def describe(name: str) -> Tuple[str, str]:
  """(description, evaluated on) of a cell name."""
  text, evaluated_on = CELLS[base_cell(name)]
  for what, v in (("adversarial weights", adv_scale(name)),
                  ("D learning rate", d_lr_scale(name))):
    if v != 1:
      text += f", {what} x{v:g}"
  return text, evaluated_on


def of_cells(rows: Sequence[str], cells: Sequence[str]) -> List[str]:
  """The names in `rows` whose preset is one of `cells`, scale variants included ('+adabn'
  rows excluded)."""
  return [r for r in rows if base_cell(r) in cells and not r.endswith(ADABN)]


def parse_scales(text: str) -> List[float]:
  """'1,10' -> [1.0, 10.0]; each scale > 0."""
  scales = [float(x) for x in text.split(",") if x.strip()]
  if not scales or min(scales) <= 0:
    raise ValueError(text)
  return scales


# ----------------------------------------------------------------------------- arguments
def parse_seeds(text: str) -> List[int]:
  """'5' -> [0..4]; '0,3' -> [0, 3]; '7,' -> [7]; '0' (no seed) is an error."""
  seeds = [int(x) for x in text.split(",") if x.strip()]
  if not seeds or min(seeds) < 0 or ("," not in text and seeds[0] < 1):
    raise ValueError(text)
  return seeds if "," in text else list(range(seeds[0]))


def _expand(cell: str, args: argparse.Namespace) -> List[str]:
  """An adversarial preset named bare: its variants over the scale grids; else `cell`."""
  if "@" in cell or cell not in ADVERSARIAL:
    return [cell]
  return [variant(cell, s, d) for s in args.adv_scales for d in args.d_lr_scales]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python benchmarks/quality/digits.py",
      description="Train every cell of the digits_m table over several seeds and report "
                  "paired statistics. Resumable: finished runs are kept.")
  p.add_argument("--quick", action="store_true",
                 help="one seed per cell, 200 steps, eval on 200 scenes (a smoke run of "
                      "the whole table, ~20 min on 2 CPU cores)")
  p.add_argument("--cells", default="all",
                 help=f"comma-separated cells or 'all'; cells: {', '.join(CELLS)}; a cell "
                      "named with its tags (e.g. single@x10_dlr20) is that variant alone")
  p.add_argument("--seeds", type=parse_seeds, default=None,
                 help="N (seeds 0..N-1) or a comma-separated list, e.g. 0,3 or '7,'; "
                      "default 5 (quick: 1)")
  p.add_argument("--adv_scales", type=parse_scales, default=[1.0],
                 help="comma-separated factors on every adversarial weight of the adversarial "
                      "cells, e.g. 1,10 (default 1: the originals' weights); each factor "
                      "other than 1 adds cell CELL@xFACTOR")
  p.add_argument("--d_lr_scales", type=parse_scales, default=[1.0],
                 help="comma-separated factors on D's learning rate of the adversarial cells, "
                      "e.g. 1,20 (default 1: the originals' 1e-4); each factor other than 1 "
                      "adds cell CELL@dlrFACTOR (with --adv_scales: CELL@xA_dlrD)")
  p.add_argument("--steps", type=int, default=None,
                 help="steps per run (default: the profile's); semi_start scales with it")
  p.add_argument("--pretrain_steps", type=int, default=None,
                 help="steps of the shared source pretraining that every adaptation cell of "
                      "a seed starts from (default: the profile's, 1500; quick 100; 0: none, "
                      "every cell from the random initialisation)")
  p.add_argument("--out", default="runs/quality_digits", help="results directory")
  p.add_argument("--data_dir", default=None, help="TFDS data dir (default ~/tensorflow_datasets)")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override for every run (repeatable; use a fresh --out)")
  p.add_argument("--cache_dir", default=None,
                 help="persistent XLA cache (default OUT/jax_cache; '' disables it)")
  p.add_argument("--report_only", action="store_true", help="train nothing, report the runs")
  p.add_argument("--dry_run", action="store_true", help="print the train commands and exit")
  p.add_argument("--no_samples", action="store_true", help="skip the sample sheet")
  p.add_argument("--test", action="store_true",
                 help="also score the adaptation runs on digits_m/target test (held out: "
                      "nothing is chosen on it) and report that table after the main one")
  p.add_argument("--docs", default=None,
                 help="also copy the PNGs to this folder (e.g. docs) as digits_*.png")
  args = p.parse_args(argv)
  args.profile = "quick" if args.quick else "full"
  if args.cells.strip().lower() == "all":
    args.cells = list(CELLS)
  else:
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    bad = [c for c in args.cells if not is_cell_name(c)]
    if bad:
      p.error(f"--cells: unknown {', '.join(bad)}; known: {', '.join(CELLS)}, with tags "
              f"@x<scale> and @dlr<scale> (joined by '{TAG_SEP}') on {', '.join(ADVERSARIAL)}")
  args.cells = [name for c in args.cells for name in _expand(c, args)]
  args.seeds = args.seeds or list(range(PROFILES[args.profile]["seeds"]))
  if args.steps is not None and args.steps < 1:
    p.error(f"--steps: expected an int >= 1, got {args.steps}")
  if args.pretrain_steps is not None and args.pretrain_steps < 0:
    p.error(f"--pretrain_steps: expected an int >= 0, got {args.pretrain_steps}")
  for o in args.overrides:
    if "=" not in o:
      p.error(f"--set {o!r}: expected FIELD=VALUE")
  return args


# ----------------------------------------------------------------------------- runs
def run_overrides(args: argparse.Namespace, cell: str) -> Dict[str, Any]:
  """{field: value} of one cell's runs (seed excluded): same schedule for every cell."""
  base = shared.load_config(CONFIG, base_cell(cell))
  prof = PROFILES[args.profile]
  steps = int(args.steps or prof["num_steps"] or base.num_steps)
  ov: Dict[str, Any] = {
      "num_steps": steps,
      "method.semi_start": int(round(int(base.method.semi_start) * steps / int(base.num_steps))),
      "eval_every": min(int(prof["eval_every"]), steps),
      "eval_max_examples": int(prof["eval_max_examples"]),
      "checkpoint_every": max(1, steps // 3),
  }
  scale = adv_scale(cell)
  if scale != 1:
    for field in ADV_WEIGHTS:
      group, name = field.split(".")
      ov[field] = float(base[group][name]) * scale
  if d_lr_scale(cell) != 1:
    ov["optim_d.lr"] = float(base.optim_d.lr) * d_lr_scale(cell)
  if args.data_dir:
    for s in ("data", "target_data", "eval_data"):
      ov[f"{s}.data_dir"] = os.path.abspath(os.path.expanduser(args.data_dir))
  for o in args.overrides:
    k, v = o.split("=", 1)
    ov[k.strip()] = v.strip()
  return ov


def run_dir(root: str, cell: str, seed: int) -> str:
  return os.path.join(root, cell.replace("/", "of"), f"seed{seed}")


def plan_runs(args: argparse.Namespace, root: str) -> List[Dict[str, Any]]:
  """Seed-major list of runs: after the first len(cells) runs there is a one-seed table."""
  specs = {cell: run_overrides(args, cell) for cell in args.cells}
  pre_steps = pretrain_steps(args)
  pretrain = None
  if pre_steps and of_cells(args.cells, ADAPT_CELLS):
    pretrain = dict(run_overrides(args, "source_only"), num_steps=pre_steps,
                    eval_every=min(int(PROFILES[args.profile]["eval_every"]), pre_steps),
                    checkpoint_every=max(1, pre_steps // 3))
  plan = []
  for seed in args.seeds:
    init = None
    if pretrain is not None:
      init = run_dir(root, PRETRAIN, seed)
      plan.append({"cell": PRETRAIN, "seed": seed, "workdir": init, "stop": pre_steps,
                   "cmd": shared.train_command(f"{CONFIG}:source_only", pretrain, seed, init)})
    for cell in args.cells:
      wd = run_dir(root, cell, seed)
      ov = dict(specs[cell])
      if init is not None and base_cell(cell) in ADAPT_CELLS:
        ov.update({"init.checkpoint": init, "init.rule": "strict"})
      plan.append({"cell": cell, "seed": seed, "workdir": wd, "stop": int(ov["num_steps"]),
                   "cmd": shared.train_command(f"{CONFIG}:{base_cell(cell)}", ov, seed, wd)})
  return plan


def pretrain_steps(args: argparse.Namespace) -> int:
  if args.pretrain_steps is not None:
    return int(args.pretrain_steps)
  return int(PROFILES[args.profile]["pretrain_steps"])


def train_all(plan: List[Dict[str, Any]], env: Dict[str, str]) -> List[Tuple[str, int, str]]:
  """Trains the unfinished runs of `plan`; returns (label, exit code, log) of failures."""
  failures = []
  for i, r in enumerate(plan, 1):
    label = f"[{i}/{len(plan)}] {r['cell']} seed {r['seed']}"
    summ = shared.read_summary(r["workdir"])
    if shared.is_complete(summ, r["stop"]):
      print(f"{label}: done before (mIoU {shared.pct(summ.get('miou'))}), kept")
      continue
    os.makedirs(r["workdir"], exist_ok=True)
    print(f"{label}: training ...", flush=True)
    t0 = time.time()
    log_path = os.path.join(r["workdir"], "train.log")
    with open(log_path, "a") as log:
      log.write("$ " + " ".join(r["cmd"]) + "\n")
      log.flush()
      rc = subprocess.call(r["cmd"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    summ = shared.read_summary(r["workdir"])
    if rc != 0 or not shared.is_complete(summ, r["stop"]):
      failures.append((label, rc, log_path))
      print(f"{label}: FAILED (exit {rc}); see {log_path}")
      continue
    print(f"{label}: mIoU {shared.pct(summ.get('miou'))} in "
          f"{shared.fmt_seconds(time.time() - t0)}", flush=True)
  return failures


def score_json(workdir: str, scoring: Scoring) -> str:
  return os.path.join(workdir, scoring.file + ".json")


def evaluate_runs(args: argparse.Namespace, plan: List[Dict[str, Any]], env: Dict[str, str],
                  scoring: Scoring) -> List[Tuple[str, int, str]]:
  """Scores each finished run of `scoring.cells` (kept in RUN/<scoring.file>.json, so a
  scored run is not scored again); returns the failures like `train_all`."""
  n_eval = int(PROFILES[args.profile]["eval_max_examples"])
  split = f"{scoring.split}[:{n_eval}]" if n_eval > 0 else scoring.split
  failures = []
  for r in plan:
    out = score_json(r["workdir"], scoring)
    if base_cell(r["cell"]) not in scoring.cells or os.path.exists(out) or \
        not shared.is_complete(shared.read_summary(r["workdir"]), r["stop"]):
      continue
    cmd = [sys.executable, "-m", "advseg_jax", "evaluate", r["workdir"], "--split", split,
           "--output_json", out, "--no_progress"]
    if scoring.target_bn:
      cmd += ["--bn_stats_from", "digits_m/target:train", "--bn_stats_images", str(ADABN_IMAGES)]
    if args.data_dir:
      cmd += ["--data_dir", os.path.abspath(os.path.expanduser(args.data_dir))]
    log_path = os.path.join(r["workdir"], scoring.file + ".log")
    with open(log_path, "w") as log:
      rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    label = f"{r['cell']}{ADABN if scoring.target_bn else ''} seed {r['seed']} ({scoring.split})"
    if rc != 0:
      failures.append((label, rc, log_path))
      print(f"{label}: FAILED (exit {rc}); see {log_path}")
    else:
      with open(out) as f:
        print(f"{label}: mIoU {shared.pct(json.load(f)['miou'])}", flush=True)
  return failures


def scored_rows(args: argparse.Namespace, root: str, rows: Dict[str, Dict[str, Any]],
                scoring: Scoring) -> Dict[str, Dict[str, Any]]:
  """A row per cell of `scoring.cells` from its RUN/<scoring.file>.json scores (final mIoU
  only, no curve), over the seeds the cell's training row counts; named '<cell>+adabn'
  for target BN statistics."""
  out = {}
  for cell in of_cells(args.cells, scoring.cells):
    per_seed = {}
    for seed in rows[cell]["per_seed"]:
      path = score_json(run_dir(root, cell, seed), scoring)
      if os.path.exists(path):
        with open(path) as f:
          per_seed[seed] = float(json.load(f)["miou"])
    description, _ = describe(cell)
    if scoring.target_bn:
      description += ", BN statistics recomputed on target"
    mean, std = shared.mean_std(list(per_seed.values()))
    out[cell + (ADABN if scoring.target_bn else "")] = {
        "description": description, "eval_set": f"digits_m/target {scoring.split}",
        "mean": mean, "std": std, "per_seed": per_seed, "num_seeds": len(per_seed),
        "steps": rows[cell]["steps"], "wall_s_mean": float("nan"), "curve": []}
  return out


def test_rows(args: argparse.Namespace, root: str,
              rows: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
  """The held-out table: each adaptation cell on target test, with its '+adabn' row after."""
  plain, adabn = scored_rows(args, root, rows, TEST), scored_rows(args, root, rows, ADABN_TEST)
  out = {}
  for cell, row in plain.items():
    out[cell] = row
    if cell + ADABN in adabn:
      out[cell + ADABN] = adabn[cell + ADABN]
  return out


def collect(args: argparse.Namespace, root: str) -> Dict[str, Dict[str, Any]]:
  """Per cell: per-seed final mIoU, mean, std, mean curve, wall time (runs finished at the
  requested step only: a stopped run's summary carries the score of where it stopped)."""
  rows = {}
  for cell in args.cells:
    per_seed, curves, walls, steps = {}, [], [], None
    stop = int(run_overrides(args, cell)["num_steps"])
    for seed in args.seeds:
      wd = run_dir(root, cell, seed)
      summ = shared.read_summary(wd)
      if not shared.is_complete(summ, stop) or summ.get("miou") is None:
        continue
      per_seed[seed] = float(summ["miou"])
      curves.append(dict(shared.read_curve(wd)))
      walls.append(float(summ.get("wall_time_s") or float("nan")))
      steps = int(summ.get("final_step") or 0)
    mean, std = shared.mean_std(list(per_seed.values()))
    common = sorted(set.intersection(*[set(c) for c in curves])) if curves else []
    curve = [(st, *shared.mean_std([c[st] for c in curves])) for st in common]
    description, eval_set = describe(cell)
    rows[cell] = {"description": description, "eval_set": eval_set, "mean": mean, "std": std,
                  "per_seed": per_seed, "num_seeds": len(per_seed), "steps": steps,
                  "wall_s_mean": shared.mean_std(walls)[0], "curve": curve}
  for cell, row in scored_rows(args, root, rows, ADABN_VAL).items():
    rows[cell] = row
  return rows


# ----------------------------------------------------------------------------- statistics
def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
  tiny = 1e-300
  c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 300):
    for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
      d = 1.0 + num * d
      d = 1.0 / (d if abs(d) > tiny else tiny)
      c = 1.0 + num / c
      c = c if abs(c) > tiny else tiny
      h *= d * c
    if abs(d * c - 1.0) < 1e-15:
      break
  return h


def betainc(a: float, b: float, x: float) -> float:
  """Regularised incomplete beta I_x(a, b)."""
  if x <= 0.0:
    return 0.0
  if x >= 1.0:
    return 1.0
  ln = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
        + b * math.log1p(-x))
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(ln) * _betacf(a, b, x) / a
  return 1.0 - math.exp(ln) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) for Student's t with `df` degrees of freedom."""
  tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
  return 1.0 - tail if t >= 0 else tail


def t_ppf(q: float, df: float) -> float:
  """The `q` quantile of Student's t (bisection on `t_cdf`)."""
  lo, hi = -1e3, 1e3
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if t_cdf(mid, df) < q:
      lo = mid
    else:
      hi = mid
  return 0.5 * (lo + hi)


def paired(method: Dict[int, float], baseline: Dict[int, float]) -> Dict[str, Any]:
  """Paired difference over common seeds: mean, std, 95% t interval, one-sided p (m > b)."""
  seeds = sorted(set(method) & set(baseline))
  diffs = [method[s] - baseline[s] for s in seeds]
  out: Dict[str, Any] = {"seeds": seeds, "n": len(diffs), "diffs": diffs, "mean": float("nan"),
                         "std": float("nan"), "ci95": None, "p_one_sided": None}
  if not diffs:
    return out
  out["mean"], out["std"] = shared.mean_std(diffs)
  n = len(diffs)
  if n < 2:
    return out
  se = out["std"] / math.sqrt(n)
  if se == 0.0:
    out["ci95"] = (out["mean"], out["mean"])
    out["p_one_sided"] = 0.0 if out["mean"] > 0 else 1.0
    return out
  half = t_ppf(0.975, n - 1) * se
  out["ci95"] = (out["mean"] - half, out["mean"] + half)
  out["p_one_sided"] = 1.0 - t_cdf(out["mean"] / se, n - 1)
  return out


def best_of(rows: Dict[str, Dict[str, Any]], cells: Sequence[str]) -> Optional[str]:
  """The cell of `cells` with the highest mean (None when none has a run)."""
  have = [c for c in cells if c in rows and rows[c]["num_seeds"]]
  return max(have, key=lambda c: rows[c]["mean"]) if have else None


def gap_closed(method: float, source_only: float, oracle: float) -> float:
  """(method - source only) / (oracle - source only); NaN when the gap is not positive."""
  gap = oracle - source_only
  return (method - source_only) / gap if gap > 0 else float("nan")


def comparisons(rows: Dict[str, Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Each method against its baseline; adaptation methods against both source-only cells."""
  pairs = [(m, b) for method, b in SEMI_COMPARISONS for m in of_cells(rows, (method,))]
  pairs += [(m, b) for m in of_cells(rows, ADAPT_METHODS) for b in SOURCE_ONLY]
  best_so = best_of(rows, SOURCE_ONLY)
  oracle = rows.get("oracle", {}).get("mean", float("nan")) if "oracle" in rows else float("nan")
  out = []
  for m, b in pairs:
    if m not in rows or b not in rows or not rows[m]["num_seeds"] or not rows[b]["num_seeds"]:
      continue
    c = {"method": m, "baseline": b, "best_baseline": b == best_so,
         **paired(rows[m]["per_seed"], rows[b]["per_seed"])}
    if base_cell(m) in ADAPT_METHODS:
      c["gap_closed"] = gap_closed(rows[m]["mean"], rows[b]["mean"], oracle)
    out.append(c)
  return out


# ----------------------------------------------------------------------------- report
def _fmt_p(p: Optional[float]) -> str:
  if p is None or not math.isfinite(p):
    return "n/a"
  return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def _fmt_ci(ci: Optional[Tuple[float, float]]) -> str:
  return "n/a" if ci is None else f"[{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]"


def markdown(args: argparse.Namespace, rows: Dict[str, Dict[str, Any]],
             comps: List[Dict[str, Any]]) -> str:
  """The table of `rows`, the seeds line, the paired comparisons `comps` and the BN note."""
  pct = shared.pct
  lines = ["| cell | description | evaluated on | mIoU % mean ± std | per seed | seeds | steps "
           "| wall / run |", "|---|---|---|---|---|---|---|---|"]
  for cell, r in rows.items():
    seeds = ", ".join(pct(v) for _, v in sorted(r["per_seed"].items())) or "-"
    ms = f"{pct(r['mean'])} ± {pct(r['std'])}" if r["num_seeds"] else "not run"
    lines.append(f"| {cell} | {r['description']} | {r['eval_set']} | {ms} | {seeds} | "
                 f"{r['num_seeds']} | {r['steps'] or '-'} | "
                 f"{shared.fmt_seconds(r['wall_s_mean'])} |")
  lines += ["", f"Final-step mIoU (nanmean over 11 classes), mean ± sample std over seeds "
                f"{','.join(str(s) for s in args.seeds)} (profile {args.profile}).", ""]
  if comps:
    lines += ["| method vs baseline | paired diff (points) | 95% interval | one-sided p | "
              "pairs | gap closed |", "|---|---|---|---|---|---|"]
    for c in comps:
      star = " (best source only)" if c["best_baseline"] else ""
      gap = c.get("gap_closed")
      gap_s = "-" if gap is None else ("n/a" if not math.isfinite(gap) else f"{100 * gap:.0f}%")
      diff = "n/a" if not math.isfinite(c["mean"]) else f"{100 * c['mean']:+.1f}"
      lines.append(f"| {c['method']} vs {c['baseline']}{star} | {diff} | {_fmt_ci(c['ci95'])} "
                   f"| {_fmt_p(c['p_one_sided'])} | {c['n']} | {gap_s} |")
    lines += ["", "Paired over seeds (same labelled subset and initialisation); interval: "
                  "Student t on the per-seed differences; p: one-sided t test, H1 method > "
                  "baseline. Gap closed: (method - source only) / (oracle - source only), "
                  "by means."]
  lines += ["", BN_NOTE]
  return "\n".join(lines) + "\n"


def _pyplot():
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("matplotlib is not installed: no plots")
    return None
  return plt


def plot_curves(rows: Dict[str, Dict[str, Any]], path: str, title: str) -> Optional[str]:
  """Mean mIoU vs step per cell with +/- 1 std bands, one panel per group."""
  plt = _pyplot()
  groups = [(of_cells(rows, SEMI_CELLS), f"semi-supervised ({SOURCE_VAL})"),
            (list(SOURCE_ONLY) + of_cells(rows, ADAPT_METHODS + ("oracle",)),
             f"adaptation ({TARGET_VAL})")]
  groups = [(g, t) for g, t in groups if any(rows.get(c, {}).get("curve") for c in g)]
  if plt is None or not groups:
    return None
  fig, axes = plt.subplots(1, len(groups), figsize=(5.6 * len(groups), 3.8), squeeze=False)
  for ax, (cells, name) in zip(axes[0], groups):
    for cell in cells:
      r = rows.get(cell)
      if not r or not r["curve"]:
        continue
      st = [p[0] for p in r["curve"]]
      mu = [100 * p[1] for p in r["curve"]]
      sd = [100 * p[2] for p in r["curve"]]
      line, = ax.plot(st, mu, lw=1.4, label=f"{cell}: {shared.pct(r['mean'])}")
      ax.fill_between(st, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)],
                      color=line.get_color(), alpha=0.15, lw=0)
    ax.set_title(name, fontsize=9)
    ax.set_xlabel("training step")
    ax.set_ylabel("mIoU % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def _predict(model_dir: str, inputs: str, out: str, env: Dict[str, str]) -> bool:
  cmd = [sys.executable, "-m", "advseg_jax", "predict", inputs, "-c", model_dir, "-o", out,
         "--mode", "native"]
  return subprocess.call(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                         stderr=subprocess.STDOUT) == 0


def sample_sheet(root: str, rows: Dict[str, Dict[str, Any]], seed: int, path: str,
                 env: Dict[str, str]) -> Optional[str]:
  """Source rendering / target image / ground truth / source-only / adapted predictions."""
  # Predictions use the stored statistics, so the '+adabn' rows are not candidates here.
  so = best_of(rows, ("source_only", "source_only_tbn"))
  ad = best_of(rows, of_cells(rows, ADAPT_METHODS))
  plt = _pyplot()
  if plt is None or so is None or ad is None:
    return None
  import numpy as np  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from advseg_jax.data import registry  # pylint: disable=import-outside-toplevel
  from advseg_jax.data.builders.digits_m import render  # pylint: disable=import-outside-toplevel
  inputs = os.path.join(root, "samples", "input")
  os.makedirs(inputs, exist_ok=True)
  scenes = []
  for i in range(NUM_SAMPLES):
    img, lab, digits = render.render_example("target", "validation", i)
    v, _ = render.render_digits(digits)
    Image.fromarray(img).save(os.path.join(inputs, f"scene{i}.png"))
    scenes.append((np.repeat(np.rint(255 * v).astype(np.uint8)[..., None], 3, -1), img, lab))
  preds = {}
  for cell in (so, ad):
    out = os.path.join(root, "samples", cell.replace("/", "of"))
    model = os.path.join(run_dir(root, cell, seed), "final_model")
    if not os.path.isdir(model) or not _predict(model, inputs, out, env):
      print(f"sample sheet: no predictions from {model}")
      return None
    preds[cell] = [np.array(Image.open(os.path.join(out, f"scene{i}.png")))
                   for i in range(NUM_SAMPLES)]
  pal = np.concatenate([registry.get_info("digits_m").palette,
                        np.full((245, 3), 255, np.uint8)])
  cols = ["source look", "target image", "ground truth", f"{so} (seed {seed})",
          f"{ad} (seed {seed})"]
  fig, axes = plt.subplots(NUM_SAMPLES, 5, figsize=(9, 1.9 * NUM_SAMPLES), squeeze=False)
  for i, (src, img, lab) in enumerate(scenes):
    for j, im in enumerate((src, img, pal[lab], pal[preds[so][i]], pal[preds[ad][i]])):
      axes[i][j].imshow(im)
      axes[i][j].axis("off")
      if i == 0:
        axes[i][j].set_title(cols[j], fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------- main
def child_env(args: argparse.Namespace) -> Dict[str, str]:
  env = dict(os.environ)
  if args.cache_dir != "" and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(
        args.cache_dir or os.path.join(args.out, "jax_cache"))
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  return env


def write_report(args: argparse.Namespace, root: str, env: Dict[str, str]) -> Dict[str, Any]:
  rows = collect(args, root)
  comps = comparisons(rows)
  md = markdown(args, rows, comps)
  held_out = {}
  if args.test:
    held_out["rows"] = test_rows(args, root, rows)
    held_out["comparisons"] = comparisons(held_out["rows"])
    md += ("\n## Held out: digits_m/target test\n\nThe same final models, scored once on "
           "the target test split, which nothing is chosen on.\n\n"
           + markdown(args, held_out["rows"], held_out["comparisons"]))
  print()
  print(md)
  cmdline = "python benchmarks/quality/digits.py " + " ".join(args.argv)
  with open(os.path.join(root, "digits.md"), "w") as f:
    f.write(f"`{cmdline.strip()}`\n\n{md}")
  result = {"profile": args.profile, "seeds": args.seeds, "command": cmdline.strip(),
            "rows": rows, "comparisons": comps, "held_out_test": held_out, "bn_note": BN_NOTE,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  with open(os.path.join(root, "digits.json"), "w") as f:
    json.dump(result, f, indent=1)
  pngs = [plot_curves(rows, os.path.join(root, "digits_curves.png"),
                      f"benchmarks/quality/digits.py ({args.profile}, seeds {args.seeds})")]
  if not args.no_samples:
    pngs.append(sample_sheet(root, rows, args.seeds[0],
                             os.path.join(root, "digits_samples.png"), env))
  for png in filter(None, pngs):
    if args.docs:
      os.makedirs(args.docs, exist_ok=True)
      shutil.copyfile(png, os.path.join(args.docs, os.path.basename(png)))
  print(f"wrote {root}/digits.md, digits.json" +
        "".join(f", {os.path.basename(p)}" for p in pngs if p))
  return result


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  args.argv = list(sys.argv[1:] if argv is None else argv)
  tag = args.profile + (f"-{args.steps}steps" if args.steps else "")
  if args.pretrain_steps is not None:
    tag += f"-pretrain{args.pretrain_steps}"
  root = os.path.abspath(os.path.join(args.out, tag))
  os.makedirs(root, exist_ok=True)
  env = child_env(args)
  plan = plan_runs(args, root)
  if args.dry_run:
    for r in plan:
      print(f"{r['cell']} seed {r['seed']}:\n  " + " ".join(r["cmd"]))
    return 0
  failures = []
  if not args.report_only:
    print(f"{len(plan)} runs ({len(args.cells)} cells x {len(args.seeds)} seeds) -> {root}")
    failures = train_all(plan, env)
    for scoring in (ADABN_VAL,) + ((TEST, ADABN_TEST) if args.test else ()):
      failures += evaluate_runs(args, plan, env, scoring)
  write_report(args, root, env)
  for label, rc, path in failures:
    print(f"FAILED {label}: exit {rc}, log {path}")
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
