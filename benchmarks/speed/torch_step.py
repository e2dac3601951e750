#!/usr/bin/env python
"""Step throughput of the originals' training iteration in PyTorch (the baseline for
benchmarks/speed/step_throughput.py).

The modules and losses come from tests/torch_ref/models.py (Res_Deeplab, DeeplabMulti,
FCDiscriminator, CrossEntropy2d, BCEWithLogitsLoss2d); the iteration follows docs/FIDELITY.md:

  supervised  zero grads; CE(up(G(x)), y).backward(); SGD step.
  advsemi     §6.3 with every branch on (semi_start = semi_start_adv = 0, d_remain): D frozen;
              unlabelled: P_u = up(G(x_u)), conf = sigmoid(up(D(softmax(P_u)))), pseudo-labels
              masked at conf < 0.2, (0.1 CE + 0.001 BCE(.,1)).backward(); labelled:
              (CE + 0.01 BCE(up(D(softmax(P_l))), 1 | ignore)).backward(); D unfrozen:
              BCE(up(D(softmax([P_l; P_u].detach()))), 0)/2 and BCE(up(D(onehot(y_gt))), 1)/2,
              each .backward(); SGD and Adam steps.
  adaptseg    §7.2 multi-level: (CE(p2) + 0.1 CE(p1)).backward() on the source; target
              (0.0002 BCE(D1(softmax(t1)), 0) + 0.001 BCE(D2(softmax(t2)), 0)).backward();
              D1/D2 on detached source (label 0) and target (label 1), /2 each; SGD + 2 Adams.

`up` = bilinear, align_corners=True. SGD(momentum 0.9, wd 5e-4, 10x LR on the classifier)
with the poly LR set every iteration; Adam(1e-4, betas (0.9, 0.99)). The parameter groups are
de-duplicated (the engine is timed with `legacy_duplicate_updates=False` to match).
Differences from the original scripts, all in PyTorch's favour: the confidence map,
pseudo-labels and one-hot GT are computed on the device (the originals went through numpy on
the host) and no per-iteration `.item()` logging is done. `--losses reference` (default) keeps
the originals' loss classes, which index with boolean masks and check `valid.any()` (a host
sync each); `--losses fused` uses `F.cross_entropy(ignore_index=255)` and a weighted BCE
without syncs.

Variants: eager, channels_last (G and D and the inputs in NHWC memory format), compile
(`torch.compile` of G and D; failures are caught and reported), and precision bfloat16 =
`torch.autocast(dtype=torch.bfloat16)` around G and D (logits cast to float32 before the
upsampling and the losses, like the JAX engine). Same shapes, presets and timing method as
step_throughput.py (warm-up, synchronised median of repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_HERE, _ROOT):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import _common as C  # noqa: E402

VARIANTS = ("eager", "channels_last", "compile")
# Hyper-parameters of the measured iteration (README / argparse defaults of the originals).
HP = {"lambda_adv": 0.01, "lambda_semi": 0.1, "lambda_semi_adv": 0.001, "mask_T": 0.2,
      "lambda_seg": 0.1, "lambda_adv_aux": 0.0002, "lambda_adv_main": 0.001,
      "lr_g": 2.5e-4, "lr_d": 1e-4, "momentum": 0.9, "weight_decay": 5e-4, "power": 0.9,
      "num_steps": 20000}


# ----------------------------------------------------------------------------- the step
def build_step(case: Dict[str, Any]):
  """Returns (step(i) -> None, sync(), info dict) for one case."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
  from tests.torch_ref import models as R  # pylint: disable=import-outside-toplevel

  method, precision, variant = case["method"], case["precision"], case["variant"]
  device = torch.device(case["device"])
  K = case["num_classes"]
  depth = tuple(case["depth"])
  width = case["width"]
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(0)
  mf = torch.channels_last if variant == "channels_last" else torch.contiguous_format
  use_autocast = precision == "bfloat16"
  dev_type = device.type

  if method == "adaptseg":
    G = R.DeeplabMulti(K, layers=depth, width=width)
    levels = ("aux", "main")
  else:
    G = R.Res_Deeplab(K, layers=depth, width=width)
    levels = ("main",) if method == "advsemi" else ()
  Ds = {lv: R.FCDiscriminator(K) for lv in levels}
  G.to(device=device, memory_format=mf).train()
  for d in Ds.values():
    d.to(device=device, memory_format=mf).train()

  # De-duplicated originals' groups: backbone 1x LR, classifier(s) 10x LR.
  def dedup(params):
    seen, out = set(), []
    for p in params:
      if id(p) not in seen:
        seen.add(id(p))
        out.append(p)
    return out

  groups = [{"params": dedup(G.get_1x_lr_params_NOscale()), "lr": HP["lr_g"]},
            {"params": dedup(G.get_10x_lr_params()), "lr": 10 * HP["lr_g"]}]
  opt_g = torch.optim.SGD(groups, lr=HP["lr_g"], momentum=HP["momentum"],
                          weight_decay=HP["weight_decay"])
  opt_d = {lv: torch.optim.Adam(d.parameters(), lr=HP["lr_d"], betas=(0.9, 0.99))
           for lv, d in Ds.items()}

  g_fwd: Callable = G
  d_fwd: Dict[str, Callable] = dict(Ds)
  if variant == "compile":
    g_fwd = torch.compile(G)
    d_fwd = {lv: torch.compile(d) for lv, d in Ds.items()}

  def autocast():
    return torch.autocast(device_type=dev_type, dtype=torch.bfloat16, enabled=use_autocast)

  def G_(x):
    with autocast():
      out = g_fwd(x)
    if isinstance(out, tuple):
      return tuple(o.float() for o in out)
    return out.float()

  def D_(lv, probs):
    with autocast():
      return d_fwd[lv](probs.contiguous(memory_format=mf)).float()

  def up(x, hw):
    return F.interpolate(x, size=hw, mode="bilinear", align_corners=True)

  # Losses.
  if case["losses"] == "reference":
    ce_mod = R.CrossEntropy2d(ignore_label=255)
    bce2d = R.BCEWithLogitsLoss2d(ignore_label=255)
    ce = lambda logits, y: ce_mod(logits, y)
    bce_masked = lambda logits, target: bce2d(logits, target)
  else:
    ce = lambda logits, y: F.cross_entropy(logits, y, ignore_index=255)

    def bce_masked(logits, target):
      valid = (target != 255).to(logits.dtype)
      per = F.binary_cross_entropy_with_logits(logits, torch.where(target == 255,
                                                                    torch.zeros_like(target),
                                                                    target), reduction="none")
      return (per * valid).sum() / valid.sum().clamp_min(1.0)
  bce_plain = torch.nn.BCEWithLogitsLoss()

  def d_label(value, ignore_mask):
    """`make_D_label`: [N,1,H,W] filled with value, 255 where ignore_mask."""
    t = torch.full(ignore_mask.shape, float(value), device=device)
    t = torch.where(ignore_mask, torch.full_like(t, 255.0), t)
    return t.unsqueeze(1)

  # Random inputs (same statistics as the JAX side), created once on the device.
  shape = C.Shape(case["batch"], tuple(case["crop"]),
                  tuple(case["target"]) if case.get("target") else None)
  B = shape.batch

  def image(hw):
    x = torch.randn((B, 3) + tuple(hw), generator=gen) * 50.0
    return x.to(device).contiguous(memory_format=mf)

  def labels(hw):
    y = torch.randint(0, K, (B,) + tuple(hw), generator=gen)
    y[:, -3:, :] = 255
    return y.to(device)

  def set_lrs(i):
    f = (1 - i / HP["num_steps"]) ** HP["power"]
    opt_g.param_groups[0]["lr"] = HP["lr_g"] * f
    opt_g.param_groups[1]["lr"] = 10 * HP["lr_g"] * f
    for o in opt_d.values():
      o.param_groups[0]["lr"] = HP["lr_d"] * f

  def d_grad(flag):
    for d in Ds.values():
      for p in d.parameters():
        p.requires_grad = flag

  def zero():
    opt_g.zero_grad(set_to_none=True)
    for o in opt_d.values():
      o.zero_grad(set_to_none=True)

  def steps():
    opt_g.step()
    for o in opt_d.values():
      o.step()

  if method == "supervised":
    x, y = image(shape.crop), labels(shape.crop)

    def step(i):
      zero()
      set_lrs(i)
      loss = ce(up(G_(x), shape.crop), y)
      loss.backward()
      opt_g.step()

  elif method == "advsemi":
    x_l, y_l = image(shape.crop), labels(shape.crop)
    x_u = image(shape.crop)
    y_gt = labels(shape.crop)
    hw = shape.crop
    fused = case["losses"] != "reference"

    def step(i):
      zero()
      set_lrs(i)
      d_grad(False)
      # unlabelled branch (semi-adv from step 0, semi CE from semi_start = 0)
      pred = up(G_(x_u), hw)
      pred_remain = pred.detach()
      d_out = up(D_("main", F.softmax(pred, dim=1)), hw)
      conf = torch.sigmoid(d_out).detach().squeeze(1)
      ignore_remain = torch.zeros(conf.shape, dtype=torch.bool, device=device)
      loss_semi_adv = HP["lambda_semi_adv"] * bce_masked(d_out, d_label(1, ignore_remain))
      semi_gt = torch.argmax(pred.detach(), dim=1)
      semi_gt = torch.where(conf < HP["mask_T"], torch.full_like(semi_gt, 255), semi_gt)
      if fused:
        any_valid = (semi_gt != 255).any().to(pred.dtype)  # no host sync
        loss_semi = HP["lambda_semi"] * ce(pred, semi_gt) * any_valid + loss_semi_adv
        loss_semi.backward()
      elif bool((semi_gt != 255).any()):  # the originals skip the branch if all are ignored
        loss_semi = HP["lambda_semi"] * ce(pred, semi_gt) + loss_semi_adv
        loss_semi.backward()
      # labelled branch
      ignore = y_l == 255
      pred = up(G_(x_l), hw)
      loss_seg = ce(pred, y_l)
      d_out = up(D_("main", F.softmax(pred, dim=1)), hw)
      loss_adv = bce_masked(d_out, d_label(1, ignore))
      (loss_seg + HP["lambda_adv"] * loss_adv).backward()
      # D: fake = labelled + unlabelled predictions (D_remain), real = one-hot GT
      d_grad(True)
      p = torch.cat((pred.detach(), pred_remain), 0)
      ig = torch.cat((ignore, ignore_remain), 0)
      d_out = up(D_("main", F.softmax(p, dim=1)), hw)
      (bce_masked(d_out, d_label(0, ig)) / 2).backward()
      onehot = (y_gt.unsqueeze(1) == torch.arange(K, device=device).view(1, K, 1, 1)).float()
      d_out = up(D_("main", onehot), hw)
      (bce_masked(d_out, d_label(1, y_gt == 255)) / 2).backward()
      steps()

  elif method == "adaptseg":
    x_s, y_s = image(shape.crop), labels(shape.crop)
    x_t = image(shape.target)
    hs, ht = shape.crop, shape.target

    def step(i):
      zero()
      set_lrs(i)
      d_grad(False)
      p1, p2 = G_(x_s)
      p1, p2 = up(p1, hs), up(p2, hs)
      (ce(p2, y_s) + HP["lambda_seg"] * ce(p1, y_s)).backward()
      t1, t2 = G_(x_t)
      t1, t2 = up(t1, ht), up(t2, ht)
      d1 = D_("aux", F.softmax(t1, dim=1))
      d2 = D_("main", F.softmax(t2, dim=1))
      loss_adv = (HP["lambda_adv_aux"] * bce_plain(d1, torch.zeros_like(d1))
                  + HP["lambda_adv_main"] * bce_plain(d2, torch.zeros_like(d2)))
      loss_adv.backward()
      d_grad(True)
      for lv, q in (("aux", p1), ("main", p2)):
        o = D_(lv, F.softmax(q.detach(), dim=1))
        (bce_plain(o, torch.zeros_like(o)) / 2).backward()
      for lv, q in (("aux", t1), ("main", t2)):
        o = D_(lv, F.softmax(q.detach(), dim=1))
        (bce_plain(o, torch.ones_like(o)) / 2).backward()
      steps()
  else:
    raise ValueError(method)

  def sync():
    if dev_type == "cuda":
      torch.cuda.synchronize()

  info = {"params_g": sum(p.numel() for p in G.parameters())}
  return step, sync, info


def count_flops(step) -> Optional[float]:
  """FLOPs of one iteration with torch.utils.flop_counter (forward + backward)."""
  try:
    from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=import-outside-toplevel
    with FlopCounterMode(display=False) as fc:
      step(0)
    return float(fc.get_total_flops())
  except Exception:  # pylint: disable=broad-except
    return None


def run_case(case: Dict[str, Any]) -> Dict[str, Any]:
  pinned = C.pin_cpus(case.get("cpus"))
  malloc = C.set_host_malloc(case.get("host_malloc"), check_platform=False)
  import torch  # pylint: disable=import-outside-toplevel
  threads = case.get("threads") or (len(pinned) if pinned else None)
  if threads:
    torch.set_num_threads(threads)
  shape = C.Shape(case["batch"], tuple(case["crop"]),
                  tuple(case["target"]) if case.get("target") else None)
  res: Dict[str, Any] = {
      "side": "torch", "method": case["method"], "precision": case["precision"],
      "variant": case["variant"], "shape": shape.label(), "depth": case["depth_name"],
      "width": case["width"], "device": case["device"], "torch": torch.__version__,
      "threads": torch.get_num_threads(), "losses": case["losses"], "cpus": pinned,
      "host_malloc": malloc,
  }
  if case["device"].startswith("cuda"):
    res["device_name"] = torch.cuda.get_device_name()
    res["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    res["cudnn_benchmark"] = case.get("cudnn_benchmark", False)
    torch.backends.cudnn.benchmark = bool(case.get("cudnn_benchmark", False))
    torch.cuda.reset_peak_memory_stats()
  else:
    res["device_name"] = C.cpu_model()
  try:
    t0 = time.perf_counter()
    step, sync, info = build_step(case)
    res["build_s"] = time.perf_counter() - t0
    res.update(info)
    counter = [0]

    def one():
      step(counter[0])
      counter[0] += 1

    t0 = time.perf_counter()
    one()
    sync()
    res["first_step_s"] = time.perf_counter() - t0
    timing = C.time_iterations(one, sync, warmup=case["warmup"], repeats=case["repeats"],
                               iters=case["iters"])
    res.update(timing)
    if case["variant"] == "compile":
      # Compilation happens in the first call(s); report the excess over a steady step.
      res["compile_s"] = max(res["first_step_s"] - res["ms_median"] / 1e3, 0.0)
    n_img = C.generator_images(case["method"], shape)
    res["images_per_iter"] = n_img
    res["images_per_s"] = n_img / (res["ms_median"] / 1e3)
    if case.get("count_flops") and case["variant"] != "compile":
      res["flops"] = count_flops(step)
    if case["device"].startswith("cuda"):
      res["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
      res["peak_mem_gib"] = None
    res["rss_gib"] = C.max_rss_gib()
  except Exception as e:  # pylint: disable=broad-except
    res["error"] = f"{type(e).__name__}: {str(e)[:400]}"
    res["traceback"] = traceback.format_exc()[-2000:]
  return res


# ----------------------------------------------------------------------------- driver
def step_case(method: str, precision: str, variant: str, shape: C.Shape, depth_name: str,
              depth, width: int, num_classes: int, device: str,
              losses: str) -> Dict[str, Any]:
  """The fields of a case that `build_step` reads (the timing fields come on top)."""
  return {"method": method, "precision": precision, "variant": variant,
          "batch": shape.batch, "crop": list(shape.crop),
          "target": list(shape.target) if shape.target else None,
          "depth": list(depth), "depth_name": depth_name, "width": width,
          "num_classes": num_classes, "device": device, "losses": losses}


def make_cases(args) -> List[Dict[str, Any]]:
  depth_name, depth = C.parse_depth(args.depth or C.PRESET_DEPTH[args.preset])
  device = args.device
  if device == "auto":
    import torch  # pylint: disable=import-outside-toplevel
    device = "cuda" if torch.cuda.is_available() else "cpu"
  cases = []
  for method in args.methods.split(","):
    if method not in C.METHODS:
      raise SystemExit(f"--methods: unknown method {method!r}; choose from {C.METHODS}")
    shape = C.resolve_shape(args.preset, method, args.batch, args.crop, args.target_crop)
    for precision in args.dtypes.split(","):
      if precision not in C.PRECISIONS:
        raise SystemExit(f"--dtypes: unknown precision {precision!r}")
      for variant in args.variants.split(","):
        if variant not in VARIANTS:
          raise SystemExit(f"--variants: unknown variant {variant!r}; choose from {VARIANTS}")
        case = step_case(method, precision, variant, shape, depth_name, depth, args.width,
                         args.num_classes or C.NUM_CLASSES[method], device, args.losses)
        case.update({
            "warmup": args.warmup, "repeats": args.repeats, "iters": args.iters,
            "threads": args.threads, "count_flops": args.count_flops,
            "cudnn_benchmark": args.cudnn_benchmark, "cpus": args.cpus,
            "host_malloc": args.host_malloc,
        })
        cases.append(case)
  return cases


def print_table(results: List[Dict[str, Any]], file=sys.stdout) -> None:
  header = ["method", "precision", "variant", "shape (B x crop)", "depth", "first iter s",
            "ms/iter", "img/s", "GFLOP/iter", "peak mem GiB"]
  rows = []
  for r in results:
    if "error" in r:
      rows.append([r.get("method"), r.get("precision"), r.get("variant"), r.get("shape"),
                   r.get("depth"), "ERROR: " + r["error"][:120], "", "", "", ""])
      continue
    rows.append([r["method"], r["precision"], r["variant"], r["shape"], r["depth"],
                 C.fmt(r.get("first_step_s")), C.fmt(r.get("ms_median")),
                 C.fmt(r.get("images_per_s"), ".2f"),
                 C.fmt(r["flops"] / 1e9 if r.get("flops") else None),
                 C.fmt(r.get("peak_mem_gib"), ".2f")])
  print(C.markdown_table(header, rows), file=file)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
      description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Presets (per-device shapes):\n" + "\n".join(
          f"  {name:10s} " + "; ".join(f"{m} {s.label()}" for m, s in shapes.items())
          + f"  [default depth {C.PRESET_DEPTH[name]}]" for name, shapes in C.PRESETS.items()))
  p.add_argument("--preset", default="cpu-small", choices=sorted(C.PRESETS),
                 help="shape preset, identical to step_throughput.py (default cpu-small).")
  p.add_argument("--methods", default="supervised,advsemi,adaptseg",
                 help="comma-separated methods (default: all three).")
  p.add_argument("--dtypes", default="float32",
                 help="comma-separated precisions: float32 (plain) and/or bfloat16 "
                      "(torch.autocast bf16 around G and D). Default float32.")
  p.add_argument("--variants", default="eager",
                 help=f"comma-separated variants from {VARIANTS}: eager; channels_last "
                      "(NHWC memory format for models and inputs); compile (torch.compile "
                      "of G and D; errors are caught and reported). Default eager.")
  p.add_argument("--depth", default=None,
                 help="resnet101 | resnet50 | tiny | 'a,b,c,d' (default: the preset's).")
  p.add_argument("--width", type=int, default=64, help="stem width (64 = the originals).")
  p.add_argument("--num_classes", type=int, default=None,
                 help="classes (default 21 supervised/advsemi, 19 adaptseg).")
  p.add_argument("--batch", type=int, default=None, help="batch per stream (overrides preset).")
  p.add_argument("--crop", default=None, help="labelled/source crop HxW (overrides preset).")
  p.add_argument("--target_crop", default=None, help="adaptseg target crop HxW.")
  p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda if available).")
  p.add_argument("--losses", default="reference", choices=("reference", "fused"),
                 help="reference = the originals' CrossEntropy2d / BCEWithLogitsLoss2d (host "
                      "syncs); fused = sync-free F.cross_entropy(ignore_index) + masked BCE.")
  p.add_argument("--threads", type=int, default=None,
                 help="torch.set_num_threads (default: PyTorch's choice).")
  p.add_argument("--cpus", type=int, default=None,
                 help="pin each case to its first N CPUs and use N torch threads (unless "
                      "--threads is given). Default: all CPUs, PyTorch's thread count.")
  p.add_argument("--cudnn_benchmark", action="store_true",
                 help="set torch.backends.cudnn.benchmark = True (GPU).")
  p.add_argument("--host_malloc", default="tuned", choices=C.HOST_MALLOC_CHOICES,
                 help=C.HOST_MALLOC_HELP)
  p.add_argument("--count_flops", action="store_true",
                 help="count FLOPs of one iteration with torch.utils.flop_counter.")
  p.add_argument("--warmup", type=int, default=2, help="untimed iterations after the first.")
  p.add_argument("--repeats", type=int, default=5, help="timed repeats (median reported).")
  p.add_argument("--iters", type=int, default=1, help="iterations per timed repeat.")
  p.add_argument("--timeout", type=float, default=3600, help="seconds per case.")
  p.add_argument("--in_process", action="store_true",
                 help="run all cases in this process instead of one child process each.")
  p.add_argument("--json", default=None, help="write all results to this JSON file.")
  p.add_argument("--case_json", default=None, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None, quiet: bool = False) -> List[Dict[str, Any]]:
  args = parse_args(argv)
  if args.case_json:
    C.emit(run_case(json.loads(args.case_json)))
    return []
  env = C.host_malloc_child_env(args.host_malloc, os.environ.copy(), check_platform=False)
  results = []
  for case in make_cases(args):
    t0 = time.time()
    shape = C.Shape(case["batch"], tuple(case["crop"]),
                    tuple(case["target"]) if case["target"] else None)
    print(f"# torch {case['method']} {case['precision']} {case['variant']} {shape.label()} "
          f"depth {case['depth_name']} ...", file=sys.stderr, flush=True)
    if args.in_process:
      out = [run_case(case)]
    else:
      out = C.run_child([os.path.abspath(__file__), "--case_json", json.dumps(case)],
                        timeout=args.timeout, env=env)
    for r in out:
      for k in ("method", "precision", "variant"):
        r.setdefault(k, case[k])
      r.setdefault("depth", case["depth_name"])
      r.setdefault("shape", shape.label())
      r["case_wall_s"] = time.time() - t0
    results.extend(out)
  if not quiet:
    print_table(results)
  C.write_json(args.json, {"machine": C.machine_info(), "argv": sys.argv, "results": results})
  return results


if __name__ == "__main__":
  main()
