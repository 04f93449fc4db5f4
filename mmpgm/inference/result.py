"""The result of fitting."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class FitResult(NamedTuple):
    """Summary of a call to :func:`mmpgm.fit`.

    losses : ``(num_steps_run,)`` training loss per step, divided by the number of observed frames
        (negative log joint per frame for MAP fitting; negative ELBO per frame otherwise).
    method : ``"svi"`` or ``"em"``.
    num_steps : steps run (may be fewer than asked when early stopping triggered).
    converged : True when stopped by the plateau criterion.
    elapsed_s : wall-clock seconds.
    start_step : the step this call resumed from (0 unless resumed from a checkpoint).
    """

    losses: np.ndarray
    method: str
    num_steps: int
    converged: bool
    elapsed_s: float
    start_step: int = 0

    @property
    def final_loss(self) -> float:
        return float(self.losses[-1]) if len(self.losses) else float("nan")
