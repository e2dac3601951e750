"""`prepare` on the real datasets' layouts (the builders' dummy_data/ trees), then `train` on
what it wrote, end to end through the two CLIs: AdvSemiSeg on VOC-aug, AdaptSegNet on
GTA5 -> Cityscapes. The presets are the originals' with `,runlocal` (tiny network, small
crops); the data goes through the real builders, array_record files and grain pipelines.
"""

import json
import math
import os
import shutil

import pytest


from advseg_jax.cli import prepare as prepare_cli
from advseg_jax.cli import train as cli
from advseg_jax.data import prepare

from tests import loop_helpers

pytestmark = pytest.mark.slow  # end-to-end: CI runs it, the fast tier does not

BUILDERS = os.path.join(os.path.dirname(prepare.__file__), "builders")
STEPS = 2


def _prepare(name: str, tmp_path, data_dir: str) -> None:
  manual = tmp_path / f"manual_{name}"
  shutil.copytree(os.path.join(BUILDERS, name, "dummy_data"), manual)
  assert prepare_cli.main([name, "--manual_dir", str(manual), "--data_dir", data_dir,
                       "--no_progress"]) == 0


def _train(preset: str, workdir: str, data_dir: str, streams) -> dict:
  argv = ["--config", os.path.join(loop_helpers.CONFIGS, preset) + ",runlocal",
          f"--workdir={workdir}", f"--config.num_steps={STEPS}", "--config.log_every=1",
          f"--config.eval_every={STEPS}", f"--config.checkpoint_every={STEPS}",
          "--config.eval_max_examples=2"]
  argv += [f"--config.{s}.data_dir={data_dir}" for s in streams]
  assert cli.main(argv) == 0
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def _check_run(workdir: str, summary: dict, loss_terms) -> None:
  assert summary["final_step"] == STEPS and summary["status"] == "completed"
  rows = loop_helpers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_rows = [r for r in rows if "g/loss" in r]
  assert [r["step"] for r in train_rows] == list(range(1, STEPS + 1))
  for term in loss_terms:
    assert all(math.isfinite(r[term]) for r in train_rows), term
  evals = [r for r in rows if "eval/miou" in r]
  assert evals and 0.0 <= evals[-1]["eval/miou"] <= 1.0
  assert os.path.isdir(os.path.join(workdir, "final_model"))


def test_prepare_voc_aug_then_train_advsemi(tmp_path):
  data_dir = str(tmp_path / "tfds")
  _prepare("voc_aug", tmp_path, data_dir)
  wd = str(tmp_path / "voc_semi")
  # 1/2 labelled: 1/8 of the fixture's 4 images leaves none (a clear error, checked elsewhere).
  summary = _train("voc.py:semi_0.5", wd, data_dir, ("data", "eval_data"))
  _check_run(wd, summary, ("g/loss_seg", "g/loss_adv", "d/loss"))


def test_prepare_gta5_and_cityscapes_then_train_adaptseg(tmp_path):
  data_dir = str(tmp_path / "tfds")
  _prepare("gta5", tmp_path, data_dir)
  _prepare("cityscapes", tmp_path, data_dir)
  wd = str(tmp_path / "gta2city")
  summary = _train("gta5_cityscapes.py:multi", wd, data_dir,
                   ("data", "target_data", "eval_data"))
  _check_run(wd, summary, ("g/loss_seg", "g/loss_adv", "d/loss"))
