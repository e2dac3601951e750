"""Flax variable paths <-> PyTorch state_dict names and tensor layouts (no torch needed).

The Flax modules mirror the originals' module tree (see `advseg_jax.models`), so the mapping is
a renaming of path components plus a layout change for conv kernels:

    Flax (collection, path)                              PyTorch state_dict key
    params/conv1/kernel            [7,7,3,64]   HWIO  <-> conv1.weight            [64,3,7,7] OIHW
    params/bn1/{scale,bias}                          <-> bn1.{weight,bias}
    batch_stats/bn1/{mean,var}                       <-> bn1.{running_mean,running_var}
    params/layer3/block5/conv2/kernel                <-> layer3.5.conv2.weight
    params/layer2/block0/downsample_conv/kernel      <-> layer2.0.downsample.0.weight
    params/layer2/block0/downsample_bn/...           <-> layer2.0.downsample.1.*
    params/layer5/conv2/{kernel,bias}                <-> layer5.conv2d_list.2.{weight,bias}
    params/layer6/...  (DeeplabMulti main head)      <-> layer6.conv2d_list.*
    params/conv{1..4}/..., params/classifier/...     <-> conv{1..4}.*, classifier.*   (FCDiscriminator)
    params/classifier/...  (ICLR `Dis`)              <-> conv5.*

Kernels: HWIO = OIHW.transpose(2, 3, 1, 0); OIHW = HWIO.transpose(3, 2, 0, 1). Everything else
is copied as is. Both directions are exact (pure transposes, no arithmetic). Variables are
flattened with `flax.traverse_util.flatten_dict` (paths as tuples).
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, List, Tuple

import numpy as np

from advseg_jax.models import registry

FlaxPath = Tuple[str, ...]  # (collection, module..., leaf), e.g. ('params', 'conv1', 'kernel')

ARCHS = registry.names(convertible=True)  # the architectures with a state_dict layout
CLASSIFIER_MODULES = ("layer5", "layer6")  # ASPP heads of the generators

_LEAF_TO_TORCH = {
    ("params", "kernel"): "weight",
    ("params", "scale"): "weight",
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",
}

# State_dict order of the originals: a module's own params (weight, bias), then its buffers
# (running_mean, running_var, num_batches_tracked), then its children in registration order.
_ORDER = {name: i for i, name in enumerate((
    "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "conv4", "conv5", "downsample",
    "layer1", "layer2", "layer3", "layer4", "layer5", "layer6", "conv2d_list", "classifier"))}
_LEAF_ORDER = {name: i for i, name in enumerate(
    ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))}


def torch_name(path: FlaxPath, arch: str) -> str:
  """PyTorch state_dict key of the Flax variable at `path` = (collection, module..., leaf)."""
  collection, *modules, leaf = path
  try:
    parts = [_LEAF_TO_TORCH[(collection, leaf)]]
  except KeyError:
    raise ValueError(f"no PyTorch counterpart for Flax variable {'/'.join(path)}") from None
  out: List[str] = []
  for i, m in enumerate(modules):
    block = re.fullmatch(r"block(\d+)", m)
    if block:
      out.append(block.group(1))
    elif m == "downsample_conv":
      out.append("downsample.0")
    elif m == "downsample_bn":
      out.append("downsample.1")
    elif i == 1 and modules[0] in CLASSIFIER_MODULES and re.fullmatch(r"conv\d+", m):
      out.append(f"conv2d_list.{m[4:]}")
    elif m == "classifier" and arch == "fc2_discriminator":
      out.append("conv5")
    else:
      out.append(m)
  return ".".join(out + parts)


def torch_sort_key(name: str) -> tuple:
  """Sort key that puts state_dict names in the order `model.state_dict()` lists them."""
  key = []
  for part in name.split("."):
    if part.isdigit():
      key.append((0, int(part), ""))
    elif part in _LEAF_ORDER:
      key.append((1, _LEAF_ORDER[part], part))
    else:
      key.append((2, _ORDER.get(part, len(_ORDER)), part))
  return tuple(key)


def is_kernel(path: FlaxPath) -> bool:
  return path[0] == "params" and path[-1] == "kernel"


def to_flax_layout(path: FlaxPath, array: np.ndarray) -> np.ndarray:
  """A PyTorch tensor (as numpy) in the layout of the Flax variable at `path` (a copy)."""
  if is_kernel(path):
    if array.ndim != 4:
      raise ValueError(f"{'/'.join(path)}: expected a 4-D OIHW conv weight, got {array.shape}")
    return np.array(array.transpose(2, 3, 1, 0), order="C", copy=True)
  return np.array(array, order="C", copy=True)


def to_torch_layout(path: FlaxPath, array: np.ndarray) -> np.ndarray:
  """The Flax variable at `path` in PyTorch's layout (kernels HWIO -> OIHW; a copy)."""
  if is_kernel(path):
    if array.ndim != 4:
      raise ValueError(f"{'/'.join(path)}: expected a 4-D HWIO kernel, got {array.shape}")
    return np.array(array.transpose(3, 2, 0, 1), order="C", copy=True)
  return np.array(array, order="C", copy=True)


def torch_shape(path: FlaxPath, flax_shape: Iterable[int]) -> Tuple[int, ...]:
  shape = tuple(int(s) for s in flax_shape)
  if is_kernel(path) and len(shape) == 4:
    h, w, i, o = shape
    return (o, i, h, w)
  return shape


def name_map(flax_paths: Iterable[FlaxPath], arch: str) -> Dict[str, FlaxPath]:
  """{torch name: flax path} for the given Flax variables, in PyTorch state_dict order."""
  pairs = [(torch_name(p, arch), p) for p in flax_paths]
  seen: Dict[str, FlaxPath] = {}
  for name, p in pairs:
    if name in seen:
      raise ValueError(f"Flax variables {'/'.join(seen[name])} and {'/'.join(p)} both map "
                       f"to PyTorch key {name!r}")
    seen[name] = p
  return {name: seen[name] for name in sorted(seen, key=torch_sort_key)}
