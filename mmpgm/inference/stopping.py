"""Early stopping on a plateau of the training loss."""

from __future__ import annotations

from .._validation import check_float, check_int


class PlateauStopper:
    """Stop when the best loss has not improved by more than ``tol`` (absolute, per frame)
    for ``patience`` consecutive steps."""

    def __init__(self, patience: int | None, tol: float):
        check_int("patience", patience, allow_none=True)
        check_float("tol", tol, minimum=0.0)
        self.patience, self.tol = patience, tol
        self.best = float("inf")
        self.since = 0

    def __call__(self, loss: float) -> bool:
        if loss < self.best - self.tol:
            self.best, self.since = loss, 0
        else:
            self.since += 1
        return self.patience is not None and self.since >= self.patience
