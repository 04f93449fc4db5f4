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


#: On a plateau of the last stage the learning rate is multiplied by LR_DROP_FACTOR, up to
#: LR_DROPS times, before an SVI fit counts as converged.
LR_DROPS = 2
LR_DROP_FACTOR = 0.1


class RateDropStopper:
    """:class:`PlateauStopper` with learning-rate drops, for the SVI loops.

    Adam at a fixed rate hovers around the optimum at a distance set by the rate (0.02
    nats/frame on an HMM with 30-fold unequal noise levels); on each of the first ``drops``
    plateaus (of the last stage) the optimizer's rate is multiplied by ``factor`` and the
    plateau test starts afresh, and only the next plateau ends the fit.
    """

    def __init__(self, patience, tol, window: int = 1, drops: int = LR_DROPS,
                 factor: float = LR_DROP_FACTOR):
        self.plateau = PlateauStopper(patience, tol, window)
        self.drops_left, self.factor = drops, factor

    def reset(self) -> None:
        """A new objective (the next stage): judge its plateau afresh."""
        self.plateau.reset()

    def __call__(self, loss: float, final: bool = True, optimizer=None) -> bool:
        """Feed one step's loss; True when the fit has converged. On a drop the rate of
        ``optimizer`` is lowered (None: a replay of a resumed run, whose optimizer state holds
        the drops already)."""
        if not (self.plateau(loss) and final):
            return False
        if self.drops_left == 0:
            return True
        self.drops_left -= 1
        self.plateau.reset()
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] *= self.factor
        return False
