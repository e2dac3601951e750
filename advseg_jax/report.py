"""One PNG sheet and a markdown summary of a training workdir (the `report` command).

    write_report("runs/demo")          # -> runs/demo/report.png, runs/demo/report.md

The sheet (matplotlib, Agg backend) has four curves -- generator loss terms, discriminator loss
terms, D's outputs (mean P(real) on real and fake inputs, D accuracies, the semi-supervised mask
ratio) and validation mIoU over steps -- and a grid of validation examples: image, ground truth,
prediction and a confidence map. The confidence map is D's belief that the prediction is
"real" (sigmoid of D's output on the softmax, upsampled to the image, as AdvSemiSeg's
confidence map) when the workdir's discriminator can be loaded, otherwise the max softmax
probability of G (the panel title says which).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from advseg_jax import visualize
from advseg_jax.inference.examples import collect_examples

METRICS_FILE = "metrics.jsonl"
D_LOSS_GUIDANCE = (0.2, 0.5)  # AdvSemiSeg author: loss_D should sit around 0.2-0.5
                              # (docs/FIDELITY.md §10.7)


class ReportError(ValueError):
  """The workdir cannot be reported on (one line naming it)."""


# --------------------------------------------------------------------------- metrics
def read_metrics(path: str) -> Tuple[List[Dict[str, float]], int]:
  """Rows of `metrics.jsonl` (numeric values only) and the number of unreadable lines."""
  rows: List[Dict[str, float]] = []
  bad = 0
  with open(path) as f:
    for i, line in enumerate(f):
      line = line.strip()
      if not line:
        continue
      try:
        obj = json.loads(line)
      except ValueError:
        bad += 1  # e.g. a line cut short by a crash
        continue
      if not isinstance(obj, dict):
        bad += 1
        continue
      row = {}
      for k, v in obj.items():
        if isinstance(v, bool):
          v = float(v)
        if isinstance(v, (int, float)):
          row[str(k)] = float(v)
      row.setdefault("step", float(i))
      rows.append(row)
  return rows, bad


def series(rows: Sequence[Mapping[str, float]], key: str) -> Tuple[np.ndarray, np.ndarray]:
  """`(steps, values)` of `key` in step order, non-finite values dropped; the last row wins
  when a step is logged twice (e.g. after a resume)."""
  by_step: Dict[float, float] = {}
  for r in rows:
    if key in r and math.isfinite(r[key]):
      by_step[r["step"]] = r[key]
  steps = np.array(sorted(by_step), np.float64)
  return steps, np.array([by_step[s] for s in steps], np.float64)


NOT_METRICS = ("step", "time")


def metric_keys(rows: Sequence[Mapping[str, float]]) -> List[str]:
  keys: Dict[str, None] = {}
  for r in rows:
    for k in r:
      if k not in NOT_METRICS:
        keys.setdefault(k, None)
  return sorted(keys)


def smooth(values: np.ndarray) -> np.ndarray:
  """Centered moving average over ~2% of the points (none for short series)."""
  n = len(values)
  w = max(1, n // 50)
  if w <= 1:
    return values
  kernel = np.ones(w) / w
  padded = np.concatenate([np.full(w // 2, values[0]), values, np.full(w - 1 - w // 2,
                                                                      values[-1])])
  return np.convolve(padded, kernel, mode="valid")


def panel_groups(keys: Sequence[str]) -> Dict[str, List[str]]:
  """Which metrics go into which curve panel."""
  g = [k for k in keys if k.startswith("g/loss")]
  d = [k for k in keys if k.startswith("d/loss")]
  out = [k for k in keys if k.startswith(("d/out", "d/acc", "semi/mask_ratio"))]
  iou = [k for k in ("eval/miou", "eval/miou_all") if k in keys]
  return {"Generator losses": g, "Discriminator losses": d,
          "D outputs: P(real) on real / fake": out, "Validation mIoU (%)": iou}


def stats(steps: np.ndarray, values: np.ndarray) -> Dict[str, float]:
  tail = values[-max(1, len(values) // 10):]
  return dict(first_step=steps[0], last_step=steps[-1], last=values[-1], min=values.min(),
              max=values.max(), tail_mean=float(tail.mean()), count=len(values))


# --------------------------------------------------------------------------- figure
def _draw_curves(ax, name: str, keys: Sequence[str], rows: Sequence[Mapping[str, float]]):
  """One curve panel: the logged series of `keys` (smoothed when long)."""
  ax.set_title(name, fontsize=10)
  ax.set_xlabel("step", fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  if name == "Discriminator losses" and keys:
    ax.axhspan(*D_LOSS_GUIDANCE, color="tab:green", alpha=0.08,
               label="0.2-0.5: healthy (AdvSemiSeg)")
  drawn = 0
  for k in keys:
    s, v = series(rows, k)
    if not len(s):
      continue
    if name.startswith("Validation"):
      v = 100.0 * v
      k = {"eval/miou": "eval/miou (headline)", "eval/miou_all": "all classes"}.get(k, k)
    if len(s) > 50:
      line, = ax.plot(s, v, alpha=0.25, linewidth=0.8)
      ax.plot(s, smooth(v), color=line.get_color(), linewidth=1.4, label=k)
    else:
      ax.plot(s, v, marker="o" if len(s) < 30 else None, markersize=3, linewidth=1.4, label=k)
    drawn += 1
  if name.startswith("Validation") and drawn:
    ax.set_ylim(bottom=0)
  if drawn:
    ax.legend(fontsize=7, loc="upper right" if name == "Discriminator losses" else "best",
              framealpha=0.7)
  else:
    ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
            color="gray")


def _draw_examples(fig, grid, examples: Dict[str, Any]) -> None:
  """Rows of image / ground truth / prediction / confidence, and the class legend."""
  exs = examples["examples"]
  cols = ("image", "ground truth", "prediction", examples["conf_title"])
  palette = examples["palette"]
  legend_ax = None
  for r, ex in enumerate(exs):
    panels = (ex["image"], visualize.colorize(ex["gt"], palette),
              visualize.colorize(ex["pred"], palette), None)
    for c in range(4):
      ax = fig.add_subplot(grid[r, c])
      if c < 3:
        ax.imshow(panels[c], interpolation="nearest")
      else:
        im = ax.imshow(ex["conf"], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(cols[c], fontsize=10)
      if c == 0:
        ax.set_ylabel(os.path.basename(ex["name"])[:28], fontsize=8)
      if r == len(exs) - 1 and c == 1:
        legend_ax = ax
  handles = visualize.legend_patches(examples["class_names"], palette)
  legend_ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(1.0, -0.03),
                   ncol=min(len(handles), 10), fontsize=8, frameon=False)


def make_figure(rows: Sequence[Mapping[str, float]], examples: Optional[Dict[str, Any]],
                title: str, path: str, dpi: int = 72) -> str:
  """The PNG sheet (module docstring) at `path`; matplotlib with the Agg backend."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (optional dependency)
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib import gridspec  # pylint: disable=import-outside-toplevel

  n = len((examples or {}).get("examples", []))
  fig = plt.figure(figsize=(16, 3.6 + 3.0 * n + (0.5 if n else 0)))
  outer = gridspec.GridSpec(2 if n else 1, 1, figure=fig,
                            height_ratios=[3.6, 3.0 * n + 0.5] if n else [1], hspace=0.25)
  top = gridspec.GridSpecFromSubplotSpec(1, 4, subplot_spec=outer[0], wspace=0.28)
  for j, (name, keys) in enumerate(panel_groups(metric_keys(rows)).items()):
    _draw_curves(fig.add_subplot(top[0, j]), name, keys, rows)
  if n:
    _draw_examples(fig, gridspec.GridSpecFromSubplotSpec(n, 4, subplot_spec=outer[1],
                                                         wspace=0.05, hspace=0.12), examples)
  fig.suptitle(title, fontsize=12)
  fig.savefig(path, dpi=dpi, bbox_inches="tight")
  plt.close(fig)
  return path


# --------------------------------------------------------------------------- markdown
def _fmt(x: float) -> str:
  if not math.isfinite(x):
    return "nan"
  if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
    return f"{x:.3g}"
  return f"{x:.4f}"


def _load_json(path: str) -> Optional[Dict[str, Any]]:
  try:
    with open(path) as f:
      obj = json.load(f)
    return obj if isinstance(obj, dict) else None
  except (OSError, ValueError):
    return None


def d_balance_lines(rows: Sequence[Mapping[str, float]]) -> List[str]:
  lines: List[str] = []
  s, v = series(rows, "d/loss")
  if len(s):
    st = stats(s, v)
    lo, hi = D_LOSS_GUIDANCE
    m = st["tail_mean"]
    if m < lo:
      verdict = ("below the 0.2-0.5 band: **D wins**, it separates real from fake almost "
                 "perfectly, so G's adversarial gradient carries little information (see README "
                 "'When the discriminator wins' for the knobs)")
    elif m <= hi:
      verdict = "inside the 0.2-0.5 band the AdvSemiSeg author calls healthy"
    else:
      verdict = ("above the band: D is near chance (a vanilla-GAN D at chance has loss "
                 "ln 2 = 0.69); it gives G little signal")
    lines.append(f"- `d/loss`, mean over the last 10% of logged steps: {_fmt(m)} -- {verdict}.")
  r_s, r_v = series(rows, "d/out_real")
  f_s, f_v = series(rows, "d/out_fake")
  if len(r_s) and len(f_s):
    gap = stats(r_s, r_v)["tail_mean"] - stats(f_s, f_v)["tail_mean"]
    lines.append(f"- D's mean P(real): {_fmt(stats(r_s, r_v)['tail_mean'])} on real inputs, "
                 f"{_fmt(stats(f_s, f_v)['tail_mean'])} on fake ones (gap {_fmt(gap)}; near 1 "
                 f"means D wins, near 0 means it learned nothing).")
  if not lines:
    lines.append("- no discriminator metrics were logged (supervised run?).")
  return lines


def write_markdown(path: str, workdir: str, rows: Sequence[Mapping[str, float]], bad_lines: int,
                   png_name: str, examples: Optional[Dict[str, Any]],
                   example_note: Optional[str]) -> str:
  name = os.path.basename(os.path.normpath(workdir))
  md: List[str] = [f"# Training report: {name}", "",
                   f"Workdir: `{os.path.abspath(workdir)}`"
                   + (" (training summary: `summary.md`)"
                      if os.path.isfile(os.path.join(workdir, "summary.md")) else ""), "",
                   f"![training report]({png_name})", ""]
  summary = _load_json(os.path.join(workdir, "summary.json"))
  if summary:
    flat = {k: v for k, v in summary.items() if isinstance(v, (str, int, float, bool))}
    if flat:
      md += ["## Run", "", "| field | value |", "| --- | --- |"]
      md += [f"| {k} | {v if not isinstance(v, float) else _fmt(v)} |" for k, v in flat.items()]
      md.append("")
  keys = metric_keys(rows)
  md += ["## Metrics", ""]
  if rows:
    steps = [r["step"] for r in rows]
    md.append(f"{len(rows)} logged rows, steps {int(min(steps))} to {int(max(steps))}"
              + (f" ({bad_lines} unreadable lines skipped)" if bad_lines else "") + ".")
    md += ["", "| metric | last | min | max | mean of last 10% |",
           "| --- | --- | --- | --- | --- |"]
    for k in keys:
      if k.startswith("eval/iou/"):
        continue
      s, v = series(rows, k)
      if len(s):
        st = stats(s, v)
        md.append(f"| `{k}` | {_fmt(st['last'])} | {_fmt(st['min'])} | {_fmt(st['max'])} | "
                  f"{_fmt(st['tail_mean'])} |")
  else:
    md.append(f"No `{METRICS_FILE}` rows were found.")
  md.append("")
  md += ["## Validation", ""]
  s, v = series(rows, "eval/miou")
  if len(s):
    b = int(np.argmax(v))
    md.append(f"- best `eval/miou`: **{100 * v[b]:.2f}** at step {int(s[b])}; last: "
              f"{100 * v[-1]:.2f} at step {int(s[-1])}.")
  else:
    md.append("- no `eval/miou` was logged.")
  in_order = list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval/iou/")))
  per_class = [(k[len("eval/iou/"):], series(rows, k)) for k in in_order]
  per_class = [(n, sv) for n, sv in per_class if len(sv[0])]
  if per_class:
    md += ["", f"Per-class IoU at the last evaluation (step {int(per_class[0][1][0][-1])}):", "",
           "| class | IoU % |", "| --- | --- |"]
    md += [f"| {n} | {100 * v[-1]:.2f} |" for n, (_, v) in per_class]
  md += ["", "## Discriminator balance", ""]
  md += d_balance_lines(rows)
  md += ["", "## Examples", ""]
  if examples and examples.get("examples"):
    md.append(f"{len(examples['examples'])} examples from {examples['dataset']} "
              f"{examples['split']} ({examples['protocol']} protocol): image, ground truth, "
              f"prediction, {examples['conf_title']}."
              + (f" ({examples['conf_note']}.)" if examples.get("conf_note") else ""))
  else:
    md.append(f"No examples: {example_note or 'disabled (--num_examples 0)'}.")
  md.append("")
  with open(path, "w") as f:
    f.write("\n".join(md))
  return path


def write_report(workdir: str, *, output_dir: Optional[str] = None, name: str = "report",
                 num_examples: int = 4, model: Optional[str] = None,
                 dataset: Optional[str] = None, split: Optional[str] = None,
                 data_dir: Optional[str] = None, dpi: int = 60) -> Dict[str, str]:
  """Writes `<output_dir>/<name>.png` and `.md` (output_dir defaults to `workdir`); returns
  their paths. `num_examples` 0: curves only, no model or dataset needed."""
  if not os.path.isdir(workdir):
    raise ReportError(f"{workdir}: no such directory (expected a training workdir)")
  if num_examples < 0:
    raise ReportError(f"num_examples must be >= 0, got {num_examples}")
  metrics_path = os.path.join(workdir, METRICS_FILE)
  rows, bad = ([], 0)
  if os.path.isfile(metrics_path):
    rows, bad = read_metrics(metrics_path)
  elif num_examples == 0:
    raise ReportError(f"{workdir}: no {METRICS_FILE}; is it a training workdir?")
  out_dir = output_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  examples, note = None, None
  if num_examples:
    if not rows and not any(os.path.isdir(os.path.join(workdir, d))
                            for d in ("best_model", "final_model", "checkpoints")) \
        and model is None:
      raise ReportError(f"{workdir}: neither {METRICS_FILE} nor a model; is it a training "
                        f"workdir?")
    examples = collect_examples(workdir, num=num_examples, split=split,
                                data_dir=data_dir, dataset=dataset,
                                model_path=model)
  png = os.path.join(out_dir, f"{name}.png")
  md = os.path.join(out_dir, f"{name}.md")
  title = f"advseg-jax training report: {os.path.basename(os.path.normpath(workdir))}"
  make_figure(rows, examples, title, png, dpi=dpi)
  write_markdown(md, workdir, rows, bad, os.path.relpath(png, out_dir), examples, note)
  return {"png": png, "md": md}


