r"""Fitting from a :class:`~mmpgm.data_shards.ShardedData` corpus (``mmpgm.fit(model, sharded)``).

The corpus is never held in memory: every pass reads it a group of ``cache_shards`` shards at a
time (:meth:`ShardedData.chunks`, :meth:`ShardedData.batches`) and checks each group or
minibatch with ``model.check_data`` as it is read.

EM (HMM, LDS)
    Each iteration streams the corpus once, adds the E-step statistics of every group
    (``model.em_statistics``: sums over sequences, so those of disjoint groups add) and runs one
    ``model.em_update``: the same iteration as :func:`mmpgm.inference.em.fit_em` on the
    concatenated corpus, exactly, up to the order of floating-point summation.
SVI
    ``batch_size=None`` (or ``>= num_sequences``) is full-batch gradient descent: the loss of
    every group ``j`` of :math:`n_j` sequences, :math:`\ell_j = -\log p(\theta) - (N / n_j)
    \sum_{i \in j} \log p(x_i)`, is back-propagated with weight :math:`n_j / N`; these add to
    the full-batch loss :math:`-\log p(\theta) - \sum_i \log p(x_i)`, so one Adam step takes
    the in-memory full-batch gradient. With ``batch_size`` every step is one minibatch of
    :meth:`ShardedData.batches` (shards and sequences shuffled from the fit's seeded generator),
    the likelihood scaled to the corpus size :math:`N`.
    For the HMM and the LDS the fit runs in standardized units as in memory
    (:mod:`mmpgm.inference.units`); the per-feature shift and scale are the moments of the
    observed frames of the whole corpus, computed in two streamed passes (sums, then squared
    deviations from the mean) before the fit.
Data-driven start
    ``model.init_from_data`` sees the *first group* of the corpus (its first ``cache_shards``
    shards, in standardized units for SVI): a start, not the fit; the fit itself sees every
    sequence.
Distributed (``distributed=True``)
    EM and full-batch SVI: rank ``r`` of ``W`` streams its own sequences
    (:meth:`ShardedData.shard_for_rank`: ``r, r + W, ...``), the statistics or gradients are
    all-reduced. Minibatch SVI: every rank draws the same global minibatches (same generator)
    and works on its strided part of each (:meth:`Communicator.svi_backward`). The corpus
    moments are all-reduced. Rank 0's start is broadcast.

Checkpoints are not supported on a streamed corpus (``ValueError`` in :func:`mmpgm.fit`).
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from .._progress import progress_bar
from . import units
from .result import FitResult
from .stopping import PlateauStopper, RateDropStopper
from .svi import SMOOTHING_WINDOW, _prior_jacobian_at

__all__ = ["fit_em_stream", "fit_svi_stream", "stream_units"]


def _first_param(model) -> torch.Tensor:
    """The model's first parameter: its device and dtype."""
    return next(iter(model.parameters()))


def _view(sharded, comm):
    return sharded if comm is None else sharded.shard_for_rank(comm.rank, comm.world_size)


def _reduce(comm, values: list[float] | torch.Tensor, model=None) -> torch.Tensor:
    """``values`` (float64, on the CPU) summed over the ranks; NCCL reduces on the model's
    GPU."""
    t = torch.as_tensor(values, dtype=torch.float64)
    if comm is not None:
        if comm.backend == "nccl" and model is not None:
            return comm.all_reduce_sum(t.to(_first_param(model).device)).cpu()
        comm.all_reduce_sum(t)
    return t


def _first_checked(model, sharded):
    """The first group of the corpus, checked (the data-driven start sees it)."""
    return model.check_data(next(iter(sharded.chunks())))


def _count_frames(model, view, comm) -> int:
    total = 0
    for chunk in view.chunks():
        data = model.check_data(chunk)
        total += int(sum(m.sum() for m in data.mask.values()))
    return max(1, int(_reduce(comm, [float(total)], model)[0]))


# ---------------------------------------------------------------------- EM
def fit_em_stream(
    model,
    sharded,
    *,
    num_steps,
    patience,
    tol,
    progress,
    init_seed=None,
    comm=None,
    chunk_size=None,
) -> FitResult:
    """EM of the HMM or LDS over a streamed corpus (see the module docstring); ``losses`` are
    the negative log joint per observed frame before each update, as :func:`fit_em`'s;
    ``chunk_size``: each group's E-step in chunks of frames."""
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    view = _view(sharded, comm)
    first = _first_checked(model, sharded)
    model.check_training_data(first)
    if init_seed is not None:
        model.init_from_data(first, seed=init_seed)
    frames = _count_frames(model, view, comm)
    zeros = None
    stopper = PlateauStopper(patience, tol)
    losses: list[float] = []
    converged = False
    root = comm is None or comm.is_root
    if comm is not None:
        comm.broadcast_state(model)
    t0 = time.perf_counter()
    bar = progress_bar(num_steps, "fit (em, streamed)", progress if root else False)
    try:
        for _ in range(num_steps):
            stats = None
            for chunk in view.chunks():
                s = model.em_statistics(model.check_data(chunk), **kw)
                stats = s if stats is None else {k: stats[k] + s[k] for k in stats}
            if comm is not None:
                if stats is None:  # a rank without sequences: zeros of the right shapes
                    if zeros is None:
                        one = model.em_statistics(model.checked_subset(first, slice(0, 1)))
                        zeros = {k: torch.zeros_like(v) for k, v in one.items()}
                    stats = {k: v.clone() for k, v in zeros.items()}
                stats = comm.sum_statistics(stats)
            with torch.no_grad():
                log_joint = float(stats["log_likelihood"] + model.log_prior())
            model.em_update(stats)
            losses.append(-log_joint / frames)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if stopper(losses[-1]):
                converged = True
                break
    finally:
        bar.close()
    return FitResult(np.asarray(losses), "em", len(losses), converged, time.perf_counter() - t0)


# ---------------------------------------------------------------------- units
@torch.no_grad()
def stream_units(model, view, modalities, centred: bool, comm=None) -> units.Units:
    """:func:`mmpgm.inference.units.data_units` of the whole corpus, streamed: per feature the
    mean, standard deviation and root mean square of the observed frames from two passes (sums;
    then squared deviations from the mean, all in float64), all-reduced over the ranks; the
    same floor rule for nearly constant features."""
    mods = list(modalities)
    dims = [view.obs_dims[m] for m in mods]
    # pass 1: counts, sums, sums of squares
    acc = [torch.zeros(2 * d + 1, dtype=torch.float64) for d in dims]
    dtype = None
    for chunk in view.chunks():
        data = model.check_data(chunk)
        inside = data.time_mask
        for a, m in zip(acc, mods, strict=True):
            xo = data.obs[m][data.mask[m] & inside].double().cpu()
            dtype = data.obs[m].dtype
            a += torch.cat([xo.new_tensor([xo.shape[0]]), xo.sum(0), xo.square().sum(0)])
    flat = _reduce(comm, torch.cat(acc), model) if acc else torch.zeros(0, dtype=torch.float64)
    if dtype is None:
        dtype = _first_param(model).dtype
    stats, i = [], 0
    for d in dims:
        stats.append(flat[i : i + 2 * d + 1])
        i += 2 * d + 1
    means = [s[1 : 1 + d] / s[0].clamp_min(1) for s, d in zip(stats, dims, strict=True)]
    # pass 2: squared deviations from the mean (no cancellation)
    dev = [torch.zeros(d, dtype=torch.float64) for d in dims]
    for chunk in view.chunks():
        data = model.check_data(chunk)
        inside = data.time_mask
        for k, m in enumerate(mods):
            xo = data.obs[m][data.mask[m] & inside].double().cpu()
            dev[k] += (xo - means[k]).square().sum(0)
    dev = _reduce(comm, torch.cat(dev), model) if dev else dev
    shift, scale, logj, i = {}, {}, 0.0, 0
    device = _first_param(model).device
    for k, (m, d) in enumerate(zip(mods, dims, strict=True)):
        n = float(stats[k][0])
        if n == 0:
            mean = sd = rms = torch.zeros(d, dtype=torch.float64)
        else:
            mean = means[k]
            sd = (dev[i : i + d] / n).sqrt() if n > 1 else torch.zeros(d, dtype=torch.float64)
            rms = (stats[k][1 + d :] / n).sqrt()
        i += d
        floor = math.sqrt(16 * torch.finfo(dtype).eps) * rms
        s = torch.where(sd > floor, sd, torch.where(rms > 0, rms, torch.ones_like(rms)))
        if not centred:
            mean = torch.zeros_like(mean)
        shift[m] = mean.to(device=device, dtype=dtype)
        scale[m] = s.to(device=device, dtype=dtype)
        logj += n * float(scale[m].double().log().sum())
    return units.Units(shift, scale, logj)


# ---------------------------------------------------------------------- SVI
def fit_svi_stream(
    model,
    sharded,
    *,
    num_steps,
    lr,
    batch_size,
    seed,
    clip_norm,
    patience,
    tol,
    progress,
    program,
    elbo=None,
    init_seed=None,
    comm=None,
) -> FitResult:
    """SVI over a streamed corpus (see the module docstring): the loop of
    :func:`mmpgm.inference.svi.fit_svi` with the batches read from ``sharded``."""
    view = _view(sharded, comm)
    first = _first_checked(model, sharded)
    model.check_training_data(first)
    maps = units.unit_maps(model)
    if maps is None:
        if init_seed is not None:
            model.init_from_data(first, seed=init_seed)
        frames = _count_frames(model, view, comm)
        return _loop(model, sharded, view, None, 0.0, frames, num_steps, lr, batch_size, seed,
                     clip_norm, patience, tol, progress, program, elbo, comm)
    u = stream_units(model, view, maps.modalities, maps.centred, comm)
    with torch.no_grad():
        prior_before = float(model.log_prior())
    maps.rescale(model, u.shift, u.scale)
    try:
        with torch.no_grad():
            prior_jacobian = float(model.log_prior()) - prior_before
        if init_seed is not None:
            model.init_from_data(units.standardize_data(model, first, u), seed=init_seed)
        if not math.isfinite(prior_jacobian):
            prior_jacobian = _prior_jacobian_at(model, maps, u)
        frames = _count_frames(model, view, comm)
        offset = (u.log_jacobian + prior_jacobian) / frames
        return _loop(model, sharded, view, u, offset, frames, num_steps, lr, batch_size, seed,
                     clip_norm, patience, tol, progress, program, elbo, comm)
    finally:
        maps.rescale(model, *u.inverse())


def _all_reduce_grads(comm, params, value: torch.Tensor) -> float:
    """Sum ``.grad`` of ``params`` and the loss ``value`` over the ranks (one all-reduce)."""
    pieces = [
        p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
        for p in params
    ]
    has = torch.tensor([p.grad is not None for p in params], dtype=pieces[0].dtype,
                       device=pieces[0].device)
    flat = torch.cat(pieces + [has, value.reshape(1).to(pieces[0])])
    comm.all_reduce_sum(flat)
    i = 0
    for p, h in zip(params, flat[-1 - len(params) : -1].tolist(), strict=True):
        n = p.numel()
        p.grad = flat[i : i + n].reshape(p.shape).clone() if h > 0 else None
        i += n
    return float(flat[-1])


def _loop(model, sharded, view, u, offset, frames, num_steps, lr, batch_size, seed, clip_norm,
          patience, tol, progress, program, elbo, comm) -> FitResult:
    program = model.check_program(program)
    if elbo is None:
        elbo = model.default_elbo(program)
    N = sharded.num_sequences
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.Adam(params, lr=lr)
    full = batch_size is None or batch_size >= N
    stochastic = model.STOCHASTIC_OBJECTIVE or not full
    stopper = RateDropStopper(patience, tol, window=SMOOTHING_WINDOW if stochastic else 1)
    losses: list[float] = []
    converged = False
    stage = None
    root = comm is None or comm.is_root
    if comm is not None:
        comm.broadcast_state(model)

    def prep(data):
        data = model.check_data(data)
        return data if u is None else units.standardize_data(model, data, u)

    def loss_of(batch, weight):
        loss = elbo.differentiable_loss(
            model.model, model.guide, batch, num_sequences=N, program=program
        ) * weight
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"fit: the loss became {float(loss)}; lower lr, check the data for extreme "
                "values, or fit in float64 (model.double())"
            )
        loss.backward()
        return loss.detach()

    t0 = time.perf_counter()
    bar = progress_bar(num_steps, "fit (svi, streamed)", progress if root else False)
    try:
        for step in range(num_steps):
            now, num_stages = model.svi_stage(step, num_steps)
            if now != stage:
                stopper.reset()
                stage = now
            epoch_loss = 0.0
            if full:  # one step: the group losses accumulated with weights n_j / N
                optim.zero_grad()
                total = torch.zeros((), dtype=torch.float64)
                for chunk in view.chunks():
                    batch = prep(chunk)
                    total = total + loss_of(batch, batch.num_sequences / N).double().cpu()
                value = _all_reduce_grads(comm, params, total) if comm is not None else float(total)
                if clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(params, clip_norm)
                optim.step()
                epoch_loss = value
            else:
                for glob in sharded.batches(batch_size, shuffle=True, generator=gen):
                    optim.zero_grad()
                    count = glob.num_sequences
                    if comm is None:
                        value = float(loss_of(prep(glob), 1.0))
                    else:
                        local = glob[comm.rank :: comm.world_size]
                        local = prep(local) if local.num_sequences else None
                        value = comm.svi_backward(model, elbo, local, count, N, program, params)
                    if clip_norm is not None:
                        torch.nn.utils.clip_grad_norm_(params, clip_norm)
                    optim.step()
                    epoch_loss += value * count / N
            losses.append(epoch_loss / frames + offset)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if stopper(losses[-1], now == num_stages - 1, optim):
                converged = True
                break
    finally:
        bar.close()
    return FitResult(np.asarray(losses), "svi", len(losses), converged, time.perf_counter() - t0)
