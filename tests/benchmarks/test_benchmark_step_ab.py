"""benchmarks/speed/step_ab.py: variant parsing, config overrides and a tiny end-to-end A/B."""

import json

import pytest

from tests.benchmarks import scripts


@pytest.fixture(scope="module")
def step_ab():
  return scripts.load("speed/step_ab.py", "bench_step_ab")


def test_parse_variant(step_ab):
  assert step_ab.parse_variant("base=") == ("base", [])
  assert step_ab.parse_variant("x=model.conv_dx_impl=xla,seed=3") == (
      "x", [("model.conv_dx_impl", "xla"), ("seed", "3")])
  for bad in ("noequals", "=model.dtype=bfloat16", "x=model.dtype"):
    with pytest.raises(ValueError, match="--variant"):
      step_ab.parse_variant(bad)


def test_overrides_take_the_field_type_and_name_unknown_fields(step_ab):
  from advseg_jax.config.defaults import base_config
  c = step_ab.apply_overrides(base_config(), [
      ("model.conv_dx_impl", "xla"), ("seed", "7"), ("diagnostics.skip_nonfinite", "True"),
      ("optim_g.lr", "1e-3")])
  assert c.model.conv_dx_impl == "xla" and c.seed == 7 and c.diagnostics.skip_nonfinite is True
  assert c.optim_g.lr == pytest.approx(1e-3) and isinstance(c.optim_g.lr, float)
  with pytest.raises(KeyError, match="model.no_such_field"):
    step_ab.apply_overrides(base_config(), [("model.no_such_field", "1")])
  with pytest.raises(KeyError, match="nosection"):
    step_ab.apply_overrides(base_config(), [("nosection.x", "1")])
  with pytest.raises(ValueError, match="seed: expected an integer"):
    step_ab.apply_overrides(base_config(), [("seed", "seven")])
  with pytest.raises(ValueError, match="true or false"):
    step_ab.apply_overrides(base_config(), [("diagnostics.skip_nonfinite", "yes")])


# A one-block-per-stage ResNet on one 33x33 image, 3 timed calls: seconds on a CPU.
TINY_SUPERVISED = ["--method", "supervised", "--depth", "1,1,1,1", "--width", "8", "--batch",
                   "1", "--crop", "33x33", "--calls", "3", "--warmup", "0",
                   "--host_malloc", "default"]


def test_two_variants_run_alternately_in_one_process(step_ab, tmp_path, capsys):
  out = tmp_path / "ab.json"
  results = step_ab.main(TINY_SUPERVISED + [
      "--variant", "dot=", "--variant", "conv=model.pointwise_impl=conv", "--json", str(out)])
  assert [r["variant"] for r in results] == ["dot", "conv"]
  assert [r["switch_calls"] for r in results] == [0, 0]  # JAX variants only: no extra calls
  assert results[1]["overrides"] == {"model.pointwise_impl": "conv"}
  for r in results:
    assert len(r["ms_all"]) == 3 and r["ms_p25"] <= r["ms_median"] <= r["ms_p75"]
    assert r["cpu_ms_median"] > 0 and r["compile_s"] > 0
  printed = capsys.readouterr().out
  assert "| conv | model.pointwise_impl=conv |" in printed and "speed-up vs dot" in printed
  assert json.loads(out.read_text())["results"][0]["variant"] == "dot"
  with pytest.raises(SystemExit):
    step_ab.main(["--variant", "a=", "--variant", "a=seed=1"])
  with pytest.raises(SystemExit, match="--variant b: .*model.no_such_field"):
    step_ab.main(["--host_malloc", "default", "--variant", "a=", "--variant",
                  "b=model.no_such_field=1"])


def test_torch_runs_join_the_rotation_and_give_paired_speedups(step_ab, tmp_path, capsys):
  out = tmp_path / "ab.json"
  results = step_ab.main(TINY_SUPERVISED + [
      "--variant", "jax=", "--torch", "eager", "--json", str(out)])
  assert [(r["variant"], r["side"]) for r in results] == [("jax", "jax"),
                                                          ("torch-eager", "torch")]
  assert results[1]["torch"] and results[1]["overrides"] == {"torch": "eager"}
  assert [r["switch_calls"] for r in results] == [1, 1]  # the default with --torch
  pairs = json.loads(out.read_text())["speedups"]
  assert len(pairs) == 1 and (pairs[0]["jax"], pairs[0]["torch"]) == ("jax", "torch-eager")
  jax_ms, torch_ms = results[0]["ms_all"], results[1]["ms_all"]
  per_round = sorted(t / j for j, t in zip(jax_ms, torch_ms))
  assert pairs[0]["speedup_paired_median"] == pytest.approx(per_round[1], rel=1e-6)
  assert pairs[0]["speedup_of_medians"] == pytest.approx(
      results[1]["ms_median"] / results[0]["ms_median"])
  printed = capsys.readouterr().out
  assert "| jax | torch-eager |" in printed and "per-round speed-up" in printed


def test_torch_option_is_checked(step_ab):
  with pytest.raises(SystemExit):
    step_ab.main(["--variant", "jax="])  # one variant and no --torch
  with pytest.raises(SystemExit):
    step_ab.main(["--variant", "jax=", "--torch", "eagerr"])
  with pytest.raises(SystemExit):
    step_ab.main(["--variant", "jax=", "--torch", "eager", "--switch_calls", "-1"])
