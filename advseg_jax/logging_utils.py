"""Where training numbers go: TensorBoard event files, `metrics.jsonl`, the console.

    writer = create_writer(workdir)          # TensorBoard + JSONL (a no-op on processes != 0)
    writer.write_scalars(step, {"g/loss": 0.7, "eval/miou": 0.41})
    writer.write_text(step, "config", config_text)
    writer.close()

TensorBoard: `clu.metric_writers` when TensorFlow and tensorboard are importable (the `[tf]`
extra), otherwise `tensorboardX` (no TensorFlow needed). Both write standard
`events.out.tfevents.*` files under `workdir/tensorboard/`.

`metrics.jsonl`: one JSON object per write, `{"step": N, "time": unix_seconds, name: value,
...}`, flushed at once so a crash loses nothing; non-finite values are written as null.

`ProgressLine` formats the console line printed every `log_every` steps, e.g.
`step 120/20000 (0.6%) | g/loss 1.234 d/loss 0.693 | 5.1 img/s 0.39 s/step | ETA 2h09m`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

log = logging.getLogger(__name__)

JSONL_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _finite_or_none(v: Any) -> Optional[float]:
  try:
    f = float(v)
  except (TypeError, ValueError):
    return None
  return f if math.isfinite(f) else None


# ----------------------------------------------------------------------------- writers
class Writer:
  """Interface (and the no-op writer used on processes other than 0)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    pass

  def write_text(self, step: int, tag: str, text: str) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class JsonlWriter(Writer):
  """Appends one JSON line per `write_scalars` call to `path`."""

  def __init__(self, path: str):
    self.path = os.path.abspath(path)
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    self._f = open(self.path, "a")

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    row: Dict[str, Any] = {"step": int(step), "time": round(time.time(), 3)}
    for k, v in scalars.items():
      row[str(k)] = _finite_or_none(v)
    self._f.write(json.dumps(row) + "\n")
    self._f.flush()

  def close(self) -> None:
    if not self._f.closed:
      self._f.close()


def truncate_jsonl(path: str, last_step: int) -> int:
  """Drops the rows of `path` logged after step `last_step` (a resumed run logs those steps
  again) and a torn last line; returns how many rows were dropped."""
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      step = int(json.loads(line)["step"]) if line.endswith("\n") else None
    except (ValueError, KeyError, TypeError):
      step = None
    if step is not None and step <= last_step:
      keep.append(line)
  if len(keep) < len(lines):
    write_text_file(path, "".join(keep))
  return len(lines) - len(keep)


def tensorflow_available() -> bool:
  return (importlib.util.find_spec("tensorflow") is not None
          and importlib.util.find_spec("tensorboard") is not None)


class TensorBoardWriter(Writer):
  """TensorBoard event files via clu (with TF) or tensorboardX (without)."""

  def __init__(self, logdir: str, backend: str = "auto"):
    self.logdir = os.path.abspath(logdir)
    os.makedirs(self.logdir, exist_ok=True)
    self._clu = None
    self._tbx = None
    if backend not in ("auto", "clu", "tensorboardX"):
      raise ValueError(f"backend must be 'auto', 'clu' or 'tensorboardX', got {backend!r}")
    if backend in ("auto", "clu") and tensorflow_available():
      try:
        from clu import metric_writers  # pylint: disable=import-outside-toplevel
        self._clu = metric_writers.SummaryWriter(self.logdir)
      except Exception as e:  # pylint: disable=broad-except
        if backend == "clu":
          raise
        log.info("clu metric writers unavailable (%s); using tensorboardX", e)
    if self._clu is None:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self._tbx = SummaryWriter(logdir=self.logdir, flush_secs=30)
    self.backend = "clu" if self._clu is not None else "tensorboardX"

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    clean = {k: float(v) for k, v in scalars.items() if _finite_or_none(v) is not None}
    if self._clu is not None:
      self._clu.write_scalars(int(step), clean)
    else:
      for k, v in clean.items():
        self._tbx.add_scalar(k, v, global_step=int(step))

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self._clu is not None:
      self._clu.write_texts(int(step), {tag: text})
    else:
      self._tbx.add_text(tag, text, global_step=int(step))

  def flush(self) -> None:
    (self._clu or self._tbx).flush()

  def close(self) -> None:
    (self._clu or self._tbx).close()


class MultiWriter(Writer):

  def __init__(self, writers: Sequence[Writer]):
    self.writers = list(writers)

  def write_scalars(self, step, scalars):
    for w in self.writers:
      w.write_scalars(step, scalars)

  def write_text(self, step, tag, text):
    for w in self.writers:
      w.write_text(step, tag, text)

  def flush(self):
    for w in self.writers:
      w.flush()

  def close(self):
    for w in self.writers:
      w.close()


def create_writer(workdir: str, *, enabled: bool = True, tensorboard: bool = True,
                  backend: str = "auto") -> Writer:
  """TensorBoard (`workdir/tensorboard`) + JSONL (`workdir/metrics.jsonl`); no-op if disabled."""
  if not enabled:
    return Writer()
  writers: List[Writer] = [JsonlWriter(os.path.join(workdir, JSONL_FILE))]
  if tensorboard:
    writers.append(TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR), backend))
  return MultiWriter(writers)


# ----------------------------------------------------------------------------- console
def format_duration(seconds: float) -> str:
  """3725 -> '1h02m', 95 -> '1m35s', 4.2 -> '4.2s'."""
  if seconds is None or not math.isfinite(seconds) or seconds < 0:
    return "?"
  if seconds < 10:
    return f"{seconds:.1f}s"
  s = int(round(seconds))
  d, s = divmod(s, 86400)
  h, s = divmod(s, 3600)
  m, s = divmod(s, 60)
  if d:
    return f"{d}d{h:02d}h"
  if h:
    return f"{h}h{m:02d}m"
  if m:
    return f"{m}m{s:02d}s"
  return f"{s}s"


def _fmt_value(v: float) -> str:
  if v is None or not math.isfinite(v):
    return str(v)
  a = abs(v)
  if a != 0 and (a < 1e-3 or a >= 1e4):
    return f"{v:.3e}"
  return f"{v:.4f}"


DEFAULT_CONSOLE_KEYS = ("g/loss", "g/loss_seg", "g/loss_adv", "g/loss_semi", "d/loss",
                        "eval/miou")


class ProgressLine:
  """Console progress with throughput and ETA (rate measured since the last line)."""

  def __init__(self, total_steps: int, start_step: int = 0,
               keys: Sequence[str] = DEFAULT_CONSOLE_KEYS):
    self.total = int(total_steps)
    self.keys = tuple(keys)
    self._last_step = int(start_step)
    self._last_time = time.time()
    self._rate: Optional[float] = None  # steps per second (smoothed)

  def reset_clock(self, step: int) -> None:
    """Restart timing (e.g. after compilation or an evaluation)."""
    self._last_step = int(step)
    self._last_time = time.time()

  def line(self, step: int, scalars: Mapping[str, float],
           images_per_step: Optional[int] = None) -> str:
    now = time.time()
    steps = step - self._last_step
    dt = now - self._last_time
    if steps > 0 and dt > 0:
      r = steps / dt
      self._rate = r if self._rate is None else 0.7 * self._rate + 0.3 * r
    self._last_step, self._last_time = step, now
    pct = 100.0 * step / max(self.total, 1)
    parts = [f"step {step}/{self.total} ({pct:.1f}%)"]
    vals = [f"{k} {_fmt_value(scalars[k])}" for k in self.keys if k in scalars]
    if vals:
      parts.append(" ".join(vals))
    if self._rate:
      speed = f"{1.0 / self._rate:.2f} s/step"
      if images_per_step:
        speed = f"{self._rate * images_per_step:.1f} img/s {speed}"
      parts.append(speed)
      parts.append(f"ETA {format_duration((self.total - step) / self._rate)}")
    return " | ".join(parts)


# ----------------------------------------------------------------------------- tables
def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  def cell(v):
    if isinstance(v, float):
      return _fmt_value(v) if math.isfinite(v) else "n/a"
    return str(v)

  lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
  lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
  return "\n".join(lines)


def to_jsonable(x: Any) -> Any:
  """numpy scalars/arrays and non-finite floats -> plain JSON values (NaN/Inf -> None)."""
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, np.ndarray):
    return to_jsonable(x.tolist())
  if isinstance(x, (np.bool_, bool)):
    return bool(x)
  if isinstance(x, (np.integer, int)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return _finite_or_none(x)
  return x


def write_json(path: str, obj: Any) -> str:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(to_jsonable(obj), f, indent=2)
    f.write("\n")
  os.replace(tmp, path)
  return path


def write_text_file(path: str, text: str) -> str:
  tmp = f"{path}.tmp-{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
  return path


class _StderrHandler(logging.StreamHandler):
  """Writes to whatever `sys.stderr` is at emit time (works under pytest's capture)."""

  def __init__(self):
    super().__init__()

  @property
  def stream(self):  # type: ignore[override]
    import sys  # pylint: disable=import-outside-toplevel
    return sys.stderr

  @stream.setter
  def stream(self, value):  # StreamHandler.__init__ assigns it
    pass


def setup_console_logging(level: int = logging.INFO) -> None:
  """One-line `L HH:MM:SS message` records on stderr for the `advseg_jax` loggers (not
  propagated to the root logger, so absl / other handlers do not print them twice)."""
  root = logging.getLogger("advseg_jax")
  if not any(getattr(h, "_advseg_console", False) for h in root.handlers):
    h = _StderrHandler()
    h.setFormatter(logging.Formatter("%(levelname).1s %(asctime)s %(message)s", "%H:%M:%S"))
    h._advseg_console = True  # pylint: disable=protected-access
    root.addHandler(h)
  root.setLevel(level)
  root.propagate = False


# ----------------------------------------------------------------------------- library noise
class _QuietFileHandler(logging.FileHandler):
  """A log file that goes silent (instead of printing tracebacks) when it cannot be written,
  e.g. on the full disk it would otherwise report about."""

  def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
    self.setLevel(logging.CRITICAL + 1)

  def flush(self) -> None:
    try:
      super().flush()
    except OSError:
      self.setLevel(logging.CRITICAL + 1)

  def close(self) -> None:
    try:
      super().close()
    except OSError:  # the buffered tail could not be written
      pass


class LibraryLog:
  """Sends other libraries' log records (orbax, tensorstore, absl, asyncio), uncaught
  exceptions of background threads, unraisable exceptions and Python warnings to the file
  `path` instead of stderr; the `advseg_jax` console lines go there too.

      with LibraryLog(os.path.join(workdir, "train.log")) as details:
        ...                                   # details.path: where to point the person
  """

  def __init__(self, path: str, level: int = logging.WARNING):
    self.path, self.level = os.path.abspath(path), level
    self._saved: Optional[tuple] = None
    self._handler: Optional[logging.Handler] = None

  def __enter__(self) -> "LibraryLog":
    handler = _QuietFileHandler(self.path, delay=True)
    handler.setFormatter(logging.Formatter(
        "%(levelname).1s %(asctime)s %(name)s %(threadName)s: %(message)s"))
    root = logging.getLogger()
    self._saved = (list(root.handlers), root.level, threading.excepthook, sys.unraisablehook)
    self._handler = handler
    root.handlers = [handler]
    root.setLevel(self.level)
    logging.getLogger("advseg_jax").addHandler(handler)
    logging.captureWarnings(True)
    noise = logging.getLogger("background")
    threading.excepthook = lambda a: noise.error(
        "uncaught exception in thread %s", getattr(a.thread, "name", "?"),
        exc_info=(a.exc_type, a.exc_value, a.exc_traceback))
    sys.unraisablehook = lambda u: noise.error(
        "%s: %r", u.err_msg or "exception ignored", u.object,
        exc_info=(u.exc_type, u.exc_value, u.exc_traceback))
    return self

  def __exit__(self, *exc: Any) -> None:
    handlers, level, threading.excepthook, sys.unraisablehook = self._saved
    root = logging.getLogger()
    root.handlers = handlers
    root.setLevel(level)
    logging.getLogger("advseg_jax").removeHandler(self._handler)
    logging.captureWarnings(False)
    self._handler.close()

  def has_details(self) -> bool:
    """Whether anything was written to the file."""
    return os.path.exists(self.path) and os.path.getsize(self.path) > 0
