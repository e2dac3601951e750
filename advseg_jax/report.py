"""The `report` command: one PNG sheet and a markdown summary of a training workdir.

    python -m advseg_jax report runs/demo          # -> runs/demo/report.png, runs/demo/report.md

The sheet (matplotlib, Agg backend) has four curves -- generator loss terms, discriminator loss
terms, D's outputs (mean P(real) on real and fake inputs, D accuracies, the semi-supervised mask
ratio) and validation mIoU over steps -- and a grid of validation examples: image, ground truth,
prediction and a confidence map. The confidence map is D's belief that the prediction is
"real" (sigmoid of D's output on the softmax, upsampled to the image, as AdvSemiSeg's
confidence map) when the workdir's discriminator can be loaded, otherwise the max softmax
probability of G (the panel title says which).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from advseg_jax.inference import evaluate as ev

METRICS_FILE = "metrics.jsonl"
D_LOSS_GUIDANCE = (0.2, 0.5)  # AdvSemiSeg author: loss_D should sit around 0.2-0.5 (§10.7)


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


# --------------------------------------------------------------------------- examples
def _load_discriminator(workdir: str, spec: Mapping[str, Any]):
  """`fn(probs [B,H,W,K]) -> P(real) [B,H,W]` from the workdir's D, or None.

  Uses `advseg_jax.inference.loading.load_discriminator_for_inference(path) -> (variables, spec)`
  when the checkpoint module provides it; any failure means "no D" (max softmax is shown).
  """
  try:
    from advseg_jax.inference import loading as checkpoint  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None, "advseg_jax.inference.loading is missing"
  loader = getattr(checkpoint, "load_discriminator_for_inference", None)
  if loader is None:
    return None, "the checkpoint module has no public discriminator loader"
  try:
    loaded = loader(workdir)
  except Exception as e:  # pylint: disable=broad-except
    return None, f"discriminator not loadable ({ev.one_line(e)[:120]})"
  if loaded is None:
    return None, "no discriminator in the checkpoint"
  d_vars, d_spec = loaded
  return _discriminator_fn(d_vars, d_spec), None


def _discriminator_fn(d_vars, d_spec: Mapping[str, Any]):
  import jax  # pylint: disable=import-outside-toplevel

  from advseg_jax import losses, model_io  # pylint: disable=import-outside-toplevel
  from advseg_jax.models.deeplab import upsample_logits  # pylint: disable=import-outside-toplevel

  if d_spec.get("arch") in ("image_label",):
    return None
  d_model = model_io.build_from_spec(dict(d_spec))
  gan = d_spec.get("gan", "softmax2" if d_spec.get("arch") == "fc2_discriminator" else "vanilla")

  @jax.jit
  def fn(probs):
    out = d_model.apply(d_vars, probs)
    if tuple(out.shape[1:3]) != tuple(probs.shape[1:3]):
      out = upsample_logits(out, probs.shape[1:3])
    return losses.real_probability(out, gan)

  return fn


def collect_examples(workdir: str, *, num: int, split: str, data_dir: Optional[str],
                     dataset: Optional[str], model_path: Optional[str]) -> Dict[str, Any]:
  """Predictions on the first `num` examples of `split` (at most one batch)."""
  from advseg_jax import (  # pylint: disable=import-outside-toplevel
      compile_options, data, model_io, visualize)
  from advseg_jax.inference.predictor import make_predict_fn  # pylint: disable=import-outside-toplevel

  variables, spec = ev.load_checkpoint(model_path or workdir)
  choice = ev.choose_dataset(dataset, spec)
  protocol = ev.resolve_protocol("auto", spec, choice)
  split = split or ev.default_split(spec, choice)
  cfg = ev.eval_stream(spec, choice, protocol, split=split, data_dir=data_dir)
  batch = next(iter(data.make_eval_iterator(cfg, split=split, batch_size=num)), None)
  if batch is None:
    raise ev.CLIError(f"split {split!r} of {choice.full_name} has no examples")
  model = model_io.build_from_spec(dict(spec))
  predict = compile_options.jit(make_predict_fn(model), static_argnums=2)
  d_fn, d_note = _load_discriminator(model_path or workdir, spec)
  images = np.asarray(batch["image"], np.float32)
  out: List[Dict[str, Any]] = []
  for i in np.nonzero(np.asarray(batch["mask"]))[0]:
    h, w = (int(v) for v in batch["orig_hw"][i])
    x = images[i:i + 1]
    out_hw = (h, w) if protocol.eval_mode == "resize" else tuple(x.shape[1:3])
    probs = predict(variables, x, out_hw)
    if d_fn is not None:
      conf = np.asarray(d_fn(probs))[0]
    else:
      conf = np.asarray(probs.max(axis=-1))[0]
    pred = np.asarray(probs.argmax(axis=-1))[0][:h, :w]
    gt = np.asarray(batch["label"][i])[:h, :w]
    if choice.label_lut is not None:
      gt = choice.label_lut[np.clip(gt, 0, 255)]
    shown = x[0] if protocol.eval_mode == "resize" else x[0, :h, :w]
    rgb = visualize.to_display_rgb(shown, cfg.mean_bgr, cfg.channel_order)
    out.append(dict(image=rgb, gt=gt, pred=pred, conf=conf[:h, :w],
                    name=str(batch["file_name"][i])))
  conf_title = ("D confidence: P(real) of the prediction" if d_fn is not None
                else "max softmax probability (no D loaded)")
  return dict(examples=out, class_names=tuple(choice.info.class_names),
              palette=np.asarray(choice.info.palette), conf_title=conf_title,
              conf_note=d_note, dataset=choice.full_name, split=split, spec=spec,
              protocol=protocol.name)


# --------------------------------------------------------------------------- figure
def make_figure(rows: Sequence[Mapping[str, float]], examples: Optional[Dict[str, Any]],
                title: str, path: str, dpi: int = 72) -> str:
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg", force=True)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib import gridspec  # pylint: disable=import-outside-toplevel

  from advseg_jax import visualize  # pylint: disable=import-outside-toplevel

  exs = (examples or {}).get("examples", [])
  n = len(exs)
  fig = plt.figure(figsize=(16, 3.6 + 3.0 * n + (0.5 if n else 0)))
  outer = gridspec.GridSpec(2 if n else 1, 1, figure=fig,
                            height_ratios=[3.6, 3.0 * n + 0.5] if n else [1], hspace=0.25)
  top = gridspec.GridSpecFromSubplotSpec(1, 4, subplot_spec=outer[0], wspace=0.28)
  groups = panel_groups(metric_keys(rows))
  for j, (name, keys) in enumerate(groups.items()):
    ax = fig.add_subplot(top[0, j])
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
        ax.plot(s, v, marker="o" if len(s) < 30 else None, markersize=3, linewidth=1.4,
                label=k)
      drawn += 1
    if name.startswith("Validation") and drawn:
      ax.set_ylim(bottom=0)
    if drawn:
      loc = "upper right" if name == "Discriminator losses" else "best"
      ax.legend(fontsize=7, loc=loc, framealpha=0.7)
    else:
      ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes,
              color="gray")
  if n:
    cols = ("image", "ground truth", "prediction", examples["conf_title"])
    grid = gridspec.GridSpecFromSubplotSpec(n, 4, subplot_spec=outer[1], wspace=0.05,
                                            hspace=0.12)
    palette = examples["palette"]
    for r, ex in enumerate(exs):
      panels = (ex["image"], visualize.colorize(ex["gt"], palette),
                visualize.colorize(ex["pred"], palette), None)
      for c in range(4):
        ax = fig.add_subplot(grid[r, c])
        if c < 3:
          ax.imshow(panels[c], interpolation="nearest")
        else:
          im = ax.imshow(ex["conf"], cmap="viridis", vmin=0.0, vmax=1.0,
                         interpolation="nearest")
          fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
        if r == 0:
          ax.set_title(cols[c], fontsize=10)
        if c == 0:
          ax.set_ylabel(os.path.basename(ex["name"])[:28], fontsize=8)
        if r == n - 1 and c == 1:
          legend_ax = ax
    handles = visualize.legend_patches(examples["class_names"], palette)
    legend_ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(1.0, -0.03),
                     ncol=min(len(handles), 10), fontsize=8, frameon=False)
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
    md += ["", "| metric | last | min | max | mean of last 10% |", "| --- | --- | --- | --- | --- |"]
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


# --------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="python -m advseg_jax report",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description=(
          "Summarise a training workdir in one PNG sheet (loss curves of G and D, D's outputs\n"
          "on real and fake inputs, validation mIoU, and image / ground truth / prediction /\n"
          "confidence for a few validation examples) plus a markdown summary report.md."),
      epilog=(
          "examples:\n"
          "  report runs/demo                         # writes runs/demo/report.{png,md}\n"
          "  report runs/voc --num_examples 6 --output_dir /tmp/voc_report\n"
          "  report runs/gta2city --num_examples 0    # curves only, no dataset needed"))
  p.add_argument("workdir", metavar="WORKDIR",
                 help="a training workdir (holds metrics.jsonl and best_model/ / final_model/)")
  p.add_argument("--output_dir",
                 help="where to write report.png and report.md (default: WORKDIR)")
  p.add_argument("--name", default="report",
                 help="file name stem of the outputs (default 'report')")
  p.add_argument("--num_examples", type=int, default=4,
                 help="validation examples in the image grid (default 4; 0 = curves only, "
                      "no model or dataset needed)")
  p.add_argument("--model",
                 help="model directory for the examples (default: the workdir's model as "
                      "advseg_jax.train.checkpoint picks it, i.e. best_model, else final_model)")
  p.add_argument("--dataset",
                 help="dataset of the examples (default: the checkpoint's dataset)")
  p.add_argument("--split",
                 help="split the examples come from (default: the run's eval split, else "
                      "validation)")
  p.add_argument("--data_dir", help="TFDS data directory (default ~/tensorflow_datasets)")
  p.add_argument("--dpi", type=int, default=60,
                 help="resolution of the PNG (default 60, about 100-300 KB)")
  return p


def run(args: argparse.Namespace) -> Dict[str, str]:
  workdir = args.workdir
  if not os.path.isdir(workdir):
    raise ev.CLIError(f"{workdir}: no such directory (expected a training workdir)")
  if args.num_examples < 0:
    raise ev.CLIError(f"--num_examples must be >= 0, got {args.num_examples}")
  metrics_path = os.path.join(workdir, METRICS_FILE)
  rows, bad = ([], 0)
  if os.path.isfile(metrics_path):
    rows, bad = read_metrics(metrics_path)
  elif args.num_examples == 0:
    raise ev.CLIError(f"{workdir}: no {METRICS_FILE}; is it a training workdir?")
  out_dir = args.output_dir or workdir
  os.makedirs(out_dir, exist_ok=True)
  examples, note = None, None
  if args.num_examples:
    if not rows and not any(os.path.isdir(os.path.join(workdir, d))
                            for d in ("best_model", "final_model", "checkpoints")) \
        and args.model is None:
      raise ev.CLIError(f"{workdir}: neither {METRICS_FILE} nor a model; is it a training "
                        f"workdir?")
    examples = collect_examples(workdir, num=args.num_examples, split=args.split,
                                data_dir=args.data_dir, dataset=args.dataset,
                                model_path=args.model)
  png = os.path.join(out_dir, f"{args.name}.png")
  md = os.path.join(out_dir, f"{args.name}.md")
  title = f"advseg-jax training report: {os.path.basename(os.path.normpath(workdir))}"
  make_figure(rows, examples, title, png, dpi=args.dpi)
  write_markdown(md, workdir, rows, bad, os.path.relpath(png, out_dir), examples, note)
  return {"png": png, "md": md}


def _run(args: argparse.Namespace) -> int:
  out = run(args)
  print(f"wrote {out['png']}")
  print(f"wrote {out['md']}")
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  """`report` command; returns the exit code (0 ok, 2 on a user error, one `error:` line)."""
  args, rc = ev.parse(build_parser(), argv, "report")
  if args is None:
    return rc
  return ev.run_cli(_run, args)


if __name__ == "__main__":
  sys.exit(main())
