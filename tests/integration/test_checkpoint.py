"""advseg_jax.train.checkpoint on small trees: save / restore, fallback from a corrupt or
unfinished latest step; config comparison (advseg_jax.config.diff); exported models
(advseg_jax.train.export) and `load_for_inference`."""

import glob
import os

import numpy as np
import pytest

from advseg_jax import model_io
from advseg_jax.config import defaults as config_defaults
from advseg_jax.config import diff
from advseg_jax.inference import loading
from advseg_jax.train import checkpoint as ck
from advseg_jax.train import export

from tests import loop_helpers  # noqa: F401  (JAX test settings)


def _tree(v):
  return {"params": {"w": np.full((2, 3), v, np.float32), "b": np.arange(3, dtype=np.float32)},
          "step": np.asarray(int(v), np.int32)}


def _meta(config=None):
  return {"config": config or {"a": 1, "b": {"c": [1, 2]}, "log_every": 10}, "method": "x",
          "best_miou": 0.5, "best_step": 2}


def _save_steps(workdir, steps, keep=3, d=True):
  c = ck.TrainCheckpointer(workdir, keep=keep)
  for s in steps:
    c.save(s, _tree(s), _tree(-s) if d else None, _meta(), {"labelled": {"next_index": s}})
  c.close()


def _corrupt(step_dir):
  files = glob.glob(os.path.join(step_dir, "g_state", "d", "*"))
  assert files, os.listdir(os.path.join(step_dir, "g_state"))
  for f in files:
    open(f, "wb").close()


def test_save_restore_keep_and_data_states(tmp_path):
  _save_steps(str(tmp_path), [1, 2, 3, 4], keep=2)
  c = ck.TrainCheckpointer(str(tmp_path), keep=2)
  assert c.all_steps() == [3, 4]
  r = c.restore_latest(_tree(0), _tree(0))
  assert r.step == 4 and r.meta["step"] == 4 and r.meta["best_miou"] == 0.5
  np.testing.assert_array_equal(r.g["params"]["w"], np.full((2, 3), 4, np.float32))
  np.testing.assert_array_equal(r.d["params"]["w"], np.full((2, 3), -4, np.float32))
  assert r.data_states == {"labelled": {"next_index": 4}}
  assert r.g["params"]["w"].shape == (2, 3)  # no device axis
  c.close()


def test_supervised_without_d(tmp_path):
  _save_steps(str(tmp_path), [5], d=False)
  c = ck.TrainCheckpointer(str(tmp_path))
  r = c.restore_latest(_tree(0), None)
  assert r.step == 5 and r.d is None
  c.close()


def test_corrupt_latest_falls_back_and_is_moved_aside(tmp_path):
  wd = str(tmp_path)
  _save_steps(wd, [2, 4])
  _corrupt(os.path.join(wd, "checkpoints", "4"))
  os.makedirs(os.path.join(wd, "checkpoints", "6.orbax-checkpoint-tmp-123", "g_state"))
  messages = []
  c = ck.TrainCheckpointer(wd, report=messages.append)
  r = c.restore_latest(_tree(0), _tree(0))
  assert r.step == 2
  assert len(messages) == 2
  assert "checkpoints/6.orbax-checkpoint-tmp-123 is incomplete" in messages[0]
  bad = [m for m in messages if "checkpoints/4 is incomplete or corrupt" in m]
  assert len(bad) == 1 and "using step 2 instead" in bad[0] and "\n" not in bad[0]
  assert sorted(os.listdir(os.path.join(wd, "checkpoints.corrupt")))[0].startswith("4-")
  assert c.all_steps() == [2]
  # training continues: step 4 can be written again
  c.save(4, _tree(44), _tree(-44), _meta(), {})
  c.close()
  c = ck.TrainCheckpointer(wd)
  assert c.restore_latest(_tree(0), _tree(0)).step == 4
  c.close()


def _big_tree(v):
  return {"params": {"w": np.linspace(-1, 1, 64 * 1024).astype(np.float32) * v},
          "step": np.asarray(int(v), np.int32)}


def test_flipped_bytes_fail_the_checksums_and_fall_back(tmp_path):
  """Bytes inverted in the middle of the largest g_state file (its size unchanged) are
  caught by the checksums stored with the step; the step is reported and moved aside."""
  wd = str(tmp_path)
  c = ck.TrainCheckpointer(wd)
  for s in (2, 4):
    c.save(s, _big_tree(s), None, _meta(), {})
  c.close()
  files = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(wd, "checkpoints", "4",
                                                                      "g_state")) for f in fs]
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    data = bytearray(f.read())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(b ^ 0xFF for b in data[mid:mid + 64])
    f.seek(0)
    f.write(data)
  messages = []
  c = ck.TrainCheckpointer(wd, report=messages.append)
  r = c.restore_latest(_big_tree(0), None)
  c.close()
  assert r.step == 2, messages
  np.testing.assert_array_equal(r.g["params"]["w"], _big_tree(2)["params"]["w"])
  assert len(messages) == 1 and "checkpoints/4 is incomplete or corrupt (g_state/params/w" \
      in messages[0] and "checksum mismatch" in messages[0], messages
  assert sorted(os.listdir(os.path.join(wd, "checkpoints.corrupt")))[0].startswith("4-")


def test_missing_item_and_bad_meta_are_reported(tmp_path):
  wd = str(tmp_path)
  _save_steps(wd, [1, 2, 3])
  import shutil
  shutil.rmtree(os.path.join(wd, "checkpoints", "3", "d_state"))
  meta_dir = os.path.join(wd, "checkpoints", "2", "meta")
  for f in os.listdir(meta_dir):
    if not f.startswith(("_", "commit")):
      with open(os.path.join(meta_dir, f), "w") as fh:
        fh.write("{broken")
  messages = []
  c = ck.TrainCheckpointer(wd, report=messages.append)
  assert c.restore_latest(_tree(0), _tree(0)).step == 1
  assert any("checkpoints/3" in m and "d_state" in m for m in messages)
  assert any("checkpoints/2" in m and "meta unreadable" in m for m in messages)
  c.close()


def test_nothing_restorable_raises_and_moves_nothing(tmp_path):
  wd = str(tmp_path)
  _save_steps(wd, [1])
  _corrupt(os.path.join(wd, "checkpoints", "1"))
  c = ck.TrainCheckpointer(wd)
  with pytest.raises(ck.CheckpointError,
                     match=r"no checkpoint .* could be restored \(nothing was changed; .*\): step 1"):
    c.restore_latest(_tree(0), _tree(0))
  assert c.all_steps() == [1]
  c.close()


def test_check_meta_refusal_propagates(tmp_path):
  wd = str(tmp_path)
  _save_steps(wd, [1, 2])

  def check(meta):
    diffs = diff.config_differences(meta["config"], {"a": 2, "b": {"c": [1, 2]}, "log_every": 5})
    raise ck.ConfigChangeError(diff.format_differences(diffs))

  c = ck.TrainCheckpointer(wd)
  with pytest.raises(ck.ConfigChangeError, match=r"^a: 1 -> 2$"):
    c.restore_latest(_tree(0), _tree(0), check)
  assert c.all_steps() == [1, 2]
  c.close()


def test_config_differences():
  a = config_defaults.base_config()
  b = config_defaults.base_config()
  b.method.lambda_adv = 0.5
  b.data.crop_size = (41, 41)
  b.log_every = 1                      # operational: ignored
  b.data.data_dir = "/elsewhere"       # operational: ignored
  b.init.checkpoint = "x.pth"          # only used for a fresh start: ignored
  b.model.pointwise_impl = "conv"      # float rounding only: ignored
  b.model.conv_dx_impl = "xla"         # float rounding only: ignored
  b.model.aspp_impl = "conv"           # float rounding only: ignored
  diffs = diff.config_differences(diff.config_to_dict(a), diff.config_to_dict(b))
  assert [d[0] for d in diffs] == ["data.crop_size", "method.lambda_adv"]
  # A workdir written before the field existed resumes too.
  old = diff.config_to_dict(a)
  del old["model"]["pointwise_impl"]
  del old["model"]["conv_dx_impl"]
  del old["model"]["aspp_impl"]
  assert diff.config_differences(old, diff.config_to_dict(a)) == []
  assert diff.format_differences(diffs) == ("data.crop_size: [321, 321] -> [41, 41]; "
                                          "method.lambda_adv: 0.01 -> 0.5")
  all_diffs = diff.config_differences(diff.config_to_dict(a), diff.config_to_dict(b),
                                    include_operational=True)
  assert len(all_diffs) == 8


def _tiny_config():
  c = config_defaults.base_config()
  c.model.depths = "tiny"
  c.model.width = 8
  c.model.num_classes = 5
  c.disc.ndf = 8
  c.data = config_defaults.stream_config("shapes", config_name="source", crop_size=(33, 33))
  c.eval_data = config_defaults.stream_config("shapes", config_name="source", split="validation",
                                          crop_size=None, eval_mode="none")
  return c


def _zeros(tree):
  import jax
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), tree)


def test_export_and_load_for_inference(tmp_path):
  config = _tiny_config()
  spec = export.generator_spec_from_config(config, step=7)
  assert spec["channel_order"] == "RGB" and spec["dataset"] == "shapes"
  assert spec["config_name"] == "source" and spec["num_classes"] == 5
  assert spec["class_names"][1] == "disc" and len(spec["mean_bgr"]) == 3
  assert spec["depths"] == [1, 1, 1, 1] and spec["eval"]["eval_mode"] == "none"
  variables = _zeros(model_io.abstract_variables(spec))
  variables["params"]["conv1"]["kernel"] = np.ones_like(variables["params"]["conv1"]["kernel"])

  # a training workdir with only checkpoints: the spec is rebuilt from the saved config
  wd = str(tmp_path / "run")
  c = ck.TrainCheckpointer(wd)
  g = {"params": variables["params"], "batch_stats": variables["batch_stats"],
       "opt_state": {"mu": np.zeros(3, np.float32)}, "step": np.asarray(3, np.int32)}
  d = {"params": {"main": {"conv1": {"kernel": np.ones((4, 4, 5, 8), np.float32),
                                     "bias": np.zeros(8, np.float32)}}}}
  c.save(3, g, d, {"config": diff.config_to_dict(config)}, {})
  c.close()
  v, s = loading.load_for_inference(wd)
  assert s["arch"] == "deeplabv2" and s["step"] == 3 and s["num_classes"] == 5
  np.testing.assert_array_equal(v["params"]["conv1"]["kernel"],
                                variables["params"]["conv1"]["kernel"])
  v2, s2 = loading.load_for_inference(os.path.join(wd, "checkpoints", "3"))
  assert s2["step"] == 3
  dv, ds = loading.load_discriminator_for_inference(wd)
  assert ds["arch"] == "fc_discriminator" and ds["gan"] == "vanilla" and ds["level"] == "main"
  assert dv["params"]["conv1"]["kernel"].shape == (4, 4, 5, 8)

  # best_model is used only on request (the originals report the final model)
  with pytest.raises(ck.CheckpointError, match="no best_model/"):
    loading.load_for_inference(wd, best=True)
  export.export_model(os.path.join(wd, ck.BEST_MODEL), variables, dict(spec, miou=0.3))
  assert loading.choose_model(wd) == (loading.LATEST_CHECKPOINT,
                                      os.path.join(wd, ck.CHECKPOINT_DIR))
  assert loading.load_for_inference(wd)[1]["step"] == 3
  v3, s3 = loading.load_for_inference(wd, best=True)
  assert s3["miou"] == 0.3 and s3["step"] == 7
  assert loading.choose_model(wd, best=True) == (loading.BEST, os.path.join(wd, ck.BEST_MODEL))
  v4, s4 = loading.load_for_inference(os.path.join(wd, ck.BEST_MODEL))
  assert s4 == s3
  with pytest.raises(ck.CheckpointError, match="chosen from a training workdir"):
    loading.load_for_inference(os.path.join(wd, ck.BEST_MODEL), best=True)
  # overwriting an export is atomic and allowed
  export.export_model(os.path.join(wd, ck.BEST_MODEL), variables, dict(spec, miou=0.4))
  assert loading.load_for_inference(wd, best=True)[1]["miou"] == 0.4
  # final_model is the default once written, unless checkpoints are newer (a run extended
  # past its earlier end that stopped early)
  export.export_model(os.path.join(wd, ck.FINAL_MODEL), variables, dict(spec, step=2))
  assert loading.load_for_inference(wd)[1]["step"] == 3
  export.export_model(os.path.join(wd, ck.FINAL_MODEL), variables, dict(spec, step=9))
  assert loading.choose_model(wd) == (loading.FINAL, os.path.join(wd, ck.FINAL_MODEL))
  s5 = loading.load_for_inference(wd)[1]
  assert s5["step"] == 9 and "miou" not in s5
  assert loading.choose_model(os.path.join(wd, "checkpoints", "3"))[0] == loading.STEP_DIR
  only_best = str(tmp_path / "only_best")
  os.makedirs(only_best)
  export.export_model(os.path.join(only_best, ck.BEST_MODEL), variables, dict(spec, miou=0.3))
  with pytest.raises(ck.CheckpointError, match="best_model/ is used only on request"):
    loading.load_for_inference(only_best)
  assert loading.load_for_inference(only_best, best=True)[1]["miou"] == 0.3

  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ck.CheckpointError, match="neither a model directory"):
    loading.load_for_inference(str(empty))
  with pytest.raises(ck.CheckpointError, match="no such directory"):
    loading.load_for_inference(str(tmp_path / "missing"))


def test_generator_sgd_state_of_an_earlier_version_restores(tmp_path):
  """Checkpoints whose non-legacy G optimiser state is a `TorchSGDState` (count, momentum of
  every parameter; written before `grouped_sgd`) restore into the grouped layout with the
  same step count and momentum buffers."""
  import jax
  import optax
  from advseg_jax.models import build_generator
  from advseg_jax.train import init as init_lib
  from advseg_jax.train import optim
  from advseg_jax.train import state as state_lib
  config = _tiny_config()
  config.method.name = "supervised"
  config.optim_g.legacy_duplicate_updates = False        # grouped_sgd
  g_model, rng = build_generator(config.model), jax.random.key(0)
  old_config = _tiny_config()
  old_config.method.name = "supervised"
  old_config.optim_g.legacy_duplicate_updates = True     # still a TorchSGDState
  old = jax.tree.map(np.asarray, state_lib.create_train_states(old_config, g_model, None, rng))
  momentum = jax.tree.map(lambda p: np.random.default_rng(1).normal(size=p.shape).astype(
      p.dtype), old.g.params)
  old_g = old.g.replace(opt_state=optim.TorchSGDState(count=np.asarray(7, np.int32),
                                                      momentum=momentum))
  c = ck.TrainCheckpointer(str(tmp_path))
  c.save(7, old_g, None, {"config": diff.config_to_dict(config), "method": "supervised"}, {})
  c.close()

  c = ck.TrainCheckpointer(str(tmp_path))
  start = init_lib.restore_or_init(config, c, g_model, None, rng, allow_config_change=False)
  c.close()
  assert start.step == 7
  new_state = start.host_states.g.opt_state
  traces = [s for s in jax.tree_util.tree_leaves(
      new_state, is_leaf=lambda x: isinstance(x, (optax.TraceState, optax.ScaleByScheduleState)))
            if isinstance(s, (optax.TraceState, optax.ScaleByScheduleState))]
  counts = [int(s.count) for s in traces if isinstance(s, optax.ScaleByScheduleState)]
  assert counts == [7, 7]                                   # backbone and head groups
  restored = {}
  for t in traces:
    if isinstance(t, optax.TraceState):
      for path, v in jax.tree_util.tree_leaves_with_path(t.trace):
        restored[jax.tree_util.keystr(path)] = v
  want = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(momentum)}
  assert restored and set(restored) < set(want)           # BN affine / dead branches: none
  for k, v in restored.items():
    np.testing.assert_array_equal(np.asarray(v), want[k], err_msg=k)
