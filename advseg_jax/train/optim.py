"""Optimisers of the originals as optax transformations (docs/FIDELITY.md §1.5, §6.1,
§7.1).

Generator: SGD (momentum 0.9, weight decay 5e-4) with a poly(0.9) schedule, 10x learning
rate for the classifier head(s), BN affine frozen (no update, no decay), and the dead ASPP
branches of the released models untouched (PyTorch skips parameters whose grad is None):
`grouped_sgd`, an `optax.multi_transform` over the groups 'backbone', 'head' and 'frozen'.

`legacy_duplicate_updates=True` (the faithful default) applies the originals'
`optim_parameters()` listing, which names each bottleneck conv 3 times, each downsample conv
4 times and the stem once, as `torch.optim.SGD` does: one update per listing (`torch_sgd`).
`duplicate_rule` picks the PyTorch version whose per-listing step is reproduced:
  'torch0.4' (PyTorch 0.2-0.4, which trained the released models), per listing, in order,
      grad += wd * p (in place: the decay terms accumulate over the listings);
      buf = momentum * buf + grad (one buffer per parameter, shared by its listings);
      p -= lr * buf
  'torch2' (`torch.optim.SGD(foreach=False)` of PyTorch 2.x, its CPU default), per listing,
      grad_j = grad + wd * p (a fresh term); buf = momentum * buf + grad_j; p -= lr * buf
      with, at the first step, a separate new buffer per listing (buf = grad_j).
`legacy_duplicate_updates=False` is the correction: each parameter updated once per step
(`grouped_sgd`).

Discriminator: Adam(1e-4, b1=0.9, b2=0.99) with the same poly decay (or the ICLR
reproduction's SGD with momentum 0.5, nesterov, weight decay 1e-4).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

Schedule = Callable[[jax.Array], jax.Array]


def poly_schedule(base_lr: float, num_steps: int, power: float = 0.9) -> Schedule:
  """`lr_poly`: base_lr * (1 - step / num_steps) ** power (step counted from 0), 0 after.

  A float32 scalar (optax's schedule); float64 when JAX runs with x64, so that a float64
  run's learning rate is PyTorch's Python-float `lr_poly` to the last bit (optax's is
  float32 even then, 1e-8 off). The updates cast it to each parameter's dtype.
  """
  transition = max(int(num_steps), 1)
  float32_schedule = optax.polynomial_schedule(init_value=base_lr, end_value=0.0, power=power,
                                               transition_steps=transition)

  def schedule(count):
    if not jax.config.jax_enable_x64:
      return float32_schedule(count)
    frac = 1.0 - jnp.clip(jnp.asarray(count, jnp.float64), 0, transition) / transition
    return base_lr * jnp.maximum(frac, 0.0) ** power

  return schedule


# ----------------------------------------------------------------------------- multiplicities
def generator_param_roles(params: Any, head_names, aspp_branches_used: int,
                          legacy_duplicate_updates: bool) -> tuple[Any, Any]:
  """Per-leaf (multiplicity, lr multiplier) trees for the generator's parameters.

  multiplicity 0 = frozen (BN affine, dead ASPP branches); 1 = one SGD update per step;
  3 / 4 = bottleneck / downsample convs under `legacy_duplicate_updates`.
  lr multiplier 10 for the classifier head(s), 1 elsewhere.
  """
  flat = traverse_util.flatten_dict(params)
  mult, lr_mult = {}, {}
  for path in flat:
    top, leaf_module = path[0], path[-2] if len(path) >= 2 else ""
    is_bn = leaf_module.startswith("bn") or leaf_module.endswith("_bn")
    if top in head_names:
      branch = int(leaf_module.replace("conv", "")) if leaf_module.startswith("conv") else 0
      mult[path] = 1 if branch < aspp_branches_used else 0
      lr_mult[path] = 10.0
      continue
    lr_mult[path] = 1.0
    if is_bn:
      mult[path] = 0
    elif not legacy_duplicate_updates or top == "conv1":
      mult[path] = 1
    elif leaf_module == "downsample_conv":
      mult[path] = 4
    else:
      mult[path] = 3
  return (traverse_util.unflatten_dict(mult), traverse_util.unflatten_dict(lr_mult))


class TorchSGDState(NamedTuple):
  count: jax.Array
  momentum: Any


DUPLICATE_RULES = ("torch0.4", "torch2")  # see the module docstring


def torch_sgd(schedule: Schedule, multiplicity: Any, lr_multiplier: Any, *,
              momentum: float = 0.9, weight_decay: float = 5e-4,
              rule: str = "torch0.4") -> optax.GradientTransformation:
  """PyTorch SGD (coupled weight decay, dampening 0) with per-leaf multiplicity and LR scale.

  Each leaf is updated `multiplicity` times per step (0 = frozen: no update, no decay, no
  momentum), as `torch.optim.SGD` does for a parameter listed that many times in one
  parameter group: `rule` 'torch0.4' as PyTorch 0.2-0.4, 'torch2' as PyTorch 2.x with
  `foreach=False` (the module docstring gives both). Requires `params` in `update`.
  """
  if rule not in DUPLICATE_RULES:
    raise ValueError(f"duplicate rule must be one of {DUPLICATE_RULES}, got {rule!r}")
  accumulate_decay = rule == "torch0.4"

  def init_fn(params):
    return TorchSGDState(count=jnp.zeros([], jnp.int32),
                         momentum=jax.tree.map(jnp.zeros_like, params))

  def update_fn(grads, state, params=None):
    if params is None:
      raise ValueError("torch_sgd needs params")
    lr = schedule(state.count)
    # torch2: no buffer exists before the first step, so each listing starts a new one.
    first_step = state.count == 0

    def leaf(g, buf, p, k, scale):
      keep = (momentum if accumulate_decay
              else jnp.where(first_step, 0.0, momentum).astype(buf.dtype))
      p_new, grad = p, g
      for _ in range(int(k)):
        grad = (grad if accumulate_decay else g) + weight_decay * p_new
        buf = keep * buf + grad
        p_new = p_new - (lr * scale).astype(buf.dtype) * buf
      return p_new - p, buf

    out = jax.tree.map(leaf, grads, state.momentum, params, multiplicity, lr_multiplier)
    is_pair = lambda x: isinstance(x, tuple) and len(x) == 2 and not isinstance(x[0], tuple)
    updates = jax.tree.map(lambda o: o[0], out, is_leaf=is_pair)
    new_buf = jax.tree.map(lambda o: o[1], out, is_leaf=is_pair)
    return updates, TorchSGDState(count=state.count + 1, momentum=new_buf)

  return optax.GradientTransformation(init_fn, update_fn)


GROUPS = ("backbone", "head", "frozen")  # the non-legacy SGD's parameter groups


def sgd_group_labels(multiplicity: Any, lr_multiplier: Any) -> Any:
  """Per-leaf group of the non-legacy SGD: 'frozen' (multiplicity 0), 'head' (10x LR) or
  'backbone'."""
  return jax.tree.map(lambda k, s: "frozen" if k == 0 else ("head" if s != 1.0 else "backbone"),
                      multiplicity, lr_multiplier)


def grouped_sgd(schedule: Schedule, labels: Any, *, momentum: float = 0.9,
                weight_decay: float = 5e-4,
                head_lr_multiplier: float = 10.0) -> optax.GradientTransformation:
  """`torch.optim.SGD` over the originals' two parameter groups (backbone lr, head 10x lr;
  coupled weight decay, dampening 0) as `optax.multi_transform`; 'frozen' leaves get no
  update, no decay and no momentum."""

  def sgd(scale: float) -> optax.GradientTransformation:
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.trace(decay=momentum),
                       optax.scale_by_learning_rate(lambda count: scale * schedule(count)))

  return optax.multi_transform({"backbone": sgd(1.0), "head": sgd(head_lr_multiplier),
                                "frozen": optax.set_to_zero()}, labels)


def grouped_sgd_state_from_torch_sgd(old: Any, template: Any) -> Any:
  """A `grouped_sgd` state (the layout of `template`, e.g. from `jax.eval_shape`) holding the
  step count and momentum buffers of a `TorchSGDState` (`old`, or a mapping with its fields):
  what checkpoints of the non-legacy SGD stored before it used `grouped_sgd`."""
  count = old["count"] if isinstance(old, Mapping) else old.count
  momentum = traverse_util.flatten_dict(old["momentum"] if isinstance(old, Mapping)
                                        else old.momentum)

  def fill(node):
    if isinstance(node, optax.TraceState):
      trace = traverse_util.flatten_dict(node.trace)
      return optax.TraceState(trace=traverse_util.unflatten_dict(
          {k: v if isinstance(v, optax.MaskedNode) else momentum[k] for k, v in trace.items()}))
    if isinstance(node, optax.ScaleByScheduleState):
      return optax.ScaleByScheduleState(count=count)
    return node

  return jax.tree.map(fill, template, is_leaf=lambda x: isinstance(
      x, (optax.TraceState, optax.ScaleByScheduleState)))


def momentum_buffers(opt_state: Any, params: Any) -> Any:
  """The SGD momentum buffer of every generator parameter (a tree like `params`; zeros where
  a parameter has none: frozen) from a `torch_sgd` or `grouped_sgd` state."""
  if isinstance(opt_state, TorchSGDState):
    return opt_state.momentum
  flat = {k: np.zeros(np.shape(v), v.dtype)
          for k, v in traverse_util.flatten_dict(params).items()}
  for node in jax.tree_util.tree_leaves(opt_state,
                                        is_leaf=lambda x: isinstance(x, optax.TraceState)):
    if isinstance(node, optax.TraceState):
      flat.update({k: v for k, v in traverse_util.flatten_dict(node.trace).items()
                   if not isinstance(v, optax.MaskedNode)})
  return traverse_util.unflatten_dict(flat)


def generator_optimizer(params: Any, cfg: Any, *, head_names, aspp_branches_used: int,
                        num_steps: int) -> optax.GradientTransformation:
  """G optimiser from `config.optim_g` (lr, momentum, weight_decay, power,
  legacy_duplicate_updates, duplicate_rule): `torch_sgd` with the originals' listing's
  multiplicities, else `grouped_sgd`."""
  legacy = bool(cfg.legacy_duplicate_updates)
  mult, lr_mult = generator_param_roles(params, tuple(head_names), aspp_branches_used, legacy)
  schedule = poly_schedule(cfg.lr, num_steps, cfg.power)
  if legacy:
    return torch_sgd(schedule, mult, lr_mult, momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay, rule=cfg.get("duplicate_rule", "torch0.4"))
  return grouped_sgd(schedule, sgd_group_labels(mult, lr_mult), momentum=cfg.momentum,
                     weight_decay=cfg.weight_decay)


def discriminator_optimizer(cfg: Any, *, num_steps: int) -> optax.GradientTransformation:
  """D optimiser from `config.optim_d` (name 'adam' | 'sgd', lr, b1, b2, momentum, nesterov,
  weight_decay, power)."""
  schedule = poly_schedule(cfg.lr, num_steps, cfg.power)
  if cfg.name == "adam":
    tx = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=1e-8)
    if cfg.weight_decay:
      # torch.optim.Adam(weight_decay=...) adds wd * p to the gradient (coupled).
      tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
    return tx
  if cfg.name == "sgd":
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(schedule, momentum=cfg.momentum, nesterov=bool(cfg.nesterov)))
  raise ValueError(f"optim_d.name must be 'adam' or 'sgd', got {cfg.name!r}")


def learning_rate(cfg: Any, num_steps: int, step) -> jax.Array:
  """The base (1x) learning rate of an optimiser config at `step`."""
  return poly_schedule(cfg.lr, num_steps, cfg.power)(step)
