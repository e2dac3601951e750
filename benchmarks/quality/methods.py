"""Whole training runs of every method, several seeds each: mean +/- std mIoU and curves.

    python benchmarks/quality/methods.py                         # shapes, CPU profile, 8 methods x 3 seeds
    python benchmarks/quality/methods.py --profile gpu           # the larger shapes table (one GPU)
    python benchmarks/quality/methods.py --preset voc --data_dir ~/tensorflow_datasets \\
        --init_checkpoint resnet101COCO-41f33a49.pth     # AdvSemiSeg Table (VOC 1/8)
    python benchmarks/quality/methods.py --preset gta5 --data_dir ~/tensorflow_datasets \\
        --init_checkpoint DeepLab_resnet_pretrained_init-f81d91e8.pth   # AdaptSegNet GTA5->CS

Each run is `python -m advseg_jax train --config CONFIG --workdir OUT/PRESET-PROFILE/RUN/seedS
--config.seed=S ...` in a child process (logs in RUN/seedS/train.log); the mIoU-vs-steps curve
is read back from the run's `metrics.jsonl` (`eval/miou` rows), the final mIoU and wall time
from its `summary.json`. A run whose summary says `completed` is skipped, an unfinished one is
resumed from its last checkpoint, so the script can be stopped and started again. All runs
share one persistent XLA compilation cache (OUT/jax_cache): seeds of one method have the same
shapes, so only the first seed pays for compiling.

At the end it prints a markdown table (method, description, mean +/- std of the final mIoU
over seeds, the per-seed values, steps, mean wall time per run), the comparisons of the
issue ((d) vs (b), (c) vs (b), (f), (g), (h) vs (e)), and writes OUT/.../methods.md,
methods.json and methods.png (mean mIoU against steps per method, shaded +/- 1 std).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# ----------------------------------------------------------------------------- method table
# letter -> (short name, description, config file, preset argument, extra overrides)
SHAPES = "configs/shapes_methods.py"
VOC = "configs/voc.py"
GTA5 = "configs/gta5_cityscapes.py"

METHOD_LETTERS = "abcdefgh"   # the methods (the default selection)
CONTROL_LETTERS = "i"         # investigation controls, run only when named in --methods
DESCRIPTIONS = {
    "a": ("sup_full", "supervised, all labels"),
    "b": ("sup_1/8", "supervised, 1/8 labels"),
    "c": ("adv_1/8", "AdvSemiSeg L_adv, 1/8 labels"),
    "d": ("semi_1/8", "AdvSemiSeg L_adv + L_semi, 1/8 labels"),
    "e": ("source_only", "source only (no target images)"),
    "f": ("single", "AdaptSegNet single-level"),
    "g": ("multi", "AdaptSegNet multi-level"),
    "h": ("lsgan", "AdaptSegNet single-level LS-GAN"),
    "i": ("bn_only", "control: AdaptSegNet, adversarial weights 0"),
}
PRESET_RUNS: Dict[str, Dict[str, Tuple[str, str, Dict[str, Any]]]] = {
    "shapes": {k: (SHAPES, k, {}) for k in METHOD_LETTERS + CONTROL_LETTERS},
    "voc": {
        "a": (VOC, "baseline_1.0", {}),
        "b": (VOC, "baseline_0.125", {}),
        "c": (VOC, "adv_0.125", {}),
        "d": (VOC, "semi_0.125", {}),
    },
    "gta5": {
        # Source only = the single-level network trained on GTA5 alone (the paper's "without
        # adaptation"; no Cityscapes image passes through G, so BN statistics stay GTA5's).
        "e": (GTA5, "single", {"method.name": "supervised"}),
        "f": (GTA5, "single", {}),
        "g": (GTA5, "multi", {}),
        "h": (GTA5, "lsgan", {}),
    },
}
# Published mIoU (%) the real presets should reproduce: docs/FIDELITY.md §9.1 / §9.2
# (V = verified source, U = unverified recollection of the paper's table).
EXPECTED = {
    "voc": {"a": "73.6 (V)", "b": "66.0 (U)", "c": "67.6 (U)",
            "d": "69.5 (V, BMVC; README: 68.8)"},
    "gta5": {"e": "36.6 (V)", "f": "41.4 (V)", "g": "42.4 (V)",
             "h": "44.1 (V, issue #88)"},
}
# (method, its baseline): the comparisons the issue asks for.
COMPARISONS = (("d", "b"), ("c", "b"), ("f", "e"), ("g", "e"), ("h", "e"),
               ("i", "e"), ("f", "i"), ("g", "i"), ("h", "i"))
EVAL_SETS = {"shapes": {**{k: "shapes/source validation" for k in "abcd"},
                        **{k: "shapes/target validation" for k in "efghi"}},
             "voc": {k: "VOC 2012 val (1449)" for k in "abcd"},
             "gta5": {k: "Cityscapes val (500)" for k in "efgh"}}

# Profiles (shapes only; the real presets keep the originals' schedule unless --steps is given).
PROFILES = {
    # 2 CPU cores, < 60 min for 8 methods x 3 seeds (measured, benchmarks/RESULTS.md).
    "cpu": {"num_steps": 500, "eval_every": 50, "eval_max_examples": 48, "batch_size": 4},
    # One GPU, < 30 min for the same 24 runs (NOT measured; see benchmarks/README.md).
    "gpu": {"num_steps": 1500, "eval_every": 150, "eval_max_examples": 0, "batch_size": 8},
}

HELP_EPILOG = """\
methods (letters, as in the issue):
  a  supervised with all labels              (shapes/source; VOC: baseline_1.0)
  b  supervised with 1/8 of the labels       (VOC: baseline_0.125)
  c  AdvSemiSeg adversarial, 1/8             (VOC: adv_0.125)
  d  AdvSemiSeg adversarial + semi, 1/8      (VOC: semi_0.125, the README command)
  e  source only, evaluated on the target    (shapes/source -> shapes/target; GTA5 -> Cityscapes)
  f  AdaptSegNet single-level                (gta5_cityscapes.py:single)
  g  AdaptSegNet multi-level                 (gta5_cityscapes.py:multi)
  h  AdaptSegNet single-level LS-GAN         (gta5_cityscapes.py:lsgan)
  i  control (shapes only, not in the default selection): the AdaptSegNet run with every
     adversarial weight 0, so target images change G only through BN's running statistics;
     (f)-(h) minus (i) is what the adversarial terms add on top of that
--preset shapes runs a-h (configs/shapes_methods.py); voc runs a-d; gta5 runs e-h.

profiles (shapes):
  cpu  500 steps, batch 4, 64x64 crops, eval every 50 steps on the first 48 of the 100
       validation images: 24 runs in under 60 minutes on 2 CPU cores (measured: 27
       runs incl. the control (i) in 31 min, benchmarks/RESULTS.md).
  gpu  1500 steps, batch 8, eval every 150 steps on all 100 validation images: planned for
       under 30 minutes on one GPU (not measured here: no GPU was available).
  The real presets (voc, gta5) ignore the profile and keep the originals' schedules
  (VOC 20000 steps at batch 10; GTA5 150000 of 250000 steps at batch 1): days per run.

expected figures of the real presets (mIoU %, docs/FIDELITY.md §9; V verified, U unverified):
  voc  (ResNet-101 from resnet101COCO, 1/8 labelled, VOC 2012 val, 'voc' mean):
       a 73.6 (V)   b 66.0 (U)   c 67.6 (U)   d 69.5 (V, BMVC paper; README value 68.8)
  gta5 (ResNet-101 from DeepLab_resnet_pretrained_init, Cityscapes val, nanmean of 19):
       e 36.6 (V)   f 41.4 (V)   g 42.4 (V)   h 44.1 (V, LS-GAN, issue #88)
  Users report 41-42 for multi-level after 100k-130k steps and instability later (§10.2):
  the table reports the final step's mIoU, and the curve shows every evaluation.

examples:
  python benchmarks/quality/methods.py --seeds 3 --methods b,d --steps 200   # quick look at one gap
  python benchmarks/quality/methods.py --report_only                          # table+plot from runs
  python benchmarks/quality/methods.py --set method.lambda_adv=0.1 --out runs/methods_ladv0.1
"""


# ----------------------------------------------------------------------------- arguments
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python benchmarks/quality/methods.py",
      description=("Train and evaluate each method over several seeds; print mean +/- std "
                   "mIoU and plot mIoU against steps. Resumable: finished runs are skipped."),
      formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP_EPILOG)
  p.add_argument("--preset", choices=sorted(PRESET_RUNS), default="shapes",
                 help="datasets: 'shapes' (embedded, no download), 'voc' (AdvSemiSeg VOC "
                      "1/8; needs --data_dir) or 'gta5' (AdaptSegNet GTA5->Cityscapes; needs "
                      "--data_dir). Default: shapes")
  p.add_argument("--profile", choices=sorted(PROFILES), default="cpu",
                 help="shapes run length: 'cpu' (the reduced table, < 60 min on 2 cores) or "
                      "'gpu' (longer runs, larger batch, full validation set). Ignored by "
                      "the real presets. Default: cpu")
  p.add_argument("--methods", default=None,
                 help="comma-separated letters a-i (see below), or 'all'; default: a-h, as "
                      "far as the preset has them")
  p.add_argument("--seeds", default="3",
                 help="N (seeds 0..N-1) or a comma-separated list of seeds, e.g. 0,1,2 (one "
                      "particular seed: '7,'). Default: 3")
  p.add_argument("--steps", type=int, default=None,
                 help="training steps per run (overrides the profile / preset). The "
                      "self-training start (method.semi_start) and, for gta5, the early stop "
                      "are scaled by the same factor")
  p.add_argument("--eval_every", type=int, default=None,
                 help="evaluate every N steps (points of the curve); default: the profile's "
                      "(shapes) or the preset's")
  p.add_argument("--eval_examples", type=int, default=None,
                 help="evaluate on the first N validation images (0 = all); default: the "
                      "profile's (shapes) or all (real presets)")
  p.add_argument("--out", default="runs/methods",
                 help="results directory; runs go to OUT/TAG/RUN/seedS and the table/plot "
                      "to OUT/TAG/methods.{md,json,png}, TAG = PRESET-PROFILE for shapes, "
                      "PRESET otherwise, plus -Nsteps with --steps. Default: runs/methods")
  p.add_argument("--data_dir", default=None,
                 help="TFDS data dir holding the prepared datasets (`python -m advseg_jax "
                      "prepare ...`); required by voc/gta5, optional for shapes")
  p.add_argument("--init_checkpoint", default=None,
                 help="pretrained G (.pth or converted model dir) for the real presets: "
                      "resnet101COCO-41f33a49.pth (voc) or DeepLab_resnet_pretrained_init-"
                      "f81d91e8.pth (gta5). Without it the papers' figures are out of reach")
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                 help="extra config override for every run, e.g. --set method.lambda_adv=0.1 "
                      "(repeatable; use a fresh --out, since a changed config cannot resume)")
  p.add_argument("--cache_dir", default=None,
                 help="persistent XLA compilation cache shared by the runs; default "
                      "OUT/jax_cache ('' disables it; an existing JAX_COMPILATION_CACHE_DIR "
                      "in the environment wins)")
  p.add_argument("--rerun", action="store_true",
                 help="delete and retrain the selected runs even if they completed")
  p.add_argument("--report_only", action="store_true",
                 help="train nothing: build the table and plot from the runs already in OUT")
  p.add_argument("--dry_run", action="store_true",
                 help="print the train commands and exit")
  p.add_argument("--plot", default=None,
                 help="also copy the plot to this path (e.g. docs/methods_shapes.png)")
  args = p.parse_args(argv)

  available = PRESET_RUNS[args.preset]
  if args.methods is None:
    args.methods = [k for k in METHOD_LETTERS if k in available]
  elif args.methods.strip().lower() == "all":
    args.methods = [k for k in METHOD_LETTERS + CONTROL_LETTERS if k in available]
  else:
    args.methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in available]
    if bad:
      p.error(f"--methods: {','.join(bad)} not available for --preset {args.preset} "
              f"(available: {','.join(k for k in METHOD_LETTERS + CONTROL_LETTERS if k in available)})")
  s = args.seeds.strip()
  try:
    args.seeds = (list(range(int(s))) if "," not in s
                  else [int(x) for x in s.split(",") if x.strip()])
  except ValueError:
    p.error(f"--seeds: expected N or a comma-separated list of ints, got {s!r}")
  if not args.seeds:
    p.error("--seeds: no seed given")
  if args.preset != "shapes" and not args.data_dir and not args.report_only:
    p.error(f"--preset {args.preset} needs --data_dir (the TFDS dir where `python -m "
            f"advseg_jax prepare` put the dataset)")
  for o in args.overrides:
    if "=" not in o:
      p.error(f"--set {o!r}: expected FIELD=VALUE")
  for name in ("steps", "eval_every"):
    v = getattr(args, name)
    if v is not None and v < 1:
      p.error(f"--{name}: expected an int >= 1, got {v}")
  if args.eval_examples is not None and args.eval_examples < 0:
    p.error(f"--eval_examples: expected an int >= 0, got {args.eval_examples}")
  return args


# ----------------------------------------------------------------------------- run specs
def load_config(path: str, arg: str):
  """The preset's config (to read its defaults: steps, semi_start, eval_every)."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("advseg_methods_cfg", os.path.join(REPO, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def fmt_value(v: Any) -> str:
  if isinstance(v, tuple):
    return "(" + ",".join(str(x) for x in v) + ")"
  return str(v)


def run_overrides(args: argparse.Namespace, letter: str) -> Tuple[str, Dict[str, Any]]:
  """(config argument, {field: value}) of one method, seed excluded."""
  path, arg, extra = PRESET_RUNS[args.preset][letter]
  base = load_config(path, arg)
  ov: Dict[str, Any] = dict(extra)
  if args.preset == "shapes":
    prof = PROFILES[args.profile]
    ov.update({"num_steps": prof["num_steps"], "eval_every": prof["eval_every"],
               "eval_max_examples": prof["eval_max_examples"],
               "batch_size": prof["batch_size"]})
  steps = args.steps or ov.get("num_steps") or int(base.num_steps)
  factor = steps / int(base.num_steps)
  ov["num_steps"] = steps
  ov["method.semi_start"] = int(round(int(base.method.semi_start) * factor))
  if base.num_steps_stop is not None:
    ov["num_steps_stop"] = max(1, int(round(int(base.num_steps_stop) * factor)))
  stop = ov.get("num_steps_stop", steps)
  if args.eval_every is not None:
    ov["eval_every"] = args.eval_every
  elif args.preset != "shapes" and args.steps:
    ov["eval_every"] = max(1, stop // 10)
  ov["checkpoint_every"] = min(int(base.checkpoint_every), stop) if args.preset != "shapes" \
      else max(1, stop // 2)
  if args.eval_examples is not None:
    ov["eval_max_examples"] = args.eval_examples
  if args.data_dir:
    for s in ("data", "target_data", "eval_data"):
      ov[f"{s}.data_dir"] = os.path.abspath(os.path.expanduser(args.data_dir))
  if args.init_checkpoint:
    ov["init.checkpoint"] = os.path.abspath(os.path.expanduser(args.init_checkpoint))
  for o in args.overrides:
    k, v = o.split("=", 1)
    ov[k.strip()] = v.strip()
  return f"{path}:{arg}", ov


def run_name(letter: str) -> str:
  return f"{letter}_{DESCRIPTIONS[letter][0].replace('/', 'of')}"


def train_command(config_arg: str, ov: Dict[str, Any], seed: int, workdir: str) -> List[str]:
  cmd = [sys.executable, "-m", "advseg_jax", "train", f"--config={config_arg}",
         f"--workdir={workdir}", f"--config.seed={seed}"]
  cmd += [f"--config.{k}={fmt_value(v)}" for k, v in ov.items()]
  return cmd + ["--log_level=warning"]


# ----------------------------------------------------------------------------- reading runs
def read_summary(workdir: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(workdir, "summary.json")
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def is_complete(summary: Optional[Dict[str, Any]], stop: int) -> bool:
  """The run finished at the step this invocation asks for (`stop`)."""
  return bool(summary) and (summary.get("status") == "completed"
                            or str(summary.get("status", "")).startswith("stopped at")) \
      and int(summary.get("final_step") or -1) == int(stop)


def read_curve(workdir: str) -> List[Tuple[int, float]]:
  """(step, mIoU) of every evaluation in metrics.jsonl (last value per step wins)."""
  points: Dict[int, float] = {}
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except ValueError:
        continue
      if "eval/miou" in row and row.get("eval/miou") is not None:
        points[int(row["step"])] = float(row["eval/miou"])
  return sorted(points.items())


# ----------------------------------------------------------------------------- statistics
def mean_std(xs: Sequence[float]) -> Tuple[float, float]:
  xs = [x for x in xs if x is not None and math.isfinite(x)]
  if not xs:
    return float("nan"), float("nan")
  return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pct(x: float) -> str:
  return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def fmt_seconds(s: float) -> str:
  if s is None or not math.isfinite(s):
    return "n/a"
  m, sec = divmod(int(round(s)), 60)
  return f"{m}m{sec:02d}s" if m else f"{sec}s"


def stop_step(overrides: Dict[str, Any]) -> int:
  """The step a run of these overrides ends at (its stop, else its schedule length)."""
  return int(overrides.get("num_steps_stop") or overrides["num_steps"])


def collect(args: argparse.Namespace, root: str) -> Dict[str, Any]:
  """Per method: the runs finished at their stop step, with mean/std and the mean curve."""
  rows = {}
  for letter in args.methods:
    stop = stop_step(run_overrides(args, letter)[1])
    finals, walls, curves, per_seed = [], [], [], {}
    steps = None
    for seed in args.seeds:
      wd = os.path.join(root, run_name(letter), f"seed{seed}")
      summ = read_summary(wd)
      if not is_complete(summ, stop) or summ.get("miou") is None:
        continue
      curve = read_curve(wd)
      finals.append(float(summ["miou"]))
      walls.append(float(summ.get("wall_time_s") or float("nan")))
      curves.append(curve)
      per_seed[seed] = float(summ["miou"])
      steps = int(summ.get("final_step") or 0)
    m, s = mean_std(finals)
    # Mean curve over the steps every seed evaluated.
    common = sorted(set.intersection(*[set(dict(c)) for c in curves])) if curves else []
    curve_mean = []
    for st in common:
      cm, cs = mean_std([dict(c)[st] for c in curves])
      curve_mean.append((st, cm, cs))
    rows[letter] = {"name": DESCRIPTIONS[letter][0], "description": DESCRIPTIONS[letter][1],
                    "eval_set": EVAL_SETS[args.preset][letter], "mean": m, "std": s,
                    "per_seed": per_seed, "num_seeds": len(finals), "steps": steps,
                    "wall_s_mean": mean_std(walls)[0] if walls else float("nan"),
                    "wall_s_total": sum(w for w in walls if math.isfinite(w)),
                    "curve": curve_mean,
                    "expected": EXPECTED.get(args.preset, {}).get(letter)}
  return rows


def comparisons(rows: Dict[str, Any]) -> List[Dict[str, Any]]:
  out = []
  for m, b in COMPARISONS:
    if m not in rows or b not in rows or not rows[m]["num_seeds"] or not rows[b]["num_seeds"]:
      continue
    rm, rb = rows[m], rows[b]
    diff = rm["mean"] - rb["mean"]
    # "Beyond one standard deviation": the mean +/- 1 std intervals do not overlap.
    beyond = (rm["mean"] - rm["std"]) > (rb["mean"] + rb["std"])
    out.append({"method": m, "baseline": b, "diff": diff, "beyond_1std": bool(beyond),
                "verdict": ("better, beyond 1 std" if beyond else
                            "better, within 1 std" if diff > 0 else "not better")})
  return out


def markdown(args: argparse.Namespace, rows: Dict[str, Any], comps: List[Dict[str, Any]],
             total_wall: float) -> str:
  exp = args.preset in EXPECTED
  head = ["method", "description", "evaluated on", "mIoU % mean ± std", "per seed",
          "steps", "wall / run"]
  if exp:
    head.append("paper (§9)")
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for letter, r in rows.items():
    seeds = ", ".join(pct(v) for _, v in sorted(r["per_seed"].items())) or "-"
    cells = [f"({letter}) {r['name']}", r["description"], r["eval_set"],
             f"{pct(r['mean'])} ± {pct(r['std'])}" if r["num_seeds"] else "not run",
             seeds, str(r["steps"] or "-"), fmt_seconds(r["wall_s_mean"])]
    if exp:
      cells.append(r["expected"] or "-")
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  n = max((r["num_seeds"] for r in rows.values()), default=0)
  lines.append(f"Final-step mIoU (nanmean over classes), mean ± sample std over {n} seed(s) "
               f"({','.join(str(s) for s in args.seeds)}); total training wall time "
               f"{fmt_seconds(total_wall)}.")
  if comps:
    lines += ["", "| comparison | difference of means (points) | verdict |", "|---|---|---|"]
    for c in comps:
      lines.append(f"| ({c['method']}) vs ({c['baseline']}) | {100 * c['diff']:+.1f} | "
                   f"{c['verdict']} |")
    lines.append("")
    lines.append("\"Beyond 1 std\": mean - std of the method > mean + std of the baseline.")
  return "\n".join(lines) + "\n"


def plot(args: argparse.Namespace, rows: Dict[str, Any], path: str) -> Optional[str]:
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    print("matplotlib is not installed: no plot (pip install matplotlib)")
    return None
  groups = [("abcd", "semi-supervised (labelled share of the source)"),
            ("efghi", "domain adaptation (evaluated on the target)")]
  groups = [(g, t) for g, t in groups if any(k in rows and rows[k]["curve"] for k in g)]
  if not groups:
    return None
  fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 3.6), squeeze=False)
  for ax, (letters, title) in zip(axes[0], groups):
    for k in letters:
      if k not in rows or not rows[k]["curve"]:
        continue
      r = rows[k]
      st = [p[0] for p in r["curve"]]
      mu = [100 * p[1] for p in r["curve"]]
      sd = [100 * p[2] for p in r["curve"]]
      line, = ax.plot(st, mu, marker="o", ms=2.5, lw=1.4,
                      label=f"({k}) {r['name']}: {pct(r['mean'])}±{pct(r['std'])}")
      ax.fill_between(st, [a - b for a, b in zip(mu, sd)], [a + b for a, b in zip(mu, sd)],
                      color=line.get_color(), alpha=0.15, lw=0)
    ax.set_title(f"{title}\n{rows[letters[0]]['eval_set'] if letters[0] in rows else ''}",
                 fontsize=9)
    ax.set_xlabel("training step")
    ax.set_ylabel("mIoU % (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
  n = max(r["num_seeds"] for r in rows.values())
  fig.suptitle(f"benchmarks/quality/methods.py --preset {args.preset} --profile {args.profile} "
               f"({n} seeds)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------- main
def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  tag = f"{args.preset}-{args.profile}" if args.preset == "shapes" else args.preset
  if args.steps:
    tag += f"-{args.steps}steps"
  root = os.path.abspath(os.path.join(args.out, tag))
  os.makedirs(root, exist_ok=True)
  env = dict(os.environ)
  if args.cache_dir != "" and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(
        args.cache_dir or os.path.join(args.out, "jax_cache"))
  env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")

  # Seed-major order: after the first len(methods) runs there is a one-seed table.
  specs = {letter: run_overrides(args, letter) for letter in args.methods}
  plan = []
  for seed in args.seeds:
    for letter in args.methods:
      config_arg, ov = specs[letter]
      wd = os.path.join(root, run_name(letter), f"seed{seed}")
      plan.append((letter, seed, wd, config_arg, ov))
  if args.preset != "shapes" and not args.init_checkpoint:
    print("warning: no --init_checkpoint: the papers' figures assume the pretrained "
          "ResNet-101 (docs/FIDELITY.md §3.2); without it the runs start from random weights")

  t_all = time.time()
  failures = []
  if not args.report_only:
    print(f"{len(plan)} runs ({len(args.methods)} methods x {len(args.seeds)} seeds) -> {root}")
    done_wall: List[float] = []
    for i, (letter, seed, wd, config_arg, ov) in enumerate(plan, 1):
      cmd = train_command(config_arg, ov, seed, wd)
      label = f"[{i}/{len(plan)}] ({letter}) {DESCRIPTIONS[letter][0]} seed {seed}"
      if args.dry_run:
        print(label + ":\n  " + " ".join(cmd))
        continue
      summ = read_summary(wd)
      if args.rerun and os.path.isdir(wd):
        shutil.rmtree(wd)
        summ = None
      stop = stop_step(ov)
      if is_complete(summ, stop):
        print(f"{label}: done before (mIoU {pct(summ.get('miou'))}), skipped")
        continue
      os.makedirs(wd, exist_ok=True)
      left = len(plan) - i
      eta = (f", ~{fmt_seconds(statistics.fmean(done_wall) * (left + 1))} left"
             if done_wall else "")
      print(f"{label}: training{eta} ...", flush=True)
      t0 = time.time()
      with open(os.path.join(wd, "train.log"), "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
      dt = time.time() - t0
      done_wall.append(dt)
      summ = read_summary(wd)
      if rc != 0 or not is_complete(summ, stop):
        failures.append((label, rc, os.path.join(wd, "train.log")))
        print(f"{label}: FAILED (exit {rc}); see {os.path.join(wd, 'train.log')}")
        continue
      print(f"{label}: mIoU {pct(summ.get('miou'))} in {fmt_seconds(dt)}", flush=True)
    if args.dry_run:
      return 0

  rows = collect(args, root)
  comps = comparisons(rows)
  total_wall = sum(r["wall_s_total"] for r in rows.values())
  md = markdown(args, rows, comps, total_wall)
  cmdline = "python benchmarks/quality/methods.py " + " ".join(
      sys.argv[1:] if argv is None else list(argv))
  print()
  print(md)
  with open(os.path.join(root, "methods.md"), "w") as f:
    f.write(f"`{cmdline.strip()}`\n\n{md}")
  result = {"preset": args.preset, "profile": args.profile, "seeds": args.seeds,
            "command": cmdline.strip(), "rows": rows, "comparisons": comps,
            "total_train_wall_s": total_wall, "script_wall_s": time.time() - t_all,
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
  with open(os.path.join(root, "methods.json"), "w") as f:
    json.dump(result, f, indent=1)
  png = plot(args, rows, os.path.join(root, "methods.png"))
  if png and args.plot:
    os.makedirs(os.path.dirname(os.path.abspath(args.plot)) or ".", exist_ok=True)
    shutil.copyfile(png, args.plot)
  print(f"wrote {root}/methods.md, methods.json" + (", methods.png" if png else ""))
  if failures:
    print(f"{len(failures)} run(s) failed:")
    for label, rc, path in failures:
      print(f"  {label}: exit {rc}, log {path}")
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
