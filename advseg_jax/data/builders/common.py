"""Shared machinery of the manual-download segmentation builders.

Every builder yields, per example:

  {"image": <encoded bytes as found on disk (JPEG/PNG)>,
   "label": <PNG bytes of a uint8 [H, W] map of train ids, 255 = ignore>,
   "file_name": <str, the name used by the original lists>}

Images are stored as the bytes found on disk (TFDS would need TensorFlow to encode an
ndarray); they are fully decoded once at prepare time to detect corruption. The one exception
is a builder that resizes image/label pairs of different sizes (`MISMATCH_RESIZE_HW`, GTA5):
those images are stored re-encoded as PNG. Labels are mapped to train ids at prepare time and
re-encoded as 8-bit PNG.

Examples are written in list order (`disable_shuffling = True`) so that index `i` of a
split is line `i` of the originals' list files; split files (`train_id.pkl`) rely on it.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import zipfile
from typing import Callable, Iterable, Iterator, Optional, Sequence, TypeVar, Union

import numpy as np
import tensorflow_datasets as tfds

from advseg_jax.data import image_io
from advseg_jax.data import labels
from advseg_jax.data import transforms
from advseg_jax.data.errors import BadExampleError, LayoutError

log = logging.getLogger(__name__)

REMAPPED = "labels with ids outside the label table, those pixels mapped to 255"

T = TypeVar("T")
R = TypeVar("R")


@dataclasses.dataclass(frozen=True)
class ZipMember:
  """A file inside a zip archive."""

  zip_path: str
  member: str

  def __str__(self) -> str:
    return f"{self.zip_path}!{self.member}"


FileRef = Union[str, ZipMember]


@dataclasses.dataclass(frozen=True)
class ExampleRef:
  """Where one example's files are; `label` is None for unlabelled data."""

  file_name: str
  image: FileRef
  label: Optional[FileRef]


_zip_local = threading.local()


def read_bytes(ref: FileRef) -> bytes:
  """Reads a file or zip member; a missing one raises `BadExampleError`."""
  if isinstance(ref, ZipMember):
    cache = getattr(_zip_local, "zips", None)
    if cache is None:
      cache = _zip_local.zips = {}
    zf = cache.get(ref.zip_path)
    if zf is None:
      zf = cache[ref.zip_path] = zipfile.ZipFile(ref.zip_path)
    try:
      return zf.read(ref.member)
    except KeyError as e:
      raise BadExampleError(str(ref), "file is missing from the archive") from e
    except (zipfile.BadZipFile, OSError) as e:
      raise BadExampleError(str(ref), f"cannot be read from the archive ({e})") from e
  try:
    with open(ref, "rb") as f:
      return f.read()
  except FileNotFoundError as e:
    raise BadExampleError(str(ref), "file is missing") from e
  except OSError as e:
    raise BadExampleError(str(ref), f"cannot be read ({e})") from e


def ordered_parallel_map(fn: Callable[[T], R], items: Iterable[T], num_threads: int,
                         window: Optional[int] = None) -> Iterator[R]:
  """`map(fn, items)` on a thread pool, in order, with at most `window` pending results."""
  if num_threads <= 1:
    yield from map(fn, items)
    return
  window = window or 4 * num_threads
  with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
    pending: collections.deque = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= window:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()


def read_list_file(path: str) -> list[str]:
  """One id per line (blank lines ignored, surrounding whitespace stripped)."""
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def same_name_png_pairs(manual_dir: str, image_dir: str, label_dir: str) -> list[ExampleRef]:
  """Image / label files of the same name in two folders of `manual_dir`.

  The names are the lines of `manual_dir/train.txt` if present, else every `*.png` of
  `image_dir`, sorted.
  """
  list_path = os.path.join(manual_dir, "train.txt")
  if os.path.isfile(list_path):
    names = read_list_file(list_path)
  else:
    names = sorted(f for f in os.listdir(os.path.join(manual_dir, image_dir))
                   if f.lower().endswith(".png"))
  return [ExampleRef(file_name=n, image=os.path.join(manual_dir, image_dir, n),
                     label=os.path.join(manual_dir, label_dir, n)) for n in names]


def require_dir(path: str, what: str, layout: str) -> str:
  """`path` if it is a folder, else a `LayoutError` naming it, `what` it holds and `layout`."""
  if not os.path.isdir(path):
    raise LayoutError(f"missing folder {path} ({what}); expected layout: {layout}")
  return path


def warn_count(name: str, split: str, n: int, expected: Optional[int]) -> None:
  """Logs a warning when a split lists `n` examples where the full dataset has `expected`."""
  if expected is not None and n != expected:
    log.warning("%s %s: %d examples listed, the full dataset has %d", name, split, n,
                expected)


class SegBuilderBase(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of all segmentation builders (features and ordering; no example logic)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  IMAGE_FORMAT = "png"
  HAS_LABELS = True
  DESCRIPTION = ""

  def __init__(self, *, skip_bad_examples: bool = False, num_threads: Optional[int] = None,
               **kwargs):
    """Creates the builder.

    Args:
      skip_bad_examples: log and skip corrupt / inconsistent examples instead of failing.
      num_threads: threads decoding/validating examples at prepare time (default:
        min(8, CPUs)).
      **kwargs: `data_dir`, `config`, `version`, `file_format` of TFDS builders.
    """
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)
    self.skip_bad_examples = skip_bad_examples
    self.num_threads = num_threads or min(8, os.cpu_count() or 1)
    self.skipped: dict[str, list[str]] = {}
    # kind of adjustment -> the examples it was applied to (see ManualSegBuilder)
    self.adjusted: dict[str, list[str]] = {kind: [] for kind in self.adjustment_kinds()}

  def adjustment_kinds(self) -> tuple[str, ...]:
    """The kinds of adjustment this builder may make (each is counted, zero included)."""
    return ()

  def _info(self) -> tfds.core.DatasetInfo:
    feats = {
        "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.IMAGE_FORMAT),
        "file_name": tfds.features.Text(),
    }
    if self.HAS_LABELS:
      feats["label"] = tfds.features.Image(shape=(None, None, 1), encoding_format="png")
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict(feats),
        disable_shuffling=True,
        metadata=self._metadata(),
    )

  def _metadata(self) -> Optional[tfds.core.MetadataDict]:
    """A dict saved as `metadata.json` with the prepared data, or None for none."""
    return None


class ManualSegBuilder(SegBuilderBase, skip_registration=True):
  """A builder reading files from `manual_dir`; subclasses list the examples."""

  # Subclasses set these.
  LAYOUT = ""                       # one-line description of the expected manual_dir layout
  VALID_RAW_IDS: Optional[Sequence[int]] = None
  LABEL_CHANNEL = 0
  EXPECTED_SIZES: dict = {}
  # AdaptSegNet-style leniency (docs/FIDELITY.md §7.3), off unless a builder sets it:
  # `(h, w)` to which an image and its label of different sizes are both resized (PIL
  # bicubic / nearest; the image is then stored as PNG), and whether raw ids outside
  # `VALID_RAW_IDS` map to 255 instead of failing. Both are counted in `adjusted`.
  MISMATCH_RESIZE_HW: Optional[tuple[int, int]] = None
  UNKNOWN_IDS_TO_IGNORE = False

  # ------------------------------------------------------------------ subclass hooks
  @classmethod
  def check_manual_dir(cls, manual_dir: str) -> None:
    """Raises `LayoutError` (one line) if the layout is not there."""
    raise NotImplementedError

  def _list_examples(self, manual_dir: str, split: str) -> list[ExampleRef]:
    raise NotImplementedError

  def _split_names(self) -> Sequence[str]:
    return ("train", "validation")

  def _label_mapping(self) -> dict[int, int]:
    """Raw id -> train id; other valid raw ids map to 255."""
    raise NotImplementedError

  # ------------------------------------------------------------------ TFDS hooks
  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    self.check_manual_dir(manual_dir)
    out = {}
    for split in self._split_names():
      refs = self._list_examples(manual_dir, split)
      warn_count(self.name, split, len(refs), self.EXPECTED_SIZES.get(split))
      out[split] = self._generate_examples(split, refs)
    return out

  def _generate_examples(self, split: str, refs: Sequence[ExampleRef]):
    lut = labels.make_lut(self._label_mapping(), self.VALID_RAW_IDS) if self.HAS_LABELS else None
    skipped = self.skipped.setdefault(split, [])

    def work(ref: ExampleRef):
      try:
        return ref, self._process(ref, lut), None
      except BadExampleError as e:
        return ref, None, e

    for ref, example, err in ordered_parallel_map(work, refs, self.num_threads):
      if err is not None:
        if not self.skip_bad_examples:
          raise err
        log.warning("skipping bad example: %s", err)
        skipped.append(str(err))
        continue
      yield ref.file_name, example
    if skipped:
      log.warning("%s %s: skipped %d bad examples", self.name, split, len(skipped))

  def _process(self, ref: ExampleRef, lut: Optional[np.ndarray]) -> dict:
    """Reads, verifies and converts one example (runs in a worker thread)."""
    img_name = str(ref.image)
    img_bytes = read_bytes(ref.image)
    img = image_io.decode_image(img_bytes, img_name)
    ex = {"image": img_bytes, "file_name": ref.file_name}
    if not self.HAS_LABELS:
      return ex
    lab_name = str(ref.label)
    raw = self._read_raw_label(ref.label, lab_name)
    if raw.shape[:2] != img.shape[:2] and self.MISMATCH_RESIZE_HW is not None:
      img, raw = transforms.resize_example_pil(img, raw, self.MISMATCH_RESIZE_HW)
      ex["image"] = image_io.encode_png(img)
      self.adjusted[self._resized_kind()].append(ref.file_name)
    check_same_size(raw, lab_name, img.shape[:2], img_name)
    mapped, bad = labels.apply_lut(raw, lut)
    if bad.size:
      if not self.UNKNOWN_IDS_TO_IGNORE:
        raise BadExampleError(
            lab_name, f"label ids {bad.tolist()[:10]} are outside the label mapping")
      self.adjusted[REMAPPED].append(f"{ref.file_name} (ids {bad.tolist()[:10]})")
    ex["label"] = image_io.encode_png(mapped)
    return ex

  def _read_raw_label(self, ref: FileRef, lab_name: str) -> np.ndarray:
    """The raw ids of one label file, `[H, W]` (a label image's indices by default)."""
    return image_io.decode_label(read_bytes(ref), lab_name, channel=self.LABEL_CHANNEL)

  def _resized_kind(self) -> str:
    h, w = self.MISMATCH_RESIZE_HW
    return (f"image/label pairs of different sizes resized to {w}x{h} (image bicubic, "
            "label nearest)")

  def adjustment_kinds(self) -> tuple[str, ...]:
    return (((self._resized_kind(),) if self.MISMATCH_RESIZE_HW is not None else ())
            + ((REMAPPED,) if self.UNKNOWN_IDS_TO_IGNORE else ()))


def check_same_size(raw: np.ndarray, lab_name: str, image_hw: tuple[int, int],
                    img_name: str) -> None:
  """Raises `BadExampleError` unless label `raw` is `image_hw` in size."""
  if raw.shape[:2] != tuple(image_hw):
    raise BadExampleError(
        lab_name, f"label size {raw.shape[1]}x{raw.shape[0]} (WxH) differs from its image "
        f"{img_name} ({image_hw[1]}x{image_hw[0]})")
