"""The training loop: restore or initialise, stream batches, step, log, evaluate, save.

    summary = train(config, workdir)            # what `python -m advseg_jax train` runs

Data streams: `advseg_jax.train.streams`; initial weights: `advseg_jax.train.init`; the
step: `advseg_jax.train.steps`, mapped over devices by `advseg_jax.train.parallel`.

Evaluation (`eval_every` steps and at the end) runs `advseg_jax.inference.evaluator` on
`config.eval_data`: mIoU as in `advseg_jax.metrics` (`config.eval_mean_mode`, or the
protocol of the eval mode). A better mIoU is exported to WORKDIR/best_model/, the end of a
completed run to WORKDIR/final_model/ (`advseg_jax.train.export`).

Workdir: checkpoints (see `advseg_jax.train.checkpoint`), `metrics.jsonl`, `tensorboard/`,
`config.json`, `split.json`, `summary.md`, `summary.json`.

`data_provider` (tests) replaces `advseg_jax.data` with anything that has the same four
functions (`get_info`, `num_examples`, `make_train_iterator`, `make_eval_iterator`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import numpy as np

from advseg_jax import data
from advseg_jax import logging_utils
from advseg_jax import methods
from advseg_jax.config import validation as config_validation
from advseg_jax.config.diff import config_to_dict
from advseg_jax.inference.evaluator import Evaluator
from advseg_jax.models import build_discriminator, build_generator
from advseg_jax.data.image_io import BadExampleError
from advseg_jax.train import checkpoint as ckpt_lib
from advseg_jax.train import diagnostics
from advseg_jax.train import export as export_lib
from advseg_jax.train import init as init_lib
from advseg_jax.train import parallel as parallel_lib
from advseg_jax.train import state as state_lib
from advseg_jax.train import steps as steps_lib
from advseg_jax.train import streams as streams_lib
from advseg_jax.train import summary as summary_lib
from advseg_jax.train.errors import TrainingError
from advseg_jax.train.preemption import PreemptionGuard
from advseg_jax.train.progress import StepLogger
from advseg_jax.train.workdir_lock import WorkdirLock

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
# What stops a run part-way: reported with summary.json's status "failed: ...".
RUN_FAILURES = (diagnostics.NonFiniteError, ckpt_lib.CheckpointWriteError, BadExampleError)
__all__ = ["TrainingError", "train"]


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """The fixed shape of a run: method, streams, batch per process, last step."""
  method: str
  streams: Tuple[str, ...]
  per_step: int       # images per stream and step, all processes
  per_process: int    # ... read by this process
  stop: int           # the step this run stops after

  @classmethod
  def create(cls, config: Any, par: parallel_lib.Parallel) -> "RunPlan":
    """Validates `config` for `par`'s devices; ConfigError names the field."""
    config_validation.validate(config, num_devices=par.num_devices)
    pc = jax.process_count()
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
    method = config.method.name
    return cls(method, tuple(methods.streams(method, config.method)), per_step, per_process,
               int(config.num_steps_stop or config.num_steps))


@dataclasses.dataclass
class RunState:
  """What changes while a run trains."""
  step: int
  states: Any                                     # TrainStates in the device layout
  data_states: Optional[Dict[str, Any]] = None    # iterator states after the last batch used
  best_miou: float = -1.0
  best_step: int = -1
  last_eval: Optional[Dict[str, Any]] = None
  status: str = "completed"


class _Trainer:
  """One run's fixed parts (models, checkpointer, evaluator, writer) and its actions."""

  def __init__(self, config: Any, workdir: str, par: parallel_lib.Parallel, plan: RunPlan,
               print_fn: Callable[[str], None], config_source: Optional[str]):
    self.config, self.workdir, self.par, self.plan = config, workdir, par, plan
    self.print_fn, self.config_source = print_fn, config_source
    self.is_main = jax.process_index() == 0
    self.g_model = build_generator(config.model, bn_axis_name=par.axis_name)
    self.d_model = None if plan.method == "supervised" else build_discriminator(config.disc)
    self.rng = jax.random.key(int(config.seed))
    self.init_rng, self.step_rng = jax.random.split(self.rng)
    self.checkpointer = ckpt_lib.TrainCheckpointer(workdir, keep=int(config.keep_checkpoints))
    self.config_dict = config_to_dict(config)
    self.images_per_step = summary_lib.images_per_step(config, plan.streams)
    self.paths: Dict[str, str] = {}
    # set by open_streams / start_logging
    self.split: Optional[streams_lib.SplitInfo] = None
    self.class_names: Tuple[str, ...] = ()
    self.evaluator: Optional[Evaluator] = None
    self.writer: Optional[logging_utils.Writer] = None
    self.logger: Optional[StepLogger] = None

  def restore(self, allow_config_change: bool) -> Tuple[RunState, Optional[Dict[str, Any]]]:
    """The run state at the latest checkpoint (or fresh), and that checkpoint's meta."""
    start = init_lib.restore_or_init(self.config, self.checkpointer, self.g_model,
                                     self.d_model, self.init_rng,
                                     allow_config_change=allow_config_change)
    run = RunState(step=start.step, states=self.par.replicate(start.host_states),
                   data_states=start.data_states, best_miou=start.best_miou,
                   best_step=start.best_step)
    return run, start.meta

  def open_streams(self, run: RunState, provider: Any, resumed_meta: Optional[dict],
                   prepare: bool) -> Dict[str, Any]:
    """The split, the train iterators (at the restored position) and the evaluator."""
    config, plan = self.config, self.plan
    if prepare:
      streams_lib.prepare_generated_datasets(config, plan.streams)
    self.split = streams_lib.make_split(config, self.workdir, provider, plan.streams)
    init_lib.check_split(self.workdir, resumed_meta, self.split)
    iterators = streams_lib.make_train_iterators(config, provider, plan.streams, self.split,
                                                 plan.per_process)
    for s, st in (run.data_states or {}).items():
      if s in iterators:
        iterators[s].set_state(st)
    eval_info = provider.get_info(config.eval_data.name, config.eval_data.config_name)
    self.class_names = (
        eval_info.class_names if eval_info.num_classes == int(config.model.num_classes)
        else provider.get_info(config.data.name, config.data.config_name).class_names)
    self.evaluator = Evaluator(config, self.g_model, self.par, provider, self.class_names)
    return iterators

  def start_logging(self, run: RunState) -> None:
    """metrics.jsonl / TensorBoard, config.json, and the run's first log line."""
    config, plan, par = self.config, self.plan, self.par
    if self.is_main:
      metrics_path = os.path.join(self.workdir, logging_utils.JSONL_FILE)
      dropped = logging_utils.truncate_jsonl(metrics_path, run.step)
      if dropped:
        log.info("%s: dropped %d row(s) logged after step %d (the run logs those steps "
                 "again)", metrics_path, dropped, run.step)
    self.writer = logging_utils.create_writer(self.workdir, enabled=self.is_main)
    if self.is_main:
      logging_utils.write_json(os.path.join(self.workdir, CONFIG_FILE), self.config_dict)
      self.writer.write_text(run.step, "config", "```\n" + str(config) + "\n```")
    self.logger = StepLogger(config, self.writer, par, plan.stop, run.step,
                             self.images_per_step, self.print_fn if self.is_main else None)
    self.paths.update({"workdir": self.workdir, "checkpoints": self.checkpointer.directory,
                       "metrics": os.path.join(self.workdir, logging_utils.JSONL_FILE),
                       "tensorboard": os.path.join(self.workdir, logging_utils.TENSORBOARD_DIR)})
    if self.split.path:
      self.paths["split"] = self.split.path
    log.info("method %s, streams %s, %d images per stream and step (%d per process), "
             "steps %d..%d of %d, %d device(s) (%s)", plan.method, ",".join(plan.streams),
             plan.per_step, plan.per_process, run.step, plan.stop, int(config.num_steps),
             par.num_devices, par.mode)

  # ------------------------------------------------------------------------------ actions
  def evaluate(self, run: RunState) -> None:
    """Evaluates the current generator; a better mIoU is exported to best_model/."""
    t0 = time.time()
    confusion, n_images = self.evaluator(state_lib.generator_variables(run.states))
    ev, scalars = summary_lib.eval_record(run.step, confusion, n_images,
                                          self.evaluator.mean_mode, self.class_names,
                                          time.time() - t0)
    self.writer.write_scalars(run.step, scalars)
    if self.is_main:
      self.print_fn(summary_lib.eval_line(ev))
    miou = ev["miou"] if math.isfinite(ev["miou"]) else -1.0
    if miou > run.best_miou:
      run.best_miou, run.best_step = miou, run.step
      self.paths["best_model"] = self.export(ckpt_lib.BEST_MODEL, run, miou=miou,
                                             mean_mode=ev["mean_mode"])
      log.info("new best mIoU %s at step %d -> %s", summary_lib.pct(miou), run.step,
               self.paths["best_model"])
    run.last_eval = ev

  def export(self, name: str, run: RunState, **extra: Any) -> str:
    """Writes the current generator to WORKDIR/NAME (a model directory)."""
    spec = export_lib.generator_spec_from_config(self.config, step=run.step, **extra)
    return export_lib.export_model(os.path.join(self.workdir, name),
                                   self.par.unreplicate(state_lib.generator_variables(run.states)), spec)

  def save(self, run: RunState) -> None:
    """Starts the asynchronous checkpoint of `run.step`."""
    host = self.par.unreplicate(run.states)
    meta = {"step": run.step, "seed": int(self.config.seed),
            "rng": np.asarray(jax.random.key_data(self.rng)).tolist(),
            "best_miou": run.best_miou, "best_step": run.best_step, "method": self.plan.method,
            "split": self.split.to_json(), "config": self.config_dict,
            "process_count": jax.process_count(), "config_source": self.config_source,
            "time": time.time()}
    self.checkpointer.save(run.step, host.g, host.d, meta, run.data_states)

  def close(self) -> None:
    try:
      self.checkpointer.close()
    finally:
      self.writer.flush()

  # ------------------------------------------------------------------------------ loop
  def train_steps(self, run: RunState, prefetch: streams_lib.Prefetcher,
                  guard: PreemptionGuard) -> None:
    """Steps until `plan.stop` or a preemption signal (then saves and stops)."""
    config, stop = self.config, self.plan.stop
    p_step = self.par.bind_train_step(steps_lib.make_train_step(
        config, self.g_model, self.d_model, axis_name=self.par.axis_name))
    while run.step < stop:
      t0 = time.time()
      batch, run.data_states = prefetch.next()
      run.states, m = p_step(run.states, self.par.shard_batch(batch),
                             jax.random.fold_in(self.step_rng, run.step))
      run.step += 1
      self.logger.add(run.step, m, t0)
      last = run.step == stop
      do_log = run.step % int(config.log_every) == 0 or last
      do_eval = run.step % int(config.eval_every) == 0 or last
      do_ckpt = run.step % int(config.checkpoint_every) == 0 or last or guard.requested
      if do_log or do_eval or do_ckpt:
        self.logger.flush(run.step)
      with self.logger.side_work(run.step, do_eval or do_ckpt):
        if do_eval:
          self.evaluate(run)
        if do_ckpt:
          self.save(run)
      if guard.requested:
        if not do_ckpt:  # the signal came after this step's checkpoint decision
          self.logger.flush(run.step)
          self.save(run)
        run.status = f"preempted ({guard.signal_name})"
        log.warning("%s received: saved step %d, stopping", guard.signal_name, run.step)
        break

  def finish(self, run: RunState, start_step: int, t_start: float) -> Dict[str, Any]:
    """Final evaluation and export of a completed run; the summary (written by process 0)."""
    stop = self.plan.stop
    if run.step >= stop and start_step >= stop:
      log.info("%s is already at step %d (stop %d): nothing to train", self.workdir,
               run.step, stop)
    if run.status == "completed" and run.last_eval is None:
      self.evaluate(run)
    if run.status == "completed":
      self.paths["final_model"] = self.export(ckpt_lib.FINAL_MODEL, run)
    return self.summarize(run, start_step, t_start)

  def summarize(self, run: RunState, start_step: int, t_start: float) -> Dict[str, Any]:
    """The summary of the run so far (written by process 0 with the end-of-run table)."""
    stop = self.plan.stop
    if os.path.isdir(os.path.join(self.workdir, ckpt_lib.BEST_MODEL)):
      self.paths["best_model"] = os.path.join(self.workdir, ckpt_lib.BEST_MODEL)
    summary = summary_lib.make_summary(
        run, config=self.config, config_source=self.config_source, workdir=self.workdir,
        method=self.plan.method, start_step=start_step, stop=stop,
        wall=time.time() - t_start, last_metrics=self.logger.last_metrics,
        images_per_step=self.images_per_step, par=self.par,
        split=self.split.to_json(), problems=self.checkpointer.problems, paths=self.paths)
    if self.is_main:
      self.paths["summary_md"] = os.path.join(self.workdir, summary_lib.SUMMARY_MD)
      self.paths["summary_json"] = os.path.join(self.workdir, summary_lib.SUMMARY_JSON)
      summary["paths"] = dict(self.paths)
      summary_lib.write_summary(self.workdir, summary)
      if not run.status.startswith("failed"):
        self.print_fn(summary_lib.console_table(summary))
    self.writer.close()
    return summary

  def fail(self, run: RunState, start_step: int, t_start: float,
           error: BaseException) -> BaseException:
    """Records a run stopped by `error` (summary.json status "failed: ..."); returns the
    error to raise (a non-finite step's with what the checkpoints hold)."""
    if isinstance(error, diagnostics.NonFiniteError):
      error = diagnostics.NonFiniteError(
          f"{error} {self._checkpoint_context(error.step, start_step)}", step=error.step)
    run.status = f"failed: {ckpt_lib.one_line(error, 400)}"
    try:
      self.summarize(run, start_step, t_start)
    except OSError as e:  # a full disk: the error itself is what the person must see
      log.warning("could not write the summary of the failed run: %s", ckpt_lib.one_line(e))
    return error

  def _checkpoint_context(self, bad_step: Optional[int], start_step: int) -> str:
    """What the checkpoints hold when step `bad_step` was not finite."""
    if start_step > 0 and bad_step == start_step + 1:
      return (f"It is the first step after resuming from {self.checkpointer.step_dir(start_step)}"
              f", so that checkpoint is the likely cause (or a config changed on resume): move "
              f"it to {ckpt_lib.CORRUPT_DIR}/ to resume from the one before, or start a new "
              f"--workdir.")
    done = ckpt_lib.valid_steps(self.checkpointer.directory)
    if not done:
      return "No checkpoint was written before this step."
    return f"The latest checkpoint is step {done[0]}; a rerun resumes from it."


def _print_flush(text: str) -> None:
  print(text, flush=True)


def _steps(trainer: _Trainer, run: RunState, prefetch: streams_lib.Prefetcher
           ) -> Optional[BaseException]:
  """Trains until the end, a preemption or a failure of `RUN_FAILURES` (returned)."""
  try:
    try:
      with PreemptionGuard() as guard:
        trainer.train_steps(run, prefetch, guard)
    finally:
      prefetch.close()
      trainer.close()
  except RUN_FAILURES as e:
    return e
  return None


def train(config: Any, workdir: str, *, allow_config_change: bool = False,
          data_provider: Any = None, config_source: Optional[str] = None,
          print_fn: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
  """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the summary.

  The workdir is locked for the run (`WorkdirLockedError` if another run holds it); a run
  stopped by one of `RUN_FAILURES` writes summary.json with status "failed: ..." and raises.
  """
  t_start = time.time()
  workdir = os.path.abspath(os.path.expanduser(workdir))
  par = parallel_lib.Parallel(config.parallel.mode)
  plan = RunPlan.create(config, par)
  os.makedirs(workdir, exist_ok=True)
  with WorkdirLock(workdir, enabled=jax.process_index() == 0):
    trainer = _Trainer(config, workdir, par, plan, print_fn or _print_flush, config_source)
    run, resumed_meta = trainer.restore(allow_config_change)
    start_step = run.step
    iterators = trainer.open_streams(run, data_provider or data, resumed_meta,
                                     prepare=data_provider is None)
    trainer.start_logging(run)
    error = _steps(trainer, run, streams_lib.Prefetcher(iterators))
    if error is None:
      try:
        return trainer.finish(run, start_step, t_start)
      except RUN_FAILURES as e:  # the final evaluation or export
        error = e
    raise trainer.fail(run, start_step, t_start, error) from None
