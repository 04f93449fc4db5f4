"""Stochastic variational inference: a plain PyTorch loop around a Pyro ELBO."""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from .progress import progress_bar
from .result import FitResult
from .stopping import PlateauStopper


def _frames(data) -> int:
    return max(1, int(sum(m.sum() for m in data.mask.values())))


def fit_svi(
    model,
    data,
    *,
    num_steps: int,
    lr: float,
    batch_size: int | None,
    seed: int,
    clip_norm: float | None,
    patience: int | None,
    tol: float,
    progress,
    checkpoint,
    checkpoint_every: int,
    program: str | None = None,
    elbo=None,
) -> FitResult:
    """Minimize ``elbo.differentiable_loss(model.model, model.guide, batch, program=program)``
    with Adam.

    ``model`` is a :class:`~mmpgm.models.MultimodalModel` and ``data`` what its ``check_data``
    returned (:func:`mmpgm.fit` checks once; minibatches of checked data stay checked, so no
    step re-validates). ``elbo`` defaults to ``model.default_elbo(program)``. The loop is plain
    PyTorch (so the model can be wrapped in DDP); gradients are clipped to ``clip_norm``; the
    loss is reported per observed frame.
    """
    program = model.check_program(program)
    if elbo is None:
        elbo = model.default_elbo(program)
    N = data.num_sequences
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    start = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        state = torch.load(checkpoint, map_location=params[0].device, weights_only=True)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optimizer"])
        losses = list(state["losses"])
        start = int(state["step"])
        gen.set_state(state["generator"])
    stopper = PlateauStopper(patience, tol)
    total_frames = _frames(data)
    for value in losses:
        stopper(value)
    t0 = time.perf_counter()
    converged = False
    bar = progress_bar(num_steps, "fit (svi)", progress)
    bar.update(start)
    step = start
    try:
        for step in range(start, num_steps):
            epoch_loss = 0.0
            if batch_size is None or batch_size >= N:
                batches = [data]
            else:
                batches = model.checked_batches(data, batch_size, shuffle=True, generator=gen)
            for batch in batches:
                optim.zero_grad()
                loss = elbo.differentiable_loss(
                    model.model, model.guide, batch, num_sequences=N, program=program
                )
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"fit: the loss became {float(loss)} at step {step}; lower lr, check the "
                        "data "
                        "for extreme values, or fit in float64 (model.double())"
                    )
                loss.backward()
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_norm)
                optim.step()
                epoch_loss += loss.item() * batch.num_sequences / N
            losses.append(epoch_loss / total_frames)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if checkpoint is not None and (
                (step + 1) % checkpoint_every == 0 or step + 1 == num_steps
            ):
                _save_checkpoint(checkpoint, model, optim, losses, step + 1, gen)
            if stopper(losses[-1]):
                converged = True
                break
    finally:
        bar.close()
    if checkpoint is not None:
        _save_checkpoint(checkpoint, model, optim, losses, len(losses), gen)
    return FitResult(
        np.asarray(losses), "svi", len(losses), converged, time.perf_counter() - t0, start
    )


def _save_checkpoint(path, model, optim, losses, step, gen):
    tmp = f"{path}.tmp"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optim.state_dict(),
            "losses": losses,
            "step": step,
            "generator": gen.get_state(),
        },
        tmp,
    )
    os.replace(tmp, path)
