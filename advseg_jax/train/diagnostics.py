"""Host-side GAN-training diagnostics: D-wins / D-collapse warnings and non-finite checks.

The step returns scalar metrics (`d/loss`, `d/acc_real`, `d/acc_fake`, `d/out_real`,
`d/out_fake`, `g/loss_adv`, `nonfinite`, ...). `GanMonitor.update(step, metrics)` looks at
them every logged step and returns warnings that name the likely cause and the knobs.

The AdvSemiSeg author's guidance: loss_D should sit around 0.2-0.5; a D loss near zero means
the real and fake inputs are trivially separable ("unsymmetric statistics"), and then the
adversarial gradient carries no useful information (hfslyc/AdvSemiSeg issues #39, #21).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Mapping, Optional

D_WINS_ADVICE = (
    "the discriminator separates real from fake almost perfectly (one-hot ground truth vs "
    "soft predictions, or source vs target maps), so its gradient to G is uninformative. "
    "It is weak adversarial pressure, not strong: measured on shapes, D wins at "
    "method.lambda_adv 0 and 0.01 (the originals') and sits in the band at 1. Knobs: raise "
    "method.lambda_adv step by step until D's loss enters 0.2-0.5 (watch the mIoU), set "
    "method.real_label_smoothing=0.1, lower optim_d.lr (e.g. 1e-5), update D less often "
    "(method.d_update_every=2), or add instance noise to D's inputs "
    "(method.d_instance_noise=0.1). With the originals' settings a winning D is common and "
    "the run may still be fine. See README 'When the discriminator wins'.")
D_COLLAPSE_ADVICE = (
    "the discriminator outputs the same value for real and fake inputs (accuracy ~0.5), so it "
    "gives G no signal. Usually method.lambda_adv is far too high: G makes its maps "
    "indistinguishable at the cost of the segmentation (measured on shapes: lambda_adv 50 "
    "collapses D and gives the worst segmentation of the sweep), so lower it. Otherwise "
    "raise optim_d.lr, and check that D's real inputs (one-hot ground truth / source "
    "predictions) differ from the fake ones.")


class NonFiniteError(RuntimeError):
  """A loss, gradient or updated weight became NaN/Inf; the message names the step and the
  terms (`step`: that step)."""

  def __init__(self, message: str, step: Optional[int] = None):
    super().__init__(message)
    self.step = step


def nonfinite_terms(metrics: Mapping[str, float]) -> List[str]:
  """Names of the metrics that are NaN or Inf (the `nonfinite` flag itself excluded)."""
  return sorted(k for k, v in metrics.items()
                if k != "nonfinite" and isinstance(v, (int, float)) and not math.isfinite(v))


def check_finite(step: int, metrics: Mapping[str, float], skip: bool) -> Optional[str]:
  """Raises NonFiniteError (or returns a warning when `skip`) if the step was non-finite.

  `metrics['nonfinite']` is set by the step when any loss, metric, gradient or updated weight
  was not finite; the terms that are themselves non-finite are named (if only gradients or
  weights were, it says so).
  """
  if not metrics.get("nonfinite", 0.0) and not nonfinite_terms(metrics):
    return None
  terms = nonfinite_terms(metrics) or [
      "a gradient or the updated weights (all logged losses are finite)"]
  if skip:
    return (f"step {step}: non-finite {', '.join(terms)}; the update was skipped "
            "(diagnostics.skip_nonfinite=True)")
  raise NonFiniteError(
      f"step {step}: non-finite value in {', '.join(terms)}. The run stops here, before "
      "saving this step. Lower optim_g.lr / optim_d.lr or method.lambda_adv, or set "
      "--config.diagnostics.skip_nonfinite=True to skip such updates.", step=step)


@dataclasses.dataclass
class GanMonitor:
  """Counts consecutive logged steps in which D wins or collapses; warns once per episode."""
  d_wins_threshold: float = 0.2
  patience: int = 50
  collapse_accuracy: float = 0.55
  _wins: int = 0
  _collapse: int = 0
  _warned_wins: bool = False
  _warned_collapse: bool = False
  history: List[Dict[str, float]] = dataclasses.field(default_factory=list)

  def update(self, step: int, metrics: Mapping[str, float]) -> List[str]:
    if "d/loss" not in metrics:
      return []
    warnings: List[str] = []
    d_loss = metrics["d/loss"]
    acc_r, acc_f = metrics.get("d/acc_real"), metrics.get("d/acc_fake")
    out_r, out_f = metrics.get("d/out_real"), metrics.get("d/out_fake")
    self._wins = self._wins + 1 if d_loss < self.d_wins_threshold else 0
    collapsed = (acc_r is not None and acc_f is not None and out_r is not None
                 and out_f is not None and 0.5 * (acc_r + acc_f) < self.collapse_accuracy
                 and abs(out_r - out_f) < 0.02)
    self._collapse = self._collapse + 1 if collapsed else 0
    if self._wins >= self.patience and not self._warned_wins:
      self._warned_wins = True
      warnings.append(
          f"step {step}: D wins -- d/loss {d_loss:.4f} < {self.d_wins_threshold} for "
          f"{self._wins} logged steps (D(real) {_fmt(out_r)}, D(fake) {_fmt(out_f)}, "
          f"acc real/fake {_fmt(acc_r)}/{_fmt(acc_f)}): {D_WINS_ADVICE}")
      self.history.append({"step": step, "kind": "d_wins", "d_loss": d_loss})
    if self._wins == 0:
      self._warned_wins = False
    if self._collapse >= self.patience and not self._warned_collapse:
      self._warned_collapse = True
      warnings.append(
          f"step {step}: D collapsed -- D(real) {_fmt(out_r)} ~ D(fake) {_fmt(out_f)}, "
          f"accuracy {_fmt(0.5 * (acc_r + acc_f))} for {self._collapse} logged steps: "
          f"{D_COLLAPSE_ADVICE}")
      self.history.append({"step": step, "kind": "d_collapse", "d_loss": d_loss})
    if self._collapse == 0:
      self._warned_collapse = False
    return warnings


def _fmt(v: Optional[float]) -> str:
  return "n/a" if v is None else f"{v:.3f}"
