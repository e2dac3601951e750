"""How lambda_adv moves the G/D balance on `shapes`, and what the GAN diagnostics say about it.

Trains `configs/demo.py:adv` (AdvSemiSeg adversarial term only, all of `shapes/source`
labelled) once per `--lambdas` value, with the D-wins / D-collapse monitor set to react after
`--patience` logged steps, then prints a table (final D loss, D accuracy on real / fake, mean
D(real) / D(fake), the gradient norms of G's segmentation and adversarial terms, mIoU, the
warnings the run printed) and writes one figure (D loss, D(real) and D(fake), mIoU against
steps). This is what README "When the discriminator wins" shows.

    python benchmarks/quality/gan_balance.py --out runs/gan_balance          # ~10 min on 2 CPU cores

Runs whose `summary.json` exists are not trained again (delete the folder to redo one).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WARN_KEYS = ("D wins", "D collapsed")
COLUMNS = ("d/loss", "d/acc_real", "d/acc_fake", "d/out_real", "d/out_fake", "g/loss_seg",
           "g/loss_adv", "g/grad_norm_seg", "g/grad_norm_adv")


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", default="runs/gan_balance",
                 help="folder for one workdir per lambda, the table (gan_balance.md/.json) and "
                      "the figure (gan_balance.png).")
  p.add_argument("--lambdas", default="0.0,0.01,1.0,50.0",
                 help="comma-separated method.lambda_adv values; 0.01 is the originals' "
                      "default.")
  p.add_argument("--steps", type=int, default=400, help="training steps per run.")
  p.add_argument("--log_every", type=int, default=10,
                 help="steps per logged (averaged) metrics row; the monitor sees these rows.")
  p.add_argument("--patience", type=int, default=5,
                 help="diagnostics.d_wins_patience: logged rows in a row before a warning.")
  p.add_argument("--threshold", type=float, default=0.2,
                 help="diagnostics.d_wins_threshold: D loss under which D 'wins'.")
  p.add_argument("--figure", default=None,
                 help="also copy the figure here (e.g. docs/gan_balance.png).")
  return p.parse_args(argv)


def run_one(args, lam: float) -> str:
  wd = os.path.join(args.out, f"lambda_adv_{lam:g}")
  if os.path.isfile(os.path.join(wd, "summary.json")):
    print(f"lambda_adv {lam:g}: done before, {wd}", flush=True)
    return wd
  cmd = [sys.executable, "-m", "advseg_jax", "train", "--config",
         os.path.join(REPO, "configs", "demo.py") + ":adv", f"--workdir={wd}",
         f"--config.method.lambda_adv={lam}", f"--config.num_steps={args.steps}",
         f"--config.log_every={args.log_every}", "--config.eval_every=100",
         f"--config.checkpoint_every={args.steps}", "--config.diagnostics.grad_norms=True",
         f"--config.diagnostics.d_wins_patience={args.patience}",
         f"--config.diagnostics.d_wins_threshold={args.threshold}"]
  print(f"lambda_adv {lam:g}: training {args.steps} steps -> {wd}", flush=True)
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, "train.log"), "w") as log:
    rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
  if rc != 0:
    raise SystemExit(f"lambda_adv {lam:g}: training failed (exit {rc}); see "
                     f"{os.path.join(wd, 'train.log')}")
  return wd


def read_run(wd: str) -> Dict:
  rows = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl")) if l.strip()]
  train = [r for r in rows if "d/loss" in r]
  evals = [r for r in rows if "eval/miou" in r]
  warnings = []
  log_path = os.path.join(wd, "train.log")
  if os.path.isfile(log_path):
    for line in open(log_path):
      for key in WARN_KEYS:
        if key in line:
          step = line.split("step ")[1].split(":")[0] if "step " in line else "?"
          warnings.append(f"{key} (step {step})")
  return {"train": train, "evals": evals, "warnings": warnings}


def table(results: Dict[float, Dict]) -> str:
  head = ["lambda_adv"] + [c for c in COLUMNS] + ["mIoU %", "warnings"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for lam, r in results.items():
    last = r["train"][-5:]  # mean of the last 5 logged rows
    vals = [sum(x.get(c, float("nan")) for x in last) / len(last) for c in COLUMNS]
    miou = r["evals"][-1]["eval/miou"] * 100 if r["evals"] else float("nan")
    lines.append("| " + " | ".join([f"{lam:g}"] + [f"{v:.3f}" for v in vals]
                                   + [f"{miou:.1f}", "; ".join(r["warnings"]) or "none"]) + " |")
  return "\n".join(lines)


def plot(results: Dict[float, Dict], path: str) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  for lam, r in results.items():
    steps = [x["step"] for x in r["train"]]
    line, = axes[0].plot(steps, [x["d/loss"] for x in r["train"]], label=f"lambda_adv {lam:g}")
    axes[1].plot(steps, [x["d/out_real"] for x in r["train"]], color=line.get_color())
    axes[1].plot(steps, [x["d/out_fake"] for x in r["train"]], color=line.get_color(), ls="--")
    axes[2].plot([x["step"] for x in r["evals"]], [100 * x["eval/miou"] for x in r["evals"]],
                 color=line.get_color(), marker="o")
  axes[0].axhspan(0.2, 0.5, color="0.9", zorder=0)
  axes[0].set(title="D loss (grey: the originals' 0.2-0.5)", xlabel="step")
  axes[1].set(title="mean D(real) solid, D(fake) dashed", xlabel="step", ylim=(0, 1))
  axes[2].set(title="mIoU % (shapes/source val)", xlabel="step")
  axes[0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None) -> None:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  lambdas = [float(x) for x in args.lambdas.split(",") if x.strip()]
  results = {lam: read_run(run_one(args, lam)) for lam in lambdas}
  md = table(results)
  print(md)
  with open(os.path.join(args.out, "gan_balance.md"), "w") as f:
    f.write(md + "\n")
  with open(os.path.join(args.out, "gan_balance.json"), "w") as f:
    json.dump({f"{k:g}": v for k, v in results.items()}, f)
  fig = os.path.join(args.out, "gan_balance.png")
  plot(results, fig)
  print(f"figure: {fig}")
  if args.figure:
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.copyfile(fig, args.figure)


if __name__ == "__main__":
  main()
