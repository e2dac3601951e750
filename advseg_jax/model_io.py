"""Saving and loading converted models: `DIR/variables` (orbax) + `DIR/model.json` (spec).

    save_model("/ckpt/voc_semi0.125", variables, spec)       # atomic; refuses to overwrite
    variables, spec = load_model("/ckpt/voc_semi0.125")
    model = build_from_spec(spec)                            # flax module
    logits = model.apply(variables, images_nhwc)

`variables` is `{'params': ..., 'batch_stats': ...}` (generators) or `{'params': ...}`
(discriminators), nested dicts of float32 arrays in the Flax (NHWC / HWIO) layout.

`model.json` holds the spec, i.e. everything needed to rebuild the module and feed it:

    kind                'generator' | 'discriminator'
    arch                'deeplabv2' (Res_Deeplab) | 'deeplabv2_multi' (DeeplabMulti)
                        | 'fc_discriminator' (FCDiscriminator) | 'fc2_discriminator' (ICLR Dis)
    num_classes         classifier outputs (generators) / input channels (discriminators)
    depths, width, stride_in_1x1, aspp_branches_used, bn_mode          (generators)
    channel_order       'RGB' (AdvSemiSeg VOC models) | 'BGR' (AdaptSegNet, Caffe inits)
    mean_bgr            per-channel mean in B, G, R order on the 0-255 scale; subtract it
                        (re-ordered to `channel_order`) from 0-255 images
    ndf                                                                 (discriminators)
    source              optional provenance (file name, sha256, loading rule)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from advseg_jax.models import registry

FORMAT = "advseg_jax.model"
FORMAT_VERSION = 1
SPEC_FILE = "model.json"
VARIABLES_DIR = "variables"
MEAN_BGR = (104.00698793, 116.66876762, 122.67891434)  # Caffe DeepLab mean, B, G, R
CHANNEL_ORDERS = ("RGB", "BGR")
GENERATOR_ARCHS = ("deeplabv2", "deeplabv2_multi")
DISCRIMINATOR_ARCHS = {"fc_discriminator": "fc", "fc2_discriminator": "fc2"}


class ModelFormatError(ValueError):
  """A model directory or spec is missing, malformed, or would be overwritten."""


# --------------------------------------------------------------------------- specs
def generator_spec(arch: str, num_classes: int, *, depths: Sequence[int] = (3, 4, 23, 3),
                   width: int = 64, stride_in_1x1: bool = True, aspp_branches_used: int = 2,
                   bn_mode: str = "batch_stats", channel_order: str = "RGB",
                   mean_bgr: Sequence[float] = MEAN_BGR) -> Dict[str, Any]:
  """A generator spec (see the module docstring); validates every field."""
  if arch not in GENERATOR_ARCHS:
    raise ModelFormatError(f"generator arch must be one of {GENERATOR_ARCHS}, got {arch!r}")
  if channel_order not in CHANNEL_ORDERS:
    raise ModelFormatError(f"channel_order must be one of {CHANNEL_ORDERS}, got "
                           f"{channel_order!r}")
  if aspp_branches_used not in (1, 2, 3, 4):
    raise ModelFormatError(f"aspp_branches_used must be 1..4, got {aspp_branches_used}")
  spec = dict(kind="generator", arch=arch, num_classes=int(num_classes),
              depths=[int(d) for d in registry.resolve_depths(depths)], width=int(width),
              stride_in_1x1=bool(stride_in_1x1), aspp_branches_used=int(aspp_branches_used),
              bn_mode=str(bn_mode), channel_order=channel_order,
              mean_bgr=[float(m) for m in mean_bgr])
  if len(spec["mean_bgr"]) != 3:
    raise ModelFormatError(f"mean_bgr must have 3 values, got {spec['mean_bgr']}")
  return spec


def discriminator_spec(arch: str, num_classes: int, *, ndf: int = 64) -> Dict[str, Any]:
  if arch not in DISCRIMINATOR_ARCHS:
    raise ModelFormatError(f"discriminator arch must be one of {tuple(DISCRIMINATOR_ARCHS)}, "
                           f"got {arch!r}")
  return dict(kind="discriminator", arch=arch, num_classes=int(num_classes), ndf=int(ndf))


def build_from_spec(spec: Mapping[str, Any]):
  """The Flax module described by `spec` (built with `advseg_jax.models.registry`)."""
  arch = spec.get("arch")
  if arch in GENERATOR_ARCHS:
    return registry.build_generator(dict(spec))
  if arch in DISCRIMINATOR_ARCHS:
    return registry.build_discriminator({"arch": DISCRIMINATOR_ARCHS[arch],
                                         "ndf": int(spec.get("ndf", 64))})
  raise ModelFormatError(f"spec arch must be one of {GENERATOR_ARCHS + tuple(DISCRIMINATOR_ARCHS)}"
                         f", got {arch!r}")


def example_input(spec: Mapping[str, Any], size: int = 33) -> jax.ShapeDtypeStruct:
  """Input shape used to create the variables: NHWC images, or NHWC class maps for D."""
  channels = 3 if spec["arch"] in GENERATOR_ARCHS else int(spec["num_classes"])
  size = size if spec["arch"] in GENERATOR_ARCHS else max(size, 64)
  return jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)


def abstract_variables(spec: Mapping[str, Any]) -> Dict[str, Any]:
  """`{collection: {...: ShapeDtypeStruct}}` of the model's variables (no computation)."""
  model = build_from_spec(spec)
  x = example_input(spec)
  out = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros(x.shape, x.dtype)))
  return dict(out)


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


def save_model(directory: str, variables: Mapping[str, Any], spec: Mapping[str, Any], *,
               overwrite: bool = False) -> str:
  """Writes `directory/variables` (orbax StandardCheckpointer) and `directory/model.json`.

  Atomic: everything goes to a temporary sibling directory that is renamed into place, so
  an error leaves `directory` untouched. Returns the absolute path.
  """
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  directory = _abs(directory)
  _check_target(directory, overwrite)
  build_from_spec(spec)  # validates the spec before anything is written
  parent, name = os.path.split(directory)
  tmp = os.path.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
  os.mkdir(tmp)  # not mkdtemp: its 0700 mode would end up on the model directory
  trash: Optional[str] = None
  try:
    state = jax.tree_util.tree_map(np.asarray, {k: dict(v) for k, v in variables.items()})
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(tmp, VARIABLES_DIR), state)
    doc = dict(format=FORMAT, format_version=FORMAT_VERSION, **dict(spec))
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
  """`(variables, spec)` from a directory written by `save_model`."""
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
