"""What every method shares: the `Context` of bound model functions and hyper-parameters,
and the helpers that run G over the streams and score D (all arrays NHWC)."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax import losses
from advseg_jax.models.deeplab import upsample_logits

BN_DOMAINS = ("separate", "joint")
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


def hw(x: jax.Array) -> Tuple[int, int]:
  return int(x.shape[1]), int(x.shape[2])


def d_map(ctx: Context, level_params, probs: jax.Array, size=None) -> jax.Array:
  """D on probability maps; AdvSemiSeg upsamples D's logits to the crop (`size`)."""
  out = ctx.d_apply(level_params, probs)
  if size is not None and hw(out) != tuple(size):
    out = upsample_logits(out, size)
  return out


def d_stats(ctx: Context, out: jax.Array, real_side: bool, mask=None) -> Tuple[jax.Array, ...]:
  """(accuracy, mean P(real)) of D on one side, over valid cells."""
  p = losses.real_probability(out, ctx.gan)
  correct = (p > 0.5) if real_side else (p < 0.5)
  return (losses.masked_mean(correct.astype(p.dtype), mask, ctx.axis_name),
          losses.masked_mean(p, mask, ctx.axis_name))


def uses_joint(ctx: Context) -> bool:
  """Whether `ctx.hp.bn_domains` (checked by config validation) asks for one joint G pass
  over both streams."""
  return getattr(ctx.hp, "bn_domains", "separate") == "joint"


def joint_pass(ctx: Context, g_params, batch_stats, first: jax.Array, second: jax.Array):
  """One train-mode G pass on [first; second] (NHWC, same H, W): (levels of first, levels of
  second, batch_stats)."""
  if first.shape[1:] != second.shape[1:]:
    raise ValueError(f"method.bn_domains='joint' needs both streams at one size, got "
                     f"{tuple(first.shape[1:3])} and {tuple(second.shape[1:3])}")
  n = first.shape[0]
  levels, batch_stats = ctx.g_apply(g_params, batch_stats,
                                    jnp.concatenate([first, second], axis=0), True)
  return (tuple(lv[:n] for lv in levels), tuple(lv[n:] for lv in levels), batch_stats)


def global_any(x: jax.Array, axis_name: Optional[str]) -> jax.Array:
  n = jnp.sum(x.astype(jnp.float32))
  if axis_name is not None:
    n = lax.psum(n, axis_name)
  return n > 0


def seg_terms(ctx: Context, levels, labels) -> Tuple[jax.Array, Metrics, Tuple[jax.Array, ...]]:
  """CE on upsampled logits: main + lambda_seg * aux (multi-level). Returns upsampled levels."""
  size = hw(labels[..., None])
  ups = tuple(upsample_logits(lv, size) for lv in levels)
  ce_main = losses.cross_entropy(ups[-1], labels, axis_name=ctx.axis_name)
  metrics = {"g/loss_seg": ce_main}
  loss = ce_main
  if len(ups) > 1:
    ce_aux = losses.cross_entropy(ups[0], labels, axis_name=ctx.axis_name)
    metrics["g/loss_seg_aux"] = ce_aux
    loss = loss + ctx.hp.lambda_seg * ce_aux
  return loss, metrics, ups

