"""The supervised baseline: cross-entropy on the labelled stream only."""

from __future__ import annotations

from advseg_jax.methods import base


def generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  del d_params, step
  lab = batch["labelled"]
  levels, batch_stats = ctx.g_apply(g_params, batch_stats, lab["image"], True)
  loss, metrics, _ = base.seg_terms(ctx, levels, lab["label"])
  metrics["g/loss"] = loss
  return loss, (batch_stats, metrics, {})
