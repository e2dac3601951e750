"""Luc et al. 2016: a discriminator that sees the image with a label map."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax import losses
from advseg_jax.methods import base


LABEL_ENCODINGS = ("basic", "product", "scaling")


def encode_label_map(probs: jax.Array, image: jax.Array, encoding: str,
                     segmentor_probs: Optional[jax.Array] = None, tau: float = 0.9) -> jax.Array:
  """Luc et al. label-map encodings for D's label branch, [B,H,W,C] -> [B,H,W,C'].

  basic:   the probabilities themselves (C' = C).
  product: each class map times each (scaled) image channel, C' = 3C; the image is the
           mean-subtracted 0-255 input divided by 128.
  scaling: for ground-truth one-hots only -- the true class gets max(tau, s) where s is the
           segmentor's probability of it, the other classes s_c * (1 - y) / (1 - s)
           (`segmentor_probs` required); segmentor outputs pass unchanged.
  """
  if encoding == "basic":
    return probs
  if encoding == "product":
    img = image.astype(jnp.float32) / 128.0
    return (probs[..., :, None] * img[..., None, :]).reshape(*probs.shape[:-1], -1)
  if encoding == "scaling":
    if segmentor_probs is None:
      return probs
    s = lax.stop_gradient(segmentor_probs)
    s_true = jnp.sum(s * probs, axis=-1, keepdims=True)
    y_true = jnp.maximum(tau, s_true)
    others = s * (1.0 - y_true) / jnp.maximum(1.0 - s_true, 1e-6)
    is_labelled = jnp.sum(probs, axis=-1, keepdims=True) > 0
    scaled = jnp.where(probs > 0, y_true, others)
    return jnp.where(is_labelled, scaled, probs)
  raise ValueError(f"label_encoding must be one of {LABEL_ENCODINGS}, got {encoding!r}")


def generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """Luc et al.: CE + lambda_adv * BCE(D(x, softmax(G(x))), real) (non-saturating)."""
  del step
  hp = ctx.hp
  lab = batch["labelled"]
  levels, batch_stats = ctx.g_apply(g_params, batch_stats, lab["image"], True)
  seg, metrics, ups = base.seg_terms(ctx, levels, lab["label"])
  probs = jax.nn.softmax(ups[-1], axis=-1)
  fake_map = encode_label_map(probs, lab["image"], hp.label_encoding)
  adv = losses.gan_loss(ctx.d_apply(d_params["main"], lab["image"], fake_map), 1.0, ctx.gan,
                        None, ctx.axis_name)
  loss = seg + hp.lambda_adv * adv
  metrics.update({"g/loss_adv": adv, "g/loss": loss})
  return loss, (batch_stats, metrics, {"probs": probs})


def discriminator_loss(ctx, d_params, d_inputs, batch):
  hp = ctx.hp
  lab = batch["labelled"]
  image, probs = lab["image"], d_inputs["probs"]
  fake_map = encode_label_map(probs, image, hp.label_encoding)
  gt = losses.one_hot_labels(lab["label"], ctx.num_classes)
  real_map = encode_label_map(gt, image, hp.label_encoding, segmentor_probs=probs)
  d_fake = ctx.d_apply(d_params["main"], image, fake_map)
  d_real = ctx.d_apply(d_params["main"], image, real_map)
  loss_fake = losses.gan_loss(d_fake, 0.0, ctx.gan, None, ctx.axis_name)
  loss_real = losses.gan_loss(d_real, 1.0 - hp.real_label_smoothing, ctx.gan, None,
                              ctx.axis_name)
  acc_f, out_f = base.d_stats(ctx, d_fake, False)
  acc_r, out_r = base.d_stats(ctx, d_real, True)
  loss = 0.5 * (loss_fake + loss_real)
  return loss, {"d/loss": loss, "d/loss_fake": loss_fake, "d/loss_real": loss_real,
                "d/acc_fake": acc_f, "d/acc_real": acc_r, "d/out_fake": out_f,
                "d/out_real": out_r}
