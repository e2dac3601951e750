"""advseg_jax.host_malloc: when the glibc settings apply, and that they stop XLA:CPU from
page-faulting its scratch buffer in on every execution."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from advseg_jax import host_malloc

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLIBC = host_malloc._glibc() is not None  # pylint: disable=protected-access


def _clean_env(monkeypatch):
  for v in host_malloc._USER_VARIABLES + ("GLIBC_TUNABLES", host_malloc.ENV_SWITCH):  # pylint: disable=protected-access
    monkeypatch.delenv(v, raising=False)


@pytest.mark.skipif(not GLIBC, reason="needs Linux with glibc")
def test_skip_reasons(monkeypatch):
  _clean_env(monkeypatch)
  assert host_malloc.skip_reason(check_platform=False) is None
  monkeypatch.setenv(host_malloc.ENV_SWITCH, "default")
  assert host_malloc.ENV_SWITCH in host_malloc.skip_reason(check_platform=False)
  monkeypatch.delenv(host_malloc.ENV_SWITCH)
  monkeypatch.setenv("MALLOC_ARENA_MAX", "4")            # the user's own setting wins
  assert "MALLOC_ARENA_MAX" in host_malloc.skip_reason(check_platform=False)
  monkeypatch.delenv("MALLOC_ARENA_MAX")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1")
  assert "GLIBC_TUNABLES" in host_malloc.skip_reason(check_platform=False)
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setattr(host_malloc, "jax_will_use_cpu", lambda: False)
  assert "accelerator" in host_malloc.skip_reason(check_platform=True)
  assert host_malloc.skip_reason(check_platform=False) is None


def test_platform_detection(monkeypatch):
  monkeypatch.setattr(host_malloc, "_requested_platforms", lambda: "cuda,cpu")
  assert not host_malloc.jax_will_use_cpu()
  monkeypatch.setattr(host_malloc, "_requested_platforms", lambda: "cpu")
  assert host_malloc.jax_will_use_cpu()
  monkeypatch.setattr(host_malloc, "_requested_platforms", lambda: "")
  monkeypatch.setattr(host_malloc, "_accelerator_plugins", lambda: ["xla_cuda12"])
  assert not host_malloc.jax_will_use_cpu()
  monkeypatch.setattr(host_malloc, "_accelerator_plugins", lambda: [])
  assert host_malloc.jax_will_use_cpu()


_CHILD = textwrap.dedent("""
    import json, resource, sys
    from advseg_jax import host_malloc
    applied = host_malloc.configure()
    import jax, jax.numpy as jnp
    n = 3500                     # a [3500, 3500] float32 intermediate: a 49 MB scratch buffer
    f = jax.jit(lambda v: (v[:, None] * v[None, :] @ v[::-1]) @ v)
    v = jnp.linspace(0.0, 1.0, n, dtype=jnp.float32)
    for _ in range(8):           # executions start on either executor thread: warm both arenas
      f(v).block_until_ready()
    faults = []
    for _ in range(10):
      r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(v).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
    print(json.dumps({"applied": applied, "describe": host_malloc.describe(),
                      "faults": faults, "value": float(f(v))}))
""")


def _run_child(switch: str) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in host_malloc._USER_VARIABLES + ("GLIBC_TUNABLES",)}  # pylint: disable=protected-access
  env.update({host_malloc.ENV_SWITCH: switch, "JAX_PLATFORMS": "cpu",
              "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
  proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                        timeout=300, env=env, cwd=REPO)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="needs Linux with glibc")
def test_tuned_malloc_stops_per_execution_page_faults():
  default = _run_child("default")
  tuned = _run_child("tuned")
  assert not default["applied"] and "glibc defaults" in default["describe"]
  assert tuned["applied"] and "tuned for XLA:CPU" in tuned["describe"]
  pages = 3500 * 3500 * 4 // 4096  # 12.0k pages of 4 KiB
  # glibc defaults: the scratch buffer is mmap'ed fresh and faulted in on every execution.
  assert min(default["faults"]) > 0.5 * pages, default
  # Tuned: it stays mapped in the heap, so most executions hardly fault at all (one may still
  # grow a thread's heap once, when glibc places a block differently).
  assert sum(n < 0.1 * pages for n in tuned["faults"]) >= 6, tuned
  assert tuned["value"] == default["value"]           # same computation, same result
  print("minor faults per execution: default", default["faults"], "tuned", tuned["faults"])
