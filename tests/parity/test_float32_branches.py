"""The branch census of the float32 parity tests (tests/parity/float32_branches.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax.models import DeepLabV2, FCDiscriminator, build_discriminator, build_generator
from advseg_jax.models import layers
from advseg_jax.train.state import create_train_states
from tests.parity import float32_branches as fb
from tests.parity import test_iclr2018_parity as ticlr
from tests.parity import test_step_parity as tsp


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
  values = fb.discriminator_branch_values(state["intermediates"], fb.D_CONVS)
  assert [v.shape[-1] for v in values.values()] == [4, 8, 16, 32]


@pytest.mark.parametrize("bn_domains, g_passes", [("separate", 2), ("joint", 1)])
def test_step_branch_values_replay_every_pass_of_the_step(bn_domains, g_passes):
  """AdaptSegNet multi-level: G once per stream ('separate') or once on both ('joint'); D on
  target maps in G's loss (2 levels), then on source and target maps in D's (2 x 2)."""
  config = tsp._config("adaptseg", 3, bn_domains=bn_domains, **tsp.ADAPTSEG_HP)
  g_model, d_model = build_generator(config.model), build_discriminator(config.disc)
  states = create_train_states(config, g_model, d_model, jax.random.key(0))
  rng = np.random.default_rng(3)
  batch = {s: {"image": tsp._images(rng, 2, 49, 65), "label": tsp._labels(rng, 2, 49, 65, 3)}
           for s in ("source", "target")}
  values = fb.step_branch_values(config, g_model, d_model, states, batch)
  passes = {k.split()[0] for k in values}
  assert passes == {f"G{i + 1}" for i in range(g_passes)} | {f"D{i + 1}" for i in range(6)}
  first = batch["source"]["image"]
  if bn_domains == "joint":
    first = np.concatenate([first, batch["target"]["image"]])
  _, state = g_model.apply({"params": states.g.params, "batch_stats": states.g.batch_stats},
                           first, train=True, mutable=["batch_stats", "intermediates"],
                           capture_intermediates=True)
  want = fb.generator_branch_values(state["intermediates"])
  np.testing.assert_array_equal(values["G1 layer4/block0/add"], want["layer4/block0/add"])
  assert values["D1 conv4"].shape[0] == 2  # G's loss: D on the 2 target maps


def test_draws_are_set_aside_only_while_they_report_branch_risks():
  seen = []

  def run_draw(seed):
    seen.append(seed)
    return {"step 1 layer4/block0/add": 1} if len(seen) < 3 else None

  seed, set_aside = fb.draw_until_float32_resolves(7, run_draw)
  assert seen == [7, fb.derived_seed(7, 1), fb.derived_seed(7, 2)] and seed == seen[-1]
  assert len(set(seen)) == 3 and len(set_aside) == 2 and "layer4/block0/add" in set_aside[0]
  with pytest.raises(AssertionError, match="failed on all 2 draws from seed 7"):
    fb.draw_until_float32_resolves(7, lambda seed: {"step 0 bn1": 1}, max_draws=2)


def _make_float32_update_off(monkeypatch, test_module, layer, share):
  """Patches `test_module._trajectory` so that its float32 run's last update of G's
  `layer`/conv0 is larger by `share` of itself."""
  trajectory = test_module._trajectory

  def off(precision, *args):
    saved, metrics = trajectory(precision, *args)
    if precision == "float32":
      before, after = saved[-2].g.params, saved[-1].g.params
      head = dict(after[layer])
      head["conv0"] = jax.tree_util.tree_map(lambda a, b: b + share * (b - a),
                                             before[layer]["conv0"], after[layer]["conv0"])
      params = {**after, layer: head}
      saved[-1] = saved[-1].replace(g=saved[-1].g.replace(params=params))
    return saved, metrics

  monkeypatch.setattr(test_module, "_trajectory", off)


@pytest.mark.slow
def test_a_float32_error_fails_the_step_comparison(monkeypatch):
  """AdaptSegNet: a float32 run off by 10% of one tensor's update fails (this test's
  parameter error is relative to the parameter, where 1% of an update is ~1e-4, at the
  tolerance)."""
  _make_float32_update_off(monkeypatch, tsp, "layer6", 0.1)
  with pytest.raises(AssertionError, match="layer6.conv2d_list.0|float32 comparison failed"):
    tsp._adaptseg_draws("vanilla", ("float32", "float64"), max_draws=1)


@pytest.mark.slow
def test_a_float32_error_fails_the_iclr2018_comparison(monkeypatch):
  """A float32 run off by 1% of one tensor's update fails, with or without branch risks."""
  _make_float32_update_off(monkeypatch, ticlr, "layer5", 0.01)
  with pytest.raises(AssertionError, match="layer5.conv2d_list.0|float32 comparison failed"):
    ticlr._run(("float32", "float64"), max_draws=1)
