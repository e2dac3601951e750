"""Loss functions of the originals as pure functions (docs/FIDELITY.md §5), NHWC.

Every loss is a mean. For multi-device data parallelism, pass the mapped `axis_name`: masked
means are then normalised by the *global* count of valid elements, scaled so that
`lax.pmean` of the per-device values (and of their gradients) equals the single-device value
on the concatenated batch. Without `axis_name` they are ordinary means.

Losses are computed in float32 whatever the activations' dtype (float64 for float64 inputs,
`advseg_jax.precision`).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from advseg_jax.precision import to_wide, wide_dtype

IGNORE_LABEL = 255
GAN_KINDS = ("vanilla", "ls", "softmax2")


def masked_mean(values: jax.Array, mask: Optional[jax.Array] = None,
                axis_name: Optional[str] = None) -> jax.Array:
  """Mean of `values` over the elements where `mask` is true (all when mask is None).

  Returns 0 when no element is valid (PyTorch's CrossEntropy2d returns a zero tensor then).
  """
  values = to_wide(values)
  if mask is None:
    mask = jnp.ones(values.shape, jnp.bool_)
  mask = jnp.broadcast_to(mask, values.shape)
  total = jnp.sum(jnp.where(mask, values, 0.0))
  count = lax.stop_gradient(jnp.sum(mask.astype(values.dtype)))
  if axis_name is not None:
    n_dev = lax.psum(1, axis_name)
    count = lax.psum(count, axis_name) / n_dev
  return total / jnp.maximum(count, 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_label: int = IGNORE_LABEL,
                  axis_name: Optional[str] = None) -> jax.Array:
  """`CrossEntropy2d` / `CrossEntropyLoss(ignore_index=255)`: mean over valid pixels.

  logits [N, H, W, C] (float32 recommended), labels [N, H, W] int (255 = ignore).
  """
  labels = labels.astype(jnp.int32)
  valid = (labels >= 0) & (labels != ignore_label) & (labels < logits.shape[-1])
  safe = jnp.where(valid, labels, 0)
  logp = jax.nn.log_softmax(to_wide(logits), axis=-1)
  nll = -jnp.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
  return masked_mean(nll, valid, axis_name)


def bce_with_logits_elementwise(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Numerically stable `BCEWithLogits` per element: max(x,0) - x*t + log(1 + exp(-|x|))."""
  x = to_wide(logits)
  t = targets.astype(x.dtype)
  return jnp.maximum(x, 0.0) - x * t + jnp.log1p(jnp.exp(-jnp.abs(x)))


def bce_with_logits(logits: jax.Array, targets, mask: Optional[jax.Array] = None,
                    axis_name: Optional[str] = None) -> jax.Array:
  """`BCEWithLogitsLoss` (mask None) or AdvSemiSeg's `BCEWithLogitsLoss2d` (mask = not ignored)."""
  targets = jnp.broadcast_to(jnp.asarray(targets, wide_dtype(logits.dtype)), logits.shape)
  return masked_mean(bce_with_logits_elementwise(logits, targets), mask, axis_name)


def mse(values: jax.Array, targets, mask: Optional[jax.Array] = None,
        axis_name: Optional[str] = None) -> jax.Array:
  """`MSELoss` (LS-GAN on raw D outputs)."""
  targets = jnp.broadcast_to(jnp.asarray(targets, wide_dtype(values.dtype)), values.shape)
  return masked_mean(jnp.square(to_wide(values) - targets), mask, axis_name)


def softmax2_cross_entropy(logits: jax.Array, target_real, mask: Optional[jax.Array] = None,
                           axis_name: Optional[str] = None) -> jax.Array:
  """2-class (fake=0, real=1) softmax cross-entropy with a soft target (ICLR reproduction).

  logits [..., 2]; `target_real` is the probability mass on 'real' (1 - s for smoothing s:
  `(1-s) * NLL(real) + s * NLL(fake)`). Mask has the shape of logits without the last axis.
  """
  logp = jax.nn.log_softmax(to_wide(logits), axis=-1)
  t = jnp.broadcast_to(jnp.asarray(target_real, logp.dtype), logp.shape[:-1])
  nll = -(t * logp[..., 1] + (1.0 - t) * logp[..., 0])
  return masked_mean(nll, mask, axis_name)


def gan_loss(d_out: jax.Array, target: float, kind: str = "vanilla",
             mask: Optional[jax.Array] = None, axis_name: Optional[str] = None) -> jax.Array:
  """Discriminator objective against a constant target (0 = fake/source, 1 = real/target).

  kind: 'vanilla' (BCE with logits, 1 channel), 'ls' (MSE on raw outputs, 1 channel) or
  'softmax2' (2-class softmax CE, the ICLR D). `mask` has d_out's shape without channels.
  """
  if kind == "softmax2":
    return softmax2_cross_entropy(d_out, target, mask, axis_name)
  out = d_out[..., 0] if d_out.shape[-1] == 1 else d_out
  if kind == "vanilla":
    return bce_with_logits(out, target, mask, axis_name)
  if kind == "ls":
    return mse(out, target, mask, axis_name)
  raise ValueError(f"gan kind must be one of {GAN_KINDS}, got {kind!r}")


def real_probability(d_out: jax.Array, kind: str = "vanilla") -> jax.Array:
  """D's probability of 'real' per cell, [..., H, W] (the AdvSemiSeg confidence map).

  vanilla: sigmoid(logit); ls: the raw output clipped to [0, 1]; softmax2: softmax[..., 1].
  """
  if kind == "softmax2":
    return jax.nn.softmax(to_wide(d_out), axis=-1)[..., 1]
  out = to_wide(d_out[..., 0]) if d_out.shape[-1] == 1 else d_out
  if kind == "ls":
    return jnp.clip(out, 0.0, 1.0)
  return jax.nn.sigmoid(out)


def one_hot_labels(labels: jax.Array, num_classes: int) -> jax.Array:
  """AdvSemiSeg's `one_hot`: [N,H,W] -> [N,H,W,C] float32; ignored pixels are all-zero."""
  return (labels[..., None] == jnp.arange(num_classes)).astype(jnp.float32)
