"""Helpers shared by the preset files in `configs/` (they are loaded by path, so the shared
code lives in the package).

Preset arguments are `NAME[,OPTION...]`, e.g. `configs/voc.py:semi_0.125,runlocal`.
Options:
  runlocal   shrink the preset for a smoke run on a laptop CPU (`runlocal(config)`): tiny
             ResNet (1,1,1,1), width 8, D width 8, crops ~41 px, batch <= 2, 20 steps,
             log every step, evaluate / checkpoint every 10 steps on 8 examples. Everything
             else (method, losses, schedules, data streams) stays as in the preset.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

OPTIONS = ("runlocal",)


def parse_arg(arg: Optional[str], default: str) -> Tuple[str, Tuple[str, ...]]:
  """`'semi_0.125,runlocal'` -> `('semi_0.125', ('runlocal',))`; empty -> the default."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  options = tuple(p for p in parts if p in OPTIONS)
  names = [p for p in parts if p not in OPTIONS]
  if len(names) > 1:
    raise ValueError(f"config argument {arg!r}: one preset name expected, got {names}; "
                     f"options are {OPTIONS}")
  return (names[0] if names else default), options


def unknown_preset(family: str, name: str, known: Iterable[str]) -> ValueError:
  return ValueError(f"{family}: unknown preset {name!r}; known presets: {', '.join(known)} "
                    f"(optionally followed by ',runlocal')")


def _shrink_hw(hw: Optional[Sequence[int]], longest: int) -> Optional[Tuple[int, int]]:
  if hw is None:
    return None
  h, w = int(hw[0]), int(hw[1])
  s = longest / max(h, w)
  return max(17, int(round(h * s))), max(17, int(round(w * s)))


def runlocal(config: Any) -> Any:
  """Shrinks `config` in place for a smoke run (see the module docstring); returns it."""
  c = config
  c.model.depths = "tiny"
  c.model.width = 8
  c.disc.ndf = 8
  c.batch_size = min(int(c.batch_size), 2)
  c.iter_size = 1
  c.num_steps = 20
  c.num_steps_stop = None
  c.log_every = 1
  c.eval_every = 10
  c.checkpoint_every = 10
  c.eval_max_examples = 8
  c.method.semi_start = min(int(c.method.semi_start), 1)
  c.method.semi_start_adv = min(int(c.method.semi_start_adv), 1)
  for name in ("data", "target_data", "eval_data"):
    s = c[name]
    if s.crop_size is not None:
      s.crop_size = _shrink_hw(s.crop_size, 41)
    if s.resize_size is not None:
      s.resize_size = _shrink_hw(s.resize_size, 65)
    s.eval_resize_size = _shrink_hw(s.eval_resize_size, 65)
    s.num_workers = 0
    s.read_threads = 1
  return c


def apply_options(config: Any, options: Sequence[str]) -> Any:
  if "runlocal" in options:
    runlocal(config)
  return config


def set_fields(config: Any, fields: Dict[str, Any]) -> Any:
  """`{'method.lambda_adv': 0.01, ...}` -> config (dotted paths)."""
  for path, value in fields.items():
    *parents, leaf = path.split(".")
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config
