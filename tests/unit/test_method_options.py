"""Options beyond the originals, with the originals' behaviour as default: the BN treatment of
two streams (`method.bn_domains`) and a shallower fully convolutional D
(`disc.num_downsamples`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax.config import defaults
from advseg_jax.config import validation as config_validation
from advseg_jax.methods import adaptseg, advsemi
from advseg_jax.models import ModelSpec, build_discriminator, build_generator, registry
from advseg_jax.models.discriminator import FCDiscriminator
from advseg_jax.models.deeplab import upsample_logits
from advseg_jax.train import steps

from tests import seeds

K, HW, B = 5, (33, 33), 2


def _config(method: str, bn_domains: str):
  c = defaults.base_config()
  c.method.name = method
  c.method.bn_domains = bn_domains
  c.method.lambda_semi, c.method.lambda_semi_adv, c.method.semi_start_adv = 0.1, 0.01, 0
  c.model.arch = "deeplabv2_multi" if method == "adaptseg" else "deeplabv2"
  c.model.num_classes, c.model.depths, c.model.width = K, "tiny", 8
  c.disc.ndf = 8
  return c


def _setup(method: str, bn_domains: str):
  c = _config(method, bn_domains)
  g, d = build_generator(c.model), build_discriminator(c.disc, K)
  rng = np.random.default_rng(seeds.draw())
  x1 = jnp.asarray(rng.normal(0, 40, (B, *HW, 3)), jnp.float32)
  x2 = jnp.asarray(rng.normal(20, 80, (B, *HW, 3)), jnp.float32)  # another "domain"
  labels = jnp.asarray(rng.integers(0, K, (B, *HW)), jnp.int32)
  g_vars = g.init(jax.random.key(0), x1, train=False)
  d_params = {n: d.init(jax.random.key(i + 1), jnp.zeros((1, *HW, K)))["params"]
              for i, n in enumerate(("aux", "main"))}
  ctx = steps.make_context(c, g, d, None)
  return ctx, g_vars, d_params, x1, x2, labels


def test_joint_adaptseg_is_one_pass_over_both_streams():
  ctx, v, dp, xs, xt, labels = _setup("adaptseg", "joint")
  batch = {"source": {"image": xs, "label": labels}, "target": {"image": xt}}
  _, (bs, metrics, d_inputs) = adaptseg.generator_loss(ctx, v["params"], v["batch_stats"], dp,
                                                       batch, jnp.asarray(0))
  levels, want_bs = ctx.g_apply(v["params"], v["batch_stats"], jnp.concatenate([xs, xt]), True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), bs, want_bs)
  # The D inputs are the joint pass's halves: target probabilities from the second half.
  q_t = jax.nn.softmax(upsample_logits(levels[-1][B:], HW), axis=-1)
  np.testing.assert_allclose(d_inputs["main"][1], q_t, rtol=1e-5, atol=1e-6)

  sep_ctx, *_ = _setup("adaptseg", "separate")
  _, (sep_bs, sep_metrics, _) = adaptseg.generator_loss(sep_ctx, v["params"], v["batch_stats"],
                                                        dp, batch, 0)
  # Separate passes normalise the source with its own statistics: a different loss and two
  # running-statistics updates instead of one.
  assert not np.isclose(float(sep_metrics["g/loss_seg"]), float(metrics["g/loss_seg"]),
                        rtol=1e-4)
  mean = lambda tree: tree["bn1"]["mean"]
  assert not np.allclose(mean(sep_bs), mean(bs), rtol=1e-4)


def test_joint_advsemi_puts_unlabelled_and_labelled_in_one_batch():
  ctx, v, dp, xl, xu, labels = _setup("advsemi", "joint")
  dp = {"main": dp["main"]}
  batch = {"labelled": {"image": xl, "label": labels}, "gt": {"label": labels},
           "unlabelled": {"image": xu}}
  _, (bs, metrics, d_inputs) = advsemi.generator_loss(ctx, v["params"], v["batch_stats"], dp,
                                                      batch, jnp.asarray(0))
  levels, want_bs = ctx.g_apply(v["params"], v["batch_stats"], jnp.concatenate([xu, xl]), True)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), bs, want_bs)
  probs = jax.nn.softmax(upsample_logits(levels[-1][B:], HW), axis=-1)
  np.testing.assert_allclose(d_inputs["labelled_probs"], probs, rtol=1e-5, atol=1e-6)
  assert np.isfinite(float(metrics["g/loss"]))


def test_joint_needs_streams_of_one_size():
  ctx, v, dp, xs, _, labels = _setup("adaptseg", "joint")
  batch = {"source": {"image": xs, "label": labels},
           "target": {"image": jnp.zeros((B, 41, 41, 3))}}
  with pytest.raises(ValueError, match="bn_domains='joint' needs both streams at one size"):
    adaptseg.generator_loss(ctx, v["params"], v["batch_stats"], dp, batch, 0)


@pytest.mark.parametrize("method, value, match", [
    ("adaptseg", "mixed", "method.bn_domains"),
    ("supervised", "joint", "'separate' unless method.name"),
])
def test_bn_domains_validation(method, value, match):
  c = _config(method, value)
  with pytest.raises(config_validation.ConfigError, match=match):
    config_validation.validate(c)


@pytest.mark.parametrize("n, out_hw", [(5, (3, 3)), (4, (6, 6)), (3, (12, 12)), (1, (48, 48))])
def test_shallower_d_keeps_its_parameters_and_gives_a_finer_map(n, out_hw):
  x = jnp.asarray(np.random.default_rng(seeds.draw()).random((2, 96, 96, K)), jnp.float32)
  default = FCDiscriminator(ndf=8)
  params = default.init(jax.random.key(0), x)
  shallow = FCDiscriminator(ndf=8, num_downsamples=n)
  assert jax.tree.map(jnp.shape, shallow.init(jax.random.key(0), x)) == \
      jax.tree.map(jnp.shape, params)
  out = shallow.apply(params, x)
  assert out.shape == (2, *out_hw, 1)
  if n == 5:
    np.testing.assert_array_equal(out, default.apply(params, x))


def test_shallower_d_spec_round_trip_and_errors():
  spec = ModelSpec("fc", K, ndf=8, num_downsamples=3)
  assert ModelSpec.from_json(spec.to_json()) == spec
  assert "num_downsamples" not in ModelSpec("fc", K).to_json()  # older readers still load
  assert registry.build(spec).num_downsamples == 3
  with pytest.raises(ValueError, match="num_downsamples applies to the 'fc' discriminator"):
    registry.build(ModelSpec("fc2", K, num_downsamples=3))
  c = _config("advsemi", "separate")
  c.disc.num_downsamples = 0
  with pytest.raises(config_validation.ConfigError, match="disc.num_downsamples"):
    config_validation.validate(c)
