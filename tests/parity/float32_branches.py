"""Units where float32 rounding, not the implementation, can pick a step's other branch.

A float32 forward pass of the test networks is ~1e-6 away from float64. A unit whose float64
value lies that close to a kink takes the other branch in float32 about half the time: a ReLU
input near 0, two max-pool candidates or two class logits nearly equal, a confidence next to
a mask threshold. One such unit moves a tiny network's weight gradients by ~1e-3 (the
residual ReLU of a (1, 1, 1, 1)-deep G at 9 x 13 cells: one cell of 234 in one channel), far
past the float32 parity tolerances, and no implementation can avoid it: float32 torch takes
the other branch on other units.

`risky_units` finds them by replaying the forward passes of a step in both precisions and
counting the values whose float64 margin is within RISK x their own float32 error. A parity
test whose float32 run has such a unit draws new inputs rather than compare across a branch
(`draw_until_float32_resolves`); `step_branch_values` replays a generic train step's passes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import jax
import numpy as np

from advseg_jax import methods
from advseg_jax.models import layers
from advseg_jax.train import steps

# A replayed forward pass and the step's own one round differently only in the last bits;
# twice the replay's error covers the step's.
RISK = 2.0
# Draws of a parity test before a float32 failure counts whatever its branch risks.
MAX_DRAWS = 6
# The leaky-ReLU convs of the FC discriminators (the classifier conv has no activation).
D_CONVS = ("conv1", "conv2", "conv3", "conv4")


def _flat_outputs(intermediates) -> Dict[str, np.ndarray]:
  """{'layer1/block0/bn1': output} for each captured `__call__` with one array output."""
  out = {}
  for path, value in jax.tree_util.tree_flatten_with_path(intermediates)[0]:
    keys = [p.key for p in path if hasattr(p, "key")]
    if keys and keys[-1] == "__call__" and getattr(path[-1], "idx", None) == 0:
      out["/".join(keys[:-1])] = np.asarray(value, np.float64)
  return out


def top2_margins(x: np.ndarray, axis: int = -1) -> np.ndarray:
  """Largest minus second-largest value along `axis` (0 where they tie)."""
  s = np.sort(x, axis=axis)
  return np.take(s, -1, axis=axis) - np.take(s, -2, axis=axis)


def max_pool_margins(x: np.ndarray, kernel: int = 3, stride: int = 2,
                     padding: int = 1) -> np.ndarray:
  """`top2_margins` of each `layers.max_pool_ceil` window of NHWC `x`, over the windows
  whose winner is positive (after a ReLU, ties at 0 pass no gradient either way)."""
  h, w = x.shape[1:3]
  pads = [(padding, padding + layers.ceil_mode_extra_padding(n, kernel, stride, padding))
          for n in (h, w)]
  xp = np.pad(x, [(0, 0), *pads, (0, 0)], constant_values=-np.inf)
  win = np.lib.stride_tricks.sliding_window_view(xp, (kernel, kernel), axis=(1, 2))
  win = win[:, ::stride, ::stride]  # [N, H', W', C, kernel, kernel]
  win = win.reshape(*win.shape[:4], -1)
  margins = top2_margins(win)
  return np.where(win.max(-1) > 0, margins, np.inf)


def generator_branch_values(intermediates) -> Dict[str, np.ndarray]:
  """The values whose sign picks a branch in DeepLab-v2's forward (from
  `capture_intermediates`): every ReLU input (stem bn1; each bottleneck's bn1, bn2 and
  bn3 + residual) and the stem max-pool's top-2 margins."""
  acts = _flat_outputs(intermediates)
  values = {"bn1": acts["bn1"],
            "maxpool": max_pool_margins(np.maximum(acts["bn1"], 0.0))}
  blocks = sorted({k.rsplit("/", 1)[0] for k in acts if "/block" in k and k.count("/") == 2})
  for block in blocks:
    values[block + "/bn1"] = acts[block + "/bn1"]
    values[block + "/bn2"] = acts[block + "/bn2"]
    residual = acts.get(block + "/downsample_bn")
    if residual is None:  # identity shortcut: the previous block's output
      layer, b = block.rsplit("/block", 1)
      residual = acts[f"{layer}/block{int(b) - 1}"]
    values[block + "/add"] = acts[block + "/bn3"] + residual
  return values


def discriminator_branch_values(intermediates, names: Iterable[str]) -> Dict[str, np.ndarray]:
  """The leaky-ReLU inputs of a conv discriminator: the outputs of its convs `names`."""
  acts = _flat_outputs(intermediates)
  return {n: acts[n] for n in names}


def risky_units(values32: Dict[str, np.ndarray], values64: Dict[str, np.ndarray],
                risk: float = RISK) -> Dict[str, int]:
  """{name: count} of the units whose float64 value is within `risk` x its float32 error of
  the kink at 0 (names with none are left out)."""
  out = {}
  for name, v64 in values64.items():
    v32 = np.asarray(values32[name], np.float64)
    finite = np.isfinite(v64)
    err = np.abs(v32[finite] - v64[finite])
    n = int(np.count_nonzero(np.abs(v64[finite]) <= risk * err))
    if n:
      out[name] = n
  return out


def recording_context(ctx: methods.Context, g_model, d_model,
                      values: Dict[str, np.ndarray]) -> methods.Context:
  """`ctx` whose G and D calls also store their branch values in `values`, keyed by call
  order: 'G1 layer4/block0/add', 'D2 conv3'. Replays must run eagerly (not under jit)."""
  calls = {"G": 0, "D": 0}

  def g_apply(params, batch_stats, images, train):
    out, state = g_model.apply({"params": params, "batch_stats": batch_stats}, images,
                               train=train, mutable=["batch_stats", "intermediates"],
                               capture_intermediates=True)
    calls["G"] += 1
    for name, v in generator_branch_values(state["intermediates"]).items():
      values[f"G{calls['G']} {name}"] = v
    return (out if isinstance(out, tuple) else (out,)), state["batch_stats"]

  def d_apply(level_params, *inputs):
    out, state = d_model.apply({"params": level_params}, *inputs, mutable=["intermediates"],
                               capture_intermediates=True)
    calls["D"] += 1
    for name, v in discriminator_branch_values(state["intermediates"], D_CONVS).items():
      values[f"D{calls['D']} {name}"] = v
    return out

  return dataclasses.replace(ctx, g_apply=g_apply, d_apply=d_apply)


def step_branch_values(config: Any, g_model, d_model, states, batch) -> Dict[str, np.ndarray]:
  """The branch values of one generic train step (`advseg_jax.train.steps`, iter_size 1, no
  instance noise) from `states`: every G and D call of the method's G loss, then of its D
  loss. Not covered: branches inside a method's own code, such as AdvSemiSeg's mask
  threshold (its test requires a confidence gap instead) and pseudo-label argmax (not
  guarded)."""
  method = methods.get_method(config.method.name)
  values: Dict[str, np.ndarray] = {}
  ctx = recording_context(steps.make_context(config, g_model, d_model, None), g_model, d_model,
                          values)
  _, (_, _, d_inputs) = method.generator_loss(ctx, states.g.params, states.g.batch_stats,
                                              states.d.params, batch, states.step)
  method.discriminator_loss(ctx, states.d.params, jax.lax.stop_gradient(d_inputs), batch)
  return values


def derived_seed(base: int, draw: int) -> int:
  """The seed of draw `draw` (> 0) of a test drawn from seed `base` (31 bits)."""
  return int(np.random.SeedSequence([base, draw]).generate_state(1)[0] >> 1)


def draw_until_float32_resolves(base: int, run_draw: Callable[[int], Optional[Dict[str, int]]],
                                max_draws: int = MAX_DRAWS) -> Tuple[int, List[str]]:
  """Runs `run_draw(seed)` on `base`, then on seeds derived from it, until one returns None.

  `run_draw` compares one draw and returns None when it passed, or {where: count} of the
  float32 run's units within rounding of a branch when its float32 comparison failed with
  some (that draw is set aside); any other failure it raises. Returns (the passing seed,
  the set-aside draws); fails when all `max_draws` draws are set aside."""
  set_aside = []
  for draw in range(max_draws):
    seed = base if draw == 0 else derived_seed(base, draw)
    risks = run_draw(seed)
    if not risks:
      return seed, set_aside
    set_aside.append(f"seed {seed}: float32 failed; units within rounding of a branch: "
                     f"{risks}")
  raise AssertionError(f"the float32 comparison failed on all {max_draws} draws from seed "
                       f"{base}:\n" + "\n".join(set_aside))
