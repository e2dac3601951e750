"""`report` end to end on a tiny workdir: metrics.jsonl + a model directory on 'shapes'."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from advseg_jax import model_io, models, report
from advseg_jax.cli import report as report_cli
from advseg_jax.models.spec import ModelSpec

pytestmark = pytest.mark.slow  # end-to-end: CI runs it, the fast tier does not


def _metrics_rows(n=120):
  rng = np.random.default_rng(0)
  rows = []
  for s in range(1, n + 1):
    r = {"step": s, "g/loss_seg": 2.0 * math.exp(-s / 40) + 0.1 * rng.random(),
         "g/loss_adv": 0.7 + 0.05 * rng.standard_normal(), "d/loss": 0.35 + 0.03 * rng.random(),
         "d/loss_real": 0.3, "d/loss_fake": 0.4, "d/out_real": 0.6, "d/out_fake": 0.4,
         "semi/mask_ratio": min(1.0, s / n), "lr/g": 2.5e-4}
    rows.append(r)
    if s % 40 == 0:
      rows.append({"step": s, "eval/miou": 0.2 + s / 1000})
  return rows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  wd = tmp_path_factory.mktemp("run")
  with open(wd / "metrics.jsonl", "w") as f:
    for r in _metrics_rows():
      f.write(json.dumps(r) + "\n")
    f.write('{"step": 121, "g/loss_se')  # a line cut short by a crash
  spec = ModelSpec("deeplabv2", 5, depths="tiny", width=8, channel_order="RGB").to_json()
  spec["dataset"] = "shapes/source"
  model = models.build(spec)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 33, 33, 3)))
  model_io.save_model(str(wd / "final_model"), variables, spec)
  return wd


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  """A real 4-step run of configs/demo.py:semi,runlocal (AdvSemiSeg on shapes, with a D)."""
  from tests import loop_helpers  # pylint: disable=import-outside-toplevel  (JAX test settings + cache)
  from advseg_jax.cli import train as cli  # pylint: disable=import-outside-toplevel

  data_dir = loop_helpers.prepare_shapes(str(tmp_path_factory.mktemp("tfds")))
  wd = str(tmp_path_factory.mktemp("demo"))
  assert cli.main(loop_helpers.demo_argv(wd, data_dir, steps=4)) == 0
  return wd, data_dir


def test_report_of_a_real_demo_run(demo_run, tmp_path, capsys):
  wd, data_dir = demo_run
  out = tmp_path / "rep"
  rc = report_cli.main([wd, "--output_dir", str(out), "--num_examples", "2", "--data_dir",
                        data_dir])
  assert rc == 0, capsys.readouterr().err
  png, md = out / "report.png", out / "report.md"
  im = Image.open(png)
  assert im.format == "PNG" and im.size[0] > 600 and im.size[1] > 400
  assert os.path.getsize(png) < 300_000
  text = md.read_text()
  assert "![training report](report.png)" in text
  assert "| method | advsemi |" in text
  assert "best `eval/miou`" in text and "Per-class IoU" in text and "| disc |" in text
  assert "| `d/loss` |" in text and "| `g/loss_adv` |" in text
  # The run has a discriminator: the confidence column is D's, not the softmax fallback.
  assert "2 examples from shapes/source validation" in text
  assert "D confidence: P(real) of the prediction" in text


def test_report_curves_only_into_workdir(workdir, capsys):
  assert report_cli.main([str(workdir), "--num_examples", "0"]) == 0
  assert (workdir / "report.png").is_file()
  text = (workdir / "report.md").read_text()
  assert "No examples" in text
  assert "best `eval/miou`: **32.00** at step 120" in text
  assert "inside the 0.2-0.5 band" in text
  assert "1 unreadable lines skipped" in text
  assert "| `g/loss_seg` |" in text


def test_report_softmax_confidence_without_d(workdir, tmp_path):
  """A workdir holding only a model directory: max-softmax confidence, labelled as such."""
  data_dir = str(tmp_path / "tfds")
  assert report_cli.main([str(workdir), "--num_examples", "1", "--data_dir", data_dir,
                      "--output_dir", str(tmp_path / "r")]) == 0
  assert "max softmax probability (no D loaded)" in (tmp_path / "r" / "report.md").read_text()


def test_read_metrics_and_series(tmp_path):
  p = tmp_path / "m.jsonl"
  p.write_text('{"step": 2, "a": 1.0}\n{"step": 1, "a": 3, "b": "x"}\nnot json\n'
               '{"step": 2, "a": 5.0}\n{"step": 3, "a": NaN}\n')
  rows, bad = report.read_metrics(str(p))
  assert bad == 1 and len(rows) == 4
  steps, vals = report.series(rows, "a")
  assert steps.tolist() == [1, 2] and vals.tolist() == [3.0, 5.0]


def _error(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_bad_workdirs(tmp_path, capsys):
  assert report_cli.main([str(tmp_path / "missing")]) == 2
  assert "no such directory" in _error(capsys)
  (tmp_path / "empty").mkdir()
  assert report_cli.main([str(tmp_path / "empty")]) == 2
  assert "training workdir" in _error(capsys)


def test_help_explains_every_flag(capsys):
  assert report_cli.main(["--help"]) == 0
  text = capsys.readouterr().out
  fv = report_cli.define_flags()
  for name in fv:
    flag = fv[name]
    assert f"--{flag.name}" in text and flag.help, name
    if flag.short_name:
      assert f"-{flag.short_name}, --{flag.name}" in text
  assert "WORKDIR" in text
