"""The ICLR-2018 reproduction's training iteration (method 'iclr2018', docs/FIDELITY.md §8).

It differs from AdvSemiSeg (`advseg_jax.methods`) in its order and its batches:

* **D first**: a labelled step runs G (train mode, no gradient) on the labelled images, trains
  D on them (`LDr + LDf`, summed, not halved), and only then computes G's loss against the
  *updated* D (`advseg_jax.train.steps` runs `discriminator_inputs`, the D update, then
  `generator_loss`).
* **One batch per step**: each step is a labelled step with probability
  `hp.labelled_probability` (0.5 in the semi-supervised mode, 1.0 otherwise), else an
  unlabelled one; `labelled_turn` draws it from `hp.alternation_seed` and the step number
  only, so a resumed run makes the same draws. D never sees unlabelled data.
* **255 is class 0**: the labels' ignore value is mapped to background for G's
  cross-entropy and for D's one-hot real maps (`IgnoreLabelClass`), so no pixel is masked.
* **Upsampling inside G**: G's stride-8 logits are upsampled by three (bilinear x2
  `align_corners=True`, drop the last row and column) steps, 41 -> 81 -> 161 -> 321.

Batches: `labelled` {image [B, H, W, 3], label [B, H, W] int32}, and `unlabelled` {image}
when `hp.labelled_probability < 1`. D is `disc.arch='fc2'` with `method.gan='softmax2'`.
"""

from __future__ import annotations

from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax import losses
from advseg_jax.models import layers

Metrics = Dict[str, jax.Array]
# Every metric of either kind of step (an unlabelled step reports 0 for the D terms, CE and
# the labelled adversarial term; a labelled step 0 for the semi terms), as the original logs.
G_METRICS = ("g/loss", "g/loss_seg", "g/loss_adv", "g/loss_semi_adv", "g/loss_semi",
             "semi/mask_ratio", "semi/active")
D_METRICS = ("d/loss", "d/loss_fake", "d/loss_real", "d/acc_fake", "d/acc_real", "d/out_fake",
             "d/out_real")


def labelled_turn(hp: Any, step: jax.Array) -> jax.Array:
  """True when step `step` trains on a labelled batch (a scalar bool).

  A Bernoulli(`hp.labelled_probability`) draw keyed by `hp.alternation_seed` and `step`
  (the original's `random.random() < 0.5`, but reproducible on resume).
  """
  p = float(hp.labelled_probability)
  if p >= 1.0:
    return jnp.array(True)
  key = jax.random.fold_in(jax.random.key(int(hp.alternation_seed)), step)
  return jax.random.uniform(key, (), jnp.float32) < p


def schedule_offset(hp: Any) -> int:
  """The original's poly-schedule iteration minus the step number: 1 when steps alternate
  (`train_semi` counts `itr` from 1), else 0 (`train_base` / `train_adv` count from 0)."""
  return 0 if float(hp.labelled_probability) >= 1.0 else 1


def background_labels(labels: jax.Array) -> jax.Array:
  """`IgnoreLabelClass`: the ignore value 255 becomes class 0 (background), [B, H, W]."""
  return jnp.where(labels == losses.IGNORE_LABEL, 0, labels).astype(jnp.int32)


def upsample_in_forward(logits: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """G's in-forward upsampling, [B, h, w, C] -> [B, H, W, C]: three (bilinear x2 with
  `align_corners=True`, drop the last row and column) steps, exact for H = 8h - 7 (41 -> 321);
  other crop sizes are resized once more to `size`, as the fc2 D does."""
  x = logits
  for _ in range(3):
    h, w = x.shape[1:3]
    x = layers.resize_bilinear_align_corners(x, (2 * h, 2 * w))[:, :-1, :-1, :]
  if tuple(x.shape[1:3]) != tuple(size):
    x = layers.resize_bilinear_align_corners(x, size)
  return x


def _g_logits(ctx, g_params, batch_stats, images) -> Tuple[jax.Array, Any]:
  levels, batch_stats = ctx.g_apply(g_params, batch_stats, images, True)
  return upsample_in_forward(levels[-1], images.shape[1:3]), batch_stats


def _zeros(names) -> Metrics:
  return {k: jnp.zeros([], jnp.float32) for k in names}


def discriminator_inputs(ctx, g_params, batch_stats, batch) -> Tuple[Dict[str, Any], Any]:
  """G in train mode on the labelled images, no gradient (`volatile=True`): its softmax is
  D's fake input. Returns `(d_inputs, batch_stats)`; BN running statistics are updated, as
  PyTorch's train-mode forward does even without gradients."""
  lab = batch["labelled"]
  logits, batch_stats = _g_logits(ctx, g_params, batch_stats, lab["image"])
  probs = lax.stop_gradient(jax.nn.softmax(logits, axis=-1))
  return {"probs": probs}, batch_stats


def discriminator_loss(ctx, d_params, d_inputs, batch) -> Tuple[jax.Array, Metrics]:
  """`LDr + LDf`: D on the one-hot labels (real, target 1 - smoothing) plus D on G's
  softmax (fake); every pixel counts (255 is background here)."""
  dp = d_params["main"]
  probs = d_inputs["probs"]
  one_hot = losses.one_hot_labels(background_labels(batch["labelled"]["label"]),
                                  ctx.num_classes)
  d_real = ctx.d_apply(dp, one_hot.astype(probs.dtype))
  d_fake = ctx.d_apply(dp, probs)
  loss_real = losses.gan_loss(d_real, 1.0 - ctx.hp.real_label_smoothing, ctx.gan, None,
                              ctx.axis_name)
  loss_fake = losses.gan_loss(d_fake, 0.0, ctx.gan, None, ctx.axis_name)
  p_real = losses.real_probability(d_real, ctx.gan)
  p_fake = losses.real_probability(d_fake, ctx.gan)
  mean = lambda v: losses.masked_mean(v, None, ctx.axis_name)
  loss = loss_real + loss_fake
  return loss, {"d/loss": loss, "d/loss_fake": loss_fake, "d/loss_real": loss_real,
                "d/acc_fake": mean((p_fake < 0.5).astype(p_fake.dtype)),
                "d/acc_real": mean((p_real > 0.5).astype(p_real.dtype)),
                "d/out_fake": mean(p_fake), "d/out_real": mean(p_real)}


def generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """Labelled step: `LGce + lambda_adv * LGadv` with the (already updated) D."""
  del step
  lab = batch["labelled"]
  logits, batch_stats = _g_logits(ctx, g_params, batch_stats, lab["image"])
  ce = losses.cross_entropy(logits, background_labels(lab["label"]), axis_name=ctx.axis_name)
  loss = ce
  adv = jnp.zeros([], ce.dtype)
  if ctx.hp.lambda_adv > 0:
    d_out = ctx.d_apply(d_params["main"], jax.nn.softmax(logits, axis=-1))
    adv = losses.gan_loss(d_out, 1.0, ctx.gan, None, ctx.axis_name)
    loss = loss + ctx.hp.lambda_adv * adv
  metrics = _zeros(G_METRICS)
  metrics.update({"g/loss": loss, "g/loss_seg": ce, "g/loss_adv": adv})
  return loss, (batch_stats, metrics, {})


def unlabelled_generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """Unlabelled step: `lambda_semi_adv * LGadv + lambda_semi * LGsemi`, where LGsemi is the
  mean NLL of G's argmax over the pixels whose D real-probability exceeds `mask_T`
  (`--t_semi`), left out when no pixel does. Metrics are unweighted."""
  del step
  hp = ctx.hp
  x_u = batch["unlabelled"]["image"]
  logits, batch_stats = _g_logits(ctx, g_params, batch_stats, x_u)
  d_out = ctx.d_apply(d_params["main"], jax.nn.softmax(logits, axis=-1))
  adv = losses.gan_loss(d_out, 1.0, ctx.gan, None, ctx.axis_name)
  conf = lax.stop_gradient(losses.real_probability(d_out, ctx.gan))
  keep = conf > hp.mask_T
  pseudo = jnp.where(keep, jnp.argmax(lax.stop_gradient(logits), axis=-1),
                     losses.IGNORE_LABEL)
  semi = losses.cross_entropy(logits, pseudo, axis_name=ctx.axis_name)
  n_keep = jnp.sum(keep.astype(jnp.float32))
  if ctx.axis_name is not None:
    n_keep = lax.psum(n_keep, ctx.axis_name)
  semi_on = (hp.lambda_semi > 0) & (n_keep > 0)
  loss = hp.lambda_semi_adv * adv + jnp.where(semi_on, hp.lambda_semi * semi, 0.0)
  metrics = _zeros(G_METRICS)
  metrics.update({"g/loss": loss, "g/loss_semi_adv": adv,
                  "g/loss_semi": jnp.where(semi_on, semi, 0.0),
                  "semi/mask_ratio": losses.masked_mean(keep.astype(conf.dtype), None,
                                                        ctx.axis_name),
                  "semi/active": jnp.ones([], jnp.float32)})
  return loss, (batch_stats, metrics, {})


def streams(hp: Any) -> Tuple[str, ...]:
  """The labelled stream, plus the unlabelled one when steps alternate."""
  return ("labelled",) if float(hp.labelled_probability) >= 1.0 else ("labelled", "unlabelled")
