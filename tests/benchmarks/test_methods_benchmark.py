"""benchmarks/quality/methods.py: which runs its table counts (fake run summaries, no training)."""

import json
import os

import pytest

from tests.benchmarks import scripts


@pytest.fixture(scope="module")
def methods():
  return scripts.load("quality/methods.py", "bench_quality_methods")


def _fake_run(wd, miou, step, status="completed"):
  os.makedirs(wd, exist_ok=True)
  with open(os.path.join(wd, "summary.json"), "w") as f:
    json.dump({"status": status, "final_step": step, "miou": miou, "wall_time_s": 10.0}, f)
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"step": step, "eval/miou": miou}) + "\n")


def test_collect_counts_only_runs_finished_at_the_stop_step(methods, tmp_path):
  args = methods.parse_args(["--methods", "a", "--seeds", "4", "--steps", "40",
                             "--out", str(tmp_path)])
  root = str(tmp_path)
  stop = methods.stop_step(methods.run_overrides(args, "a")[1])
  run = lambda seed: os.path.join(root, methods.run_name("a"), f"seed{seed}")
  _fake_run(run(0), .30, stop)
  _fake_run(run(1), .40, stop)
  _fake_run(run(2), .90, stop // 2, status="preempted")   # stopped early: its score is partial
  _fake_run(run(3), .90, stop + 10)                        # a longer schedule's run
  row = methods.collect(args, root)["a"]
  assert row["per_seed"] == pytest.approx({0: .30, 1: .40})
  assert row["num_seeds"] == 2 and row["mean"] == pytest.approx(.35)
  assert row["curve"] == [(stop, pytest.approx(.35), pytest.approx(.0707107))]  # sample std
