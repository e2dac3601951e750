"""Decoding and encoding of image / label files with PIL (no TensorFlow, no OpenCV).

Layouts: images are ``uint8 [H, W, 3]`` in **RGB** order; label maps ``[H, W]`` (``uint8`` or,
for 16-bit sources, ``uint16``). Every failure raises :class:`BadExampleError` naming the file.
"""

from __future__ import annotations

import io
import os
from typing import Union

import numpy as np
from PIL import Image

Source = Union[str, os.PathLike, bytes]


class BadExampleError(ValueError):
    """A corrupt, inconsistent or missing example; the message names the file."""

    def __init__(self, file_name: str, problem: str):
        super().__init__(f"{file_name}: {problem}")
        self.file_name = file_name
        self.problem = problem


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
    """Forces a full decode so that truncated / corrupt data is detected now."""
    try:
        im.load()
    except Exception as e:
        raise BadExampleError(name, f"corrupt or truncated image data ({e})") from e


def decode_image(src: Source, name: str = "<bytes>") -> np.ndarray:
    """Decodes an image file or encoded bytes to ``uint8 [H, W, 3]`` RGB (like PIL ``convert('RGB')``)."""
    im = _open(src, name)
    _load(im, name)
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)


def image_size(src: Source, name: str = "<bytes>") -> tuple[int, int]:
    """``(height, width)`` from the header only (cheap)."""
    im = _open(src, name)
    return im.size[1], im.size[0]


def decode_label(src: Source, name: str = "<bytes>", *, channel: int = 0) -> np.ndarray:
    """Decodes a label PNG to its raw values ``[H, W]``.

    * ``P`` (palette) and ``L`` images: the stored indices / grey values (``uint8``).
    * ``I;16`` / ``I`` grey images: ``uint16`` values.
    * 16-bit RGB(A) PNGs (e.g. SYNTHIA ``GT/LABELS``): channel ``channel`` with its full
      16-bit value (``uint16``).
    * 8-bit RGB(A): channel ``channel`` (``uint8``).
    """
    im = _open(src, name)
    if im.format == "PNG" and im.mode in ("RGB", "RGBA") and im.tile:
        t = im.tile[0]
        tile_args = t.args if hasattr(t, "args") else t[3]
        tile_mode = tile_args[0] if isinstance(tile_args, tuple) else tile_args
        if tile_mode in ("RGB;16B", "RGBA;16B"):
            return _decode_label_16bit(src, name, tile_mode, channel)
    _load(im, name)
    if im.mode in ("P", "L"):
        return np.asarray(im, dtype=np.uint8)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise BadExampleError(name, "label values outside 0..65535")
        return arr.astype(np.uint16)
    if im.mode in ("RGB", "RGBA"):
        return np.asarray(im, dtype=np.uint8)[..., channel]
    raise BadExampleError(name, f"unsupported label image mode {im.mode!r}")


def _decode_label_16bit(src: Source, name: str, tile_mode: str, channel: int) -> np.ndarray:
    """Full 16-bit values of one channel of a 16-bit RGB(A) PNG, ``uint16 [H, W]``.

    PIL reads 16-bit-per-channel colour PNGs as 8-bit ``RGB`` keeping only the high byte
    (raw mode ``RGB;16B``). Decoding the same data a second time with the little-endian raw
    mode (``RGB;16L``), whose "high byte" is the PNG's low byte, recovers the low byte; the
    PNG filters are undone identically in both passes because the bits per pixel match.
    """
    planes = []
    for mode in (tile_mode, tile_mode.replace(";16B", ";16L")):
        im = _open(src, name)
        t = im.tile[0]
        if hasattr(t, "_replace"):
            im.tile = [t._replace(args=mode)]
        else:  # older Pillow: plain tuples (codec, extents, offset, args)
            im.tile = [(t[0], t[1], t[2], mode)]
        _load(im, name)
        planes.append(np.asarray(im, dtype=np.uint16)[..., channel])
    hi, lo = planes
    return (hi << 8) | lo


def encode_png(arr: np.ndarray) -> bytes:
    """Encodes ``uint8 [H, W]``, ``[H, W, 1]`` or ``[H, W, 3]`` as PNG bytes."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {arr.dtype}")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def encode_jpeg(arr: np.ndarray, quality: int = 90) -> bytes:
    """Encodes ``uint8 [H, W, 3]`` RGB as JPEG bytes (fixtures and benchmarks)."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_png16(arr: np.ndarray, filters: tuple[int, ...] = (0,)) -> bytes:
    """Encodes ``uint16 [H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA) as a 16-bit-per-channel PNG.

    PIL cannot write these; this minimal writer exists for fixtures (SYNTHIA-style labels).
    Row ``i`` uses PNG filter ``filters[i % len(filters)]`` (0 None, 1 Sub, 2 Up), which lets
    tests exercise the decoder's unfiltering.
    """
    import struct
    import zlib

    arr = np.asarray(arr)
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError("encode_png16 expects uint16 [H, W, 3|4]")
    h, w, c = arr.shape
    rows = np.ascontiguousarray(arr.astype(">u2")).view(np.uint8).reshape(h, w * c * 2)
    bpp = 2 * c
    out = bytearray()
    prev = np.zeros_like(rows[0])
    for i in range(h):
        ftype = filters[i % len(filters)]
        row = rows[i].astype(np.int16)
        if ftype == 0:
            f = row
        elif ftype == 1:
            left = np.concatenate([np.zeros(bpp, np.int16), row[:-bpp]])
            f = row - left
        elif ftype == 2:
            f = row - prev.astype(np.int16)
        else:
            raise ValueError(f"unsupported PNG filter {ftype}")
        out.append(ftype)
        out += (f % 256).astype(np.uint8).tobytes()
        prev = rows[i]

    def chunk(tag: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + tag + data
                + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    color_type = 2 if c == 3 else 6
    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(out)))
            + chunk(b"IEND", b""))
