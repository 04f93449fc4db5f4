"""The result of fitting."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class ConvergenceWarning(UserWarning):
    """:func:`mmpgm.fit` stopped at its step cap without meeting its convergence criterion, or
    its restarts ended in different optima."""


#: Restarts whose final losses differ by more than this (nats per observed frame) are reported
#: as different optima.
RESTART_SPREAD_WARN = 1e-3


class FitResult(NamedTuple):
    """Summary of a call to :func:`mmpgm.fit`.

    losses : ``(num_steps_run,)`` training loss per step, divided by the number of observed frames
        (negative log joint per frame for MAP fitting; negative ELBO per frame otherwise).
    method : ``"svi"`` or ``"em"``.
    num_steps : steps run (may be fewer than asked when early stopping triggered).
    converged : True when stopped by the plateau criterion.
    elapsed_s : wall-clock seconds.
    start_step : the step this call resumed from (0 unless resumed from a checkpoint).
    restart_losses : final loss per frame of every restart of :func:`mmpgm.fit` (in the order
        run; ``losses`` is the best one's curve), or ``()`` for a single fit.
    """

    losses: np.ndarray
    method: str
    num_steps: int
    converged: bool
    elapsed_s: float
    start_step: int = 0
    restart_losses: tuple = ()

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1]) if len(self.losses) else float("nan")
