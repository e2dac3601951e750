#!/usr/bin/env python
"""Step throughput of the advseg-jax training engine (one full G+D iteration).

Measures the real engine -- `advseg_jax.train.steps.make_train_step` bound by
`advseg_jax.train.parallel.Parallel` with donated states -- on random inputs (no dataset):
compile time, ms per iteration, images/s, FLOPs per iteration from XLA's cost analysis,
utilisation against the device's peak, and peak device memory, in float32 and bfloat16.

Methods, all branches on:
  supervised  CE on the labelled batch (no D).
  advsemi     AdvSemiSeg (docs/FIDELITY.md §6.3) with semi_start = semi_start_adv = 0: unlabelled
              branch (semi CE on confidence-masked pseudo-labels + semi-adv), labelled CE + adv,
              D on fake = labelled + unlabelled predictions (d_remain) and real = one-hot GT.
  adaptseg    AdaptSegNet multi-level (§7.2): DeeplabMulti, source CE (main + 0.1 aux), target
              adversarial terms on both levels, two discriminators.

Examples:
  python benchmarks/speed/step_throughput.py                           # cpu-small, tiny depth, f32
  python benchmarks/speed/step_throughput.py --preset cpu-small --depth resnet101 --dtypes float32,bfloat16
  python benchmarks/speed/step_throughput.py --preset original --dtypes float32,bfloat16   # on a GPU
  python benchmarks/speed/step_throughput.py --preset original --methods adaptseg --compile_only

Each case runs in its own child process (fresh peak-memory counters, an OOM kills one case
only) unless --in_process is given. See benchmarks/README.md for what each column means.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_HERE, _ROOT):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import _common as C  # noqa: E402  (no JAX / torch import at module level)

# Dense peak TFLOP/s per GPU from NVIDIA's datasheets (the "with sparsity" figures halved).
# float32 runs are compared with the TF32 tensor-core peak by default: XLA's default
# precision and PyTorch's default `cudnn.allow_tf32=True` both run float32 convolutions in
# TF32 on Hopper. Use --fp32_peak fp32 for the CUDA-core float32 peak instead.
PEAK_TFLOPS: Dict[str, Dict[str, float]] = {
    "H100 SXM": {"bfloat16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bfloat16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bfloat16": 835.5, "tf32": 417.5, "fp32": 60.0},
    "H200 SXM": {"bfloat16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bfloat16": 835.5, "tf32": 417.5, "fp32": 60.0},
}


def peak_key(device_kind: str) -> Optional[str]:
  """Row of PEAK_TFLOPS for a `device.device_kind` string, e.g. 'NVIDIA H100 80GB HBM3'."""
  k = device_kind.upper()
  for chip in ("H200", "H100"):
    if chip in k:
      if "NVL" in k:
        return f"{chip} NVL"
      if "PCIE" in k:
        return f"{chip} PCIe"
      return f"{chip} SXM"
  return None


def peak_tflops(device_kind: str, precision: str, override: Optional[float],
                fp32_kind: str) -> Optional[float]:
  if override:
    return override
  key = peak_key(device_kind)
  if key is None:
    return None
  return PEAK_TFLOPS[key]["bfloat16" if precision == "bfloat16" else fp32_kind]


# ----------------------------------------------------------------------------- config / data
def build_config(method: str, precision: str, depth, width: int, num_classes: int,
                 global_batch: int, parallel_mode: str, num_devices: int):
  from advseg_jax.config.defaults import base_config  # pylint: disable=import-outside-toplevel
  from advseg_jax.config.validation import validate  # pylint: disable=import-outside-toplevel
  c = base_config()
  c.method.name = method
  if tuple(depth) in [tuple(v) for v in C.DEPTHS.values()]:
    c.model.depths = next(k for k, v in C.DEPTHS.items() if tuple(v) == tuple(depth))
  else:  # the field is typed str; replace it by a tuple of ints
    del c.model["depths"]
    c.model.depths = tuple(int(x) for x in depth)
  c.model.width = width
  c.model.num_classes = num_classes
  c.model.dtype = precision
  c.disc.dtype = precision
  c.batch_size = global_batch
  c.parallel.mode = parallel_mode
  c.optim_g.legacy_duplicate_updates = False  # as torch_step.py's de-duplicated groups
  if method == "advsemi":
    # Every branch of §6.3 on from step 0 (the README values for the weights).
    c.labelled_fraction = 0.125
    c.method.lambda_adv = 0.01
    c.method.lambda_semi = 0.1
    c.method.lambda_semi_adv = 0.001
    c.method.semi_start = 0
    c.method.semi_start_adv = 0
    c.method.d_remain = True
  elif method == "adaptseg":
    c.model.arch = "deeplabv2_multi"  # multi-level: aux (layer5) + main (layer6), two Ds
    c.method.lambda_seg = 0.1
    c.method.lambda_adv_aux = 0.0002
    c.method.lambda_adv = 0.001
  validate(c, num_devices=num_devices)
  return c


def host_batch(method: str, shape: C.Shape, streams, num_classes: int, n_local: int, seed: int):
  """Random numpy batch {stream: {'image', 'label'?}} for `n_local` devices."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(seed)
  b = shape.batch * n_local
  out = {}
  for s in streams:
    h, w = shape.target if s == "target" else shape.crop
    d = {"image": (rng.standard_normal((b, h, w, 3), dtype=np.float32) * 50.0)}
    if s not in ("unlabelled", "target"):
      lab = rng.integers(0, num_classes, size=(b, h, w)).astype(np.int32)
      lab[:, -3:, :] = 255  # an ignored strip, like padding / VOC boundaries
      d["label"] = lab
    out[s] = d
  return out


def _cost(ca) -> Dict[str, Optional[float]]:
  if ca is None:
    return {"flops": None, "bytes": None}
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else {}
  f = ca.get("flops")
  b = ca.get("bytes accessed")
  return {"flops": float(f) if f is not None and f >= 0 else None,
          "bytes": float(b) if b is not None and b >= 0 else None}


def conv_dtype_census(stablehlo: str) -> Dict[str, int]:
  """{element type: count} of the convolutions' results in the lowered module (checks that
  bfloat16 runs really convolve in bfloat16)."""
  import collections  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  out: Dict[str, int] = collections.Counter()
  for line in stablehlo.splitlines():
    if "stablehlo.convolution" in line:
      m = re.search(r"->\s*tensor<[^>]*?x?([a-z]+[0-9]*)>\s*$", line.strip())
      out[m.group(1) if m else "?"] += 1
  return dict(out)


# ----------------------------------------------------------------------------- one case
def run_case(case: Dict[str, Any]) -> Dict[str, Any]:
  """Builds, compiles and times one (method, precision, shape); returns the result dict."""
  pinned = C.pin_cpus(case.get("cpus"))
  malloc = C.set_host_malloc(case.get("host_malloc"), check_platform=True)
  if case.get("xla_flags"):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + case["xla_flags"]).strip()
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  if case.get("cache_dir"):
    jax.config.update("jax_compilation_cache_dir", case["cache_dir"])
  from advseg_jax import methods  # pylint: disable=import-outside-toplevel
  from advseg_jax.models import build_discriminator, build_generator  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.parallel import Parallel  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.state import create_train_states  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.steps import make_train_step  # pylint: disable=import-outside-toplevel

  method, precision = case["method"], case["precision"]
  shape = C.Shape(case["batch"], tuple(case["crop"]),
                  tuple(case["target"]) if case.get("target") else None)
  mode = case["parallel"]
  if mode == "auto":
    mode = "jit" if jax.local_device_count() == 1 else "pmap"
  par = Parallel(mode)
  dev = par.local_devices[0]
  res: Dict[str, Any] = {
      "side": "jax", "method": method, "precision": precision, "shape": shape.label(),
      "depth": case["depth_name"], "width": case["width"], "parallel": mode,
      "devices": par.num_devices, "device": dev.device_kind, "platform": dev.platform,
      "donate": case["donate"], "jax": jax.__version__, "cpus": pinned,
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
      "pointwise_impl": case["pointwise_impl"], "conv_dx_impl": case["conv_dx_impl"],
      "aspp_impl": case["aspp_impl"], "host_malloc": malloc,
  }
  import flax  # pylint: disable=import-outside-toplevel
  res["flax"] = flax.__version__

  cfg = build_config(method, precision, case["depth"], case["width"], case["num_classes"],
                     shape.batch * par.num_devices, mode, par.num_devices)
  cfg.model.pointwise_impl = case["pointwise_impl"]
  cfg.model.conv_dx_impl = case["conv_dx_impl"]
  cfg.model.aspp_impl = case["aspp_impl"]
  g_model = build_generator(cfg.model, bn_axis_name=par.axis_name)
  d_model = None if method == "supervised" else build_discriminator(cfg.disc)
  states = create_train_states(cfg, g_model, d_model, jax.random.key(cfg.seed))
  states = par.replicate(states)
  streams = methods.streams(method, cfg.method)
  batch = par.shard_batch(host_batch(method, shape, streams, case["num_classes"],
                                     par.num_local, cfg.seed))
  rng = jax.random.key(1)
  body = make_train_step(cfg, g_model, d_model, par.axis_name)
  step = par.bind_train_step(body, donate_states=case["donate"])

  t0 = time.perf_counter()
  lowered = step.lower(states, batch, rng)
  res["lower_s"] = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  res["compile_s"] = time.perf_counter() - t0
  res["conv_dtypes"] = conv_dtype_census(lowered.as_text())
  hlo_cost = _cost(lowered.cost_analysis())
  xla_cost = _cost(compiled.cost_analysis())
  # Per-device FLOPs of one iteration. The pre-optimisation HLO count is backend
  # independent; the compiled count is what the backend reports after fusion.
  res["flops_hlo"] = hlo_cost["flops"]
  res["flops_compiled"] = xla_cost["flops"]
  res["flops"] = hlo_cost["flops"] or xla_cost["flops"]
  try:
    ma = compiled.memory_analysis()
    est = ma.argument_size_in_bytes + ma.output_size_in_bytes - ma.alias_size_in_bytes \
        + ma.temp_size_in_bytes
    res["xla_mem_est_gib"] = est / 2**30
    res["xla_temp_gib"] = ma.temp_size_in_bytes / 2**30
    res["xla_alias_gib"] = ma.alias_size_in_bytes / 2**30
  except Exception as e:  # pylint: disable=broad-except
    res["xla_mem_est_gib"] = None
    res["memory_analysis_error"] = repr(e)[:200]
  res["state_gib"] = sum(x.nbytes for x in jax.tree_util.tree_leaves(states)) / 2**30 / max(
      1, par.num_local if mode == "pmap" else 1)
  if case["compile_only"]:
    res["rss_gib"] = C.max_rss_gib()
    return res

  holder = [states, None]

  def one():
    holder[0], holder[1] = compiled(holder[0], batch, rng)

  def sync():
    jax.block_until_ready(holder)

  t0 = time.perf_counter()
  one()
  res["first_dispatch_ms"] = (time.perf_counter() - t0) * 1e3
  sync()
  res["first_step_s"] = time.perf_counter() - t0
  # Dispatch returns before the device finishes when the step has no host sync inside.
  t0 = time.perf_counter()
  one()
  res["dispatch_ms"] = (time.perf_counter() - t0) * 1e3
  sync()
  res["step_ms_single"] = (time.perf_counter() - t0) * 1e3
  timing = C.time_iterations(one, sync, warmup=case["warmup"], repeats=case["repeats"],
                             iters=case["iters"])
  res.update(timing)
  metrics = jax.device_get(holder[1])
  if mode == "pmap":
    metrics = {k: np.asarray(v)[0] for k, v in metrics.items()}
  res["finite"] = bool(all(np.all(np.isfinite(np.asarray(v))) for v in metrics.values()))
  res["metrics"] = {k: round(float(np.asarray(v)), 5) for k, v in sorted(metrics.items())}
  n_img = C.generator_images(method, shape) * par.num_devices
  res["images_per_iter"] = n_img
  res["images_per_s"] = n_img / (res["ms_median"] / 1e3)
  if res["flops"]:
    res["tflops_per_s"] = res["flops"] / (res["ms_median"] / 1e3) / 1e12  # per device
  peak = peak_tflops(dev.device_kind, precision, case.get("peak_tflops"), case["fp32_peak"])
  if dev.platform == "cpu" and not case.get("peak_tflops"):
    peak = None
  res["peak_tflops"] = peak
  res["utilisation"] = (res["tflops_per_s"] / peak) if (peak and res.get("tflops_per_s")) \
      else None
  stats = None
  try:
    stats = dev.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None
  if stats:
    res["peak_mem_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30
    res["mem_limit_gib"] = stats.get("bytes_limit", 0) / 2**30
  else:
    res["peak_mem_gib"] = None
  res["rss_gib"] = C.max_rss_gib()

  if case.get("check_recompile"):
    # The jitted (not AOT) step must compile exactly once across steps.
    st = par.replicate(jax.device_get(par.unreplicate(holder[0]) if mode == "pmap"
                                      else holder[0]))
    for _ in range(3):
      st, _m = step(st, batch, rng)
    jax.block_until_ready(st)
    size = getattr(step, "_cache_size", None)
    res["jit_cache_size"] = size() if callable(size) else None
  return res


# ----------------------------------------------------------------------------- driver
def gpu_total_gib() -> Optional[float]:
  try:
    import subprocess  # pylint: disable=import-outside-toplevel
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,"
                          "nounits"], capture_output=True, text=True, timeout=20).stdout
    return float(out.strip().splitlines()[0]) / 1024.0
  except Exception:  # pylint: disable=broad-except
    return None


def make_cases(args) -> List[Dict[str, Any]]:
  depth_name, depth = C.parse_depth(args.depth or C.PRESET_DEPTH[args.preset])
  cases = []
  for method in args.methods.split(","):
    if method not in C.METHODS:
      raise SystemExit(f"--methods: unknown method {method!r}; choose from {C.METHODS}")
    shape = C.resolve_shape(args.preset, method, args.batch, args.crop, args.target_crop)
    for precision in args.dtypes.split(","):
      if precision not in C.PRECISIONS:
        raise SystemExit(f"--dtypes: unknown precision {precision!r}; choose from "
                         f"{C.PRECISIONS}")
      cases.append({
          "method": method, "precision": precision, "batch": shape.batch,
          "crop": list(shape.crop), "target": list(shape.target) if shape.target else None,
          "depth": list(depth), "depth_name": depth_name, "width": args.width,
          "num_classes": args.num_classes or C.NUM_CLASSES[method],
          "parallel": args.parallel, "donate": not args.no_donate,
          "warmup": args.warmup, "repeats": args.repeats, "iters": args.iters,
          "compile_only": args.compile_only, "peak_tflops": args.peak_tflops,
          "fp32_peak": args.fp32_peak, "check_recompile": args.check_recompile,
          "cache_dir": args.compilation_cache, "xla_flags": args.xla_flags,
          "preset": args.preset, "cpus": args.cpus, "pointwise_impl": args.pointwise_impl,
          "host_malloc": args.host_malloc,
          "conv_dx_impl": args.conv_dx_impl, "aspp_impl": args.aspp_impl,
      })
  return cases


def print_table(results: List[Dict[str, Any]], file=sys.stdout) -> None:
  header = ["method", "precision", "shape (B x crop)", "depth", "compile s", "ms/iter",
            "img/s", "GFLOP/iter", "TFLOP/s", "util", "peak mem GiB", "XLA est GiB"]
  rows = []
  for r in results:
    if "error" in r:
      rows.append([r.get("method", "?"), r.get("precision", "?"), r.get("shape", "?"),
                   r.get("depth", "?"), "ERROR: " + r["error"][:120]] + [""] * 7)
      continue
    util = r.get("utilisation")
    rows.append([
        r["method"], r["precision"], r["shape"], r["depth"], C.fmt(r.get("compile_s")),
        C.fmt(r.get("ms_median")), C.fmt(r.get("images_per_s"), ".2f"),
        C.fmt(r["flops"] / 1e9 if r.get("flops") else None, ".1f"),
        C.fmt(r.get("tflops_per_s"), ".3f"),
        f"{100 * util:.1f}%" if util is not None else "n/a",
        C.fmt(r.get("peak_mem_gib"), ".2f"), C.fmt(r.get("xla_mem_est_gib"), ".2f"),
    ])
  print(C.markdown_table(header, rows), file=file)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Presets (per-device shapes):\n" + "\n".join(
          f"  {name:10s} " + "; ".join(f"{m} {s.label()}" for m, s in shapes.items())
          + f"  [default depth {C.PRESET_DEPTH[name]}]" for name, shapes in C.PRESETS.items()))
  p.add_argument("--preset", default="cpu-small", choices=sorted(C.PRESETS),
                 help="shape preset (see below). 'original' = the originals' shapes (advsemi "
                      "batch 10 at 321x321; adaptseg batch 1 at 720x1280 source + 512x1024 "
                      "target); 'large' = bigger per-device batches; 'cpu-small' = small "
                      "shapes for a CPU (default).")
  p.add_argument("--methods", default="supervised,advsemi,adaptseg",
                 help="comma-separated methods to run (default: all three).")
  p.add_argument("--dtypes", default="float32",
                 help="comma-separated compute precisions: float32, bfloat16 (sets "
                      "config.model.dtype and config.disc.dtype; params, losses and BN "
                      "statistics stay float32). Default float32.")
  p.add_argument("--depth", default=None,
                 help="ResNet depth: resnet101 (3,4,23,3), resnet50, tiny (1,1,1,1) or four "
                      "ints 'a,b,c,d'. Default: the preset's (tiny for cpu-small, resnet101 "
                      "otherwise).")
  p.add_argument("--width", type=int, default=64,
                 help="stem width / layer1 planes (64 = the originals).")
  p.add_argument("--pointwise_impl", default="dot", choices=("dot", "conv"),
                 help="config.model.pointwise_impl: the backbone's 1x1 convolutions as matrix "
                      "products (dot, the default) or as convolutions (conv), to measure the "
                      "difference on a device.")
  p.add_argument("--conv_dx_impl", default="auto", choices=("auto", "matmul", "xla"),
                 help="config.model.conv_dx_impl: input gradient of the bottlenecks' 3x3 "
                      "convolutions as a matrix product + col2im (matmul), XLA's "
                      "convolution backward (xla), or auto (matmul on CPU, xla elsewhere).")
  p.add_argument("--aspp_impl", default="auto", choices=("auto", "matmul", "conv"),
                 help="config.model.aspp_impl: the ASPP head's dilated 3x3 branches as one "
                      "matrix product + shifted adds (matmul), as XLA convolutions (conv), or "
                      "auto (matmul on CPU, conv elsewhere).")
  p.add_argument("--num_classes", type=int, default=None,
                 help="classes (default 21 for supervised/advsemi, 19 for adaptseg).")
  p.add_argument("--batch", type=int, default=None,
                 help="per-device batch per stream, overriding the preset.")
  p.add_argument("--crop", default=None,
                 help="labelled/source crop HxW overriding the preset, e.g. 321x321.")
  p.add_argument("--target_crop", default=None,
                 help="adaptseg target crop HxW overriding the preset, e.g. 512x1024.")
  p.add_argument("--parallel", default="auto", choices=("auto", "jit", "pmap", "shard_map"),
                 help="how the step is bound (advseg_jax.train.parallel): auto = jit on one "
                      "device, pmap on several.")
  p.add_argument("--no_donate", action="store_true",
                 help="do not donate the train states to the step (to measure donation).")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed iterations after the first (compiling) call. Default 2.")
  p.add_argument("--repeats", type=int, default=5,
                 help="timed repeats; the reported ms/iter is their median. Default 5.")
  p.add_argument("--iters", type=int, default=1,
                 help="iterations per timed repeat (one jax.block_until_ready per repeat). "
                      "Default 1.")
  p.add_argument("--compile_only", action="store_true",
                 help="lower + compile only: compile time, FLOPs and XLA's memory estimate, no "
                      "execution (e.g. to check a full-resolution step fits in memory).")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="device peak TFLOP/s for the utilisation column (overrides the built-in "
                      "H100/H200 table; needed for other devices). CPU: n/a unless given.")
  p.add_argument("--fp32_peak", default="tf32", choices=("tf32", "fp32"),
                 help="which peak float32 runs are compared with: tf32 (tensor cores, the "
                      "default precision of both XLA and cuDNN convs) or fp32 (CUDA cores).")
  p.add_argument("--check_recompile", action="store_true",
                 help="also run the jitted step 3 times and report its compilation-cache size "
                      "(must be 1: one compiled function per step kind).")
  p.add_argument("--gpu_mem_limit_gb", type=float, default=None,
                 help="cap JAX's GPU memory pool at this many GiB (sets "
                      "XLA_PYTHON_CLIENT_MEM_FRACTION from nvidia-smi's total), e.g. 24 to "
                      "check the AdaptSegNet step fits a 24 GB card.")
  p.add_argument("--compilation_cache", default=None,
                 help="persistent JAX compilation-cache directory (off by default: compile "
                      "times are then real).")
  p.add_argument("--cpus", type=int, default=None,
                 help="pin each case to its first N CPUs (os.sched_setaffinity before JAX "
                      "starts; XLA sizes its thread pool from it). Default: all CPUs.")
  p.add_argument("--xla_flags", default=None,
                 help="extra XLA_FLAGS for the child processes.")
  p.add_argument("--host_malloc", default="tuned", choices=C.HOST_MALLOC_CHOICES,
                 help=C.HOST_MALLOC_HELP)
  p.add_argument("--timeout", type=float, default=3600,
                 help="seconds per case before its child process is killed. Default 3600.")
  p.add_argument("--in_process", action="store_true",
                 help="run all cases in this process (no child processes; peak memory is then "
                      "cumulative).")
  p.add_argument("--json", default=None, help="write all results to this JSON file.")
  p.add_argument("--case_json", default=None, help=argparse.SUPPRESS)  # child-process entry
  return p.parse_args(argv)


def main(argv=None, quiet: bool = False) -> List[Dict[str, Any]]:
  args = parse_args(argv)
  if args.case_json:
    C.emit(run_case(json.loads(args.case_json)))
    return []
  cases = make_cases(args)
  env = os.environ.copy()
  if args.gpu_mem_limit_gb:
    total = gpu_total_gib()
    if total:
      env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(args.gpu_mem_limit_gb / total, 1.0):.4f}"
      os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"] = env["XLA_PYTHON_CLIENT_MEM_FRACTION"]
      print(f"# JAX GPU pool capped at {args.gpu_mem_limit_gb} GB "
            f"(fraction {env['XLA_PYTHON_CLIENT_MEM_FRACTION']} of {total:.1f} GiB)",
            file=sys.stderr)
    else:
      print("# --gpu_mem_limit_gb ignored: nvidia-smi not available", file=sys.stderr)
  env = C.host_malloc_child_env(args.host_malloc, env, check_platform=True)
  results = []
  for case in cases:
    t0 = time.time()
    print(f"# jax {case['method']} {case['precision']} "
          f"{C.Shape(case['batch'], tuple(case['crop']), tuple(case['target']) if case['target'] else None).label()} "
          f"depth {case['depth_name']} ...", file=sys.stderr, flush=True)
    if args.in_process:
      try:
        out = [run_case(case)]
      except Exception as e:  # pylint: disable=broad-except
        out = [{"error": repr(e)[:600]}]
    else:
      out = C.run_child([os.path.abspath(__file__), "--case_json", json.dumps(case)],
                        timeout=args.timeout, env=env)
    for r in out:
      for k in ("method", "precision", "depth"):
        r.setdefault(k, case[k] if k != "depth" else case["depth_name"])
      r.setdefault("shape", C.Shape(case["batch"], tuple(case["crop"]),
                                    tuple(case["target"]) if case["target"] else None).label())
      r["case_wall_s"] = time.time() - t0
    results.extend(out)
  if not quiet:
    print_table(results)
  C.write_json(args.json, {"machine": C.machine_info(), "argv": sys.argv, "results": results})
  return results


if __name__ == "__main__":
  main()
