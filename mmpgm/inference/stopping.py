"""Early stopping on a plateau of the training loss."""

from __future__ import annotations


class PlateauStopper:
    """Stop when the best loss has not improved by more than ``tol`` (absolute, per frame)
    for ``patience`` consecutive steps."""

    def __init__(self, patience: int | None, tol: float):
        if patience is not None and (not isinstance(patience, int) or patience < 1):
            raise ValueError(f"patience: expected a positive int or None, got {patience!r}")
        if not tol >= 0:
            raise ValueError(f"tol: expected a non-negative float, got {tol!r}")
        self.patience, self.tol = patience, tol
        self.best = float("inf")
        self.since = 0

    def __call__(self, loss: float) -> bool:
        if loss < self.best - self.tol:
            self.best, self.since = loss, 0
        else:
            self.since += 1
        return self.patience is not None and self.since >= self.patience
