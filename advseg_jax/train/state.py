"""Generator / discriminator training states over optax (pure pytrees).

`TrainStates(step, g, d)`: `g` is a `GState` (params, batch_stats, opt_state); `d` is a flax
`TrainState` whose params are a dict `{level: D params}` (one D per output level for
multi-level AdaptSegNet, `{'main': ...}` otherwise) or None for the supervised baseline.
One Adam over the dict equals one Adam per D (Adam is element-wise and the schedule shared).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp
from flax.training import train_state

from advseg_jax import methods
from advseg_jax.models.deeplab import classifier_names
from advseg_jax.train import optim, optim_iclr


class GState(train_state.TrainState):
  batch_stats: Any = None


@flax.struct.dataclass
class TrainStates:
  step: jax.Array
  g: GState
  d: Optional[train_state.TrainState]


def d_input_channels(config: Any) -> int:
  """Channels of D's (label-map) input."""
  k = int(config.model.num_classes)
  if config.method.name == "luc" and config.method.label_encoding == "product":
    return 3 * k
  return k


def init_generator_variables(g_model, rng: jax.Array, init_hw=(33, 33)):
  x = jnp.zeros((1, init_hw[0], init_hw[1], 3), jnp.float32)
  return g_model.init(rng, x, train=False)


def init_discriminator_params(d_model, config: Any, rng: jax.Array, init_hw=(64, 64)):
  """{level: params} for every discriminator of the method."""
  levels = methods.d_levels(config.method.name, config.model.arch == "deeplabv2_multi")
  c = d_input_channels(config)
  probs = jnp.zeros((1, init_hw[0], init_hw[1], c), jnp.float32)
  params = {}
  for i, level in enumerate(levels):
    key = jax.random.fold_in(rng, i)
    if config.disc.arch == "image_label":
      image = jnp.zeros((1, init_hw[0], init_hw[1], 3), jnp.float32)
      params[level] = d_model.init(key, image, probs)["params"]
    else:
      params[level] = d_model.init(key, probs)["params"]
  return params


def create_train_states(config: Any, g_model, d_model, rng: jax.Array,
                        g_variables: Optional[dict] = None,
                        d_params: Optional[dict] = None) -> TrainStates:
  """Fresh states; `g_variables` / `d_params` (e.g. converted PyTorch weights) override init."""
  g_rng, d_rng = jax.random.split(rng)
  if g_variables is None:
    g_variables = init_generator_variables(g_model, g_rng)
  head_names = classifier_names(config.model.arch == "deeplabv2_multi")
  if config.method.name == "iclr2018":  # one group, BN affine trained, nesterov (§8)
    g_tx = optim_iclr.generator_optimizer(config.optim_g, num_steps=config.num_steps)
  else:
    g_tx = optim.generator_optimizer(g_variables["params"], config.optim_g,
                                     head_names=head_names,
                                     aspp_branches_used=config.model.aspp_branches_used,
                                     num_steps=config.num_steps)
  g = GState.create(apply_fn=g_model.apply, params=g_variables["params"],
                    batch_stats=g_variables.get("batch_stats", {}), tx=g_tx)
  d = None
  if d_model is not None:
    if d_params is None:
      d_params = init_discriminator_params(d_model, config, d_rng)
    d_tx = optim.discriminator_optimizer(config.optim_d, num_steps=config.num_steps)
    d = train_state.TrainState.create(apply_fn=d_model.apply, params=d_params, tx=d_tx)
  return TrainStates(step=jnp.zeros([], jnp.int32), g=g, d=d)


def generator_variables(states: TrainStates) -> dict:
  return {"params": states.g.params, "batch_stats": states.g.batch_stats}
