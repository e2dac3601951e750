"""The optimisers of `advseg_jax.train.optim` vs PyTorch (docs/FIDELITY.md §1.5, §4.1, §6.1).

* Multiplicities: the per-leaf update counts of `generator_param_roles` equal how often the
  originals' `optim_parameters()` lists each parameter (full-depth Res_Deeplab(21): stem conv
  1x, 99 bottleneck convs 3x, 4 downsample convs 4x; BN affine 0), the head gets 10x LR, and
  the dead ASPP branches (grad None in torch) get multiplicity 0.
* `legacy_duplicate_updates=True` == a hand-written PyTorch 0.2-0.4 SGD loop over that
  listing (grad += wd * p in place, one shared momentum buffer, p -= lr * buf, once per
  listing), several steps with the poly schedule.
* `duplicate_rule='torch2'` == `torch.optim.SGD(foreach=False)` of the installed PyTorch over
  the same listing; the default 'torch0.4' rule equals it too without weight decay once the
  momentum buffers exist; the single-parameter figures of docs/FIDELITY.md §1.5.
* Normal mode == `torch.optim.SGD` with the two de-duplicated parameter groups (10x head) and
  poly LR; D Adam == `torch.optim.Adam(betas=(0.9, 0.99))` with poly LR (also with coupled
  weight decay), and the ICLR reproduction's SGD(momentum 0.5, nesterov, wd 1e-4).

Random weights, random gradients every step (fresh each run; seeds in the messages). Dead
branches and BN affine get random JAX gradients too: multiplicity 0 must ignore them.
"""

from __future__ import annotations

import copy
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from advseg_jax.config.defaults import base_config
from advseg_jax.models.deeplab import DeepLabV2
from advseg_jax.models.discriminator import FCDiscriminator
from advseg_jax.train import optim

from tests import seeds
from tests.float32_noise import noise_bound
from tests.torch_ref import models as tr
from tests.torch_ref import training as ttr

TOL = 1e-6  # "exact": float32 rounding only
K = 3
TINY = (1, 1, 1, 1)
NUM_STEPS = 6  # poly schedule length; we take 4 steps, so the LR decays to (1 - 3/6)^0.9


def _seed():
  """A fresh seed per run, printed on failure; ADVSEG_TEST_SEED=<int> reproduces it."""
  return seeds.draw(bits=31)


def _rel(a, b, floor=0.0) -> float:
  """max |a - b| / max |b|; `floor` bounds the scale from below (a 1-element bias near zero
  would otherwise turn an ulp of its update into a large "relative" error)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  scale = max(np.abs(b).max(), floor)
  return float(np.abs(a - b).max() / scale) if scale > 0 else float(np.abs(a).max())


def _update_err(got_new, got_old, want_new, want_old) -> float:
  """Relative error of this step's update, each side from its own previous parameters
  (`got_new - got_old` vs `want_new - want_old`; JAX's and torch's parameters drift apart by float32
  ulps over the steps, which is not an error of this step's update), less 2 float32 ulps of the
  parameters per element (they are stored in float32, so an update is only known to that)."""
  f64 = lambda a: np.asarray(a, np.float64)
  got_upd, want_upd = f64(got_new) - f64(got_old), f64(want_new) - f64(want_old)
  slack = 2.0 * np.spacing(np.abs(np.asarray(want_new, np.float32))).astype(np.float64)
  diff = np.maximum(np.abs(got_upd - want_upd) - slack, 0.0)
  return float(diff.max() / np.abs(want_upd).max())


UPDATE_TOL = 1e-4  # gradients here are ~1e-2 >> Adam's eps, so updates agree closely


def _update_bound(want_new, want_old, exact_new, exact_old) -> float:
  """The bound on `_update_err` of a float32 update: UPDATE_TOL, widened to NOISE_FACTOR x
  torch float32's own error against its float64 twin (tests/float32_noise.py). Adam's first step is
  lr * g'/(|g'| + eps) with g' = g + wd * p; where g and wd * p nearly cancel, g' is known to
  few bits in float32 and so is the update (seed 968349191: torch float32's own error there is
  3.0e-4 of the largest update, JAX's 2.2e-4)."""
  return noise_bound(UPDATE_TOL, _update_err(want_new, want_old, exact_new, exact_old))


def _g_template(multi: bool = False, depths=TINY, width: int = 8, num_classes: int = K):
  model = DeepLabV2(num_classes=num_classes, multi_level=multi, depths=depths, width=width)
  return jax.eval_shape(lambda k: model.init(k, jnp.zeros((1, 33, 33, 3))), jax.random.key(0))


def _flat_roles(params_template, heads, legacy, branches=2):
  mult, lr_mult = optim.generator_param_roles(params_template, heads, branches, legacy)
  return (ttr.flax_to_torch_arrays(mult), ttr.flax_to_torch_arrays(lr_mult))


# --------------------------------------------------------------------------- multiplicities
def test_multiplicities_match_the_original_listing_full_depth():
  model = tr.Res_Deeplab(21, aspp_branches=2)  # full ResNet-101
  listing = tr.param_multiplicity(tr.optim_parameters(model, 1.0), model)
  template = _g_template(depths=(3, 4, 23, 3), width=64, num_classes=21)["params"]
  for legacy in (True, False):
    mult, lr_mult = _flat_roles(template, ("layer5",), legacy)
    assert set(mult) == set(listing), sorted(set(mult) ^ set(listing))
    for name, count in listing.items():
      m = int(np.asarray(mult[name]))
      if name.startswith("layer5."):
        branch = int(name.split(".")[2])
        # torch lists all four branches, but 2 and 3 never get a gradient (skipped).
        assert m == (1 if branch < 2 else 0), (name, m)
        assert float(np.asarray(lr_mult[name])) == 10.0, name
      else:
        assert m == (count if legacy else min(count, 1)), (name, m, count)
        assert float(np.asarray(lr_mult[name])) == 1.0, name
  counts = {}
  for name, count in listing.items():
    if not name.startswith("layer5."):
      counts[count] = counts.get(count, 0) + 1
  # docs/FIDELITY.md §1.5: stem 1x, 99 bottleneck convs 3x, 4 downsample convs 4x, BN affine 0.
  assert counts == {0: 104 * 2, 1: 1, 3: 99, 4: 4}, counts


def test_multiplicities_deeplab_multi_heads():
  model = tr.DeeplabMulti(K, aspp_branches=2, layers=TINY, width=8)
  listing = tr.param_multiplicity(tr.optim_parameters(model, 1.0), model)
  mult, lr_mult = _flat_roles(_g_template(multi=True)["params"], ("layer5", "layer6"), True)
  for name, count in listing.items():
    head = name.startswith(("layer5.", "layer6."))
    if head:
      assert int(np.asarray(mult[name])) == (1 if int(name.split(".")[2]) < 2 else 0), name
    else:
      assert int(np.asarray(mult[name])) == count, name
    assert float(np.asarray(lr_mult[name])) == (10.0 if head else 1.0), name


# --------------------------------------------------------------------------- G SGD
def _random_grads(rng, arrays, scale=1e-2):
  return {n: (rng.normal(0, scale, a.shape)).astype(np.float32) for n, a in arrays.items()}


def _live(name: str) -> bool:
  """Parameters that get a gradient in torch: not BN affine (requires_grad False), not the
  dead ASPP branches 2 and 3 (never used in the forward)."""
  if ".conv2d_list." in name:
    return int(name.split(".")[2]) < 2
  return "bn" not in name and "downsample.1" not in name


def _torch_legacy_step(groups, bufs, wd, momentum):
  """PyTorch 0.2-0.4 `SGD.step` (docs/FIDELITY.md §1.5), written out: for every *listing* of
  a parameter, in order: d_p = p.grad; d_p += wd * p (in place on the gradient); one shared
  momentum buffer buf = m * buf + d_p (buf = d_p the first time); p -= lr * buf."""
  with torch.no_grad():
    for group in groups:
      for p in group["params"]:
        if p.grad is None:
          continue
        d_p = p.grad.data
        d_p.add_(p.data, alpha=wd)
        if id(p) not in bufs:
          bufs[id(p)] = d_p.clone()
        else:
          bufs[id(p)].mul_(momentum).add_(d_p)
        p.data.add_(bufs[id(p)], alpha=-group["lr"])


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy_duplicates", "torch_sgd"])
def test_generator_sgd_matches_torch(legacy):
  seed = _seed()
  rng = np.random.default_rng(seed)
  lr, wd, momentum = 0.05, 5e-4, 0.9  # large lr: the duplicated updates differ visibly
  model = tr.randomize_(tr.Res_Deeplab(K, aspp_branches=2, layers=TINY, width=8), seed=seed)
  template = _g_template()
  params = ttr.torch_to_flax_variables(model, template)["params"]
  twin = None
  if legacy:  # the shared reference's LegacySGD must agree with the loop written here
    twin = tr.randomize_(tr.Res_Deeplab(K, aspp_branches=2, layers=TINY, width=8), seed=seed)
    twin_opt = tr.LegacySGD(tr.optim_parameters(twin, lr), lr=lr, momentum=momentum,
                            weight_decay=wd)

  cfg = base_config().optim_g
  cfg.lr, cfg.momentum, cfg.weight_decay, cfg.power = lr, momentum, wd, 0.9
  cfg.legacy_duplicate_updates = legacy
  tx = optim.generator_optimizer(params, cfg, head_names=("layer5",), aspp_branches_used=2,
                                 num_steps=NUM_STEPS)
  opt_state = tx.init(params)

  @jax.jit
  def jax_step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  if legacy:
    groups = ttr.generator_param_groups(model, lr, duplicates=True)
    bufs = {}
  else:
    opt = ttr.make_generator_optimizer(model, lr, momentum, wd, legacy=False)
  named = dict(model.named_parameters())
  before = prev = ttr.torch_arrays(model)
  prev_got = ttr.flax_to_torch_arrays(jax.device_get(params))
  worst = worst_u = 0.0
  for step in range(4):
    grads = _random_grads(rng, ttr.torch_arrays(model))
    for name, p in named.items():
      p.grad = torch.from_numpy(grads[name].copy()) if _live(name) else None
    if legacy:
      base = ttr.lr_poly(lr, step, NUM_STEPS, 0.9)
      groups[0]["lr"], groups[1]["lr"] = base, 10 * base
      _torch_legacy_step(groups, bufs, wd, momentum)
      for name, p in twin.named_parameters():
        p.grad = torch.from_numpy(grads[name].copy()) if _live(name) else None
      ttr.adjust_learning_rate(twin_opt, lr, step, NUM_STEPS, 0.9)
      twin_opt.step()
    else:
      ttr.adjust_learning_rate(opt, lr, step, NUM_STEPS, 0.9)
      opt.step()
    # JAX gets random gradients for every leaf, frozen and dead ones included.
    params, opt_state = jax_step(params, opt_state,
                                 ttr.torch_to_flax_variables(grads, template["params"]))
    got = ttr.flax_to_torch_arrays(jax.device_get(params))
    want = ttr.torch_arrays(model)
    for name in want:
      err = _rel(got[name], want[name])
      worst = max(worst, err)
      assert err <= TOL, f"step {step} {name}: rel err {err:.2e} (seed {seed})"
      if not _live(name):
        assert np.array_equal(got[name], before[name]), f"{name} changed (seed {seed})"
      else:
        assert not np.array_equal(want[name], before[name]), name
        upd = _update_err(got[name], prev_got[name], want[name], prev[name])
        worst_u = max(worst_u, upd)
        assert upd <= 1e-4, f"step {step} {name}: update rel err {upd:.2e} (seed {seed})"
    prev, prev_got = want, got
    if twin is not None:
      for name, w in ttr.torch_arrays(twin).items():
        assert _rel(w, want[name]) <= TOL, f"LegacySGD vs loop: {name} (seed {seed})"
  print(f"G SGD legacy={legacy}: params max rel err {worst:.2e}, updates {worst_u:.2e} over "
        f"4 steps (seed {seed})")


def test_legacy_and_plain_sgd_differ_only_on_duplicated_tensors():
  """One step from the same state: tensors listed once get the same new values, 3x/4x-listed
  ones do not (compared as new - old parameters: `torch_sgd` returns `(p - lr * buf) - p` as
  its update, `grouped_sgd` `-lr * buf`, which round differently but land on the same
  parameters)."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  template = _g_template()
  model = tr.randomize_(tr.Res_Deeplab(K, aspp_branches=2, layers=TINY, width=8), seed=seed)
  params = ttr.torch_to_flax_variables(model, template)["params"]
  grads = ttr.torch_to_flax_variables(_random_grads(rng, ttr.torch_arrays(model)),
                                      template["params"])
  out = {}
  for legacy in (True, False):
    cfg = base_config().optim_g
    cfg.lr, cfg.legacy_duplicate_updates = 0.05, legacy
    tx = optim.generator_optimizer(params, cfg, head_names=("layer5",), aspp_branches_used=2,
                                   num_steps=NUM_STEPS)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    new = jax.device_get(optax.apply_updates(params, updates))
    out[legacy] = ttr.flax_to_torch_arrays(jax.tree.map(
        lambda n, p: np.asarray(n, np.float64) - np.asarray(p, np.float64), new, params))
  listing = tr.param_multiplicity(tr.optim_parameters(model, 1.0), model)
  for name, count in listing.items():
    same = np.allclose(out[True][name], out[False][name], rtol=1e-6, atol=0)
    if count > 1 and _live(name):
      assert not same, name
      # k chained momentum steps from an empty buffer move sum_j (1 - 0.9^j) / 0.1 times as
      # far as one (1, 1.9, 2.71, 3.44: 5.61x for 3 listings, 9.05x for 4), up to weight decay.
      ratio = np.abs(out[True][name]).sum() / np.abs(out[False][name]).sum()
      expected = sum((1 - 0.9**j) / 0.1 for j in range(1, count + 1))
      assert abs(ratio / expected - 1) < 0.05, (name, count, ratio, expected)
    else:
      assert same, name


# --------------------------------------------------------------------------- current PyTorch
def _current_torch_sgd(model, lr, momentum, wd, *, foreach=False):
  """`torch.optim.SGD(model.optim_parameters(args), lr, momentum, weight_decay)` of the
  installed PyTorch over the originals' listing, duplicates kept (it warns about them)."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
    return torch.optim.SGD(ttr.generator_param_groups(model, lr, duplicates=True), lr=lr,
                           momentum=momentum, weight_decay=wd, foreach=foreach)


def _per_listing_tx(params, lr, momentum, wd, rule):
  cfg = base_config().optim_g
  cfg.lr, cfg.momentum, cfg.weight_decay, cfg.power = lr, momentum, wd, 0.9
  cfg.legacy_duplicate_updates, cfg.duplicate_rule = True, rule
  return optim.generator_optimizer(params, cfg, head_names=("layer5",), aspp_branches_used=2,
                                   num_steps=NUM_STEPS)


def _steps_against_torch(model, opt, template, params, txs, rng, steps):
  """Runs torch's `opt` and each JAX optimiser `txs[rule] = (tx, state)` over the steps
  `range(*steps)` on the same random gradients; returns {rule: (worst parameter rel err,
  worst update rel err)} over the tensors that get a gradient in torch."""
  named = dict(model.named_parameters())
  runs = {r: [jax.jit(tx.update), state, params] for r, (tx, state) in txs.items()}
  worst = {r: (0.0, 0.0) for r in txs}
  for step in range(*steps):
    prev = ttr.torch_arrays(model)
    grads = _random_grads(rng, prev)
    for name, p in named.items():
      p.grad = torch.from_numpy(grads[name].copy()) if _live(name) else None
    ttr.adjust_learning_rate(opt, opt.defaults["lr"], step, NUM_STEPS, 0.9)
    opt.step()
    want = ttr.torch_arrays(model)
    flax_grads = ttr.torch_to_flax_variables(grads, template["params"])
    for rule, run in runs.items():
      update, state, cur = run
      old = ttr.flax_to_torch_arrays(jax.device_get(cur))
      updates, run[1] = update(flax_grads, state, cur)
      run[2] = optax.apply_updates(cur, updates)
      new = ttr.flax_to_torch_arrays(jax.device_get(run[2]))
      live = [n for n in want if _live(n)]
      err = max(_rel(new[n], want[n]) for n in live)
      upd = max(_update_err(new[n], old[n], want[n], prev[n]) for n in live)
      worst[rule] = (max(worst[rule][0], err), max(worst[rule][1], upd))
  return worst


def test_per_listing_torch2_rule_is_current_torch_sgd_on_the_original_listing():
  """`duplicate_rule='torch2'` == `torch.optim.SGD(foreach=False)` of the installed PyTorch
  (2.x) over the originals' listing (bottleneck convs 3x, downsample convs 4x, one group),
  4 steps with poly LR and weight decay; the 'torch0.4' rule (the default) is not."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  lr, momentum, wd = 0.05, 0.9, 5e-3  # large lr and decay: the two rules differ visibly
  model = tr.randomize_(tr.Res_Deeplab(K, aspp_branches=2, layers=TINY, width=8), seed=seed)
  template = _g_template()
  params = ttr.torch_to_flax_variables(model, template)["params"]
  txs = {rule: _per_listing_tx(params, lr, momentum, wd, rule) for rule in optim.DUPLICATE_RULES}
  txs = {rule: (tx, tx.init(params)) for rule, tx in txs.items()}
  opt = _current_torch_sgd(model, lr, momentum, wd)
  out = _steps_against_torch(model, opt, template, params, txs, rng, (0, 4))
  err, upd = out["torch2"]
  assert err <= TOL and upd <= 1e-4, f"torch2 rule: rel err {err:.2e}, update {upd:.2e} " \
                                     f"(seed {seed})"
  # The default rule (PyTorch 0.2-0.4) differs on the duplicated tensors by far more.
  assert out["torch0.4"][1] > 1e-2, f"torch0.4 rule vs torch 2: {out['torch0.4'][1]:.2e}"
  print(f"per-listing rule torch2 vs torch {torch.__version__} SGD(foreach=False): params "
        f"{err:.2e}, updates {upd:.2e}; rule torch0.4 vs it: updates {out['torch0.4'][1]:.2e} "
        f"(seed {seed})")


def test_per_listing_rules_differ_only_by_decay_and_first_buffers():
  """Without weight decay and once every parameter has a momentum buffer, the default
  'torch0.4' rule is `torch.optim.SGD(foreach=False)` of the installed PyTorch too: the two
  PyTorch versions differ only in the decay term (accumulated in place over the listings in
  0.2-0.4) and in the first step's buffers (one per listing in 2.x)."""
  seed = _seed()
  rng = np.random.default_rng(seed)
  lr, momentum = 0.05, 0.9
  model = tr.randomize_(tr.Res_Deeplab(K, aspp_branches=2, layers=TINY, width=8), seed=seed)
  template = _g_template()
  params = ttr.torch_to_flax_variables(model, template)["params"]
  buffers = _random_grads(rng, ttr.torch_arrays(model))
  opt = _current_torch_sgd(model, lr, momentum, 0.0)
  for name, p in model.named_parameters():
    if _live(name):
      opt.state[p]["momentum_buffer"] = torch.from_numpy(buffers[name].copy())
  momentum_tree = jax.tree.map(jnp.asarray,
                               ttr.torch_to_flax_variables(buffers, template["params"]))
  tx = _per_listing_tx(params, lr, momentum, 0.0, "torch0.4")
  state = optim.TorchSGDState(count=jnp.asarray(1, jnp.int32), momentum=momentum_tree)
  err, upd = _steps_against_torch(model, opt, template, params, {"torch0.4": (tx, state)},
                                  rng, (1, 4))["torch0.4"]
  assert err <= TOL and upd <= 1e-4, f"rel err {err:.2e}, update {upd:.2e} (seed {seed})"


def test_torch_sgd_paths_on_a_duplicated_listing():
  """The figures docs/FIDELITY.md §1.5 quotes: a parameter (1.0) listed 3 times, unit
  gradient, lr 0.1, momentum 0.9, two steps. PyTorch 0.2-0.4 (`LegacySGD`) and the 'torch0.4'
  rule: 0.439, -0.782969; PyTorch 2.x `foreach=False` and the 'torch2' rule: 0.7, -0.1049;
  2.x `foreach=True` (its default on GPUs; run here on CPU): 0.7, -0.4187, neither."""
  def torch_run(make):
    p = torch.nn.Parameter(torch.ones(1, dtype=torch.float64))
    with warnings.catch_warnings():
      warnings.filterwarnings("ignore", message=".*duplicate parameters.*")
      opt = make([{"params": [p, p, p]}])
    values = []
    for _ in range(2):
      p.grad = torch.ones_like(p)
      opt.step()
      values.append(float(p.detach()[0]))
    return values

  def jax_run(rule):
    tx = optim.torch_sgd(lambda count: jnp.asarray(0.1), {"w": 3}, {"w": 1.0}, momentum=0.9,
                         weight_decay=0.0, rule=rule)
    params = {"w": jnp.ones((1,))}
    state, values = tx.init(params), []
    for _ in range(2):
      updates, state = tx.update({"w": jnp.ones((1,))}, state, params)
      params = optax.apply_updates(params, updates)
      values.append(float(params["w"][0]))
    return values

  sgd = lambda foreach: lambda g: torch.optim.SGD(g, lr=0.1, momentum=0.9, foreach=foreach)
  legacy = torch_run(lambda g: tr.LegacySGD(g, lr=0.1, momentum=0.9))
  single, foreach = torch_run(sgd(False)), torch_run(sgd(True))
  np.testing.assert_allclose(legacy, [0.439, -0.782969], atol=1e-12)
  np.testing.assert_allclose(jax_run("torch0.4"), legacy, atol=1e-6)
  np.testing.assert_allclose(single, [0.7, -0.1049], atol=1e-12)
  np.testing.assert_allclose(jax_run("torch2"), single, atol=1e-6)
  np.testing.assert_allclose(foreach, [0.7, -0.4187], atol=1e-12)
  print(f"torch {torch.__version__}: foreach=False {single}, foreach=True {foreach}, "
        f"0.2-0.4 {legacy}")


# --------------------------------------------------------------------------- D optimisers
@pytest.mark.parametrize("kind", ["adam", "adam_wd", "sgd_nesterov"])
def test_discriminator_optimizer_matches_torch(kind):
  seed = _seed()
  rng = np.random.default_rng(seed)
  torch.manual_seed(seed)
  lr = 1e-3
  model = tr.FCDiscriminator(K, ndf=8)
  template = jax.eval_shape(lambda k: FCDiscriminator(ndf=8).init(k, jnp.zeros((1, 64, 64, K))),
                            jax.random.key(0))["params"]
  params = {"main": ttr.torch_to_flax_variables(model, template)}
  cfg = base_config().optim_d
  cfg.lr, cfg.power = lr, 0.9
  if kind == "adam":
    make_opt = lambda ps: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.99))
  elif kind == "adam_wd":
    cfg.weight_decay = 1e-2
    make_opt = lambda ps: torch.optim.Adam(ps, lr=lr, betas=(0.9, 0.99), weight_decay=1e-2)
  else:  # ICLR reproduction: SGD(lr, momentum 0.5, nesterov, weight decay 1e-4)
    cfg.name, cfg.momentum, cfg.nesterov, cfg.weight_decay = "sgd", 0.5, True, 1e-4
    lr = cfg.lr = 0.1
    make_opt = lambda ps: torch.optim.SGD(ps, lr=lr, momentum=0.5, nesterov=True,
                                          weight_decay=1e-4)
  opt = make_opt(model.parameters())
  # A float64 twin measures torch float32's own error of each update (see _update_bound).
  model64 = copy.deepcopy(model).double()
  opt64 = make_opt(model64.parameters())
  tx = optim.discriminator_optimizer(cfg, num_steps=NUM_STEPS)
  opt_state = tx.init(params)

  @jax.jit
  def jax_step(params, opt_state, grads):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  # optax computes Adam's bias correction 1 - b2**t in float32 (torch: in float64); at t = 2,
  # 1 - 0.9801 magnifies the float32 error of 0.99**2 by ~50x, i.e. a few 1e-6 of an update,
  # so Adam is exact only to ~1e-5 of a parameter near zero. SGD has no such term.
  tol = 1e-5 if kind.startswith("adam") else TOL
  worst_p = worst_u = 0.0
  got = ttr.flax_to_torch_arrays(jax.device_get(params["main"]))
  moved = {}  # per tensor: the sum over steps of torch's largest update
  for step in range(4):
    before, got_before = ttr.torch_arrays(model), got
    before64 = ttr.torch_arrays(model64)
    grads = _random_grads(rng, before)
    for m, o in ((model, opt), (model64, opt64)):
      for name, p in m.named_parameters():
        p.grad = torch.from_numpy(grads[name].astype(p.detach().numpy().dtype))
      ttr.adjust_learning_rate(o, lr, step, NUM_STEPS, 0.9)
      o.step()
    exact = ttr.torch_arrays(model64)
    params, opt_state = jax_step(params, opt_state,
                                 {"main": ttr.torch_to_flax_variables(grads, template)})
    got = ttr.flax_to_torch_arrays(jax.device_get(params["main"]))
    for name, want in ttr.torch_arrays(model).items():
      # Relative to the parameter or, for a 1-element bias near zero, to how far it has moved:
      # the two sides drift apart by each step's float32 error of the update, so after n steps
      # the drift is bounded by the n updates together, not by the last one (seed 1421881808:
      # classifier.bias at step 3, 1.56e-5 of that step's update).
      moved[name] = moved.get(name, 0.0) + float(np.abs(want - before[name]).max())
      err = _rel(got[name], want, floor=moved[name])
      # Each side's update from its own previous parameters (see _update_err).
      upd = _update_err(got[name], got_before[name], want, before[name])
      bound = _update_bound(want, before[name], exact[name], before64[name])
      worst_p, worst_u = max(worst_p, err), max(worst_u, upd)
      assert err <= tol, f"{kind} step {step} {name}: rel err {err:.2e} (seed {seed})"
      assert upd <= bound, (f"{kind} step {step} {name}: update rel err {upd:.2e} > {bound:.2e} "
                            f"(seed {seed})")
  print(f"D {kind}: params max rel err {worst_p:.2e}, updates {worst_u:.2e} (seed {seed})")


def test_poly_schedule_is_lr_poly():
  sched = optim.poly_schedule(2.5e-4, 20000, 0.9)
  for i in (0, 1, 5000, 19999):
    assert abs(float(sched(i)) - ttr.lr_poly(2.5e-4, i, 20000, 0.9)) <= 1e-6 * 2.5e-4
