"""Per-device step bodies: one generic G+D training iteration and an evaluation forward.

The bodies contain their collectives (`lax.pmean(..., axis_name)`) and nothing else about
devices; `advseg_jax.train.parallel` binds them with `jax.pmap` or `jit(shard_map)`.
With `axis_name=None` they are ordinary single-device functions (for `jax.jit`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from advseg_jax import methods
from advseg_jax.train import optim
from advseg_jax.train.state import TrainStates

Batch = Dict[str, Dict[str, jax.Array]]
Metrics = Dict[str, jax.Array]


def bind_generator(g_model) -> Callable:
  """g_apply(params, batch_stats, images, train) -> (levels tuple, new batch_stats)."""

  def g_apply(params, batch_stats, images, train):
    out, mutated = g_model.apply({"params": params, "batch_stats": batch_stats}, images,
                                 train=train, mutable=["batch_stats"])
    levels = out if isinstance(out, tuple) else (out,)
    return levels, mutated["batch_stats"]

  return g_apply


def bind_discriminator(d_model) -> Optional[Callable]:
  if d_model is None:
    return None
  return lambda level_params, *inputs: d_model.apply({"params": level_params}, *inputs)


def make_context(config: Any, g_model, d_model, axis_name: Optional[str]) -> methods.Context:
  return methods.Context(g_apply=bind_generator(g_model), d_apply=bind_discriminator(d_model),
                         num_classes=int(config.model.num_classes), hp=config.method,
                         gan=config.method.gan, axis_name=axis_name)


def with_instance_noise(d_apply: Callable, rng: jax.Array, std: jax.Array) -> Callable:
  """`d_apply` that adds N(0, std^2) to its last input (the class-probability / label map;
  the Luc et al. image branch is left alone). Each call draws fresh noise (the calls are
  numbered in trace order, so a step is still deterministic given `rng`)."""
  calls = [0]

  def noisy(level_params, *inputs):
    key = jax.random.fold_in(rng, calls[0])
    calls[0] += 1
    x = inputs[-1]
    x = x + (std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)
    return d_apply(level_params, *inputs[:-1], x)

  return noisy


def _split(batch: Batch, n: int, i: int) -> Batch:
  """The i-th of n equal chunks of every stream along the batch axis (iter_size)."""
  if n == 1:
    return batch
  out = {}
  for stream, arrays in batch.items():
    out[stream] = {}
    for k, v in arrays.items():
      size = v.shape[0] // n
      out[stream][k] = v[i * size:(i + 1) * size]
  return out


def _all_finite(tree) -> jax.Array:
  """True iff every element of every floating leaf of `tree` is finite (a scalar bool).

  Computed as `isfinite(sum of the leaves' float32 sums)`: a NaN or an infinity anywhere
  makes its leaf's sum, and so the total, NaN or infinite. The one difference from
  `all(isfinite(x))` is that finite values whose sum overflows float32 (|sum| > 3.4e38,
  i.e. weights or gradients around 1e32 and up) also count as non-finite, which no
  converging run comes near. Why sums: XLA:CPU reduces a boolean `all` over a 40M-element
  tree through slow reduce-window passes; the sums cost 18 ms less per ResNet-101 step on
  2 CPU cores (benchmarks/RESULTS.md).
  """
  sums = [jnp.sum(x, dtype=jnp.float32) for x in jax.tree_util.tree_leaves(tree)
          if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating)]
  return jnp.isfinite(jnp.sum(jnp.stack(sums))) if sums else jnp.array(True)


def _accumulate_gradients(method: Any, ctx: methods.Context, states: TrainStates, batch: Batch,
                          iter_size: int, grad_norms: bool, pmean: Callable):
  """`(g_grads, d_grads, batch_stats, metrics)` of one step, each the mean over the
  `iter_size` chunks of the batch (G's batch statistics run through the chunks in order)."""
  g_params, batch_stats = states.g.params, states.g.batch_stats
  d_params = states.d.params if states.d is not None else None
  g_grads = jax.tree.map(jnp.zeros_like, g_params)
  d_grads = jax.tree.map(jnp.zeros_like, d_params) if d_params is not None else None
  metrics: Metrics = {}
  for i in range(iter_size):
    sub = _split(batch, iter_size, i)

    def g_terms(p, bs=batch_stats, sub=sub):
      loss, (bs_new, m, d_in) = method.generator_loss(ctx, p, bs, d_params, sub, states.step)
      seg = m.get("g/loss_seg", jnp.zeros([]))
      return jnp.stack([loss, seg]), (bs_new, m, d_in)

    terms, pullback, (batch_stats, m_g, d_inputs) = jax.vjp(g_terms, g_params, has_aux=True)
    (grads_total,) = pullback(jnp.array([1.0, 0.0], terms.dtype))
    if grad_norms:
      (grads_seg,) = pullback(jnp.array([0.0, 1.0], terms.dtype))
      grads_adv = jax.tree.map(jnp.subtract, grads_total, grads_seg)
      m_g["g/grad_norm_seg"] = optax.global_norm(pmean(grads_seg))
      m_g["g/grad_norm_adv"] = optax.global_norm(pmean(grads_adv))
    g_grads = jax.tree.map(lambda a, g: a + g / iter_size, g_grads, grads_total)
    m_all = dict(m_g)
    if method.uses_discriminator:
      d_inputs = lax.stop_gradient(d_inputs)
      (_, m_d), grads_d = jax.value_and_grad(
          lambda p, d_in=d_inputs, sub=sub: method.discriminator_loss(ctx, p, d_in, sub),
          has_aux=True)(d_params)
      d_grads = jax.tree.map(lambda a, g: a + g / iter_size, d_grads, grads_d)
      m_all.update(m_d)
    for k, v in m_all.items():
      metrics[k] = metrics.get(k, 0.0) + v / iter_size
  return g_grads, d_grads, batch_stats, metrics


def with_schedule_count(opt_state: Any, count: jax.Array) -> Any:
  """`opt_state` with every optax schedule counter set to `count`: the learning rate then
  follows the global iteration, as the originals' `poly_lr_scheduler(opt, lr, itr)` does,
  even for an optimiser that skipped steps (D on unlabelled steps)."""
  is_sched = lambda x: isinstance(x, optax.ScaleByScheduleState)
  return jax.tree.map(
      lambda n: n._replace(count=jnp.asarray(count, n.count.dtype)) if is_sched(n) else n,
      opt_state, is_leaf=is_sched)


def _g_gradients(loss_fn: Callable, ctx: methods.Context, states: TrainStates, batch_stats,
                 d_params, batch: Batch):
  """`(grads, new batch_stats, metrics)` of one generator loss."""
  (_, (batch_stats, m, _)), grads = jax.value_and_grad(
      lambda p: loss_fn(ctx, p, batch_stats, d_params, batch, states.step),
      has_aux=True)(states.g.params)
  return grads, batch_stats, m


def _fill_metrics(metrics: Metrics, names) -> Metrics:
  """Exactly `names`, 0 where `metrics` has none, in JAX's default float type (the two
  kinds of D-first step must return the same structure)."""
  dtype = jnp.result_type(float)
  return {k: jnp.asarray(metrics.get(k, 0.0), dtype) for k in names}


def _make_d_first_step(config: Any, method: Any, ctx: methods.Context, pmean: Callable):
  """The ICLR-2018 reproduction's iteration (docs/FIDELITY.md §8): on a labelled turn, G's
  prediction (no gradient) -> D's update -> G's update against the updated D; on an
  unlabelled turn (before `semi_start`: nothing but the step count), G's update alone."""
  hp = config.method
  sync_bn = bool(config.model.sync_bn)
  offset = int(method.schedule_offset(hp)) if method.schedule_offset else 0
  train_d = float(hp.lambda_adv) > 0  # else `train_base`: G alone, one forward per step
  names = tuple(k for k in method.metric_names if train_d or not k.startswith("d/"))
  semi_start = int(hp.semi_start)

  def apply_g(states, g_grads, batch_stats, g_count):
    g = states.g.replace(opt_state=with_schedule_count(states.g.opt_state, g_count))
    bs = batch_stats if sync_bn else pmean(batch_stats)
    return g.apply_gradients(grads=g_grads).replace(batch_stats=bs)

  def update_d(states, batch, count):
    """`(new D state, D gradients, D metrics, batch_stats)` of a labelled step."""
    d_inputs, bs = method.discriminator_inputs(ctx, states.g.params, states.g.batch_stats,
                                               batch)
    d_inputs = lax.stop_gradient(d_inputs)
    (_, m_d), d_grads = jax.value_and_grad(
        lambda p: method.discriminator_loss(ctx, p, d_inputs, batch), has_aux=True)(
            states.d.params)
    d = states.d.replace(opt_state=with_schedule_count(states.d.opt_state, count))
    d_grads = pmean(d_grads)
    return d.apply_gradients(grads=d_grads), d_grads, m_d, bs

  def labelled(states, batch, count):
    if train_d:
      new_d, d_grads, m_d, bs = update_d(states, batch, count)
    else:
      new_d, m_d, bs = states.d, {}, states.g.batch_stats
      d_grads = jax.tree.map(jnp.zeros_like, states.d.params)
    g_grads, bs, m_g = _g_gradients(method.generator_loss, ctx, states, bs, new_d.params,
                                    batch)
    g_grads = pmean(g_grads)
    metrics = _fill_metrics({**m_g, **m_d}, names)
    return apply_g(states, g_grads, bs, count), new_d, g_grads, d_grads, metrics

  def unlabelled(states, batch, count):
    g_grads, bs, m_g = _g_gradients(method.unlabelled_generator_loss, ctx, states,
                                    states.g.batch_stats, states.d.params, batch)
    g_grads = pmean(g_grads)
    active = states.step >= semi_start  # `--wait_semi`: the original skips the whole step
    new_g = jax.tree.map(lambda n, o: jnp.where(active, n, o),
                         apply_g(states, g_grads, bs, count), states.g)
    metrics = {k: v * active for k, v in _fill_metrics(m_g, names).items()}
    zero_d = jax.tree.map(jnp.zeros_like, states.d.params)
    return new_g, states.d, g_grads, zero_d, metrics

  def step(states: TrainStates, batch: Batch, rng: jax.Array) -> Tuple[TrainStates, Metrics]:
    del rng  # the iteration is deterministic given the batch and the step number
    count = states.step + offset
    turn = method.labelled_turn(hp, states.step)
    if "unlabelled" in batch:
      new_g, new_d, g_grads, d_grads, metrics = lax.cond(turn, labelled, unlabelled, states,
                                                          batch, count)
    else:
      new_g, new_d, g_grads, d_grads, metrics = labelled(states, batch, count)
    metrics = pmean(metrics)
    metrics["labelled_turn"] = turn.astype(jnp.float32)
    return new_g, new_d, g_grads, d_grads, metrics

  return step


def make_train_step(config: Any, g_model, d_model, axis_name: Optional[str] = None):
  """Returns `step(states, batch, rng) -> (states, metrics)` for `config.method.name`.

  batch: {stream: {'image': [B,H,W,3] f32, 'label': [B,H,W] i32}} per device, with
  B = iter_size * batch_size (split into iter_size chunks; gradients are averaged like the
  originals' `loss / iter_size` accumulation). All metrics are scalars, averaged over devices.
  """
  method = methods.get_method(config.method.name)
  base_ctx = make_context(config, g_model, d_model, axis_name)
  iter_size = int(config.iter_size)
  grad_norms = bool(config.diagnostics.grad_norms)
  skip_nonfinite = bool(config.diagnostics.skip_nonfinite)
  sync_bn = bool(config.model.sync_bn)
  num_steps = int(config.num_steps)
  noise_std = float(config.method.get("d_instance_noise", 0.0))
  d_every = int(config.method.get("d_update_every", 1))
  lr_offset = int(method.schedule_offset(config.method)) if method.schedule_offset else 0

  def pmean(x):
    return lax.pmean(x, axis_name) if axis_name is not None else x

  d_first = (_make_d_first_step(config, method, base_ctx, pmean)
             if method.discriminator_inputs is not None else None)

  def updates(states: TrainStates, batch: Batch, rng: jax.Array):
    """`(new_g, new_d, g_grads, d_grads, metrics)` of one step."""
    if d_first is not None:
      return d_first(states, batch, rng)
    # The originals' step is deterministic given the batch; `rng` only feeds instance noise.
    ctx = base_ctx
    noise_now = None
    if noise_std > 0 and method.uses_discriminator:
      if axis_name is not None:
        rng = jax.random.fold_in(rng, lax.axis_index(axis_name))
      noise_now = noise_std * jnp.maximum(0.0, 1.0 - states.step / num_steps)
      ctx = dataclasses.replace(ctx, d_apply=with_instance_noise(ctx.d_apply, rng, noise_now))
    g_grads, d_grads, batch_stats, metrics = _accumulate_gradients(
        method, ctx, states, batch, iter_size, grad_norms, pmean)

    g_grads = pmean(g_grads)
    if not sync_bn:
      batch_stats = pmean(batch_stats)
    new_g = states.g.apply_gradients(grads=g_grads).replace(batch_stats=batch_stats)
    new_d = states.d
    if method.uses_discriminator:
      d_grads = pmean(d_grads)
      new_d = states.d.apply_gradients(grads=d_grads)
      if d_every > 1:  # D learns on every d_every-th step only (its optimiser count too)
        d_now = states.step % d_every == 0
        new_d = jax.tree.map(lambda n, o: jnp.where(d_now, n, o), new_d, states.d)
    metrics = pmean(metrics)
    if method.uses_discriminator:
      if d_every > 1:
        metrics["d/updated"] = (states.step % d_every == 0).astype(jnp.float32)
      if noise_now is not None:
        metrics["d/instance_noise"] = noise_now
    return new_g, new_d, g_grads, d_grads, metrics

  def step(states: TrainStates, batch: Batch, rng: jax.Array) -> Tuple[TrainStates, Metrics]:
    new_g, new_d, g_grads, d_grads, metrics = updates(states, batch, rng)
    # The updated weights too: finite gradients times a large learning rate can overflow them
    # (all of these are identical on every device, so every device takes the same decision).
    finite = _all_finite((metrics, g_grads, d_grads, new_g.params, new_g.batch_stats,
                          new_d.params if method.uses_discriminator else None))
    metrics["nonfinite"] = 1.0 - finite.astype(jnp.float32)
    lr_step = states.step + lr_offset
    metrics["lr/g"] = optim.learning_rate(config.optim_g, num_steps, lr_step)
    if method.uses_discriminator:
      metrics["lr/d"] = optim.learning_rate(config.optim_d, num_steps, lr_step)
    new_states = TrainStates(step=states.step + 1, g=new_g, d=new_d)
    if skip_nonfinite:
      keep = lambda new, old: jnp.where(finite, new, old)
      new_states = jax.tree.map(keep, new_states,
                                states.replace(step=states.step + 1))
    return new_states, metrics

  return step
