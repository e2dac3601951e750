"""The states a run starts from: its latest checkpoint, or fresh states with pretrained
weights (`config.init`).

    start = restore_or_init(config, checkpointer, g_model, d_model, rng,
                            allow_config_change=False)      # Start(host_states, step, ...)
    g_variables = initial_generator_variables(config)    # .pth (converted) or model dir
    d_params = initial_discriminator_params(config)      # {level: params} or None
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Dict, Optional

import jax
import numpy as np

from advseg_jax import methods
from advseg_jax import model_io
from advseg_jax.config.diff import config_differences, config_to_dict, format_differences
from advseg_jax.inference import loading
from advseg_jax.models.registry import resolve_depths
from advseg_jax.models.spec import ModelSpec
from advseg_jax.torch_port import convert
from advseg_jax.train import optim
from advseg_jax.train import state as state_lib
from advseg_jax.train.checkpoint import ConfigChangeError, TrainCheckpointer, one_line
from advseg_jax.train.errors import TrainingError

log = logging.getLogger(__name__)

_DISC_ARCHS = {"fc": "fc_discriminator", "fc2": "fc2_discriminator"}  # convertible D's


def _generator_from_pth(config: Any, path: str) -> Dict[str, Any]:
  m = config.model
  log.info("initialising G from %s (rule %s)", path, config.init.rule)
  try:
    return convert.load_torch_checkpoint(path, ModelSpec.from_config(m), rule=config.init.rule,
                                         seed=int(config.seed))
  except Exception as e:  # pylint: disable=broad-except
    raise TrainingError(f"config.init.checkpoint={path}: {one_line(e)}") from None


def initial_generator_variables(config: Any) -> Optional[Dict[str, Any]]:
  """Weights from `config.init.checkpoint` (.pth via the converter, or a model directory /
  training workdir, whose model must match `config.model`), or None."""
  path = config.init.checkpoint
  if not path:
    return None
  if os.path.isfile(path):
    return _generator_from_pth(config, path)
  if not os.path.isdir(path):
    raise TrainingError(f"config.init.checkpoint={path}: no such file or directory")
  m = config.model
  variables, spec = loading.load_for_inference(path)
  want = {"arch": m.arch, "num_classes": int(m.num_classes),
          "depths": list(resolve_depths(m.depths)), "width": int(m.width)}
  got = {k: spec.get(k) for k in want}
  if got != want:
    raise TrainingError(f"config.init.checkpoint={path}: model {got} does not match "
                        f"config.model {want}")
  log.info("initialising G from model directory %s", path)
  return variables


def initial_discriminator_params(config: Any) -> Optional[Dict[str, Any]]:
  """`{level: D params}` from `config.init.d_checkpoint` (.pth or model directory), the same
  weights for every level of the method, or None."""
  path = config.init.d_checkpoint
  if not path or config.method.name == "supervised":
    return None
  levels = methods.d_levels(config.method.name, config.model.arch == "deeplabv2_multi")
  try:
    if os.path.isfile(path):
      arch = _DISC_ARCHS.get(config.disc.arch)
      if arch is None:
        raise TrainingError(f"config.init.d_checkpoint: no converter for disc.arch "
                            f"{config.disc.arch!r}")
      spec = ModelSpec.from_config(config.disc, num_classes=state_lib.d_input_channels(config))
      variables = convert.load_torch_checkpoint(path, spec, rule="strict",
                                                seed=int(config.seed))
    else:
      variables, _ = model_io.load_model(path)
  except TrainingError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise TrainingError(f"config.init.d_checkpoint={path}: {one_line(e)}") from None
  log.info("initialising D (%s) from %s", ", ".join(levels), path)
  return {level: variables["params"] for level in levels}


def create_host_states(config: Any, g_model, d_model, rng, g_variables=None, d_params=None):
  """`state.create_train_states` as one compiled function (op-by-op initialisation compiles
  hundreds of tiny programs), returned as host numpy."""
  fn = jax.jit(lambda r, gv, dp: state_lib.create_train_states(config, g_model, d_model, r,
                                                               g_variables=gv, d_params=dp))
  return jax.tree.map(np.asarray, fn(rng, g_variables, d_params))


def initial_host_states(config: Any, g_model, d_model, rng, *, resuming: bool):
  """The states to train from: shapes only when resuming (the checkpoint provides the
  values), else fresh states with the `config.init` weights."""
  if resuming:
    return jax.eval_shape(
        lambda r: state_lib.create_train_states(config, g_model, d_model, r), rng)
  return create_host_states(config, g_model, d_model, rng, initial_generator_variables(config),
                            initial_discriminator_params(config))


# ----------------------------------------------------------------------------- resume
@dataclasses.dataclass
class Start:
  """Where a run starts: step 0 with fresh states, or a checkpoint's step and states."""
  host_states: Any                       # TrainStates of host arrays
  step: int = 0
  data_states: Optional[Dict[str, Any]] = None   # this process's iterator states
  best_miou: float = -1.0
  best_step: int = -1
  meta: Optional[Dict[str, Any]] = None          # the restored checkpoint's meta


def _check_config(meta: Dict[str, Any], config_dict: Dict[str, Any], method: str,
                  workdir: str, allow_config_change: bool) -> None:
  """ConfigChangeError when the checkpoint's config differs (outside the operational fields)
  and `allow_config_change` is off, or when its method differs."""
  diffs = config_differences(meta.get("config") or {}, config_dict)
  if diffs and not allow_config_change:
    raise ConfigChangeError(
        f"{workdir} holds a run with a different config ({len(diffs)} field"
        f"{'s' if len(diffs) > 1 else ''}: {format_differences(diffs)}); use a new "
        f"--workdir, or pass --allow_config_change to continue with the new values")
  if diffs:
    log.warning("config changed on resume (--allow_config_change): %s",
                format_differences(diffs))
  if meta.get("method") not in (None, method):
    raise ConfigChangeError(f"{workdir}: checkpoint was trained with method "
                            f"{meta.get('method')!r}, config says {method!r}")


def _torch_sgd_layout(g_template: Any):
  """`(old_template, convert)` for generator states saved when the non-legacy SGD kept its
  state as a `TorchSGDState` (count, momentum of every parameter); None for `torch_sgd`."""
  if isinstance(g_template.opt_state, optim.TorchSGDState):
    return None
  old = g_template.replace(opt_state=optim.TorchSGDState(
      count=jax.ShapeDtypeStruct((), np.int32),
      momentum=jax.tree.map(lambda p: jax.ShapeDtypeStruct(np.shape(p), p.dtype),
                            g_template.params)))
  return old, lambda g: g.replace(opt_state=optim.grouped_sgd_state_from_torch_sgd(
      g.opt_state, g_template.opt_state))


def restore_or_init(config: Any, checkpointer: TrainCheckpointer, g_model, d_model, rng, *,
                    allow_config_change: bool) -> Start:
  """The latest checkpoint that restores (its config checked against `config`), else fresh
  states with the `config.init` weights."""
  resuming = checkpointer.latest_step() is not None
  host_states = initial_host_states(config, g_model, d_model, rng, resuming=resuming)
  config_dict = config_to_dict(config)
  restored = checkpointer.restore_latest(
      host_states.g, host_states.d,
      lambda meta: _check_config(meta, config_dict, config.method.name, checkpointer.workdir,
                                 allow_config_change),
      g_upgrade=_torch_sgd_layout(host_states.g))
  if restored is None:
    return Start(host_states)
  log.info("resuming from %s (step %d)", restored.path, restored.step)
  return Start(state_lib.TrainStates(step=np.asarray(restored.step, np.int32), g=restored.g,
                                     d=restored.d),
               step=restored.step, data_states=restored.data_states,
               best_miou=float(restored.meta.get("best_miou", -1.0)),
               best_step=int(restored.meta.get("best_step", -1)), meta=restored.meta)


def check_split(workdir: str, meta: Optional[Dict[str, Any]], split: Any) -> None:
  """ConfigChangeError when the resumed run's labelled split has other sizes than `split`."""
  old = (meta or {}).get("split")
  if not old:
    return
  if (old.get("num_labelled"), old.get("num_examples")) != (split.num_labelled,
                                                            split.num_examples):
    raise ConfigChangeError(
        f"{workdir}: the labelled split changed ({old.get('num_labelled')}/"
        f"{old.get('num_examples')} labelled before, {split.num_labelled}/"
        f"{split.num_examples} now)")
