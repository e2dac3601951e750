"""PyTorch checkpoint conversion: rules, file formats, bad inputs, round trips and the CLI.

Random-weight `.pth` files are written by the tests (nothing is downloaded). Models are
narrow (`width=16`, `ndf=16`) and shallow where the exact depth does not matter; one full
ResNet-101 round trip checks the real key set.
"""

import hashlib
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

import jax

from flax import traverse_util

from advseg_jax import model_io
from advseg_jax.models import ModelSpec, build
from advseg_jax.normalization import CAFFE_MEAN_BGR, IMAGENET_MEAN_BGR, IMAGENET_STD_BGR
from advseg_jax.cli.convert import define_flags, main
from advseg_jax.torch_port.convert import (ConversionError, convert_state_dict,
                                           load_torch_checkpoint, to_numpy_state_dict,
                                           to_torch_state_dict)

from tests import seeds
from tests.torch_ref import models as tr

TOL = 1e-5
SMALL = dict(layers=(1, 1, 1, 1), width=16)
SMALL_FLAGS = ["--depths", "1,1,1,1", "--width", "16"]
SMALL_KW = dict(depths=(1, 1, 1, 1), width=16)


def _sd(model):
  return {k: v.numpy() for k, v in tr.state_dict_without_counters(model).items()}


def _flat(variables):
  return {p: np.asarray(v) for p, v in traverse_util.flatten_dict(dict(variables)).items()}


def _assert_same_variables(a, b):
  fa, fb = _flat(a), _flat(b)
  assert fa.keys() == fb.keys()
  for k in fa:
    assert fa[k].dtype == fb[k].dtype and np.array_equal(fa[k], fb[k]), "/".join(k)


def _dir_digest(path):
  if not os.path.exists(path):
    return None
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    for f in sorted(files):
      full = os.path.join(root, f)
      h.update(full.encode())
      with open(full, "rb") as fh:
        h.update(fh.read())
  return h.hexdigest()


def _torch_eval(model, x_nchw):
  with torch.no_grad():
    out = model.eval()(torch.from_numpy(x_nchw))
  return tuple(o.numpy() for o in out) if isinstance(out, tuple) else out.numpy()


def _jax_eval(module, variables, x_nchw):
  out = jax.jit(module.apply)(variables, tr.nchw_to_nhwc(x_nchw))
  if isinstance(out, tuple):
    return tuple(tr.nhwc_to_nchw(np.asarray(o)) for o in out)
  return tr.nhwc_to_nchw(np.asarray(out))


@pytest.fixture(scope="module")
def small_res():
  """A narrow, shallow Res_Deeplab(21) with random weights and BN statistics."""
  rng, seed = tr.fresh_rng()
  model = tr.randomize_(tr.Res_Deeplab(21, **SMALL), seed=int(seed % 2**31))
  return model, rng, seed


def _run_cli(capsys, *argv):
  code = main(["convert", *map(str, argv)])
  out, err = capsys.readouterr()
  return code, out, err


# --------------------------------------------------------------------------- round trips
def test_full_depth_round_trip_exact():
  """Res_Deeplab(21) ResNet-101: torch -> Flax -> torch -> Flax, bitwise, in key order."""
  model = tr.randomize_(tr.Res_Deeplab(21))
  ref = tr.state_dict_without_counters(model)
  variables, report = convert_state_dict(_sd(model), ModelSpec("deeplabv2", 21))
  assert len(report.loaded) == 528 and not report.fresh
  back = to_torch_state_dict(variables, "deeplabv2")
  assert list(back) == list(ref)  # same keys, same order as model.state_dict()
  for k in ref:
    assert back[k].dtype == ref[k].dtype and torch.equal(back[k], ref[k]), k
  other = tr.Res_Deeplab(21)
  other.load_state_dict(back, strict=True)
  with_counters = to_torch_state_dict(variables, "deeplabv2", include_num_batches_tracked=True)
  assert list(with_counters) == list(model.state_dict())  # 632 keys
  other.load_state_dict(with_counters, strict=True)
  again, _ = convert_state_dict({k: v.numpy() for k, v in back.items()}, ModelSpec("deeplabv2", 21))
  _assert_same_variables(again, variables)


@pytest.mark.parametrize("arch", ["deeplabv2_multi", "fc_discriminator", "fc2_discriminator"])
def test_round_trip_other_archs(arch):
  if arch == "deeplabv2_multi":
    model, kw = tr.DeeplabMulti(19, **SMALL), SMALL_KW
  elif arch == "fc_discriminator":
    model, kw = tr.FCDiscriminator(19, ndf=16), dict(ndf=16)
  else:
    model, kw = tr.Dis(19, ndf=16), dict(ndf=16)
  tr.randomize_(model)
  ref = tr.state_dict_without_counters(model)
  variables, _ = convert_state_dict(_sd(model), ModelSpec(arch, 19, **kw))
  back = to_torch_state_dict(variables, arch)
  assert list(back) == list(ref)
  assert all(torch.equal(back[k], ref[k]) for k in ref)
  model.load_state_dict(back, strict=True)
  np_sd = to_numpy_state_dict(variables, arch)
  assert all(isinstance(v, np.ndarray) for v in np_sd.values())
  if arch == "fc2_discriminator":
    assert "conv5.weight" in np_sd and "classifier.weight" not in np_sd


def test_to_torch_rejects_wrong_arch(small_res):
  variables, _ = convert_state_dict(_sd(small_res[0]), ModelSpec("deeplabv2", 21, **SMALL_KW))
  with pytest.raises(ConversionError, match="not a deeplabv2_multi"):
    to_numpy_state_dict(variables, "deeplabv2_multi")
  with pytest.raises(ConversionError, match="arch must be one of"):
    to_numpy_state_dict(variables, "resnet")


# --------------------------------------------------------------------------- rules
def test_rule_advsemi(small_res):
  """Copy iff name and shape match: a 21-class checkpoint into a 19-class model."""
  model = small_res[0]
  sd = _sd(model)
  sd["extra.weight"] = np.zeros((3, 3), np.float32)
  variables, report = convert_state_dict(sd, ModelSpec("deeplabv2", 19, **SMALL_KW), rule="advsemi",
                                         seed=7)
  cls = [k for k in sd if k.startswith("layer5.")]
  assert len(cls) == 8
  assert sorted(k for k, _ in report.fresh) == sorted(cls)
  assert ("extra.weight", "not in model") in report.skipped
  assert all("shape mismatch" in why for k, why in report.skipped if k.startswith("layer5."))
  assert len(report.loaded) == len(sd) - 1 - 8
  flat = to_numpy_state_dict(variables, "deeplabv2")
  for k in report.loaded:
    assert np.array_equal(flat[k], sd[k]), k
  w = flat["layer5.conv2d_list.0.weight"]
  assert w.shape == (19, 512, 3, 3) and abs(w.std() - 0.01) < 1e-3
  bound = 1 / np.sqrt(512 * 9)
  assert np.abs(flat["layer5.conv2d_list.3.bias"]).max() <= bound
  again, _ = convert_state_dict(sd, ModelSpec("deeplabv2", 19, **SMALL_KW), rule="advsemi", seed=7)
  _assert_same_variables(again, variables)  # fresh init is a function of the seed
  other, _ = convert_state_dict(sd, ModelSpec("deeplabv2", 19, **SMALL_KW), rule="advsemi", seed=8)
  assert not np.array_equal(to_numpy_state_dict(other, "deeplabv2")[cls[0]], w)
  summary = report.summary()
  assert "freshly initialised 8" in summary and "layer5.conv2d_list.0.weight" in summary


def test_rule_adaptseg(small_res):
  """`Scale.`-prefixed COCO-style init (21-class layer5 on layer4) -> DeeplabMulti(19)."""
  model = small_res[0]
  sd = {"Scale." + k: v for k, v in _sd(model).items()}
  variables, report = convert_state_dict(sd, ModelSpec("deeplabv2_multi", 19, **SMALL_KW),
                                         rule="adaptseg")
  assert report.stripped_prefixes == {"Scale.": len(sd)}
  assert sorted(k for k, _ in report.skipped) == sorted(
      k[len("Scale."):] for k in sd if k.startswith("Scale.layer5."))
  assert all("num_classes == 19" in why for _, why in report.skipped)
  fresh = sorted(k for k, _ in report.fresh)
  assert len(fresh) == 16 and all(k.startswith(("layer5.", "layer6.")) for k in fresh)
  flat = to_numpy_state_dict(variables, "deeplabv2_multi")
  assert flat["layer5.conv2d_list.0.weight"].shape == (19, 256, 3, 3)  # aux head on layer3
  for k in report.loaded:
    assert np.array_equal(flat[k], sd["Scale." + k]), k
  # With num_classes != 19 the original copies layer5 too and fails on its shape.
  with pytest.raises(ConversionError, match=r"shape mismatch for key 'layer5\.conv2d_list\.0\."
                                            r"weight': expected \[21, 256, 3, 3\], found "
                                            r"\[21, 512, 3, 3\]"):
    convert_state_dict(sd, ModelSpec("deeplabv2_multi", 21, **SMALL_KW), rule="adaptseg")
  sd["Scale.layer9.weight"] = np.zeros(2, np.float32)
  with pytest.raises(ConversionError, match="unexpected key 'layer9.weight'"):
    convert_state_dict(sd, ModelSpec("deeplabv2_multi", 19, **SMALL_KW), rule="adaptseg")


def test_rule_torchvision():
  """An ImageNet-style torchvision-layout checkpoint (fc.*, counters, no classifier)."""
  rng, seed = tr.fresh_rng()
  model = tr.randomize_(tr.Res_Deeplab(21, stride_in_1x1=False, **SMALL), seed=int(seed % 2**31))
  tv = {k: v.numpy() for k, v in tr.torchvision_state_dict(model).items()}
  assert "fc.weight" in tv and "layer1.0.bn1.num_batches_tracked" in tv
  tv_spec = ModelSpec("deeplabv2", 21, stride_in_1x1=False, **SMALL_KW)  # the torchvision layout
  variables, report = convert_state_dict(tv, tv_spec, rule="torchvision")
  assert not report.notes
  _, msra_report = convert_state_dict(tv, tv_spec.replace(stride_in_1x1=True), rule="torchvision")
  assert any("not equivalent" in n for n in msra_report.notes)  # MSRA layout != ImageNet's
  assert sorted(report.ignored) == sorted(k for k in tv if k.startswith("fc.")
                                          or k.endswith("num_batches_tracked"))
  assert sorted(k for k, _ in report.fresh) == sorted(
      k for k in _sd(model) if k.startswith("layer5."))
  # Put the fresh Flax classifier into the torch model, then the whole nets must agree.
  model.load_state_dict(to_torch_state_dict(variables, "deeplabv2"), strict=True)
  x = rng.normal(0, 60, (2, 3, 67, 50)).astype(np.float32)
  want = _torch_eval(model, x)
  module = build(tv_spec)
  err = tr.rel_err(_jax_eval(module, variables, x), want)
  print(f"torchvision layout (stride_in_1x1=False) rel err {err:.2e}")
  assert err <= TOL, f"seed {seed}: {err}"
  msra = build(tv_spec.replace(stride_in_1x1=True))
  assert tr.rel_err(_jax_eval(msra, variables, x), want) > 1e-2  # the layout matters
  # strict + torchvision layout: a full torchvision-layout state_dict plus fc.* loads too.
  full = dict(_sd(model), **{k: tv[k] for k in ("fc.weight", "fc.bias")})
  strict, _ = convert_state_dict(full, tv_spec)
  _assert_same_variables(strict, variables)
  del tv["layer3.0.conv2.weight"]
  with pytest.raises(ConversionError, match=r"missing key 'layer3\.0\.conv2\.weight'"):
    convert_state_dict(tv, tv_spec, rule="torchvision")
  with pytest.raises(ConversionError, match="torchvision"):
    convert_state_dict(tv, ModelSpec("fc_discriminator", 21), rule="torchvision")


# --------------------------------------------------------------------------- file formats
def test_wrappers_prefixes_and_serialisations(tmp_path, small_res):
  model = small_res[0]
  sd = tr.state_dict_without_counters(model)
  reference, _ = convert_state_dict(_sd(model), ModelSpec("deeplabv2", 21, **SMALL_KW))
  variants = {
      "plain_zip.pth": (model.state_dict(), True),  # with num_batches_tracked
      "plain_legacy.pth": (sd, False),
      "wrapped_state_dict.pth": ({"state_dict": sd}, True),
      "wrapped_model.pth": ({"model": sd}, True),
      "dataparallel_snapshot.pth": ({"epoch": 3, "miou": 0.71,
                                     "state_dict": {"module." + k: v for k, v in sd.items()}},
                                    True),
      "scale_prefix_legacy.pth": ({"Scale." + k: v for k, v in sd.items()}, False),
  }
  for name, (obj, zip_format) in variants.items():
    path = tmp_path / name
    torch.save(obj, path, _use_new_zipfile_serialization=zip_format)
    with open(path, "rb") as f:
      assert (f.read(2) == b"PK") == zip_format
    got = load_torch_checkpoint(str(path), ModelSpec("deeplabv2", 21, **SMALL_KW))
    _assert_same_variables(got, reference)
  half = {k: v.half() for k, v in sd.items()}
  torch.save(half, tmp_path / "half.pth")
  got = load_torch_checkpoint(str(tmp_path / "half.pth"), ModelSpec("deeplabv2", 21, **SMALL_KW))
  assert all(np.asarray(v).dtype == np.float32 for v in _flat(got).values())


# --------------------------------------------------------------------------- bad inputs
def _bad_checkpoints(tmp_path, model):
  sd = dict(tr.state_dict_without_counters(model))
  cases = {}
  missing = dict(sd)
  del missing["layer1.0.conv2.weight"]
  cases["missing"] = (missing, [r"missing key 'layer1.0.conv2.weight'", r"\[16, 16, 3, 3\]"])
  unexpected = dict(sd, **{"layer1.0.conv4.weight": torch.zeros(4, 4, 1, 1)})
  cases["unexpected"] = (unexpected, [r"unexpected key 'layer1.0.conv4.weight'",
                                      r"\[4, 4, 1, 1\]"])
  misshaped = dict(sd, **{"layer2.0.bn1.running_var": torch.ones(33)})
  cases["misshaped"] = (misshaped, [r"shape mismatch for key 'layer2.0.bn1.running_var'",
                                    r"expected \[32\], found \[33\]"])
  out = {}
  for name, (obj, patterns) in cases.items():
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path)
    out[name] = (path, patterns)
  text = tmp_path / "notes.pth"
  text.write_text("this is not a checkpoint\n")
  out["not_a_checkpoint"] = (text, ["not a PyTorch checkpoint"])
  for fmt, zip_format in (("zip", True), ("legacy", False)):
    good = tmp_path / f"good_{fmt}.pth"
    torch.save(sd, good, _use_new_zipfile_serialization=zip_format)
    data = good.read_bytes()
    cut = tmp_path / f"truncated_{fmt}.pth"
    cut.write_bytes(data[: len(data) // 2])
    out[f"truncated_{fmt}"] = (cut, [f"truncated or corrupt {fmt}-format"])
  empty = tmp_path / "empty.pth"
  empty.write_bytes(b"")
  out["empty"] = (empty, ["empty file"])
  out["no_such_file"] = (tmp_path / "nope" / "missing.pth", ["no such file"])
  out["directory"] = (tmp_path, ["is a directory"])
  pickled = tmp_path / "pickled_objects.pth"
  torch.save({"state_dict": sd, "args": Namespace(lr=1)}, pickled)
  out["python_objects"] = (pickled, ["--trust_pickle"])
  return out


class Namespace:  # a non-tensor Python object, as in snapshots that saved argparse args
  def __init__(self, **kw):
    self.__dict__.update(kw)


def test_bad_inputs_fail_cleanly(tmp_path, capsys, small_res):
  """One `error:` line naming file/key/shapes, exit code 2, output dir untouched."""
  (tmp_path / "in").mkdir()
  cases = _bad_checkpoints(tmp_path / "in", small_res[0])
  existing = tmp_path / "existing_model"
  existing.mkdir()
  (existing / "keep.txt").write_text("do not touch")
  before = _dir_digest(existing)
  for name, (path, patterns) in cases.items():
    for target, extra in ((tmp_path / f"out_{name}", []), (existing, ["--overwrite"])):
      code, out, err = _run_cli(capsys, path, target, "--arch", "deeplabv2", "--num_classes",
                                21, *SMALL_FLAGS, *extra)
      assert code == 2, (name, out, err)
      lines = err.strip().splitlines()
      assert len(lines) == 1 and lines[0].startswith("error: "), (name, err)
      assert "Traceback" not in err
      assert str(path) in lines[0], (name, lines[0])
      for pattern in patterns:
        assert re.search(pattern, lines[0]), (name, pattern, lines[0])
      assert not os.path.exists(tmp_path / f"out_{name}"), name
      assert _dir_digest(existing) == before, name
  assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp dirs left
  # --trust_pickle opts into torch.load(weights_only=False) for trusted files.
  path = cases["python_objects"][0]
  code, _, err = _run_cli(capsys, path, tmp_path / "trusted", "--arch", "deeplabv2",
                          "--num_classes", 21, *SMALL_FLAGS, "--trust_pickle", "--quiet")
  assert code == 0, err


def test_random_bytes_are_not_a_checkpoint(tmp_path, capsys):
  """A file of random bytes is "not a PyTorch checkpoint" (the format is checked before
  torch.load, whose weights-only error used to advise --trust_pickle)."""
  rng = np.random.default_rng(seeds.draw())
  for i in range(8):
    data = bytearray(rng.integers(0, 256, size=4096, dtype=np.uint8).tobytes())
    if data[:2] == b"PK" or data[0] == 0x80:  # a zip or pickle start: not random enough
      data[0] = 0x41
    path = tmp_path / f"random{i}.pth"
    path.write_bytes(bytes(data))
    code, _, err = _run_cli(capsys, path, tmp_path / f"out{i}", "--arch", "deeplabv2",
                            "--num_classes", 21, *SMALL_FLAGS)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: {path}: not a PyTorch checkpoint"), lines[0]
    assert "trust_pickle" not in err, err
    assert not os.path.exists(tmp_path / f"out{i}")


def test_refuses_to_overwrite(tmp_path, capsys, small_res):
  ckpt = tmp_path / "m.pth"
  torch.save(tr.state_dict_without_counters(small_res[0]), ckpt)
  out_dir = tmp_path / "model"
  out_dir.mkdir()
  (out_dir / "old.txt").write_text("old")
  before = _dir_digest(out_dir)
  code, _, err = _run_cli(capsys, ckpt, out_dir, "--arch", "deeplabv2", "--num_classes", 21,
                          *SMALL_FLAGS)
  assert code == 2 and "not empty" in err and "--overwrite" in err
  assert _dir_digest(out_dir) == before
  code, _, err = _run_cli(capsys, ckpt, out_dir, "--arch", "deeplabv2", "--num_classes", 21,
                          *SMALL_FLAGS, "--overwrite")
  assert code == 0, err
  assert sorted(os.listdir(out_dir)) == ["model.json", "variables"]
  with pytest.raises(model_io.ModelFormatError, match="not empty"):
    model_io.save_model(str(out_dir), *model_io.load_model(str(out_dir)))
  # Relative paths work (orbax itself needs absolute ones).
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    variables, spec = model_io.load_model("model")
    model_io.save_model("copy", variables, spec)
  finally:
    os.chdir(cwd)
  _assert_same_variables(model_io.load_model(str(tmp_path / "copy"))[0], variables)
  with pytest.raises(model_io.ModelFormatError, match="model.json is missing"):
    model_io.load_model(str(tmp_path))
  code, _, err = _run_cli(capsys, "--reverse", tmp_path, tmp_path / "x.pth")
  assert code == 2 and "model.json is missing" in err


def test_model_directories_of_the_old_format_load(tmp_path):
  """model.json as written before ModelSpec (no dtype, `fc_discriminator` arch names, metadata
  keys) still loads, and builds the model it describes."""
  old_docs = {
      "generator": {"format": "advseg_jax.model", "format_version": 1, "kind": "generator",
                    "arch": "deeplabv2", "num_classes": 5, "depths": [1, 1, 1, 1], "width": 8,
                    "stride_in_1x1": True, "aspp_branches_used": 2, "bn_mode": "batch_stats",
                    "channel_order": "BGR", "mean_bgr": [104.0, 116.0, 122.0],
                    "source": {"file": "x.pth", "sha256": "00", "rule": "strict"}},
      "discriminator": {"format": "advseg_jax.model", "format_version": 1,
                        "kind": "discriminator", "arch": "fc_discriminator", "num_classes": 5,
                        "ndf": 8, "gan": "vanilla", "level": "main", "step": 3},
  }
  for kind, doc in old_docs.items():
    spec = ModelSpec.from_json(doc)
    assert spec.dtype == "float32" and spec.kind == kind
    variables = jax.tree.map(np.asarray, build(spec).init(
        jax.random.key(0), np.zeros(spec.input_shape(), np.float32)))
    directory = tmp_path / kind
    model_io.save_model(str(directory), variables, spec)
    with open(directory / model_io.SPEC_FILE, "w") as f:  # what the old code wrote
      json.dump(doc, f, indent=2)
    loaded, got = model_io.load_model(str(directory))
    assert got == {k: v for k, v in doc.items() if k not in ("format", "format_version")}
    _assert_same_variables(loaded, variables)
    assert ModelSpec.from_json(got) == spec
    model_io.save_model(str(tmp_path / f"{kind}_again"), loaded, got)  # metadata kept
    _, again = model_io.load_model(str(tmp_path / f"{kind}_again"))
    assert again == dict(got, dtype="float32")


# --------------------------------------------------------------------------- CLI
ARCH_CASES = {
    "deeplabv2": (lambda: tr.Res_Deeplab(21, aspp_branches=4, **SMALL), 21,
                  ["--aspp_branches_used", "4", *SMALL_FLAGS], (3, 67, 54)),
    "deeplabv2_multi": (lambda: tr.DeeplabMulti(19, **SMALL), 19, SMALL_FLAGS, (3, 65, 64)),
    "fc_discriminator": (lambda: tr.FCDiscriminator(19, ndf=16), 19, ["--ndf", "16"],
                         (19, 97, 64)),
    "fc2_discriminator": (lambda: tr.Dis(21, ndf=16), 21, ["--ndf", "16"], (21, 65, 97)),
}


@pytest.mark.parametrize("arch", list(ARCH_CASES))
def test_cli_convert_and_reverse(arch, tmp_path, capsys):
  make, ncls, flags, in_shape = ARCH_CASES[arch]
  rng, seed = tr.fresh_rng()
  model = tr.randomize_(make(), seed=int(seed % 2**31))
  ckpt = tmp_path / f"{arch}-deadbeef.pth"
  torch.save(model.state_dict(), ckpt)
  out_dir = tmp_path / "converted"
  code, out, err = _run_cli(capsys, ckpt, out_dir, "--arch", arch, "--num_classes", ncls, *flags)
  assert code == 0, err
  assert f"loaded  {len(tr.state_dict_without_counters(model))} tensors" in out
  assert "does not start with the deadbeef" in out  # model_zoo-style hash suffix check
  variables, spec = model_io.load_model(str(out_dir))
  assert spec["arch"] == arch and spec["num_classes"] == ncls
  assert spec["source"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
  if arch.startswith("deeplab"):
    assert spec["channel_order"] == ("RGB" if arch == "deeplabv2" else "BGR")
    assert spec["aspp_branches_used"] == (4 if arch == "deeplabv2" else 2)
    assert spec["mean_bgr"] == list(CAFFE_MEAN_BGR) and spec["stride_in_1x1"] is True
  x = rng.normal(0, 60 if arch.startswith("deeplab") else 1, (2,) + in_shape).astype(np.float32)
  want = _torch_eval(model, x)
  got = _jax_eval(build(spec), variables, x)
  pairs = zip(got, want) if isinstance(want, tuple) else [(got, want)]
  for g, w in pairs:
    err_ = tr.rel_err(g, w)
    with capsys.disabled():
      print(f"CLI {arch}: rel err {err_:.2e}")
    assert err_ <= TOL, f"seed {seed}: {err_}"
  back = tmp_path / "back.pth"
  code, out, err = _run_cli(capsys, "--reverse", out_dir, back, "--legacy_format")
  assert code == 0, err
  restored = torch.load(back, weights_only=True)
  ref = tr.state_dict_without_counters(model)
  assert list(restored) == list(ref) and all(torch.equal(restored[k], ref[k]) for k in ref)
  fresh = make()
  fresh.load_state_dict(restored, strict=True)
  code, _, err = _run_cli(capsys, "--reverse", out_dir, back)
  assert code == 2 and "exists" in err


def test_cli_records_the_imagenet_normalization(tmp_path, capsys):
  """--normalization imagenet: torchvision's mean and std in model.json, so evaluate and
  predict divide by the std as the ICLR-2018 reproduction's ToTensor + Normalize did."""
  make, ncls, flags, _ = ARCH_CASES["deeplabv2"]
  ckpt = tmp_path / "tv.pth"
  torch.save(make().state_dict(), ckpt)
  specs = {}
  for norm in ("caffe", "imagenet"):
    code, _, err = _run_cli(capsys, ckpt, tmp_path / norm, "--arch", "deeplabv2",
                            "--num_classes", ncls, "--normalization", norm, *flags)
    assert code == 0, err
    specs[norm] = model_io.load_model(str(tmp_path / norm))[1]
  assert specs["caffe"]["mean_bgr"] == list(CAFFE_MEAN_BGR) and "std_bgr" not in specs["caffe"]
  assert specs["imagenet"]["mean_bgr"] == pytest.approx(IMAGENET_MEAN_BGR)
  assert specs["imagenet"]["std_bgr"] == pytest.approx(IMAGENET_STD_BGR)
  assert ModelSpec.from_json(specs["imagenet"]).std_bgr == pytest.approx(IMAGENET_STD_BGR)
  code, _, err = _run_cli(capsys, ckpt, tmp_path / "x", "--arch", "deeplabv2",
                          "--num_classes", ncls, "--normalization", "vgg", *flags)
  assert code == 2 and "normalization" in err


def test_cli_help_mentions_every_flag(capsys):
  code = main(["convert", "--help"])
  out = capsys.readouterr().out
  assert code == 0
  fv = define_flags()
  flags = {f"--{fv[name].name}" for name in fv}
  assert all(fv[name].help for name in fv)
  required = {"--arch", "--num_classes", "--rule", "--aspp_branches_used", "--channel_order",
              "--depths", "--stride_in_1x1", "--torchvision_layout", "--overwrite", "--reverse"}
  assert required <= flags
  for flag in flags:
    assert flag in out, flag
  for word in ("strict", "advsemi", "adaptseg", "torchvision", "RGB", "BGR", "INPUT", "OUTPUT"):
    assert word in out
  assert main(["--arch", "nope", "a", "b"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: ") and "--arch" in err[0], err
  assert "deeplabv2" in err[0]  # absl names the allowed values


def test_core_imports_without_torch():
  code = ("import sys; sys.modules['torch'] = None\n"
          "import advseg_jax, advseg_jax.torch_port.convert, advseg_jax.model_io, advseg_jax.torch_port.pth\n"
          "from advseg_jax.torch_port.convert import ConversionError, read_state_dict\n"
          "try:\n  read_state_dict('x.pth')\nexcept ConversionError as e:\n  print(e)\n")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       timeout=120)
  assert res.returncode == 0, res.stderr
  assert "needs PyTorch" in res.stdout
