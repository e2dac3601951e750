"""Parity of the torch-exact primitives in `advseg_jax.models.layers`, and of the kernels
that compute them (`advseg_jax.kernels`), with PyTorch (CPU).

Fresh random inputs every run; the seed is in every assertion message. Relative error is
max|jax - torch| / max|torch|.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import flax.linen as nn_flax

import jax.numpy as jnp

from advseg_jax.kernels import matmul
from advseg_jax.kernels import selection as kernels
from advseg_jax.kernels.selection import Kernels
from advseg_jax.kernels.batch_norm import batch_norm_train
from advseg_jax.models import layers
from advseg_jax.models.deeplab import output_size
from tests.torch_ref.models import fresh_rng, nchw_to_nhwc, nhwc_to_nchw, output_size as torch_out
from tests.torch_ref.models import rel_err

TOL = 1e-5


@pytest.mark.parametrize("src,dst", [
    ((41, 41), (321, 321)),   # VOC logits -> crop (up, odd)
    ((40, 33), (81, 64)),     # mixed even/odd up
    ((13, 10), (97, 73)),
    ((65, 97), (33, 20)),     # down
    ((64, 128), (31, 50)),    # down, even
    ((9, 16), (9, 31)),       # one axis unchanged
    ((1, 5), (7, 1)),         # degenerate sizes
])
def test_resize_bilinear_align_corners(src, dst):
  rng, seed = fresh_rng()
  x = rng.normal(0, 3, (2, 3) + src).astype(np.float32)
  want = F.interpolate(torch.from_numpy(x), size=dst, mode="bilinear",
                       align_corners=True).numpy()
  got = nhwc_to_nchw(np.asarray(layers.resize_bilinear_align_corners(
      jnp.asarray(nchw_to_nhwc(x)), dst)))
  err = rel_err(got, want)
  print(f"resize {src}->{dst}: rel err {err:.2e}")
  assert err <= TOL, f"seed {seed}: rel err {err}"


@pytest.mark.parametrize("size", [(1, 2), (5, 6), (40, 41), (81, 80), (161, 160), (321, 256)])
def test_max_pool_ceil(size):
  rng, seed = fresh_rng()
  x = rng.normal(-1, 2, (2, 4) + size).astype(np.float32)  # negatives: padding must be -inf
  pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
  want = pool(torch.from_numpy(x)).numpy()
  got = nhwc_to_nchw(np.asarray(layers.max_pool_ceil(jnp.asarray(nchw_to_nhwc(x)), 3, 2, 1)))
  assert got.shape == want.shape, f"{size}: {got.shape} vs torch {want.shape}"
  np.testing.assert_array_equal(got, want, err_msg=f"seed {seed}")


@pytest.mark.parametrize("k,s,p,d,size", [
    (7, 2, 3, 1, (65, 64)), (3, 1, 2, 2, (17, 18)), (3, 1, 24, 24, (9, 10)),
    (4, 2, 1, 1, (33, 32)), (4, 2, 2, 1, (65, 97)), (1, 2, 0, 1, (41, 40)),
])
def test_conv(k, s, p, d, size):
  rng, seed = fresh_rng()
  cin, cout = 5, 7
  x = rng.normal(0, 1, (2, cin) + size).astype(np.float32)
  w = rng.normal(0, 0.3, (cout, cin, k, k)).astype(np.float32)
  b = rng.normal(0, 0.3, (cout,)).astype(np.float32)
  want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=s,
                  padding=p, dilation=d).numpy()
  mod = layers.conv(cout, k, stride=s, padding=p, dilation=d, use_bias=True, in_features=cin)
  got = mod.apply({"params": {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0)),
                              "bias": jnp.asarray(b)}}, jnp.asarray(nchw_to_nhwc(x)))
  got = nhwc_to_nchw(np.asarray(got))
  assert got.shape == want.shape
  err = rel_err(got, want)
  assert err <= TOL, f"seed {seed}: rel err {err}"


@pytest.mark.parametrize("train", [False, True])
def test_batchnorm(train):
  rng, seed = fresh_rng()
  c = 6
  x = rng.normal(1.5, 2.0, (3, c, 7, 5)).astype(np.float32)
  stats = dict(weight=rng.uniform(0.5, 1.5, c), bias=rng.normal(0, 0.5, c),
               running_mean=rng.normal(0, 0.5, c), running_var=rng.uniform(0.5, 2.0, c))
  bn = nn.BatchNorm2d(c)
  with torch.no_grad():
    for k, v in stats.items():
      getattr(bn, k).copy_(torch.from_numpy(v.astype(np.float32)))
  bn.train(train)
  want = bn(torch.from_numpy(x)).detach().numpy()
  variables = {"params": {"scale": stats["weight"], "bias": stats["bias"]},
               "batch_stats": {"mean": stats["running_mean"], "var": stats["running_var"]}}
  variables = {c_: {k: jnp.asarray(v, jnp.float32) for k, v in d.items()}
               for c_, d in variables.items()}
  mod = layers.BatchNorm(use_running_average=not train)
  got, mutated = mod.apply(variables, jnp.asarray(nchw_to_nhwc(x)), mutable=["batch_stats"])
  err = rel_err(nhwc_to_nchw(np.asarray(got)), want)
  assert err <= TOL, f"seed {seed}: output rel err {err}"
  for flax_name, torch_name in (("mean", "running_mean"), ("var", "running_var")):
    e = rel_err(mutated["batch_stats"][flax_name], getattr(bn, torch_name).numpy())
    assert e <= TOL, f"seed {seed}: {torch_name} rel err {e}"



@pytest.mark.parametrize("train", [False, True])
def test_batchnorm_gradients_equal_torch(train):
  """d input, d weight, d bias of BatchNorm2d (train mode: the hand-written backward of
  `batch_norm_train`, and autodiff) against torch autograd, for a non-uniform upstream
  gradient."""
  import jax  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()
  c = 5
  x = rng.normal(-0.7, 1.7, (4, c, 6, 7)).astype(np.float32)
  up = rng.normal(0, 1, x.shape).astype(np.float32)
  w, b = rng.uniform(0.5, 1.5, c).astype(np.float32), rng.normal(0, 0.5, c).astype(np.float32)
  rm, rv = rng.normal(0, 0.5, c).astype(np.float32), rng.uniform(0.5, 2, c).astype(np.float32)
  bn = nn.BatchNorm2d(c)
  with torch.no_grad():
    bn.weight.copy_(torch.from_numpy(w)); bn.bias.copy_(torch.from_numpy(b))
    bn.running_mean.copy_(torch.from_numpy(rm)); bn.running_var.copy_(torch.from_numpy(rv))
  bn.train(train)
  xt = torch.from_numpy(x).requires_grad_()
  (bn(xt) * torch.from_numpy(up)).sum().backward()
  variables = {"params": {"scale": jnp.asarray(w), "bias": jnp.asarray(b)},
               "batch_stats": {"mean": jnp.asarray(rm), "var": jnp.asarray(rv)}}
  upj = jnp.asarray(nchw_to_nhwc(up))
  for impl in kernels.BATCH_NORM_IMPLS:
    mod = layers.BatchNorm(use_running_average=not train, kernels=Kernels(batch_norm=impl))

    def loss(params, xj, mod=mod):
      y, _ = mod.apply({"params": params, "batch_stats": variables["batch_stats"]}, xj,
                       mutable=["batch_stats"])
      return jnp.sum(y * upj)

    g_params, g_x = jax.grad(loss, argnums=(0, 1))(variables["params"],
                                                    jnp.asarray(nchw_to_nhwc(x)))
    for name, got, want in (("input", nhwc_to_nchw(np.asarray(g_x)), xt.grad.numpy()),
                            ("weight", np.asarray(g_params["scale"]), bn.weight.grad.numpy()),
                            ("bias", np.asarray(g_params["bias"]), bn.bias.grad.numpy())):
      err = rel_err(got, want)
      assert err <= 1e-4, f"seed {seed}: {impl} d {name} rel err {err}"


def test_batch_norm_train_backward_equals_autodiff():
  """`batch_norm_train`'s hand-written backward == autodiff of the two-pass formula,
  including gradients that flow through the returned mean and variance, for NHWC and
  [rows, C] inputs and bfloat16 outputs."""
  import jax  # pylint: disable=import-outside-toplevel
  from jax import lax  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()

  def reference(x, scale, bias, eps, dtype):
    axes = tuple(range(x.ndim - 1))
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axes)
    var = jnp.mean(jnp.square(x32 - mean), axes)
    y = ((x32 - mean) * (lax.rsqrt(var + eps) * scale) + bias).astype(dtype)
    return y, mean, var

  for shape, dtype in (((3, 5, 4, 6), jnp.float32), ((37, 6), jnp.float32),
                       ((2, 5, 3, 6), jnp.bfloat16)):
    x = jnp.asarray(rng.normal(0.4, 1.3, shape), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.5, 1.5, 6), jnp.float32)
    bias = jnp.asarray(rng.normal(0, 0.5, 6), jnp.float32)
    w_y = jnp.asarray(rng.normal(0, 1, shape), jnp.float32)
    w_m, w_v = (jnp.asarray(rng.normal(0, 1, 6), jnp.float32) for _ in range(2))

    def loss(fn, x, scale, bias):
      y, mean, var = fn(x, scale, bias, 1e-5, dtype)
      return jnp.sum(jnp.sin(y.astype(jnp.float32)) * w_y) + jnp.sum(mean * w_m + var * w_v)

    got = jax.grad(lambda *a: loss(lambda *b: batch_norm_train(*b[:4], None, b[4]), *a),
                   argnums=(0, 1, 2))(x, scale, bias)
    want = jax.grad(lambda *a: loss(reference, *a), argnums=(0, 1, 2))(x, scale, bias)
    tol = 1e-5 if dtype == jnp.float32 else 2e-2
    for name, a, b in zip(("x", "scale", "bias"), got, want):
      err = rel_err(np.asarray(a), np.asarray(b))
      assert err <= tol, f"seed {seed}: {shape} {dtype.__name__} d {name} rel err {err}"


def test_output_size_table():
  """docs/FIDELITY.md §1.4: 321->41, 505->64, 512->65, 1024->129, 720->91, 1280->161."""
  table = {321: 41, 505: 64, 512: 65, 1024: 129, 720: 91, 1280: 161, 65: 9, 97: 13, 73: 10}
  for n, want in table.items():
    assert output_size(n) == want == torch_out(n), n


@pytest.mark.parametrize("stride,size,bias", [(1, 41, False), (2, 41, False), (2, 40, True),
                                              (1, 13, True)])
def test_pointwise_conv_equals_torch_and_nn_conv(stride, size, bias):
  """`PointwiseConv` (1x1 conv as a matrix product) == torch Conv2d(1x1) == `nn.Conv`, with
  the same variables; and the same gradients as `nn.Conv`."""
  import jax  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()
  cin, cout = 24, 40
  x = rng.normal(0, 1, (2, cin, size, size + 3)).astype(np.float32)
  w = rng.normal(0, 0.2, (cout, cin, 1, 1)).astype(np.float32)
  b = rng.normal(0, 0.2, (cout,)).astype(np.float32) if bias else None
  want = F.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                  None if b is None else torch.from_numpy(b), stride=stride).numpy()
  variables = {"params": {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0))}}
  if bias:
    variables["params"]["bias"] = jnp.asarray(b)
  mods = {impl: layers.conv(cout, 1, stride=stride, use_bias=bias, in_features=cin,
                            kernels=Kernels(pointwise=impl)) for impl in kernels.POINTWISE_IMPLS}
  assert isinstance(mods["dot"], matmul.PointwiseConv)
  assert isinstance(mods["conv"], nn_flax.Conv)
  xj = jnp.asarray(nchw_to_nhwc(x))
  inits = {k: jax.eval_shape(m.init, jax.random.key(0), xj) for k, m in mods.items()}
  assert jax.tree_util.tree_structure(inits["dot"]) == jax.tree_util.tree_structure(
      inits["conv"]) and all(a.shape == c.shape for a, c in zip(
          jax.tree_util.tree_leaves(inits["dot"]), jax.tree_util.tree_leaves(inits["conv"])))
  out = {k: np.asarray(m.apply(variables, xj)) for k, m in mods.items()}
  for k, got in out.items():
    err = rel_err(nhwc_to_nchw(got), want)
    assert err <= TOL, (k, err, seed)
  grads = {k: jax.grad(lambda v, x, m=m: jnp.sum(jnp.sin(m.apply(v, x))), argnums=(0, 1))(
      variables, xj) for k, m in mods.items()}
  for a, c in zip(jax.tree_util.tree_leaves(grads["dot"]), jax.tree_util.tree_leaves(grads["conv"])):
    assert rel_err(np.asarray(a), np.asarray(c)) <= TOL, seed


def test_pointwise_impls_give_the_same_network():
  """DeepLabV2 with 1x1 convs as matrix products or as convolutions, or with the reference
  kernels: same variable tree (names, shapes, init values), same logits."""
  import jax  # pylint: disable=import-outside-toplevel
  from advseg_jax.models.deeplab import DeepLabV2  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()
  x = jnp.asarray(rng.normal(0, 1, (2, 49, 41, 3)).astype(np.float32))
  nets = {impl: DeepLabV2(num_classes=5, depths=(1, 2, 1, 1), width=8,
                         kernels=Kernels(pointwise=impl))
          for impl in kernels.POINTWISE_IMPLS}
  nets["reference"] = DeepLabV2(num_classes=5, depths=(1, 2, 1, 1), width=8,
                                kernels=Kernels.reference())
  inits = {k: n.init(jax.random.key(seed % 1000), x) for k, n in nets.items()}
  lc = jax.tree_util.tree_leaves_with_path(inits["conv"])
  for other in ("dot", "reference"):
    la = jax.tree_util.tree_leaves_with_path(inits[other])
    assert [p for p, _ in la] == [p for p, _ in lc]
    for (p, a), (_, c) in zip(la, lc):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(c), err_msg=str(p))
  outs = {k: np.asarray(n.apply(inits["conv"], x, train=False)) for k, n in nets.items()}
  assert rel_err(outs["dot"], outs["conv"]) <= TOL, seed
  assert rel_err(outs["reference"], outs["conv"]) <= TOL, seed


@pytest.mark.parametrize("cin,cout,dilation,size", [(6, 6, 1, (9, 11)), (5, 7, 2, (13, 13)),
                                                    (4, 4, 4, (6, 10)), (3, 5, 12, (13, 9))])
def test_conv3x3_matmul_dx_equals_torch_and_autodiff(cin, cout, dilation, size):
  """`Conv3x3MatmulDx` (matrix-product input gradient) == torch Conv2d(3, padding=dilation,
  dilation) in value and input / weight gradients, and == autodiff of `nn.Conv`; same
  variable tree as `conv(features, 3, ...)`. Dilation 12 on a 13-wide input puts whole taps
  into the padding (the originals' ASPP situation)."""
  import jax  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()
  x = rng.normal(0, 1, (2, cin) + size).astype(np.float32)
  w = rng.normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
  up = rng.normal(0, 1, (2, cout) + size).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_()
  wt = torch.from_numpy(w).requires_grad_()
  (F.conv2d(xt, wt, padding=dilation, dilation=dilation) * torch.from_numpy(up)).sum().backward()
  want_y = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=dilation,
                    dilation=dilation).numpy()
  mods = {impl: layers.conv(cout, 3, padding=dilation, dilation=dilation,
                            kernels=Kernels(conv_dx=impl))
          for impl in ("matmul", "xla")}
  assert isinstance(mods["matmul"], matmul.Conv3x3MatmulDx)
  assert isinstance(mods["xla"], nn_flax.Conv)
  xj = jnp.asarray(nchw_to_nhwc(x))
  shapes = {k: jax.tree_util.tree_map(lambda a: a.shape,
                                      jax.eval_shape(m.init, jax.random.key(0), xj))
            for k, m in mods.items()}
  assert shapes["matmul"] == shapes["xla"]
  variables = {"params": {"kernel": jnp.asarray(w.transpose(2, 3, 1, 0))}}
  upj = jnp.asarray(nchw_to_nhwc(up))
  res = {}
  for k, m in mods.items():
    y, pull = jax.vjp(lambda v, x, m=m: m.apply(v, x), variables, xj)
    g_v, g_x = pull(upj)
    res[k] = (np.asarray(y), np.asarray(g_x), np.asarray(g_v["params"]["kernel"]))
  for k, (y, g_x, g_w) in res.items():
    for name, got, want in (("output", nhwc_to_nchw(y), want_y),
                            ("d input", nhwc_to_nchw(g_x), xt.grad.numpy()),
                            ("d weight", g_w.transpose(3, 2, 0, 1), wt.grad.numpy())):
      err = rel_err(got, want)
      assert err <= TOL, f"seed {seed}: {k} {name} rel err {err}"
  for a, b in zip(res["matmul"], res["xla"]):
    assert rel_err(a, b) <= TOL, seed


def test_kernel_selection():
  """`select` keeps the config's names, values and 'auto' resolution by backend."""
  import jax  # pylint: disable=import-outside-toplevel
  cpu = jax.default_backend() == "cpu"
  assert kernels.select() == Kernels()
  assert Kernels().resolved().conv_dx == ("matmul" if cpu else "xla")
  assert Kernels().resolved().aspp == ("matmul" if cpu else "conv")
  assert kernels.select(backend="gpu") == Kernels(conv_dx="xla", aspp="conv")
  assert kernels.select(backend="cpu") == Kernels(conv_dx="matmul", aspp="matmul")
  assert kernels.select("conv", "xla", "conv", backend="cpu") == Kernels("conv", "xla", "conv")
  for field, bad in (("pointwise_impl", dict(pointwise_impl="cudnn")),
                     ("conv_dx_impl", dict(conv_dx_impl="cudnn")),
                     ("aspp_impl", dict(aspp_impl="cudnn"))):
    with pytest.raises(ValueError, match=field):
      kernels.select(**bad)
  assert hash(Kernels()) == hash(kernels.select())  # a static module attribute
  # Only bias-free stride-1 3x3 convolutions with padding == dilation take the matmul path.
  k = Kernels(conv_dx="matmul")
  for kw in (dict(stride=2, padding=1), dict(padding=1, use_bias=True, in_features=4),
             dict(padding=2, dilation=1)):
    assert not isinstance(layers.conv(8, 3, kernels=k, **kw), matmul.Conv3x3MatmulDx)
  assert not isinstance(layers.conv(8, 7, padding=3, kernels=k), matmul.Conv3x3MatmulDx)
  ref = Kernels.reference()
  assert isinstance(layers.conv(8, 1, kernels=ref), nn_flax.Conv)
  assert isinstance(layers.conv(8, 3, padding=1, kernels=ref), nn_flax.Conv)


def test_conv3x3_matmul_dx_bfloat16_matches_xla():
  """In bfloat16 the matrix-product input gradient stays as close to float32 as XLA's own
  (bfloat16) convolution backward: both within 2e-2 of the float32 gradient."""
  import jax  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()
  x = jnp.asarray(rng.normal(0, 1, (2, 13, 13, 32)), jnp.float32)
  w = jnp.asarray(rng.normal(0, 0.1, (3, 3, 32, 32)), jnp.float32)
  up = jnp.asarray(rng.normal(0, 1, (2, 13, 13, 32)), jnp.float32)

  def g_x(impl, dtype):
    mod = layers.conv(32, 3, padding=2, dilation=2, kernels=Kernels(conv_dx=impl), dtype=dtype)
    f = lambda x_: jnp.sum(mod.apply({"params": {"kernel": w}}, x_).astype(jnp.float32) * up)
    return np.asarray(jax.grad(f)(x.astype(dtype)).astype(jnp.float32))

  want = g_x("xla", jnp.float32)
  for impl in ("matmul", "xla"):
    err = rel_err(g_x(impl, jnp.bfloat16), want)
    assert err <= 2e-2, f"seed {seed}: {impl} bfloat16 d input rel err {err}"


@pytest.mark.parametrize("size,dilations,cin", [
    ((13, 13), (6, 12), 24),            # the originals' ASPP on a 97x97 crop: every tap live
    ((9, 17), (6, 12, 18, 24), 16),     # corrected 4-branch ASPP: whole tap rows / columns dead
    ((5, 30), (6, 12), 8),              # one side shorter than every dilation
])
def test_dilated_conv3x3_sum_equals_torch(size, dilations, cin):
  """`matmul.dilated_conv3x3_sum` (one matrix product over the live taps + shifted adds, written-out
  backward) == the sum of torch Conv2d(3, padding=d, dilation=d) over the branches, in value
  and in input / weight gradients, also for taps that only read padding (their weight
  gradient is exactly 0, as torch's is)."""
  import jax  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()
  cout = 5
  x = rng.normal(0, 1, (2, cin) + size).astype(np.float32)
  ws = rng.normal(0, 0.3, (len(dilations), cout, cin, 3, 3)).astype(np.float32)
  up = rng.normal(0, 1, (2, cout) + size).astype(np.float32)
  xt = torch.from_numpy(x).requires_grad_()
  wt = torch.from_numpy(ws).requires_grad_()
  yt = sum(F.conv2d(xt, wt[b], padding=d, dilation=d) for b, d in enumerate(dilations))
  (yt * torch.from_numpy(up)).sum().backward()

  kernels = jnp.asarray(ws.transpose(0, 3, 4, 2, 1))  # [B, 3, 3, Cin, Cout]
  y, pull = jax.vjp(lambda x_, k_: matmul.dilated_conv3x3_sum(x_, k_, tuple(dilations)),
                    jnp.asarray(nchw_to_nhwc(x)), kernels)
  g_x, g_k = pull(jnp.asarray(nchw_to_nhwc(up)))
  for name, got, want in (("output", nhwc_to_nchw(np.asarray(y)), yt.detach().numpy()),
                          ("d input", nhwc_to_nchw(np.asarray(g_x)), xt.grad.numpy()),
                          ("d kernels", np.asarray(g_k).transpose(0, 4, 3, 1, 2),
                           wt.grad.numpy())):
    err = rel_err(got, want)
    assert err <= TOL, f"seed {seed}: {size} {dilations} {name} rel err {err}"
  live = set(matmul.live_taps(*size, dilations))
  for b in range(len(dilations)):
    for i in range(3):
      for j in range(3):
        if (b, i, j) not in live:
          assert float(jnp.max(jnp.abs(g_k[b, i, j]))) == 0.0
          assert float(np.abs(wt.grad.numpy()[b, :, :, i, j]).max()) == 0.0


def test_live_taps():
  # 13x13 map: dilations 6 and 12 keep all nine taps, 18 and 24 only the centre.
  assert len(matmul.live_taps(13, 13, (6, 12, 18, 24))) == 9 + 9 + 1 + 1
  # 9x17: dilation 12 loses its top / bottom rows (|12| >= 9) but keeps its columns.
  assert [t[1:] for t in matmul.live_taps(9, 17, (12,))] == [(1, 0), (1, 1), (1, 2)]
  assert matmul.live_taps(41, 41, (6, 12, 18, 24)) == tuple(
      (b, i, j) for b in range(4) for i in range(3) for j in range(3))


@pytest.mark.parametrize("branches", [1, 2, 4])
def test_aspp_impls_give_the_same_classifier(branches):
  """`ASPPClassifier` with the 'matmul' ASPP kernel has the variable tree and initial values
  of the 'conv' one (checkpoints interchangeable) and equal outputs and gradients (the dead
  branches' gradients are 0 in both)."""
  import jax  # pylint: disable=import-outside-toplevel
  from advseg_jax.models.aspp import ASPPClassifier  # pylint: disable=import-outside-toplevel
  rng, seed = fresh_rng()
  x = jnp.asarray(rng.normal(0, 1, (2, 13, 11, 32)), jnp.float32)
  mods = {impl: ASPPClassifier(7, branches_used=branches, kernels=Kernels(aspp=impl))
          for impl in ("conv", "matmul")}
  inits = {k: m.init(jax.random.key(seed % 2**31), x) for k, m in mods.items()}
  assert jax.tree_util.tree_structure(inits["conv"]) == jax.tree_util.tree_structure(
      inits["matmul"])
  for a, b in zip(jax.tree_util.tree_leaves(inits["conv"]),
                  jax.tree_util.tree_leaves(inits["matmul"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  variables = inits["conv"]
  up = jnp.asarray(rng.normal(0, 1, (2, 13, 11, 7)), jnp.float32)
  res = {}
  for k, m in mods.items():
    y, pull = jax.vjp(lambda v, x_, m=m: m.apply(v, x_), variables, x)
    res[k] = (y,) + pull(up)
  flat = {k: jax.tree_util.tree_leaves(v) for k, v in res.items()}
  for a, b in zip(flat["conv"], flat["matmul"]):
    assert a.shape == b.shape
    if float(jnp.max(jnp.abs(a))) == 0.0:
      assert float(jnp.max(jnp.abs(b))) == 0.0  # a dead branch
    else:
      assert rel_err(np.asarray(b), np.asarray(a)) <= TOL, seed


def test_aspp_bfloat16():
  import jax  # pylint: disable=import-outside-toplevel
  from advseg_jax.models.aspp import ASPPClassifier  # pylint: disable=import-outside-toplevel
  # bfloat16: both implementations within 2e-2 of the float32 logits.
  rng, seed = fresh_rng()
  x = jnp.asarray(rng.normal(0, 1, (1, 13, 13, 64)), jnp.float32)
  variables = ASPPClassifier(5).init(jax.random.key(0), x)
  want = np.asarray(ASPPClassifier(5, kernels=Kernels(aspp="conv")).apply(variables, x))
  for impl in ("conv", "matmul"):
    got = ASPPClassifier(5, kernels=Kernels(aspp=impl), dtype=jnp.bfloat16).apply(
        variables, x.astype(jnp.bfloat16))
    assert got.dtype == jnp.bfloat16
    err = rel_err(np.asarray(got.astype(jnp.float32)), want)
    assert err <= 2e-2, f"seed {seed}: {impl} bfloat16 rel err {err}"
