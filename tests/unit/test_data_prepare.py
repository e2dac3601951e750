"""`prepare` CLI end to end, layout errors, bad data at prepare and read time, atomicity."""

import hashlib
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from advseg_jax.data import config as config_lib
from advseg_jax.data import image_io
from advseg_jax.data import pipeline
from advseg_jax.cli import prepare as prepare_cli
from advseg_jax.data import prepare
from advseg_jax.data import source as source_lib
from advseg_jax.data.image_io import BadExampleError

from tests import data_trees

BUILDERS = os.path.join(os.path.dirname(prepare.__file__), "builders")


@pytest.fixture(autouse=True)
def _no_progress():
    import tensorflow_datasets as tfds
    tfds.disable_progress_bar()


def copy_fixture(tmp_path, name):
    dst = tmp_path / f"manual_{name}"
    shutil.copytree(os.path.join(BUILDERS, name, "dummy_data"), dst)
    return dst


def run(argv, capsys):
    rc = prepare_cli.main([*argv, "--no_progress"])
    out = capsys.readouterr()
    return rc, out.out, out.err


def tree_digest(path):
    h = hashlib.sha256()
    for dirpath, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            h.update(os.path.relpath(p, path).encode())
            h.update(open(p, "rb").read())
    return h.hexdigest()


def leftovers(data_dir):
    return [os.path.join(dp, d) for dp, ds, _ in os.walk(data_dir) for d in ds
            if "incomplete" in d or "staging" in d or ".old-" in d]


def test_help_documents_every_flag(capsys):
    assert prepare_cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    for flag in ("--manual_dir", "--data_dir", "--config", "--overwrite",
                 "--skip_bad_examples", "--num_threads", "--no_progress", "--verbose"):
        assert flag in text
    assert "JPEGImages" in text and "gtFine_trainvaltest.zip" in text
    assert "stanford_background: images/<name>.jpg, labels/<name>.regions.txt" in text
    assert "resized to\n              1280x720" in text


def test_prepare_end_to_end(tmp_path, capsys):
    manual = copy_fixture(tmp_path, "voc_aug")
    d = str(tmp_path / "tfds")
    rc, out, err = run(["voc_aug", "--manual_dir", str(manual), "--data_dir", d], capsys)
    assert rc == 0, err
    assert "voc_aug: prepared in" in out and "train: 4" in out and "validation: 2" in out
    rc, out, _ = run(["voc_aug", "--manual_dir", str(manual), "--data_dir", d], capsys)
    assert rc == 0 and "already prepared" in out
    assert len(source_lib.RawSource("voc_aug", None, d, "val")) == 2


def test_prepare_shapes_needs_no_manual_dir(tmp_path, capsys, monkeypatch):
    from advseg_jax.data.builders.shapes import shapes_dataset_builder as sb
    monkeypatch.setattr(sb, "SPLIT_SIZES", {"train": 3, "validation": 2})
    d = str(tmp_path / "tfds")
    rc, out, err = run(["shapes", "--config", "target", "--data_dir", d], capsys)
    assert rc == 0, err
    assert "shapes/target: prepared" in out and "train: 3" in out


def test_missing_manual_dir_is_one_clear_line(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    rc, _, err = run(["cityscapes", "--manual_dir", missing, "--data_dir", str(tmp_path)], capsys)
    assert rc == 1
    assert err.count("\n") == 1 and missing in err and "expected layout" in err


@pytest.mark.parametrize("name,remove,needle", [
    ("voc_aug", "SegmentationClassAug", "SegmentationClassAug"),
    ("voc_aug", "ImageSets/SegmentationAug/val.txt", "val.txt"),
    ("cityscapes", "gtFine", "gtFine/ (or gtFine_trainvaltest.zip)"),
    ("gta5", "labels", "labels"),
    ("synthia", "GT", "LABELS"),
])
def test_missing_folder_names_it(tmp_path, capsys, name, remove, needle):
    manual = copy_fixture(tmp_path, name)
    target = manual / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    rc, _, err = run([name, "--manual_dir", str(manual), "--data_dir", str(tmp_path / "d")],
                     capsys)
    assert rc == 1 and err.count("\n") == 1
    assert needle in err and "expected layout" in err


# ---------------------------------------------------------------- bad data at prepare time

def corrupt_truncated_image(manual):
    p = manual / "JPEGImages" / "2007_000039.jpg"
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
    return p


def corrupt_label_size(manual):
    p = manual / "SegmentationClassAug" / "2008_000002.png"
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(p)
    return p


def corrupt_label_id(manual):
    p = manual / "SegmentationClassAug" / "2010_000005.png"
    lab = np.asarray(Image.open(p)).copy()
    lab[0, 0] = 42  # VOC has ids 0..20 and 255 only
    Image.fromarray(lab).save(p)
    return p


def corrupt_missing_file(manual):
    lst = manual / "ImageSets" / "SegmentationAug" / "train_aug.txt"
    lst.write_text(lst.read_text() + "2012_999999\n")
    return manual / "JPEGImages" / "2012_999999.jpg"


FAULTS = {"truncated_image": corrupt_truncated_image, "label_size": corrupt_label_size,
          "label_id": corrupt_label_id, "missing_file": corrupt_missing_file}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_bad_data_fails_naming_file_and_leaves_nothing(tmp_path, capsys, fault):
    manual = copy_fixture(tmp_path, "voc_aug")
    bad = FAULTS[fault](manual)
    d = tmp_path / "tfds"
    rc, _, err = run(["voc_aug", "--manual_dir", str(manual), "--data_dir", str(d)], capsys)
    assert rc == 1
    assert str(bad) in err, err
    assert not (d / "advseg_voc_aug" / "1.0.0").exists()
    assert leftovers(str(d)) == []


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_bad_data_skipped_and_counted(tmp_path, capsys, fault):
    manual = copy_fixture(tmp_path, "voc_aug")
    bad = FAULTS[fault](manual)
    d = str(tmp_path / "tfds")
    rc, out, err = run(["voc_aug", "--manual_dir", str(manual), "--data_dir", d,
                        "--skip_bad_examples"], capsys)
    assert rc == 0, err
    assert "skipped 1 bad examples" in out and str(bad) in out
    src = source_lib.RawSource("voc_aug", None, d, "train")
    assert len(src) == (4 if fault == "missing_file" else 3)


def ours(out, name):
    """The lines `prepare` itself printed about `name` (TFDS prints its own as well)."""
    return [l for l in out.splitlines() if l.startswith(name)]


def test_gta5_counts_resized_and_remapped_examples(tmp_path, capsys):
    d = str(tmp_path / "tfds")
    rc, out, err = run(["gta5", "--manual_dir", str(data_trees.gta5_as_released(tmp_path)),
                        "--data_dir", d], capsys)
    assert rc == 0, err
    lines = ours(out, "gta5")
    assert lines[0].startswith("gta5: prepared in") and "train: 3" in lines[0]
    assert lines[1:] == [
        "gta5: 1 image/label pairs of different sizes resized to 1280x720 (image bicubic, "
        "label nearest): 00002.png",
        "gta5: 2 labels with ids outside the label table, those pixels mapped to 255: "
        "00002.png (ids [34, 200]), 00003.png (ids [250])"]
    # the dummy tree needs neither; the counts are printed all the same
    manual = copy_fixture(tmp_path, "gta5")
    rc, out, err = run(["gta5", "--manual_dir", str(manual), "--data_dir",
                        str(tmp_path / "d2")], capsys)
    assert rc == 0, err
    assert ours(out, "gta5")[1:] == [
        "gta5: 0 image/label pairs of different sizes resized to 1280x720 (image bicubic, "
        "label nearest)",
        "gta5: 0 labels with ids outside the label table, those pixels mapped to 255"]


def test_stanford_background_prepares_every_fold(tmp_path, capsys):
    manual = copy_fixture(tmp_path, "stanford_background")
    d = str(tmp_path / "tfds")
    rc, out, err = run(["stanford_background", "--manual_dir", str(manual),
                        "--data_dir", d], capsys)
    assert rc == 0, err
    lines = ours(out, "stanford_background")
    assert [l.split(":")[0] for l in lines] == [f"stanford_background/{k}" for k in range(5)]
    assert all("test: 2, train: 8" in l for l in lines)
    tests = []
    for k in range(5):
        src = source_lib.RawSource("stanford_background", str(k), d, "test")
        tests += [src[i]["file_name"] for i in range(len(src))]
    assert sorted(tests) == sorted(f[:-4] for f in os.listdir(manual / "images"))


def test_cityscapes_label_id_outside_mapping(tmp_path, capsys):
    manual = copy_fixture(tmp_path, "cityscapes")
    p = manual / "gtFine/val/lindau/lindau_000000_000019_gtFine_labelIds.png"
    lab = np.asarray(Image.open(p)).copy()
    lab[3, 3] = 34
    Image.fromarray(lab).save(p)
    rc, _, err = run(["cityscapes", "--manual_dir", str(manual), "--data_dir",
                      str(tmp_path / "d")], capsys)
    assert rc == 1 and str(p) in err and "[34]" in err


def test_synthia_label_id_outside_mapping(tmp_path, capsys):
    manual = copy_fixture(tmp_path, "synthia")
    p = manual / "GT/LABELS/0000001.png"
    arr = np.zeros((19, 32, 3), np.uint16)
    arr[..., 0] = 23  # SYNTHIA ids are 0..22
    p.write_bytes(image_io.encode_png16(arr))
    rc, _, err = run(["synthia/13", "--manual_dir", str(manual), "--data_dir",
                      str(tmp_path / "d")], capsys)
    assert rc == 1 and str(p) in err and "[23]" in err


def test_failed_overwrite_keeps_previous_version(tmp_path, capsys):
    manual = copy_fixture(tmp_path, "voc_aug")
    d = tmp_path / "tfds"
    args = ["voc_aug", "--manual_dir", str(manual), "--data_dir", str(d)]
    assert run(args, capsys)[0] == 0
    version_dir = d / "advseg_voc_aug" / "1.0.0"
    before = tree_digest(version_dir)
    bad = corrupt_truncated_image(manual)
    rc, _, err = run(args + ["--overwrite"], capsys)
    assert rc == 1 and str(bad) in err
    assert tree_digest(version_dir) == before
    assert leftovers(str(d)) == []
    src = source_lib.RawSource("voc_aug", None, str(d), "train")
    assert len(src) == 4 and src[1]["file_name"] == "2007_000039"
    # a successful overwrite swaps the new version in
    (manual / "ImageSets/SegmentationAug/train_aug.txt").write_text("2007_000032\n")
    assert run(args + ["--overwrite"], capsys)[0] == 0
    assert len(source_lib.RawSource("voc_aug", None, str(d), "train")) == 1
    assert leftovers(str(d)) == []


# ---------------------------------------------------------------- bad data at read time

class ListSource:
    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def _records(n_good=5, bad_at=(2,)):
    recs = []
    for i in range(n_good + len(bad_at)):
        img = np.full((6, 6, 3), i, np.uint8)
        png = image_io.encode_png(img)
        if i in bad_at:
            png = png[: len(png) // 2]
        recs.append({"image": png, "label": image_io.encode_png(np.zeros((6, 6), np.uint8)),
                     "file_name": f"img_{i}.png", "index": i})
    return recs


def test_read_time_error_names_file():
    tr = pipeline.TrainTransform(config_lib.dataset_config(name="voc_aug"))
    rec = _records()[2]
    with pytest.raises(BadExampleError, match="img_2.png"):
        tr(rec, np.random.default_rng(0))
    mismatched = dict(_records()[0], label=image_io.encode_png(np.zeros((3, 6), np.uint8)))
    with pytest.raises(BadExampleError, match="img_0.png"):
        tr(mismatched, np.random.default_rng(0))


def test_read_time_skip_in_pipelines(monkeypatch, caplog):
    recs = _records(n_good=5, bad_at=(2,))
    monkeypatch.setattr(pipeline, "_open", lambda cfg, split, indices=None: ListSource(recs))
    cfg = config_lib.dataset_config(name="voc_aug", skip_bad_examples=True, read_threads=1,
                                    eval_mode="none")
    it = pipeline.make_train_iterator(cfg, split="train", batch_size=5, seed=0)
    batch = next(it)
    values = sorted(set(np.round(batch["image"][:, 0, 0, 0] + 122.67891434).astype(int)))
    assert values == [0, 1, 3, 4, 5]  # example 2 skipped, the epoch still fills the batch
    assert "img_2.png" in caplog.text
    ev = pipeline.make_eval_iterator(cfg, split="validation", batch_size=4)
    batches = list(ev)
    assert len(batches) == len(ev) == 2
    names = [n for b in batches for n, m in zip(b["file_name"], b["mask"]) if m]
    assert names == ["img_0.png", "img_1.png", "img_3.png", "img_4.png", "img_5.png"]
    cfg.skip_bad_examples = False
    with pytest.raises(BadExampleError, match="img_2.png"):
        list(pipeline.make_eval_iterator(cfg, split="validation", batch_size=4))
