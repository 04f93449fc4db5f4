"""Expectation-maximization: the closed-form (MAP) EM of the HMM and LDS (``model.em_step``) and
the dispatch of :func:`mmpgm.fit` ``method="em"`` to the gated mixture's Appendix-A EM."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .._progress import progress_bar
from . import checkpoint as ckpt
from .result import FitResult
from .resume import resume
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
    checkpoint=None,
    checkpoint_every: int = 50,
    comm=None,
    chunk_size: int | None = None,
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

    ``checkpoint`` (closed form only): a path written every ``checkpoint_every`` iterations and
    at the end, and resumed from when it exists, in the format of the SVI checkpoints
    (:mod:`mmpgm.inference.checkpoint`; options ``{"method": "em"}``, an empty optimizer
    state). EM draws no random numbers, so a resumed fit equals the uninterrupted one bitwise.

    ``comm`` (closed form only): a :class:`~mmpgm.inference.distributed.Communicator`; ``data``
    is then the full data set on every rank, the rank's shard is E-stepped, the statistics are
    all-reduced and every rank runs the same M-step; rank 0 alone checkpoints and shows
    progress (:mod:`mmpgm.inference.distributed`).

    ``chunk_size`` (closed form only): each E-step runs ``model.em_statistics(data,
    chunk_size=chunk_size)`` (the sequences' frames in chunks), then ``model.em_update``.
    """
    if check_em(model) == "mixture":
        if checkpoint is not None:
            raise ValueError(
                "checkpoint: not supported by the gated mixture's EM (method='em'); use "
                "method='svi' or leave checkpoint=None"
            )
        return _fit_em_mixture(
            model, data, num_steps=num_steps, lr=lr, batch_size=batch_size, seed=seed
        )
    frames = _frames(data)
    stopper = PlateauStopper(patience, tol)
    losses: list[float] = []
    start = 0
    head = gen = device = None
    if checkpoint is not None:
        head = ckpt.header(model, ckpt.data_fingerprint(data), {"method": "em"})
        gen = torch.Generator().manual_seed(seed)  # EM draws nothing; kept for the format
        device = next(iter(model.parameters())).device
        losses, start = resume(checkpoint, head, model, gen, device, comm)
    converged = False
    for value in losses:  # replay: a run that had stopped early stays stopped
        converged = stopper(value) or converged
    root = comm is None or comm.is_root
    if comm is not None:
        comm.broadcast_state(model)  # rank 0's start (data-driven or resumed) everywhere
        shard = comm.shard(model, data)
    t0 = time.perf_counter()
    bar = progress_bar(num_steps, "fit (em)", progress if root else False)
    bar.update(start)
    saved = start
    try:
        for step in range(start, start if converged else num_steps):
            if comm is not None:
                log_joint = float(comm.em_step(model, data, shard, chunk_size=chunk_size))
            elif chunk_size is None:
                log_joint = float(model.em_step(data))
            else:
                stats = model.em_statistics(data, chunk_size=chunk_size)
                with torch.no_grad():
                    log_joint = float(stats["log_likelihood"] + model.log_prior())
                model.em_update(stats)
            losses.append(-log_joint / frames)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if root and checkpoint is not None and (
                (step + 1) % checkpoint_every == 0 or step + 1 == num_steps
            ):
                _save(checkpoint, head, model, losses, gen, device)
                saved = len(losses)
            if stopper(losses[-1]):
                converged = True
                break
    finally:
        bar.close()
    if root and checkpoint is not None and (
        saved != len(losses) or not os.path.exists(checkpoint)
    ):
        _save(checkpoint, head, model, losses, gen, device)
    return FitResult(
        np.asarray(losses), "em", len(losses), converged, time.perf_counter() - t0, start
    )


def _save(path, head, model, losses, gen, device):
    ckpt.save_checkpoint(
        path,
        {
            **head,
            "step": len(losses),
            "losses": list(losses),
            "model": model.state_dict(),
            "optimizer": {},
            "rng": ckpt.get_rng_state(gen, device),
        },
    )


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
