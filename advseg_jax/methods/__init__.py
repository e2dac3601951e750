"""What each training method feeds the generator and the discriminator(s).

A method is a pair of pure loss functions used by the one generic step in
`advseg_jax.train.steps`:

  generator_loss(ctx, g_params, batch_stats, d_params, batch, step)
      -> loss, (new_batch_stats, metrics, d_inputs)
  discriminator_loss(ctx, d_params, d_inputs, batch)
      -> loss, metrics

`d_inputs` are the generator outputs the D step needs (already stop-gradiented by the step):
the D step never recomputes G. Batches are dicts of streams, each a dict with `image`
[B, H, W, 3] float32 (NHWC, mean-subtracted) and, for labelled streams, `label` [B, H, W] int32.

Streams per method:
  supervised  labelled
  advsemi     labelled, gt (D's real one-hots), unlabelled (when a semi term is on)
  adaptseg    source (labelled), target (unlabelled)
  luc         labelled
  iclr2018    labelled, unlabelled (when steps alternate); D-first (`methods.iclr2018`)

Metric names: `g/*` generator terms, `d/*` discriminator terms, `semi/*` confidence maps.
"Real" is the side G tries to resemble (ground truth in advsemi/luc, source in adaptseg).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax import losses
from advseg_jax.methods import iclr2018 as methods_iclr
from advseg_jax.models.deeplab import upsample_logits

METHODS = ("supervised", "advsemi", "adaptseg", "luc", "iclr2018")
LABEL_ENCODINGS = ("basic", "product", "scaling")

Metrics = Dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class Context:
  """Static things a method needs: bound model functions, hyper-parameters, the mapped axis.

  g_apply(params, batch_stats, images, train) -> (levels, new_batch_stats): levels is a tuple
    of logits [B, h, w, C] at stride 8, ordered (aux, main) or (main,).
  d_apply(level_params, *inputs) -> D output ([B, h', w', 1|2] maps, or [B, 1] for luc).
  """
  g_apply: Callable[..., Any]
  d_apply: Optional[Callable[..., Any]]
  num_classes: int
  hp: Any  # config.method (an ml_collections.ConfigDict or any attribute container)
  gan: str = "vanilla"  # 'vanilla' | 'ls' | 'softmax2'
  axis_name: Optional[str] = None


# ----------------------------------------------------------------------------- helpers
def _hw(x: jax.Array) -> Tuple[int, int]:
  return int(x.shape[1]), int(x.shape[2])


def _d_map(ctx: Context, level_params, probs: jax.Array, size=None) -> jax.Array:
  """D on probability maps; AdvSemiSeg upsamples D's logits to the crop (`size`)."""
  out = ctx.d_apply(level_params, probs)
  if size is not None and _hw(out) != tuple(size):
    out = upsample_logits(out, size)
  return out


def _d_stats(ctx: Context, out: jax.Array, real_side: bool, mask=None) -> Tuple[jax.Array, ...]:
  """(accuracy, mean P(real)) of D on one side, over valid cells."""
  p = losses.real_probability(out, ctx.gan)
  correct = (p > 0.5) if real_side else (p < 0.5)
  return (losses.masked_mean(correct.astype(p.dtype), mask, ctx.axis_name),
          losses.masked_mean(p, mask, ctx.axis_name))


def _global_any(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  n = jnp.sum(x.astype(jnp.float32))
  if axis_name is not None:
    n = lax.psum(n, axis_name)
  return n > 0


def _seg_terms(ctx: Context, levels, labels) -> Tuple[jax.Array, Metrics, Tuple[jax.Array, ...]]:
  """CE on upsampled logits: main + lambda_seg * aux (multi-level). Returns upsampled levels."""
  size = _hw(labels[..., None])
  ups = tuple(upsample_logits(lv, size) for lv in levels)
  ce_main = losses.cross_entropy(ups[-1], labels, axis_name=ctx.axis_name)
  metrics = {"g/loss_seg": ce_main}
  loss = ce_main
  if len(ups) > 1:
    ce_aux = losses.cross_entropy(ups[0], labels, axis_name=ctx.axis_name)
    metrics["g/loss_seg_aux"] = ce_aux
    loss = loss + ctx.hp.lambda_seg * ce_aux
  return loss, metrics, ups


# ----------------------------------------------------------------------------- supervised
def supervised_generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  del d_params, step
  lab = batch["labelled"]
  levels, batch_stats = ctx.g_apply(g_params, batch_stats, lab["image"], True)
  loss, metrics, _ = _seg_terms(ctx, levels, lab["label"])
  metrics["g/loss"] = loss
  return loss, (batch_stats, metrics, {})


# ----------------------------------------------------------------------------- advsemi
def advsemi_generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """AdvSemiSeg G step (docs/FIDELITY.md §6.3): unlabelled branch, then labelled CE + adv."""
  hp = ctx.hp
  dp = d_params["main"]
  metrics: Metrics = {}
  d_inputs: Dict[str, Any] = {}
  loss = jnp.zeros([], jnp.float32)

  use_unlabelled = "unlabelled" in batch and (hp.lambda_semi > 0 or hp.lambda_semi_adv > 0)
  if use_unlabelled:
    x_u = batch["unlabelled"]["image"]
    size = _hw(x_u)
    active = step >= hp.semi_start_adv
    levels_u, bs_u = ctx.g_apply(g_params, batch_stats, x_u, True)
    # The branch is skipped entirely before semi_start_adv: keep BN statistics untouched.
    batch_stats = jax.tree.map(lambda a, b: jnp.where(active, a, b), bs_u, batch_stats)
    p_u = upsample_logits(levels_u[-1], size)
    d_u = _d_map(ctx, dp, jax.nn.softmax(p_u, axis=-1), size)
    semi_adv_term = losses.gan_loss(d_u, 1.0, ctx.gan, None, ctx.axis_name)
    semi_adv = hp.lambda_semi_adv * semi_adv_term
    conf = lax.stop_gradient(losses.real_probability(d_u, ctx.gan))
    pseudo = jnp.argmax(lax.stop_gradient(p_u), axis=-1)
    pseudo = jnp.where(conf < hp.mask_T, losses.IGNORE_LABEL, pseudo)
    valid = pseudo != losses.IGNORE_LABEL
    semi_ce = losses.cross_entropy(p_u, pseudo, axis_name=ctx.axis_name)
    semi_on = (hp.lambda_semi > 0) & (step >= hp.semi_start)
    any_valid = _global_any(valid, ctx.axis_name)
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

  lab = batch["labelled"]
  levels, batch_stats = ctx.g_apply(g_params, batch_stats, lab["image"], True)
  seg, seg_metrics, ups = _seg_terms(ctx, levels, lab["label"])
  probs = jax.nn.softmax(ups[-1], axis=-1)
  not_ignored = lab["label"] != losses.IGNORE_LABEL
  loss = loss + seg
  adv = jnp.zeros([], jnp.float32)
  if hp.lambda_adv > 0:
    d_l = _d_map(ctx, dp, probs, _hw(probs))
    adv = losses.gan_loss(d_l, 1.0, ctx.gan, not_ignored, ctx.axis_name)
    loss = loss + hp.lambda_adv * adv
  metrics.update(seg_metrics)
  metrics["g/loss_adv"] = adv
  metrics["g/loss"] = loss
  d_inputs["labelled_probs"] = probs
  d_inputs["labelled_valid"] = not_ignored
  return loss, (batch_stats, metrics, d_inputs)


def advsemi_discriminator_loss(ctx, d_params, d_inputs, batch):
  """D: fake = softmax(G(labelled)) [+ unlabelled when d_remain], real = one-hot GT."""
  hp = ctx.hp
  dp = d_params["main"]
  probs, valid = d_inputs["labelled_probs"], d_inputs["labelled_valid"]
  if hp.d_remain and "unlabelled_probs" in d_inputs:
    u = d_inputs["unlabelled_probs"]
    probs = jnp.concatenate([probs, u], axis=0)
    u_valid = jnp.broadcast_to(d_inputs["unlabelled_active"], u.shape[:3])
    valid = jnp.concatenate([valid, u_valid], axis=0)
  d_fake = _d_map(ctx, dp, probs, _hw(probs))
  loss_fake = losses.gan_loss(d_fake, 0.0, ctx.gan, valid, ctx.axis_name)

  gt = batch["gt"]["label"]
  gt_valid = gt != losses.IGNORE_LABEL
  one_hot = losses.one_hot_labels(gt, ctx.num_classes)
  d_real = _d_map(ctx, dp, one_hot, _hw(one_hot))
  real_target = 1.0 - hp.real_label_smoothing
  loss_real = losses.gan_loss(d_real, real_target, ctx.gan, gt_valid, ctx.axis_name)
  acc_f, out_f = _d_stats(ctx, d_fake, False, valid)
  acc_r, out_r = _d_stats(ctx, d_real, True, gt_valid)
  loss = 0.5 * (loss_fake + loss_real)
  return loss, {"d/loss": loss, "d/loss_fake": loss_fake, "d/loss_real": loss_real,
                "d/acc_fake": acc_f, "d/acc_real": acc_r, "d/out_fake": out_f,
                "d/out_real": out_r}


# ----------------------------------------------------------------------------- adaptseg
SOURCE_LABEL, TARGET_LABEL = 0.0, 1.0


def _level_names(n: int) -> Tuple[str, ...]:
  return ("aux", "main") if n == 2 else ("main",)


def adaptseg_generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """AdaptSegNet G step (docs/FIDELITY.md §7.2): source CE (main + lambda_seg aux), target
  adv per level."""
  del step
  hp = ctx.hp
  src = batch["source"]
  levels, batch_stats = ctx.g_apply(g_params, batch_stats, src["image"], True)
  seg, metrics, ups_s = _seg_terms(ctx, levels, src["label"])
  x_t = batch["target"]["image"]
  levels_t, batch_stats = ctx.g_apply(g_params, batch_stats, x_t, True)
  size_t = _hw(x_t)
  ups_t = tuple(upsample_logits(lv, size_t) for lv in levels_t)
  names = _level_names(len(ups_t))
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


def adaptseg_discriminator_loss(ctx, d_params, d_inputs, batch):
  """Each level's D: source -> 0, target -> 1, each half-weighted, no upsampling."""
  del batch
  loss = jnp.zeros([], jnp.float32)
  metrics: Metrics = {}
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


# ----------------------------------------------------------------------------- luc et al.
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


def luc_generator_loss(ctx, g_params, batch_stats, d_params, batch, step):
  """Luc et al.: CE + lambda_adv * BCE(D(x, softmax(G(x))), real) (non-saturating)."""
  del step
  hp = ctx.hp
  lab = batch["labelled"]
  levels, batch_stats = ctx.g_apply(g_params, batch_stats, lab["image"], True)
  seg, metrics, ups = _seg_terms(ctx, levels, lab["label"])
  probs = jax.nn.softmax(ups[-1], axis=-1)
  fake_map = encode_label_map(probs, lab["image"], hp.label_encoding)
  adv = losses.gan_loss(ctx.d_apply(d_params["main"], lab["image"], fake_map), 1.0, ctx.gan,
                        None, ctx.axis_name)
  loss = seg + hp.lambda_adv * adv
  metrics.update({"g/loss_adv": adv, "g/loss": loss})
  return loss, (batch_stats, metrics, {"probs": probs})


def luc_discriminator_loss(ctx, d_params, d_inputs, batch):
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
  acc_f, out_f = _d_stats(ctx, d_fake, False)
  acc_r, out_r = _d_stats(ctx, d_real, True)
  loss = 0.5 * (loss_fake + loss_real)
  return loss, {"d/loss": loss, "d/loss_fake": loss_fake, "d/loss_real": loss_real,
                "d/acc_fake": acc_f, "d/acc_real": acc_r, "d/out_fake": out_f,
                "d/out_real": out_r}


# ----------------------------------------------------------------------------- registry
@dataclasses.dataclass(frozen=True)
class Method:
  """A method's loss functions. With `discriminator_inputs` set the step is D-first (the
  ICLR-2018 reproduction): `discriminator_inputs(ctx, g_params, batch_stats, batch) ->
  (d_inputs, batch_stats)`, D's update, then `generator_loss` against the updated D; steps
  where `labelled_turn(hp, step)` is False run `unlabelled_generator_loss` instead and leave
  D alone."""
  name: str
  generator_loss: Callable[..., Any]
  discriminator_loss: Optional[Callable[..., Any]]
  discriminator_inputs: Optional[Callable[..., Any]] = None
  unlabelled_generator_loss: Optional[Callable[..., Any]] = None
  labelled_turn: Optional[Callable[..., Any]] = None
  # D-first: hp -> the original's iteration number (its poly schedule's) minus the step's
  schedule_offset: Optional[Callable[[Any], int]] = None
  metric_names: Tuple[str, ...] = ()  # D-first: every metric either kind of step reports

  @property
  def uses_discriminator(self) -> bool:
    return self.discriminator_loss is not None


def streams(method: str, hp: Any) -> Tuple[str, ...]:
  """Data streams (batch keys) a method consumes."""
  if method == "supervised" or method == "luc":
    return ("labelled",)
  if method == "advsemi":
    s = ("labelled", "gt")
    if hp.lambda_semi > 0 or hp.lambda_semi_adv > 0:
      s += ("unlabelled",)
    return s
  if method == "adaptseg":
    return ("source", "target")
  if method == "iclr2018":
    return methods_iclr.streams(hp)
  raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def d_levels(method: str, multi_level: bool) -> Tuple[str, ...]:
  """Names of the discriminators (one per output level for adaptseg)."""
  if method == "supervised":
    return ()
  if method == "adaptseg" and multi_level:
    return ("aux", "main")
  return ("main",)


def get_method(name: str) -> Method:
  table = {
      "supervised": Method("supervised", supervised_generator_loss, None),
      "advsemi": Method("advsemi", advsemi_generator_loss, advsemi_discriminator_loss),
      "adaptseg": Method("adaptseg", adaptseg_generator_loss, adaptseg_discriminator_loss),
      "luc": Method("luc", luc_generator_loss, luc_discriminator_loss),
      "iclr2018": Method("iclr2018", methods_iclr.generator_loss,
                         methods_iclr.discriminator_loss, methods_iclr.discriminator_inputs,
                         methods_iclr.unlabelled_generator_loss, methods_iclr.labelled_turn,
                         schedule_offset=methods_iclr.schedule_offset,
                         metric_names=methods_iclr.G_METRICS + methods_iclr.D_METRICS),
  }
  if name not in table:
    raise ValueError(f"method must be one of {METHODS}, got {name!r}")
  return table[name]
