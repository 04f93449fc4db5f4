"""Early stopping on a plateau of the training loss."""

from __future__ import annotations

from .._validation import check_float, check_int


class PlateauStopper:
    """Stop when the best (smoothed) loss has not improved by more than ``tol`` (absolute, per
    frame) for ``patience`` consecutive steps.

    ``window > 1`` compares the mean of the last ``window`` losses instead of the last loss, so
    a stochastic objective whose single steps jump (minibatches, reparameterized draws) is
    judged by its trend, not by one lucky step; :meth:`reset` starts over (a new objective,
    e.g. the next KL-annealing stage)."""

    def __init__(self, patience: int | None, tol: float, window: int = 1):
        check_int("patience", patience, allow_none=True)
        check_float("tol", tol, minimum=0.0)
        check_int("window", window)
        self.patience, self.tol, self.window = patience, tol, window
        self.reset()

    def reset(self) -> None:
        self.best = float("inf")
        self.since = 0
        self._recent: list[float] = []

    def __call__(self, loss: float) -> bool:
        self._recent = (self._recent + [loss])[-self.window :]
        smoothed = sum(self._recent) / len(self._recent)
        if len(self._recent) < self.window:  # not enough steps yet to judge a trend
            return False
        if smoothed < self.best - self.tol:
            self.best, self.since = smoothed, 0
        else:
            self.since += 1
        return self.patience is not None and self.since >= self.patience
