"""Model directories of a training run: the `model.json` spec of the generator /
discriminator a config trains, and the export of `best_model/` and `final_model/`."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Mapping, Optional

import jax

from advseg_jax import data
from advseg_jax import model_io
from advseg_jax.config.diff import json_normal
from advseg_jax.models.spec import ModelSpec
from advseg_jax.train.checkpoint import (OS_PROBLEMS, CheckpointWriteError, _abs, to_host,
                                         write_problem)
from advseg_jax.train.state import d_input_channels

log = logging.getLogger(__name__)


def _dataset_info(stream: Any):
  try:
    return data.get_info(stream.name, stream.config_name)
  except Exception:  # pylint: disable=broad-except
    return None


def generator_spec_from_config(config: Any, **extra: Any) -> Dict[str, Any]:
  """The `model.json` spec of the generator `config.model` trains, with its preprocessing.

  Preprocessing comes from the labelled / source stream `config.data` (channel order, mean,
  std);
  further keys: dtype, dataset, config_name, class_names, eval settings, method, `extra`.
  """
  m, s = config.model, config.data
  info = _dataset_info(s)
  channel_order = s.channel_order or (info.default_channel_order if info else "RGB")
  std = s.get("std_bgr")  # absent from configs saved before it existed
  spec = ModelSpec.from_config(m, channel_order=channel_order, mean_bgr=tuple(s.mean_bgr),
                               std_bgr=None if std is None else tuple(std)).to_json()
  spec["dtype"] = str(m.dtype)
  spec["dataset"] = s.name
  spec["config_name"] = s.config_name
  if info is not None and info.num_classes == int(m.num_classes):
    spec["class_names"] = list(info.class_names)
  e = config.eval_data
  spec["eval"] = {"dataset": e.name, "config_name": e.config_name, "split": e.split,
                  "eval_mode": e.eval_mode, "eval_pad_size": list(e.eval_pad_size),
                  "eval_pad_fill": e.get("eval_pad_fill", "mean"),
                  "ignore_as_background": bool(e.get("ignore_as_background", False)),
                  "eval_resize_size": list(e.eval_resize_size)}
  spec["method"] = config.method.name
  spec.update(extra)
  return json_normal(spec)


def discriminator_spec_from_config(config: Any) -> Optional[Dict[str, Any]]:
  """`model.json` spec of the discriminator(s), or None (supervised / Luc et al.'s
  image_label, which has no stand-alone use)."""
  if config.method.name == "supervised" or config.disc.arch not in ("fc", "fc2"):
    return None
  spec = ModelSpec.from_config(config.disc, num_classes=d_input_channels(config)).to_json()
  spec["gan"] = config.method.gan
  return spec


def export_model(directory: str, variables: Mapping[str, Any], spec: Mapping[str, Any]) -> str:
  """Writes a model directory (replacing an existing one atomically); process 0 only."""
  directory = _abs(directory)
  if jax.process_index() != 0:
    return directory
  variables = {k: to_host(dict(v)) for k, v in variables.items()}
  try:
    return model_io.save_model(directory, variables, spec, overwrite=True)
  except (OSError, ValueError, RuntimeError) as e:
    if isinstance(e, ValueError) and not OS_PROBLEMS.search(str(e)):
      raise  # a bad spec / variables: not a write problem
    raise CheckpointWriteError(
        f"could not write the model {directory}: {write_problem(e)}; the previous "
        f"{os.path.basename(directory)} (if any) is unchanged. Free disk space or make "
        f"{os.path.dirname(directory)} writable, then run the same command again.") from None
