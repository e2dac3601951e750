"""glibc malloc settings that stop XLA:CPU from page-faulting its scratch buffers in every step.

XLA:CPU allocates each execution's temporary buffer with `posix_memalign` on its executor
thread, and frees it when the execution ends. glibc serves a request above its mmap threshold
(at most 32 MB) with a fresh `mmap` and gives it back with `munmap`, and it returns freed heap
memory to the system once more than the trim threshold is free; either way the next execution
faults the buffer in again, 4 KB page by 4 KB page, in the kernel. For the ResNet-101
supervised step at 2x97x97 (a 260 MB buffer) that was 74k page faults and 100-145 ms of kernel
time per step on 2 CPU cores.

Two measures (benchmarks/RESULTS.md has the figures):
1. `hugepage_environment()`: the environment for a new process with
   `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` added (glibc >= 2.35 reads it at start only).
   glibc then asks for transparent huge pages (madvise mode, the usual system default), so
   a fresh buffer is faulted in 2 MB at a time: 74k -> about 650 faults per step.
2. `configure()` sets, through `mallopt`:
     M_MMAP_MAX = 0           blocks come from the heap, not from their own mapping,
     M_TRIM_THRESHOLD = 2 GiB the heap is not shrunk after each step,
   so a freed buffer up to 64 MB (the most a thread's arena holds; glibc maps larger ones
   whatever M_MMAP_MAX says) is reused by the next step with its pages still mapped.
A single arena (M_ARENA_MAX=1) would also keep the larger buffers mapped, but every thread
would then wait on one allocator lock, so it is not set.

Both are opt-in: nothing in the library calls them; the benchmarks do (`--host_malloc
tuned`, benchmarks/speed/_common.py). They apply only on Linux with glibc, when JAX runs on CPU,
and not when the user set any glibc malloc variable (MALLOC_ARENA_MAX, MALLOC_MMAP_MAX_,
MALLOC_TRIM_THRESHOLD_, ..., GLIBC_TUNABLES=glibc.malloc.*); `ADVSEG_JAX_HOST_MALLOC=default`
turns them off. The cost: the process keeps its peak heap (like a caching allocator),
rounded to huge pages.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import os
import sys
from typing import Dict, Optional

ENV_SWITCH = "ADVSEG_JAX_HOST_MALLOC"
SETTINGS = {"M_MMAP_MAX": (-4, 0),
            "M_TRIM_THRESHOLD": (-1, 2**31 - 1)}  # mallopt(param, value); value is a C int
_USER_VARIABLES = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_",
                   "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_")

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"  # glibc >= 2.35: madvise(MADV_HUGEPAGE) its memory
TUNABLE_MARKER = "ADVSEG_JAX_HOST_MALLOC_TUNABLE"  # names the tunable this module added

_state: Dict[str, Optional[str]] = {"applied": None, "reason": None}


def _tunables(env) -> list:
  """The entries of `env`'s GLIBC_TUNABLES."""
  return [t for t in env.get("GLIBC_TUNABLES", "").split(":") if t]


def _user_tunables(env) -> str:
  """GLIBC_TUNABLES of `env` without the entry this module added."""
  return ":".join(t for t in _tunables(env) if t != env.get(TUNABLE_MARKER))


def hugepage_environment(env=None) -> dict:
  """A copy of `env` (default os.environ) whose GLIBC_TUNABLES also asks glibc to back its
  allocations with transparent huge pages (2 MB pages: 512x fewer page faults when a buffer is
  mapped afresh). glibc reads tunables at process start only, so this is for a new process."""
  env = dict(os.environ if env is None else env)
  tunables = _tunables(env)
  if HUGEPAGE_TUNABLE not in tunables:
    env["GLIBC_TUNABLES"] = ":".join(tunables + [HUGEPAGE_TUNABLE])
    env[TUNABLE_MARKER] = HUGEPAGE_TUNABLE
  return env


def hugepages_active() -> bool:
  return HUGEPAGE_TUNABLE in _tunables(os.environ)


def _glibc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None)
    libc.gnu_get_libc_version.restype = ctypes.c_char_p
    libc.gnu_get_libc_version()
    return libc if hasattr(libc, "mallopt") else None
  except (OSError, AttributeError):
    return None


def _accelerator_plugins() -> list:
  """Names of installed non-CPU JAX PJRT plugins (found without starting any backend)."""
  try:
    eps = importlib.metadata.entry_points(group="jax_plugins")
  except TypeError:  # pragma: no cover - Python < 3.10
    eps = importlib.metadata.entry_points().get("jax_plugins", [])
  return [ep.name for ep in eps]


def _requested_platforms() -> str:
  """JAX's `jax_platforms` setting (or JAX_PLATFORMS), '' when unset."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  jax_mod = sys.modules.get("jax")
  if jax_mod is not None:
    platforms = getattr(jax_mod.config, "jax_platforms", None) or platforms
  return platforms or ""


def jax_will_use_cpu() -> bool:
  """True when JAX's default backend will be the CPU: `jax_platforms` (JAX_PLATFORMS)
  starts with 'cpu', or it is unset and no accelerator plugin is installed."""
  platforms = _requested_platforms()
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not _accelerator_plugins()


def skip_reason(check_platform: bool = True) -> Optional[str]:
  """Why `configure()` would not apply the settings now (None = it would)."""
  if os.environ.get(ENV_SWITCH, "tuned").lower() in ("default", "off", "0", "false"):
    return f"{ENV_SWITCH}={os.environ[ENV_SWITCH]}"
  user = [v for v in _USER_VARIABLES if v in os.environ]
  if "glibc.malloc" in _user_tunables(os.environ):
    user.append("GLIBC_TUNABLES")
  if user:
    return f"the environment sets {', '.join(user)}"
  if _glibc() is None:
    return "not Linux with glibc"
  if check_platform and not jax_will_use_cpu():
    return "JAX will run on an accelerator"
  return None


def configure(check_platform: bool = True) -> bool:
  """Applies `SETTINGS` once per process if `skip_reason()` is None; True when applied.

  check_platform=False skips the JAX checks (the PyTorch benchmark uses it to run under
  the same allocator settings as the JAX side).
  """
  if _state["applied"] is not None:
    return _state["applied"] == "yes"
  reason = skip_reason(check_platform)
  if reason is None:
    libc = _glibc()
    for name, (param, value) in SETTINGS.items():
      if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
        reason = f"mallopt({name}, {value}) failed"
        break
  _state["applied"] = "yes" if reason is None else "no"
  _state["reason"] = reason
  return reason is None


def describe() -> str:
  """One line for logs and benchmark headers: what `configure()` did."""
  if _state["applied"] is None:
    return "host malloc: glibc defaults (configure() not called)"
  if _state["applied"] == "yes":
    parts = (["transparent huge pages"] if hugepages_active() else []) + [
        f"{k}={v}" for k, (_, v) in SETTINGS.items()]
    return (f"host malloc: tuned for XLA:CPU ({', '.join(parts)}; {ENV_SWITCH}=default to "
            "turn off)")
  return f"host malloc: glibc defaults ({_state['reason']})"
