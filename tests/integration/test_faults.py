"""Fault injection on `python -m advseg_jax train` (issue 7): each fault ends with a clear
message, and what was already written (checkpoints, metrics.jsonl) is intact.

Faults: SIGKILL while an asynchronous checkpoint write is in flight; SIGTERM (preemption); a
deleted or truncated latest checkpoint; a config that differs from the workdir's; a full disk
(checkpoint directory that cannot be written); corrupt images in the dataset; a checkpoint
of another architecture or class count. `test_loop.py` covers the plain SIGKILL resume and an
emptied checkpoint; `test_data_prepare.py` the dataset builders' bad-file handling.

All runs use `configs/demo.py:semi,runlocal` for 4 steps (checkpoints at steps 2 and 4), as in
test_loop, so they share one compiled step through the persistent compilation cache.
"""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest

from advseg_jax.cli import train as cli
from advseg_jax.data import pipeline
from advseg_jax.inference import loading
from advseg_jax.train import checkpoint as ck

from tests import loop_helpers

pytestmark = pytest.mark.slow  # end-to-end: CI runs it, the fast tier does not

STEPS = 4
# G's SGD at this rate overflows the weights within two updates: step 2's own losses are
# still finite (g/loss 3e30) but its updated weights are not, so the guard stops there.
ABSURD_LR = 1e30


# `data_dir` and `reference` (a 4-step run) are session fixtures in conftest.py.


# ----------------------------------------------------------------------------- helpers
def _digest(root: str) -> dict:
  """{relative path: sha256} of every file under `root`."""
  out = {}
  for dirpath, _, files in os.walk(root):
    for name in files:
      path = os.path.join(dirpath, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _lines(workdir: str) -> list:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return f.read().splitlines()


class Written:
  """What a workdir holds before a fault: the step directories and the metrics.jsonl rows up
  to the latest of them (a resumed run logs the later steps again, replacing their rows)."""

  def __init__(self, workdir: str, steps):
    self.workdir = workdir
    self.steps = {s: _digest(os.path.join(workdir, "checkpoints", str(s))) for s in steps}
    self.lines = [l for l in _lines(workdir) if json.loads(l)["step"] <= max(steps)]
    assert all(self.steps.values()) and self.lines

  def assert_intact(self, steps=None):
    for s in (self.steps if steps is None else steps):
      got = _digest(os.path.join(self.workdir, "checkpoints", str(s)))
      assert got == self.steps[s], f"checkpoint step {s} changed"
    now = _lines(self.workdir)
    assert now[:len(self.lines)] == self.lines, "metrics.jsonl lost or changed rows"


def _copy_without_step4(reference: str, dest: str) -> str:
  """The reference workdir as if the run had stopped after checkpoint 2 and its logs."""
  shutil.copytree(reference, dest)
  shutil.rmtree(os.path.join(dest, "checkpoints", "4"))
  shutil.rmtree(os.path.join(dest, ck.FINAL_MODEL))
  return dest


def _assert_same_final(a: str, b: str) -> None:
  loop_helpers.assert_same_variables(loop_helpers.final_model_variables(a),
                                     loop_helpers.final_model_variables(b))


# ----------------------------------------------------------------------------- faults
def test_sigkill_during_async_checkpoint_write_then_resume(reference, data_dir, tmp_path,
                                                           capsys):
  wd = str(tmp_path / "killed")
  argv = loop_helpers.demo_argv(wd, data_dir, steps=STEPS)
  proc = loop_helpers.run_command(["train", *argv], kill_during_save_at_step=4)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
  names = sorted(os.listdir(os.path.join(wd, "checkpoints")))
  assert names[0] == "2" and len(names) == 2 and names[1].startswith("4" + ck.TMP_MARKER), names
  written = Written(wd, [2])

  capsys.readouterr()
  assert cli.main(argv) == 0
  err = capsys.readouterr().err
  assert f"checkpoint {os.path.join(wd, 'checkpoints', names[1])} is incomplete (a save that " \
         "never finished); ignored and removed" in err, err
  assert "resuming from" in err and "(step 2)" in err
  assert "taking over the lock of an earlier run" in err  # the killed run's, stale
  written.assert_intact()
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2", "4"]
  _assert_same_final(wd, reference)
  # the rows the killed run logged after step 2 were dropped, not repeated
  rows = loop_helpers.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows if "g/loss" in r] == list(range(1, STEPS + 1)), rows


def test_sigterm_saves_and_exits_then_resumes(data_dir, tmp_path):
  wd = str(tmp_path / "preempted")
  steps = 40
  argv = loop_helpers.demo_argv(wd, data_dir, "--config.checkpoint_every=1000",
                                "--config.eval_every=1000", steps=steps)
  proc = subprocess.Popen([sys.executable, "-m", "advseg_jax", "train", *argv],
                          cwd=loop_helpers.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=loop_helpers.subprocess_env())
  out = []
  for line in proc.stdout:  # progress lines are flushed once per logged step
    out.append(line)
    if line.lstrip().startswith("step") and "/40" in line:
      proc.send_signal(signal.SIGTERM)
      break
  out.append(proc.stdout.read())
  assert proc.wait(timeout=600) == 0, "".join(out)[-3000:]
  text = "".join(out)
  assert "SIGTERM received: saved step" in text, text[-3000:]
  saved = int(text.split("SIGTERM received: saved step ")[1].split(",")[0])
  assert 1 <= saved < steps
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == [str(saved)]
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["status"] == "preempted (SIGTERM)" and summary["final_step"] == saved
  assert not os.path.exists(os.path.join(wd, ck.FINAL_MODEL))
  written = Written(wd, [saved])

  assert cli.main(argv) == 0
  written.assert_intact()
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["status"] == "completed"
  assert (summary["start_step"], summary["final_step"]) == (saved, steps)


def test_deleted_latest_checkpoint_resumes_from_previous(reference, data_dir, tmp_path, capsys):
  wd = _copy_without_step4(reference, str(tmp_path / "deleted"))
  written = Written(wd, [2])
  capsys.readouterr()
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=STEPS)) == 0
  assert "(step 2)" in capsys.readouterr().err
  written.assert_intact()
  _assert_same_final(wd, reference)


def test_truncated_latest_checkpoint_falls_back(reference, data_dir, tmp_path, capsys):
  wd = str(tmp_path / "truncated")
  shutil.copytree(reference, wd)
  shutil.rmtree(os.path.join(wd, ck.FINAL_MODEL))
  written = Written(wd, [2])
  step4 = os.path.join(wd, "checkpoints", "4")
  data = os.path.join(step4, "d_state", "d")
  for name in os.listdir(data):
    path = os.path.join(data, name)
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  capsys.readouterr()
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=STEPS)) == 0
  err = capsys.readouterr().err
  assert f"checkpoint {step4} is incomplete or corrupt (" in err
  assert "using step 2 instead" in err
  written.assert_intact()
  moved = os.listdir(os.path.join(wd, ck.CORRUPT_DIR))
  assert len(moved) == 1 and moved[0].startswith("4-")  # kept aside, not deleted
  _assert_same_final(wd, reference)


def _flip_bytes(path: str, count: int = 64) -> None:
  """Inverts `count` bytes in the middle of `path` (its size unchanged)."""
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    mid = len(data) // 2 - count // 2
    data[mid:mid + count] = bytes(b ^ 0xFF for b in data[mid:mid + count])
    f.seek(0)
    f.write(data)


def _largest_file(root: str) -> str:
  files = [os.path.join(dp, f) for dp, _, fs in os.walk(root) for f in fs]
  return max(files, key=os.path.getsize)


def test_flipped_bytes_in_latest_checkpoint_fall_back(reference, data_dir, tmp_path, capsys):
  """Bytes inverted inside a g_state data file (no truncation): the checksums written with
  the step catch it, the step is moved aside and the run resumes from the previous one."""
  wd = str(tmp_path / "flipped")
  shutil.copytree(reference, wd)
  shutil.rmtree(os.path.join(wd, ck.FINAL_MODEL))
  written = Written(wd, [2])
  step4 = os.path.join(wd, "checkpoints", "4")
  _flip_bytes(_largest_file(os.path.join(step4, "g_state")))
  capsys.readouterr()
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=STEPS)) == 0
  err = capsys.readouterr().err
  assert f"checkpoint {step4} is incomplete or corrupt (g_state/" in err, err[-3000:]
  assert "checksum mismatch" in err and "using step 2 instead" in err, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  written.assert_intact()
  moved = os.listdir(os.path.join(wd, ck.CORRUPT_DIR))
  assert len(moved) == 1 and moved[0].startswith("4-")
  _assert_same_final(wd, reference)


def test_checkpoint_without_checksums_still_restores(reference, data_dir, tmp_path, capsys):
  """A step written before checksums existed restores (unverified, said in a log line)."""
  wd = str(tmp_path / "old_format")
  shutil.copytree(reference, wd)
  meta_path = os.path.join(wd, "checkpoints", "4", "meta", "metadata")
  with open(meta_path) as f:
    meta = json.load(f)
  assert "checksums" in meta
  del meta["checksums"]
  with open(meta_path, "w") as f:
    json.dump(meta, f)
  capsys.readouterr()
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=STEPS)) == 0
  err = capsys.readouterr().err
  assert "has no checksums (written by an earlier version)" in err, err[-3000:]
  assert "(step 4)" in err and not os.path.exists(os.path.join(wd, ck.CORRUPT_DIR))


def test_nonfinite_first_step_after_resume_names_the_checkpoint(data_dir, tmp_path, capsys):
  """A checkpoint whose weights make the next step overflow (written at step 1 of an absurd
  learning rate): the error names that checkpoint, and summary.json says the run failed."""
  wd = str(tmp_path / "nan_resume")
  argv = loop_helpers.demo_argv(wd, data_dir, f"--config.optim_g.lr={ABSURD_LR}",
                                "--config.checkpoint_every=1", steps=STEPS)
  assert cli.main(argv + ["--config.num_steps_stop=1"]) == 0
  capsys.readouterr()
  assert cli.main(argv + ["--allow_config_change"]) == 1
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith("error: step 2: non-finite value in "), last
  assert "first step after resuming from " + os.path.join(wd, "checkpoints", "1") in last
  assert "likely cause" in last and "intact" not in last, last
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["status"].startswith("failed: NonFiniteError: step 2"), summary["status"]
  assert (summary["start_step"], summary["final_step"]) == (1, 2)


def test_changed_config_refused_without_touching_the_workdir(reference, data_dir, tmp_path,
                                                             capsys):
  wd = str(tmp_path / "changed")
  shutil.copytree(reference, wd)
  before = _digest(wd)
  capsys.readouterr()
  argv = loop_helpers.demo_argv(wd, data_dir, "--config.method.lambda_adv=0.5",
                                "--config.optim_d.lr=0.001", steps=STEPS + 2)
  assert cli.main(argv) == 2
  err = capsys.readouterr().err
  assert "method.lambda_adv: 0.01 -> 0.5" in err and "optim_d.lr: 0.0001 -> 0.001" in err
  assert "num_steps: 4 -> 6" in err and "--allow_config_change" in err
  assert _digest(wd) == before                  # not a byte written
  # with the flag the run goes on from step 4 under the new config
  written = Written(wd, [4])
  assert cli.main(argv + ["--allow_config_change"]) == 0
  assert "config changed on resume" in capsys.readouterr().err
  written.assert_intact()
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "6"]


def test_full_disk_stops_with_message_and_keeps_what_was_written(reference, data_dir,
                                                                  tmp_path):
  wd = _copy_without_step4(reference, str(tmp_path / "full"))
  written = Written(wd, [2])
  ckpt_dir = os.path.join(wd, "checkpoints")
  argv = loop_helpers.demo_argv(wd, data_dir, steps=STEPS)
  largest_log = max(os.path.getsize(os.path.join(wd, "metrics.jsonl")), 16 << 10)
  if os.geteuid() != 0:
    os.chmod(ckpt_dir, 0o555)                   # an unwritable checkpoint directory
    limit, reason = None, "Permission denied"
  else:
    largest_ckpt = max(os.path.getsize(os.path.join(dp, f))
                       for dp, _, fs in os.walk(os.path.join(ckpt_dir, "2")) for f in fs)
    assert largest_ckpt > 4 * largest_log
    # root ignores directory modes: cap file sizes instead (EFBIG, like a full disk; Python
    # ignores SIGXFSZ), above the logs' sizes and below the checkpoint files'
    limit, reason = 2 * largest_log, "File too large"
  try:
    proc = loop_helpers.run_command(["train", *argv], max_file_bytes=limit)
  finally:
    os.chmod(ckpt_dir, 0o755)
  assert proc.returncode == 1, proc.stderr[-3000:]
  # the libraries' tracebacks of the aborted writes go to train.log, not to the person
  assert len(proc.stderr.strip().splitlines()) <= 20, proc.stderr[-5000:]
  assert "Traceback" not in proc.stderr, proc.stderr[-5000:]
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, proc.stderr[-3000:]
  last = errors[0]
  # orbax / tensorstore print tracebacks of the aborted writes; the one line comes last.
  assert proc.stderr.strip().splitlines()[-1] == last, proc.stderr[-3000:]
  assert last.startswith("error: could not write the "), last
  assert reason in last, last
  if "checkpoint of step" in last:
    assert "the latest complete checkpoint is step 2 and nothing already saved was changed" \
        in last and "run the same command again to resume" in last
  assert last.endswith(f"(details: {os.path.join(wd, 'train.log')})"), last
  assert json.load(open(os.path.join(wd, "summary.json")))["status"].startswith("failed: ")
  written.assert_intact()
  # space again: the same command resumes from step 2 and reaches the reference's result
  assert cli.main(argv) == 0
  written.assert_intact()
  _assert_same_final(wd, reference)


class _CorruptImages:
  """A dataset source whose every image is a truncated PNG."""

  def __init__(self, src):
    self.src = src

  def __len__(self):
    return len(self.src)

  def __getitem__(self, i):
    ex = dict(self.src[i])
    ex["image"] = ex["image"][:len(ex["image"]) // 3]
    return ex


def test_corrupt_dataset_images_stop_with_the_file_named(reference, data_dir, tmp_path, capsys,
                                                         monkeypatch):
  wd = _copy_without_step4(reference, str(tmp_path / "corrupt_data"))
  written = Written(wd, [2])
  real_open = pipeline._open  # pylint: disable=protected-access
  monkeypatch.setattr(pipeline, "_open", lambda cfg, split, indices=None: _CorruptImages(
      real_open(cfg, split, indices)) if split == "train" else real_open(cfg, split, indices))
  capsys.readouterr()
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=STEPS)) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err[-1].startswith("error: "), err[-5:]
  assert err[-1].startswith("error: bad example in the data: "), err[-1]
  assert "skip_bad_examples=True" in err[-1], err[-1]
  written.assert_intact()
  assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["2"]


@pytest.mark.parametrize("change", ["--config.model.num_classes=6",
                                    "--config.model.arch=deeplabv2_multi"])
def test_checkpoint_of_another_model_is_refused_and_kept(reference, data_dir, tmp_path, capsys,
                                                         change):
  wd = str(tmp_path / "other_model")
  shutil.copytree(reference, wd)
  written = Written(wd, [2, 4])
  capsys.readouterr()
  argv = loop_helpers.demo_argv(wd, data_dir, change, "--allow_config_change",
                                steps=STEPS + 2)
  assert cli.main(argv) == 1
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert err.startswith(f"error: no checkpoint in {os.path.join(wd, 'checkpoints')} could be "
                        "restored (nothing was changed; if the config changed the model, use "
                        "a new --workdir): step 4: "), err
  assert "step 2: " in err
  if "num_classes" in change:  # the classifier is named with both shapes
    assert "step 4: g_state/params/layer5/conv0/bias has shape (5,) in the checkpoint, the " \
        "model wants (6,)" in err, err
  written.assert_intact()
  assert not os.path.exists(os.path.join(wd, ck.CORRUPT_DIR))  # nothing moved aside


@pytest.mark.parametrize("change,field", [
    ("--config.model.num_classes=6", "'num_classes': 6"),
    ("--config.model.arch=deeplabv2_multi", "'arch': 'deeplabv2_multi'")])
def test_init_from_a_model_of_another_arch_or_class_count(reference, data_dir, tmp_path, capsys,
                                                          change, field):
  """--config.init.checkpoint naming a trained model that does not fit the config."""
  wd = str(tmp_path / "init_other")
  model_dir = os.path.join(reference, ck.FINAL_MODEL)
  before = _digest(model_dir)
  capsys.readouterr()
  argv = loop_helpers.demo_argv(wd, data_dir, f"--config.init.checkpoint={model_dir}", change,
                                steps=STEPS)
  assert cli.main(argv) == 2
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith(f"error: config.init.checkpoint={model_dir}: model {{"), last
  assert "does not match config.model" in last and field in last.split("config.model")[1]
  assert _digest(model_dir) == before
  assert not os.path.isdir(os.path.join(wd, "checkpoints")) or \
      not os.listdir(os.path.join(wd, "checkpoints"))


def _absurd_lr_run(data_dir, wd: str, capsys, *flags: str, code: int = 1) -> str:
  """Trains the demo with ABSURD_LR and `flags`; the last stderr line."""
  argv = loop_helpers.demo_argv(wd, data_dir, f"--config.optim_g.lr={ABSURD_LR}", *flags,
                                steps=STEPS)
  capsys.readouterr()
  assert cli.main(argv) == code
  return capsys.readouterr().err.strip().splitlines()[-1]


def test_nonfinite_loss_stops_before_the_step_is_checkpointed(data_dir, tmp_path, capsys):
  """An absurd G learning rate: after the first update the weights or the losses overflow to
  Inf / NaN. The run stops at that step, and the latest checkpoint holds finite weights."""
  wd = str(tmp_path / "nan")
  last = _absurd_lr_run(data_dir, wd, capsys, "--config.checkpoint_every=1")
  assert last.startswith("error: step ") and ": non-finite value in " in last, last
  bad_step = int(last.split("error: step ")[1].split(":")[0])
  assert "skip_nonfinite=True" in last
  saved = sorted(int(s) for s in os.listdir(os.path.join(wd, "checkpoints")) if s.isdigit())
  assert saved and saved == list(range(1, bad_step)), (saved, bad_step)  # last good = latest
  assert f"The latest checkpoint is step {saved[-1]}" in last and "intact" not in last, last
  summary = json.load(open(os.path.join(wd, "summary.json")))
  assert summary["status"].startswith(f"failed: NonFiniteError: step {bad_step}")
  latest = os.path.join(wd, "checkpoints", str(saved[-1]))
  _assert_finite(loading.load_for_inference(latest)[0], latest)
  rows = loop_helpers.read_jsonl(os.path.join(wd, "metrics.jsonl"))
  assert [r["step"] for r in rows if "g/loss" in r] == list(range(1, bad_step))


def test_nonfinite_without_any_checkpoint_says_so(data_dir, tmp_path, capsys):
  wd = str(tmp_path / "nan_fresh")
  last = _absurd_lr_run(data_dir, wd, capsys, "--config.checkpoint_every=1000")
  assert ": non-finite value in " in last and "No checkpoint was written before this step" \
      in last and "intact" not in last, last
  assert not ck.valid_steps(os.path.join(wd, "checkpoints"))
  assert json.load(open(os.path.join(wd, "summary.json")))["status"].startswith("failed: ")


def _assert_finite(variables, where: str) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  for path, x in jax.tree_util.tree_leaves_with_path(variables):
    assert np.isfinite(np.asarray(x)).all(), f"{where}: {jax.tree_util.keystr(path)}"


def test_nonfinite_updates_are_skipped_with_the_flag(data_dir, tmp_path, capsys):
  """skip_nonfinite=True: the non-finite steps are reported and not applied; the run ends."""
  wd = str(tmp_path / "skip")
  argv = loop_helpers.demo_argv(wd, data_dir, f"--config.optim_g.lr={ABSURD_LR}",
                                "--config.diagnostics.skip_nonfinite=True", steps=STEPS)
  capsys.readouterr()
  assert cli.main(argv) == 0
  err = capsys.readouterr().err
  assert [line for line in err.splitlines() if "the update was skipped" in line], err
  _assert_finite(loop_helpers.final_model_variables(wd), "final_model")
