"""benchmarks/quality/digits.py: its statistics, report and resumability on fake run
summaries (no training)."""

import json
import math
import os

import pytest

from tests.benchmarks import scripts


@pytest.fixture(scope="module")
def digits():
  return scripts.load("quality/digits.py", "bench_quality_digits")


# Student t quantiles / tails from tables (scipy.stats.t), to 1e-6.
@pytest.mark.parametrize("df,q,t", [(1, 0.975, 12.706205), (4, 0.975, 2.776445),
                                    (4, 0.95, 2.131847), (9, 0.975, 2.262157),
                                    (30, 0.995, 2.749996)])
def test_t_quantiles(digits, df, q, t):
  assert digits.t_ppf(q, df) == pytest.approx(t, abs=1e-5)
  assert digits.t_cdf(t, df) == pytest.approx(q, abs=1e-7)
  assert digits.t_cdf(-t, df) == pytest.approx(1 - q, abs=1e-7)


def test_paired_matches_a_paired_t_test(digits):
  m = {0: .50, 1: .55, 2: .52, 3: .60, 4: .51, 7: .9}   # seed 7 has no baseline: unpaired
  b = {0: .45, 1: .50, 2: .50, 3: .52, 4: .50, 5: .1}
  r = digits.paired(m, b)
  assert r["seeds"] == [0, 1, 2, 3, 4] and r["n"] == 5
  assert r["mean"] == pytest.approx(0.042) and r["std"] == pytest.approx(0.02774887)
  # scipy.stats.ttest_rel(m, b, alternative="greater"): t = 3.38446, p = 0.0138356
  assert r["p_one_sided"] == pytest.approx(0.0138356, abs=1e-6)
  half = 2.776445 * 0.02774887 / math.sqrt(5)
  assert r["ci95"] == pytest.approx((0.042 - half, 0.042 + half), abs=1e-7)


def test_paired_edge_cases(digits):
  one = digits.paired({0: .6}, {0: .5})
  assert one["n"] == 1 and one["mean"] == pytest.approx(.1) and one["p_one_sided"] is None
  same = digits.paired({0: .6, 1: .7}, {0: .5, 1: .6})
  assert same["p_one_sided"] == 0.0 and same["ci95"] == pytest.approx((.1, .1))
  assert digits.paired({0: .5}, {1: .5})["n"] == 0


def test_gap_closed(digits):
  assert digits.gap_closed(0.3, 0.1, 0.5) == pytest.approx(0.5)
  assert math.isnan(digits.gap_closed(0.3, 0.5, 0.5))


def _fake_run(wd, miou, step, status="completed", curve=()):
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, "summary.json"), "w") as f:
    json.dump({"status": status, "final_step": step, "miou": miou, "wall_time_s": 12.0}, f)
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for s, v in curve:
      f.write(json.dumps({"step": s, "eval/miou": v}) + "\n")


def _fake_table(digits, root, seeds, steps, skip=()):
  values = {"sup_1/8": .40, "semi_1/8": .45, "adv_1/8": .41, "source_only": .10,
            "source_only_tbn": .14, "single": .20, "multi": .22, "lsgan": .18, "oracle": .60}
  for cell, v in values.items():
    for s in seeds:
      if (cell, s) in skip:
        continue
      val = v + 0.01 * s + (0.005 * s if cell in ("semi_1/8", "multi") else 0)
      _fake_run(digits.run_dir(root, cell, s), val, steps,
                curve=[(steps // 2, val / 2), (steps, val)])
  return values


def test_report_on_fake_runs(digits, tmp_path):
  args = digits.parse_args(["--quick", "--seeds", "3", "--out", str(tmp_path)])
  root = str(tmp_path / "quick")
  _fake_table(digits, root, [0, 1, 2], 200)
  for s in (0, 1, 2):  # source_only with target BN statistics: the best source-only row
    wd = digits.run_dir(root, "source_only", s)
    with open(digits.score_json(wd, digits.ADABN_VAL), "w") as f:
      json.dump({"miou": .16 + 0.01 * s}, f)
  # A stopped run (its summary still carries a score) and its target-BN score do not count.
  _fake_run(digits.run_dir(root, "lsgan", 2), .9, 80, status="preempted")
  with open(digits.score_json(digits.run_dir(root, "lsgan", 2), digits.ADABN_VAL), "w") as f:
    json.dump({"miou": .9}, f)
  rows = digits.collect(args, root)
  assert rows["lsgan"]["per_seed"] == pytest.approx({0: .18, 1: .19})
  assert rows["lsgan"]["steps"] == 200
  assert rows["lsgan+adabn"]["num_seeds"] == 0
  assert rows["source_only+adabn"]["mean"] == pytest.approx(.17)
  assert rows["single+adabn"]["num_seeds"] == 0
  assert rows["sup_1/16"]["num_seeds"] == 0 and rows["semi_1/8"]["num_seeds"] == 3
  assert rows["multi"]["mean"] == pytest.approx(.22 + .015)
  assert rows["multi"]["curve"][-1][0] == 200
  comps = {(c["method"], c["baseline"]): c for c in digits.comparisons(rows)}
  assert ("semi_1/16", "sup_1/16") not in comps
  semi = comps[("semi_1/8", "sup_1/8")]
  assert semi["mean"] == pytest.approx(.055) and semi["p_one_sided"] < 0.01
  multi = comps[("multi", "source_only+adabn")]
  assert multi["best_baseline"] and not comps[("multi", "source_only_tbn")]["best_baseline"]
  assert multi["gap_closed"] == pytest.approx((.235 - .17) / (.61 - .17))
  assert ("multi", "source_only_tbn+adabn") not in comps  # no runs: no comparison
  md = digits.markdown(args, rows, digits.comparisons(rows))
  assert "| multi vs source_only+adabn (best source only) | +6.5 |" in md
  assert "not run" in md and "recomputed on 512 target train images" in md


def test_resume_trains_only_unfinished_runs(digits, tmp_path, monkeypatch):
  out = str(tmp_path)
  root = str(tmp_path / "quick")
  cells = "sup_1/8,semi_1/8,source_only,multi,oracle"
  _fake_table(digits, root, [0], 200, skip={("multi", 0)})
  _fake_run(digits.run_dir(root, "oracle", 0), .5, 100, status="preempted")  # unfinished
  _fake_run(digits.run_dir(root, "sup_1/8", 0), .5, 150)  # finished at another length
  calls, evals = [], []

  def fake_call(cmd, cwd, env, stdout, stderr):
    if "evaluate" in cmd:  # the target-BN scoring of a finished adaptation run
      assert cmd[cmd.index("--bn_stats_from") + 1] == "digits_m/target:train"
      evals.append(cmd[cmd.index("evaluate") + 1])
      with open(cmd[cmd.index("--output_json") + 1], "w") as f:
        json.dump({"miou": .3}, f)
      return 0
    wd = [a.split("=", 1)[1] for a in cmd if a.startswith("--workdir=")][0]
    steps = int([a.split("=", 1)[1] for a in cmd if a.startswith("--config.num_steps=")][0])
    calls.append(wd)
    assert env["JAX_COMPILATION_CACHE_DIR"].startswith(out)
    _fake_run(wd, .33, steps)
    return 0

  monkeypatch.setattr(digits.subprocess, "call", fake_call)
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
  rc = digits.main(["--quick", "--cells", cells, "--out", out, "--no_samples"])
  assert rc == 0
  assert sorted(os.path.relpath(c, root) for c in calls) == [
      os.path.join("multi", "seed0"), os.path.join("oracle", "seed0"),
      os.path.join("pretrain", "seed0"), os.path.join("sup_1of8", "seed0")]
  assert sorted(os.path.relpath(e, root) for e in evals) == [
      os.path.join("multi", "seed0"), os.path.join("source_only", "seed0")]
  calls.clear()
  evals.clear()
  assert digits.main(["--quick", "--cells", cells, "--out", out, "--no_samples"]) == 0
  assert calls == [] and evals == []                    # everything finished: nothing rerun
  with open(os.path.join(root, "digits.json")) as f:
    result = json.load(f)
  assert result["rows"]["multi"]["per_seed"] == {"0": .33}
  assert result["rows"]["multi+adabn"]["per_seed"] == {"0": .3}
  assert os.path.isfile(os.path.join(root, "digits.md"))


def test_failed_run_is_reported(digits, tmp_path, monkeypatch):
  monkeypatch.setattr(digits.subprocess, "call", lambda *a, **k: 1)
  rc = digits.main(["--quick", "--cells", "sup_1/8", "--out", str(tmp_path), "--no_samples"])
  assert rc == 1


def test_every_cell_shares_the_schedule(digits, tmp_path):
  args = digits.parse_args(["--seeds", "0,3", "--out", str(tmp_path), "--steps", "40"])
  plan = digits.plan_runs(args, str(tmp_path))
  assert len(plan) == 2 * (len(digits.CELLS) + 1) and args.seeds == [0, 3]
  for r in plan:
    assert f"--config.seed={r['seed']}" in r["cmd"]
    init = f"--config.init.checkpoint={digits.run_dir(str(tmp_path), 'pretrain', r['seed'])}"
    if r["cell"] == "pretrain":  # the seed's shared source pretraining, before its cells
      assert "--config=configs/digits.py:source_only" in r["cmd"]
      assert "--config.num_steps=1500" in r["cmd"] and init not in r["cmd"]
      continue
    assert "--config.num_steps=40" in r["cmd"] and "--config.method.semi_start=10" in r["cmd"]
    assert (init in r["cmd"]) == (r["cell"] in digits.ADAPT_CELLS)
  assert [r["cell"] for r in plan][:2] == ["pretrain", "sup_1/16"]
  no_pre = digits.plan_runs(digits.parse_args(["--pretrain_steps", "0"]), str(tmp_path))
  assert len(no_pre) == 5 * len(digits.CELLS)
  assert not any("init.checkpoint" in a for r in no_pre for a in r["cmd"])
  assert digits.parse_args([]).seeds == [0, 1, 2, 3, 4]
  with pytest.raises(SystemExit):
    digits.parse_args(["--cells", "nope"])
  assert digits.parse_args(["--seeds", "0,"]).seeds == [0]
  with pytest.raises(SystemExit):  # '0' is zero seeds, not seed 0
    digits.parse_args(["--seeds", "0"])


def test_every_cell_preset_validates(digits):
  from advseg_jax.config import validation
  for cell in digits.CELLS:
    for arg in (cell, cell + ",runlocal"):
      c = digits.shared.load_config(digits.CONFIG, arg)
      validation.validate(c, num_devices=1)
      assert c.model.num_classes == 11 and c.data.name == "digits_m"
      assert (c.eval_data.config_name == "target") == (digits.CELLS[cell][1] == digits.TARGET_VAL)
    assert c.data.config_name == ("target" if cell == "oracle" else "source")
  semi = digits.shared.load_config(digits.CONFIG, "semi_1/16")
  sup = digits.shared.load_config(digits.CONFIG, "sup_1/16")
  assert semi.labelled_fraction == sup.labelled_fraction == 1 / 16
  for field in ("num_steps", "batch_size", "model.arch", "model.width", "optim_g.lr"):
    a, b = semi, sup
    for part in field.split("."):
      a, b = a[part], b[part]
    assert a == b, field


def test_adv_scales_add_paired_variants(digits, tmp_path):
  args = digits.parse_args(["--cells", "sup_1/8,semi_1/8,source_only,single,oracle",
                            "--adv_scales", "1,10", "--seeds", "0,1", "--out", str(tmp_path)])
  assert args.cells == ["sup_1/8", "semi_1/8", "semi_1/8@x10", "source_only", "single",
                        "single@x10", "oracle"]
  ov = digits.run_overrides(args, "single@x10")
  assert ov["method.lambda_adv"] == pytest.approx(0.01) and ov["method.lambda_adv_aux"] == 0.0
  semi = digits.run_overrides(args, "semi_1/8@x10")
  assert semi["method.lambda_adv"] == pytest.approx(0.1)
  assert semi["method.lambda_semi_adv"] == pytest.approx(0.01)
  assert "method.lambda_adv" not in digits.run_overrides(args, "single")
  plan = {(r["cell"], r["seed"]): r for r in digits.plan_runs(args, str(tmp_path))}
  scaled = plan[("single@x10", 1)]
  assert "--config=configs/digits.py:single" in scaled["cmd"]
  assert any(a.startswith("--config.init.checkpoint=") for a in scaled["cmd"])
  assert scaled["workdir"] == os.path.join(str(tmp_path), "single@x10", "seed1")
  # Report: the variant pairs with the same baselines and gets its own +adabn row.
  root = str(tmp_path)
  for cell, v in {"sup_1/8": .40, "semi_1/8": .42, "semi_1/8@x10": .47, "source_only": .10,
                  "single": .15, "single@x10": .20, "oracle": .60}.items():
    for s in (0, 1):
      _fake_run(digits.run_dir(root, cell, s), v + .01 * s, 1500)
  with open(digits.score_json(digits.run_dir(root, "single@x10", 0), digits.ADABN_VAL), "w") as f:
    json.dump({"miou": .25}, f)
  rows = digits.collect(args, root)
  assert rows["single@x10+adabn"]["per_seed"] == {0: .25}
  assert rows["single@x10"]["description"].endswith("adversarial weights x10")
  comps = {(c["method"], c["baseline"]): c for c in digits.comparisons(rows)}
  assert comps[("semi_1/8@x10", "sup_1/8")]["mean"] == pytest.approx(.07)
  assert comps[("single@x10", "source_only")]["mean"] == pytest.approx(.10)
  assert comps[("single@x10", "source_only")]["gap_closed"] == pytest.approx(.10 / .50)
  assert ("single@x10+adabn", "source_only") not in comps
  with pytest.raises(SystemExit):
    digits.parse_args(["--adv_scales", "0,1"])


def test_held_out_test_split_is_scored_and_reported(digits, tmp_path, monkeypatch):
  out, root = str(tmp_path), str(tmp_path / "quick")
  cells = "sup_1/8,source_only,source_only_tbn,multi,oracle"
  _fake_table(digits, root, [0, 1], 200)
  for s in (0, 1):
    _fake_run(digits.run_dir(root, digits.PRETRAIN, s), .05, 100)
  scored = []

  def fake_evaluate(cmd, cwd, env, stdout, stderr):
    assert "evaluate" in cmd, "every run is finished: only evaluations"
    wd = cmd[cmd.index("evaluate") + 1]
    split = cmd[cmd.index("--split") + 1]
    adabn = "--bn_stats_from" in cmd
    scored.append((os.path.relpath(wd, root), split, adabn))
    value = {"multi": .30, "source_only": .12, "source_only_tbn": .15, "oracle": .55}
    miou = value[os.path.basename(os.path.dirname(wd))] + (.01 if adabn else 0)
    with open(cmd[cmd.index("--output_json") + 1], "w") as f:
      json.dump({"miou": miou + .01 * int(wd[-1])}, f)
    return 0

  monkeypatch.setattr(digits.subprocess, "call", fake_evaluate)
  assert digits.main(["--quick", "--seeds", "2", "--cells", cells, "--out", out,
                      "--no_samples", "--test"]) == 0
  on_test = {(wd, adabn) for wd, split, adabn in scored if split == "test[:200]"}
  for s in (0, 1):
    for cell in ("source_only", "source_only_tbn", "multi"):
      assert {(os.path.join(cell, f"seed{s}"), False), (os.path.join(cell, f"seed{s}"), True)} \
          <= on_test
    assert (os.path.join("oracle", f"seed{s}"), False) in on_test       # the ceiling, stored BN
    assert (os.path.join("oracle", f"seed{s}"), True) not in on_test
    assert not any(wd.startswith("sup_1of8") for wd, _, _ in scored)    # source-domain cell
  with open(os.path.join(root, "digits.json")) as f:
    held = json.load(f)["held_out_test"]
  assert held["rows"]["multi"]["per_seed"] == pytest.approx({"0": .30, "1": .31})
  assert held["rows"]["source_only_tbn+adabn"]["eval_set"] == "digits_m/target test"
  best = [c for c in held["comparisons"] if c["method"] == "multi" and c["best_baseline"]]
  assert best[0]["baseline"] == "source_only_tbn+adabn" and best[0]["mean"] == pytest.approx(.14)
  with open(os.path.join(root, "digits.md")) as f:
    assert "## Held out: digits_m/target test" in f.read()
  scored.clear()   # scores are kept: a second run evaluates nothing
  assert digits.main(["--quick", "--seeds", "2", "--cells", cells, "--out", out,
                      "--no_samples", "--test"]) == 0
  assert scored == []


def test_d_lr_scales_add_variants(digits, tmp_path):
  args = digits.parse_args(["--cells", "source_only,single,oracle", "--adv_scales", "1,10",
                            "--d_lr_scales", "1,20", "--out", str(tmp_path)])
  assert args.cells == ["source_only", "single", "single@dlr20", "single@x10",
                        "single@x10_dlr20", "oracle"]
  both = digits.run_overrides(args, "single@x10_dlr20")
  assert both["optim_d.lr"] == pytest.approx(2e-3) and both["method.lambda_adv"] == \
      pytest.approx(0.01)
  assert "optim_d.lr" not in digits.run_overrides(args, "single@x10")
  assert digits.run_overrides(args, "single@dlr20")["optim_d.lr"] == pytest.approx(2e-3)
  assert digits.base_cell("single@x10_dlr20") == "single"
  assert (digits.adv_scale("single@dlr20"), digits.d_lr_scale("single@dlr20")) == (1.0, 20.0)
  assert digits.describe("single@x10_dlr20")[0].endswith(
      "adversarial weights x10, D learning rate x20")
  assert digits.of_cells(args.cells, ("single",)) == ["single", "single@dlr20", "single@x10",
                                                      "single@x10_dlr20"]
  plan = {(r["cell"], r["seed"]): r for r in digits.plan_runs(args, str(tmp_path))}
  assert "--config.optim_d.lr=0.002" in plan[("single@x10_dlr20", 0)]["cmd"]


def test_cells_may_name_one_variant(digits, tmp_path):
  args = digits.parse_args(["--cells", "source_only,single@x10_dlr20,semi_1/8@x30",
                            "--adv_scales", "1,10", "--out", str(tmp_path)])
  assert args.cells == ["source_only", "single@x10_dlr20", "semi_1/8@x30"]
  for bad in ("single@x0", "single@y10", "oracle@x10", "single@dlr20_x10", "single@x1"):
    with pytest.raises(SystemExit):
      digits.parse_args(["--cells", bad])
