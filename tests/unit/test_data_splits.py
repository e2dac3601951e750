"""Labelled / unlabelled splits: sizes, determinism, JSON round trip, train_id.pkl."""

import json
import pickle

import numpy as np
import pytest

from advseg_jax.data import splits


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
