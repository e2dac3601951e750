#!/usr/bin/env python
"""Runs the JAX engine step (step_throughput.py) and the PyTorch step (torch_step.py) on the
same shapes and prints one table: ms/iteration of each and the JAX speed-up.

  python benchmarks/speed/compare.py                                   # cpu-small preset, tiny depth
  python benchmarks/speed/compare.py --preset cpu-small --depth resnet101 --dtypes float32,bfloat16
  python benchmarks/speed/compare.py --preset original --dtypes float32,bfloat16 \\
      --variants eager,channels_last,compile --json results/gpu.json       # on a GPU machine

With `--rounds N` every case runs N times, the two sides' processes alternating (JAX first
in even rounds, PyTorch first in odd ones); the table then gives each side's median over the
rounds and the range of the per-round speed-ups, which is what to quote on a machine whose
single runs move by +-10%.

Speed-up = PyTorch ms / JAX ms at the same precision (JAX bfloat16 activations against
PyTorch autocast bfloat16); > 1 means the JAX step is faster. "vs eager" compares with plain
eager PyTorch, "vs best" with the fastest PyTorch variant that ran.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any, Dict, List, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
  sys.path.insert(0, _HERE)

import _common as C  # noqa: E402
import step_throughput  # noqa: E402
import torch_step  # noqa: E402

Key = Tuple[str, str, str, str]


def _key(r: Dict[str, Any]) -> Key:
  return (r.get("method"), r.get("precision"), r.get("shape"), str(r.get("depth")))


def merge_rounds(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """One result per (case, side variant) from results tagged with `round`.

  ms_median / cpu_ms_median / images_per_s become the median over the rounds (failed rounds
  are left out; a case that failed in every round keeps its first error), `ms_by_round`
  maps each round that ran to its ms_median and `rounds` counts them. Results without a
  `round` tag pass through unchanged.
  """
  groups: Dict[Tuple[Key, Any], List[Dict[str, Any]]] = {}
  order: List[Tuple[Key, Any]] = []
  for r in results:
    k = (_key(r), r.get("variant"))
    if k not in groups:
      groups[k] = []
      order.append(k)
    groups[k].append(r)
  merged = []
  for k in order:
    rs = groups[k]
    if len(rs) == 1 and "round" not in rs[0]:
      merged.append(rs[0])
      continue
    ok = sorted((r for r in rs if "error" not in r), key=lambda r: r.get("round", 0))
    if not ok:
      merged.append(rs[0])
      continue
    out = dict(ok[0])
    out.pop("round", None)
    for field in ("ms_median", "cpu_ms_median", "images_per_s"):
      vals = [r[field] for r in ok if r.get(field) is not None]
      if vals:
        out[field] = statistics.median(vals)
    out["ms_by_round"] = {r.get("round", 0): r.get("ms_median") for r in ok}
    out["rounds"] = len(ok)
    merged.append(out)
  return merged


def round_speedups(jax_r: Dict[str, Any], torch_r: Dict[str, Any]) -> List[float]:
  """PyTorch ms / JAX ms for each round both sides of a case ran in."""
  j, t = jax_r.get("ms_by_round", {}), torch_r.get("ms_by_round", {})
  return [t[i] / j[i] for i in sorted(j.keys() & t.keys()) if j[i] and t[i]]


def build_table(jax_results: List[Dict[str, Any]], torch_results: List[Dict[str, Any]],
                variants: List[str]) -> str:
  alt_by = {_key(r): r for r in jax_results if r.get("variant") == "alt"}
  jax_results = [r for r in jax_results if r.get("variant") != "alt"]
  torch_by: Dict[Key, Dict[str, Dict[str, Any]]] = {}
  for r in torch_results:
    torch_by.setdefault(_key(r), {})[r.get("variant")] = r
  multi = any(r.get("rounds", 1) > 1 for r in jax_results + torch_results)
  header = (["method", "precision", "shape (B x crop)", "depth", "JAX ms/iter", "JAX img/s"]
            + (["JAX alt-flags ms/iter"] if alt_by else [])
            + [f"PyTorch {v} ms/iter" for v in variants]
            + ["speed-up vs eager", "speed-up vs best PyTorch"]
            + (["per-round speed-up vs eager (min-max, rounds)"] if multi else [])
            + (["alt speed-up vs eager"] if alt_by else []))
  rows = []
  keys = [_key(r) for r in jax_results]
  for k in [k for k in torch_by if k not in keys]:
    keys.append(k)
  jax_by = {_key(r): r for r in jax_results}
  for k in keys:
    j = jax_by.get(k, {})
    jms = j.get("ms_median") if "error" not in j else None
    row = [k[0], k[1], k[2], k[3],
           C.fmt(jms) if jms else ("ERROR" if "error" in j else "not run"),
           C.fmt(j.get("images_per_s"), ".2f")]
    a = alt_by.get(k, {})
    ams = a.get("ms_median") if "error" not in a else None
    if alt_by:
      row.append(C.fmt(ams) if ams else ("ERROR" if "error" in a else "not run"))
    t = torch_by.get(k, {})
    best = None
    for v in variants:
      r = t.get(v)
      if r is None:
        row.append("not run")
      elif "error" in r:
        row.append("failed: " + r["error"].split(":")[0][:40])
      else:
        row.append(C.fmt(r["ms_median"]))
        best = r["ms_median"] if best is None else min(best, r["ms_median"])
    eager = t.get("eager", {}).get("ms_median") if "error" not in t.get("eager", {}) else None
    row.append(f"{eager / jms:.2f}x" if (eager and jms) else "n/a")
    row.append(f"{best / jms:.2f}x" if (best and jms) else "n/a")
    if multi:
      per_round = round_speedups(j, t.get("eager", {})) if (eager and jms) else []
      row.append(f"{min(per_round):.2f}-{max(per_round):.2f}x ({len(per_round)})"
                 if per_round else "n/a")
    if alt_by:
      row.append(f"{eager / ams:.2f}x" if (eager and ams) else "n/a")
    rows.append(row)
  return C.markdown_table(header, rows)


def cpu_time_table(jax_results, torch_results) -> str:
  """Process CPU time per iteration (all threads), a load-robust second view on shared CPUs."""
  header = ["method", "precision", "shape", "depth", "JAX cpu-ms/iter", "PyTorch eager cpu-ms/iter",
            "ratio (PyTorch/JAX)"]
  t_by = {_key(r): r for r in torch_results if r.get("variant") == "eager" and "error" not in r}
  rows = []
  for j in jax_results:
    if "error" in j or j.get("variant") == "alt":
      continue
    t = t_by.get(_key(j))
    jc, tc = j.get("cpu_ms_median"), (t or {}).get("cpu_ms_median")
    rows.append([j["method"], j["precision"], j["shape"], j["depth"], C.fmt(jc), C.fmt(tc),
                 f"{tc / jc:.2f}x" if (jc and tc) else "n/a"])
  return C.markdown_table(header, rows)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--preset", default="cpu-small", choices=sorted(C.PRESETS),
                 help="shape preset shared by both sides (default cpu-small).")
  p.add_argument("--methods", default="supervised,advsemi,adaptseg",
                 help="comma-separated methods (default all three).")
  p.add_argument("--dtypes", default="float32",
                 help="comma-separated precisions: float32, bfloat16 (JAX: model/disc dtype; "
                      "PyTorch: autocast). Default float32.")
  p.add_argument("--variants", default="eager,channels_last,compile",
                 help="PyTorch variants (eager, channels_last, compile). Default all three.")
  p.add_argument("--depth", default=None,
                 help="resnet101 | resnet50 | tiny | 'a,b,c,d' (default: the preset's).")
  C.add_shape_overrides(p)
  p.add_argument("--cpus", type=int, default=None,
                 help="pin both sides to the first N CPUs (PyTorch then uses N threads).")
  p.add_argument("--host_malloc", default="tuned", choices=C.HOST_MALLOC_CHOICES,
                 help=C.HOST_MALLOC_HELP)
  p.add_argument("--losses", default="reference", choices=("reference", "fused"),
                 help="PyTorch losses: the originals' classes (reference) or sync-free (fused).")
  p.add_argument("--cudnn_benchmark", action="store_true",
                 help="PyTorch side: torch.backends.cudnn.benchmark = True (GPU; recommended, "
                      "the fixed shapes let cuDNN pick its fastest kernels like XLA's "
                      "autotuner does).")
  p.add_argument("--xla_flags", default=None, help="extra XLA_FLAGS for the JAX side.")
  p.add_argument("--jax_alt_xla_flags", default=None,
                 help="also run the JAX side with these XLA_FLAGS and add a 'JAX alt' column, "
                      "e.g. --jax_alt_xla_flags=--xla_cpu_experimental_ynn_fusion_type="
                      "-individual_convolution (XLA:CPU convolutions through Eigen instead "
                      "of YNNPACK fusions).")
  p.add_argument("--pointwise_impl", default="dot", choices=("dot", "conv"),
                 help="JAX side: config.model.pointwise_impl (1x1 convolutions as matrix "
                      "products or as convolutions).")
  p.add_argument("--conv_dx_impl", default="auto", choices=("auto", "matmul", "xla"),
                 help="JAX side: config.model.conv_dx_impl (input gradient of the 3x3 "
                      "convolutions as a matrix product, XLA's, or auto by backend).")
  p.add_argument("--aspp_impl", default="auto", choices=("auto", "matmul", "conv"),
                 help="JAX side: config.model.aspp_impl (the ASPP head's dilated 3x3 branches "
                      "as one matrix product, as convolutions, or auto by backend).")
  p.add_argument("--parallel", default="auto", help="JAX binding: auto | jit | pmap | shard_map.")
  p.add_argument("--warmup", type=int, default=2, help="untimed iterations after the first.")
  p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported).")
  p.add_argument("--iters", type=int, default=1, help="iterations per timed repeat.")
  p.add_argument("--rounds", type=int, default=1,
                 help="run every case this many times, the sides' processes alternating "
                      "(JAX first in even rounds, PyTorch first in odd ones); the table gives "
                      "the median over rounds and the per-round speed-up range (default 1).")
  p.add_argument("--order", default="interleave", choices=("interleave", "jax_first"),
                 help="interleave = per case, run JAX then PyTorch back to back (load changes "
                      "on a shared machine hit both sides alike); jax_first = all JAX cases, "
                      "then all PyTorch cases.")
  p.add_argument("--skip_jax", action="store_true", help="run only the PyTorch side.")
  p.add_argument("--skip_torch", action="store_true", help="run only the JAX side.")
  p.add_argument("--from_json", default=None,
                 help="do not run anything: rebuild the tables from a JSON written by --json.")
  p.add_argument("--json", default=None, help="write both sides' results to this JSON file.")
  p.add_argument("--markdown", default=None, help="also write the tables to this file.")
  return p.parse_args(argv)


def selections(args) -> List[List[str]]:
  """The `--methods M --dtypes D` selections run in turn: one per method and precision with
  `--order interleave`, else one with all of them."""
  if args.order == "interleave":
    return [["--methods", m, "--dtypes", d]
            for m in args.methods.split(",") for d in args.dtypes.split(",")]
  return [["--methods", args.methods, "--dtypes", args.dtypes]]


def side_argvs(args, sel: Sequence[str]) -> Dict[str, List[str]]:
  """The argument lists for one selection: 'jax' for step_throughput.main, 'torch' for
  torch_step.main, and 'jax_alt' (with --jax_alt_xla_flags) for the second JAX run."""
  jax_impl = ["--parallel", args.parallel, "--pointwise_impl", args.pointwise_impl,
              "--conv_dx_impl", args.conv_dx_impl, "--aspp_impl", args.aspp_impl]
  jax_flags = [f"--xla_flags={args.xla_flags}"] if args.xla_flags else []
  torch_extra = ["--variants", args.variants, "--losses", args.losses]
  if args.cudnn_benchmark:
    torch_extra.append("--cudnn_benchmark")
  common = _common_argv(args) + list(sel)
  out = {"jax": common + jax_impl + jax_flags, "torch": common + torch_extra}
  if args.jax_alt_xla_flags:
    out["jax_alt"] = common + jax_impl + [f"--xla_flags={args.jax_alt_xla_flags}"]
  return out


def _common_argv(args) -> List[str]:
  out = ["--preset", args.preset, "--width", str(args.width), "--warmup", str(args.warmup),
         "--repeats", str(args.repeats), "--iters", str(args.iters)]
  for flag in ("depth", "batch", "crop", "target_crop", "cpus", "host_malloc"):
    v = getattr(args, flag)
    if v is not None:
      out += [f"--{flag}", str(v)]
  return out


def _malloc_line(results: List[Dict[str, Any]]) -> str:
  by_side = {}
  for r in results:
    if r.get("host_malloc"):
      by_side.setdefault(r.get("side", "torch"), set()).add(r["host_malloc"])
  values = set().union(*by_side.values()) if by_side else set()
  if len(values) == 1:
    return f"# {values.pop()}, both sides"
  return "# " + "; ".join(f"{side}: {' / '.join(sorted(v))}" for side, v in sorted(by_side.items()))


def main(argv=None) -> None:
  args = parse_args(argv)
  variants = args.variants.split(",")
  if args.from_json:
    with open(args.from_json) as f:
      payload = json.load(f)
    jax_results, torch_results = payload["jax"], payload["torch"]
    machine = payload.get("machine", {})
    partial = payload.get("complete") is False
  else:
    partial = False
    machine = C.machine_info()
    machine["loadavg_start"] = machine.pop("loadavg")
    jax_results, torch_results = [], []

    def run_jax(sel):
      argvs = side_argvs(args, sel)
      out = step_throughput.main(argvs["jax"], quiet=True)
      if args.jax_alt_xla_flags:
        alt = step_throughput.main(argvs["jax_alt"], quiet=True)
        for r in alt:
          r["variant"] = "alt"
        out += alt
      return out

    def run_torch(sel):
      return torch_step.main(side_argvs(args, sel)["torch"], quiet=True)

    def tag(results, round_):
      if args.rounds > 1:
        for r in results:
          r["round"] = round_
      return results

    for round_ in range(args.rounds):
      if args.rounds > 1:
        print(f"[compare] round {round_ + 1}/{args.rounds}", file=sys.stderr, flush=True)
      for sel in selections(args):
        sides = [("jax", run_jax), ("torch", run_torch)]
        if args.order == "jax_first":
          sides = sides[:1]
        elif round_ % 2 == 1:
          sides = sides[::-1]
        for side, run in sides:
          if side == "jax" and not args.skip_jax:
            jax_results += tag(run(sel), round_)
          elif side == "torch" and not args.skip_torch:
            torch_results += tag(run(sel), round_)
          else:
            continue
          save_json(args, machine, jax_results, torch_results, complete=False)
      if args.order == "jax_first" and not args.skip_torch:
        torch_results += tag(run_torch(["--methods", args.methods, "--dtypes", args.dtypes]),
                             round_)
    machine["loadavg_end"] = C.load_average()
  raw_jax, raw_torch = jax_results, torch_results
  jax_results, torch_results = merge_rounds(jax_results), merge_rounds(torch_results)
  ok = [r for r in jax_results + torch_results if "error" not in r]
  versions = {}
  for r in ok:
    for k in ("jax", "flax", "torch", "device", "device_name"):
      if r.get(k):
        versions.setdefault(k, r[k])
  lines = [
      f"# step throughput: JAX engine vs PyTorch ({machine.get('date', '')})",
      f"# machine: {machine.get('cpu')} ({machine.get('cpu_count')} CPUs); load average "
      f"start {machine.get('loadavg_start')} end {machine.get('loadavg_end')}",
      f"# versions/devices: {versions}",
      _malloc_line(ok),
      f"# rounds: {max([r.get('rounds', 1) for r in jax_results + torch_results] or [1])} "
      "(ms: median over rounds)",
      f"# command: python {' '.join(sys.argv) if not args.from_json else '(from ' + args.from_json + ')'}",
  ] + (["# PARTIAL: the run stopped before its last case; these are the cases that finished"]
       if partial else []) + [
      "",
      build_table(jax_results, torch_results, variants),
      "",
      "Process CPU time per iteration (all threads; moves less with other users' load):",
      "",
      cpu_time_table(jax_results, torch_results),
  ]
  text = "\n".join(lines)
  print(text)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(text + "\n")
  if not args.from_json:
    save_json(args, machine, raw_jax, raw_torch, complete=True)


def save_json(args, machine: Dict[str, Any], jax_results: List[Dict[str, Any]],
              torch_results: List[Dict[str, Any]], *, complete: bool) -> None:
  """Writes both sides' results so far to --json (if given). Called after every case, so a
  run stopped by a time limit (a lent GPU's call) keeps what finished; `complete` is False
  until the end. `--from_json` rebuilds the tables from either."""
  C.write_json(args.json, {"machine": machine, "argv": sys.argv, "complete": complete,
                           "jax": jax_results, "torch": torch_results})


if __name__ == "__main__":
  main()
