"""Per-step bookkeeping of the loop: metrics waiting to be logged, throughput, console line.

    logger = StepLogger(config, writer, par, stop, start_step, images_per_step, print)
    logger.add(step, device_metrics, t0)        # after each step
    scalars = logger.flush(step)               # at log / eval / checkpoint steps
    with logger.side_work(step, active=True):  # evaluation / checkpoint: not step time
      ...

`flush` fetches the metrics of the steps since the last flush, checks them for non-finite
values (`diagnostics.check_finite`), averages them (`metrics.MetricAccumulator`), adds
`perf/steps_per_sec` and `perf/images_per_sec`, writes one row to metrics.jsonl /
TensorBoard, runs the D-wins / D-collapse monitor and prints the progress line.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import jax

from advseg_jax import logging_utils
from advseg_jax import metrics as metrics_lib
from advseg_jax.train import diagnostics

log = logging.getLogger(__name__)


class StepLogger:
  """Collects step metrics between log points and reports them (see the module docstring)."""

  def __init__(self, config: Any, writer: logging_utils.Writer, par: Any, stop: int,
               start_step: int, images_per_step: int,
               print_fn: Optional[Callable[[str], None]]):
    self.writer, self.par = writer, par
    self.images_per_step = images_per_step
    self.print_fn = print_fn  # None: no console line (processes other than 0)
    self.skip_nonfinite = bool(config.diagnostics.skip_nonfinite)
    self.progress = logging_utils.ProgressLine(stop, start_step)
    self.monitor = diagnostics.GanMonitor(config.diagnostics.d_wins_threshold,
                                          config.diagnostics.d_wins_patience,
                                          config.diagnostics.d_collapse_accuracy)
    self.accumulator = metrics_lib.MetricAccumulator()
    self.last_metrics: Dict[str, float] = {}
    self._pending: List[Tuple[int, Any]] = []
    self._compiled = False
    self._reset_window()

  def _reset_window(self) -> None:
    self._window_start, self._window_excluded, self._window_steps = time.time(), 0.0, 0

  def add(self, step: int, metrics: Any, t0: float) -> None:
    """Records the device metrics of `step` (started at time `t0`); the first step waits
    for its result and logs the compilation time, and is left out of the throughput."""
    self._pending.append((step, metrics))
    if self._compiled:
      self._window_steps += 1
      return
    jax.block_until_ready(metrics)
    self._compiled = True
    log.info("first step (incl. compilation) took %.1fs", time.time() - t0)
    self.progress.reset_clock(step)
    self._reset_window()

  def flush(self, step: int) -> Optional[Dict[str, float]]:
    """Logs the pending steps' averages at `step`; None when nothing is pending."""
    if not self._pending:
      return None
    host = [(s, self.par.metrics_to_host(m)) for s, m in self._pending]
    self._pending = []
    for s, m in host:
      warn = diagnostics.check_finite(s, m, self.skip_nonfinite)
      if warn:
        log.warning("%s", warn)
      self.accumulator.update(m)
    scalars = self.accumulator.compute()
    self.accumulator.reset()
    elapsed = time.time() - self._window_start - self._window_excluded
    if self._window_steps > 0 and elapsed > 0:
      scalars["perf/steps_per_sec"] = self._window_steps / elapsed
      scalars["perf/images_per_sec"] = self._window_steps * self.images_per_step / elapsed
    self._reset_window()
    self.last_metrics = scalars
    self.writer.write_scalars(step, scalars)
    for w in self.monitor.update(step, scalars):
      log.warning("%s", w)
    if self.print_fn is not None:
      self.print_fn(self.progress.line(step, scalars, self.images_per_step))
    return scalars

  @contextlib.contextmanager
  def side_work(self, step: int, active: bool) -> Iterator[None]:
    """Leaves the time spent inside (evaluation, checkpoint) out of the throughput."""
    t0 = time.time()
    yield
    if active:
      self._window_excluded += time.time() - t0
      self.progress.reset_clock(step)
