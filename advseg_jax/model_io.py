"""Model directories: `DIR/variables` (orbax) + `DIR/model.json` (the `ModelSpec`).

    save_model("/ckpt/voc_semi0.125", variables, spec)       # atomic; refuses to overwrite
    variables, spec = load_model("/ckpt/voc_semi0.125")      # spec: the model.json dict
    model = registry.build(spec)                             # advseg_jax.models.registry
    logits = model.apply(variables, images_nhwc)

`variables` is `{'params': ..., 'batch_stats': ...}` (generators) or `{'params': ...}`
(discriminators), nested dicts of float32 arrays in the Flax (NHWC / HWIO) layout.

`model.json` holds `ModelSpec.to_json()` (advseg_jax.models.spec: kind, arch, num_classes,
the generator's depths, width, stride_in_1x1, aspp_branches_used, bn_mode, channel_order,
mean_bgr or the discriminator's ndf, and dtype), i.e. everything needed to rebuild the module
and feed it, plus optional metadata (dataset, eval, step, miou, source, ...). Directories
written before `dtype` was stored load as float32.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from advseg_jax.models import registry
from advseg_jax.models.spec import ModelSpec, SpecError

FORMAT = "advseg_jax.model"
FORMAT_VERSION = 1
SPEC_FILE = "model.json"
VARIABLES_DIR = "variables"

Spec = Union[ModelSpec, Mapping[str, Any]]


class ModelFormatError(ValueError):
  """A model directory or spec is missing, malformed, or would be overwritten."""


def to_model_spec(spec: Spec) -> ModelSpec:
  """The `ModelSpec` of `spec` (a ModelSpec or `model.json` content)."""
  if isinstance(spec, ModelSpec):
    return spec
  try:
    return ModelSpec.from_json(spec)
  except (SpecError, TypeError, ValueError) as e:
    raise ModelFormatError(f"invalid model spec: {e}") from None


def spec_document(spec: Spec) -> Dict[str, Any]:
  """The `model.json` content of `spec`: its `ModelSpec.to_json()` fields first, then the
  metadata keys of a spec dict."""
  fields = to_model_spec(spec).to_json()
  extra = {} if isinstance(spec, ModelSpec) else {
      k: v for k, v in spec.items() if k not in fields}
  return {**fields, **extra}


def abstract_variables(spec: Spec) -> Dict[str, Any]:
  """`{collection: {...: ShapeDtypeStruct}}` of the model's variables (no computation)."""
  spec = to_model_spec(spec)
  model = registry.build(spec)
  x = jnp.zeros(spec.input_shape(), jnp.float32)
  return dict(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x)))


# --------------------------------------------------------------------------- save / load
def _abs(directory: str) -> str:
  return os.path.abspath(os.path.expanduser(os.fspath(directory)))


def _check_target(directory: str, overwrite: bool) -> None:
  if os.path.isfile(directory):
    raise ModelFormatError(f"{directory}: exists and is a file, expected a model directory")
  if os.path.isdir(directory) and os.listdir(directory) and not overwrite:
    raise ModelFormatError(f"{directory}: exists and is not empty; pass overwrite=True "
                           f"(--overwrite) to replace it")
  parent = os.path.dirname(directory)
  if not os.path.isdir(parent):
    raise ModelFormatError(f"{directory}: parent directory {parent} does not exist")


def save_model(directory: str, variables: Mapping[str, Any], spec: Spec, *,
               overwrite: bool = False) -> str:
  """Writes `directory/variables` (orbax StandardCheckpointer) and `directory/model.json`
  (`spec_document(spec)`; `spec` a ModelSpec or a spec dict with metadata).

  Atomic: everything goes to a temporary sibling directory that is renamed into place, so
  an error leaves `directory` untouched. Returns the absolute path.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  directory = _abs(directory)
  _check_target(directory, overwrite)
  doc = dict(format=FORMAT, format_version=FORMAT_VERSION, **spec_document(spec))  # validates
  parent, name = os.path.split(directory)
  tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
  os.mkdir(tmp)  # not mkdtemp: its 0700 mode would end up on the model directory
  trash: Optional[str] = None
  try:
    state = jax.tree_util.tree_map(np.asarray, {k: dict(v) for k, v in variables.items()})
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES_DIR), state)
    with open(os.path.join(tmp, SPEC_FILE), "w") as f:
      json.dump(doc, f, indent=2, sort_keys=False)
      f.write("\n")
    if os.path.exists(directory):
      trash = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
      os.replace(directory, os.path.join(trash, name))
    os.replace(tmp, directory)
  except BaseException:
    if trash is not None and not os.path.exists(directory):
      os.replace(os.path.join(trash, name), directory)
    raise
  finally:
    for d in (tmp, trash):
      if d is not None and os.path.exists(d):
        shutil.rmtree(d, ignore_errors=True)
  return directory


def read_spec(directory: str) -> Dict[str, Any]:
  """The `model.json` content of a model directory, without the format keys."""
  directory = _abs(directory)
  path = os.path.join(directory, SPEC_FILE)
  if not os.path.isdir(directory):
    raise ModelFormatError(f"{directory}: no such model directory")
  if not os.path.isfile(path):
    raise ModelFormatError(f"{directory}: not a model directory ({SPEC_FILE} is missing)")
  try:
    with open(path) as f:
      doc = json.load(f)
  except (OSError, ValueError) as e:
    raise ModelFormatError(f"{path}: unreadable model spec: {e}") from None
  if not isinstance(doc, dict) or doc.get("format") != FORMAT:
    raise ModelFormatError(f"{path}: not an advseg_jax model spec (format != {FORMAT!r})")
  if int(doc.get("format_version", 0)) > FORMAT_VERSION:
    raise ModelFormatError(f"{path}: format_version {doc['format_version']} is newer than "
                           f"this code ({FORMAT_VERSION})")
  return {k: v for k, v in doc.items() if k not in ("format", "format_version")}


def load_model(directory: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """`(variables, spec)` from a directory written by `save_model`; `spec` is the
  `model.json` dict (`ModelSpec.from_json(spec)` for the description)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  directory = _abs(directory)
  spec = read_spec(directory)
  target = abstract_variables(spec)
  vdir = os.path.join(directory, VARIABLES_DIR)
  if not os.path.isdir(vdir):
    raise ModelFormatError(f"{directory}: {VARIABLES_DIR}/ is missing")
  try:
    with ocp.StandardCheckpointer() as ckptr:
      variables = ckptr.restore(vdir, target)
  except Exception as e:  # orbax raises several types for structure/shape mismatches
    msg = " ".join(str(e).split())[:300]
    raise ModelFormatError(f"{vdir}: does not match the spec in {SPEC_FILE} "
                           f"({type(e).__name__}: {msg})") from None
  return dict(variables), spec
