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

BN and the two streams (`hp.bn_domains`): 'separate' (the originals) runs G once per stream
in train mode, so each stream is normalised with its own batch statistics and the running
statistics are updated once per stream; 'joint' runs G once on the streams concatenated
along the batch (both must share H, W), so batch statistics and the one running-statistics
update mix both domains. advsemi and adaptseg read it; the other methods have one stream.

Metric names: `g/*` generator terms, `d/*` discriminator terms, `semi/*` confidence maps.
"Real" is the side G tries to resemble (ground truth in advsemi/luc, source in adaptseg).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, Tuple

from advseg_jax.methods import adaptseg, advsemi, luc, supervised
from advseg_jax.methods import iclr2018 as methods_iclr
from advseg_jax.methods.base import BN_DOMAINS, Context, Metrics
from advseg_jax.methods.luc import LABEL_ENCODINGS, encode_label_map

METHODS = ("supervised", "advsemi", "adaptseg", "luc", "iclr2018")

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
      "supervised": Method("supervised", supervised.generator_loss, None),
      "advsemi": Method("advsemi", advsemi.generator_loss, advsemi.discriminator_loss),
      "adaptseg": Method("adaptseg", adaptseg.generator_loss, adaptseg.discriminator_loss),
      "luc": Method("luc", luc.generator_loss, luc.discriminator_loss),
      "iclr2018": Method("iclr2018", methods_iclr.generator_loss,
                         methods_iclr.discriminator_loss, methods_iclr.discriminator_inputs,
                         methods_iclr.unlabelled_generator_loss, methods_iclr.labelled_turn,
                         schedule_offset=methods_iclr.schedule_offset,
                         metric_names=methods_iclr.G_METRICS + methods_iclr.D_METRICS),
  }
  if name not in table:
    raise ValueError(f"method must be one of {METHODS}, got {name!r}")
  return table[name]


__all__ = ["BN_DOMAINS", "Context", "LABEL_ENCODINGS", "METHODS", "Method", "Metrics",
           "d_levels", "encode_label_map", "get_method", "streams"]
