"""Shared pieces of the step-throughput benchmarks (JAX engine and PyTorch step).

Imports neither JAX nor torch: both `step_throughput.py` and `torch_step.py` use it so the
two sides agree on shapes, presets, timing and the result format.

A *case* is one (method, precision, shape) measurement. Each case normally runs in a fresh
child process (peak-memory counters cannot be reset in JAX, and a crashed or OOM case must
not take the others down); the child prints one line `RESULT_JSON {...}` that the parent
collects.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

METHODS = ("supervised", "advsemi", "adaptseg")
PRECISIONS = ("float32", "bfloat16")
RESULT_PREFIX = "RESULT_JSON "

# Classes per method: VOC (21) for supervised/advsemi, Cityscapes (19) for adaptseg.
NUM_CLASSES = {"supervised": 21, "advsemi": 21, "adaptseg": 19}

HW = Tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Shape:
  """Per-device batch and crops. `crop` is the labelled/source crop; `target` the adaptseg
  target-domain crop (None for the other methods)."""
  batch: int
  crop: HW
  target: Optional[HW] = None

  def label(self) -> str:
    s = f"{self.batch}x{self.crop[0]}x{self.crop[1]}"
    if self.target is not None:
      s += f"+{self.target[0]}x{self.target[1]}"
    return s


# Presets: per-device shapes. 'original' = the originals' training shapes (docs/FIDELITY.md §6.1
# batch 10 at 321x321; §7.1 batch 1 at 720x1280 source + 512x1024 target). 'large' = bigger
# per-device batches for a big accelerator. 'cpu-small' = small shapes that a 2-core CPU
# runs in seconds (the originals' aspect ratios, odd sizes like 321).
PRESETS: Dict[str, Dict[str, Shape]] = {
    "original": {
        "supervised": Shape(10, (321, 321)),
        "advsemi": Shape(10, (321, 321)),
        "adaptseg": Shape(1, (720, 1280), (512, 1024)),
    },
    "large": {
        "supervised": Shape(32, (321, 321)),
        "advsemi": Shape(20, (321, 321)),
        "adaptseg": Shape(2, (720, 1280), (512, 1024)),
    },
    "cpu-small": {
        "supervised": Shape(2, (97, 97)),
        "advsemi": Shape(2, (97, 97)),
        "adaptseg": Shape(1, (97, 161), (65, 129)),
    },
}

# Default model depth per preset ('tiny' keeps the default CPU run short; pass
# --depth resnet101 for the real network).
PRESET_DEPTH = {"original": "resnet101", "large": "resnet101", "cpu-small": "tiny"}
DEPTHS = {"resnet101": (3, 4, 23, 3), "resnet50": (3, 4, 6, 3), "tiny": (1, 1, 1, 1)}


def parse_depth(s: str) -> Tuple[str, Tuple[int, int, int, int]]:
  """'resnet101' | 'resnet50' | 'tiny' | 'a,b,c,d' -> (name, blocks per layer)."""
  if s in DEPTHS:
    return s, DEPTHS[s]
  try:
    d = tuple(int(x) for x in s.split(","))
  except ValueError:
    d = ()
  if len(d) != 4 or min(d) < 1:
    raise ValueError(f"--depth must be one of {sorted(DEPTHS)} or four positive ints "
                     f"'a,b,c,d', got {s!r}")
  return ",".join(map(str, d)), d  # type: ignore[return-value]


def parse_hw(s: str) -> HW:
  parts = s.lower().replace("x", ",").split(",")
  if len(parts) != 2:
    raise ValueError(f"expected HxW, got {s!r}")
  return int(parts[0]), int(parts[1])


def resolve_shape(preset: str, method: str, batch: Optional[int], crop: Optional[str],
                  target: Optional[str]) -> Shape:
  base = PRESETS[preset][method]
  t = base.target
  if method == "adaptseg" and target:
    t = parse_hw(target)
  return Shape(batch or base.batch, parse_hw(crop) if crop else base.crop,
               t if method == "adaptseg" else None)


def generator_images(method: str, shape: Shape) -> int:
  """Images that go through G in one iteration (the images/s numerator).

  supervised: B labelled; advsemi: B labelled + B unlabelled (the B ground-truth label maps
  only feed D); adaptseg: B source + B target.
  """
  return shape.batch * (1 if method == "supervised" else 2)


# ----------------------------------------------------------------------------- timing
def time_iterations(step: Callable[[], None], sync: Callable[[], None], *, warmup: int,
                    repeats: int, iters: int) -> Dict[str, Any]:
  """Runs `warmup` iterations, then `repeats` x (`iters` iterations, `sync()`), timing each
  repeat with `time.perf_counter`. Returns ms/iteration: median, min, max and all repeats,
  plus the median process CPU time per iteration (`cpu_ms_median`, all threads summed; on a
  shared CPU it moves less with other people's load than wall time does)."""
  for _ in range(warmup):
    step()
  sync()
  per_iter, cpu_per_iter = [], []
  for _ in range(repeats):
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(iters):
      step()
    sync()
    per_iter.append((time.perf_counter() - t0) * 1e3 / iters)
    cpu_per_iter.append((time.process_time() - c0) * 1e3 / iters)
  return {"ms_median": statistics.median(per_iter), "ms_min": min(per_iter),
          "ms_max": max(per_iter), "ms_all": [round(x, 3) for x in per_iter],
          "cpu_ms_median": statistics.median(cpu_per_iter)}


# ----------------------------------------------------------------------------- environment
def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def load_average() -> Optional[Tuple[float, float, float]]:
  try:
    return tuple(round(x, 2) for x in os.getloadavg())  # type: ignore[return-value]
  except OSError:
    return None


def max_rss_gib() -> float:
  """Peak resident set size of this process (Linux ru_maxrss is in KiB)."""
  import resource  # pylint: disable=import-outside-toplevel
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def machine_info() -> Dict[str, Any]:
  return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "loadavg": load_average(),
          "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ----------------------------------------------------------------------------- child processes
def add_shape_overrides(p) -> None:
  """The flags that override a preset's shapes (`resolve_shape`) and the stem width:
  --width, --batch, --crop, --target_crop."""
  p.add_argument("--width", type=int, default=64, help="stem width (64 = the originals).")
  p.add_argument("--batch", type=int, default=None, help="per-device batch (overrides preset).")
  p.add_argument("--crop", default=None, help="labelled/source crop HxW (overrides preset).")
  p.add_argument("--target_crop", default=None, help="adaptseg target crop HxW.")


def pin_cpus(n: Optional[int]) -> Optional[List[int]]:
  """Restricts this process to its first `n` allowed CPUs (before JAX / torch start their
  thread pools, which size themselves from the affinity mask). None = leave as is."""
  if not n:
    return None
  allowed = sorted(os.sched_getaffinity(0))
  if n > len(allowed):
    raise ValueError(f"--cpus {n}: only {len(allowed)} CPUs are available")
  os.sched_setaffinity(0, set(allowed[:n]))
  return allowed[:n]


HOST_MALLOC_CHOICES = ("tuned", "default")
HOST_MALLOC_HELP = ("host allocator of each case's process: tuned = "
                    "advseg_jax.kernels.host_malloc (glibc backs its memory with transparent "
                    "huge pages and keeps scratch buffers up to 64 MB mapped between steps), "
                    "default = glibc's defaults. Both sides of compare.py get the same "
                    "setting. Default tuned.")


def host_malloc_child_env(choice: Optional[str], env: Optional[dict], *,
                          check_platform: bool) -> Optional[dict]:
  """Parent side: the environment for a case's child process. 'tuned' adds glibc's huge-page
  tunable (read at process start only)."""
  from advseg_jax.kernels import host_malloc  # pylint: disable=import-outside-toplevel
  if (choice or "tuned") != "tuned" or host_malloc.skip_reason(check_platform) is not None:
    return env
  return host_malloc.hugepage_environment(env)


def reexec_with_hugepages() -> None:
  """Process entry of a benchmark: re-executes this process, same interpreter and arguments,
  with `host_malloc.hugepage_environment()` (glibc reads its tunables at process start only)
  when `host_malloc.skip_reason()` is None and huge pages are not requested yet. Returns
  without doing anything otherwise (also after the re-exec: the marker variable stops a loop
  where glibc ignores the tunable)."""
  from advseg_jax.kernels import host_malloc  # pylint: disable=import-outside-toplevel
  if host_malloc.TUNABLE_MARKER in os.environ or host_malloc.skip_reason() is not None:
    return
  argv = list(getattr(sys, "orig_argv", None) or [])
  if not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, argv, host_malloc.hugepage_environment())


def set_host_malloc(choice: Optional[str], *, check_platform: bool) -> str:
  """Child side, first thing in a case: applies `choice` ('tuned' | 'default');
  returns advseg_jax.kernels.host_malloc.describe() for the result."""
  from advseg_jax.kernels import host_malloc  # pylint: disable=import-outside-toplevel
  if (choice or "tuned") != "tuned":
    return "host malloc: glibc defaults (--host_malloc default)"
  host_malloc.configure(check_platform=check_platform)
  return host_malloc.describe()


def emit(result: Dict[str, Any]) -> None:
  """Child side: print one result line for the parent."""
  print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def run_child(argv: Sequence[str], *, timeout: Optional[float], env: Optional[dict] = None,
              echo: bool = True) -> List[Dict[str, Any]]:
  """Runs `python argv...` and returns the RESULT_JSON lines it printed. A child that dies
  (OOM, crash, timeout) yields one result with an 'error' field instead."""
  cmd = [sys.executable] + list(argv)
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or os.environ.copy())
  except subprocess.TimeoutExpired:
    return [{"error": f"timeout after {timeout}s", "cmd": " ".join(cmd)}]
  results = []
  for line in proc.stdout.splitlines():
    if line.startswith(RESULT_PREFIX):
      results.append(json.loads(line[len(RESULT_PREFIX):]))
    elif echo and line.strip():
      print("  | " + line, file=sys.stderr)
  if proc.returncode != 0 and not results:
    tail = (proc.stderr or "").strip().splitlines()[-6:]
    results.append({"error": f"exit {proc.returncode}: " + " / ".join(tail)[-600:],
                    "cmd": " ".join(cmd)})
  elif proc.returncode != 0:
    for r in results:
      r.setdefault("warning", f"child exit code {proc.returncode}")
  return results


# ----------------------------------------------------------------------------- tables
def fmt(v: Any, spec: str = ".1f", none: str = "n/a") -> str:
  if v is None:
    return none
  if isinstance(v, str):
    return v
  try:
    return format(v, spec)
  except (TypeError, ValueError):
    return str(v)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for r in rows:
    out.append("| " + " | ".join(str(c) for c in r) + " |")
  return "\n".join(out)


def write_json(path: Optional[str], payload: Any) -> None:
  """Writes `payload` to `path` (nothing without a path) through a temporary file and a
  rename, so a process killed mid-write leaves the previous file whole."""
  if not path:
    return
  d = os.path.dirname(os.path.abspath(path))
  os.makedirs(d, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=1, default=str)
  os.replace(tmp, path)
