r"""Time-parallel Kalman filter: an associative scan over per-frame elements
(Särkkä & García-Fernández 2021, "Temporal parallelization of Bayesian smoothers").

Each frame ``t`` becomes an element :math:`(A_t, b_t, C_t, \eta_t, J_t)` with
:math:`p(z_t \mid z_{t-1}, x_t) = \mathcal N(A_t z_{t-1} + b_t, C_t)` and
:math:`p(x_t \mid z_{t-1}) \propto \mathcal N_I(z_{t-1}; \eta_t, J_t)`; an inclusive scan with
the associative rule :func:`filter_combine` yields the filtered moments in :math:`O(\log T)`
sequential depth.  Predictions and the log-likelihood then follow for all frames at once.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..linalg import symmetrize
from ..scan import associative_scan
from .prepare import Prepared, prepare
from .types import LOG_2PI, FilterResult, LinearGaussianParams, MaskType, ObsType, check_cholesky

__all__ = ["filter_combine", "parallel_forward", "parallel_kalman_filter"]

_INNOVATION = "innovation covariance C P C^T + R"


def filter_combine(ei: tuple, ej: tuple) -> tuple:
    r"""Combine filtering elements :math:`(A, b, C, \eta, J)`: earlier ``ei``, later ``ej``.

    Shapes ``(..., S, S)``, ``(..., S, 1)``, ``(..., S, S)``, ``(..., S, 1)``,
    ``(..., S, S)``; uses LU solves of :math:`I + C_i J_j`.
    """
    Ai, bi, Ci, ei_, Ji = ei
    Aj, bj, Cj, ej_, Jj = ej
    S = Ai.shape[-1]
    eye = torch.eye(S, dtype=Ai.dtype, device=Ai.device)
    Mm = eye + Ci @ Jj  # (I + C_i J_j); its transpose is (I + J_j C_i)
    LU, piv = torch.linalg.lu_factor(Mm)
    X = torch.linalg.lu_solve(LU, piv, torch.cat([Ai, bi + Ci @ ej_, Ci], dim=-1))
    AX = Aj @ X
    A = AX[..., :S]
    b = AX[..., S : S + 1] + bj
    C = symmetrize(AX[..., S + 1 :] @ Aj.mT + Cj)
    rhs = torch.cat([ej_ - Jj @ bi, Jj @ Ai], dim=-1)
    Y = torch.linalg.lu_solve(LU, piv, rhs, adjoint=True)
    AtY = Ai.mT @ Y
    eta = AtY[..., :1] + ei_
    J = symmetrize(AtY[..., 1:] + Ji)
    return A, b, C, eta, J


def _masked_emissions(p: Prepared):
    """Per-frame masked emission matrices ``(N, T, D, S)`` and noise ``(N, T, D, D)``
    (time dimension 1 when every frame is fully observed)."""
    N, S = p.N, p.S
    D = p.C.shape[-2]
    C = p.C.expand(N, D, S).unsqueeze(1)
    R = p.R.expand(N, D, D).unsqueeze(1)
    if all(p.frame_full):
        return C, R
    r = p.rm
    eye_D = torch.eye(D, dtype=r.dtype, device=r.device)
    return C * r, R * (r * r.mT) + eye_D * (1.0 - r)


def parallel_forward(p: Prepared):
    """Returns ``(pred_means (N, T, S), pred_covs (N, T, S, S), filt_means, filt_covs,
    log_lik (N,))``."""
    N, T, S = p.N, p.T, p.S
    A = p.A.expand(N, S, S).unsqueeze(1)  # (N, 1, S, S)
    Q = p.Q.expand(N, S, S).unsqueeze(1)
    H, R = _masked_emissions(p)  # (N, T|1, D, S), (N, T|1, D, D)
    y = p.y  # (N, T, D, 1)
    m0, P0 = p.m0.unsqueeze(1), p.P0.unsqueeze(1)  # (N, 1, S, 1), (N, 1, S, S)
    # prior moments before each frame's update: (m0, P0) for t = 1, (B u_t, Q) after
    if p.Bu is not None:
        u = p.Bu[:, 1:]
    else:
        u = torch.zeros_like(y[:, 1:, :1, :]).expand(N, T - 1, S, 1)
    prior_m = torch.cat([m0, u], dim=1)  # (N, T, S, 1)
    prior_P = torch.cat([P0, Q.expand(N, T - 1, S, S)], dim=1)  # (N, T, S, S)
    HP = H @ prior_P  # (N, T, D, S)
    Sm = HP @ H.mT + R
    L, info = torch.linalg.cholesky_ex(Sm)
    check_cholesky(info, _INNOVATION)
    resid = y - H @ prior_m
    HA = (H @ A).expand(N, T, -1, S)
    sol = torch.linalg.solve_triangular(L, torch.cat([HP, resid, HA], dim=-1), upper=False)
    W, e, V = sol[..., :S], sol[..., S : S + 1], sol[..., S + 1 :]
    Wt = W.mT
    b = prior_m + Wt @ e
    Cc = symmetrize(prior_P - Wt @ W)
    eye = torch.eye(S, dtype=y.dtype, device=y.device)
    # K H = P H^T S^{-1} H
    KH = Wt @ torch.linalg.solve_triangular(L, H, upper=False).expand(N, T, -1, S)
    Ael = (eye - KH) @ A
    eta = V.mT @ e
    J = V.mT @ V
    # the first element conditions on the prior, not on a previous state
    first = torch.zeros(N, T, 1, 1, dtype=y.dtype, device=y.device)
    first[:, 0] = 1.0
    keep = 1.0 - first
    Ael, eta, J = Ael * keep, eta * keep, J * keep
    _, fm, fP, _, _ = associative_scan(filter_combine, (Ael, b, Cc, eta, J), dim=1)
    # predictions and log-likelihood, vectorised over time
    pm = torch.cat([m0, A @ fm[:, :-1] + (u if p.Bu is not None else 0.0)], dim=1)
    pP = torch.cat([P0, symmetrize(A @ fP[:, :-1] @ A.mT + Q)], dim=1)
    Sp = H @ pP @ H.mT + R
    Lp, info = torch.linalg.cholesky_ex(Sp)
    check_cholesky(info, _INNOVATION)
    ep = torch.linalg.solve_triangular(Lp, y - H @ pm, upper=False)
    ll = (
        -0.5 * ep.square().sum(dim=(1, 2, 3))
        - Lp.diagonal(dim1=-2, dim2=-1).log().sum(dim=(1, 2))
        - 0.5 * LOG_2PI * p.num_obs
    )
    return pm.squeeze(-1), pP, fm.squeeze(-1), fP, ll


def parallel_kalman_filter(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
) -> FilterResult:
    r"""Time-parallel Kalman filter (associative scan, Särkkä & García-Fernández 2021).

    The same as :func:`~mmpgm.ops.kalman.kalman_filter` with ``method="parallel"``.  Each
    frame ``t`` becomes an element :math:`(A_t, b_t, C_t, \eta_t, J_t)` with
    :math:`p(z_t \mid z_{t-1}, x_t) = \mathcal N(A_t z_{t-1} + b_t, C_t)` and
    :math:`p(x_t \mid z_{t-1}) \propto \mathcal N_I(z_{t-1}; \eta_t, J_t)`; an inclusive scan
    with the associative combination rule yields the filtered moments in :math:`O(\log T)`
    sequential depth.  Predictions and the log-likelihood are then computed for all frames at
    once.  Uses :math:`O(N T S^2)` memory and LU solves of :math:`(I + C_i J_j)`, so it is
    somewhat less accurate than the sequential filter in float32.

    Parameters
    ----------
    params : LinearGaussianParams
        Model parameters, each shared by the batch (e.g. ``A`` of shape ``(S, S)``) or per
        sequence (``(N, S, S)``).
    obs : Tensor or sequence or mapping of Tensor
        ``obs[m]`` of shape ``(N, T, D_m)``.  Masked entries may hold anything, NaN included.
    mask : Tensor or sequence or mapping of Tensor, optional
        ``mask[m]`` bool ``(N, T)``, ``True`` = observed; one ``(N, T)`` tensor applies to
        every modality; ``None``: everything observed.
    controls : Tensor, optional
        ``(N, T, U)`` controls :math:`u_t`; ``controls[:, 0]`` is unused.
    lengths : Tensor, optional
        ``(N,)`` integer sequence lengths; frames ``t >= lengths[n]`` are unobserved.

    Returns
    -------
    FilterResult
        ``means`` ``(N, T, S)``, ``covs`` ``(N, T, S, S)``, ``predicted_means`` ``(N, T, S)``,
        ``predicted_covs`` ``(N, T, S, S)``, ``log_likelihood`` ``(N,)``.

    Raises
    ------
    ValueError
        On malformed inputs.
    NumericalError
        If an innovation covariance is not positive definite.
    """
    p = prepare(params, obs, mask, controls, lengths)
    pm, pP, fm, fP, ll = parallel_forward(p)
    return FilterResult(fm, fP, pm, pP, ll)
