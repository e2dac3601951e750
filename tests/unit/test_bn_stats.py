"""`advseg_jax.inference.bn_stats` on a tiny generator: the recomputed statistics make the
eval-mode forward equal the train-mode forward of the batch they came from, average over
batches, and bad input is refused (the torch check is in tests/integration/test_evaluate.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax.inference import bn_stats
from advseg_jax.models import ModelSpec, registry

from tests import seeds


def _model(bn_mode="batch_stats"):
  g = registry.build(ModelSpec("deeplabv2", 4, depths="tiny", width=8, bn_mode=bn_mode))
  rng = np.random.default_rng(seeds.draw())
  x = jnp.asarray(rng.normal(10, 60, (2, 4, 65, 65, 3)), jnp.float32)
  return g, g.init(jax.random.key(0), x[0], train=False), x


def test_eval_with_recomputed_stats_is_the_train_forward_of_that_batch():
  g, v, x = _model()
  stats = bn_stats.recompute_batch_stats(g, v, [x[0]])
  train_out, _ = g.apply(v, x[0], train=True, mutable=["batch_stats"])
  eval_out = g.apply({**v, "batch_stats": stats}, x[0], train=False)
  stored_out = g.apply(v, x[0], train=False)
  # Equal up to the unbiased (stored) vs biased (train-mode) variance: n = 4 x 65 x 65 pixels
  # at the stem but 4 x 9 x 9 in layer4, where n / (n - 1) is 1.003 (1.3% of the output here).
  err = float(jnp.max(jnp.abs(eval_out - train_out)))
  assert err < 0.03 * float(jnp.max(jnp.abs(train_out)))
  assert err < 0.2 * float(jnp.max(jnp.abs(stored_out - train_out)))


def test_stats_average_over_batches():
  g, v, x = _model()
  one = [bn_stats.recompute_batch_stats(g, v, [b]) for b in x]
  both = bn_stats.recompute_batch_stats(g, v, list(x))
  jax.tree.map(lambda a, b, c: np.testing.assert_allclose(c, (a + b) / 2, rtol=1e-5, atol=1e-6),
               one[0], one[1], both)


def test_refuses_bad_input():
  g, v, x = _model()
  with pytest.raises(bn_stats.BNStatsError, match="no images"):
    bn_stats.recompute_batch_stats(g, v, [])
  with pytest.raises(bn_stats.BNStatsError, match=">= 2 images"):
    bn_stats.recompute_batch_stats(g, v, [x[0][:1]])
  frozen, fv, _ = _model("frozen")
  with pytest.raises(bn_stats.BNStatsError, match="'frozen'"):
    bn_stats.recompute_batch_stats(frozen, fv, [x[0]])


def test_recompute_on_split_normalises_images_as_the_model_expects(monkeypatch):
  """The stream carries the spec's channel order, mean and std (an ICLR-2018 model divides
  by the ImageNet std), as evaluation does."""
  g, v, x = _model()
  spec = dict(ModelSpec("deeplabv2", 4, depths="tiny", width=8, channel_order="RGB",
                        mean_bgr=(1.0, 2.0, 3.0)).to_json(), std_bgr=[4.0, 5.0, 6.0])
  seen = {}

  def fake_batches(cfg, *, split, batch_size, max_images):
    seen.update(cfg=cfg, split=split)
    yield np.asarray(x[0])

  monkeypatch.setattr(bn_stats.data, "ensure_prepared", lambda *a, **k: None)
  monkeypatch.setattr(bn_stats, "dataset_image_batches", fake_batches)
  new, n = bn_stats.recompute_on_split(v, spec, "shapes/target", split="train", data_dir=None)
  assert n == 4 and seen["split"] == "train" and not seen["cfg"].use_labels
  assert (seen["cfg"].channel_order, tuple(seen["cfg"].mean_bgr), tuple(seen["cfg"].std_bgr)) \
      == ("RGB", (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
  assert set(new) == set(v)
