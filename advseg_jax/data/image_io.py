"""Decoding and encoding of image and label files with Pillow (no TensorFlow, no OpenCV).

Layouts: images are `uint8 [H, W, 3]` in RGB order; label maps are `[H, W]` (`uint8`, or
`uint16` for 16-bit sources). Every failure raises `BadExampleError` naming the file.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Optional, Union

import numpy as np
from PIL import Image

from advseg_jax.data.errors import BadExampleError

Source = Union[str, os.PathLike, bytes]

__all__ = ["BadExampleError", "Source", "decode_image", "decode_label", "encode_jpeg",
           "encode_png", "encode_png16", "image_size"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour type -> Pillow mode of a 16-bit-per-channel colour PNG (RGB, RGB + alpha).
_PNG16_COLOUR_MODES = {2: "RGB", 6: "RGBA"}


def _read(src: Source, name: str) -> bytes:
  """The encoded bytes of `src` (a path or the bytes themselves)."""
  if isinstance(src, (bytes, bytearray, memoryview)):
    return bytes(src)
  try:
    with open(os.fspath(src), "rb") as f:
      return f.read()
  except FileNotFoundError as e:
    raise BadExampleError(name, "file is missing") from e
  except OSError as e:
    raise BadExampleError(name, f"cannot be read ({e})") from e


def _open(src: Source, name: str) -> Image.Image:
  try:
    if isinstance(src, (bytes, bytearray, memoryview)):
      return Image.open(io.BytesIO(bytes(src)))
    return Image.open(os.fspath(src))
  except FileNotFoundError as e:
    raise BadExampleError(name, "file is missing") from e
  except Exception as e:  # PIL.UnidentifiedImageError, OSError, ...
    raise BadExampleError(name, f"cannot be read as an image ({e})") from e


def _load(im: Image.Image, name: str) -> None:
  """Forces a full decode so that truncated or corrupt data is detected now."""
  try:
    im.load()
  except Exception as e:
    raise BadExampleError(name, f"corrupt or truncated image data ({e})") from e


_GREY16_MODES = ("I;16", "I;16B", "I;16L", "I")


def _grey16_to_rgb8(im: Image.Image, name: str) -> np.ndarray:
  """A 16-bit grey image scaled to `uint8 [H, W, 3]` (65535 -> 255; Pillow's
  `convert('RGB')` would clip every value above 255 to white)."""
  arr = np.asarray(im).astype(np.int64)
  if arr.size and (arr.min() < 0 or arr.max() > 65535):
    raise BadExampleError(name, f"{im.mode} image values outside 0..65535, expected a 16-bit "
                          f"image")
  grey = ((arr * 255 + 32767) // 65535).astype(np.uint8)
  return np.repeat(grey[..., None], 3, axis=-1)


def decode_image(src: Source, name: str = "<bytes>") -> np.ndarray:
  """Decodes an image file or encoded bytes to `uint8 [H, W, 3]` RGB (Pillow `convert('RGB')`;
  16-bit grey images are scaled to 8 bits)."""
  im = _open(src, name)
  _load(im, name)
  if im.mode in _GREY16_MODES:
    return _grey16_to_rgb8(im, name)
  if im.mode != "RGB":
    im = im.convert("RGB")
  return np.asarray(im, dtype=np.uint8)


def image_size(src: Source, name: str = "<bytes>") -> tuple[int, int]:
  """`(height, width)` from the header only (cheap)."""
  im = _open(src, name)
  return im.size[1], im.size[0]


def decode_label(src: Source, name: str = "<bytes>", *, channel: int = 0) -> np.ndarray:
  """Decodes a label image to its raw values.

  Args:
    src: a path or the encoded bytes.
    name: the file name used in error messages.
    channel: the channel of a colour label that holds the ids.

  Returns:
    `[H, W]`: the indices of a palette (`P`) or the values of a grey (`L`) image as `uint8`;
    the values of a 16-bit grey image (`I;16`, `I`) as `uint16`; channel `channel` of a
    16-bit-per-channel colour PNG (e.g. SYNTHIA `GT/LABELS`) with its full 16-bit value as
    `uint16`; channel `channel` of an 8-bit colour image as `uint8`.
  """
  data = _read(src, name)
  png16 = _png16_colour_header(data)
  if png16 is not None:
    return _decode_png16_colour(data, name, png16)[..., channel]
  im = _open(data, name)
  _load(im, name)
  if im.mode in ("P", "L"):
    return np.asarray(im, dtype=np.uint8)
  if im.mode in _GREY16_MODES:
    arr = np.asarray(im)
    if arr.min() < 0 or arr.max() > 65535:
      raise BadExampleError(name, "label values outside 0..65535")
    return arr.astype(np.uint16)
  if im.mode in ("RGB", "RGBA"):
    return np.asarray(im, dtype=np.uint8)[..., channel]
  raise BadExampleError(name, f"unsupported label image mode {im.mode!r}")


def _png_chunks(data: bytes):
  """Yields `(tag, body)` of each chunk of PNG `data` (a truncated tail ends the stream)."""
  pos = len(_PNG_SIGNATURE)
  while pos + 8 <= len(data):
    length, tag = struct.unpack(">I4s", data[pos:pos + 8])
    yield tag, data[pos + 8:pos + 8 + length]
    pos += 12 + length


def _png16_colour_header(data: bytes) -> Optional[tuple[int, int, str, int]]:
  """`(width, height, mode, interlace)` of a 16-bit-per-channel colour PNG, else None."""
  if not data.startswith(_PNG_SIGNATURE):
    return None
  tag, ihdr = next(_png_chunks(data), (b"", b""))
  if tag != b"IHDR" or len(ihdr) < 13:
    return None
  width, height, depth, colour_type = struct.unpack(">IIBB", ihdr[:10])
  if depth != 16 or colour_type not in _PNG16_COLOUR_MODES:
    return None
  return width, height, _PNG16_COLOUR_MODES[colour_type], ihdr[12]


def _decode_png16_colour(data: bytes, name: str, header: tuple[int, int, str, int]
                         ) -> np.ndarray:
  """All channels of a 16-bit-per-channel colour PNG, `uint16 [H, W, C]`.

  Pillow has no 16-bit colour mode. Its PNG ("zip") decoder, called through the public
  `Image.frombytes(mode, size, data, 'zip', rawmode, interlace)`, undoes compression and row
  filters and keeps one byte of each 16-bit sample: the high byte with raw mode `RGB;16B`,
  the low byte with `RGB;16L` (which reads the big-endian samples as little-endian). Both
  passes see the same bytes per pixel, so the filters are undone identically.
  """
  width, height, mode, interlace = header
  idat = b"".join(body for tag, body in _png_chunks(data) if tag == b"IDAT")
  planes = []
  for rawmode in (f"{mode};16B", f"{mode};16L"):
    try:
      im = Image.frombytes(mode, (width, height), idat, "zip", rawmode, interlace)
    except Exception as e:  # ValueError: not enough / undecodable image data
      raise BadExampleError(name, f"corrupt or truncated image data ({e})") from e
    planes.append(np.asarray(im, dtype=np.uint16))
  high, low = planes
  return (high << 8) | low


def encode_png(arr: np.ndarray) -> bytes:
  """Encodes `uint8 [H, W]`, `[H, W, 1]` or `[H, W, 3]` as PNG bytes."""
  arr = np.asarray(arr)
  if arr.dtype != np.uint8:
    raise ValueError(f"encode_png expects uint8, got {arr.dtype}")
  if arr.ndim == 3 and arr.shape[-1] == 1:
    arr = arr[..., 0]
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
  """Encodes `uint8 [H, W, 3]` RGB as JPEG bytes (fixtures and benchmarks)."""
  buf = io.BytesIO()
  Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
  return buf.getvalue()


def _filter_row(ftype: int, row: np.ndarray, prev: np.ndarray, bpp: int) -> np.ndarray:
  """PNG filter `ftype` (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth) of one row of bytes."""
  row, prev = row.astype(np.int32), prev.astype(np.int32)
  left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
  up_left = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
  if ftype == 0:
    predictor = np.zeros_like(row)
  elif ftype == 1:
    predictor = left
  elif ftype == 2:
    predictor = prev
  elif ftype == 3:
    predictor = (left + prev) // 2
  elif ftype == 4:
    p = left + prev - up_left
    pa, pb, pc = np.abs(p - left), np.abs(p - prev), np.abs(p - up_left)
    predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, up_left))
  else:
    raise ValueError(f"unsupported PNG filter {ftype}")
  return ((row - predictor) % 256).astype(np.uint8)


def encode_png16(arr: np.ndarray, filters: tuple[int, ...] = (0,)) -> bytes:
  """Encodes `uint16 [H, W, 3]` (RGB) or `[H, W, 4]` (RGBA) as a 16-bit-per-channel PNG.

  Pillow cannot write these; this minimal writer exists for fixtures (SYNTHIA-style labels).

  Args:
    arr: `uint16 [H, W, 3|4]`.
    filters: row `i` uses PNG filter `filters[i % len(filters)]` (0 None, 1 Sub, 2 Up,
      3 Average, 4 Paeth), which lets tests exercise the decoder's unfiltering.

  Returns:
    The PNG bytes.
  """
  arr = np.asarray(arr)
  if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
    raise ValueError("encode_png16 expects uint16 [H, W, 3|4]")
  h, w, c = arr.shape
  rows = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
  out = bytearray()
  prev = np.zeros_like(rows[0])
  for i in range(h):
    ftype = filters[i % len(filters)]
    out.append(ftype)
    out += _filter_row(ftype, rows[i], prev, 2 * c).tobytes()
    prev = rows[i]

  def chunk(tag: bytes, body: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    return struct.pack(">I", len(body)) + tag + body + crc

  colour_type = 2 if c == 3 else 6
  ihdr = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
  return (_PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out)))
          + chunk(b"IEND", b""))
