"""The one predictor: class probabilities of a generator, optionally over flips and scales.

    predict = make_predict_fn(g_model, flip=False, scales=(1.0,))
    probs = predict(variables, images_nhwc, out_hw)      # [B, H, W, C], softmax
    labels, confidence = make_label_fn(g_model)(variables, images_nhwc, out_hw)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advseg_jax.kernels import compile_options
from advseg_jax.models.deeplab import upsample_logits


def make_predict_fn(g_model, *, flip: bool = False, scales=(1.0,)):
  """Returns `predict(variables, images, out_hw) -> probabilities [B, H, W, C]` (eval mode).

  Main-level logits are upsampled (bilinear, align_corners=True) to `out_hw`, softmaxed and
  averaged over `scales` (input resized by each factor) and horizontal flips when `flip`.
  With the defaults it is exactly the originals' single-scale evaluation forward.
  """

  def forward(variables, x, out_hw):
    out = g_model.apply(variables, x, train=False)
    logits = out[-1] if isinstance(out, tuple) else out
    return upsample_logits(logits, out_hw)

  def predict(variables, images, out_hw):
    probs = None
    h, w = images.shape[1:3]
    for s in scales:
      x = images if s == 1.0 else upsample_logits(images, (int(round(h * s)), int(round(w * s))))
      views = [(x, False)] + ([(x[:, :, ::-1], True)] if flip else [])
      for view, flipped in views:
        logits = forward(variables, view, out_hw)
        if flipped:
          logits = logits[:, :, ::-1]
        p = jax.nn.softmax(logits, axis=-1)
        probs = p if probs is None else probs + p
    n = len(scales) * (2 if flip else 1)
    return probs / n if n > 1 else probs

  return predict


def jit_predict_fn(g_model, *, flip: bool = False, scales=(1.0,)):
  """`make_predict_fn`, compiled (`out_hw` static): probabilities [B, H, W, C]."""
  return compile_options.jit(make_predict_fn(g_model, flip=flip, scales=tuple(scales)),
                             static_argnums=2)


def make_label_fn(g_model, *, flip: bool = False, scales=(1.0,)):
  """Compiled `fn(variables, images, out_hw) -> (class ids int32 [B, H, W], max probability
  float32 [B, H, W])` (`out_hw` static)."""
  predict = make_predict_fn(g_model, flip=flip, scales=tuple(scales))

  def fn(variables, images, out_hw):
    probs = predict(variables, images, out_hw)
    return jnp.argmax(probs, axis=-1).astype(jnp.int32), jnp.max(probs, axis=-1)

  return compile_options.jit(fn, static_argnums=2)
