"""grain pipelines: batches, determinism, resumption, sharding, eval modes, checkpoints."""

import os

import numpy as np
import pytest

from advseg_jax import data
from advseg_jax.data import prepare

from tests import loop_helpers

BUILDERS = os.path.join(os.path.dirname(prepare.__file__), "builders")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  d = str(tmp_path_factory.mktemp("tfds"))
  for name in ("voc_aug", "cityscapes"):
    prepare.prepare_dataset(name, data_dir=d,
                            manual_dir=os.path.join(BUILDERS, name, "dummy_data"))
  return d


def voc_cfg(data_dir, **kw):
  base = dict(name="voc_aug", data_dir=data_dir, crop_size=(21, 23), random_scale=True,
              random_mirror=True, read_threads=2)
  base.update(kw)
  return data.dataset_config(**base)


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_batches_layout(data_dir):
  it = data.make_train_iterator(voc_cfg(data_dir), split="train", batch_size=3, seed=0)
  b = next(it)
  assert b["image"].shape == (3, 21, 23, 3) and b["image"].dtype == np.float32
  assert b["label"].shape == (3, 21, 23) and b["label"].dtype == np.int32
  assert set(np.unique(b["label"])) <= {0, 1, 7, 15, 20, 255}
  # mean-subtracted 0-255 scale: values in [-mean, 255 - mean]
  assert b["image"].min() >= -123 and b["image"].max() <= 255 - 104


def test_deterministic_for_a_seed(data_dir):
  cfg = voc_cfg(data_dir)
  a = take(data.make_train_iterator(cfg, split="train", batch_size=2, seed=5), 5)
  b = take(data.make_train_iterator(cfg, split="train", batch_size=2, seed=5), 5)
  c = take(data.make_train_iterator(cfg, split="train", batch_size=2, seed=6), 5)
  assert_same(a, b)
  assert any(not np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def _order(cfg, n_batches, **kw):
  """File order the iterator visits, recovered via a 1x1 crop of unique image corners."""
  cfg = data.dataset_config(**{**cfg.to_dict(), "crop_size": None, "random_scale": False,
                               "random_mirror": False, "resize_size": (4, 4)})
  it = data.make_train_iterator(cfg, batch_size=1, **kw)
  return [tuple(np.round(next(it)["image"][0, 0, 0], 2)) for _ in range(n_batches)]


def test_endless_with_reshuffle_per_epoch(data_dir):
  order = _order(voc_cfg(data_dir), 12, split="train", seed=1)
  epochs = [order[i:i + 4] for i in range(0, 12, 4)]
  assert all(len(set(e)) == 4 for e in epochs)           # each epoch = the 4 examples
  assert all(set(e) == set(epochs[0]) for e in epochs)
  assert len({tuple(e) for e in epochs}) > 1              # order changes between epochs


def test_sharding_by_process(data_dir):
  cfg = voc_cfg(data_dir)
  shards = [set(_order(cfg, 4, split="train", seed=3, process_index=p, process_count=2))
            for p in range(2)]
  assert len(shards[0]) == len(shards[1]) == 2 and not shards[0] & shards[1]
  assert shards[0] | shards[1] == set(_order(cfg, 4, split="train", seed=3))


def test_indices_subset(data_dir):
  cfg = voc_cfg(data_dir)
  full = _order(cfg, 4, split="train", seed=0)
  sub = set(_order(cfg, 6, split="train", seed=0, indices=[0, 2]))
  assert len(sub) == 2 and sub <= set(full)


def test_resume_from_state_equals_uninterrupted(data_dir):
  cfg = voc_cfg(data_dir)
  ref = take(data.make_train_iterator(cfg, split="train", batch_size=3, seed=9), 7)
  it = data.make_train_iterator(cfg, split="train", batch_size=3, seed=9)
  take(it, 3)
  state = it.get_state()
  resumed = data.make_train_iterator(cfg, split="train", batch_size=3, seed=9)
  resumed.set_state(state)
  assert_same(take(resumed, 4), ref[3:])


def test_orbax_grain_checkpoint_round_trip(data_dir, tmp_path):
  import grain
  import orbax.checkpoint as ocp
  cfg = voc_cfg(data_dir)
  ref = take(data.make_train_iterator(cfg, split="train", batch_size=2, seed=4), 6)
  it = data.make_train_iterator(cfg, split="train", batch_size=2, seed=4)
  take(it, 2)
  with ocp.CheckpointManager(str(tmp_path / "ckpt"), item_names=("data_iter",)) as mngr:
    mngr.save(2, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
    mngr.wait_until_finished()
    fresh = data.make_train_iterator(cfg, split="train", batch_size=2, seed=4)
    mngr.restore(2, args=ocp.args.Composite(
        data_iter=grain.checkpoint.CheckpointRestore(fresh)))
  assert_same(take(fresh, 4), ref[2:])


def test_workers_match_in_process_and_resume(data_dir):
  cfg0 = voc_cfg(data_dir)
  cfg1 = voc_cfg(data_dir, num_workers=1)
  ref = take(data.make_train_iterator(cfg0, split="train", batch_size=2, seed=2), 5)
  it = data.make_train_iterator(cfg1, split="train", batch_size=2, seed=2)
  try:
    assert_same(take(it, 2), ref[:2])
    state = it.get_state()
    assert_same(take(it, 3), ref[2:])
    it.set_state(state)  # rewinds the worker processes to the saved position
    assert_same(take(it, 3), ref[2:])
  finally:
    it.close()


def test_advsemi_gt_loader_never_pads(data_dir):
  cfg = voc_cfg(data_dir, crop_size=(33, 33), gt_loader="advsemi", random_scale=True)
  for b in take(data.make_train_iterator(cfg, split="train", batch_size=2, seed=0), 4):
    assert b["image"].shape == (2, 33, 33, 3)
    # fixture labels have 255 only as 4x4 blocks; a 33-px pad strip would be all 255
    assert not (b["label"][:, -1, :] == 255).all(axis=1).any()


def test_resize_mode_and_unlabelled_stream(data_dir):
  cfg = data.dataset_config(name="cityscapes", data_dir=data_dir, resize_size=(8, 16),
                            use_labels=False)
  b = next(data.make_train_iterator(cfg, split="train", batch_size=2, seed=0))
  assert set(b) == {"image"} and b["image"].shape == (2, 8, 16, 3)


def test_eval_pad_mode_voc(data_dir):
  cfg = data.dataset_config(name="voc_aug", data_dir=data_dir, eval_mode="pad",
                            eval_pad_size=(45, 45))
  ev = data.make_eval_iterator(cfg, split="validation", batch_size=3)
  batches = list(ev)
  assert len(batches) == len(ev) == 1
  b = batches[0]
  assert b["image"].shape == (3, 45, 45, 3) and b["label"].shape == (3, 45, 45)
  assert b["mask"].tolist() == [True, True, False]
  assert b["orig_hw"].dtype == np.int32 and b["orig_hw"][:2].tolist() == [[28, 36], [32, 32]]
  assert list(b["file_name"][:2]) == ["2007_000033", "2011_000003"]
  h, w = b["orig_hw"][0]
  assert (b["label"][0, h:] == 255).all() and (b["label"][0, :, w:] == 255).all()


def test_eval_resize_mode_cityscapes_keeps_full_label(data_dir):
  cfg = data.dataset_config(name="cityscapes", data_dir=data_dir, eval_mode="resize",
                            eval_resize_size=(8, 16))
  b = next(iter(data.make_eval_iterator(cfg, split="val", batch_size=2)))
  assert b["image"].shape == (2, 8, 16, 3) and b["label"].shape == (2, 16, 32)
  assert b["orig_hw"].tolist() == [[16, 32], [16, 32]] and b["mask"].all()


def test_eval_sharding_equal_batch_counts(data_dir):
  cfg = data.dataset_config(name="voc_aug", data_dir=data_dir, eval_mode="pad",
                            eval_pad_size=(40, 40))
  # train split (4 examples) over 3 processes: shards of 2, 1, 1
  per = [list(data.make_eval_iterator(cfg, split="train", batch_size=1, process_index=p,
                                      process_count=3)) for p in range(3)]
  assert [len(p) for p in per] == [2, 2, 2]
  names = [n for p in per for b in p for n, m in zip(b["file_name"], b["mask"]) if m]
  assert sorted(names) == sorted(["2007_000032", "2007_000039", "2008_000002", "2010_000005"])
  assert data.num_examples(cfg, "train") == 4 and data.num_examples(cfg, "val") == 2


def test_iclr2018_preset_streams(data_dir):
  """configs/iclr2018.py's streams on the dummy VOC: RandomSizedCrop to 321, ImageNet-
  normalised values, no 255 left in the labels but the eval padding."""
  c = loop_helpers.load_preset("iclr2018.py:semi_0.5")
  train_cfg = c.data.copy_and_resolve_references()
  eval_cfg = c.eval_data.copy_and_resolve_references()
  for cfg in (train_cfg, eval_cfg):
    cfg.data_dir, cfg.read_threads = data_dir, 1
  b = next(data.make_train_iterator(train_cfg, split="train", batch_size=2, seed=0))
  assert b["image"].shape == (2, 321, 321, 3) and b["label"].shape == (2, 321, 321)
  assert -2.2 < b["image"].min() and b["image"].max() < 2.7  # (0..1 - mean) / std
  assert 255 not in b["label"]
  e = next(iter(data.make_eval_iterator(eval_cfg, split="validation", batch_size=2)))
  h, w = e["orig_hw"][0]
  assert e["image"].shape == (2, 513, 513, 3) and 255 not in e["label"][0, :h, :w]
  assert (e["label"][0, h:] == 255).all()
  black = (np.zeros(3) - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(e["image"][0, h:], np.broadcast_to(black, (513 - h, 513, 3)),
                             rtol=1e-5)
