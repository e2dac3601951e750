"""SIGTERM / SIGINT handling for training: finish the current step, save, exit cleanly.

    with PreemptionGuard() as guard:
      for step in ...:
        ...train one step...
        if guard.requested:
          save checkpoint; break

A second signal while the first is being handled falls through to the default behaviour
(so a user pressing Ctrl-C twice still stops the process at once).
"""

from __future__ import annotations

import signal
import threading
from typing import Optional


class PreemptionGuard:
  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self) -> None:
    self.requested = False
    self.signal_name: Optional[str] = None
    self._previous = {}

  def _handler(self, signum, frame):  # noqa: ARG002 - signal API
    if self.requested:  # Second signal: restore defaults and re-raise it.
      self._restore()
      signal.raise_signal(signum)
      return
    self.requested = True
    self.signal_name = signal.Signals(signum).name

  def __enter__(self) -> "PreemptionGuard":
    if threading.current_thread() is threading.main_thread():
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handler)
    return self

  def _restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def __exit__(self, *exc) -> None:
    self._restore()
