r"""The forward filter over a long sequence in chunks of frames, the filter state carried over.

The scaled forward recursion of :mod:`mmpgm.ops.hmm.forward_backward` needs of the past only
the normalized filtered message :math:`\alpha_{t-1} = p(z_{t-1} \mid x_{1:t-1})`, and the
log-likelihood is the sum of the per-frame log-normalizers,
:math:`\log p(x_{1:T}) = \sum_t \log p(x_t \mid x_{1:t-1})`. So a sequence cut into chunks
:math:`[t_0, t_1)` is filtered exactly by running each chunk from the previous chunk's last
message (the first chunk from the initial distribution) and adding the chunks'
log-likelihood increments :math:`\log p(x_{t_0:t_1-1} \mid x_{1:t_0-1})`: memory
:math:`O(\text{chunk})` instead of :math:`O(T)`, the same arithmetic as the unchunked filter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from .forward_backward import _Model
from .transitions import _apply_chains

__all__ = [
    "ChunkFilterResult",
    "ChunkSmoothResult",
    "factorial_filter_chunk",
    "factorial_smooth_chunked",
]


class ChunkFilterResult(NamedTuple):
    """Result of :func:`factorial_filter_chunk`.

    filtered : ``batch_shape + (K_1, ..., K_C)``, :math:`p(z_{t_1 - 1} \\mid x_{1:t_1-1})`, the
        carried state of the next chunk.
    log_likelihood : ``batch_shape``, :math:`\\log p(x_{t_0:t_1-1} \\mid x_{1:t_0-1})`.
    """

    filtered: torch.Tensor
    log_likelihood: torch.Tensor


def factorial_filter_chunk(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    filtered: torch.Tensor | None = None,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> ChunkFilterResult:
    r"""Forward-filter the frames ``t0 .. t1-1`` of a sequence from the carried state.

    Parameters
    ----------
    initial_probs, transition_probs, transition, max_group_states
        As in :func:`~mmpgm.ops.hmm.factorial_log_likelihood`.
    log_emissions : tensor ``batch_shape + (T_chunk, K_1, ..., K_C)``
        The chunk's log factors (0 on missing and padding frames).
    filtered : tensor ``batch_shape + (K_1, ..., K_C)``, optional
        :math:`p(z_{t_0-1} \mid x_{1:t_0-1})`, the ``filtered`` of the previous chunk; None for
        the first chunk (then the initial distribution predicts the first frame).

    Returns
    -------
    ChunkFilterResult
        The last filtered message and the chunk's log-likelihood increment. Summed over the
        chunks of a sequence the increments are :func:`factorial_log_likelihood` of the whole
        sequence. Not differentiable (evaluation in bounded memory).
    """
    C = len(initial_probs)
    shape = log_emissions.shape[: -C - 1] + log_emissions.shape[-C:]
    if filtered is not None and filtered.shape != shape:
        raise ValueError(
            f"filtered: expected the shape batch_shape + state sizes {tuple(shape)} of "
            f"log_emissions {tuple(log_emissions.shape)}, got {tuple(filtered.shape)}"
        )
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, transition, max_group_states)
        pred = m.init_flat if filtered is None else m.predict(filtered.reshape(m.B, m.P))
        log_norm = torch.zeros(m.B, dtype=m.E.dtype, device=m.E.device)
        a = None
        for t in range(m.T):
            if t:
                pred = m.predict(a)
            a, c = m.condition(pred, m.E[:, t])
            log_norm = log_norm + c.log()
        ll = log_norm + m.shift.sum(-1)
        return ChunkFilterResult(a.reshape(shape), ll.reshape(m.batch_shape))


class ChunkSmoothResult(NamedTuple):
    """Result of :func:`factorial_smooth_chunked`: ``log_likelihood`` ``batch_shape``, and the
    expected ``initial_counts`` ``(K_c,)`` and ``transition_counts`` ``(K_c, K_c)`` per chain,
    summed over the batch and time (as :class:`~mmpgm.ops.hmm.SmoothResult`'s)."""

    log_likelihood: torch.Tensor
    initial_counts: tuple
    transition_counts: tuple


def _forward_from(m: _Model, filtered):
    """Scaled forward messages ``(B, T, P)`` and normalizers ``(B, T)`` of ``m``'s frames from
    the carried message ``filtered`` ``(B, P)`` (None: the initial distribution)."""
    alphas = torch.empty_like(m.E)
    norms = torch.empty(m.B, m.T, dtype=m.E.dtype, device=m.E.device)
    pred = m.init_flat if filtered is None else m.predict(filtered)
    for t in range(m.T):
        if t:
            pred = m.predict(alphas[:, t - 1])
        alphas[:, t], norms[:, t] = m.condition(pred, m.E[:, t])
    return alphas, norms


def factorial_smooth_chunked(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions_fn,
    num_timesteps: int,
    chunk_size: int,
    on_chunk,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> ChunkSmoothResult:
    r"""Forward-backward in chunks of frames: smoothed marginals one chunk at a time.

    A forward pass over the chunks keeps only each chunk's last filtered message
    :math:`\alpha_{t_1-1}` (``num_chunks x batch x prod K_c`` numbers); a backward pass over the
    chunks in reverse recomputes a chunk's forward messages from the stored message before it,
    runs the scaled backward recursion from the carried :math:`\beta_{t_1-1}` and carries
    :math:`\beta_{t_0-1}` to the previous chunk (the boundary step uses the stored
    :math:`\alpha_{t_0-1}`, and adds that step's expected transition counts). Memory is
    :math:`O(\text{chunk})` instead of :math:`O(T)`; the arithmetic is that of
    :func:`~mmpgm.ops.hmm.factorial_smooth`, frame by frame.

    Parameters
    ----------
    initial_probs, transition_probs, transition, max_group_states
        As in :func:`~mmpgm.ops.hmm.factorial_log_likelihood`.
    log_emissions_fn : callable ``(start, stop) -> tensor batch_shape + (stop - start, K_1..K_C)``
        The log factors of frames ``start .. stop-1``; called twice per chunk (forward and
        backward pass), so it must return the same values both times.
    num_timesteps : int
        ``T``.
    chunk_size : int
        Frames per chunk.
    on_chunk : callable ``(start, stop, marginals)``
        Receives each chunk's smoothed joint marginals :math:`p(z_t \mid x_{1:T})`,
        ``batch_shape + (stop - start, K_1, ..., K_C)``, last chunk first.

    Returns
    -------
    ChunkSmoothResult
    """
    starts = list(range(0, num_timesteps, chunk_size))
    with torch.no_grad():
        # forward pass: the filtered message at every chunk's last frame
        boundary, total, filt, m = [], 0.0, None, None
        for start in starts:
            logE = log_emissions_fn(start, min(start + chunk_size, num_timesteps))
            m = _Model(initial_probs, transition_probs, logE, transition, max_group_states)
            alphas, norms = _forward_from(m, filt)
            filt = alphas[:, -1]
            boundary.append(filt)
            total = total + norms.log().sum(-1) + m.shift.sum(-1)
        # backward pass, last chunk first
        weight = torch.ones(m.B, dtype=m.E.dtype, device=m.E.device)
        gt = [torch.zeros_like(a) for a in m.group_trans]
        b = torch.ones(m.B, m.P, dtype=m.E.dtype, device=m.E.device)
        shape = None
        for k in reversed(range(len(starts))):
            start = starts[k]
            stop = min(start + chunk_size, num_timesteps)
            logE = log_emissions_fn(start, stop)
            m = _Model(initial_probs, transition_probs, logE, transition, max_group_states)
            prev = boundary[k - 1] if k else None
            alphas, norms = _forward_from(m, prev)
            betas = torch.empty_like(m.E)
            betas[:, -1] = b
            for t in range(m.T - 1, 0, -1):
                g = m.E[:, t] * b / norms[:, t, None]
                b = m._adjoint_step(alphas[:, t - 1] * weight[:, None], g, gt)
                betas[:, t - 1] = b
            g0 = m.E[:, 0] * betas[:, 0] / norms[:, 0, None]
            if prev is not None:  # the step into this chunk from the previous one
                b = m._adjoint_step(prev * weight[:, None], g0, gt)
            else:
                g1 = g0 * weight[:, None]
            shape = m.batch_shape + (m.T,) + tuple(m.sizes)
            marg = alphas * betas
            on_chunk(start, stop, (marg / marg.sum(-1, keepdim=True)).reshape(shape))
        C = len(m.sizes)
        gi = []
        for c in range(C):
            mats = [None if j == c else m.init[j][None, :] for j in range(C)]
            gi.append(_apply_chains(g1, mats, m.sizes).sum(0))
        gt_chains = []
        for group, grad in zip(m.groups, gt, strict=True):
            gt_chains.extend(m._split_group_grad(grad, group))
        return ChunkSmoothResult(
            total.reshape(m.batch_shape),
            tuple(g * p for g, p in zip(gi, m.init, strict=True)),
            tuple(g * a for g, a in zip(gt_chains, m.trans, strict=True)),
        )
