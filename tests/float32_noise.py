"""The float32 allowance of the parity tests against PyTorch.

On some random draws float32 itself cannot get closer to the exact (float64) result than a
test's tolerance: JAX float32 and PyTorch float32 then share the same error, from rounding
both make. A float32 quantity may therefore be off by max(tolerance, NOISE_FACTOR x the float32
PyTorch reference's own error on the same quantity against a float64 run); a float64 check
gets no such allowance.
"""

from typing import Optional

NOISE_FACTOR = 10.0


def noise_bound(tol: float, noise_err: Optional[float]) -> float:
  """The bound on a float32 error: `tol`, or NOISE_FACTOR x `noise_err` (torch float32's own
  error against float64) where that is larger; `tol` when there is no float64 reference."""
  return tol if noise_err is None else max(tol, NOISE_FACTOR * noise_err)
