"""`predict` end to end on a folder of images of different sizes, plus visualize helpers."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from advseg_jax import data, model_io, models, visualize
from advseg_jax.cli import predict
from advseg_jax.data import image_io
from advseg_jax.inference import predict as predict_lib
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
  # A second run skips the images whose outputs exist (the overlay is not asked for).
  assert predict.main([str(paths[0]), "-c", path, "-o", str(out), "--no_overlay",
                       "--no_progress"]) == 0
  assert sorted(os.listdir(out)) == ["img0.png", "img1.png"]


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


class _CountingPredictor:
  """Stands in for `make_label_fn`: records the batch shapes, predicts class 0 everywhere."""

  def __init__(self):
    self.shapes = []

  def make(self, model, flip=False, scales=(1.0,)):  # noqa: ARG002 (make_label_fn's signature)
    def label_fn(variables, batch, out_hw):  # noqa: ARG001
      self.shapes.append(tuple(batch.shape))
      n = batch.shape[0]
      return np.zeros((n,) + tuple(out_hw), np.int32), np.ones((n,) + tuple(out_hw), np.float32)
    return label_fn


@pytest.fixture
def counting(monkeypatch):
  counter = _CountingPredictor()
  monkeypatch.setattr(predict_lib, "make_label_fn", counter.make)
  return counter


def test_single_image_is_not_padded_to_the_batch_size(model_dir, images, tmp_path, counting):
  path, _, _ = model_dir
  _, paths = images
  assert predict.main([str(paths[0]), "-c", path, "-o", str(tmp_path / "o"), "--batch_size",
                       "8", "--no_progress"]) == 0
  assert counting.shapes == [(1, 64, 64, 3)]  # 40x52 padded to multiples of 32, one image
  assert predict.main([str(p) for p in paths] + ["-c", path, "-o", str(tmp_path / "p"),
                                                  "--batch_size", "8", "--no_progress"]) == 0
  # padded to multiples of 32: three images share 64x64, one is 96x32
  assert sorted(s[:3] for s in counting.shapes[1:]) == [(1, 96, 32), (3, 64, 64)]


def test_16_bit_png_is_scaled_not_clipped(tmp_path):
  grey = np.linspace(0, 65535, 64 * 48).astype(np.uint16).reshape(48, 64)
  p = tmp_path / "deep.png"
  Image.fromarray(grey).save(p)
  assert Image.open(p).mode.startswith("I")
  rgb = image_io.decode_image(str(p), str(p))
  assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
  want = np.round(grey / 257.0).astype(np.uint8)
  assert np.abs(rgb[..., 0].astype(int) - want).max() <= 1
  assert (rgb == 255).mean() < 0.01  # Pillow's convert('RGB') made 99.6% of it white


def test_skip_bad_reports_and_a_rerun_continues(model_dir, tmp_path, capsys, counting):
  path, _, _ = model_dir
  folder = tmp_path / "in"
  folder.mkdir()
  for i in range(3):
    Image.fromarray(np.full((20, 30, 3), 60 * i, np.uint8)).save(folder / f"ok{i}.png")
  (folder / "garbage.png").write_bytes(b"not a png at all")
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(noise).save(folder / "cut.png")
  whole = (folder / "cut.png").read_bytes()
  (folder / "cut.png").write_bytes(whole[:len(whole) // 2])  # header fine, data truncated
  out = tmp_path / "out"
  argv = [str(folder), "-c", path, "-o", str(out), "--no_progress"]
  assert predict.main(argv) == 2
  line = capsys.readouterr().err.strip().splitlines()[-1]
  assert "garbage.png" in line and "--skip_bad" in line, line
  assert predict.main(argv + ["--skip_bad"]) == 0
  captured = capsys.readouterr()
  warned = [l for l in captured.err.splitlines() if l.startswith("warning: skipped ")]
  assert len(warned) == 2 and any("garbage.png" in l for l in warned) and any(
      "cut.png" in l for l in warned), captured.err
  assert "wrote 3 label PNGs" in captured.out and "skipped 2 images that cannot be read" in \
      captured.out
  assert all((out / f"ok{i}.png").exists() and (out / f"ok{i}_overlay.png").exists()
             for i in range(3))
  assert not [n for n in os.listdir(out) if "partial" in n]
  # an interrupted run: one image lacks its overlay; the rerun redoes only that one
  os.remove(out / "ok1_overlay.png")
  counting.shapes.clear()
  assert predict.main(argv + ["--skip_bad"]) == 0
  captured = capsys.readouterr()
  assert counting.shapes == [(1, 32, 32, 3)], counting.shapes
  assert "skipped 2 images whose outputs exist" in captured.out, captured.out
  assert (out / "ok1_overlay.png").exists()
