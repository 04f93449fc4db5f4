r"""The Kalman filter over a long sequence in chunks of frames, the filter state carried over.

The filter needs of the past only the filtered moments :math:`p(z_{t-1} \mid x_{1:t-1}) =
\mathcal N(m_{t-1}, P_{t-1})`: the next frame's prior is the prediction
:math:`\mathcal N(A m_{t-1} + B u_t, A P_{t-1} A^\top + Q)`, and the log-likelihood is the
sum of the per-frame predictive log-densities. So a sequence cut into chunks :math:`[t_0,
t_1)` is filtered exactly by running :func:`~mmpgm.ops.kalman.kalman_filter` on each chunk
with that prediction as its initial state (the first chunk from :math:`\mu_0, P_0`), and the
chunks' log-likelihood increments add to :math:`\log p(x_{1:T})`: memory :math:`O(\text{chunk})`
for the moments instead of :math:`O(T)`.

Padding frames past a sequence's length are pure prediction steps, as in the unchunked
filter, so a chunk that starts after a sequence ended adds exactly zero for it.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .types import LinearGaussianParams, MaskType, ObsType

__all__ = [
    "KalmanCarry",
    "ChunkKalmanResult",
    "kalman_filter_chunk",
    "predict_carry",
    "rts_smoother_chunked",
]


class KalmanCarry(NamedTuple):
    """Filtered moments at a chunk's last frame: ``mean (N, S)``, ``cov (N, S, S)``."""

    mean: Tensor
    cov: Tensor


class ChunkKalmanResult(NamedTuple):
    """Result of :func:`kalman_filter_chunk`: the ``carry`` of the next chunk and the chunk's
    ``log_likelihood`` ``(N,)``, :math:`\\log p(x_{t_0:t_1-1} \\mid x_{1:t_0-1})`."""

    carry: KalmanCarry
    log_likelihood: Tensor


def predict_carry(params: LinearGaussianParams, carry: KalmanCarry, control=None) -> tuple:
    r"""The prior of the next frame from the carried moments: :math:`(A m + B u,\
    A P A^\top + Q)`, ``(N, S)`` and ``(N, S, S)`` (symmetrized)."""
    A, Q = params.transition_matrix, params.transition_cov
    mean = (A @ carry.mean.unsqueeze(-1)).squeeze(-1)
    if control is not None:
        mean = mean + (params.control_matrix @ control.unsqueeze(-1)).squeeze(-1)
    cov = A @ carry.cov @ A.transpose(-1, -2) + Q
    return mean, 0.5 * (cov + cov.transpose(-1, -2))


def kalman_filter_chunk(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    lengths: Optional[Tensor] = None,
    carry: Optional[KalmanCarry] = None,
    controls: Optional[Tensor] = None,
    *,
    method: str = "sequential",
) -> ChunkKalmanResult:
    r"""Filter the frames ``t0 .. t1-1`` of a batch of sequences from the carried moments.

    Parameters
    ----------
    params : LinearGaussianParams
        As in :func:`~mmpgm.ops.kalman.kalman_filter`.
    obs, mask
        The chunk: ``obs[m]`` ``(N, T_chunk, D_m)``, ``mask[m]`` ``(N, T_chunk)``.
    lengths : Tensor, optional
        ``(N,)`` frames of each sequence inside the chunk (0 for a sequence that ended before
        it); the rest are prediction steps.
    carry : KalmanCarry, optional
        The previous chunk's ``carry``; None for the first chunk (the prior :math:`\mu_0,
        P_0` of ``params``).
    controls : Tensor, optional
        ``(N, T_chunk, U)``; ``controls[:, 0]`` drives the prediction from the carry.
    method : str
        The implementation of :func:`~mmpgm.ops.kalman.kalman_filter` (default the
        sequential Cholesky recursion, the most accurate).

    Returns
    -------
    ChunkKalmanResult
        The chunk's last filtered moments and its log-likelihood increment; summed over the
        chunks the increments are :func:`~mmpgm.ops.kalman.kalman_log_likelihood` of the
        whole sequences. Differentiable (through the carried moments as well).
    """
    from . import kalman_filter

    if carry is not None:
        u0 = None if controls is None else controls[:, 0]
        m0, P0 = predict_carry(params, carry, u0)
        params = params._replace(initial_mean=m0, initial_cov=P0)
    res = kalman_filter(params, obs, mask, controls, lengths, method=method)
    return ChunkKalmanResult(KalmanCarry(res.means[:, -1], res.covs[:, -1]), res.log_likelihood)


def _rts_step(params, filt_mean, filt_cov, pred_mean, pred_cov, next_mean, next_cov):
    r"""One Rauch-Tung-Striebel step: smoothed moments of frame ``t`` and
    :math:`\mathrm{Cov}(z_{t+1}, z_t \mid x)` from frame ``t``'s filtered moments, frame
    ``t+1``'s prediction and its smoothed moments (the sum-of-PSD form of
    :mod:`mmpgm.ops.kalman`)."""
    A = params.transition_matrix
    L = torch.linalg.cholesky(pred_cov)
    Gt = torch.cholesky_solve(A @ filt_cov, L)  # G^T = P^p_{t+1}^{-1} A P_t
    G = Gt.transpose(-1, -2)
    mean = filt_mean + (G @ (next_mean - pred_mean).unsqueeze(-1)).squeeze(-1)
    cov = (filt_cov - G @ pred_cov @ Gt) + G @ next_cov @ Gt
    return mean, 0.5 * (cov + cov.transpose(-1, -2)), next_cov @ Gt


def rts_smoother_chunked(
    params: LinearGaussianParams,
    chunk_inputs,
    num_timesteps: int,
    chunk_size: int,
    on_chunk,
    *,
    method: str = "sequential",
) -> Tensor:
    r"""Kalman filter and RTS smoother in chunks of frames: smoothed moments one chunk at a time.

    A forward pass over the chunks (:func:`kalman_filter_chunk`) keeps only each chunk's last
    filtered moments; a backward pass over the chunks in reverse re-filters a chunk from the
    stored moments before it and runs the RTS recursion from the carried smoothed moments of the
    next chunk's first frame. Memory :math:`O(N \cdot \text{chunk} \cdot S^2)` instead of
    :math:`O(N T S^2)`. No controls.

    Parameters
    ----------
    params : LinearGaussianParams
        As in :func:`~mmpgm.ops.kalman.kalman_filter` (``control_matrix`` unused).
    chunk_inputs : callable ``(start, stop) -> (obs, mask, lengths)``
        The chunk's observations ``obs[m]`` ``(N, stop - start, D_m)``, masks and the frames of
        each sequence inside the chunk (as :func:`kalman_filter_chunk` takes them); called twice
        per chunk.
    num_timesteps, chunk_size : int
    on_chunk : callable ``(start, stop, means, covs, cross_covs, next_mean, next_cov)``
        Receives the smoothed ``means`` ``(N, n, S)`` and ``covs`` ``(N, n, S, S)`` of frames
        ``start .. stop-1`` (``n = stop - start``), ``cross_covs`` :math:`\mathrm{Cov}(z_{t+1},
        z_t \mid x)` for the pairs starting in the chunk (``(N, n, S, S)``, one fewer in the
        last chunk) and the smoothed moments of frame ``stop`` (None in the last chunk); the
        last chunk first.

    Returns
    -------
    Tensor
        ``(N,)`` the log-likelihood :math:`\log p(x^{obs}_{1:T})`.
    """
    from . import kalman_filter

    starts = list(range(0, num_timesteps, chunk_size))
    carries, total, carry = [], 0.0, None
    for start in starts:
        obs, mask, lengths = chunk_inputs(start, min(start + chunk_size, num_timesteps))
        res = kalman_filter_chunk(params, obs, mask, lengths, carry, method=method)
        carry = res.carry
        carries.append(carry)
        total = total + res.log_likelihood
    nxt = None
    for k in reversed(range(len(starts))):
        start = starts[k]
        stop = min(start + chunk_size, num_timesteps)
        obs, mask, lengths = chunk_inputs(start, stop)
        chunk_params = params
        if k:
            m0, P0 = predict_carry(params, carries[k - 1])
            chunk_params = params._replace(initial_mean=m0, initial_cov=P0)
        f = kalman_filter(chunk_params, obs, mask, None, lengths, method=method)
        n = f.means.shape[1]
        means, covs = [None] * n, [None] * n
        cross = []
        if nxt is None:
            means[-1], covs[-1] = f.means[:, -1], f.covs[:, -1]
        else:
            pm, pP = predict_carry(params, KalmanCarry(f.means[:, -1], f.covs[:, -1]))
            means[-1], covs[-1], c = _rts_step(
                params, f.means[:, -1], f.covs[:, -1], pm, pP, nxt[0], nxt[1]
            )
            cross.append(c)
        for t in range(n - 2, -1, -1):
            means[t], covs[t], c = _rts_step(
                params,
                f.means[:, t],
                f.covs[:, t],
                f.predicted_means[:, t + 1],
                f.predicted_covs[:, t + 1],
                means[t + 1],
                covs[t + 1],
            )
            cross.append(c)
        means, covs = torch.stack(means, 1), torch.stack(covs, 1)
        S = means.shape[-1]
        cross = torch.stack(cross[::-1], 1) if cross else means.new_zeros(means.shape[0], 0, S, S)
        on_chunk(
            start,
            stop,
            means,
            covs,
            cross,
            None if nxt is None else nxt[0],
            None if nxt is None else nxt[1],
        )
        nxt = (means[:, 0], covs[:, 0])
    return total
