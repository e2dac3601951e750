"""configs/iclr2018.py and the 'iclr2018' method's config rules (docs/FIDELITY.md §8); the
iteration itself is checked against PyTorch in tests/parity/test_iclr2018_parity.py."""

import math
import os

import numpy as np
import pytest

from advseg_jax import methods
from advseg_jax.config import validation as config_validation
from advseg_jax.train import loop
from advseg_jax.train import streams

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


def test_preset_data_pipeline_is_the_originals():
  """utils/transforms.py NormalizeOwn, RandomSizedCrop, IgnoreLabelClass, ZeroPadding."""
  c = loop_helpers.load_preset("iclr2018.py:semi_0.5")
  # torchvision Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) on 0-1 RGB
  mean_rgb, std_rgb = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  for s in (c.data, c.eval_data):
    np.testing.assert_allclose(np.array(s.mean_bgr)[::-1] / 255, mean_rgb, rtol=1e-12)
    np.testing.assert_allclose(np.array(s.std_bgr)[::-1] / 255, std_rgb, rtol=1e-12)
    assert s.channel_order == "RGB" and s.ignore_as_background is True
  assert (c.data.crop_mode, c.data.crop_size, c.data.random_mirror) == (
      "random_sized", (321, 321), False)
  assert (c.eval_data.eval_mode, c.eval_data.eval_pad_size, c.eval_data.eval_pad_fill) == (
      "pad", (513, 513), "black")
  assert c.split_rule == "iclr2018"


def test_preset_split_is_numpy_seed_100(tmp_path):
  c = loop_helpers.load_preset("iclr2018.py:semi_0.5")
  info = streams.make_split(c, str(tmp_path), loop_helpers.FakeProvider(num_examples=50),
                            ("labelled", "unlabelled"))
  labelled = np.random.RandomState(100).choice(50, 25, replace=False)
  np.testing.assert_array_equal(info.labelled, labelled)
  np.testing.assert_array_equal(info.unlabelled, np.setdiff1d(np.arange(50), labelled))
  assert info.source == "seed 100 (iclr2018 rule)"


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
