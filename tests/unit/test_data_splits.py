"""Labelled / unlabelled splits: sizes, determinism, JSON round trip, train_id.pkl, and the
ICLR-2018 reproduction's `np.random.seed(100)` rule."""

import json
import pickle

import numpy as np
import pytest

from advseg_jax.config import defaults
from advseg_jax.config import validation
from advseg_jax.data import splits

from tests import seeds


@pytest.mark.parametrize("fraction,n_lab", [(1 / 8, 1322), (1 / 4, 2645), (1 / 2, 5291),
                                            (1.0, 10582)])
def test_advsemiseg_partial_sizes(fraction, n_lab):
  s = splits.make_split(10582, fraction, seed=1234)
  assert s.labelled.size == n_lab and s.unlabelled.size == 10582 - n_lab
  np.testing.assert_array_equal(np.sort(np.concatenate([s.labelled, s.unlabelled])),
                                np.arange(10582))
  np.testing.assert_array_equal(s.labelled, s.permutation[:int(fraction * 10582)])


def test_seeded_and_deterministic():
  a, b = splits.make_split(100, 0.5, 3), splits.make_split(100, 0.5, 3)
  c = splits.make_split(100, 0.5, 4)
  np.testing.assert_array_equal(a.permutation, b.permutation)
  assert not np.array_equal(a.permutation, c.permutation)
  np.testing.assert_array_equal(a.permutation, np.random.default_rng(3).permutation(100))


def test_json_round_trip(tmp_path):
  s = splits.make_split(50, 0.25, 7)
  p = str(tmp_path / "run" / "split.json")
  splits.save_split(s, p)
  data = json.loads(open(p).read())
  assert data["fraction"] == 0.25 and data["seed"] == 7 and len(data["permutation"]) == 50
  r = splits.load_split(p)
  np.testing.assert_array_equal(r.permutation, s.permutation)
  assert r.fraction == 0.25 and r.seed == 7


@pytest.mark.parametrize("kind", ["list", "ndarray", "range_list"])
def test_originals_train_id_pkl(tmp_path, kind):
  perm = np.random.default_rng(0).permutation(40)
  obj = {"list": perm.tolist(), "ndarray": perm, "range_list": list(map(int, perm))}[kind]
  p = tmp_path / "train_id.pkl"
  with open(p, "wb") as f:
    pickle.dump(obj, f, protocol=2)  # the Python-2 era protocol
  s = splits.load_split(str(p), fraction=0.125)
  np.testing.assert_array_equal(s.labelled, perm[:5])
  with pytest.raises(ValueError, match="fraction"):
    splits.load_split(str(p))


def test_py2_numpy_pickle_bytes_load_with_latin1(tmp_path):
  # A Python-2 numpy pickle stores the raw buffer as a py2 str; latin1 maps it to bytes.
  perm = np.arange(6, dtype=np.int64)[::-1].copy()
  payload = pickle.dumps(perm, protocol=2)
  p = tmp_path / "train_id.pkl"
  p.write_bytes(payload)
  np.testing.assert_array_equal(splits.load_split(str(p), 0.5).labelled, [5, 4, 3])


def test_rejects_non_permutation(tmp_path):
  with pytest.raises(ValueError, match="permutation"):
    splits.split_from_permutation([0, 0, 1], 0.5)
  with pytest.raises(ValueError):
    splits.make_split(10, 0.0, 0)


def test_load_or_create(tmp_path):
  wd = str(tmp_path)
  a = splits.load_or_create(wd, 30, 0.5, seed=1)
  b = splits.load_or_create(wd, 30, 0.5, seed=999)  # reloads the saved split, seed unused
  np.testing.assert_array_equal(a.permutation, b.permutation)
  with pytest.raises(ValueError, match="stored split"):
    splits.load_or_create(wd, 31, 0.5, seed=1)
  pkl = tmp_path / "ids.pkl"
  pkl.write_bytes(pickle.dumps(list(range(30))[::-1], protocol=2))
  c = splits.load_or_create(str(tmp_path / "other"), 30, 0.5, seed=1, partial_id=str(pkl))
  assert c.labelled.tolist() == list(range(29, 14, -1))


def _original_iclr2018_split(n, fraction):
  """datasets/pascalvoc.py:27, :38 as written there (the global numpy state is restored)."""
  state = np.random.get_state()
  try:
    np.random.seed(100)
    labelled = np.random.choice(range(n), int(n * fraction), replace=False)
  finally:
    np.random.set_state(state)
  unlabelled = np.array([i for i in range(n) if i not in labelled], dtype=int)
  return labelled, unlabelled


@pytest.mark.parametrize("n, fraction", [(10582, 0.5), (10582, 1.0), (37, 0.3), (5, 0.5)])
def test_iclr2018_rule_is_the_originals_draw(n, fraction):
  labelled, unlabelled = _original_iclr2018_split(n, fraction)
  seed = seeds.draw(31)
  for s in (splits.make_split(n, fraction, seed, rule="iclr2018"),
            splits.make_split(n, fraction, seed + 1, rule="iclr2018")):  # the seed is unused
    np.testing.assert_array_equal(s.labelled, labelled)  # in the order choice returns them
    np.testing.assert_array_equal(s.unlabelled, unlabelled)  # increasing
    assert (s.seed, s.rule, s.num_labelled) == (100, "iclr2018", int(n * fraction))
  assert not np.array_equal(splits.make_split(n, fraction, seed).permutation,
                            splits.make_split(n, fraction, seed, rule="iclr2018").permutation)


def test_a_stored_split_keeps_its_rule(tmp_path):
  wd = str(tmp_path)
  a = splits.load_or_create(wd, 40, 0.5, seed=1, rule="iclr2018")
  b = splits.load_or_create(wd, 40, 0.5, seed=2, rule="iclr2018")
  np.testing.assert_array_equal(a.permutation, b.permutation)
  assert b.rule == "iclr2018"
  with pytest.raises(ValueError, match="split_rule 'iclr2018'; the run asks for 'advsemi'"):
    splits.load_or_create(wd, 40, 0.5, seed=1)
  # a split.json written before `rule` existed is an 'advsemi' one
  old = tmp_path / "old"
  old.mkdir()
  doc = {"format_version": 1, "num_examples": 40, "fraction": 0.5, "seed": 3,
         "permutation": np.random.default_rng(3).permutation(40).tolist()}
  (old / "split.json").write_text(json.dumps(doc))
  assert splits.load_or_create(str(old), 40, 0.5, seed=3).rule == "advsemi"
  with pytest.raises(ValueError, match="split_rule"):
    splits.load_or_create(str(old), 40, 0.5, seed=3, rule="iclr2018")
  with pytest.raises(ValueError, match="split rule must be one of"):
    splits.make_split(40, 0.5, 0, rule="random")


def test_validation_rejects_an_unknown_split_rule():
  c = defaults.base_config()
  c.split_rule = "seed100"
  with pytest.raises(validation.ConfigError, match=r"^config\.split_rule = 'seed100' is invalid"):
    validation.validate(c)
