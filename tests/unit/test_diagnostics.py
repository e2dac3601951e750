"""GAN diagnostics and preemption guard (host-side logic)."""

import math
import os
import signal

import pytest

from advseg_jax.train import diagnostics
from advseg_jax.train.preemption import PreemptionGuard


def _m(d_loss, acc_r=0.9, acc_f=0.9, out_r=0.9, out_f=0.1, **extra):
  return {"d/loss": d_loss, "d/acc_real": acc_r, "d/acc_fake": acc_f, "d/out_real": out_r,
          "d/out_fake": out_f, **extra}


def test_d_wins_warns_after_patience_once_per_episode():
  mon = diagnostics.GanMonitor(d_wins_threshold=0.05, patience=3)
  out = [mon.update(s, _m(0.01)) for s in range(5)]
  assert [bool(w) for w in out] == [False, False, True, False, False]
  assert "D wins" in out[2][0] and "lambda_adv" in out[2][0] and "real_label_smoothing" in out[2][0]
  assert mon.update(5, _m(0.4)) == []          # episode ends
  out = [mon.update(s, _m(0.01)) for s in range(6, 9)]
  assert out[-1] and "step 8" in out[-1][0]    # a new episode warns again


def test_d_collapse_warns():
  mon = diagnostics.GanMonitor(patience=2)
  m = _m(0.69, acc_r=0.5, acc_f=0.5, out_r=0.5, out_f=0.5)
  assert mon.update(0, m) == []
  warn = mon.update(1, m)
  assert warn and "collapsed" in warn[0]


def test_no_discriminator_no_warning():
  assert diagnostics.GanMonitor(patience=1).update(0, {"g/loss": 1.0}) == []


def test_nonfinite_raises_with_step_and_term():
  metrics = {"g/loss_seg": 1.0, "g/loss_adv": math.nan, "nonfinite": 1.0}
  with pytest.raises(diagnostics.NonFiniteError, match=r"step 7: .*g/loss_adv"):
    diagnostics.check_finite(7, metrics, skip=False)
  msg = diagnostics.check_finite(7, metrics, skip=True)
  assert "skipped" in msg and "g/loss_adv" in msg
  assert diagnostics.check_finite(7, {"g/loss": 1.0, "nonfinite": 0.0}, skip=False) is None


def test_nonfinite_gradient_only_is_named():
  with pytest.raises(diagnostics.NonFiniteError, match="gradient"):
    diagnostics.check_finite(3, {"g/loss": 1.0, "nonfinite": 1.0}, skip=False)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_finiteness_check_finds_one_bad_element_anywhere(bad, dtype):
  """The step's guard (a float32 sum per leaf) flags a single NaN / +-inf in any floating
  leaf, under jit, and ignores integer leaves; finite trees pass, also with large values."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from advseg_jax.train.steps import _all_finite

  rng = np.random.default_rng()
  tree = {"w": jnp.asarray(rng.normal(size=(7, 5)), dtype),
          "b": {"x": jnp.asarray(rng.normal(size=(11,)) * 1e30, jnp.float32)},
          "step": jnp.asarray(3, jnp.int32)}
  check = jax.jit(_all_finite)
  assert bool(check(tree))
  for path in (("w",), ("b", "x")):
    leaf = tree[path[0]] if len(path) == 1 else tree["b"]["x"]
    pos = tuple(int(rng.integers(n)) for n in leaf.shape)
    bad_leaf = leaf.at[pos].set(bad)
    bad_tree = ({**tree, "w": bad_leaf} if path == ("w",)
                else {**tree, "b": {"x": bad_leaf}})
    assert not bool(check(bad_tree)), (path, pos)
  # +inf and -inf in one leaf sum to NaN: still caught.
  both = tree["w"].at[0, 0].set(math.inf).at[1, 1].set(-math.inf)
  assert not bool(check({**tree, "w": both}))
  assert bool(check({"step": jnp.asarray(1)}))


def test_preemption_guard_catches_sigterm_and_restores():
  before = signal.getsignal(signal.SIGTERM)
  with PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.requested and guard.signal_name == "SIGTERM"
  assert signal.getsignal(signal.SIGTERM) == before
