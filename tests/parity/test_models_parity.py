"""Converted PyTorch reference models vs the Flax models (float32, CPU).

Random weights AND random BN statistics (`torch_reference.randomize_`), fresh random inputs
every run (seeds in the assertion messages). Relative error = max|jax - torch| / max|torch|.
Full ResNet-101 depth where the exact network matters, on small odd/even images.
"""

import copy
import functools

import numpy as np
import pytest
import torch

import jax
import jax.numpy as jnp

from flax import traverse_util

from advseg_jax.model_io import abstract_variables
from advseg_jax.models import ModelSpec, build
from advseg_jax.models.deeplab import count_params
from advseg_jax.torch_port.convert import convert_state_dict, to_numpy_state_dict

from tests.torch_ref import models as tr

TOL = 1e-5
SHALLOW = (1, 1, 2, 1)


def _numpy_sd(model):
  return {k: v.numpy() for k, v in tr.state_dict_without_counters(model).items()}


def _images(rng, n, h, w):
  """Mean-subtracted 0-255-scale images, NCHW float32."""
  return rng.normal(0, 60, (n, 3, h, w)).astype(np.float32)


def _torch_forward(model, x):
  with torch.no_grad():
    out = model(torch.from_numpy(x))
  if isinstance(out, tuple):
    return tuple(o.numpy() for o in out)
  return out.numpy()


def _jax_forward(module, variables, x, **kw):
  """NCHW numpy in, NCHW numpy out; jitted (one compile beats ~100 per-op eager compiles)."""
  out = jax.jit(functools.partial(module.apply, **kw))(variables, jnp.asarray(tr.nchw_to_nhwc(x)))
  if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
    return out  # (logits, mutated)
  if isinstance(out, tuple):
    return tuple(tr.nhwc_to_nchw(np.asarray(o)) for o in out)
  return tr.nhwc_to_nchw(np.asarray(out))


def _check(name, got, want, seed):
  err = tr.rel_err(got, want)
  print(f"{name}: rel err {err:.2e}")
  assert err <= TOL, f"{name}: rel err {err:.3e} > {TOL} (seed {seed})"
  return err


@pytest.fixture(scope="module")
def res101():
  """Full-depth Res_Deeplab(21), random weights + BN stats, and its conversion."""
  rng, seed = tr.fresh_rng()
  model = tr.randomize_(tr.Res_Deeplab(21, aspp_branches=2), seed=int(seed % 2**31)).eval()
  variables, _ = convert_state_dict(_numpy_sd(model), ModelSpec("deeplabv2", 21))
  return model, variables, rng, seed


# --------------------------------------------------------------------------- eval parity
@pytest.mark.parametrize("branches,hw", [(2, (97, 73)), (4, (64, 66))])
def test_res_deeplab_eval(res101, branches, hw):
  model, variables, rng, seed = res101
  model.layer5.branches_used = branches
  x = _images(rng, 2, *hw)
  want = _torch_forward(model, x)
  assert want.shape == (2, 21, tr.output_size(hw[0]), tr.output_size(hw[1]))
  module = build(ModelSpec("deeplabv2", 21, aspp_branches_used=branches))
  _check(f"Res_Deeplab(21) {branches} ASPP branches {hw}", _jax_forward(module, variables, x),
         want, seed)


def test_deeplab_multi_eval():
  rng, seed = tr.fresh_rng()
  model = tr.randomize_(tr.DeeplabMulti(19), seed=int(seed % 2**31)).eval()
  variables, _ = convert_state_dict(_numpy_sd(model), ModelSpec("deeplabv2_multi", 19))
  x = _images(rng, 1, 65, 80)
  aux_t, main_t = _torch_forward(model, x)
  module = build(ModelSpec("deeplabv2_multi", 19))
  aux_j, main_j = _jax_forward(module, variables, x)
  _check("DeeplabMulti(19) aux (layer5)", aux_j, aux_t, seed)
  _check("DeeplabMulti(19) main (layer6)", main_j, main_t, seed)


@pytest.mark.parametrize("hw", [(97, 73), (64, 128)])
def test_fc_discriminator(hw):
  rng, seed = tr.fresh_rng()
  model = tr.randomize_(tr.FCDiscriminator(21), seed=int(seed % 2**31)).eval()
  variables, _ = convert_state_dict(_numpy_sd(model), ModelSpec("fc_discriminator", 21))
  logits = rng.normal(0, 2, (2, 21) + hw).astype(np.float32)
  probs = torch.softmax(torch.from_numpy(logits), 1).numpy()
  want = _torch_forward(model, probs)
  assert want.shape == (2, 1, hw[0] // 32, hw[1] // 32)
  module = build(ModelSpec("fc_discriminator", 21))
  _check(f"FCDiscriminator {hw}", _jax_forward(module, variables, probs), want, seed)


@pytest.mark.parametrize("hw", [(65, 97), (33, 33)])
def test_iclr_dis(hw):
  """The ICLR `Dis` reaches the input size again for sides 32k + 1 (321 in the original)."""
  rng, seed = tr.fresh_rng()
  model = tr.randomize_(tr.Dis(21), seed=int(seed % 2**31)).eval()
  variables, _ = convert_state_dict(_numpy_sd(model), ModelSpec("fc2_discriminator", 21))
  probs = rng.dirichlet(np.ones(21), (2,) + hw).transpose(0, 3, 1, 2).astype(np.float32)
  want = _torch_forward(model, probs)
  assert want.shape == (2, 2) + hw
  module = build(ModelSpec("fc2_discriminator", 21))
  _check(f"ICLR Dis {hw}", _jax_forward(module, variables, probs), want, seed)


# --------------------------------------------------------------------------- train parity
def _train_parity(torch_model, arch, num_classes, depths, x, seed, name):
  """Train-mode forward (batch statistics) and the updated running statistics."""
  torch_model = copy.deepcopy(torch_model)
  spec = ModelSpec(arch, num_classes, depths=depths)
  variables, _ = convert_state_dict(_numpy_sd(torch_model), spec)
  torch_model.train()
  want = _torch_forward(torch_model, x)
  module = build(spec)
  out, mutated = _jax_forward(module, variables, x, train=True, mutable=["batch_stats"])
  outs = out if isinstance(out, tuple) else (out,)
  wants = want if isinstance(want, tuple) else (want,)
  for i, (o, w) in enumerate(zip(outs, wants)):
    _check(f"{name} train-mode output {i}", tr.nhwc_to_nchw(np.asarray(o)), w, seed)
  new = to_numpy_state_dict({"params": variables["params"], **mutated}, arch)
  ref = tr.state_dict_without_counters(torch_model)
  worst = 0.0
  for key in ref:
    if key.endswith(("running_mean", "running_var")):
      worst = max(worst, tr.rel_err(new[key], ref[key].numpy()))
  print(f"{name} running stats: worst rel err {worst:.2e}")
  assert worst <= TOL, f"{name}: running stats rel err {worst:.3e} (seed {seed})"
  n_bn = sum(1 for k in ref if k.endswith("running_var"))
  changed = sum(1 for k in ref if k.endswith("running_var")
                and not np.array_equal(new[k], to_numpy_state_dict(variables, arch)[k]))
  assert changed == n_bn, "every BN must update its running statistics"


@pytest.mark.parametrize("arch", ["deeplabv2", "deeplabv2_multi"])
def test_train_mode_shallow(arch):
  rng, seed = tr.fresh_rng()
  cls = tr.Res_Deeplab if arch == "deeplabv2" else tr.DeeplabMulti
  ncls = 21 if arch == "deeplabv2" else 19
  model = tr.randomize_(cls(ncls, layers=SHALLOW), seed=int(seed % 2**31))
  _train_parity(model, arch, ncls, SHALLOW, _images(rng, 2, 57, 48), seed, f"{arch} {SHALLOW}")


def test_train_mode_full_depth(res101):
  """Full ResNet-101 in train mode, judged against a float64 PyTorch run.

  With batch statistics every BN re-normalises, so float32 rounding is not damped: a
  random-weight ResNet-101 in train mode is ~2e-4 away from its own float64 result in
  PyTorch too (the error grows steadily with depth; the (1,1,2,1) test above is at 1e-6).
  The port must be as accurate as PyTorch float32: err(jax32, torch64) <= 3 *
  err(torch32, torch64), for the logits and for the updated running statistics.
  """
  model, _, rng, seed = res101
  model.layer5.branches_used = 2
  variables, _ = convert_state_dict(_numpy_sd(model), ModelSpec("deeplabv2", 21))
  x = _images(rng, 2, 41, 40)
  t32 = copy.deepcopy(model).train()
  t64 = copy.deepcopy(model).double().train()
  with torch.no_grad():
    y32 = t32(torch.from_numpy(x)).numpy()
    y64 = t64(torch.from_numpy(x).double()).numpy()
  module = build(ModelSpec("deeplabv2", 21))
  out, mutated = _jax_forward(module, variables, x, train=True, mutable=["batch_stats"])
  yj = tr.nhwc_to_nchw(np.asarray(out))
  e_j, e_t, e_jt = tr.rel_err(yj, y64), tr.rel_err(y32, y64), tr.rel_err(yj, y32)
  print(f"Res_Deeplab(21) full depth train-mode logits: jax32 vs torch32 {e_jt:.2e}, "
        f"jax32 vs torch64 {e_j:.2e}, torch32 vs torch64 {e_t:.2e}")
  assert e_j <= max(3 * e_t, TOL) and e_jt <= 1e-3, f"seed {seed}"
  new = to_numpy_state_dict({"params": variables["params"], **mutated}, "deeplabv2")
  s32, s64 = tr.state_dict_without_counters(t32), tr.state_dict_without_counters(t64)
  keys = [k for k in s32 if k.endswith(("running_mean", "running_var"))]
  assert len(keys) == 208
  worst = lambda a: max(tr.rel_err(a[k], s64[k].numpy()) for k in keys)
  w_j, w_t = worst(new), worst({k: v.numpy() for k, v in s32.items()})
  w_jt = max(tr.rel_err(new[k], s32[k].numpy()) for k in keys)
  print(f"Res_Deeplab(21) full depth running stats: jax32 vs torch32 {w_jt:.2e}, "
        f"jax32 vs torch64 {w_j:.2e}, torch32 vs torch64 {w_t:.2e}")
  assert w_j <= max(3 * w_t, TOL) and w_jt <= 1e-4, f"seed {seed}"


# --------------------------------------------------------------------------- counts
@pytest.mark.parametrize("arch,ncls,n_params,n_keys", [
    ("deeplabv2", 21, 44_048_532, 528),
    ("deeplabv2_multi", 19, 44_601_560, 536),
    ("fc_discriminator", 21, 2_783_169, 10),
    ("fc_discriminator", 19, 2_781_121, 10),
])
def test_counts(arch, ncls, n_params, n_keys, res101):
  """docs/FIDELITY.md §1.6, on the torch reference and on the Flax variables."""
  if arch == "deeplabv2":
    torch_model = res101[0]
  elif arch == "deeplabv2_multi":
    torch_model = tr.DeeplabMulti(ncls)
  else:
    torch_model = tr.FCDiscriminator(ncls)
  assert tr.count_parameters(torch_model) == n_params
  assert len(tr.state_dict_without_counters(torch_model)) == n_keys
  abstract = abstract_variables(ModelSpec(arch, ncls))
  assert count_params(abstract["params"]) == n_params
  assert len(traverse_util.flatten_dict(abstract)) == n_keys
  if arch == "deeplabv2":
    assert len(res101[0].state_dict()) == 632  # with num_batches_tracked (104 BNs)


def test_optim_parameters_multiplicity(res101):
  """docs/FIDELITY.md §1.5: stem conv 1x, 99 bottleneck convs 3x, 4 downsample convs 4x."""
  model = res101[0]
  groups = tr.optim_parameters(model, 2.5e-4)
  assert [g["lr"] for g in groups] == [2.5e-4, 2.5e-3]
  mult = tr.param_multiplicity(groups[:1], model)
  assert mult["conv1.weight"] == 1
  bottleneck = {k: v for k, v in mult.items()
                if ".conv" in k and k.startswith("layer") and not k.startswith("layer5")}
  assert len(bottleneck) == 99 and set(bottleneck.values()) == {3}
  down = {k: v for k, v in mult.items() if "downsample.0" in k}
  assert len(down) == 4 and set(down.values()) == {4}
  assert all(v == 0 for k, v in mult.items() if ".bn" in k or k.startswith("bn1")
             or "downsample.1" in k)
  cls = tr.param_multiplicity(groups[1:], model)
  assert {k for k, v in cls.items() if v} == {k for k in cls if k.startswith("layer5.")}
  assert set(v for k, v in cls.items() if k.startswith("layer5.")) == {1}
  multi = tr.DeeplabMulti(19, layers=SHALLOW)
  cls = tr.param_multiplicity(multi.optim_parameters(1.0)[1:], multi)
  assert {k for k, v in cls.items() if v} == {k for k in cls if k.startswith(("layer5", "layer6"))}


def test_legacy_sgd_duplicates():
  """A parameter listed twice gets two chained momentum updates with in-place decay."""
  rng, seed = tr.fresh_rng()
  p0 = rng.normal(size=5).astype(np.float32)
  g = rng.normal(size=5).astype(np.float32)
  p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  opt = tr.LegacySGD([{"params": [p, p]}], lr=0.1, momentum=0.9, weight_decay=0.01)
  p.grad = torch.from_numpy(g.copy())
  opt.step()
  d1 = g + 0.01 * p0
  buf = d1.copy()
  p1 = p0 - 0.1 * buf
  d2 = d1 + 0.01 * p1
  buf = 0.9 * buf + d2
  p2 = p1 - 0.1 * buf
  # p2 is a difference of O(1) float32 terms and can land near zero (seed
  # 1495590645038863624: -0.0083, 1.2e-6 relative): float32 rounding of the terms bounds the
  # error, so the tolerance scales with them. A missing or unchained second update moves p2 by
  # about 0.1 * |d2|, far beyond it.
  atol = 1e-6 * float(np.max(np.abs(np.stack([p0, g, p1]))))
  np.testing.assert_allclose(p.detach().numpy(), p2, rtol=1e-6, atol=atol, err_msg=f"seed {seed}")
  q = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  opt = tr.LegacySGD([q], lr=0.1, momentum=0.9, weight_decay=0.01)
  ref = torch.nn.Parameter(torch.from_numpy(p0.copy()))
  sgd = torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)
  for _ in range(3):
    q.grad = torch.from_numpy(g.copy())
    ref.grad = torch.from_numpy(g.copy())
    opt.step()
    sgd.step()
  np.testing.assert_allclose(q.detach().numpy(), ref.detach().numpy(), rtol=1e-6, atol=atol,
                             err_msg=f"seed {seed}")


# --------------------------------------------------------------------------- losses
def test_reference_losses():
  rng, seed = tr.fresh_rng()
  logits = torch.from_numpy(rng.normal(0, 2, (2, 5, 7, 6)).astype(np.float32))
  target = torch.from_numpy(rng.integers(0, 5, (2, 7, 6)))
  target[rng.random((2, 7, 6)) < 0.3] = 255
  got = tr.CrossEntropy2d()(logits, target)
  want = torch.nn.CrossEntropyLoss(ignore_index=255)(logits, target)
  assert abs(float(got) - float(want)) <= 1e-6 * abs(float(want)), f"seed {seed}"
  assert float(tr.CrossEntropy2d()(logits, torch.full_like(target, 255))) == 0.0

  d = torch.from_numpy(rng.normal(0, 2, (2, 1, 7, 6)).astype(np.float32))
  lab = torch.from_numpy(rng.integers(0, 2, (2, 1, 7, 6)).astype(np.float32))
  lab[torch.from_numpy(rng.random((2, 1, 7, 6)) < 0.3)] = 255
  got = tr.BCEWithLogitsLoss2d()(d, lab)
  keep = lab != 255
  z, y = d[keep].double(), lab[keep].double()
  want = (torch.clamp(z, min=0) - z * y + torch.log1p(torch.exp(-z.abs()))).mean()
  assert abs(float(got) - float(want)) <= 1e-6 * abs(float(want)), f"seed {seed}"
