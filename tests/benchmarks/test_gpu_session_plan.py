"""benchmarks/gpu_session.sh: every GPU measurement it would run parses and fits its call.

A lent GPU session has about 15 minutes of device time, so a renamed flag or an unknown
config field in the script would cost one of its few calls. `GPU_SESSION_PLAN=1` makes the
script print its commands instead of running them; each command's arguments then go through
the same parsing, case building and config validation its benchmark does before it starts
JAX or PyTorch, with the real (GPU) shapes, without running anything.
"""

import os
import shlex
import subprocess

import pytest

from tests.benchmarks import scripts

_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
_SCRIPT = os.path.join(_ROOT, "benchmarks", "gpu_session.sh")
_OUT = "/device/out"      # stands for the device tool's $OUT
_CALL_LIMIT_S = 570       # the device tool allows 600 s per call; the script promises 9.5 min


def _load(name):
  return scripts.load(f"speed/{name}.py", f"gpu_plan_{name}")


def plan(part, **env):
  """[(name, limit_s, argv)] that `gpu_session.sh PART` would run."""
  full_env = {k: v for k, v in os.environ.items()
              if not k.startswith("GPU_SESSION_") and k != "PYTHON"}
  full_env.update(GPU_SESSION_PLAN="1", OUT=_OUT, **env)
  proc = subprocess.run(["bash", _SCRIPT, part], capture_output=True, text=True, env=full_env,
                        cwd=_ROOT, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  steps = []
  for line in proc.stdout.splitlines():
    name, limit, *argv = shlex.split(line)
    steps.append((name, int(limit), argv))
  return steps


@pytest.mark.parametrize("part", ["targets", "rest"])
def test_each_part_fits_one_device_call_and_writes_to_out(part):
  steps = plan(part)
  assert steps, f"gpu_session.sh {part} planned nothing"
  assert sum(limit for _, limit, _ in steps) <= _CALL_LIMIT_S
  for name, _, argv in steps:
    assert argv[0] == "python3" and argv[1].startswith("benchmarks/"), argv
    outputs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--json", "--markdown")]
    assert outputs, f"{name} keeps no result file"
    assert all(o.startswith(_OUT + "/") for o in outputs), outputs


def test_targets_measure_what_the_issue_asks():
  steps = {name: argv for name, _, argv in plan("targets")}
  advsemi = steps["advsemi"]
  assert advsemi[1] == "benchmarks/speed/compare.py"
  assert "--preset" in advsemi and advsemi[advsemi.index("--preset") + 1] == "original"
  assert advsemi[advsemi.index("--dtypes") + 1] == "float32,bfloat16"
  mem = steps["adaptseg_24gb"]
  assert mem[mem.index("--gpu_mem_limit_gb") + 1] == "24"
  assert mem[mem.index("--dtypes") + 1] == "float32"


def _step_throughput_cases(step_throughput, argv):
  return step_throughput.make_cases(step_throughput.parse_args(argv))


def _check_compare(compare, argv):
  """compare.py's arguments, then each selection's argument lists through the modules it
  runs (compare.step_throughput and compare.torch_step); returns the JAX case count."""
  args = compare.parse_args(argv)
  n = 0
  for sel in compare.selections(args):
    argvs = compare.side_argvs(args, sel)
    n += len(_step_throughput_cases(compare.step_throughput, argvs["jax"]))
    torch_args = compare.torch_step.parse_args(argvs["torch"] + ["--device", "cuda"])
    assert compare.torch_step.make_cases(torch_args)
  return n


def _check(argv):
  script = os.path.basename(argv[1])
  if script == "compare.py":
    assert _check_compare(_load("compare"), argv[2:]) > 0
  elif script == "step_throughput.py":
    assert _step_throughput_cases(_load("step_throughput"), argv[2:])
  elif script == "step_ab.py":
    step_ab = _load("step_ab")
    args, variants = step_ab.parse_args(argv[2:])
    configs = step_ab.variant_configs(args, variants)
    assert len(configs) == len(variants)
  else:
    raise AssertionError(f"no check for {script}")


@pytest.mark.parametrize("part", ["targets", "rest"])
@pytest.mark.parametrize("env", [{}, {"GPU_SESSION_PRESET": "cpu-small",
                                       "GPU_SESSION_DEPTH": "tiny"}],
                         ids=["gpu-shapes", "cpu-dry-run"])
def test_every_command_parses_and_builds_its_cases(part, env):
  for _, _, argv in plan(part, **env):
    _check(argv)


def test_plan_mode_runs_nothing(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, GPU_SESSION_PLAN="1", OUT=str(out), PYTHON="/nonexistent/python")
  proc = subprocess.run(["bash", _SCRIPT, "targets"], capture_output=True, text=True, env=env,
                        cwd=_ROOT, timeout=60, check=False)
  assert proc.returncode == 0, proc.stderr
  assert "/nonexistent/python benchmarks/speed/compare.py" in proc.stdout
  assert not out.exists()
