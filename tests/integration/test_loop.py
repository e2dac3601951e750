"""`python -m advseg_jax train` end to end on the embedded `shapes` dataset: outputs, exact
resume after SIGKILL, fallback from a corrupt checkpoint, config-change refusal, CLI errors.

All runs use `configs/demo.py:semi,runlocal` for 4 steps (AdvSemiSeg with the semi terms on,
1/4 labelled), so they share one compiled step.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from advseg_jax import model_io
from advseg_jax.cli import train as cli
from advseg_jax.data import splits
from advseg_jax.inference import loading
from advseg_jax.train import checkpoint as ck
from advseg_jax.train import init as init_lib
from advseg_jax.train import streams
from advseg_jax.train.errors import TrainingError

from tests import loop_helpers

pytestmark = pytest.mark.slow  # end-to-end: CI runs it, the fast tier does not

STEPS = 4


# `data_dir` and `reference` (a 4-step run) are session fixtures in conftest.py.


def test_end_to_end_outputs(reference):
  wd = reference
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
  assert os.listdir(os.path.join(wd, "tensorboard"))[0].startswith("events.out.tfevents")
  rows = loop_helpers.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  train_rows = [r for r in rows if "g/loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  for key in ("g/loss", "g/loss_seg", "g/loss_adv", "g/loss_semi", "g/loss_semi_adv",
              "d/loss", "d/loss_fake", "d/loss_real", "semi/mask_ratio", "lr/g", "lr/d",
              "nonfinite"):
    assert key in train_rows[-1], key
  assert any("perf/images_per_sec" in r for r in train_rows)
  evals = [r for r in rows if "eval/miou" in r]
  assert [r["step"] for r in evals] == [2, 4]
  assert "eval/iou/background" in evals[-1] and "eval/miou_all" in evals[-1]
  # semi terms are on from step 1 (semi_start=1): the loss is reported after it
  assert train_rows[-1]["semi/active"] == 1.0

  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["status"] == "completed" and summary["final_step"] == STEPS
  assert summary["method"] == "advsemi" and summary["eval"]["num_images"] == 4
  assert set(summary["eval"]["per_class_iou"]) == {"background", "disc", "square", "triangle",
                                                   "ring"}
  assert summary["images_per_sec"] > 0
  md = open(os.path.join(wd, "summary.md")).read()
  assert "| background |" in md and "## Final logged metrics" in md and "best_model" in md
  split = json.load(open(os.path.join(wd, "split.json")))
  assert split["fraction"] == 0.25 and split["num_examples"] == 400
  assert os.path.isfile(os.path.join(wd, "config.json"))

  v, spec = loading.load_for_inference(wd, best=True)  # best_model
  assert spec["dataset"] == "shapes" and spec["channel_order"] == "RGB"
  assert spec["num_classes"] == 5 and spec["mean_bgr"][0] == pytest.approx(104.00698793)
  assert spec["miou"] == pytest.approx(summary["best_miou"])
  fv, fspec = model_io.load_model(os.path.join(wd, ck.FINAL_MODEL))
  assert fspec["step"] == STEPS
  d = loading.load_discriminator_for_inference(wd)
  assert d is not None and d[1]["num_classes"] == 5


def test_resume_after_sigkill_is_exact(reference, data_dir, tmp_path):
  wd = str(tmp_path / "killed")
  argv = loop_helpers.demo_argv(wd, data_dir, steps=STEPS)
  proc = loop_helpers.run_command(["train", *argv], kill_at_step=3)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2"]
  assert not os.path.exists(os.path.join(wd, ck.FINAL_MODEL))
  first = loop_helpers.losses_by_step(os.path.join(wd, "metrics.jsonl"))
  assert sorted(first) == [1, 2, 3]

  assert cli.main(argv) == 0                      # resumes from step 2
  ref = loop_helpers.losses_by_step(os.path.join(reference, "metrics.jsonl"))
  got = loop_helpers.losses_by_step(os.path.join(wd, "metrics.jsonl"))
  assert sorted(got) == [1, 2, 3, 4]
  assert got == ref
  loop_helpers.assert_same_variables(loop_helpers.final_model_variables(wd),
                                   loop_helpers.final_model_variables(reference))
  split_ref = json.load(open(os.path.join(reference, "split.json")))
  assert json.load(open(os.path.join(wd, "split.json"))) == split_ref


def test_corrupt_latest_checkpoint_falls_back(reference, data_dir, tmp_path, capsys):
  wd = str(tmp_path / "corrupt")
  shutil.copytree(reference, wd)
  shutil.rmtree(os.path.join(wd, ck.FINAL_MODEL))
  step4 = os.path.join(wd, "checkpoints", "4")
  for name in os.listdir(os.path.join(step4, "g_state", "d")):
    open(os.path.join(step4, "g_state", "d", name), "wb").close()
  capsys.readouterr()
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=STEPS)) == 0
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if "incomplete or corrupt" in l]
  assert len(lines) == 1, err
  assert f"checkpoint {step4} is incomplete or corrupt (" in lines[0]
  assert lines[0].endswith("using step 2 instead")
  assert os.listdir(os.path.join(wd, ck.CORRUPT_DIR))[0].startswith("4-")
  loop_helpers.assert_same_variables(loop_helpers.final_model_variables(wd),
                                   loop_helpers.final_model_variables(reference))
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["start_step"] == 2 and any("corrupt" in p for p in summary["problems"])


def test_config_change_refused_then_operational_change_allowed(reference, data_dir, capsys):
  capsys.readouterr()
  argv = loop_helpers.demo_argv(reference, data_dir, "--config.method.lambda_adv=0.5",
                                "--config.model.num_classes=6", steps=STEPS)
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ")
  assert "method.lambda_adv: 0.01 -> 0.5" in err[0] and "model.num_classes: 5 -> 6" in err[0]
  assert "--allow_config_change" in err[0]
  # logging cadence is not part of the comparison; the run is finished: nothing to train
  before = sorted(os.listdir(os.path.join(reference, "checkpoints")))
  assert cli.main(loop_helpers.demo_argv(reference, data_dir, "--config.log_every=2",
                                         steps=STEPS)) == 0
  assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == before


def test_cli_usage_errors(capsys, tmp_path):
  demo = os.path.join(loop_helpers.CONFIGS, "demo.py")
  cases = [
      (["--config", demo, f"--workdir={tmp_path}", "--config.model.nmu_classes=3"],
       "unknown config field 'nmu_classes' Did you mean \"num_classes\""),
      (["--config", demo, f"--workdir={tmp_path}", "--config.model.num_classes=abc"],
       "--config.model.num_classes=abc"),
      (["--config", demo, f"--workdir={tmp_path}", "--config.model.num_classes=1"],
       "config.model.num_classes = 1 is invalid: expected an int >= 2"),
      (["--config", demo], "--workdir is required"),
      ([f"--workdir={tmp_path}"], "--config is required"),
      (["--config", demo + ":nope", f"--workdir={tmp_path}"], "unknown preset 'nope'"),
      (["--config", "/nonexistent.py", f"--workdir={tmp_path}"], "could not load the config"),
      (["--config", demo, f"--workdir={tmp_path}", "--wrkdir=x"],
       "Unknown command line flag 'wrkdir'. Did you mean: workdir"),
  ]
  for argv, expected in cases:
    capsys.readouterr()
    assert cli.main(argv) == 2, argv
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), (argv, err)
    assert expected in err[0], (expected, err[0])
    assert "Traceback" not in err[0], err[0]
  assert not os.listdir(tmp_path)

  assert cli.main(["--help"]) == 0
  out = capsys.readouterr().out
  for flag in ("--config", "--workdir", "--allow_config_change", "--coordinator_address",
               "--num_processes", "--process_id", "--config.FIELD=VALUE"):
    assert flag in out
  assert "--xla" not in out and "--jax" not in out   # only this command's flags

  assert cli.main(["--config", demo + ":adaptseg", "--print_config"]) == 0
  assert "deeplabv2_multi" in capsys.readouterr().out


def test_main_dispatcher(capsys, monkeypatch):
  from advseg_jax import __main__ as entry
  assert entry.main(["--help"]) == 0
  out = capsys.readouterr().out
  for cmd in ("train", "evaluate", "predict", "convert", "prepare", "report"):
    assert f"  {cmd}" in out
  assert entry.main(["frobnicate"]) == 2
  assert "unknown command 'frobnicate'" in capsys.readouterr().err
  monkeypatch.setitem(entry.COMMANDS, "ghost", ("advseg_jax.ghost_command", "missing"))
  assert entry.main(["ghost"]) == 2
  assert "module advseg_jax.ghost_command is missing" in capsys.readouterr().err
  proc = subprocess.run([sys.executable, "-m", "advseg_jax", "train", "--help"],
                        cwd=loop_helpers.REPO, capture_output=True, text=True, timeout=300,
                        env=loop_helpers.subprocess_env())
  assert proc.returncode == 0 and "--workdir" in proc.stdout


def test_split_from_originals_train_id_pkl(tmp_path):
  import pickle
  from advseg_jax.config import defaults as config_defaults
  perm = np.random.default_rng(3).permutation(16)
  pkl = tmp_path / "train_id.pkl"
  with open(pkl, "wb") as f:
    pickle.dump(list(perm), f, protocol=2)
  c = config_defaults.base_config()
  c.labelled_fraction = 0.25
  c.split_file = str(pkl)
  provider = loop_helpers.FakeProvider(num_examples=16)
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  info = streams.make_split(c, wd, provider, ("labelled", "gt", "unlabelled"))
  np.testing.assert_array_equal(info.labelled, perm[:4])
  np.testing.assert_array_equal(info.unlabelled, perm[4:])
  assert splits.load_split(os.path.join(wd, "split.json")).permutation.tolist() == perm.tolist()
  # without split_file the saved split is reused (resume), and a new one is seeded otherwise
  c.split_file = None
  again = streams.make_split(c, wd, provider, ("labelled",))
  np.testing.assert_array_equal(again.labelled, perm[:4])
  fresh = streams.make_split(c, str(tmp_path), provider, ("labelled",))
  assert fresh.seed == c.seed and fresh.num_labelled == 4
  c.labelled_fraction = 1.0
  assert streams.make_split(c, str(tmp_path / "x"), provider, ("source", "target")).labelled is None


def test_initialisation_from_model_dir_and_pth(reference, tmp_path):
  from advseg_jax.torch_port import convert
  c = loop_helpers.load_preset("demo.py:semi,runlocal")
  ref = loop_helpers.final_model_variables(reference)
  c.init.checkpoint = os.path.join(reference, ck.FINAL_MODEL)
  loop_helpers.assert_same_variables(init_lib.initial_generator_variables(c), ref)
  c.init.checkpoint = reference                       # a workdir: its final model
  loop_helpers.assert_same_variables(init_lib.initial_generator_variables(c), ref)

  pth = str(tmp_path / "g.pth")
  convert.save_torch_checkpoint(ref, "deeplabv2", pth)
  c.init.checkpoint = pth
  c.init.rule = "strict"
  loop_helpers.assert_same_variables(init_lib.initial_generator_variables(c), ref)

  d_vars, _ = loading.load_discriminator_for_inference(reference)
  d_pth = str(tmp_path / "d.pth")
  convert.save_torch_checkpoint(d_vars, "fc_discriminator", d_pth)
  c.init.d_checkpoint = d_pth
  d_params = init_lib.initial_discriminator_params(c)
  loop_helpers.assert_same_variables(d_params["main"], d_vars["params"])

  c.model.num_classes = 6
  c.init.checkpoint = os.path.join(reference, ck.FINAL_MODEL)
  with pytest.raises(TrainingError, match="does not match config.model"):
    init_lib.initial_generator_variables(c)
  c.init.checkpoint = str(tmp_path / "missing.pth")
  with pytest.raises(TrainingError, match="no such file or directory"):
    init_lib.initial_generator_variables(c)


def test_resume_on_two_devices(reference, data_dir, tmp_path):
  """A 1-device checkpoint (no device axis stored) continues on 2 (fake CPU) devices."""
  wd = str(tmp_path / "two")
  shutil.copytree(reference, wd)
  for name in ("4", ):
    shutil.rmtree(os.path.join(wd, "checkpoints", name))
  shutil.rmtree(os.path.join(wd, ck.FINAL_MODEL))
  argv = loop_helpers.demo_argv(wd, data_dir, steps=STEPS)
  env = loop_helpers.subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")
  proc = subprocess.run([sys.executable, "-m", "advseg_jax", "train", *argv],
                        cwd=loop_helpers.REPO, capture_output=True, text=True, timeout=900,
                        env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from" in proc.stderr and "2 device(s) (pmap)" in proc.stderr
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["devices"] == 2 and summary["start_step"] == 2 and summary["final_step"] == 4
  got = loop_helpers.losses_by_step(os.path.join(wd, "metrics.jsonl"))
  assert all(np.isfinite(v).all() for v in (list(r.values()) for r in got.values()))
  v, spec = model_io.load_model(os.path.join(wd, ck.FINAL_MODEL))
  ref = loop_helpers.final_model_variables(reference)
  assert v["params"]["conv1"]["kernel"].shape == ref["params"]["conv1"]["kernel"].shape
