"""Expectation-maximization with closed-form (MAP) M-steps."""

from __future__ import annotations

import time

import numpy as np

from .progress import progress_bar
from .result import FitResult
from .stopping import PlateauStopper


def fit_em(model, data, *, num_steps: int, patience: int | None, tol: float, progress) -> FitResult:
    """Run ``model.em_step(data)`` until the log joint per frame stops improving.

    Each EM step cannot decrease the log joint (log-likelihood + log prior); ``losses`` holds its
    negative per observed frame, evaluated *before* each update.
    """
    if not hasattr(model, "em_step"):
        raise ValueError(f"method='em': {type(model).__name__} has no closed-form EM; use method='svi'")
    frames = max(1, int(sum(m.sum() for m in data.mask.values())))
    stopper = PlateauStopper(patience, tol)
    losses = []
    t0 = time.perf_counter()
    converged = False
    bar = progress_bar(num_steps, "fit (em)", progress)
    try:
        for _ in range(num_steps):
            log_joint = float(model.em_step(data))
            losses.append(-log_joint / frames)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if stopper(losses[-1]):
                converged = True
                break
    finally:
        bar.close()
    return FitResult(np.asarray(losses), "em", len(losses), converged, time.perf_counter() - t0)
