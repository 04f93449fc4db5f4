"""Expectation-maximization: the closed-form (MAP) EM of the HMM and LDS (``model.em_step``) and
the dispatch of :func:`mmpgm.fit` ``method="em"`` to the gated mixture's Appendix-A EM."""

from __future__ import annotations

import time

import numpy as np

from .progress import progress_bar
from .result import FitResult
from .stopping import PlateauStopper


def _is_mixture(model) -> bool:
    # Lazy: the gated mixture is being split into a package (models/mixture/); import its public
    # name only when needed.
    from ..models import GatedMixture

    return isinstance(model, GatedMixture)


def check_em(model) -> str:
    """Which EM ``model`` has: ``"closed_form"`` (``model.em_step``, HMM and LDS) or
    ``"mixture"`` (Appendix-A EM of a :class:`~mmpgm.models.GatedMixture`); ``ValueError`` naming
    ``method`` otherwise (e.g. the MVRNN)."""
    if _is_mixture(model):
        return "mixture"
    if getattr(model, "has_em_step", False):
        return "closed_form"
    raise ValueError(
        f"method: 'em' is not available for {type(model).__name__}, which has no EM "
        "(closed-form or Appendix-A); use method='svi'"
    )


def _frames(data) -> int:
    return max(1, int(sum(m.sum() for m in data.mask.values())))


def fit_em(
    model,
    data,
    *,
    num_steps: int,
    patience: int | None,
    tol: float,
    progress,
    lr: float | None = None,
    batch_size: int | None = None,
    seed: int = 0,
) -> FitResult:
    """Fit ``model`` by EM (see :func:`check_em` for which).

    Closed form: run ``model.em_step(data)`` until the log joint per frame stops improving.
    Each EM step cannot decrease the log joint (log-likelihood + log prior); ``losses`` holds its
    negative per observed frame, evaluated *before* each update. ``lr``, ``batch_size`` and
    ``seed`` do not apply.

    Gated mixture: :func:`mmpgm.inference.em_mixture.fit_em_mixture` with ``num_iters =
    num_steps`` (``lr`` its M-step learning rate when given, ``batch_size``, ``seed``); all
    iterations run (no early stopping); ``losses`` are its negative log-likelihood per labelled
    frame before each iteration.
    """
    if check_em(model) == "mixture":
        return _fit_em_mixture(
            model, data, num_steps=num_steps, lr=lr, batch_size=batch_size, seed=seed
        )
    frames = _frames(data)
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


def _fit_em_mixture(model, data, *, num_steps, lr, batch_size, seed) -> FitResult:
    # Lazy: the mixture's training loops are moving (em_mixture.py -> inference/mixture.py).
    try:
        from .em_mixture import fit_em_mixture
    except ImportError:  # pragma: no cover - after the move
        from .mixture import fit_em_mixture

    kwargs = {} if lr is None else {"lr": lr}
    losses, seconds = fit_em_mixture(
        model, data, num_iters=num_steps, batch_size=batch_size, seed=seed, **kwargs
    )
    return FitResult(np.asarray(losses), "em", len(losses), False, seconds)
