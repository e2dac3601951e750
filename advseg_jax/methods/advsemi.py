"""AdvSemiSeg (docs/FIDELITY.md §6): G's unlabelled and labelled branches; D on G's
probability maps (fake) and one-hot ground truth (real)."""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax import losses
from advseg_jax.methods import base
from advseg_jax.models.deeplab import upsample_logits


def generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """AdvSemiSeg G step (docs/FIDELITY.md §6.3): unlabelled branch, then labelled CE + adv."""
  hp = ctx.hp
  dp = d_params["main"]
  metrics: base.Metrics = {}
  d_inputs: Dict[str, Any] = {}
  loss = jnp.zeros([], jnp.float32)

  lab = batch["labelled"]
  use_unlabelled = "unlabelled" in batch and (hp.lambda_semi > 0 or hp.lambda_semi_adv > 0)
  levels = None
  if use_unlabelled:
    x_u = batch["unlabelled"]["image"]
    size = base.hw(x_u)
    active = step >= hp.semi_start_adv
    if base.uses_joint(ctx):
      levels_u, levels, batch_stats = base.joint_pass(ctx, g_params, batch_stats, x_u,
                                                  lab["image"])
    else:
      levels_u, bs_u = ctx.g_apply(g_params, batch_stats, x_u, True)
      # The branch is skipped entirely before semi_start_adv: keep BN statistics untouched.
      batch_stats = jax.tree.map(lambda a, b: jnp.where(active, a, b), bs_u, batch_stats)
    p_u = upsample_logits(levels_u[-1], size)
    d_u = base.d_map(ctx, dp, jax.nn.softmax(p_u, axis=-1), size)
    semi_adv_term = losses.gan_loss(d_u, 1.0, ctx.gan, None, ctx.axis_name)
    semi_adv = hp.lambda_semi_adv * semi_adv_term
    conf = lax.stop_gradient(losses.real_probability(d_u, ctx.gan))
    pseudo = jnp.argmax(lax.stop_gradient(p_u), axis=-1)
    pseudo = jnp.where(conf < hp.mask_T, losses.IGNORE_LABEL, pseudo)
    valid = pseudo != losses.IGNORE_LABEL
    semi_ce = losses.cross_entropy(p_u, pseudo, axis_name=ctx.axis_name)
    semi_on = (hp.lambda_semi > 0) & (step >= hp.semi_start)
    any_valid = base.global_any(valid, ctx.axis_name)
    # Original: before semi_start only L_semi_adv; after it, nothing at all if every pixel
    # of the batch is below the threshold, else lambda_semi * CE + L_semi_adv.
    branch = jnp.where(semi_on, jnp.where(any_valid, hp.lambda_semi * semi_ce + semi_adv, 0.0),
                       semi_adv)
    loss = loss + jnp.where(active, branch, 0.0)
    metrics.update({
        "g/loss_semi_adv": semi_adv_term,  # unweighted, like the other terms
        "g/loss_semi": jnp.where(semi_on, semi_ce, 0.0),
        "semi/mask_ratio": losses.masked_mean(valid.astype(p_u.dtype), None, ctx.axis_name),
        "semi/active": semi_on.astype(jnp.float32),
    })
    d_inputs["unlabelled_probs"] = jax.nn.softmax(p_u, axis=-1)
    d_inputs["unlabelled_active"] = active

  if levels is None:
    levels, batch_stats = ctx.g_apply(g_params, batch_stats, lab["image"], True)
  seg, seg_metrics, ups = base.seg_terms(ctx, levels, lab["label"])
  probs = jax.nn.softmax(ups[-1], axis=-1)
  not_ignored = lab["label"] != losses.IGNORE_LABEL
  loss = loss + seg
  adv = jnp.zeros([], jnp.float32)
  if hp.lambda_adv > 0:
    d_l = base.d_map(ctx, dp, probs, base.hw(probs))
    adv = losses.gan_loss(d_l, 1.0, ctx.gan, not_ignored, ctx.axis_name)
    loss = loss + hp.lambda_adv * adv
  metrics.update(seg_metrics)
  metrics["g/loss_adv"] = adv
  metrics["g/loss"] = loss
  d_inputs["labelled_probs"] = probs
  d_inputs["labelled_valid"] = not_ignored
  return loss, (batch_stats, metrics, d_inputs)


def discriminator_loss(ctx, d_params, d_inputs, batch):
  """D: fake = softmax(G(labelled)) [+ unlabelled when d_remain], real = one-hot GT."""
  hp = ctx.hp
  dp = d_params["main"]
  probs, valid = d_inputs["labelled_probs"], d_inputs["labelled_valid"]
  if hp.d_remain and "unlabelled_probs" in d_inputs:
    u = d_inputs["unlabelled_probs"]
    probs = jnp.concatenate([probs, u], axis=0)
    u_valid = jnp.broadcast_to(d_inputs["unlabelled_active"], u.shape[:3])
    valid = jnp.concatenate([valid, u_valid], axis=0)
  d_fake = base.d_map(ctx, dp, probs, base.hw(probs))
  loss_fake = losses.gan_loss(d_fake, 0.0, ctx.gan, valid, ctx.axis_name)

  gt = batch["gt"]["label"]
  gt_valid = gt != losses.IGNORE_LABEL
  one_hot = losses.one_hot_labels(gt, ctx.num_classes)
  d_real = base.d_map(ctx, dp, one_hot, base.hw(one_hot))
  real_target = 1.0 - hp.real_label_smoothing
  loss_real = losses.gan_loss(d_real, real_target, ctx.gan, gt_valid, ctx.axis_name)
  acc_f, out_f = base.d_stats(ctx, d_fake, False, valid)
  acc_r, out_r = base.d_stats(ctx, d_real, True, gt_valid)
  loss = 0.5 * (loss_fake + loss_real)
  return loss, {"d/loss": loss, "d/loss_fake": loss_fake, "d/loss_real": loss_real,
                "d/acc_fake": acc_f, "d/acc_real": acc_r, "d/out_fake": out_f,
                "d/out_real": out_r}
