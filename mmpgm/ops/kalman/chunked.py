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

from torch import Tensor

from .types import LinearGaussianParams, MaskType, ObsType

__all__ = ["KalmanCarry", "ChunkKalmanResult", "kalman_filter_chunk", "predict_carry"]


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
    return ChunkKalmanResult(
        KalmanCarry(res.means[:, -1], res.covs[:, -1]), res.log_likelihood
    )
