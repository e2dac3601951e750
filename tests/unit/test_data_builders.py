"""TFDS builders built from their dummy_data trees (array_record, no TensorFlow)."""

import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from advseg_jax.data import prepare
from advseg_jax.data import source as source_lib

from tests import data_trees

BUILDERS = data_trees.BUILDERS

# The mapping written out by hand (AdaptSegNet's id_to_trainid), independent of labels.py.
ID_TO_TRAINID = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
                 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}


dummy = data_trees.dummy


def _map(raw, mapping):
  out = np.full(raw.shape, 255, np.uint8)
  for k, v in mapping.items():
    out[raw == k] = v
  return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  d = str(tmp_path_factory.mktemp("tfds"))
  for name, cfgs in (("voc_aug", [None]), ("cityscapes", [None]), ("gta5", [None]),
                     ("synthia", ["16", "13"]), ("stanford_background", ["0", "3"])):
    for c in cfgs:
      prepare.prepare_dataset(name, config_name=c, data_dir=d, manual_dir=dummy(name))
  return d


def _records(data_dir, name, cfg, split):
  src = source_lib.RawSource(name, cfg, data_dir, split)
  return [src[i] for i in range(len(src))]


def _decoded(data_dir, name, cfg, split):
  b = source_lib.make_builder(name, cfg, data_dir)
  ds = b.as_data_source(split)
  return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("name,cfg,sizes", [
    ("voc_aug", None, {"train": 4, "validation": 2}),
    ("cityscapes", None, {"train": 3, "validation": 2}),
    ("gta5", None, {"train": 3}),
    ("synthia", "16", {"train": 3}),
    ("synthia", "13", {"train": 3}),
    ("stanford_background", "0", {"train": 8, "test": 2}),
    ("stanford_background", "3", {"train": 8, "test": 2}),
])
def test_split_sizes_and_dtypes(data_dir, name, cfg, sizes):
  b = source_lib.make_builder(name, cfg, data_dir)
  assert {k: v.num_examples for k, v in b.info.splits.items()} == sizes
  assert str(b.info.file_format.value) == "array_record"
  for split in sizes:
    for ex in _decoded(data_dir, name, cfg, split):
      assert ex["image"].dtype == np.uint8 and ex["image"].ndim == 3
      assert ex["image"].shape[2] == 3
      assert ex["label"].dtype == np.uint8 and ex["label"].shape == ex["image"].shape[:2] + (1,)


def test_voc_order_follows_list_files_and_labels_kept(data_dir):
  root = dummy("voc_aug")
  for split, lst in (("train", "train_aug.txt"), ("validation", "val.txt")):
    ids = open(os.path.join(root, "ImageSets/SegmentationAug", lst)).read().split()
    recs = _records(data_dir, "voc_aug", None, split)
    assert [r["file_name"] for r in recs] == ids
    for r, i in zip(recs, ids):
      with open(os.path.join(root, "JPEGImages", f"{i}.jpg"), "rb") as f:
        assert r["image"] == f.read()  # stored as found on disk
      raw = np.asarray(Image.open(os.path.join(root, "SegmentationClassAug", f"{i}.png")))
      got = np.asarray(Image.open(__import__("io").BytesIO(r["label"])))
      np.testing.assert_array_equal(got, raw)  # palette and grey PNGs alike


def test_cityscapes_label_ids_mapped_to_train_ids(data_dir):
  root = dummy("cityscapes")
  recs = _decoded(data_dir, "cityscapes", None, "train")
  names = [r["file_name"].decode() for r in recs]
  assert names == sorted(names) and names[0] == "aachen/aachen_000000_000019_leftImg8bit.png"
  for r, n in zip(recs, names):
    raw = np.asarray(Image.open(os.path.join(
        root, "gtFine/train", n.replace("_leftImg8bit.png", "_gtFine_labelIds.png"))))
    np.testing.assert_array_equal(r["label"][..., 0], _map(raw, ID_TO_TRAINID))
    img = np.asarray(Image.open(os.path.join(root, "leftImg8bit/train", n)).convert("RGB"))
    np.testing.assert_array_equal(r["image"], img)


def test_cityscapes_from_official_zips(tmp_path, data_dir):
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  root = dummy("cityscapes")
  manual = tmp_path / "manual"
  manual.mkdir()
  for top, zname in (("leftImg8bit", "leftImg8bit_trainvaltest.zip"),
                     ("gtFine", "gtFine_trainvaltest.zip")):
    with zipfile.ZipFile(manual / zname, "w") as zf:
      for dirpath, _, files in os.walk(os.path.join(root, top)):
        for f in files:
          full = os.path.join(dirpath, f)
          zf.write(full, os.path.relpath(full, root))
  d = str(tmp_path / "tfds")
  res = prepare.prepare_dataset("cityscapes", data_dir=d, manual_dir=str(manual))
  assert res.num_examples == {"train": 3, "validation": 2}
  for split in ("train", "validation"):
    a = _records(d, "cityscapes", None, split)
    b = _records(data_dir, "cityscapes", None, split)
    assert [x["file_name"] for x in a] == [x["file_name"] for x in b]
    assert [x["image"] for x in a] == [x["image"] for x in b]
    assert [x["label"] for x in a] == [x["label"] for x in b]


def test_gta5_palette_labels_and_optional_list(tmp_path, data_dir):
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()
  root = dummy("gta5")
  recs = _decoded(data_dir, "gta5", None, "train")
  assert [r["file_name"].decode() for r in recs] == ["00001.png", "00002.png", "00003.png"]
  for r in recs:
    raw = np.asarray(Image.open(os.path.join(root, "labels", r["file_name"].decode())))
    np.testing.assert_array_equal(r["label"][..., 0], _map(raw, ID_TO_TRAINID))
  manual = tmp_path / "gta5"
  shutil.copytree(root, manual)
  (manual / "train.txt").write_text("00003.png\n00001.png\n")
  d = str(tmp_path / "tfds")
  prepare.prepare_dataset("gta5", data_dir=d, manual_dir=str(manual))
  assert [r["file_name"] for r in _records(d, "gta5", None, "train")] == ["00003.png", "00001.png"]


def _adaptsegnet_gta5(root, name):
  """AdaptSegNet's GTA5DataSet.__getitem__ up to the mean: RGB uint8 image, float label."""
  image = Image.open(os.path.join(root, "images", name)).convert("RGB")
  label = Image.open(os.path.join(root, "labels", name))
  image = np.asarray(image.resize((1280, 720), Image.BICUBIC), np.float32)
  label = np.asarray(label.resize((1280, 720), Image.NEAREST), np.float32)
  label_copy = 255 * np.ones(label.shape, dtype=np.float32)
  for k, v in ID_TO_TRAINID.items():
    label_copy[label == k] = v
  return image, label_copy


def test_gta5_mismatched_pair_and_unknown_ids_as_adaptsegnet(tmp_path):
  """Stored data, after the presets' 1280x720 `resize_size`, equal AdaptSegNet's loader."""
  from advseg_jax.data import transforms
  manual = data_trees.gta5_as_released(tmp_path)
  d = str(tmp_path / "tfds")
  res = prepare.prepare_dataset("gta5", data_dir=d, manual_dir=str(manual))
  assert res.num_examples == {"train": 3}
  resized, remapped = sorted(res.adjusted, key=lambda k: "resized" not in k)
  assert "resized to 1280x720" in resized and res.adjusted[resized] == ["00002.png"]
  assert res.adjusted[remapped] == ["00002.png (ids [34, 200])", "00003.png (ids [250])"]
  recs = _decoded(d, "gta5", None, "train")
  assert recs[1]["image"].shape == (720, 1280, 3)  # the mismatched pair, stored resized
  assert recs[0]["image"].shape == (18, 32, 3)     # the others as found on disk
  for r in recs:
    image, label = transforms.resize_example_pil(r["image"], r["label"][..., 0], (720, 1280))
    want_image, want_label = _adaptsegnet_gta5(str(manual), r["file_name"].decode())
    np.testing.assert_array_equal(image, want_image)
    np.testing.assert_array_equal(label, want_label)


@pytest.mark.parametrize("protocol", ["16", "13"])
def test_synthia_16bit_labels_and_protocols(data_dir, protocol):
  root = dummy("synthia")
  synthia_to_cs = {3: 0, 4: 1, 2: 2, 21: 3, 5: 4, 7: 5, 15: 6, 9: 7, 6: 8, 16: 9, 1: 10,
                   10: 11, 17: 12, 8: 13, 18: 14, 19: 15, 20: 16, 12: 17, 11: 18}
  dropped = {"16": {9, 14, 16}, "13": {9, 14, 16, 3, 4, 5}}[protocol]
  kept = [t for t in range(19) if t not in dropped]
  assert len(kept) == int(protocol)
  mapping = {raw: kept.index(t) for raw, t in synthia_to_cs.items() if t in kept}
  from advseg_jax.data import get_info
  info = get_info(f"synthia/{protocol}")
  assert info.num_classes == int(protocol) and list(info.cityscapes_train_ids) == kept
  for r in _decoded(data_dir, "synthia", protocol, "train"):
    # independent 16-bit read: parse the PNG rows ourselves (filters 0/1/2 as written)
    raw = _read_png16_channel0(os.path.join(root, "GT/LABELS", r["file_name"].decode()))
    np.testing.assert_array_equal(r["label"][..., 0], _map(raw, mapping))
    assert r["label"].max() == 255 or r["label"].max() < int(protocol)


def _read_png16_channel0(path):
  """Minimal 16-bit RGB PNG reader (filters None / Sub / Up) for the fixture files."""
  import struct
  import zlib
  data = open(path, "rb").read()
  pos, idat, w, h = 8, b"", 0, 0
  while pos < len(data):
    n, tag = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + n]
    if tag == b"IHDR":
      w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
      assert depth == 16 and ctype == 2
    elif tag == b"IDAT":
      idat += body
    pos += 12 + n
  raw = zlib.decompress(idat)
  stride, bpp = w * 6, 6
  rows, prev = [], bytearray(stride)
  for y in range(h):
    ftype, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for i in range(stride):
      if ftype == 1:
        line[i] = (line[i] + (line[i - bpp] if i >= bpp else 0)) % 256
      elif ftype == 2:
        line[i] = (line[i] + prev[i]) % 256
    rows.append(bytes(line))
    prev = line
  arr = np.frombuffer(b"".join(rows), ">u2").reshape(h, w, 3)
  return arr[..., 0].astype(np.int64)


def test_builder_names_do_not_clash_with_tfds():
  from advseg_jax.data import registry
  for n in registry.dataset_names():
    assert registry.builder_class(n).name == "advseg_" + n


# ----------------------------------------------------------------- Stanford Background

def _regions(path):
  """Reads a `.regions.txt` by hand: -1 (unknown) -> 255."""
  rows = [[int(v) for v in line.split()] for line in open(path) if line.strip()]
  return np.where(np.array(rows) < 0, 255, np.array(rows)).astype(np.uint8)


@pytest.mark.parametrize("fold", ["0", "3"])
def test_stanford_background_regions_and_seeded_folds(data_dir, fold):
  from advseg_jax.data import get_info
  root = dummy("stanford_background")
  names = sorted(f[:-4] for f in os.listdir(os.path.join(root, "images")))
  # the seeded split, computed here independently of the builder
  perm = np.random.default_rng(0).permutation(len(names))
  folds = [sorted(names[i] for i in part) for part in np.array_split(perm, 5)]
  b = source_lib.make_builder("stanford_background", fold, data_dir)
  assert b.info.metadata["folds"] == folds  # saved with the prepared data, read back
  assert (b.info.metadata["fold_seed"], b.info.metadata["test_fold"]) == (0, int(fold))
  test = _decoded(data_dir, "stanford_background", fold, "test")
  train = _decoded(data_dir, "stanford_background", fold, "train")
  assert [r["file_name"].decode() for r in test] == folds[int(fold)]
  assert [r["file_name"].decode() for r in train] == sorted(
      n for k, f in enumerate(folds) if k != int(fold) for n in f)
  unknown = 0
  for r in test + train:
    want = _regions(os.path.join(root, "labels", r["file_name"].decode() + ".regions.txt"))
    np.testing.assert_array_equal(r["label"][..., 0], want)
    unknown += int((want == 255).sum())
  assert unknown > 0
  info = get_info("stanford_background")
  assert info.num_classes == 8 and info.class_names[-1] == "foreground object"
  assert info.config_name == "0" and info.splits == ("train", "test")


def test_stanford_background_in_iccv09data_folder(tmp_path, data_dir):
  manual = tmp_path / "stanford"
  shutil.copytree(dummy("stanford_background"), manual / "iccv09Data")
  d = str(tmp_path / "tfds")
  prepare.prepare_dataset("stanford_background", config_name="3", data_dir=d,
                          manual_dir=str(manual))
  for split in ("train", "test"):
    assert _records(d, "stanford_background", "3", split) == _records(
        data_dir, "stanford_background", "3", split)


@pytest.mark.parametrize("text,needle", [
    ("0 1 2\n3 8 1\n", "-1..7"),
    ("0 1 2\n3 4\n", "-1..7"),
    ("", "empty"),
])
def test_stanford_background_bad_regions_file(tmp_path, text, needle):
  from advseg_jax.data.errors import BadExampleError
  manual = tmp_path / "stanford"
  shutil.copytree(dummy("stanford_background"), manual)
  bad = manual / "labels" / "0000051.regions.txt"
  bad.write_text(text)
  with pytest.raises(BadExampleError, match=needle) as e:
    prepare.prepare_dataset("stanford_background", config_name="0",
                            data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  assert str(bad) in str(e.value)


def test_stanford_background_label_of_another_size_is_an_error(tmp_path):
  from advseg_jax.data.errors import BadExampleError
  manual = tmp_path / "stanford"
  shutil.copytree(dummy("stanford_background"), manual)
  bad = manual / "labels" / "0000047.regions.txt"
  bad.write_text("0 1\n2 3\n")
  with pytest.raises(BadExampleError, match="differs from its image"):
    prepare.prepare_dataset("stanford_background", config_name="0",
                            data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
