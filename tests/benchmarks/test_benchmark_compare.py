"""benchmarks/speed/compare.py: merging repeated rounds into one table row, and the argument lists
it passes to each side (pure functions)."""

import json
import random

import pytest

from tests.benchmarks import scripts


@pytest.fixture(scope="module")
def compare():
  return scripts.load("speed/compare.py", "bench_compare")


def _res(side_variant, ms, round_, method="supervised", cpu=None, error=None):
  r = {"method": method, "precision": "float32", "shape": "2x97x97", "depth": "resnet101",
       "variant": side_variant, "round": round_}
  if error:
    r["error"] = error
  else:
    r.update(ms_median=ms, cpu_ms_median=cpu if cpu is not None else 2 * ms,
             images_per_s=2000.0 / ms)
  return r


def test_rounds_merge_to_medians_and_per_round_speedups(compare):
  jax_ms = [random.uniform(300, 400) for _ in range(3)]
  torch_ms = [random.uniform(300, 400) for _ in range(3)]
  jax = [_res(None, ms, i) for i, ms in enumerate(jax_ms)]
  torch = [_res("eager", ms, i) for i, ms in enumerate(torch_ms)]
  torch.append(_res("eager", None, 0, method="advsemi", error="RuntimeError: boom"))
  mj, mt = compare.merge_rounds(jax), compare.merge_rounds(torch)
  assert len(mj) == 1 and len(mt) == 2
  assert mj[0]["ms_median"] == pytest.approx(sorted(jax_ms)[1])
  assert mj[0]["rounds"] == 3 and mj[0]["ms_by_round"] == dict(enumerate(jax_ms)) and "round" not in mj[0]
  assert mt[1]["error"].startswith("RuntimeError")          # all rounds failed: error kept
  speedups = compare.round_speedups(mj[0], mt[0])
  assert speedups == pytest.approx([t / j for t, j in zip(torch_ms, jax_ms)])
  table = compare.build_table(mj, mt, ["eager"])
  row = [line for line in table.splitlines() if line.startswith("| supervised")][0]
  assert f"{min(speedups):.2f}-{max(speedups):.2f}x (3)" in row
  assert f"{sorted(torch_ms)[1] / sorted(jax_ms)[1]:.2f}x" in row


def test_failed_round_is_left_out_and_pairs_only_common_rounds(compare):
  jax = [_res(None, 300.0, 0), _res(None, None, 1, error="OOM"), _res(None, 330.0, 2)]
  torch = [_res("eager", 360.0, 0), _res("eager", 320.0, 1), _res("eager", 300.0, 2)]
  mj, mt = compare.merge_rounds(jax)[0], compare.merge_rounds(torch)[0]
  assert mj["rounds"] == 2 and mj["ms_median"] == pytest.approx(315.0)
  assert compare.round_speedups(mj, mt) == pytest.approx([360 / 300, 300 / 330])


def test_single_round_results_pass_through_unchanged(compare):
  r = _res(None, 310.0, 0)
  del r["round"]
  assert compare.merge_rounds([r]) == [r]
  table = compare.build_table([r], [], ["eager"])
  assert "per-round" not in table


def test_selections_and_side_argvs(compare):
  args = compare.parse_args(["--methods", "supervised,advsemi", "--dtypes", "float32,bfloat16",
                             "--variants", "eager", "--depth", "tiny", "--cpus", "2"])
  sels = compare.selections(args)
  assert sels == [["--methods", m, "--dtypes", d]
                  for m in ("supervised", "advsemi") for d in ("float32", "bfloat16")]
  argvs = compare.side_argvs(args, sels[1])
  assert set(argvs) == {"jax", "torch"}
  for side in ("jax", "torch"):
    a = argvs[side]
    assert a[a.index("--methods") + 1] == "supervised" and a[a.index("--dtypes") + 1] == "bfloat16"
    assert a[a.index("--depth") + 1] == "tiny" and a[a.index("--cpus") + 1] == "2"
  assert "--aspp_impl" in argvs["jax"] and "--variants" not in argvs["jax"]
  assert argvs["torch"][argvs["torch"].index("--variants") + 1] == "eager"
  assert "--cudnn_benchmark" not in argvs["torch"]

  args = compare.parse_args(["--order", "jax_first", "--methods", "adaptseg",
                             "--xla_flags=--a=1", "--jax_alt_xla_flags=--b=2",
                             "--cudnn_benchmark"])
  assert compare.selections(args) == [["--methods", "adaptseg", "--dtypes", "float32"]]
  argvs = compare.side_argvs(args, compare.selections(args)[0])
  assert "--xla_flags=--a=1" in argvs["jax"] and "--xla_flags=--a=1" not in argvs["jax_alt"]
  assert "--xla_flags=--b=2" in argvs["jax_alt"] and "--cudnn_benchmark" in argvs["torch"]


def test_json_is_saved_after_every_case_and_a_cut_off_run_rebuilds(compare, monkeypatch,
                                                                   tmp_path, capsys):
  """A lent GPU's call ends at its time limit: the cases that finished must be on disk."""
  calls = []
  ms = {m: random.uniform(100, 200) for m in ("supervised", "adaptseg")}

  def fake_side(variant):
    def run(argv, quiet):
      assert quiet
      method = argv[argv.index("--methods") + 1]
      calls.append((variant, method))
      if len(calls) == 4:              # the run is stopped during its fourth case
        raise KeyboardInterrupt
      return [_res(variant, ms[method] * (1.2 if variant else 1.0), 0, method=method)]
    return run

  monkeypatch.setattr(compare.step_throughput, "main", fake_side(None))
  monkeypatch.setattr(compare.torch_step, "main", fake_side("eager"))
  path = tmp_path / "out" / "cmp.json"
  with pytest.raises(KeyboardInterrupt):
    compare.main(["--methods", "supervised,adaptseg", "--variants", "eager", "--depth", "tiny",
                  "--json", str(path)])
  assert calls == [(None, "supervised"), ("eager", "supervised"), (None, "adaptseg"),
                   ("eager", "adaptseg")]
  payload = json.loads(path.read_text())
  assert payload["complete"] is False
  assert [r["method"] for r in payload["jax"]] == ["supervised", "adaptseg"]
  assert [r["method"] for r in payload["torch"]] == ["supervised"]
  assert not list(path.parent.glob("*.tmp*"))
  capsys.readouterr()

  compare.main(["--from_json", str(path), "--variants", "eager"])
  text = capsys.readouterr().out
  assert "# PARTIAL" in text
  row = [line for line in text.splitlines() if line.startswith("| supervised")][0]
  assert "1.20x" in row
  assert any(line.startswith("| adaptseg") for line in text.splitlines())


def test_a_complete_run_says_so(compare, monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(compare.step_throughput, "main",
                      lambda argv, quiet: [_res(None, 100.0, 0)])
  monkeypatch.setattr(compare.torch_step, "main",
                      lambda argv, quiet: [_res("eager", 150.0, 0)])
  path = tmp_path / "cmp.json"
  compare.main(["--methods", "supervised", "--variants", "eager", "--json", str(path)])
  assert json.loads(path.read_text())["complete"] is True
  compare.main(["--from_json", str(path), "--variants", "eager"])
  assert "# PARTIAL" not in capsys.readouterr().out
