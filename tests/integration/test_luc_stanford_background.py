"""Luc et al.'s first benchmark: `prepare stanford_background` on the builder's dummy_data/
tree, then `train --config configs/luc.py:stanford_basic,runlocal` on it for two steps, end to
end through the two CLIs (real builder, array_record files, grain pipelines)."""

import json
import math
import os
import shutil

import pytest

from advseg_jax.cli import prepare as prepare_cli
from advseg_jax.cli import train as train_cli
from advseg_jax.config import validation as config_validation

from tests import data_trees
from tests import loop_helpers

STEPS = 2


@pytest.mark.parametrize("encoding", ["basic", "product", "scaling"])
def test_stanford_presets_are_fold_0_of_stanford_background(encoding):
  c = loop_helpers.load_preset(f"luc.py:stanford_{encoding}")
  config_validation.validate(c, num_devices=1)
  assert (c.method.name, c.method.label_encoding, c.disc.arch) == ("luc", encoding,
                                                                   "image_label")
  assert c.model.num_classes == 8
  assert (c.data.name, c.data.config_name, c.data.split) == ("stanford_background", "0",
                                                             "train")
  assert (c.eval_data.name, c.eval_data.config_name, c.eval_data.split) == (
      "stanford_background", "0", "test")
  assert c.eval_data.eval_mode == "none" and c.data.crop_size == (240, 320)
  voc = loop_helpers.load_preset(f"luc.py:{encoding}")
  assert (voc.data.name, voc.model.num_classes) == ("voc_aug", 21)
  small = loop_helpers.load_preset(f"luc.py:stanford_{encoding},runlocal")
  config_validation.validate(small, num_devices=1)
  assert small.model.depths == "tiny" and small.data.name == "stanford_background"


def test_unknown_preset_lists_the_stanford_ones():
  with pytest.raises(ValueError, match="stanford_basic, stanford_product, stanford_scaling"):
    loop_helpers.load_preset("luc.py:stanford")


@pytest.mark.slow
def test_prepare_stanford_background_then_train_luc_two_steps(tmp_path):
  manual = tmp_path / "iccv09Data"
  shutil.copytree(data_trees.dummy("stanford_background"), manual)
  data_dir = str(tmp_path / "tfds")
  assert prepare_cli.main(["stanford_background", "--config", "0", "--manual_dir",
                           str(manual), "--data_dir", data_dir, "--no_progress"]) == 0
  wd = str(tmp_path / "luc_stanford")
  argv = ["--config", os.path.join(loop_helpers.CONFIGS, "luc.py") + ":stanford_basic,runlocal",
          f"--workdir={wd}", f"--config.num_steps={STEPS}", "--config.log_every=1",
          f"--config.eval_every={STEPS}", f"--config.checkpoint_every={STEPS}",
          "--config.eval_max_examples=2", f"--config.data.data_dir={data_dir}",
          f"--config.eval_data.data_dir={data_dir}"]
  assert train_cli.main(argv) == 0
  with open(os.path.join(wd, "summary.json")) as f:
    summary = json.load(f)
  assert summary["final_step"] == STEPS and summary["status"] == "completed"
  rows = loop_helpers.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  train_rows = [r for r in rows if "g/loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, STEPS + 1))
  for term in ("g/loss_seg", "g/loss_adv", "d/loss"):
    assert all(math.isfinite(r[term]) for r in train_rows), term
  evals = [r for r in rows if "eval/miou" in r]
  assert evals and 0.0 <= evals[-1]["eval/miou"] <= 1.0
  assert summary["eval"]["num_images"] == 2
