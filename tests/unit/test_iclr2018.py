"""configs/iclr2018.py and the 'iclr2018' method's config rules (docs/FIDELITY.md §8); the
iteration itself is checked against PyTorch in tests/parity/test_iclr2018_parity.py."""

import math
import os

import pytest

from advseg_jax import methods
from advseg_jax.config import validation as config_validation
from advseg_jax.train import loop

from tests import loop_helpers

PRESETS = ["iclr2018.py:" + p for p in ("base_1.0", "adv_1.0", "base_0.5", "adv_0.5",
                                        "semi_0.5")]


@pytest.mark.parametrize("spec", PRESETS + [s + ",runlocal" for s in PRESETS])
def test_preset_builds_and_validates(spec):
  c = loop_helpers.load_preset(spec)
  config_validation.validate(c, num_devices=1)
  assert c.method.name == "iclr2018" and c.disc.arch == "fc2"


def test_preset_values_are_the_originals():
  semi = loop_helpers.load_preset("iclr2018.py:semi_0.5")
  m = semi.method
  assert (m.lambda_adv, m.lambda_semi, m.lambda_semi_adv, m.mask_T, m.real_label_smoothing,
          m.labelled_probability, m.semi_start) == (0.01, 0.1, 0.01, 0.1, 0.1, 0.5, 0)
  assert methods.streams("iclr2018", m) == ("labelled", "unlabelled")
  # 529 labelled + 529 unlabelled batches an epoch, 20 epochs > 20000: the poly length rules.
  assert (semi.eval_every, semi.num_steps, semi.num_steps_stop) == (1058, 20000, None)
  assert (semi.optim_g.lr, semi.optim_g.weight_decay, semi.optim_d.name,
          semi.optim_d.momentum, semi.optim_d.nesterov) == (2.5e-4, 1e-4, "sgd", 0.5, True)
  assert semi.model.aspp_branches_used == 4 and semi.data.crop_size == (321, 321)
  half = loop_helpers.load_preset("iclr2018.py:adv_1/2")
  assert (half.eval_every, half.num_steps_stop) == (529, 10580)  # 20 epochs of 529 batches
  assert methods.streams("iclr2018", half.method) == ("labelled",)
  base = loop_helpers.load_preset("iclr2018.py:base_full")
  assert base.method.lambda_adv == 0 and base.labelled_fraction == 1.0
  assert loop_helpers.load_preset("iclr2018.py").method.labelled_probability == 0.5


@pytest.mark.parametrize("spec, match", [("iclr2018.py:semi_1.0", "semi_1.0 does not exist"),
                                         ("iclr2018.py:adv_0.25", "unknown preset")])
def test_bad_preset_names(spec, match):
  with pytest.raises(ValueError, match=match):
    loop_helpers.load_preset(spec)


@pytest.mark.parametrize("field, value, expected", [
    ("iter_size", 2, "iter_size"),
    ("method.d_update_every", 2, "method.d_update_every"),
    ("method.labelled_probability", 0.0, "method.labelled_probability"),
    ("diagnostics.grad_norms", True, "diagnostics.grad_norms"),
])
def test_validation_names_the_field(field, value, expected):
  c = loop_helpers.load_preset("iclr2018.py:semi_0.5")
  section, _, name = field.rpartition(".")
  (c[section] if section else c)[name] = value
  if field == "iter_size":
    c.batch_size = 10
  with pytest.raises(config_validation.ConfigError, match=expected):
    config_validation.validate(c)


def test_alternation_needs_unlabelled_data():
  c = loop_helpers.load_preset("iclr2018.py:adv_1.0")
  c.method.labelled_probability = 0.5
  with pytest.raises(config_validation.ConfigError, match="labelled_probability"):
    config_validation.validate(c)


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["iclr2018.py:semi_0.5", "iclr2018.py:base_1.0"])
def test_preset_runs_through_the_loop(spec, tmp_path):
  """Two steps on fake data: D metrics only when D trains, the turn of each step logged."""
  c = loop_helpers.shrink_for_test(loop_helpers.load_preset(spec + ",runlocal"))
  out = loop.train(c, str(tmp_path), data_provider=loop_helpers.FakeProvider(),
                   print_fn=lambda s: None)
  last = out["final_metrics"]
  assert (out["final_step"], last["nonfinite"]) == (2, 0.0) and math.isfinite(last["g/loss"])
  assert ("d/loss" in last) == (c.method.lambda_adv > 0)
  logged = loop_helpers.read_jsonl(os.path.join(str(tmp_path), "metrics.jsonl"))
  turns = [r["labelled_turn"] for r in logged if "labelled_turn" in r]
  assert len(turns) == 2 and (c.method.labelled_probability < 1 or turns == [1.0, 1.0])
