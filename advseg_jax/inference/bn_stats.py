"""BN statistics recomputed on other images before evaluation (AdaBN, Li et al. 2017).

A generator trained on one domain normalises every layer with that domain's running
statistics. Recomputing them on images of the evaluation domain, with the weights unchanged,
is the usual second treatment of a source-only baseline:

    batch_stats = recompute_batch_stats(g_model, variables, image_batches)
    variables = {**variables, "batch_stats": batch_stats}

Each batch runs G in train mode (every BN normalised with that batch's statistics, as in
training); each BN's new running mean and variance are the averages over the batches of its
batch mean and unbiased batch variance ("precise BN"). Images are NHWC, preprocessed like the
evaluation input.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from advseg_jax import data, models
from advseg_jax.data import registry
from advseg_jax.inference import evaluate as ev
from advseg_jax.models.layers import BatchNorm


class BNStatsError(ValueError):
  """BN statistics cannot be recomputed (no images, or a model whose BN never uses them)."""


def _batch_stats_fn(g_model):
  """jit: (params, batch_stats template, images [B, H, W, 3]) -> each BN's (batch mean,
  unbiased batch variance), read off one running-statistics update from zero."""
  momentum = BatchNorm.momentum

  def fn(params, template, images):
    zeros = jax.tree.map(jnp.zeros_like, template)
    _, mutated = g_model.apply({"params": params, "batch_stats": zeros}, images, train=True,
                               mutable=["batch_stats"])
    return jax.tree.map(lambda s: s / momentum, mutated["batch_stats"])

  return jax.jit(fn)


def recompute_batch_stats(g_model, variables: Dict[str, Any],
                          image_batches: Iterable[np.ndarray]) -> Dict[str, Any]:
  """New `batch_stats` for `variables` from `image_batches` (each [B, H, W, 3], B >= 2).

  Raises BNStatsError when there is no batch, a batch has fewer than 2 images, or the model
  does not use batch statistics in training (`bn_mode='frozen'`).
  """
  if getattr(g_model, "bn_mode", "batch_stats") != "batch_stats":
    raise BNStatsError(f"the model's BN is {g_model.bn_mode!r}: it never uses batch "
                       "statistics, so there are none to recompute")
  fn = _batch_stats_fn(g_model)
  total, count = None, 0
  for images in image_batches:
    if images.shape[0] < 2:
      raise BNStatsError(f"BN statistics need batches of >= 2 images, got {images.shape[0]}")
    stats = fn(variables["params"], variables["batch_stats"], jnp.asarray(images))
    total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    count += 1
  if count == 0:
    raise BNStatsError("no images to recompute BN statistics on")
  return jax.tree.map(lambda s: s / count, total)


def dataset_image_batches(cfg, *, split: str, batch_size: int,
                          max_images: Optional[int] = None) -> Iterable[np.ndarray]:
  """Full batches of preprocessed images of a stream config's `split`, in the split's order
  (the last partial batch is left out; at most `max_images` images)."""
  max_batches = None if max_images is None else max_images // batch_size
  for i, batch in enumerate(data.make_eval_iterator(cfg, split=split, batch_size=batch_size)):
    if max_batches is not None and i >= max_batches:
      return
    if not bool(np.all(batch["mask"])):
      return
    sizes = {tuple(int(v) for v in hw) for hw in batch["orig_hw"]}
    if cfg.eval_mode != "resize" and len(sizes) > 1:  # padded to the largest: not one size
      raise BNStatsError(f"BN statistics need the images of a batch at one size, got "
                         f"{sorted(sizes)} in {cfg.name} {split}: use a protocol that "
                         "resizes the input, or a dataset of one image size")
    yield batch["image"]


def recompute_on_split(variables: Dict[str, Any], spec: Dict[str, Any], dataset: str, *,
                       split: str, data_dir: Optional[str], input_size=None,
                       batch_size: int = 8, max_images: Optional[int] = 512
                       ) -> Tuple[Dict[str, Any], int]:
  """`variables` with BN statistics recomputed on `dataset` `split` (e.g. 'digits_m/target',
  'train'), images preprocessed for `spec`'s model (its channel order, mean and std; resized to
  `input_size` (h, w) when given, as the cityscapes protocol does). Returns (variables, the
  number of images used)."""
  name, config_name = registry.split_name(dataset)  # any classes: no labels are read
  choice = ev.DatasetChoice(name, config_name, data.get_info(name, config_name), None)
  data.ensure_prepared(choice.name, data_dir, choice.config_name)
  cfg = ev.model_input_stream(spec, choice, data_dir=data_dir, use_labels=False,
                              eval_mode="resize" if input_size else "none",
                              eval_resize_size=tuple(input_size or (512, 1024)))
  sizes = []

  def counted():
    for images in dataset_image_batches(cfg, split=split, batch_size=batch_size,
                                        max_images=max_images):
      sizes.append(images.shape[0])
      yield images

  stats = recompute_batch_stats(models.build(spec), variables, counted())
  return {**variables, "batch_stats": stats}, sum(sizes)
