"""The branch census of the float32 parity tests (tests/parity/float32_branches.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax.models import DeepLabV2, FCDiscriminator, layers
from tests.parity import float32_branches as fb
from tests.parity import test_iclr2018_parity as ticlr


def test_risky_units_counts_values_within_their_own_error_of_zero():
  v64 = {"a": np.array([1e-3, 1e-7, -2e-6, np.inf]), "b": np.array([0.5, -0.5])}
  v32 = {"a": np.array([1e-3 + 1e-9, -1e-7, -2e-6 + 5e-7, 1.0]), "b": np.array([0.5, -0.5])}
  # 1e-7 flips sign (within 2 x its error 2e-7); -2e-6 is 4 x its error 5e-7 away, inside 5x.
  assert fb.risky_units(v32, v64) == {"a": 1}
  assert fb.risky_units(v32, v64, risk=5.0) == {"a": 2}


def test_max_pool_margins_are_the_gap_between_each_windows_two_largest():
  x = np.random.default_rng(0).normal(size=(2, 9, 11, 3))
  x[0, 2, 2, 0], x[0, 2, 3, 0] = 5.0, 5.0 - 1e-6  # a near-tie inside window (1, 1)
  x[1, :3, :3, 2] = -1.0  # window (0, 0) of channel 2: no positive winner
  margins = fb.max_pool_margins(x)
  pooled = np.asarray(layers.max_pool_ceil(jnp.asarray(x)))
  assert margins.shape == pooled.shape
  assert margins[0, 1, 1, 0] == pytest.approx(1e-6, rel=1e-6)
  assert margins[1, 0, 0, 2] == np.inf
  finite = np.isfinite(margins)
  assert (margins[finite] >= 0).all() and finite.mean() > 0.9


def test_generator_branch_values_are_the_relu_inputs():
  model = DeepLabV2(num_classes=3, depths=(1, 2, 1, 1), width=4)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 33, 41, 3)), jnp.float32)
  variables = model.init(jax.random.key(0), x, train=False)
  _, state = model.apply(variables, x, train=True, mutable=["batch_stats", "intermediates"],
                         capture_intermediates=True)
  values = fb.generator_branch_values(state["intermediates"])
  acts = fb._flat_outputs(state["intermediates"])
  blocks = ["layer1/block0", "layer2/block0", "layer2/block1", "layer3/block0",
            "layer4/block0"]
  assert sorted(values) == sorted(["bn1", "maxpool"] + [f"{b}/{n}" for b in blocks
                                                        for n in ("bn1", "bn2", "add")])
  for b in blocks:  # each block's output is the ReLU of its residual sum
    np.testing.assert_allclose(np.maximum(values[b + "/add"], 0), acts[b], atol=1e-6)


def test_discriminator_branch_values_are_the_conv_outputs():
  model = FCDiscriminator(ndf=4)
  x = jnp.asarray(np.random.default_rng(2).random((1, 64, 64, 3)), jnp.float32)
  params = model.init(jax.random.key(0), x)["params"]
  _, state = model.apply({"params": params}, x, mutable=["intermediates"],
                         capture_intermediates=True)
  values = fb.discriminator_branch_values(state["intermediates"], ticlr.D_CONVS)
  assert [v.shape[-1] for v in values.values()] == [4, 8, 16, 32]


@pytest.mark.slow
def test_a_float32_error_fails_the_iclr2018_comparison(monkeypatch):
  """A float32 run off by 1% of one tensor's update fails, with or without branch risks."""
  trajectory = ticlr._trajectory

  def off_by_one_percent(precision, *args):
    saved, metrics = trajectory(precision, *args)
    if precision == "float32":
      before, after = saved[-2].g.params, saved[-1].g.params
      head = dict(after["layer5"])
      head["conv0"] = jax.tree_util.tree_map(lambda a, b: b + 0.01 * (b - a),
                                             before["layer5"]["conv0"], after["layer5"]["conv0"])
      params = {**after, "layer5": head}
      saved[-1] = saved[-1].replace(g=saved[-1].g.replace(params=params))
    return saved, metrics

  monkeypatch.setattr(ticlr, "_trajectory", off_by_one_percent)
  with pytest.raises(AssertionError, match="layer5.conv2d_list.0|float32 comparison failed"):
    ticlr._run(("float32", "float64"), max_draws=1)
