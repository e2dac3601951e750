"""The training loop: data streams, steps, evaluation, checkpoints, logs, summary.

    summary = train(config, workdir)            # what `python -m advseg_jax train` runs

One step consumes one batch from every stream the method needs (`methods.streams`):

    labelled    config.data on the labelled ids (`labelled_fraction`, seeded split)
    gt          config.data on the labelled ids again, independent order; `config.data.
                gt_loader` picks AdvSemiSeg's VOCGTDataSet sizing ('advsemi') or 'plain'
    unlabelled  config.data on the remaining ids, labels not decoded
    source      config.data (labelled)            target  config.target_data, no labels

The originals' `--batch-size` is per sub-iteration, so each stream yields
`batch_size * iter_size` images per step (the step splits them into `iter_size` chunks);
each process reads `batch_size * iter_size / process_count` of them.

Evaluation (`eval_every` steps and at the end) runs `inference.predictor.make_predict_fn` on
`config.eval_data`, upsampling to the label size: in 'pad' mode the label is padded like the
image, so predicting at the padded size and ignoring label 255 is the originals' "upsample to
505, crop to the original size"; in 'resize' mode the output is upsampled to the full-size
label (Cityscapes). mIoU as in `advseg_jax.metrics` (`config.eval_mean_mode`, or the
protocol of the eval mode).

Workdir: see `advseg_jax.train.checkpoint`; also `metrics.jsonl`, `tensorboard/`, `config.json`,
`split.json`, `summary.md`, `summary.json`.

`data_provider` (tests) replaces `advseg_jax.data` with anything that has the same four
functions (`get_info`, `num_examples`, `make_train_iterator`, `make_eval_iterator`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import queue
import signal
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from advseg_jax.train import checkpoint as ckpt_lib
from advseg_jax.config import validation as config_validation
from advseg_jax.train import diagnostics
from advseg_jax import logging_utils
from advseg_jax.kernels import host_malloc
from advseg_jax import methods
from advseg_jax import metrics as metrics_lib
from advseg_jax.models import build_discriminator, build_generator
from advseg_jax.train.preemption import PreemptionGuard
from advseg_jax.inference import loading
from advseg_jax.inference.evaluator import Evaluator
from advseg_jax.train import export
from advseg_jax.train import parallel as parallel_lib
from advseg_jax.train import state as state_lib
from advseg_jax.train import steps as steps_lib

log = logging.getLogger(__name__)

SPLIT_FILE = "split.json"
CONFIG_FILE = "config.json"
SUMMARY_MD = "summary.md"
SUMMARY_JSON = "summary.json"
# Fault injection for the resume tests: SIGKILL this process right after finishing the
# given step (once the checkpoint saves started so far have completed).
KILL_AT_STEP_ENV = "ADVSEG_JAX_TEST_KILL_AT_STEP"
# ... or right after the asynchronous save of the given step started (its write in flight).
KILL_DURING_SAVE_ENV = "ADVSEG_JAX_TEST_KILL_DURING_SAVE_AT_STEP"
STREAM_SEED_OFFSETS = {"labelled": 0, "gt": 1, "unlabelled": 2, "source": 3, "target": 4}


class TrainingError(RuntimeError):
  """A problem the user must fix (message names the field / file)."""


# ----------------------------------------------------------------------------- data
def _default_provider():
  from advseg_jax import data  # pylint: disable=import-outside-toplevel
  return data


def _stream_config(config: Any, stream: str):
  """The dataset config of one stream (a resolved copy of config.data / target_data)."""
  base = config.target_data if stream == "target" else config.data
  c = base.copy_and_resolve_references()
  with c.unlocked():
    if stream in ("labelled", "unlabelled", "source", "target"):
      c.gt_loader = "plain"
    c.use_labels = stream in ("labelled", "gt", "source")
  return c


def prepare_generated_datasets(config: Any, streams: Sequence[str]) -> None:
  """Builds datasets that need no download (`shapes`) on first use (process 0)."""
  from advseg_jax import data  # pylint: disable=import-outside-toplevel
  cfgs = [_stream_config(config, s) for s in streams] + [config.eval_data]
  if jax.process_index() == 0:
    done = set()
    for c in cfgs:
      key = (c.name, c.config_name, c.data_dir)
      if key in done:
        continue
      done.add(key)
      if not data.get_info(c.name, c.config_name).needs_manual_download:
        data.ensure_prepared(c.name, c.data_dir, config_name=c.config_name)
  _sync("prepare")


@dataclasses.dataclass
class SplitInfo:
  path: Optional[str]
  fraction: float
  num_examples: int
  num_labelled: int
  seed: Optional[int]
  source: str
  labelled: Optional[np.ndarray]
  unlabelled: Optional[np.ndarray]

  def to_json(self) -> Dict[str, Any]:
    return {"path": self.path, "fraction": self.fraction, "num_examples": self.num_examples,
            "num_labelled": self.num_labelled, "seed": self.seed, "source": self.source}


def make_split(config: Any, workdir: str, provider: Any, streams: Sequence[str]) -> SplitInfo:
  """Labelled / unlabelled ids of config.data's split (saved to WORKDIR/split.json)."""
  from advseg_jax.data import splits  # pylint: disable=import-outside-toplevel
  fraction = float(config.labelled_fraction)
  n = int(provider.num_examples(config.data, config.data.split))
  uses_data = any(s in streams for s in ("labelled", "gt", "unlabelled", "source"))
  if not uses_data or (fraction >= 1.0 and not config.split_file):
    return SplitInfo(None, fraction, n, n, None, "all", None, None)
  path = os.path.join(workdir, SPLIT_FILE)
  if jax.process_index() == 0:
    try:
      split = splits.load_or_create(workdir, n, fraction, int(config.seed),
                                    partial_id=config.split_file, filename=SPLIT_FILE)
    except (ValueError, OSError) as e:
      raise TrainingError(f"labelled split: {e}") from None
  _sync("split")
  if jax.process_index() != 0:
    split = splits.load_split(path)
  if split.num_labelled == 0:
    raise TrainingError(f"labelled_fraction {fraction} of {n} examples leaves no labelled "
                        f"example")
  if "unlabelled" in streams and split.unlabelled.size == 0:
    raise TrainingError(f"labelled_fraction {fraction} of {n} examples leaves no unlabelled "
                        f"example for the semi-supervised terms")
  source = config.split_file or ("saved" if split.seed is None else f"seed {split.seed}")
  return SplitInfo(path, split.fraction, split.num_examples, split.num_labelled, split.seed,
                   source, split.labelled, split.unlabelled)


def _sync(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices(name)


def make_train_iterators(config: Any, provider: Any, streams: Sequence[str], split: SplitInfo,
                         per_process_batch: int) -> Dict[str, Any]:
  out = {}
  for s in streams:
    cfg = _stream_config(config, s)
    indices = None
    if s in ("labelled", "gt", "source"):
      indices = split.labelled
    elif s == "unlabelled":
      indices = split.unlabelled
    seed = int(config.seed) + 1009 * STREAM_SEED_OFFSETS[s]
    out[s] = provider.make_train_iterator(
        cfg, split=cfg.split, indices=None if indices is None else indices.tolist(),
        batch_size=per_process_batch, seed=seed, process_index=jax.process_index(),
        process_count=jax.process_count())
  return out


class Prefetcher:
  """Reads the next batches of all streams in a background thread.

  Each item is `(batch, states)` where `states` are the iterators' `get_state()` right after
  producing that batch, i.e. what a checkpoint taken after consuming it must store.
  """

  def __init__(self, iterators: Mapping[str, Any], size: int = 2):
    self.iterators = dict(iterators)
    self._q: queue.Queue = queue.Queue(maxsize=max(1, size))
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="advseg-prefetch", daemon=True)
    self._thread.start()

  def _put(self, item) -> bool:
    while not self._stop.is_set():
      try:
        self._q.put(item, timeout=0.1)
        return True
      except queue.Full:
        continue
    return False

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        batch = {k: next(it) for k, it in self.iterators.items()}
        states = {k: it.get_state() for k, it in self.iterators.items()}
        if not self._put((batch, states)):
          return
    except BaseException as e:  # pylint: disable=broad-except
      self._put(e)

  def next(self) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    while True:
      try:
        item = self._q.get(timeout=1.0)
        break
      except queue.Empty:
        if not self._thread.is_alive():
          raise TrainingError("the data thread stopped without an error") from None
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self) -> None:
    self._stop.set()
    while True:
      try:
        self._q.get_nowait()
      except queue.Empty:
        break
    self._thread.join(timeout=10)


# ----------------------------------------------------------------------------- init
def initial_generator_variables(config: Any) -> Optional[Dict[str, Any]]:
  """Weights from `config.init.checkpoint` (.pth via the converter, or a model dir)."""
  path = config.init.checkpoint
  if not path:
    return None
  from advseg_jax.models.registry import resolve_depths  # pylint: disable=import-outside-toplevel
  m = config.model
  if os.path.isfile(path):
    from advseg_jax.torch_port import convert  # pylint: disable=import-outside-toplevel
    log.info("initialising G from %s (rule %s)", path, config.init.rule)
    try:
      return convert.load_torch_checkpoint(
          path, m.arch, int(m.num_classes), rule=config.init.rule,
          depths=resolve_depths(m.depths), width=int(m.width),
          stride_in_1x1=bool(m.stride_in_1x1), aspp_branches_used=int(m.aspp_branches_used),
          bn_mode=str(m.bn_mode), seed=int(config.seed))
    except Exception as e:  # pylint: disable=broad-except
      raise TrainingError(f"config.init.checkpoint={path}: {ckpt_lib._one_line(e)}") from None
  if not os.path.isdir(path):
    raise TrainingError(f"config.init.checkpoint={path}: no such file or directory")
  variables, spec = loading.load_for_inference(path)
  want = {"arch": m.arch, "num_classes": int(m.num_classes),
          "depths": list(resolve_depths(m.depths)), "width": int(m.width)}
  got = {k: spec.get(k) for k in want}
  if got != want:
    raise TrainingError(f"config.init.checkpoint={path}: model {got} does not match "
                        f"config.model {want}")
  log.info("initialising G from model directory %s", path)
  return variables


def initial_discriminator_params(config: Any) -> Optional[Dict[str, Any]]:
  path = config.init.d_checkpoint
  if not path or config.method.name == "supervised":
    return None
  levels = methods.d_levels(config.method.name, config.model.arch == "deeplabv2_multi")
  if os.path.isfile(path):
    from advseg_jax.torch_port import convert  # pylint: disable=import-outside-toplevel
    arch = {"fc": "fc_discriminator", "fc2": "fc2_discriminator"}.get(config.disc.arch)
    if arch is None:
      raise TrainingError(f"config.init.d_checkpoint: no converter for disc.arch "
                          f"{config.disc.arch!r}")
    try:
      variables = convert.load_torch_checkpoint(
          path, arch, state_lib.d_input_channels(config), rule="strict",
          ndf=int(config.disc.ndf), seed=int(config.seed))
    except Exception as e:  # pylint: disable=broad-except
      raise TrainingError(f"config.init.d_checkpoint={path}: {ckpt_lib._one_line(e)}") from None
  else:
    from advseg_jax import model_io  # pylint: disable=import-outside-toplevel
    try:
      variables, _ = model_io.load_model(path)
    except Exception as e:  # pylint: disable=broad-except
      raise TrainingError(f"config.init.d_checkpoint={path}: {ckpt_lib._one_line(e)}") from None
  log.info("initialising D (%s) from %s", ", ".join(levels), path)
  return {level: variables["params"] for level in levels}


def create_host_states(config: Any, g_model, d_model, rng, g_variables=None, d_params=None):
  """`state.create_train_states` as one compiled function (op-by-op initialisation compiles
  hundreds of tiny programs), returned as host numpy."""
  fn = jax.jit(lambda r, gv, dp: state_lib.create_train_states(config, g_model, d_model, r,
                                                               g_variables=gv, d_params=dp))
  return jax.tree.map(np.asarray, fn(rng, g_variables, d_params))


def to_device_layout(par: parallel_lib.Parallel, host_tree: Any) -> Any:
  """`par.replicate`, then (pmap) an identity pmap so the arrays carry exactly the sharding
  pmap outputs have; `flax.jax_utils.replicate`'s differs, which makes the first and second
  step compile separately."""
  tree = par.replicate(host_tree)
  leaves = jax.tree_util.tree_leaves(tree)
  if par.mode != "pmap" or not leaves or getattr(
      getattr(leaves[0], "sharding", None), "mesh", None) is not None and tuple(
          leaves[0].sharding.mesh.axis_names) == (parallel_lib.AXIS,):
    return tree
  return jax.pmap(lambda x: x, axis_name=parallel_lib.AXIS, devices=par.local_devices)(tree)


# ----------------------------------------------------------------------------- summary
def _images_per_step(config: Any, streams: Sequence[str]) -> int:
  return int(config.batch_size) * int(config.iter_size) * len(streams)


def write_summary(workdir: str, summary: Dict[str, Any]) -> Tuple[str, str]:
  lines = [f"# Training summary: {os.path.basename(os.path.normpath(workdir))}", ""]
  run_rows = [(k, summary[k]) for k in (
      "status", "method", "config", "start_step", "final_step", "num_steps", "wall_time",
      "train_time", "images_per_sec", "steps_per_sec", "devices", "parallel_mode",
      "miou", "mean_mode", "best_miou", "best_step") if k in summary]
  lines += ["## Run", "", logging_utils.markdown_table(("field", "value"), run_rows), ""]
  ev = summary.get("eval")
  if ev:
    lines += [f"## Evaluation at step {ev['step']} ({ev['num_images']} images)", "",
              f"mIoU {ev['mean_mode']}: **{_pct(ev['miou'])}** ({ev['definition']}); "
              f"evaluate_voc-style {_pct(ev['miou_voc'])}, compute_iou-style "
              f"{_pct(ev['miou_nanmean'])}, all classes {_pct(ev['miou_all'])}, pixel accuracy "
              f"{_pct(ev['pixel_accuracy'])}.", ""]
    rows = [(name, _pct(v)) for name, v in ev["per_class_iou"].items()]
    lines += [logging_utils.markdown_table(("class", "IoU %"), rows), ""]
  losses = summary.get("final_metrics") or {}
  if losses:
    lines += ["## Final logged metrics", "",
              logging_utils.markdown_table(("metric", "value"), sorted(losses.items())), ""]
  if summary.get("paths"):
    lines += ["## Files", "", logging_utils.markdown_table(
        ("what", "path"), sorted(summary["paths"].items())), ""]
  if summary.get("problems"):
    lines += ["## Problems", ""] + [f"- {p}" for p in summary["problems"]] + [""]
  md = logging_utils.write_text_file(os.path.join(workdir, SUMMARY_MD), "\n".join(lines))
  js = logging_utils.write_json(os.path.join(workdir, SUMMARY_JSON), summary)
  return md, js


def _pct(v: Optional[float]) -> str:
  return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}"


def console_table(summary: Dict[str, Any]) -> str:
  """The end-of-run table printed on the console."""
  out = []
  ev = summary.get("eval")
  if ev:
    w = max([len(n) for n in ev["per_class_iou"]] + [10])
    out.append(f"{'class':<{w}}  IoU %")
    for n, v in ev["per_class_iou"].items():
      out.append(f"{n:<{w}}  {_pct(v):>6}")
    out.append(f"{'mIoU':<{w}}  {_pct(ev['miou']):>6}  ({ev['mean_mode']}; all classes "
               f"{_pct(ev['miou_all'])})")
  for k, v in sorted((summary.get("final_metrics") or {}).items()):
    if k.startswith(("g/loss", "d/loss")):
      out.append(f"{k:<24} {v:.4f}")
  for k in ("images_per_sec", "wall_time", "final_step", "best_miou", "best_step"):
    if k in summary:
      out.append(f"{k:<24} {summary[k]}")
  for k, v in sorted((summary.get("paths") or {}).items()):
    out.append(f"{k:<24} {v}")
  return "\n".join(out)


# ----------------------------------------------------------------------------- the loop
def _print_flush(text: str) -> None:
  print(text, flush=True)


@dataclasses.dataclass
class _Run:
  """Mutable bookkeeping of one run."""
  best_miou: float = -1.0
  best_step: int = -1
  last_eval: Optional[Dict[str, Any]] = None
  last_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)
  window_start: float = 0.0
  window_excluded: float = 0.0
  window_steps: int = 0

  def reset_window(self) -> None:
    self.window_start, self.window_excluded, self.window_steps = time.time(), 0.0, 0


def train(config: Any, workdir: str, *, allow_config_change: bool = False,
          data_provider: Any = None, config_source: Optional[str] = None,
          print_fn: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the summary."""
  t_start = time.time()
  print_fn = print_fn or _print_flush
  provider = data_provider or _default_provider()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  par = parallel_lib.Parallel(config.parallel.mode)
  config_validation.validate(config, num_devices=par.num_devices)
  pc, pi = jax.process_count(), jax.process_index()
  is_main = pi == 0
  method = config.method.name
  streams = methods.streams(method, config.method)
  per_step = int(config.batch_size) * int(config.iter_size)
  if per_step % pc:
    raise config_validation.ConfigError(
        f"config.batch_size * iter_size = {per_step} is invalid: expected a multiple of the "
        f"process count ({pc})")
  per_process = per_step // pc
  if per_process % par.num_local:
    raise config_validation.ConfigError(
        f"config.batch_size = {config.batch_size} is invalid: each process reads "
        f"{per_process} images per stream and step, not divisible by its {par.num_local} "
        f"devices")
  stop = int(config.num_steps_stop or config.num_steps)
  os.makedirs(workdir, exist_ok=True)

  # ---- models and fresh states (the restore template) -------------------------------------
  g_model = build_generator(config.model, bn_axis_name=par.axis_name)
  d_model = None if method == "supervised" else build_discriminator(config.disc)
  rng = jax.random.key(int(config.seed))
  init_rng, step_rng = jax.random.split(rng)
  checkpointer = ckpt_lib.TrainCheckpointer(workdir, keep=int(config.keep_checkpoints))
  resuming = checkpointer.latest_step() is not None
  if resuming:  # shapes only: the checkpoint provides the values
    host_states = jax.eval_shape(
        lambda r: state_lib.create_train_states(config, g_model, d_model, r), init_rng)
  else:
    host_states = create_host_states(config, g_model, d_model, init_rng,
                                     initial_generator_variables(config),
                                     initial_discriminator_params(config))
  config_dict = ckpt_lib.config_to_dict(config)

  def check_meta(meta):
    saved = meta.get("config") or {}
    diffs = ckpt_lib.config_differences(saved, config_dict)
    if diffs and not allow_config_change:
      raise ckpt_lib.ConfigChangeError(
          f"{workdir} holds a run with a different config ({len(diffs)} field"
          f"{'s' if len(diffs) > 1 else ''}: {ckpt_lib.format_differences(diffs)}); use a new "
          f"--workdir, or pass --allow_config_change to continue with the new values")
    if diffs:
      log.warning("config changed on resume (--allow_config_change): %s",
                  ckpt_lib.format_differences(diffs))
    if meta.get("method") not in (None, method):
      raise ckpt_lib.ConfigChangeError(f"{workdir}: checkpoint was trained with method "
                                       f"{meta.get('method')!r}, config says {method!r}")

  restored = checkpointer.restore_latest(host_states.g, host_states.d, check_meta)
  run = _Run()
  start_step = 0
  data_states = None
  if restored is not None:
    host_states = state_lib.TrainStates(step=np.asarray(restored.step, np.int32),
                                        g=restored.g, d=restored.d)
    start_step = restored.step
    data_states = restored.data_states
    run.best_miou = float(restored.meta.get("best_miou", -1.0))
    run.best_step = int(restored.meta.get("best_step", -1))
    log.info("resuming from %s (step %d)", restored.path, start_step)

  # ---- data -----------------------------------------------------------------------------
  if data_provider is None:
    prepare_generated_datasets(config, streams)
  split = make_split(config, workdir, provider, streams)
  if restored is not None and restored.meta.get("split"):
    old = restored.meta["split"]
    if (old.get("num_labelled"), old.get("num_examples")) != (split.num_labelled,
                                                              split.num_examples):
      raise ckpt_lib.ConfigChangeError(
          f"{workdir}: the labelled split changed ({old.get('num_labelled')}/"
          f"{old.get('num_examples')} labelled before, {split.num_labelled}/"
          f"{split.num_examples} now)")
  iterators = make_train_iterators(config, provider, streams, split, per_process)
  if data_states:
    for s, st in data_states.items():
      if s in iterators:
        iterators[s].set_state(st)
  eval_info = provider.get_info(config.eval_data.name, config.eval_data.config_name)
  class_names = (eval_info.class_names if eval_info.num_classes == int(config.model.num_classes)
                 else provider.get_info(config.data.name, config.data.config_name).class_names)
  evaluator = Evaluator(config, g_model, par, provider, class_names)

  # ---- logging ----------------------------------------------------------------------------
  writer = logging_utils.create_writer(workdir, enabled=is_main)
  if is_main:
    logging_utils.write_json(os.path.join(workdir, CONFIG_FILE), config_dict)
    writer.write_text(start_step, "config", "```\n" + str(config) + "\n```")
  images_per_step = _images_per_step(config, streams)
  progress = logging_utils.ProgressLine(stop, start_step)
  monitor = diagnostics.GanMonitor(config.diagnostics.d_wins_threshold,
                                   config.diagnostics.d_wins_patience,
                                   config.diagnostics.d_collapse_accuracy)
  acc = metrics_lib.MetricAccumulator()
  paths = {"workdir": workdir, "checkpoints": checkpointer.directory,
           "metrics": os.path.join(workdir, logging_utils.JSONL_FILE),
           "tensorboard": os.path.join(workdir, logging_utils.TENSORBOARD_DIR)}
  if split.path:
    paths["split"] = split.path
  log.info("method %s, streams %s, %d images per stream and step (%d per process), "
           "steps %d..%d of %d, %d device(s) (%s)", method, ",".join(streams), per_step,
           per_process, start_step, stop, int(config.num_steps), par.num_devices, par.mode)
  if jax.default_backend() == "cpu":
    log.info("%s", host_malloc.describe())

  # ---- device states and step ---------------------------------------------------------------
  states = to_device_layout(par, host_states)
  p_step = par.bind_train_step(steps_lib.make_train_step(config, g_model, d_model,
                                                         axis_name=par.axis_name))
  kill_at = int(os.environ.get(KILL_AT_STEP_ENV, "-1") or -1)
  kill_during_save = int(os.environ.get(KILL_DURING_SAVE_ENV, "-1") or -1)
  pending: List[Tuple[int, Any]] = []
  last_states_for_ckpt: Optional[Dict[str, Any]] = data_states
  status = "completed"

  def g_variables(st):
    return {"params": st.g.params, "batch_stats": st.g.batch_stats}

  def flush(step: int) -> Optional[Dict[str, float]]:
    """Host metrics of the pending steps: checks, clu averages, JSONL/TB, console line."""
    nonlocal pending
    if not pending:
      return None
    host = [(s, par.metrics_to_host(m)) for s, m in pending]
    pending = []
    for s, m in host:
      warn = diagnostics.check_finite(s, m, bool(config.diagnostics.skip_nonfinite))
      if warn:
        log.warning("%s", warn)
      acc.update(m)
    scalars = acc.compute()
    acc.reset()
    elapsed = time.time() - run.window_start - run.window_excluded
    if run.window_steps > 0 and elapsed > 0:
      scalars["perf/steps_per_sec"] = run.window_steps / elapsed
      scalars["perf/images_per_sec"] = run.window_steps * images_per_step / elapsed
    run.reset_window()
    run.last_metrics = scalars
    writer.write_scalars(step, scalars)
    for w in monitor.update(step, scalars):
      log.warning("%s", w)
    if is_main:
      print_fn(progress.line(step, scalars, images_per_step))
    return scalars

  def evaluate(step: int, st) -> Dict[str, Any]:
    t0 = time.time()
    confusion, n_images = evaluator(g_variables(st))
    s = metrics_lib.summarize_confusion(confusion, evaluator.mean_mode)
    per_class = {n: float(v) for n, v in zip(class_names, s["per_class_iou"])}
    ev = {"step": step, "num_images": n_images, "miou": s["miou"],
          "mean_mode": s["mean_mode"], "definition": s["definition"],
          "miou_voc": s["miou_voc"], "miou_nanmean": s["miou_nanmean"],
          "miou_all": s["miou_all"], "pixel_accuracy": s["pixel_accuracy"],
          "per_class_iou": per_class, "seconds": time.time() - t0}
    scalars = {"eval/miou": s["miou"], "eval/miou_voc": s["miou_voc"],
               "eval/miou_nanmean": s["miou_nanmean"], "eval/miou_all": s["miou_all"],
               "eval/pixel_accuracy": s["pixel_accuracy"]}
    scalars.update({f"eval/iou/{n}": v for n, v in per_class.items()})
    writer.write_scalars(step, scalars)
    if is_main:
      print_fn(f"eval step {step}: mIoU {_pct(s['miou'])} ({s['mean_mode']}; all classes "
               f"{_pct(s['miou_all'])}, pixel acc {_pct(s['pixel_accuracy'])}) on "
               f"{n_images} images in {ev['seconds']:.1f}s")
    miou = s["miou"] if math.isfinite(s["miou"]) else -1.0
    if miou > run.best_miou:
      run.best_miou, run.best_step = miou, step
      spec = export.generator_spec_from_config(config, step=step, miou=miou,
                                                 mean_mode=s["mean_mode"])
      host_vars = par.unreplicate(g_variables(st))
      paths["best_model"] = export.export_model(os.path.join(workdir, ckpt_lib.BEST_MODEL),
                                                  host_vars, spec)
      log.info("new best mIoU %s at step %d -> %s", _pct(miou), step, paths["best_model"])
    run.last_eval = ev
    return ev

  def meta(step: int) -> Dict[str, Any]:
    return {"step": step, "seed": int(config.seed),
            "rng": np.asarray(jax.random.key_data(rng)).tolist(),
            "best_miou": run.best_miou, "best_step": run.best_step, "method": method,
            "split": split.to_json(), "config": config_dict, "process_count": pc,
            "config_source": config_source, "time": time.time()}

  def save(step: int, st) -> None:
    host = par.unreplicate(st)
    checkpointer.save(step, host.g, host.d, meta(step), last_states_for_ckpt)

  prefetch = Prefetcher(iterators)
  step = start_step
  compiled = False
  try:
    with PreemptionGuard() as guard:
      while step < stop:
        t0 = time.time()
        batch, it_states = prefetch.next()
        sharded = par.shard_batch(batch)
        states, m = p_step(states, sharded, jax.random.fold_in(step_rng, step))
        step += 1
        last_states_for_ckpt = it_states
        pending.append((step, m))
        if not compiled:
          jax.block_until_ready(m)
          compiled = True
          log.info("first step (incl. compilation) took %.1fs", time.time() - t0)
          progress.reset_clock(step)
          run.reset_window()
        else:
          run.window_steps += 1
        last = step == stop
        do_log = step % int(config.log_every) == 0 or last
        do_eval = step % int(config.eval_every) == 0 or last
        do_ckpt = step % int(config.checkpoint_every) == 0 or last or guard.requested
        if do_log or do_eval or do_ckpt:
          flush(step)
        t_side = time.time()
        if do_eval:
          evaluate(step, states)
        if do_ckpt:
          save(step, states)
          if step == kill_during_save:
            os.kill(os.getpid(), signal.SIGKILL)
        if do_eval or do_ckpt:
          run.window_excluded += time.time() - t_side
          progress.reset_clock(step)
        if step == kill_at:
          checkpointer.wait()  # the saves so far are durable, then die without cleanup
          os.kill(os.getpid(), signal.SIGKILL)
        if guard.requested:
          if not do_ckpt:  # the signal came after this step's checkpoint decision
            flush(step)
            save(step, states)
          status = f"preempted ({guard.signal_name})"
          log.warning("%s received: saved step %d, stopping", guard.signal_name, step)
          break
  finally:
    prefetch.close()
    try:
      checkpointer.close()
    finally:
      writer.flush()

  # ---- end of run -----------------------------------------------------------------------------
  if step >= stop and start_step >= stop:
    log.info("%s is already at step %d (stop %d): nothing to train", workdir, step, stop)
  if status == "completed" and run.last_eval is None:
    evaluate(step, states)
  if status == "completed":
    spec = export.generator_spec_from_config(config, step=step)
    paths["final_model"] = export.export_model(os.path.join(workdir, ckpt_lib.FINAL_MODEL),
                                                 par.unreplicate(g_variables(states)), spec)
  if os.path.isdir(os.path.join(workdir, ckpt_lib.BEST_MODEL)):
    paths["best_model"] = os.path.join(workdir, ckpt_lib.BEST_MODEL)
  wall = time.time() - t_start
  ev = run.last_eval
  final_metrics = {k: v for k, v in run.last_metrics.items() if not k.startswith("eval/")}
  summary = {
      "status": status,
      "method": method, "config": config_source, "workdir": workdir,
      "start_step": start_step, "final_step": step, "num_steps": int(config.num_steps),
      "stop_step": stop, "wall_time": logging_utils.format_duration(wall),
      "wall_time_s": round(wall, 2),
      "images_per_sec": round(final_metrics.get("perf/images_per_sec", float("nan")), 3),
      "steps_per_sec": round(final_metrics.get("perf/steps_per_sec", float("nan")), 4),
      "images_per_step": images_per_step, "devices": par.num_devices,
      "processes": pc, "parallel_mode": par.mode,
      "miou": ev["miou"] if ev else None, "mean_mode": ev["mean_mode"] if ev else None,
      "best_miou": run.best_miou if run.best_step >= 0 else None,
      "best_step": run.best_step if run.best_step >= 0 else None,
      "eval": ev, "final_metrics": final_metrics, "split": split.to_json(),
      "problems": list(checkpointer.problems), "paths": dict(paths),
  }
  if status == "completed" and stop < int(config.num_steps):
    summary["status"] = f"stopped at num_steps_stop={stop}"
  if is_main:
    paths["summary_md"] = os.path.join(workdir, SUMMARY_MD)
    paths["summary_json"] = os.path.join(workdir, SUMMARY_JSON)
    summary["paths"] = dict(paths)
    write_summary(workdir, summary)
    print_fn(console_table(summary))
  writer.close()
  return summary
