"""An exclusive lock on a training workdir, so that two runs never share one.

    with WorkdirLock(workdir):       # WorkdirLockedError if another run holds it
      ...                            # train

The lock is an `flock` on WORKDIR/train.lock, which also records the holder (pid, host,
start time). The kernel releases an flock when its process ends, however it ends (exception,
SIGTERM, SIGKILL), so a lock file left by a dead run is stale by construction: the next run
takes it over and logs whose it was. Only process 0 of a multi-host run takes it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from typing import Any, Dict, Optional

from advseg_jax.train.errors import TrainingError

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


class WorkdirLockedError(TrainingError):
  """Another live training run holds the workdir; the message names its pid and host."""


def _read_holder(fd: int) -> Dict[str, Any]:
  """The holder record in the lock file ({} if empty or unreadable)."""
  try:
    os.lseek(fd, 0, os.SEEK_SET)
    return dict(json.loads(os.read(fd, 4096).decode() or "{}"))
  except (OSError, ValueError, TypeError):
    return {}


def _describe(holder: Dict[str, Any]) -> str:
  started = holder.get("started")
  when = (f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
          if isinstance(started, (int, float)) else "")
  return f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}{when}"


class WorkdirLock:
  """Context manager holding the exclusive lock of `workdir` (see the module docstring)."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.path = os.path.join(workdir, LOCK_FILE)
    self.enabled = enabled
    self._fd: Optional[int] = None

  def acquire(self) -> None:
    """Takes the lock; WorkdirLockedError if a live process holds it."""
    if not self.enabled:
      return
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise WorkdirLockedError(
          f"{os.path.dirname(self.path)} is in use by another training run ({_describe(holder)}"
          f"); wait for it to end, stop it, or use another --workdir") from None
    previous = _read_holder(fd)
    if previous.get("pid") is not None:
      log.info("%s: taking over the lock of an earlier run that ended without releasing it "
               "(%s)", self.path, _describe(previous))
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    self._fd = fd

  def release(self) -> None:
    """Empties the holder record and releases the lock (idempotent)."""
    fd, self._fd = self._fd, None
    if fd is None:
      return
    try:
      os.ftruncate(fd, 0)
    except OSError:  # a full disk cannot stop the release
      pass
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc: Any) -> None:
    self.release()
