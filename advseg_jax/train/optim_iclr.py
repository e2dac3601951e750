"""The ICLR-2018 reproduction's generator optimiser (docs/FIDELITY.md §8).

`torch.optim.SGD(G.parameters(), lr, momentum=0.9, weight_decay=1e-4, nesterov=True)`: one
parameter group, so one learning rate for every layer (no 10x head), and every parameter
trains, BatchNorm's affine parameters included (its `ResDeeplab` freezes nothing). Coupled
weight decay, dampening 0, poly(0.9) decay from `config.optim_g` (lr, momentum,
weight_decay, power).
"""

from __future__ import annotations

from typing import Any

import optax

from advseg_jax.train.optim import poly_schedule


def generator_optimizer(cfg: Any, *, num_steps: int) -> optax.GradientTransformation:
  """Nesterov SGD over all of G's parameters from `config.optim_g`."""
  schedule = poly_schedule(cfg.lr, num_steps, cfg.power)
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                     optax.sgd(schedule, momentum=cfg.momentum, nesterov=True))
