"""Loading a generator or discriminator for inference from a model directory, a training
workdir or one checkpoint step directory.

A training workdir gives its final model (`final_model/`, else the latest readable
checkpoint), as the originals report the model of their last iteration; its `best_model/`
(the step with the highest mIoU on the evaluation set) only on request (`best=True`).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Mapping, Optional, Tuple

import ml_collections
import orbax.checkpoint as ocp

from advseg_jax import model_io
from advseg_jax.train.checkpoint import (BEST_MODEL, CHECKPOINT_DIR, FINAL_MODEL, CheckpointError,
                                         _abs, _one_line, valid_steps)
from advseg_jax.train.export import discriminator_spec_from_config, generator_spec_from_config

log = logging.getLogger(__name__)


def _is_model_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, model_io.SPEC_FILE))


def _config_from_meta(meta: Mapping[str, Any], where: str):
  cfg = meta.get("config")
  if not isinstance(cfg, Mapping):
    raise CheckpointError(f"{where}: meta has no config")
  return ml_collections.ConfigDict(cfg)


def _restore_raw_step(step_dir: str) -> Tuple[Dict[str, Any], Optional[Dict[str, Any]],
                                               Dict[str, Any]]:
  """(g_state dict, d_state dict or None, meta) of one step directory, without templates."""
  out = {}
  try:
    with ocp.StandardCheckpointer() as ckptr:
      out["g"] = ckptr.restore(os.path.join(step_dir, "g_state"))
      d_dir = os.path.join(step_dir, "d_state")
      out["d"] = ckptr.restore(d_dir) if os.path.isdir(d_dir) else None
    meta_dir = os.path.join(step_dir, "meta")
    meta_files = [f for f in os.listdir(meta_dir) if not f.startswith(("_", "commit"))]
    with open(os.path.join(meta_dir, meta_files[0])) as f:
      meta = json.load(f)
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"checkpoint {step_dir} is unreadable ({_one_line(e)})") from None
  return out["g"], out["d"], meta


def _load_from_checkpoints(workdir: str, want: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  ckpt_dir = os.path.join(workdir, CHECKPOINT_DIR)
  problems = []
  for step in valid_steps(ckpt_dir):
    step_dir = os.path.join(ckpt_dir, str(step))
    try:
      return _variables_from_step(step_dir, want)
    except CheckpointError as e:
      problems.append(str(e))
      log.warning("%s; trying an older step", e)
  raise CheckpointError(f"{workdir}: no usable checkpoint in {ckpt_dir}"
                        + (f" ({'; '.join(problems)})" if problems else ""))


def _variables_from_step(step_dir: str, want: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  g, d, meta = _restore_raw_step(step_dir)
  config = _config_from_meta(meta, step_dir)
  step = int(meta.get("step", -1))
  if want == "generator":
    variables = {"params": g["params"], "batch_stats": g.get("batch_stats") or {}}
    spec = generator_spec_from_config(config, step=step, source={"checkpoint": step_dir})
    return variables, spec
  spec = discriminator_spec_from_config(config)
  if spec is None or d is None:
    raise CheckpointError(f"{step_dir}: no discriminator usable for inference (method "
                          f"{config.method.name}, disc.arch {config.disc.arch})")
  params = d["params"]
  level = "main" if "main" in params else sorted(params)[-1]
  spec["level"] = level
  spec["step"] = step
  return {"params": params[level]}, spec


# What `choose_model` found: a model directory given directly, one checkpoint step
# directory, or a training workdir's final model, latest checkpoint or best model.
MODEL_DIR, STEP_DIR, FINAL, LATEST_CHECKPOINT, BEST = (
    "model directory", "checkpoint step", "final model", "latest checkpoint", "best model")


def _is_step_dir(path: str) -> bool:
  return (os.path.basename(os.path.dirname(path)) == CHECKPOINT_DIR
          and os.path.basename(path).isdigit())


def _spec_step(model_dir: str) -> int:
  try:
    return int(model_io.read_spec(model_dir).get("step", -1))
  except (ValueError, TypeError):  # ModelFormatError is a ValueError
    return -1


def _choose_in_workdir(path: str, best: bool) -> Tuple[str, str]:
  if best:
    if not _is_model_dir(os.path.join(path, BEST_MODEL)):
      raise CheckpointError(f"{path}: no {BEST_MODEL}/ (training writes it when it "
                            f"evaluates, every eval_every steps)")
    return BEST, os.path.join(path, BEST_MODEL)
  steps = valid_steps(os.path.join(path, CHECKPOINT_DIR))
  final = os.path.join(path, FINAL_MODEL)
  # A run extended past an earlier end and stopped early has checkpoints newer than final_model.
  if _is_model_dir(final) and (not steps or _spec_step(final) >= steps[0]):
    return FINAL, final
  if steps:
    return LATEST_CHECKPOINT, os.path.join(path, CHECKPOINT_DIR)
  raise CheckpointError(f"{path}: neither a model directory ({model_io.SPEC_FILE}) nor a "
                        f"training workdir ({FINAL_MODEL}/ or {CHECKPOINT_DIR}/"
                        + (f"; its {BEST_MODEL}/ is used only on request: evaluate --best)"
                           if _is_model_dir(os.path.join(path, BEST_MODEL)) else ")"))


def choose_model(path: str, *, best: bool = False) -> Tuple[str, str]:
  """`(kind, location)` of the generator `load_for_inference(path, best=best)` loads.

  kind is MODEL_DIR or STEP_DIR for a model directory / checkpoint step directory given
  directly; for a training workdir FINAL (`final_model/`), else LATEST_CHECKPOINT
  (`checkpoints/`: its newest readable step), or BEST (`best_model/`, only with `best=True`:
  the model of the step with the highest mIoU on the evaluation set during training).
  """
  path = _abs(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"{path}: no such directory (expected a model directory or a "
                          f"training workdir)")
  if _is_model_dir(path) or _is_step_dir(path):
    if best:
      raise CheckpointError(f"{path}: the best model is chosen from a training workdir; this "
                            f"is a {'model' if _is_model_dir(path) else 'checkpoint step'} "
                            f"directory")
    return (MODEL_DIR if _is_model_dir(path) else STEP_DIR), path
  return _choose_in_workdir(path, best)


def load_for_inference(path: str, *, best: bool = False) -> Tuple[Dict[str, Any],
                                                                   Dict[str, Any]]:
  """`(variables, spec)` of a generator for evaluation / prediction.

  `path` may be a model directory (`model.json`), one checkpoint step directory
  (`WORKDIR/checkpoints/<step>`) or a training workdir: its final model (`final_model/`, else
  the latest readable checkpoint) or, with `best=True`, its `best_model/` (`choose_model`).
  """
  kind, location = choose_model(path, best=best)
  if kind == LATEST_CHECKPOINT:
    return _load_from_checkpoints(os.path.dirname(location), "generator")
  if kind == STEP_DIR:
    return _variables_from_step(location, "generator")
  return model_io.load_model(location)


def load_generator(path: str, *, best: bool = False) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """`load_for_inference(path, best=best)`, checked to be a generator (a segmentation
  network)."""
  variables, spec = load_for_inference(path, best=best)
  spec = dict(spec)
  if spec.get("kind", "generator") != "generator":
    raise CheckpointError(f"{path}: holds a {spec.get('kind')} ({spec.get('arch')}), not a "
                          f"segmentation network")
  return variables, spec


def load_discriminator_for_inference(path: str) -> Optional[Tuple[Dict[str, Any],
                                                                  Dict[str, Any]]]:
  """`(variables, spec)` of the (main-level) discriminator of a training workdir's latest
  checkpoint (or of one step directory), or None when the run has no usable D."""
  path = _abs(path)
  if _is_step_dir(path):
    step_dirs = [path]
  else:
    ckpt_dir = os.path.join(path, CHECKPOINT_DIR)
    step_dirs = [os.path.join(ckpt_dir, str(s)) for s in valid_steps(ckpt_dir)]
  for step_dir in step_dirs:
    try:
      return _variables_from_step(step_dir, "discriminator")
    except CheckpointError as e:
      if "no discriminator" in str(e):
        return None
      log.warning("%s; trying an older step", e)
  return None
