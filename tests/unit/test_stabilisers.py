"""The two D stabilisers the D-wins warning names that the originals do not have:
`method.d_update_every` (D learns on every N-th step) and `method.d_instance_noise` (Gaussian
noise on D's map inputs, annealed to 0). Both off by default, so the parity tests keep
testing the originals' step; here a tiny AdvSemiSeg step on random data checks what each
knob does to D and nothing else.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from advseg_jax.config import defaults as config_defaults
from advseg_jax.config import validation as config_validation
from advseg_jax.models import build_discriminator, build_generator
from advseg_jax.train.state import create_train_states
from advseg_jax.train.steps import make_train_step, with_instance_noise

from tests import loop_helpers  # noqa: F401  (quick-compile settings and the shared compilation cache)

K, B, HW = 3, 2, 33


def _config(**method):
  c = config_defaults.base_config()
  c.num_steps = 10
  c.batch_size = B
  c.model.num_classes, c.model.depths, c.model.width = K, "tiny", 8
  c.disc.ndf = 8
  c.method.semi_start = 0
  for k, v in method.items():
    c.method[k] = v
  config_validation.validate(c)
  return c


def _batch(seed):
  rng = np.random.default_rng(seed)
  img = lambda: jnp.asarray(rng.normal(0, 50, (B, HW, HW, 3)), jnp.float32)
  lab = lambda: jnp.asarray(rng.integers(0, K, (B, HW, HW)), jnp.int32)
  return {"labelled": {"image": img(), "label": lab()}, "unlabelled": {"image": img()},
          "gt": {"image": img(), "label": lab()}}


def _run(config, steps, seed=0, rng_seed=0):
  g, d = build_generator(config.model), build_discriminator(config.disc)
  states = create_train_states(config, g, d, jax.random.key(seed))
  step = jax.jit(make_train_step(config, g, d))
  history = [states]
  for i in range(steps):
    states, metrics = step(states, _batch(100 + i), jax.random.key(rng_seed * 1000 + i))
    history.append(states)
  return history, metrics


def _same(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


@pytest.mark.slow
def test_d_update_every_freezes_d_between_updates():
  history, metrics = _run(_config(d_update_every=2), steps=4)
  d = [s.d.params for s in history]
  assert not _same(d[1], d[0])        # step 0: updated
  assert _same(d[2], d[1])            # step 1: skipped
  assert not _same(d[3], d[2])        # step 2: updated
  assert _same(d[4], d[3])
  assert float(metrics["d/updated"]) == 0.0
  # G learns on every step regardless
  g = [s.g.params for s in history]
  assert all(not _same(g[i + 1], g[i]) for i in range(4))


@pytest.mark.slow
def test_d_update_every_one_is_the_default_step():
  a, _ = _run(_config(), steps=2)
  b, _ = _run(_config(d_update_every=1, d_instance_noise=0.0), steps=2)
  assert _same(a[-1].d.params, b[-1].d.params) and _same(a[-1].g.params, b[-1].g.params)


@pytest.mark.slow
def test_instance_noise_changes_d_and_is_deterministic_given_rng():
  plain, _ = _run(_config(), steps=2)
  noisy1, m = _run(_config(d_instance_noise=0.3), steps=2, rng_seed=1)
  noisy1b, _ = _run(_config(d_instance_noise=0.3), steps=2, rng_seed=1)
  noisy2, _ = _run(_config(d_instance_noise=0.3), steps=2, rng_seed=2)
  assert not _same(plain[-1].d.params, noisy1[-1].d.params)
  assert _same(noisy1[-1].d.params, noisy1b[-1].d.params)
  assert not _same(noisy1[-1].d.params, noisy2[-1].d.params)
  # annealed linearly to 0 at num_steps (10): step 1 -> 0.3 * 0.9
  assert float(m["d/instance_noise"]) == pytest.approx(0.27, rel=1e-6)


def test_instance_noise_touches_only_the_map_input():
  seen = []
  noisy = with_instance_noise(lambda p, *xs: seen.append(xs) or 0.0, jax.random.key(0), 0.5)
  image, probs = jnp.ones((1, 4, 4, 3)), jnp.full((1, 4, 4, K), 1.0 / K)
  noisy(None, image, probs)
  noisy(None, image, probs)
  (img1, p1), (_, p2) = seen
  assert np.array_equal(img1, image)          # Luc et al.'s image branch is left alone
  assert 0.3 < float(jnp.std(p1 - probs)) < 0.7
  assert not np.array_equal(p1, p2)           # fresh noise per call


@pytest.mark.parametrize("field,value,match", [
    ("d_update_every", 0, "config.method.d_update_every = 0 is invalid: expected an int >= 1"),
    ("d_update_every", -3, "method.d_update_every"),
    ("d_instance_noise", -0.1,
     "config.method.d_instance_noise = -0.1 is invalid: expected a number in \\[0, 1\\]"),
    ("d_instance_noise", 2.0, "method.d_instance_noise"),
])
def test_stabiliser_validation(field, value, match):
  c = config_defaults.base_config()
  c.method[field] = value
  with pytest.raises(config_validation.ConfigError, match=match):
    config_validation.validate(c)
