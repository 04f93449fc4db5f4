"""Stochastic variational inference: a plain PyTorch loop around a Pyro ELBO."""

from __future__ import annotations

import copy
import math
import os
import time

import numpy as np
import torch

from .._progress import progress_bar
from . import checkpoint as ckpt
from . import units
from .result import FitResult
from .resume import resume
from .stopping import RateDropStopper

#: Losses averaged by the plateau test of a stochastic objective (minibatches, or a model whose
#: ELBO is estimated by sampling, ``STOCHASTIC_OBJECTIVE``).
SMOOTHING_WINDOW = 10


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
    init_seed: int | None = None,
    comm=None,
) -> FitResult:
    """Minimize ``elbo.differentiable_loss(model.model, model.guide, batch, program=program)``
    with Adam, in standardized units where the model has them.

    ``model`` is a :class:`~mmpgm.models.MultimodalModel` and ``data`` what its ``check_data``
    returned (:func:`mmpgm.fit` checks once; minibatches of checked data stay checked, so no
    step re-validates). ``elbo`` defaults to ``model.default_elbo(program)``. The loop is plain
    PyTorch (so the model can be wrapped in DDP); gradients are clipped to ``clip_norm``; the
    loss is reported per observed frame.

    For the HMM (Gaussian emissions) and the LDS the fit runs on standardized data with the
    model re-expressed in those units, and the model is mapped back at the end
    (:mod:`mmpgm.inference.units`): the fit does not depend on the units of the data, and the
    losses are those of the user's units (negative log joint per observed frame).
    ``init_seed``: run ``model.init_from_data(data, seed=init_seed)`` first (in the
    standardized units).
    ``comm``: a :class:`~mmpgm.inference.distributed.Communicator` for data-parallel training
    (``data`` the full data set on every rank; each step back-propagates this rank's part of
    the global minibatch and all-reduces the gradients; rank 0 alone checkpoints and shows
    progress; :mod:`mmpgm.inference.distributed`).
    """
    opts = dict(
        num_steps=num_steps,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        clip_norm=clip_norm,
        patience=patience,
        tol=tol,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        program=program,
        elbo=elbo,
        comm=comm,
    )
    maps = units.unit_maps(model)
    if maps is None:
        if init_seed is not None:
            model.init_from_data(data, seed=init_seed)
        return _fit_loop(model, data, loss_offset=0.0, standardized=False, user_data=data, **opts)
    u = units.data_units(data, maps.modalities, maps.centred)
    sdata = units.standardize_data(model, data, u)
    with torch.no_grad():
        prior_before = float(model.log_prior())
    maps.rescale(model, u.shift, u.scale)
    try:
        with torch.no_grad():
            prior_jacobian = float(model.log_prior()) - prior_before
        if init_seed is not None:
            model.init_from_data(sdata, seed=init_seed)
        if not math.isfinite(prior_jacobian):  # a start outside the prior's support: take it
            prior_jacobian = _prior_jacobian_at(model, maps, u)  # at the data-driven start
        offset = (u.log_jacobian + prior_jacobian) / _frames(sdata)
        return _fit_loop(
            model, sdata, loss_offset=offset, standardized=True, user_data=data, **opts
        )
    finally:
        maps.rescale(model, *u.inverse())


def _prior_jacobian_at(model, maps, u) -> float:
    """``log_prior`` in standardized units minus that in the user's units, at the current
    parameters (on a copy mapped back)."""
    clone = copy.deepcopy(model)
    maps.rescale(clone, *u.inverse())
    with torch.no_grad():
        return float(model.log_prior()) - float(clone.log_prior())


def _fit_loop(
    model,
    data,
    *,
    num_steps,
    lr,
    batch_size,
    seed,
    clip_norm,
    patience,
    tol,
    progress,
    checkpoint,
    checkpoint_every,
    program,
    elbo,
    loss_offset: float,
    standardized: bool,
    user_data,
    comm=None,
) -> FitResult:
    """The Adam loop of :func:`fit_svi` on (possibly standardized) checked ``data``; each
    step's loss per frame is reported plus ``loss_offset`` (the units' log-Jacobian per frame);
    a checkpoint names the fingerprint of ``user_data``, the data in the user's units."""
    program = model.check_program(program)
    if elbo is None:
        elbo = model.default_elbo(program)
    N = data.num_sequences
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    optim = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    start = 0
    head = None
    if checkpoint is not None:
        head = ckpt.header(
            model,
            ckpt.data_fingerprint(user_data),
            {
                **ckpt.fit_options(
                    lr=lr,
                    batch_size=batch_size,
                    seed=seed,
                    program=program,
                    clip_norm=clip_norm,
                    elbo=elbo,
                ),
                # the model state is saved in the units the loop runs in (named only when
                # standardized, so checkpoints of the other families stay as they were)
                **({"units": "standardized"} if standardized else {}),
            },
        )
        losses, start = resume(checkpoint, head, model, gen, device, comm, optim)
    stochastic = model.STOCHASTIC_OBJECTIVE or (batch_size is not None and batch_size < N)
    stopper = RateDropStopper(patience, tol, window=SMOOTHING_WINDOW if stochastic else 1)
    total_frames = _frames(data)
    converged = False
    stage = None

    def staged(step):
        """Set the model's stage for ``step``; True when early stopping may end the fit now."""
        nonlocal stage
        now, num_stages = model.svi_stage(step, num_steps)
        if now != stage:
            stopper.reset()  # a new objective: judge its plateau afresh
            stage = now
        return now == num_stages - 1

    # replay: a run that had stopped early stays stopped; its rate drops are already in the
    # optimizer state that resume loaded
    for i, value in enumerate(losses):
        final = staged(i)
        converged = stopper(value, final) or converged
    root = comm is None or comm.is_root
    if comm is not None:
        comm.broadcast_state(model)  # rank 0's start (data-driven or resumed) everywhere
    t0 = time.perf_counter()
    bar = progress_bar(num_steps, "fit (svi)", progress if root else False)
    bar.update(start)
    step = saved = start
    try:
        for step in range(start, start if converged else num_steps):
            final_stage = staged(step)
            epoch_loss = 0.0
            if batch_size is None or batch_size >= N:
                batches = [data]
            else:
                batches = model.checked_batches(data, batch_size, shuffle=True, generator=gen)
            if comm is not None:
                batches = comm.svi_batches(model, data, batch_size, gen)
            for batch in batches:
                optim.zero_grad()
                if comm is not None:  # this rank's part of the global batch; grads all-reduced
                    batch, count = batch
                    value = comm.svi_backward(model, elbo, batch, count, N, program, params)
                    if clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, clip_norm)
                    optim.step()
                    epoch_loss += value * count / N
                    continue
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
            losses.append(epoch_loss / total_frames + loss_offset)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if (
                root
                and checkpoint is not None
                and ((step + 1) % checkpoint_every == 0 or step + 1 == num_steps)
            ):
                _save(checkpoint, head, model, optim, losses, gen, device)
                saved = len(losses)
            if stopper(losses[-1], final_stage, optim):
                converged = True
                break
    finally:
        bar.close()
    if root and checkpoint is not None and (saved != len(losses) or not os.path.exists(checkpoint)):
        _save(checkpoint, head, model, optim, losses, gen, device)
    return FitResult(
        np.asarray(losses), "svi", len(losses), converged, time.perf_counter() - t0, start
    )


def _save(path, head, model, optim, losses, gen, device):
    ckpt.save_checkpoint(
        path,
        {
            **head,
            "step": len(losses),
            "losses": list(losses),
            "model": model.state_dict(),
            "optimizer": optim.state_dict(),
            "rng": ckpt.get_rng_state(gen, device),
        },
    )
