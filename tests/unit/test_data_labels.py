"""Label tables, lookup tables, palettes and the dataset registry."""

import numpy as np
import pytest

from advseg_jax import data
from advseg_jax.data import image_io
from advseg_jax.data import labels as L


def test_fallback_table_equals_cityscapesscripts():
  cs = pytest.importorskip("cityscapesscripts.helpers.labels")
  ours = L.cityscapes_label_table(use_package=False)
  theirs = [(l.name, l.id, l.trainId, tuple(l.color)) for l in cs.labels]
  assert [(l.name, l.id, l.train_id, l.color) for l in ours] == theirs


def test_cityscapes_mapping_is_adaptsegnet_label2train():
  assert L.cityscapes_id_to_train_id(L.cityscapes_label_table(use_package=False)) == {
      7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11,
      25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
  assert L.CITYSCAPES_CLASS_NAMES[0] == "road" and L.CITYSCAPES_CLASS_NAMES[18] == "bicycle"
  assert L.CITYSCAPES_PALETTE.shape == (19, 3) and tuple(L.CITYSCAPES_PALETTE[0]) == (128, 64, 128)


def test_lut_maps_ignores_and_flags_invalid():
  lut = L.make_lut({7: 0, 26: 13}, L.CITYSCAPES_VALID_RAW_IDS)
  raw = np.array([[7, 26, 0, 33], [255, 34, 200, 7]], np.uint8)
  mapped, bad = L.apply_lut(raw, lut)
  np.testing.assert_array_equal(mapped, [[0, 13, 255, 255], [255, 255, 255, 0]])
  assert bad.tolist() == [34, 200]
  mapped16, bad16 = L.apply_lut(np.array([3, 300], np.uint16), L.make_lut({3: 1}, range(23)))
  assert mapped16.tolist() == [1, 255] and bad16.tolist() == [300]


def test_voc_palette_known_entries():
  assert tuple(L.VOC_PALETTE[0]) == (0, 0, 0)
  assert tuple(L.VOC_PALETTE[1]) == (128, 0, 0)
  assert tuple(L.VOC_PALETTE[15]) == (192, 128, 128)
  assert tuple(L.voc_palette(256)[255]) == (224, 224, 192)


def test_synthia_protocols():
  m16, m13 = L.synthia_mapping("16"), L.synthia_mapping("13")
  assert sorted(m16.values()) == list(range(16)) and sorted(m13.values()) == list(range(13))
  assert 16 not in m16 and 18 not in m16 and 20 not in m16          # terrain, truck, train
  assert 21 not in m13 and 5 not in m13 and 7 not in m13            # wall, fence, pole
  lut = L.cityscapes_to_protocol_lut("13")
  assert lut[0] == 0 and lut[3] == 255 and lut[18] == 12


@pytest.mark.parametrize("name,k,order", [("voc_aug", 21, "RGB"), ("cityscapes", 19, "BGR"),
                                          ("gta5", 19, "BGR"), ("synthia", 16, "BGR"),
                                          ("synthia/13", 13, "BGR"), ("shapes", 5, "RGB")])
def test_get_info(name, k, order):
  info = data.get_info(name)
  assert info.num_classes == k == len(info.class_names) == info.palette.shape[0]
  assert info.palette.dtype == np.uint8 and info.ignore_label == 255
  assert info.default_channel_order == order
  assert info.mean_bgr == (104.00698793, 116.66876762, 122.67891434)


def test_get_info_errors():
  with pytest.raises(KeyError):
    data.get_info("imagenet")
  with pytest.raises(ValueError):
    data.get_info("synthia/12")


@pytest.mark.parametrize("channels", [3, 4])
def test_decode_label_16bit_png_all_filters(channels):
  rng = np.random.default_rng(0)
  arr = rng.integers(0, 65536, (9, 7, channels)).astype(np.uint16)
  png = image_io.encode_png16(arr, filters=(0, 1, 2, 3, 4))
  for ch in range(channels):
    np.testing.assert_array_equal(image_io.decode_label(png, "x", channel=ch), arr[..., ch])


def test_decode_label_16bit_png_high_byte_matches_pillow():
  # Pillow alone reads the high byte of each sample: the encoder's rows are valid PNG
  from PIL import Image
  import io
  arr = np.random.default_rng(1).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
  png = image_io.encode_png16(arr, filters=(1, 3, 4))
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), arr >> 8)


def test_decode_label_16bit_png_truncated_names_file():
  arr = np.random.default_rng(2).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
  png = image_io.encode_png16(arr)
  with pytest.raises(image_io.BadExampleError, match="lbl.png"):
    image_io.decode_label(png[:len(png) // 2], "lbl.png")
