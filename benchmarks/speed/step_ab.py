#!/usr/bin/env python
"""A/B of training-step variants in one process: each variant's step is compiled, then the
variants are called in turn (forward order in even rounds, reversed in odd ones), so slow
drift of the machine hits all of them alike.

Separate processes (step_throughput.py, compare.py) move by +-7-10% from run to run on the
project's 2-core box; a 5% change is then invisible. Here the variants share the process,
its allocator state, the thermal / frequency state of the moment and the inputs, and the
table gives each one's median, quartiles and median process CPU time over `--calls` calls.

A variant is `LABEL=FIELD=VALUE[,FIELD=VALUE...]`, config fields with dots as in the train
CLI's `--config.FIELD=VALUE`; `LABEL=` alone is the unchanged config. The first variant is
the baseline of the speed-up column.

  python benchmarks/speed/step_ab.py --method supervised --depth resnet101 --cpus 2 \\
      --variant matmul=model.conv_dx_impl=matmul --variant xla=model.conv_dx_impl=xla
  python benchmarks/speed/step_ab.py --method advsemi --variant base= \\
      --variant bf16=model.dtype=bfloat16,disc.dtype=bfloat16 --calls 30

`--torch eager[,channels_last,...]` adds torch_step.py's PyTorch iteration of the same method,
shape and precision (autocast for bfloat16) to the rotation, one run per PyTorch variant,
labelled `torch-VARIANT`. With it one `--variant` is enough, and the table is followed by the
JAX / PyTorch speed-up of every JAX variant against every PyTorch one: the ratio of the
medians, and the median (p25-p75) of the per-round ratios, each JAX call against the PyTorch
call of the same round. That pairing cancels the machine's drift, which between separate
processes (compare.py) is as large as the difference measured:

  python benchmarks/speed/step_ab.py --method supervised --depth resnet101 --cpus 2 --calls 30 \
      --variant jax= --torch eager

Both frameworks then share the process and its CPUs. Between calls each one's threads wait
idle (PyTorch's OpenMP threads spin for a moment after each parallel region first), so a call
runs with the other framework's threads asleep, as it would alone; pin with --cpus so that
both size their thread pools alike. Each time the rotation moves to another run it first
makes `--switch_calls` untimed calls (default 1 with --torch): on a 2-core VM the first JAX
call after PyTorch's, or after a second of sleep, took up to twice as long (XLA's threads
busy for twice the CPU time while the other core idled; benchmarks/RESULTS.md), which a
training loop, one step after another, does not see.

For a PyTorch run the compile-s column is the time to build and warm it up (for
`--torch compile`, torch.compile's compilation). On a GPU, `--torch` turns JAX's memory
preallocation off (`XLA_PYTHON_CLIENT_PREALLOCATE=false` unless set) so that both fit.

Every variant keeps its own train states (about 0.7 GB for ResNet-101 with momentum), so
memory grows with the number of variants. Timing: each call is one full iteration closed by
`jax.block_until_ready` on the new states (PyTorch: the step returns after its optimiser
steps; on a GPU it is followed by `torch.cuda.synchronize()`), like step_throughput.py with
--iters 1.
"""

from __future__ import annotations

import argparse
import ast
import os
import resource
import statistics
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(os.path.dirname(_HERE))
for _p in (_HERE, _ROOT):
  if _p not in sys.path:
    sys.path.insert(0, _p)

import _common as C  # noqa: E402
import step_throughput  # noqa: E402
import torch_step  # noqa: E402  (imports torch only when a PyTorch step is built)

Override = Tuple[str, str]


def parse_variant(spec: str) -> Tuple[str, List[Override]]:
  """'LABEL=a.b=1,c=x' -> ('LABEL', [('a.b', '1'), ('c', 'x')]); 'LABEL=' -> ('LABEL', [])."""
  label, sep, rest = spec.partition("=")
  if not sep or not label:
    raise ValueError(f"--variant {spec!r}: expected LABEL=FIELD=VALUE[,FIELD=VALUE...] "
                     "or LABEL= for the unchanged config")
  overrides = []
  for item in filter(None, rest.split(",")):
    field, sep, value = item.partition("=")
    if not sep or not field:
      raise ValueError(f"--variant {spec!r}: {item!r} is not FIELD=VALUE")
    overrides.append((field, value))
  return label, overrides


def _convert(field: str, current: Any, text: str) -> Any:
  """`text` as the type of the field's current value (bool / int / float / str / other)."""
  if isinstance(current, bool):
    if text.lower() not in ("true", "false"):
      raise ValueError(f"config field {field}: expected true or false, got {text!r}")
    return text.lower() == "true"
  if isinstance(current, (int, float)):
    try:
      return type(current)(text)
    except ValueError:
      kind = "an integer" if isinstance(current, int) else "a number"
      raise ValueError(f"config field {field}: expected {kind}, got {text!r}") from None
  if isinstance(current, str) or current is None:
    return text
  return ast.literal_eval(text)


def apply_overrides(config, overrides: Sequence[Override]):
  """Sets each dotted FIELD of `config` (an ml_collections ConfigDict) to VALUE, converted to
  the field's current type. An unknown field is an error naming it."""
  for field, text in overrides:
    *parents, leaf = field.split(".")
    node = config
    for i, name in enumerate(parents):
      if name not in node:
        raise KeyError(f"config has no field {'.'.join(parents[:i + 1])!r} (from {field!r})")
      node = node[name]
    if leaf not in node:
      raise KeyError(f"config has no field {field!r}")
    node[leaf] = _convert(field, node[leaf], text)
  return config


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--variant", action="append", required=True,
                 help="LABEL=FIELD=VALUE[,FIELD=VALUE...] (repeat; at least two, or one with "
                      "--torch). The first is the baseline.")
  p.add_argument("--torch", default="",
                 help="comma-separated PyTorch variants of torch_step.py "
                      f"({', '.join(torch_step.VARIANTS)}) to run in the same rotation, "
                      "e.g. --torch eager; adds the JAX / PyTorch speed-up table.")
  p.add_argument("--torch_losses", default="reference", choices=("reference", "fused"),
                 help="PyTorch losses, as torch_step.py --losses (default reference: the "
                      "originals' loss classes).")
  p.add_argument("--method", default="supervised", choices=sorted(C.NUM_CLASSES),
                 help="training method (default supervised).")
  p.add_argument("--precision", default="float32", choices=("float32", "bfloat16"),
                 help="model.dtype and disc.dtype of every variant before its overrides.")
  p.add_argument("--preset", default="cpu-small", choices=sorted(C.PRESETS),
                 help="shape preset, as in step_throughput.py (default cpu-small).")
  p.add_argument("--depth", default="resnet101",
                 help="resnet101 | resnet50 | tiny | 'a,b,c,d' (default resnet101).")
  C.add_shape_overrides(p)
  p.add_argument("--calls", type=int, default=20,
                 help="timed calls per variant (default 20).")
  p.add_argument("--warmup", type=int, default=2,
                 help="untimed calls per variant after its compiling call (default 2).")
  p.add_argument("--switch_calls", type=int, default=None,
                 help="untimed calls of a variant each time the rotation moves to it "
                      "(default 0, or 1 with --torch: on a 2-core VM the first JAX call "
                      "after PyTorch's, or after any idle second, took up to twice as long, "
                      "see benchmarks/RESULTS.md; a call right after another runs in the "
                      "steady state a training loop sees).")
  p.add_argument("--cpus", type=int, default=None,
                 help="pin the process to its first N CPUs before JAX starts.")
  p.add_argument("--host_malloc", default="tuned", choices=C.HOST_MALLOC_CHOICES,
                 help=C.HOST_MALLOC_HELP.replace("each case's process", "the process"))
  p.add_argument("--json", default=None, help="write the results to this JSON file.")
  args = p.parse_args(argv)
  try:
    variants = [parse_variant(v) for v in args.variant]
  except ValueError as e:
    p.error(str(e))
  args.torch = [v for v in args.torch.split(",") if v]
  for v in args.torch:
    if v not in torch_step.VARIANTS:
      p.error(f"--torch: unknown PyTorch variant {v!r}; choose from {torch_step.VARIANTS}")
  labels = [label for label, _ in variants] + [f"torch-{v}" for v in args.torch]
  if len(labels) < 2:
    p.error("give at least two --variant, or one --variant and --torch")
  if len(set(labels)) != len(labels):
    p.error(f"variant labels must differ, got {labels}")
  if args.calls < 1 or args.warmup < 0 or (args.switch_calls or 0) < 0:
    p.error("--calls must be >= 1, --warmup and --switch_calls >= 0")
  return args, variants


def _quartiles(values: Sequence[float]) -> Tuple[float, float]:
  """(p25, p75) of `values`; a single value is both."""
  if len(values) < 2:
    return values[0], values[0]
  q = statistics.quantiles(values, n=4)
  return q[0], q[2]


def summarise(label: str, overrides: Sequence[Override], wall_ms: Sequence[float],
              cpu_ms: Sequence[float], compile_s: float,
              faults: Sequence[int] = ()) -> Dict[str, Any]:
  p25, p75 = _quartiles(wall_ms)
  return {"variant": label, "overrides": dict(overrides), "compile_s": compile_s,
          "ms_median": statistics.median(wall_ms), "ms_p25": p25, "ms_p75": p75,
          "cpu_ms_median": statistics.median(cpu_ms), "ms_all": [round(x, 2) for x in wall_ms],
          "cpu_ms_all": [round(x, 2) for x in cpu_ms],
          "page_faults_median": statistics.median(faults) if faults else None,
          "page_faults_all": list(faults)}


def paired_speedups(results: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """JAX / PyTorch speed-up of every JAX result against every PyTorch result ('side')."""
  out = []
  for j in (r for r in results if r.get("side", "jax") == "jax"):
    for t in (r for r in results if r.get("side") == "torch"):
      ratios = [tm / jm for jm, tm in zip(j["ms_all"], t["ms_all"])]
      p25, p75 = _quartiles(ratios)
      out.append({"jax": j["variant"], "torch": t["variant"],
                  "speedup_of_medians": t["ms_median"] / j["ms_median"],
                  "speedup_paired_median": statistics.median(ratios),
                  "speedup_paired_p25": p25, "speedup_paired_p75": p75,
                  "cpu_ratio": t["cpu_ms_median"] / j["cpu_ms_median"]})
  return out


def speedup_table(pairs: Sequence[Dict[str, Any]]) -> str:
  rows = [[p["jax"], p["torch"], f"{p['speedup_of_medians']:.3f}x",
           f"{p['speedup_paired_median']:.3f}x",
           f"{p['speedup_paired_p25']:.3f}-{p['speedup_paired_p75']:.3f}x",
           f"{p['cpu_ratio']:.3f}x"] for p in pairs]
  return C.markdown_table(["JAX variant", "PyTorch variant", "JAX speed-up (medians)",
                           "per-round speed-up, median", "per-round p25-p75",
                           "CPU time PyTorch / JAX"], rows)


def table(results: Sequence[Dict[str, Any]]) -> str:
  base = results[0]["ms_median"]
  rows = [[r["variant"], ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "(config)",
           C.fmt(r["compile_s"]), C.fmt(r["ms_median"]),
           f"{C.fmt(r['ms_p25'])}-{C.fmt(r['ms_p75'])}", C.fmt(r["cpu_ms_median"]),
           C.fmt(r.get("page_faults_median"), ".0f"),
           f"{base / r['ms_median']:.3f}x"] for r in results]
  return C.markdown_table(["variant", "overrides", "compile s", "ms/iter median",
                           "p25-p75", "cpu-ms/iter", "page faults/iter",
                           f"speed-up vs {results[0]['variant']}"], rows)


def variant_configs(args, variants: Sequence[Tuple[str, List[Override]]]) -> List[Any]:
  """Each variant's validated config (one device): the method's benchmark config at the
  shape of `args`, then the variant's overrides. An unknown field or a bad value exits,
  naming the variant."""
  from advseg_jax.config.validation import validate  # pylint: disable=import-outside-toplevel
  shape = C.resolve_shape(args.preset, args.method, args.batch, args.crop, args.target_crop)
  _, depth = C.parse_depth(args.depth)
  configs = []
  for label, overrides in variants:
    cfg = step_throughput.build_config(args.method, args.precision, depth, args.width,
                                       C.NUM_CLASSES[args.method], shape.batch, "jit", 1)
    try:
      apply_overrides(cfg, overrides)
      validate(cfg, num_devices=1)
    except (KeyError, ValueError, TypeError, SyntaxError) as e:
      raise SystemExit(f"step_ab.py: --variant {label}: {str(e).strip(chr(34))}") from None
    configs.append(cfg)
  return configs


def main(argv=None) -> List[Dict[str, Any]]:
  args, variants = parse_args(argv)
  pinned = C.pin_cpus(args.cpus)
  if args.host_malloc == "tuned":
    C.reexec_with_hugepages()  # glibc reads its tunables at process start only
  malloc = C.set_host_malloc(args.host_malloc, check_platform=True)
  if args.torch:
    # On a GPU both frameworks allocate on the same device: JAX must not take 75% of its
    # memory up front (a user's own setting is kept).
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  import jax  # pylint: disable=import-outside-toplevel
  from advseg_jax import methods  # pylint: disable=import-outside-toplevel
  from advseg_jax.models import build_discriminator, build_generator  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.parallel import Parallel  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.state import create_train_states  # pylint: disable=import-outside-toplevel
  from advseg_jax.train.steps import make_train_step  # pylint: disable=import-outside-toplevel

  shape = C.resolve_shape(args.preset, args.method, args.batch, args.crop, args.target_crop)
  depth_name, depth = C.parse_depth(args.depth)
  par = Parallel("jit")
  num_classes = C.NUM_CLASSES[args.method]
  print(f"# step A/B: {args.method} {shape.label()} {depth_name} {args.precision}, "
        f"{len(variants)} variants x {args.calls} calls; {malloc}; CPUs {pinned or 'all'}",
        file=sys.stderr, flush=True)
  # Every variant's config first: a wrong field in the last one fails before any compile.
  configs = variant_configs(args, variants)
  batch, rng = None, jax.random.key(1)
  runs = []
  for (label, overrides), cfg in zip(variants, configs):
    g_model = build_generator(cfg.model, bn_axis_name=None)
    d_model = None if args.method == "supervised" else build_discriminator(cfg.disc)
    states = create_train_states(cfg, g_model, d_model, jax.random.key(cfg.seed))
    if batch is None:  # one input batch for every variant
      batch = par.shard_batch(step_throughput.host_batch(
          args.method, shape, methods.streams(args.method, cfg.method), num_classes, 1,
          cfg.seed))
    step = par.bind_train_step(make_train_step(cfg, g_model, d_model, None))
    t0 = time.perf_counter()
    compiled = step.lower(states, batch, rng).compile()
    compile_s = time.perf_counter() - t0
    for _ in range(1 + args.warmup):
      states, _ = compiled(states, batch, rng)
    jax.block_until_ready(states)
    print(f"# {label}: compiled in {compile_s:.1f} s", file=sys.stderr, flush=True)
    runs.append({"label": label, "overrides": overrides, "call": _jax_call(compiled, states,
                                                                           batch, rng),
                 "compile_s": compile_s, "wall": [], "cpu": [], "faults": [], "side": "jax"})
  if args.torch:
    runs += _torch_runs(args, shape, depth_name, depth, num_classes, pinned)
  switch_calls = args.switch_calls if args.switch_calls is not None else (1 if args.torch else 0)
  last = None
  for i in range(args.calls):
    for run in (runs if i % 2 == 0 else runs[::-1]):
      if run is not last:  # the rotation moved on to this run: untimed calls first
        for _ in range(switch_calls):
          run["call"]()
        last = run
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      c0, t0 = time.process_time(), time.perf_counter()
      run["call"]()
      run["wall"].append((time.perf_counter() - t0) * 1e3)
      run["cpu"].append((time.process_time() - c0) * 1e3)
      run["faults"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    if (i + 1) % 5 == 0 or i + 1 == args.calls:
      print(f"# round {i + 1}/{args.calls}", file=sys.stderr, flush=True)
  results = []
  for r in runs:
    res = summarise(r["label"], r["overrides"], r["wall"], r["cpu"], r["compile_s"],
                    r["faults"])
    res.update(side=r["side"], method=args.method, shape=shape.label(), depth=depth_name,
               precision=args.precision, host_malloc=malloc, cpus=pinned,
               switch_calls=switch_calls)
    res.update({"jax": jax.__version__} if r["side"] == "jax" else r["versions"])
    results.append(res)
  pairs = paired_speedups(results)
  machine = C.machine_info()
  print(f"# {machine.get('date', '')}, {machine.get('cpu')} ({machine.get('cpu_count')} CPUs), "
        f"jax {jax.__version__}")
  print(f"# command: python {' '.join(sys.argv)}")
  print()
  print(table(results))
  if pairs:
    print()
    print(speedup_table(pairs))
  C.write_json(args.json, {"machine": machine, "argv": sys.argv, "results": results,
                           "speedups": pairs})
  return results


def _jax_call(compiled, states, batch, rng):
  """One timed JAX call: the step on the run's own states, closed by block_until_ready."""
  import jax  # pylint: disable=import-outside-toplevel
  holder = [states]

  def call():
    holder[0], _ = compiled(holder[0], batch, rng)
    jax.block_until_ready(holder[0])

  return call


def _torch_runs(args, shape, depth_name, depth, num_classes, pinned) -> List[Dict[str, Any]]:
  """torch_step.py's iteration per --torch variant, built and warmed like the JAX runs."""
  import torch  # pylint: disable=import-outside-toplevel
  if pinned:
    torch.set_num_threads(len(pinned))
  device = "cuda" if torch.cuda.is_available() else "cpu"
  runs = []
  for variant in args.torch:
    case = torch_step.step_case(args.method, args.precision, variant, shape, depth_name, depth,
                                args.width, num_classes, device, args.torch_losses)
    t0 = time.perf_counter()
    step, sync, _ = torch_step.build_step(case)
    counter = [0]

    def call(step=step, sync=sync, counter=counter):
      step(counter[0])
      counter[0] += 1
      sync()

    for _ in range(1 + args.warmup):
      call()
    build_s = time.perf_counter() - t0
    print(f"# torch-{variant}: built and warmed in {build_s:.1f} s ({device}, "
          f"{torch.get_num_threads()} threads)", file=sys.stderr, flush=True)
    runs.append({"label": f"torch-{variant}", "overrides": [("torch", variant)],
                 "call": call, "compile_s": build_s, "wall": [], "cpu": [], "faults": [],
                 "side": "torch",
                 "versions": {"torch": torch.__version__, "torch_threads":
                              torch.get_num_threads(), "losses": args.torch_losses}})
  return runs


if __name__ == "__main__":
  main()
