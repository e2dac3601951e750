"""What a run reports: evaluation records, the summary dict, `summary.md` / `summary.json`,
and the console lines and end-of-run table."""

from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional, Sequence, Tuple

import jax

from advseg_jax import logging_utils
from advseg_jax import metrics as metrics_lib

SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
_RUN_FIELDS = ("status", "method", "config", "start_step", "final_step", "num_steps",
               "wall_time", "train_time", "images_per_sec", "steps_per_sec", "devices",
               "parallel_mode", "miou", "mean_mode", "best_miou", "best_step")


def pct(v: Optional[float]) -> str:
  """0.4123 -> '41.23'; 'n/a' for None / NaN."""
  return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def images_per_step(config: Any, streams: Sequence[str]) -> int:
  """Images one step reads over all streams and processes."""
  return int(config.batch_size) * int(config.iter_size) * len(streams)


def eval_record(step: int, confusion: Any, num_images: int, mean_mode: str,
                class_names: Sequence[str], seconds: float
                ) -> Tuple[Dict[str, Any], Dict[str, float]]:
  """`(record, scalars)` of one evaluation: the summary's `eval` entry and the `eval/*`
  scalars written to metrics.jsonl / TensorBoard."""
  s = metrics_lib.summarize_confusion(confusion, mean_mode)
  per_class = {n: float(v) for n, v in zip(class_names, s["per_class_iou"])}
  record = {"step": step, "num_images": num_images, "miou": s["miou"],
            "mean_mode": s["mean_mode"], "definition": s["definition"],
            "miou_voc": s["miou_voc"], "miou_nanmean": s["miou_nanmean"],
            "miou_all": s["miou_all"], "pixel_accuracy": s["pixel_accuracy"],
            "per_class_iou": per_class, "seconds": seconds}
  scalars = {"eval/miou": s["miou"], "eval/miou_voc": s["miou_voc"],
             "eval/miou_nanmean": s["miou_nanmean"], "eval/miou_all": s["miou_all"],
             "eval/pixel_accuracy": s["pixel_accuracy"]}
  scalars.update({f"eval/iou/{n}": v for n, v in per_class.items()})
  return record, scalars


def eval_line(ev: Dict[str, Any]) -> str:
  """The console line of an evaluation."""
  return (f"eval step {ev['step']}: mIoU {pct(ev['miou'])} ({ev['mean_mode']}; all classes "
          f"{pct(ev['miou_all'])}, pixel acc {pct(ev['pixel_accuracy'])}) on "
          f"{ev['num_images']} images in {ev['seconds']:.1f}s")


def make_summary(run: Any, *, config: Any, config_source: Optional[str], workdir: str,
                 method: str, start_step: int, stop: int, wall: float,
                 last_metrics: Dict[str, float], images_per_step: int, par: Any,
                 split: Dict[str, Any], problems: Sequence[str], paths: Dict[str, str]
                 ) -> Dict[str, Any]:
  """The dict `train` returns and writes to summary.json; `run` is the loop's `RunState`
  (step, status, last_eval, best_miou, best_step)."""
  ev = run.last_eval
  final_metrics = {k: v for k, v in last_metrics.items() if not k.startswith("eval/")}
  summary = {
      "status": run.status,
      "method": method, "config": config_source, "workdir": workdir,
      "start_step": start_step, "final_step": run.step, "num_steps": int(config.num_steps),
      "stop_step": stop, "wall_time": logging_utils.format_duration(wall),
      "wall_time_s": round(wall, 2),
      "images_per_sec": round(final_metrics.get("perf/images_per_sec", float("nan")), 3),
      "steps_per_sec": round(final_metrics.get("perf/steps_per_sec", float("nan")), 4),
      "images_per_step": images_per_step, "devices": par.num_devices,
      "processes": jax.process_count(), "parallel_mode": par.mode,
      "miou": ev["miou"] if ev else None, "mean_mode": ev["mean_mode"] if ev else None,
      "best_miou": run.best_miou if run.best_step >= 0 else None,
      "best_step": run.best_step if run.best_step >= 0 else None,
      "eval": ev, "final_metrics": final_metrics, "split": split,
      "problems": list(problems), "paths": dict(paths),
  }
  if run.status == "completed" and stop < int(config.num_steps):
    summary["status"] = f"stopped at num_steps_stop={stop}"
  return summary


def _eval_section(ev: Dict[str, Any]) -> list:
  rows = [(name, pct(v)) for name, v in ev["per_class_iou"].items()]
  return [f"## Evaluation at step {ev['step']} ({ev['num_images']} images)", "",
          f"mIoU {ev['mean_mode']}: **{pct(ev['miou'])}** ({ev['definition']}); "
          f"evaluate_voc-style {pct(ev['miou_voc'])}, compute_iou-style "
          f"{pct(ev['miou_nanmean'])}, all classes {pct(ev['miou_all'])}, pixel accuracy "
          f"{pct(ev['pixel_accuracy'])}.", "",
          logging_utils.markdown_table(("class", "IoU %"), rows), ""]


def write_summary(workdir: str, summary: Dict[str, Any]) -> Tuple[str, str]:
  """Writes WORKDIR/summary.md and summary.json; returns their paths."""
  lines = [f"# Training summary: {os.path.basename(os.path.normpath(workdir))}", ""]
  run_rows = [(k, summary[k]) for k in _RUN_FIELDS if k in summary]
  lines += ["## Run", "", logging_utils.markdown_table(("field", "value"), run_rows), ""]
  if summary.get("eval"):
    lines += _eval_section(summary["eval"])
  losses = summary.get("final_metrics") or {}
  if losses:
    lines += ["## Final logged metrics", "",
              logging_utils.markdown_table(("metric", "value"), sorted(losses.items())), ""]
  if summary.get("paths"):
    lines += ["## Files", "", logging_utils.markdown_table(
        ("what", "path"), sorted(summary["paths"].items())), ""]
  if summary.get("problems"):
    lines += ["## Problems", ""] + [f"- {p}" for p in summary["problems"]] + [""]
  md = logging_utils.write_text_file(os.path.join(workdir, SUMMARY_MD), "\n".join(lines))
  js = logging_utils.write_json(os.path.join(workdir, SUMMARY_JSON), summary)
  return md, js


def console_table(summary: Dict[str, Any]) -> str:
  """The end-of-run table printed on the console."""
  out = []
  ev = summary.get("eval")
  if ev:
    w = max([len(n) for n in ev["per_class_iou"]] + [10])
    out.append(f"{'class':<{w}}  IoU %")
    for n, v in ev["per_class_iou"].items():
      out.append(f"{n:<{w}}  {pct(v):>6}")
    out.append(f"{'mIoU':<{w}}  {pct(ev['miou']):>6}  ({ev['mean_mode']}; all classes "
               f"{pct(ev['miou_all'])})")
  for k, v in sorted((summary.get("final_metrics") or {}).items()):
    if k.startswith(("g/loss", "d/loss")):
      out.append(f"{k:<24} {v:.4f}")
  for k in ("images_per_sec", "wall_time", "final_step", "best_miou", "best_step"):
    if k in summary:
      out.append(f"{k:<24} {summary[k]}")
  for k, v in sorted((summary.get("paths") or {}).items()):
    out.append(f"{k:<24} {v}")
  return "\n".join(out)
