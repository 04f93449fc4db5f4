r"""Backward passes: the Rauch-Tung-Striebel smoother and forward-filter backward-sample draws.

With the filter's moments (:math:`m_t, P_t` filtered, :math:`m^p_t, P^p_t` predicted) and the
smoother gain :math:`G_t = P_t A^\top (P^p_{t+1})^{-1}`, both passes are affine in the later
value.  When the filter's covariances are shared by the batch (``share="covariance"``) the
covariance recursion runs once and both recursions run as one associative scan; otherwise as a
loop of batched products.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..._validation import check_int
from .._threads import cpu_single_thread
from ..linalg import symmetrize
from ..scan import affine_combine, associative_scan
from .information import information_smoother
from .method import Method, Share, forward, resolve, run_plan
from .prepare import join_sequences, prepare, split_sequences
from .sequential import MEAN_LOOP_MIN_WORK, expand_batch, frame_products
from .types import (
    FilterResult,
    LinearGaussianParams,
    MaskType,
    ObsType,
    SmootherResult,
    check_cholesky,
    numerical_error,
)

__all__ = ["rts_smoother", "ffbs_sample", "backward_gains", "smooth_from_filter"]


def _smooth_combine(ea: tuple, eb: tuple) -> tuple:
    r"""Compose smoother maps: ``ea`` (applied first) then ``eb``.

    A map is :math:`(G, C, b)`: means :math:`m \mapsto m G^\top + b`, covariances
    :math:`P \mapsto G P G^\top + C`; then ``b o a`` is
    :math:`(G_b G_a,\; G_b C_a G_b^\top + C_b,\; b_a G_b^\top + b_b)`.
    """
    Ga, Ca, ba = ea
    Gb, Cb, bb = eb
    return Gb @ Ga, Gb @ Ca @ Gb.mT + Cb, ba @ Gb.mT + bb


def _cov_combine(ea: tuple, eb: tuple) -> tuple:
    """:func:`_smooth_combine` without the means: ``(G_b G_a, G_b C_a G_b^T + C_b)``."""
    Ga, Ca = ea
    Gb, Cb = eb
    return Gb @ Ga, Gb @ Ca @ Gb.mT + Cb


def backward_gains(A: Tensor, fP: Tensor, pP: Tensor):
    r"""Smoother gains and backward conditional covariances, for all frames at once.

    Parameters
    ----------
    A : Tensor
        ``(b, S, S)`` transition matrix.
    fP, pP : Tensor
        ``(b, T, S, S)`` filtered and predicted covariances.

    Returns
    -------
    tuple of Tensor
        ``G`` ``(b, T-1, S, S)`` with :math:`G_t = P_t A^\top (P^p_{t+1})^{-1}` and ``Cond``
        ``(b, T-1, S, S)`` :math:`= \mathrm{Cov}[z_t \mid z_{t+1}, x_{1:t}]
        = P_t - G_t P^p_{t+1} G_t^\top`.
    """
    Pf = fP[:, :-1]
    Pp = pP[:, 1:]
    Lp, info = torch.linalg.cholesky_ex(Pp)
    check_cholesky(info, "predicted covariance A P A^T + Q")
    AP = A.unsqueeze(1) @ Pf  # (b, T-1, S, S)
    V = torch.linalg.solve_triangular(Lp, AP, upper=False)  # Lp^{-1} A P_t
    Gt = torch.linalg.solve_triangular(Lp.mT, V, upper=True)  # Pp^{-1} A P_t = G^T
    return Gt.mT, symmetrize(Pf - V.mT @ V)


def _psd_cholesky(M: Tensor) -> Tensor:
    """Cholesky of PSD matrices, adding growing jitter where needed."""
    L, info = torch.linalg.cholesky_ex(M)
    if not bool(info.ne(0).any()):
        return L
    eye = torch.eye(M.shape[-1], dtype=M.dtype, device=M.device)
    scale = M.diagonal(dim1=-2, dim2=-1).abs().amax(-1, keepdim=True).unsqueeze(-1)
    scale = scale.clamp_min(torch.finfo(M.dtype).tiny)
    eps = torch.finfo(M.dtype).eps
    for k in range(1, 8):
        L2, info2 = torch.linalg.cholesky_ex(M + (eps * 10.0**k) * scale * eye)
        bad = info.ne(0).unsqueeze(-1).unsqueeze(-1)
        L = torch.where(bad, L2, L)
        info = torch.where(info.ne(0), info2, info)
        if not bool(info.ne(0).any()):
            return L
    raise numerical_error("backward conditional covariance (even with jitter)")


def _smooth_shared(A: Tensor, filt: FilterResult, steady_rtol: Optional[float]) -> SmootherResult:
    r"""RTS pass when the filter's covariances are shared by the batch (``(1, T, S, S)``).

    The covariances follow a batch-free recursion; the means the affine backward recursion
    :math:`m^s_t = (m_t - G_t m^p_{t+1}) + G_t m^s_{t+1}` (rows are sequences).  Frames from
    ``k`` on, where the filter's covariances are bitwise those of the last frame (its steady
    state), share one gain, so the products with the gains are one GEMM over every frame
    (:func:`~mmpgm.ops.kalman.sequential.frame_products`).  With ``steady_rtol`` the backward
    covariance recursion over those frames stops once it changes by at most ``steady_rtol``
    relative to its largest entry and reuses its value (as the filter's steady state does);
    without, it runs over every frame (an associative scan)."""
    fm, pm, ll = filt.means, filt.predicted_means, filt.log_likelihood
    fP, pP = filt.covs[0], filt.predicted_covs[0]  # (T, S, S)
    N, T, S = fm.shape
    k = T  # first frame of the run of frames whose covariances are the last frame's
    if steady_rtol is not None:
        same = ((fP == fP[-1]) & (pP == pP[-1])).flatten(1).all(1)
        k = T - int(same.flip(0).cumprod(0).sum())
    n_g = min(k, T - 2) + 1  # distinct gains: G_t for t < n_g - 1 own, then the steady one
    G, Cond = backward_gains(A.unsqueeze(0), fP[None, : n_g + 1], pP[None, : n_g + 1])
    G, Cond = G[0], Cond[0]  # (n_g, S, S)
    GT = G.mT

    def full(x):  # (T - 1, S, S): per transition
        return x if n_g == T - 1 else torch.cat([x, x[-1].expand(T - 1 - n_g, S, S)])

    # base_t = m_t - m^p_{t+1} G_t^T (N, T - 1, S)
    base = frame_products(pm[:, 1:], GT, fm[:, :-1], alpha=-1.0)
    ms_last = fm[:, -1]
    recorded = torch.is_grad_enabled() and any(x.requires_grad for x in (G, base, fm))
    if recorded or N * S * S < MEAN_LOOP_MIN_WORK:
        # m -> m G_t^T + base_t for t = T - 2 .. 0 as one associative scan (reversed time)
        elems = (full(GT).flip(0), base.transpose(0, 1).flip(0))
        Fc, bc = associative_scan(affine_combine, elems, dim=0)
        ms = (ms_last @ Fc + bc).flip(0).transpose(0, 1)  # (N, T - 1, S)
        means = torch.cat([ms, ms_last.unsqueeze(1)], dim=1)
    else:
        with cpu_single_thread(fm.device, N * S * S):
            means = fm.new_empty(N, T, S)
            means[:, -1] = ms_last
            means[:, :-1] = base
            GTs, mss = GT.unbind(0), means.unbind(1)
            for t in range(T - 2, -1, -1):  # in place on the frame's view
                mss[t].addmm_(mss[t + 1], GTs[min(t, n_g - 1)])

    # covariances P^s_t = G_t P^s_{t+1} G_t^T + Cond_t, batch-free
    P = fP[-1]
    if steady_rtol is not None and n_g < T - 1:
        Gs, Cs = G[-1], Cond[-1]
        tail = [P]  # frames T - 1, T - 2, ...
        t, done = T - 2, False
        while t >= n_g - 1 and not done:  # the frames of the steady gain, until converged
            P_new = symmetrize(Gs @ P @ Gs.mT + Cs)
            Pd = P_new.detach()
            done = float((Pd - P.detach()).abs().max()) <= steady_rtol * float(Pd.abs().max())
            P = P_new
            tail.append(P)
            t -= 1
        fill = max(0, t - n_g + 2) if done else 0  # frames n_g - 1 .. t take the converged P
        t -= fill
        head = []  # frames t, t - 1, ..., 0: their own gains
        for j in range(t, -1, -1):
            P = symmetrize(G[j] @ P @ G[j].mT + Cond[j])
            head.append(P)
        parts = [torch.stack(head[::-1])] if head else []
        if fill:
            parts.append(tail[-1].expand(fill, S, S))
        covs = torch.cat(parts + [torch.stack(tail[::-1])])
    else:
        elems = (full(G).flip(0), full(Cond).flip(0))
        Gc, Cc = associative_scan(_cov_combine, elems, dim=0)
        Ps = symmetrize(Gc @ P @ Gc.mT + Cc).flip(0)  # (T - 1, S, S)
        covs = torch.cat([Ps, P.unsqueeze(0)], dim=0)
    cross = covs[1:] @ GT[-1]  # Cov[z_{t+1}, z_t] = P^s_{t+1} G_t^T
    if n_g > 1:
        cross[: n_g - 1] = covs[1:n_g] @ GT[: n_g - 1]
    return SmootherResult(
        means, expand_batch(covs.unsqueeze(0), N), expand_batch(cross.unsqueeze(0), N), ll
    )


def smooth_from_filter(
    A: Tensor, filt: FilterResult, steady_rtol: Optional[float] = None
) -> SmootherResult:
    """RTS pass over a filter's moments.  Covariances may have batch size 1 (shared by the
    ``N`` sequences, ``share="covariance"``): then the covariance recursion runs once, batch-free
    (:func:`_smooth_shared`); ``steady_rtol`` (not ``None``: the filter ran with its steady
    state) lets it reuse a converged backward covariance there."""
    fm, fP, pm, pP = filt.means, filt.covs, filt.predicted_means, filt.predicted_covs
    ll = filt.log_likelihood
    N, T, S = fm.shape
    if T == 1:
        return SmootherResult(fm, expand_batch(fP, N), fm.new_zeros(N, 0, S, S), ll)
    if fP.shape[0] == 1 and A.shape[0] == 1:
        return _smooth_shared(A[0], filt, steady_rtol)
    G, Cond = backward_gains(A, fP, pP)
    fP, pP = expand_batch(fP, N), expand_batch(pP, N)
    G, Cond = expand_batch(G, N), expand_batch(Cond, N)
    ms = fm[:, -1].unsqueeze(-1)
    Ps = fP[:, -1]
    means = [ms]
    covs = [Ps]
    Gs, Conds = G.unbind(1), Cond.unbind(1)
    fms, pms = fm.unsqueeze(-1).unbind(1), pm.unsqueeze(-1).unbind(1)
    with cpu_single_thread(fm.device, N * S * S):
        for t in range(T - 2, -1, -1):
            Gt = Gs[t]
            ms = torch.baddbmm(fms[t], Gt, ms - pms[t + 1])
            Ps = symmetrize(torch.baddbmm(Conds[t], Gt @ Ps, Gt.mT))
            means.append(ms)
            covs.append(Ps)
    means = torch.stack(means[::-1], dim=1).squeeze(-1)
    covs = torch.stack(covs[::-1], dim=1)
    cross = covs[:, 1:] @ G.mT
    return SmootherResult(means, covs, cross, ll)


def rts_smoother(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    *,
    method: Method = "auto",
    share: Share = "auto",
    steady_state: bool = True,
    steady_state_rtol: Optional[float] = None,
) -> SmootherResult:
    r"""Rauch-Tung-Striebel smoother with per-modality missing data.

    With :math:`G_t = P_t A^\top (P^p_{t+1})^{-1}`:

    .. math::

        m^s_t &= m_t + G_t (m^s_{t+1} - m^p_{t+1}), \\
        P^s_t &= (P_t - G_t P^p_{t+1} G_t^\top) + G_t P^s_{t+1} G_t^\top, \\
        \mathrm{Cov}[z_{t+1}, z_t \mid x] &= P^s_{t+1} G_t^\top.

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
    method : {"auto", "sequential", "parallel"}
        The forward filter, as in :func:`~mmpgm.ops.kalman.kalman_filter`.
    share : {"auto", "covariance", "matrices", "none"}
        What the sequential filter shares across the batch, as in
        :func:`~mmpgm.ops.kalman.kalman_filter`.  With ``"covariance"`` the backward pass
        is shared as well.
    steady_state : bool
        Let the shared-covariance recursion stop once converged, as in
        :func:`~mmpgm.ops.kalman.kalman_filter`.
    steady_state_rtol : float, optional
        Its relative tolerance; ``None``: ``STEADY_STATE_RTOL[dtype]``.

    Returns
    -------
    SmootherResult
        ``means`` ``(N, T, S)``, ``covs`` ``(N, T, S, S)``, ``cross_covs`` ``(N, T-1, S, S)``
        with ``cross_covs[:, t]`` = :math:`\mathrm{Cov}[z_{t+1}, z_t \mid x]`,
        ``log_likelihood`` ``(N,)``.  With ``share="covariance"`` the covariances are
        expanded views of one ``(T, S, S)`` stack (``.clone()`` before writing in place).

    Raises
    ------
    ValueError
        On malformed inputs or options (naming the argument).
    NumericalError
        If a covariance is not positive definite.
    """
    p = prepare(params, obs, mask, controls, lengths)
    plan = resolve(p, method, share, steady_state, steady_state_rtol)
    if plan.method == "information":  # threads: see information._run
        return information_smoother(p)

    def smooth(q):  # filter and smoother of one part of the batch
        pm, pP, fm, fP, ll = run_plan(q, plan, store=True)
        return smooth_from_filter(q.A, FilterResult(fm, fP, pm, pP, ll), plan.steady_rtol)

    if plan.method == "parallel":
        return smooth(p)
    parts = split_sequences(p, smooth)  # threads: see prepare.split_sequences
    shared = plan.share == "covariance"
    return SmootherResult(*join_sequences(parts, p.N, shared, expand=True))


def ffbs_sample(
    params: LinearGaussianParams,
    obs: ObsType,
    mask: MaskType = None,
    controls: Optional[Tensor] = None,
    lengths: Optional[Tensor] = None,
    *,
    num_samples: int = 1,
    generator: Optional[torch.Generator] = None,
    method: Method = "auto",
    share: Share = "auto",
    steady_state: bool = True,
    steady_state_rtol: Optional[float] = None,
) -> Tensor:
    r"""Forward-filter backward-sample draws from :math:`p(z_{1:T} \mid x^{obs})`.

    :math:`z_T \sim \mathcal N(m_T, P_T)`, then for :math:`t = T-1..1`:
    :math:`z_t \mid z_{t+1} \sim \mathcal N(m_t + G_t (z_{t+1} - m^p_{t+1}),
    P_t - G_t P^p_{t+1} G_t^\top)`.  Reparameterised (differentiable w.r.t.
    the parameters for fixed noise).

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
    num_samples : int
        Number of joint draws ``K``.
    generator : torch.Generator, optional
        Source of the standard-normal noise (on the inputs' device).
    method, share, steady_state, steady_state_rtol
        The forward filter, as in :func:`~mmpgm.ops.kalman.kalman_filter`.

    Returns
    -------
    Tensor
        ``(K, N, T, S)`` samples.

    Raises
    ------
    ValueError
        On malformed inputs or options (naming the argument).
    NumericalError
        If a covariance is not positive definite.
    """
    check_int("num_samples", num_samples)
    p = prepare(params, obs, mask, controls, lengths)
    plan = resolve(p, method, share, steady_state, steady_state_rtol)
    pm, pP, fm, fP, _ = forward(p, plan, store=True)
    N, T, S = fm.shape
    eps = torch.randn(
        (num_samples, N, T, S, 1), generator=generator, dtype=fm.dtype, device=fm.device
    )
    LT = _psd_cholesky(fP[:, -1])
    z = fm[:, -1].unsqueeze(-1) + LT @ eps[:, :, -1]
    out = [z]
    if T > 1:
        G, Cond = backward_gains(p.A, fP, pP)
        Lc = _psd_cholesky(Cond)
        # z-independent part of the conditional mean: m_t - G_t m^p_{t+1}
        base = fm[:, :-1].unsqueeze(-1) - G @ pm[:, 1:].unsqueeze(-1)
        noise = Lc @ eps[:, :, :-1]  # (K, N, T-1, S, 1)
        mean_part = base.unsqueeze(0) + noise
        parts, Gs = mean_part.unbind(2), G.unbind(1)
        with cpu_single_thread(fm.device, num_samples * N * S):
            for t in range(T - 2, -1, -1):
                z = parts[t] + Gs[t] @ z
                out.append(z)
    return torch.stack(out[::-1], dim=2).squeeze(-1)
