"""Every preset in configs/ builds, validates, carries the originals' values, and (shrunk with
',runlocal') trains two steps through the real loop on fake in-memory batches."""

import math
import os

import pytest

from advseg_jax import methods
from advseg_jax.config import validation as config_validation
from advseg_jax.config import presets
from advseg_jax.config.defaults import base_config
from advseg_jax.train import loop

from tests import loop_helpers

VOC = [f"voc.py:{m}_{f}" for m in ("baseline", "adv", "semi")
       for f in ("0.125", "0.25", "0.5", "1.0") if (m, f) != ("semi", "1.0")]
GTA = [f"gta5_cityscapes.py:{p}" for p in ("single", "multi", "lsgan", "multi_torch04")]
SYNTHIA = [f"synthia_cityscapes.py:{p}" for p in ("single_16", "multi_16", "single_13",
                                                   "multi_13")]
LUC = [f"luc.py:{p}" for p in ("basic", "product", "scaling")]
DEMO = [f"demo.py:{p}" for p in ("semi", "adv", "baseline", "adaptseg")]
ALL = VOC + GTA + SYNTHIA + LUC + DEMO

# Two training steps each; presets whose step is identical to another one's (VOC fractions)
# reuse its compilation through the persistent cache.
RUN = VOC + ["gta5_cityscapes.py:single", "gta5_cityscapes.py:multi", "gta5_cityscapes.py:lsgan",
             "synthia_cityscapes.py:multi_16", "luc.py:basic"]


@pytest.mark.parametrize("spec", ALL + [s + ",runlocal" for s in ALL])
def test_preset_builds_and_validates(spec):
  c = loop_helpers.load_preset(spec)
  config_validation.validate(c, num_devices=1)
  assert c.method.name in methods.METHODS
  if spec.endswith("runlocal"):
    assert c.model.depths == "tiny" and c.model.width == 8 and c.batch_size <= 2


def test_voc_values_are_the_originals():
  c = loop_helpers.load_preset("voc.py:semi_0.125")
  assert (c.method.name, c.labelled_fraction, c.batch_size, c.num_steps) == (
      "advsemi", 0.125, 10, 20000)
  assert (c.method.lambda_adv, c.method.lambda_semi, c.method.lambda_semi_adv,
          c.method.mask_T, c.method.semi_start) == (0.01, 0.1, 0.001, 0.2, 5000)
  assert c.data.crop_size == (321, 321) and c.data.channel_order == "RGB"
  assert c.data.gt_loader == "advsemi" and not c.data.random_scale
  assert c.eval_data.eval_mode == "pad" and c.eval_data.eval_pad_size == (505, 505)
  assert (c.optim_g.lr, c.optim_d.lr, c.model.aspp_branches_used) == (2.5e-4, 1e-4, 2)
  adv = loop_helpers.load_preset("voc.py:adv_1.0")
  assert adv.method.lambda_semi == 0 and adv.labelled_fraction == 1.0
  assert "unlabelled" not in methods.streams(adv.method.name, adv.method)
  base = loop_helpers.load_preset("voc.py:baseline_1/2")
  assert base.method.name == "supervised" and base.labelled_fraction == 0.5
  assert loop_helpers.load_preset("voc.py:adv_semi_0.25").method.lambda_semi == 0.1
  assert loop_helpers.load_preset("voc.py").labelled_fraction == 0.125


def test_gta_values_are_the_readme_presets():
  m = loop_helpers.load_preset("gta5_cityscapes.py:multi")
  assert (m.method.lambda_seg, m.method.lambda_adv_aux, m.method.lambda_adv) == (
      0.1, 0.0002, 0.001)
  assert (m.num_steps, m.num_steps_stop, m.batch_size) == (250000, 150000, 1)
  assert m.data.resize_size == (720, 1280) and m.target_data.resize_size == (512, 1024)
  assert m.data.channel_order == m.target_data.channel_order == "BGR"
  assert m.model.arch == "deeplabv2_multi" and m.init.rule == "adaptseg"
  assert m.eval_mean_mode == "nanmean" and m.eval_data.eval_mode == "resize"
  s = loop_helpers.load_preset("gta5_cityscapes.py:single")
  assert (s.method.lambda_seg, s.method.lambda_adv_aux, s.method.lambda_adv) == (0, 0, 0.001)
  ls = loop_helpers.load_preset("gta5_cityscapes.py:lsgan")
  assert (ls.method.gan, ls.method.lambda_adv) == ("ls", 0.01)
  syn = loop_helpers.load_preset("synthia_cityscapes.py:single_13")
  assert syn.model.num_classes == 13 and syn.data.config_name == "13"


def test_sgd_duplicate_updates_faithful_by_default():
  """The presets that reproduce published numbers (and `base_config`) train with the
  originals' per-listing SGD updates as PyTorch 0.2-0.4 applied them (docs/FIDELITY.md
  §1.5); the demo presets keep the once-per-parameter correction and say so."""
  faithful = [base_config()] + [loop_helpers.load_preset(s) for s in VOC + GTA + SYNTHIA + LUC]
  for c in faithful:
    assert (c.optim_g.legacy_duplicate_updates, c.optim_g.duplicate_rule) == (True, "torch0.4")
  for spec in DEMO + ["shapes_methods.py:semi_1/8"]:
    assert loop_helpers.load_preset(spec).optim_g.legacy_duplicate_updates is False, spec
  for path in ("demo.py", "shapes_methods.py"):
    text = open(os.path.join(loop_helpers.CONFIGS, path)).read()
    assert "correction of §1.5" in text or "§1.5 correction" in text, path


def test_runlocal_shrinks_sizes():
  c = loop_helpers.load_preset("gta5_cityscapes.py:multi,runlocal")
  assert max(c.data.resize_size) == 65 and max(c.target_data.resize_size) == 65
  assert c.num_steps == 20 and c.num_steps_stop is None and c.log_every == 1
  v = loop_helpers.load_preset("voc.py:semi_0.125,runlocal")
  assert v.data.crop_size == (41, 41) and v.method.semi_start == 1


@pytest.mark.parametrize("spec,match", [
    ("voc.py:semi_1.0", "semi_1.0 does not exist"),
    ("voc.py:fancy_0.5", "unknown preset 'fancy_0.5'"),
    ("gta5_cityscapes.py:triple", "known presets: multi, single"),
    ("voc.py:adv_0.5,foo,bar", "one preset name expected"),
])
def test_bad_preset_names(spec, match):
  with pytest.raises(ValueError, match=match):
    loop_helpers.load_preset(spec)


def test_presets_parse_arg():
  assert presets.parse_arg(None, "x") == ("x", ())
  assert presets.parse_arg("runlocal", "x") == ("x", ("runlocal",))
  assert presets.parse_arg(" semi_0.5 , runlocal", "x") == ("semi_0.5", ("runlocal",))


@pytest.mark.slow
@pytest.mark.parametrize("spec", RUN)
def test_preset_trains_two_steps(spec, tmp_path):
  c = loop_helpers.shrink_for_test(loop_helpers.load_preset(spec + ",runlocal"))
  provider = loop_helpers.FakeProvider()
  summary = loop.train(c, str(tmp_path), data_provider=provider, print_fn=lambda s: None)
  assert summary["final_step"] == 2 and summary["status"] == "completed"
  fm = summary["final_metrics"]
  assert fm["nonfinite"] == 0.0 and math.isfinite(fm["g/loss"])
  if c.method.name != "supervised":
    assert math.isfinite(fm["d/loss"])
  rows = loop_helpers.read_jsonl(os.path.join(str(tmp_path), "metrics.jsonl"))
  assert [r["step"] for r in rows if "g/loss" in r] == [1, 2]
  assert summary["eval"]["num_images"] >= 1
  # batch per stream and step = batch_size * iter_size; labelled split ids for fractions < 1
  streams = methods.streams(c.method.name, c.method)
  assert sorted(call[1] for call in provider.calls) == sorted(
      (c.target_data if s == "target" else c.data).name for s in streams)
  for call in provider.calls:
    assert call[4] == c.batch_size * c.iter_size
  if c.labelled_fraction < 1:
    n_lab = int(c.labelled_fraction * provider.n)
    assert any(call[3] == n_lab for call in provider.calls)
    assert os.path.isfile(os.path.join(str(tmp_path), "split.json"))


# ----------------------------------------------------------------------------- validation
def _demo():
  return loop_helpers.load_preset("demo.py:semi")


@pytest.mark.parametrize("field,value,expected", [
    ("data.crop_size", (0, 64), "None or two positive ints (h, w)"),
    ("eval_data.eval_pad_size", (505,), "None or two positive ints (h, w)"),
    ("data.scale_factors", (), "a non-empty list of numbers in (0, 8]"),
    ("data.mean_bgr", (1.0, 2.0), "three numbers (B, G, R)"),
    ("target_data.eval_mode", "crop", "'pad', 'resize' or 'none'"),
    ("labelled_fraction", 0.0, "a number in (0, 1]"),
    ("labelled_fraction", 1.5, "a number in (0, 1]"),
    ("method.lambda_adv", -0.01, "a number >= 0"),
    ("method.lambda_semi", -1.0, "a number >= 0"),
    ("method.mask_T", 1.2, "a number in [0, 1]"),
    ("method.real_label_smoothing", 0.5, "a number in [0, 0.5)"),
    ("method.semi_start", -1, "an int >= 0"),
    ("method.gan", "wgan", "'vanilla', 'ls' or 'softmax2'"),
    ("method.name", "cyclegan", "one of"),
    ("model.num_classes", 1, "an int >= 2"),
    ("model.bn_mode", "train", "'batch_stats' or 'frozen'"),
    ("model.aspp_branches_used", 5, "1..4"),
    ("model.aspp_impl", "cudnn", "one of ('auto', 'matmul', 'conv')"),
    ("optim_g.lr", 0.0, "a number > 0"),
    ("optim_g.momentum", 1.0, "in [0, 1)"),
    ("optim_g.legacy_duplicate_updates", 1, "True or False"),
    ("optim_g.duplicate_rule", "torch1.0", "one of ('torch0.4', 'torch2')"),
    ("optim_d.name", "rmsprop", "'adam' or 'sgd'"),
    ("num_steps", 0, "an int >= 1"),
    ("num_steps_stop", 100000, "None or an int in [1, num_steps]"),
    ("eval_mean_mode", "median", "'auto', 'voc', 'nanmean' or 'all'"),
    ("diagnostics.d_wins_threshold", 1.5, "a D loss in [0, 1)"),
    ("diagnostics.d_collapse_accuracy", 0.3, "an accuracy in [0.5, 1]"),
    ("diagnostics.d_wins_patience", 0, "an int >= 1"),
    ("disc.ndf", 0, "an int >= 1"),
    ("init.rule", "loose", "one of"),
])
def test_validation_names_the_field(field, value, expected):
  c = _demo()
  *parents, leaf = field.split(".")
  node = c
  for p in parents:
    node = node[p]
  with node.ignore_type():
    node[leaf] = value
  with pytest.raises(config_validation.ConfigError) as e:
    config_validation.validate(c)
  assert str(e.value).startswith(f"config.{field} = {value!r} is invalid: expected "), e.value
  assert expected in str(e.value)


def test_validation_batch_divisible_by_devices():
  c = _demo()                      # batch 4, iter_size 1
  config_validation.validate(c, num_devices=2)
  with pytest.raises(config_validation.ConfigError,
                     match=r"config.batch_size = 4 is invalid: expected a multiple of the device "
                           r"count \(3\)"):
    config_validation.validate(c, num_devices=3)


def test_invalid_value_on_the_command_line_is_one_error_line(tmp_path, capsys):
  from advseg_jax.cli import train as cli  # pylint: disable=import-outside-toplevel
  wd = tmp_path / "never_created"
  rc = cli.main(["--config", os.path.join(loop_helpers.CONFIGS, "demo.py"),
                 f"--workdir={wd}", "--config.labelled_fraction=1.5"])
  assert rc == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: config.labelled_fraction = 1.5 is invalid: expected a number in "
                 "(0, 1]"]
  assert not wd.exists()
