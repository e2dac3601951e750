"""Bad output paths are refused before any work (one `error:` line naming the path and the
cause), one training run per workdir (an flock), and metrics.jsonl rows after the resumed
step are dropped (issue 21).

Read-only folders: the tests run as root, for whom directory modes are no barrier, so a
folder is made read-only with `chattr +i` (immutable: no new entries, also for root; ext4,
xfs, btrfs...). Without root, `chmod 0o555` does the same. A path under a regular file
(ENOTDIR) and a path under /proc (no new files) need neither.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from advseg_jax import logging_utils
from advseg_jax.cli import evaluate, outputs, predict, report
from advseg_jax.cli import train as train_cli
from advseg_jax.train.workdir_lock import LOCK_FILE, WorkdirLock, WorkdirLockedError

from tests import loop_helpers

DEMO = os.path.join(loop_helpers.CONFIGS, "demo.py") + ":semi,runlocal"


@contextlib.contextmanager
def read_only(folder: str):
  """`folder` refuses new entries for the duration (see the module docstring)."""
  if os.geteuid() != 0:
    os.chmod(folder, 0o555)
    try:
      yield
    finally:
      os.chmod(folder, 0o755)
    return
  if shutil.which("chattr") is None or subprocess.run(
      ["chattr", "+i", folder], capture_output=True).returncode != 0:
    pytest.skip("running as root and `chattr +i` is not available on this filesystem")
  try:
    yield
  finally:
    subprocess.run(["chattr", "-i", folder], check=True)


def _one_error(capsys) -> str:
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


@pytest.fixture
def places(tmp_path):
  """A regular file, a read-only folder and an image to predict on."""
  a_file = tmp_path / "a_file.txt"
  a_file.write_text("in the way")
  locked = tmp_path / "locked"
  locked.mkdir()
  image = tmp_path / "img.png"
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  model = tmp_path / "model"
  model.mkdir()
  return a_file, locked, image, model


# ----------------------------------------------------------------------------- output paths
def test_train_workdir_that_cannot_be_written(places, capsys):
  a_file, locked, _, _ = places
  cases = [(str(a_file), f"--workdir {a_file}: is a file"),
           (str(a_file / "run"), f"--workdir {a_file / 'run'}: {a_file} is a file, not a "
                                 f"folder"),
           (str(locked / "run"), f"--workdir {locked / 'run'}: cannot write in {locked} (")]
  with read_only(str(locked)):
    for workdir, expected in cases:
      assert train_cli.main(["--config", DEMO, "--workdir", workdir]) == 2
      line = _one_error(capsys)
      assert line.startswith(f"error: {expected}"), line
  assert os.listdir(locked) == []


def test_commands_check_their_outputs_before_working(places, capsys):
  _, locked, image, model = places
  out = locked / "out"
  with read_only(str(locked)):
    assert predict.main([str(image), "-c", str(model), "-o", str(out)]) == 2
    assert _one_error(capsys).startswith(f"error: --output_dir {out}: cannot write in "
                                         f"{locked} (")
    assert report.main([str(model), "--output_dir", str(out)]) == 2
    assert _one_error(capsys).startswith(f"error: --output_dir {out}: cannot write in ")
    # evaluate: the empty model folder would fail to load; the output is checked first
    assert evaluate.main([str(model), "--output_json", str(locked / "r.json")]) == 2
    assert _one_error(capsys).startswith(f"error: --output_json {locked / 'r.json'}: cannot "
                                         f"write in {locked} (")
    assert report.main([str(locked)]) == 2   # the default output folder is the workdir
    assert "cannot write in" in _one_error(capsys)
  assert os.listdir(locked) == []


def test_output_checks_name_the_cause(tmp_path):
  with pytest.raises(outputs.OutputPathError, match=r"^-o /proc/advseg-out: cannot write in "
                     r"/proc \("):
    outputs.check_output_dir("-o", "/proc/advseg-out")
  (tmp_path / "d").mkdir()
  with pytest.raises(outputs.OutputPathError, match="is a folder, expected a file name"):
    outputs.check_output_file("--output_json", str(tmp_path / "d"))
  with pytest.raises(outputs.OutputPathError, match="does not exist"):
    outputs.check_output_file("--output_json", str(tmp_path / "no" / "r.json"))
  assert outputs.check_output_dir("-o", str(tmp_path / "new" / "deeper")) == str(
      tmp_path / "new" / "deeper")
  assert not os.path.exists(tmp_path / "new")  # checked, not created
  assert sorted(os.listdir(tmp_path)) == ["d"]  # the probe file is gone


# ----------------------------------------------------------------------------- the lock
_HOLDER = """
import sys, time
from advseg_jax.train.workdir_lock import WorkdirLock
WorkdirLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def _holder(workdir: str):
  """A child process holding the lock of `workdir`."""
  proc = subprocess.Popen([sys.executable, "-c", _HOLDER, workdir], cwd=loop_helpers.REPO,
                          stdout=subprocess.PIPE, text=True, env=loop_helpers.subprocess_env())
  try:
    assert proc.stdout.readline().strip() == "locked"
    yield proc
  finally:
    if proc.poll() is None:
      proc.kill()
    proc.wait()


def test_second_train_on_a_workdir_is_refused(tmp_path, capsys):
  wd = str(tmp_path / "run")
  os.makedirs(wd)
  with _holder(wd) as proc:
    assert train_cli.main(["--config", DEMO, "--workdir", wd]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
  assert line.startswith(f"error: {wd} is in use by another training run (pid {proc.pid} on "
                         f"host {socket.gethostname()}"), line
  assert not os.path.exists(os.path.join(wd, "checkpoints"))  # refused before any work


def test_lock_is_released_on_any_exit(tmp_path):
  wd = str(tmp_path)
  with pytest.raises(RuntimeError):
    with WorkdirLock(wd):
      with pytest.raises(WorkdirLockedError, match=f"pid {os.getpid()} "):
        WorkdirLock(wd).acquire()  # another open file: refused even in the same process
      raise RuntimeError("the run failed")
  with WorkdirLock(wd):               # released by the exception
    pass
  with _holder(wd) as proc:           # a holder killed without any cleanup
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  lock = WorkdirLock(wd)
  lock.acquire()                      # the kernel dropped the dead process's lock
  with open(os.path.join(wd, LOCK_FILE)) as f:
    assert json.load(f)["pid"] == os.getpid()
  lock.release()
  assert os.path.getsize(os.path.join(wd, LOCK_FILE)) == 0


def test_stale_lock_record_is_taken_over(tmp_path):
  with open(tmp_path / LOCK_FILE, "w") as f:
    json.dump({"pid": 2 ** 22 + 1, "host": "elsewhere", "started": time.time() - 60}, f)
  with WorkdirLock(str(tmp_path)):
    with open(tmp_path / LOCK_FILE) as f:
      assert json.load(f)["pid"] == os.getpid()


# ----------------------------------------------------------------------------- metrics.jsonl
def test_metrics_rows_after_the_resumed_step_are_dropped(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  rows = [{"step": s, "g/loss": 1.0} for s in (1, 2, 2, 3, 4)]
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "g/lo')  # torn
  assert logging_utils.truncate_jsonl(path, 2) == 3
  assert [r["step"] for r in loop_helpers.read_jsonl(path)] == [1, 2, 2]
  assert logging_utils.truncate_jsonl(path, 2) == 0
  assert logging_utils.truncate_jsonl(str(tmp_path / "missing.jsonl"), 0) == 0
