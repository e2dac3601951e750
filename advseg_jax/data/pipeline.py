"""grain input pipelines over `tfds.data_source` (no tf.data, no TensorFlow).

Train batches (`make_train_iterator`), endless, reshuffled every epoch:

  {"image": float32 [B, H, W, 3]   # NHWC, cfg.channel_order, 0-255 scale minus mean_bgr
                                   # (then divided by std_bgr when it is set)
   "label": int32   [B, H, W]}     # train ids, 255 = ignore (only if the split has labels)

Eval batches (`make_eval_iterator`), finite, the last one padded:

  {"image": float32 [B, H, W, 3], "label": int32 [B, Hl, Wl] (if labelled),
   "orig_hw": int32 [B, 2],  # size before padding / resizing: crop predictions to it
   "file_name": object [B],  "mask": bool [B]}   # False for padding examples

Determinism: the order is a function of (seed, epoch, process_index, process_count) and
augmentation randomness of (seed, global element index), independent of `num_workers` unless
examples are skipped. The training iterator is a grain `DatasetIterator`: `get_state()` /
`set_state()` and `grain.checkpoint.CheckpointSave/Restore` resume it exactly.

Host-side prefetch is grain's own: `ReadOptions(num_threads=read_threads,
prefetch_buffer_size=...)` decodes and augments ahead on threads, and `num_workers > 0` adds
`mp_prefetch` worker processes; both are part of the iterator's checkpointable state. Batches
stay numpy arrays on the host; `advseg_jax.train.parallel` puts them on devices.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Iterator, Optional, Sequence

import numpy as np
from absl import flags

from advseg_jax.data import image_io
from advseg_jax.data import registry
from advseg_jax.data import source as source_lib
from advseg_jax.data import transforms
from advseg_jax.data.errors import BadExampleError

log = logging.getLogger(__name__)
# eval 'pad' fill: 0 after normalisation (the mean colour; AdvSemiSeg's evaluate_voc.py) or
# RGB 0 before it (the ICLR-2018 reproduction's ZeroPadding).
PAD_FILLS = ("mean", "black")
# training crop: pad + random crop (AdvSemiSeg) or the ICLR-2018 reproduction's RandomSizedCrop
CROP_MODES = ("random", "random_sized")


def _channel_order(cfg) -> str:
  return cfg.channel_order or registry.get_info(cfg.name, cfg.config_name).default_channel_order


def _hw(v) -> Optional[tuple[int, int]]:
  return None if v is None else (int(v[0]), int(v[1]))


def _std(cfg) -> Optional[tuple[float, ...]]:
  std = cfg.get("std_bgr")
  return None if std is None else tuple(float(s) for s in std)


def decode_example(raw: dict, use_labels: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """Decodes a raw record (see `source.RawSource`).

  Args:
    raw: `{"image": bytes, "label": bytes | None, "file_name": str, ...}`.
    use_labels: decode the label (if the record has one).

  Returns:
    `(image uint8 [H, W, 3] RGB, label uint8 [H, W] or None)`.

  Raises:
    BadExampleError: naming `raw['file_name']`, for undecodable data or a label whose size
      differs from the image's.
  """
  name = raw["file_name"]
  image = image_io.decode_image(raw["image"], name)
  label = None
  if use_labels and raw.get("label") is not None:
    label = image_io.decode_label(raw["label"], f"{name} (label)")
    if label.shape != image.shape[:2]:
      raise BadExampleError(name, f"label size {label.shape} differs from image size "
                                  f"{image.shape[:2]}")
  return image, label


class TrainTransform:
  """Decode + augment one raw record with a per-element `np.random.Generator`.

  Order: [`ignore_as_background`: label 255 -> 0] -> optional whole-image resize (Pillow) ->
  random scale (cv2 semantics) or the AdvSemiSeg GT-loader sizing ->
  [`crop_mode='random_sized'`: the ICLR-2018 `RandomSizedCrop`] -> normalisation / channel
  order -> [`crop_mode='random'`: pad bottom-right -> random crop] -> random mirror. Random
  draws in that order: scale factor(s), crop, mirror.
  Output: `{"image": float32 [H, W, 3], "label": uint8 [H, W]}` (label when used), or None
  for a bad example when `skip_bad_examples` (grain drops Nones).
  """

  def __init__(self, cfg):
    self.resize_size = _hw(cfg.resize_size)
    self.crop_size = _hw(cfg.crop_size)
    self.crop_mode = cfg.get("crop_mode", "random")
    self.random_scale = bool(cfg.random_scale)
    self.scale_factors = tuple(float(f) for f in cfg.scale_factors)
    self.random_mirror = bool(cfg.random_mirror)
    self.channel_order = _channel_order(cfg)
    self.mean_bgr = tuple(float(m) for m in cfg.mean_bgr)
    self.std_bgr = _std(cfg)
    self.gt_loader = cfg.gt_loader
    self.use_labels = bool(cfg.use_labels)
    self.ignore_as_background = bool(cfg.get("ignore_as_background", False))
    self.skip_bad_examples = bool(cfg.skip_bad_examples)
    if self.gt_loader not in ("plain", "advsemi"):
      raise ValueError(f"gt_loader must be 'plain' or 'advsemi', got {self.gt_loader!r}")
    if self.gt_loader == "advsemi" and self.crop_size is None:
      raise ValueError("gt_loader='advsemi' needs crop_size")
    if self.crop_mode not in CROP_MODES:
      raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {self.crop_mode!r}")
    if self.crop_mode == "random_sized" and (self.crop_size is None or
                                             self.gt_loader != "plain"):
      raise ValueError("crop_mode='random_sized' needs crop_size and gt_loader='plain'")

  def __call__(self, raw: dict, rng: np.random.Generator) -> Optional[dict]:
    try:
      image, label = decode_example(raw, self.use_labels)
    except BadExampleError as e:
      if not self.skip_bad_examples:
        raise
      log.warning("skipping bad example (index %d): %s", raw.get("index", -1), e)
      return None
    return self.augment(image, label, rng)

  def augment(self, image: np.ndarray, label: Optional[np.ndarray],
              rng: np.random.Generator) -> dict:
    """The augmentation of a decoded example (see class docstring)."""
    if self.ignore_as_background:
      label = transforms.ignore_as_background(label)
    if self.resize_size is not None:
      image, label = transforms.resize_example_pil(image, label, self.resize_size)
    if self.gt_loader == "advsemi":
      if label is None:
        raise ValueError("gt_loader='advsemi' needs labels")
      image, label = transforms.advsemi_gt_rescale(image, label, self.crop_size, rng,
                                          self.random_scale, self.scale_factors)
    elif self.random_scale:
      image, label, _ = transforms.random_scale(image, label, rng, self.scale_factors)
    if self.crop_mode == "random_sized":
      image, label, _ = transforms.random_sized_crop(image, label, self.crop_size, rng)
    x = transforms.subtract_mean(image, self.mean_bgr, self.channel_order, self.std_bgr)
    if self.crop_size is not None and self.crop_mode == "random":
      x, label = transforms.pad_bottom_right(x, label, self.crop_size)
      x, label, _ = transforms.random_crop(x, label, self.crop_size, rng)
    if self.random_mirror:
      x, label, _ = transforms.random_mirror(x, label, rng)
    out = {"image": np.ascontiguousarray(x, dtype=np.float32)}
    if label is not None:
      out["label"] = np.ascontiguousarray(label, dtype=np.uint8)
    return out


class EvalTransform:
  """Decode + eval-mode sizing of one raw record (deterministic).

  `eval_mode`: 'pad' pads the image and label (255) bottom/right to `eval_pad_size`, the image
  with `eval_pad_fill` 'mean' (0 after normalisation) or 'black' (RGB 0 before it, so
  `(0 - mean) / std` after); 'resize' resizes the image (PIL bicubic) to `eval_resize_size` and
  keeps the label at full size; 'none' leaves sizes alone. Output: `{"image": float32
  [H, W, 3], "orig_hw": int32 [2] (the decoded image size), "file_name": str, "label": uint8
  [Hl, Wl]}` (label when used), or None for a bad example when `skip_bad_examples`. With
  `ignore_as_background` the label's 255 pixels become 0 before any padding (which stays 255).
  """

  def __init__(self, cfg):
    self.mode = cfg.eval_mode
    self.pad_size = _hw(cfg.eval_pad_size)
    self.pad_fill = cfg.get("eval_pad_fill", "mean")
    self.resize_size = _hw(cfg.eval_resize_size)
    self.channel_order = _channel_order(cfg)
    self.mean_bgr = tuple(float(m) for m in cfg.mean_bgr)
    self.std_bgr = _std(cfg)
    self.use_labels = bool(cfg.use_labels)
    self.ignore_as_background = bool(cfg.get("ignore_as_background", False))
    self.skip_bad_examples = bool(cfg.skip_bad_examples)
    if self.mode not in ("pad", "resize", "none"):
      raise ValueError(f"eval_mode must be 'pad', 'resize' or 'none', got {self.mode!r}")
    if self.pad_fill not in PAD_FILLS:
      raise ValueError(f"eval_pad_fill must be one of {PAD_FILLS}, got {self.pad_fill!r}")

  def __call__(self, raw: dict) -> Optional[dict]:
    name = raw["file_name"]
    try:
      image, label = decode_example(raw, self.use_labels)
    except BadExampleError as e:
      if not self.skip_bad_examples:
        raise
      log.warning("skipping bad example: %s", e)
      return None
    h, w = image.shape[:2]
    if self.ignore_as_background:
      label = transforms.ignore_as_background(label)
    if self.mode == "resize":
      image = transforms.resize_pil(image, self.resize_size, "bicubic")
    if self.mode == "pad":
      ph, pw = self.pad_size
      if h > ph or w > pw:
        raise BadExampleError(name, f"image {h}x{w} is larger than eval_pad_size {ph}x{pw}")
      if self.pad_fill == "black":  # the raw image padded, then normalised
        image, label = transforms.pad_bottom_right(image, label, self.pad_size, image_value=0)
    x = transforms.subtract_mean(image, self.mean_bgr, self.channel_order, self.std_bgr)
    if self.mode == "pad":  # 'mean': 0 after normalisation (nothing left to pad for 'black')
      x, label = transforms.pad_bottom_right(x, label, self.pad_size)
    out = {"image": np.ascontiguousarray(x, np.float32),
           "orig_hw": np.array([h, w], np.int32), "file_name": name}
    if label is not None:
      out["label"] = np.ascontiguousarray(label, np.uint8)
    return out


def _finalize_train_batch(batch: dict) -> dict:
  out = {"image": batch["image"]}
  if "label" in batch:
    out["label"] = batch["label"].astype(np.int32)
  return out


def _mark_flags_parsed() -> None:
  """grain's worker processes read absl flags; outside `app.run` they are unparsed."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _open(cfg, split: str, indices=None):
  src = source_lib.RawSource(cfg.name, cfg.config_name, cfg.data_dir, split)
  if indices is not None:
    src = source_lib.SubsetSource(src, indices)
  return src


def num_examples(cfg, split: str) -> int:
  """Number of stored examples of `split` (before any skipping at read time)."""
  return len(_open(cfg, split))


def make_train_iterator(cfg, *, split: str, indices: Optional[Sequence[int]] = None,
                        batch_size: int, seed: int, process_index: int = 0,
                        process_count: int = 1):
  """Endless, sharded, reshuffled-per-epoch training iterator (a grain `DatasetIterator`).

  Args:
    cfg: `advseg_jax.data.config.dataset_config` ConfigDict.
    split: 'train', 'validation' (or 'val'), TFDS slices allowed.
    indices: optional positions in the split to use (e.g. the labelled subset); the
      process shard is taken from these.
    batch_size: per-process batch size (incomplete batches are never produced).
    seed: shuffling and augmentation seed (same on all processes).
    process_index: this process's shard is `indices[process_index::process_count]`.
    process_count: number of processes reading the split.

  Returns:
    Iterator of `{"image": float32 [B, H, W, 3], "label": int32 [B, H, W]}` (label when
    available). All examples of a batch must have the same size: set `crop_size` or
    `resize_size` unless the images all have one size.
  """
  import grain  # pylint: disable=import-outside-toplevel

  src = _open(cfg, split, indices)
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} outside 0..{process_count - 1}")
  ds = grain.MapDataset.source(src)[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"{cfg.name} {split}: no examples for process {process_index} of "
                     f"{process_count}")
  ds = ds.shuffle(seed=seed % 2**32).repeat(None)
  ds = ds.random_map(TrainTransform(cfg), seed=(seed * 7919 + 17) % 2**32)
  buf = max(2 * batch_size, 8)
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(cfg.read_threads),
                                               prefetch_buffer_size=buf))
  if int(cfg.num_workers) > 0:
    _mark_flags_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=int(cfg.num_workers), per_worker_buffer_size=max(2, batch_size)))
  it_ds = it_ds.batch(batch_size, drop_remainder=True).map(_finalize_train_batch)
  return iter(it_ds)


class EvalIterable:
  """Finite, re-iterable eval batches; every process yields `len(self)` batches."""

  def __init__(self, cfg, split: str, batch_size: int, process_index: int, process_count: int):
    self.cfg = cfg
    self.batch_size = int(batch_size)
    self.process_index, self.process_count = process_index, process_count
    self.source = _open(cfg, split)
    n = len(self.source)
    per_process = math.ceil(n / process_count)
    self.num_batches = math.ceil(per_process / self.batch_size) if n else 0
    self.transform = EvalTransform(cfg)

  def __len__(self) -> int:
    return self.num_batches

  def _examples(self) -> Iterator[dict]:
    import grain  # pylint: disable=import-outside-toplevel
    ds = grain.MapDataset.source(self.source)[self.process_index::self.process_count]
    ds = ds.map(self.transform)
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(self.cfg.read_threads),
                                                 prefetch_buffer_size=2 * self.batch_size))
    if int(self.cfg.num_workers) > 0:
      _mark_flags_parsed()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
          num_workers=int(self.cfg.num_workers)))
    return iter(it_ds)

  def __iter__(self) -> Iterator[dict]:
    chunk: list = []
    produced = 0
    template = None
    for ex in self._examples():
      template = template or ex
      chunk.append(ex)
      if len(chunk) == self.batch_size:
        yield collate_eval(chunk, self.batch_size)
        produced += 1
        chunk = []
    if chunk:
      yield collate_eval(chunk, self.batch_size)
      produced += 1
    while produced < self.num_batches and template is not None:
      yield collate_eval([], self.batch_size, template=template)
      produced += 1


def collate_eval(examples: list, batch_size: int, template: Optional[dict] = None) -> dict:
  """Stacks eval examples into one batch (see the module docstring).

  Sizes are padded to the largest example (image 0, label 255); the batch is padded to
  `batch_size` with all-zero examples whose `mask` is False.

  Args:
    examples: `EvalTransform` outputs (may be empty).
    batch_size: B.
    template: an example giving the sizes of an all-padding batch (when `examples` is empty).
  """
  ref = examples or [template]
  H = max(e["image"].shape[0] for e in ref)
  W = max(e["image"].shape[1] for e in ref)
  has_label = "label" in ref[0]
  image = np.zeros((batch_size, H, W, 3), np.float32)
  out: dict[str, Any] = {"image": image, "orig_hw": np.zeros((batch_size, 2), np.int32),
                         "file_name": np.array([""] * batch_size, dtype=object),
                         "mask": np.zeros((batch_size,), bool)}
  if has_label:
    LH = max(e["label"].shape[0] for e in ref)
    LW = max(e["label"].shape[1] for e in ref)
    out["label"] = np.full((batch_size, LH, LW), 255, np.int32)
  for i, e in enumerate(examples):
    h, w = e["image"].shape[:2]
    image[i, :h, :w] = e["image"]
    out["orig_hw"][i] = e["orig_hw"]
    out["file_name"][i] = e["file_name"]
    out["mask"][i] = True
    if has_label:
      lh, lw = e["label"].shape
      out["label"][i, :lh, :lw] = e["label"]
  return out


def make_eval_iterator(cfg, *, split: str, batch_size: int = 1, process_index: int = 0,
                       process_count: int = 1) -> EvalIterable:
  """Finite iterable of eval batches (see the module docstring).

  `len()` is the batch count, equal on every process (shards with fewer examples get
  all-padding batches).
  """
  return EvalIterable(cfg, split, batch_size, process_index, process_count)
