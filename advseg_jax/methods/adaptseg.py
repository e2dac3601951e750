"""AdaptSegNet (docs/FIDELITY.md §7): source cross-entropy and an output-space
discriminator per level on source (0) vs target (1) probability maps."""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from advseg_jax import losses
from advseg_jax.methods import base
from advseg_jax.models.deeplab import upsample_logits


SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


def level_names(n: int) -> Tuple[str, ...]:
  return ("aux", "main") if n == 2 else ("main",)


def generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """AdaptSegNet G step (docs/FIDELITY.md §7.2): source CE (main + lambda_seg aux), target
  adv per level."""
  del step
  hp = ctx.hp
  src = batch["source"]
  x_t = batch["target"]["image"]
  if base.uses_joint(ctx):
    levels, levels_t, batch_stats = base.joint_pass(ctx, g_params, batch_stats, src["image"], x_t)
  else:
    levels, batch_stats = ctx.g_apply(g_params, batch_stats, src["image"], True)
    levels_t, batch_stats = ctx.g_apply(g_params, batch_stats, x_t, True)
  seg, metrics, ups_s = base.seg_terms(ctx, levels, src["label"])
  size_t = base.hw(x_t)
  ups_t = tuple(upsample_logits(lv, size_t) for lv in levels_t)
  names = level_names(len(ups_t))
  lambdas = {"aux": hp.lambda_adv_aux, "main": hp.lambda_adv}
  loss = seg
  d_inputs = {}
  for name, p_s, p_t in zip(names, ups_s, ups_t):
    q_t = jax.nn.softmax(p_t, axis=-1)
    adv = losses.gan_loss(ctx.d_apply(d_params[name], q_t), SOURCE_LABEL, ctx.gan, None,
                          ctx.axis_name)
    loss = loss + lambdas[name] * adv
    metrics["g/loss_adv" if name == "main" else "g/loss_adv_aux"] = adv
    d_inputs[name] = (jax.nn.softmax(p_s, axis=-1), q_t)
  metrics["g/loss"] = loss
  return loss, (batch_stats, metrics, d_inputs)


def discriminator_loss(ctx, d_params, d_inputs, batch):
  """Each level's D: source -> 0, target -> 1, each half-weighted, no upsampling."""
  del batch
  loss = jnp.zeros([], jnp.float32)
  metrics: base.Metrics = {}
  for name, (q_s, q_t) in d_inputs.items():
    d_s = ctx.d_apply(d_params[name], q_s)
    d_t = ctx.d_apply(d_params[name], q_t)
    l_s = losses.gan_loss(d_s, SOURCE_LABEL, ctx.gan, None, ctx.axis_name)
    l_t = losses.gan_loss(d_t, TARGET_LABEL, ctx.gan, None, ctx.axis_name)
    loss = loss + 0.5 * (l_s + l_t)
    suffix = "" if name == "main" else "_aux"
    # "real" = the source side (what G makes target predictions resemble).
    p_s = losses.real_probability(d_s, ctx.gan)
    p_t = losses.real_probability(d_t, ctx.gan)
    mean = lambda v: losses.masked_mean(v, None, ctx.axis_name)
    metrics.update({
        f"d/loss_real{suffix}": l_s, f"d/loss_fake{suffix}": l_t,
        f"d/acc_real{suffix}": mean((p_s < 0.5).astype(jnp.float32)),
        f"d/acc_fake{suffix}": mean((p_t > 0.5).astype(jnp.float32)),
        f"d/out_real{suffix}": mean(p_s), f"d/out_fake{suffix}": mean(p_t),
    })
  metrics["d/loss"] = loss
  return loss, metrics
