"""`predict` end to end on a folder of images of different sizes, plus visualize helpers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from advseg_jax import data, model_io, models, visualize
from advseg_jax.cli import predict
from advseg_jax.data import transforms as T
from advseg_jax.models.deeplab import upsample_logits
from advseg_jax.models.spec import ModelSpec

SIZES = [(40, 52), (33, 33), (70, 21), (40, 52)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  spec = ModelSpec("deeplabv2", 21, depths="tiny", width=8, channel_order="RGB").to_json()
  model = models.build(spec)
  variables = model.init(jax.random.PRNGKey(3), jnp.zeros((1, 33, 33, 3)))
  # Larger classifier weights so that predictions vary over the image.
  variables = jax.tree_util.tree_map_with_path(
      lambda p, v: v * 300.0 if "layer5" in jax.tree_util.keystr(p) and
      "kernel" in jax.tree_util.keystr(p) else v, variables)
  path = str(tmp_path_factory.mktemp("model") / "voc_tiny")
  model_io.save_model(path, variables, spec)
  return path, variables, spec


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  root = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  paths = []
  for i, (h, w) in enumerate(SIZES):
    sub = root / ("nested" if i == 3 else "")
    sub.mkdir(exist_ok=True)
    p = sub / f"img{i}.{'png' if i % 2 else 'jpg'}"
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(xx * 255 // w), (yy * 255 // h), rng.integers(0, 255, (h, w))], -1)
    Image.fromarray(img.astype(np.uint8)).save(p)
    paths.append(p)
  (root / "notes.txt").write_text("not an image")
  return root, paths


@pytest.mark.slow
def test_predict_folder(model_dir, images, tmp_path, capsys):
  path, variables, spec = model_dir
  root, paths = images
  out = tmp_path / "out"
  rc = predict.main([str(root), "-c", path, "-o", str(out), "--batch_size", "2",
                     "--save_confidence", "--no_progress"])
  assert rc == 0, capsys.readouterr().err
  assert "wrote 4 label PNGs" in capsys.readouterr().out
  palette = visualize.full_palette(data.get_info("voc_aug").palette)
  for i, p in enumerate(paths):
    rel = os.path.splitext(os.path.relpath(p, root))[0]
    label = Image.open(out / f"{rel}.png")
    h, w = SIZES[i]
    assert label.mode == "P" and label.size == (w, h)
    assert np.array_equal(np.array(label.getpalette()[:768]).reshape(256, 3), palette)
    ids = np.array(label)
    assert ids.max() < 21
    over = Image.open(out / f"{rel}_overlay.png")
    assert over.mode == "RGB" and over.size == (w, h)
    assert Image.open(out / f"{rel}_confidence.png").size == (w, h)
  # The native-size pixels of image 1 equal a direct forward at that size (pad mode crops).
  img = np.asarray(Image.open(paths[1]).convert("RGB"))
  x = T.subtract_mean(img, spec["mean_bgr"], "RGB")
  x = np.pad(x, ((0, 64 - 33), (0, 64 - 33), (0, 0)))  # pad to the multiple of 32
  logits = models.build(spec).apply(variables, jnp.asarray(x[None]))
  want = np.asarray(upsample_logits(logits, (64, 64)))[0, :33, :33].argmax(-1)
  got = np.array(Image.open(out / "img1.png"))
  assert np.mean(got == want) > 0.999
  assert len(np.unique(got)) >= 2


def test_predict_single_file_native_and_glob(model_dir, images, tmp_path):
  path, _, _ = model_dir
  root, paths = images
  out = tmp_path / "o"
  assert predict.main([str(paths[0]), str(root / "*.png"), "-c", path, "-o", str(out),
                       "--mode", "native", "--no_overlay", "--flip", "--no_progress"]) == 0
  names = sorted(os.listdir(out))
  assert names == ["img0.png", "img1.png"]
  assert Image.open(out / "img0.png").size == (52, 40)
  # A second run refuses to overwrite.
  assert predict.main([str(paths[0]), "-c", path, "-o", str(out), "--no_progress"]) == 2


def _error(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: "), err
  return err[0]


def test_bad_inputs(model_dir, images, tmp_path, capsys):
  path, _, _ = model_dir
  root, _ = images
  assert predict.main([str(tmp_path / "missing.jpg"), "-c", path, "-o", str(tmp_path)]) == 2
  assert "no such file" in _error(capsys)
  assert predict.main([str(root), "-c", str(tmp_path / "nomodel"), "-o", str(tmp_path)]) == 2
  assert "no such file or directory" in _error(capsys)
  assert predict.main([str(root), "-c", path, "-o", str(tmp_path / "x"), "--dataset",
                       "cityscapes"]) == 2
  assert "21 classes" in _error(capsys)
  bad = tmp_path / "bad.png"
  bad.write_bytes(b"not a png")
  assert predict.main([str(bad), "-c", path, "-o", str(tmp_path / "y")]) == 2
  assert "bad.png" in _error(capsys)


def test_help_explains_every_flag(capsys):
  assert predict.main(["--help"]) == 0
  text = capsys.readouterr().out
  fv = predict.define_flags()
  for name in fv:
    flag = fv[name]
    assert f"--{flag.name}" in text and flag.help, name
    if flag.short_name:
      assert f"-{flag.short_name}, --{flag.name}" in text
  assert "INPUT" in text


def test_visualize_helpers():
  pal = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
  lab = np.array([[0, 1], [2, 255]])
  rgb = visualize.colorize(lab, pal)
  assert rgb[0, 1].tolist() == [255, 0, 0] and rgb[1, 1].tolist() == list(visualize.IGNORE_COLOR)
  img = np.full((2, 2, 3), 100, np.uint8)
  over = visualize.overlay(img, lab, pal, alpha=0.5)
  assert over[0, 1].tolist() == [178, 50, 50] and over[1, 1].tolist() == [100, 100, 100]
  x = T.subtract_mean(img, (104.0, 117.0, 123.0), "BGR")
  assert np.array_equal(visualize.to_display_rgb(x, (104.0, 117.0, 123.0), "BGR"), img)


def test_predict_from_torch_checkpoint_matches_model_dir(model_dir, images, tmp_path):
  """A .pth of the same weights (class count read off the file) gives the same labels."""
  from advseg_jax.torch_port import convert
  path, variables, _ = model_dir
  _, paths = images
  pth = str(tmp_path / "same.pth")
  convert.save_torch_checkpoint(variables, "deeplabv2", pth)
  a, b = tmp_path / "a", tmp_path / "b"
  assert predict.main([str(paths[0]), "-c", path, "-o", str(a), "--no_overlay",
                       "--no_progress"]) == 0
  assert predict.main([str(paths[0]), "--torch_checkpoint", pth, "--arch", "deeplabv2",
                       "--depths", "tiny", "--width", "8", "--channel_order", "RGB", "-o",
                       str(b), "--no_overlay", "--no_progress"]) == 0
  assert np.array_equal(np.array(Image.open(a / "img0.png")), np.array(Image.open(b / "img0.png")))
