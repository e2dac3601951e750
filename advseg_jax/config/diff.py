"""Comparing a workdir's saved config with a new one (the resume check of `train`).

    saved = config_to_dict(config)                  # what `config.json` / checkpoints store
    diffs = config_differences(saved, config_to_dict(new_config))
    print(format_differences(diffs))                # "method.lambda_adv: 0.01 -> 0.5; ..."

Operational fields (`OPERATIONAL_FIELDS`, and `OPERATIONAL_STREAM_FIELDS` of every data
stream) may differ without `--allow_config_change`: they change how often things are logged,
saved or evaluated, where data is read from, or how the run is spread over devices or computed
(float rounding only), but not the training trajectory.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np

from advseg_jax.config.defaults import base_config

OPERATIONAL_FIELDS = (
    "log_every", "eval_every", "checkpoint_every", "keep_checkpoints", "eval_max_examples",
    "num_steps_stop", "parallel.mode", "model.pointwise_impl", "model.conv_dx_impl",
    "model.aspp_impl",
    "diagnostics.grad_norms", "diagnostics.d_wins_threshold", "diagnostics.d_wins_patience",
    "diagnostics.d_collapse_accuracy", "init.checkpoint", "init.rule", "init.d_checkpoint")
OPERATIONAL_STREAM_FIELDS = ("data_dir", "manual_dir", "num_workers", "read_threads",
                             "skip_bad_examples")
ABSENT = "<absent>"


def json_default(x: Any) -> Any:
  """`json.dumps(default=...)` for numpy scalars / arrays and sets; `repr` otherwise."""
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.floating):
    return float(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (set, frozenset)):
    return sorted(x)
  return repr(x)


def json_normal(x: Any) -> Any:
  """`x` as it reads back from JSON (tuples -> lists, numpy -> Python numbers)."""
  return json.loads(json.dumps(x, default=json_default))


def config_to_dict(config: Any) -> Dict[str, Any]:
  """A JSON-normal dict of a ConfigDict (tuples -> lists, references resolved)."""
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json_normal(config)


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
  out: Dict[str, Any] = {}
  if isinstance(d, Mapping):
    for k, v in d.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    if not d and prefix:
      out[prefix[:-1]] = {}
  else:
    out[prefix[:-1]] = d
  return out


def is_operational(field: str) -> bool:
  """Whether a dotted field may change on resume without `--allow_config_change`."""
  if field in OPERATIONAL_FIELDS:
    return True
  parts = field.split(".")
  return len(parts) == 2 and parts[1] in OPERATIONAL_STREAM_FIELDS


def _default_fields() -> Dict[str, Any]:
  return _flatten(config_to_dict(base_config()))


def config_differences(saved: Mapping[str, Any], new: Mapping[str, Any], *,
                       include_operational: bool = False) -> List[Tuple[str, Any, Any]]:
  """`[(field, saved_value, new_value)]` of the fields that differ (missing = '<absent>').

  A field the saved config lacks and the new one holds at its `base_config()` default is no
  difference: it was added by a later version, whose defaults reproduce the earlier
  behaviour, so a run saved before it existed trained as the default does.
  """
  a, b = _flatten(json_normal(saved)), _flatten(json_normal(new))
  defaults = _default_fields()
  diffs = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, ABSENT), b.get(k, ABSENT)
    if va == ABSENT and k in defaults and vb == defaults[k]:
      continue
    if va != vb and (include_operational or not is_operational(k)):
      diffs.append((k, va, vb))
  return diffs


def format_differences(diffs: Sequence[Tuple[str, Any, Any]]) -> str:
  """`'field: old -> new; ...'` (values as `repr`)."""
  return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diffs)
