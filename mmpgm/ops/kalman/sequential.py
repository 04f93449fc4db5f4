r"""Sequential (frame by frame) Kalman filters: three recursions of one update.

Each is a loop of :func:`~mmpgm.ops.kalman.steps.predict` and
:func:`~mmpgm.ops.kalman.steps.condition`; they differ only in what the batch shares:

``share="none"`` (:func:`forward_per_sequence`)
    Any parameters (per sequence or shared) and masks: batched ``bmm`` over ``(N, ., .)``, the
    masked emission matrices built per chunk of frames outside the time loop.
``share="matrices"`` (:func:`forward_shared_matrices`)
    ``A`` and ``C`` shared by the batch: the products with them run as one GEMM over the
    flattened batch (several times faster on CPU than a ``bmm`` of tiny matrices).
``share="covariance"`` (:func:`forward_shared_covariance`)
    Covariances, Cholesky factors and gains depend only on the parameters and on which rows
    are observed at each frame, not on the observations.  When ``P_0``, ``A``, ``Q``, ``C_m``
    and ``R_m`` are shared by the batch and every sequence has the same mask pattern at every
    frame (no missing data, aligned dropouts, equal lengths), the covariance recursion runs
    once without a batch dimension and the means follow as one associative scan.  Returned
    covariances then have batch size 1.  Over the final run of fully observed frames the
    Riccati recursion may stop once converged (*steady state*) and reuse its last values.

Each returns ``(pred_means, pred_covs, filt_means, filt_covs, log_lik)``: means ``(N, T, S)``,
covariances ``(b, T, S, S)`` with ``b`` in ``{1, N}`` and log-likelihoods ``(N,)`` (all but the
last ``None`` with ``store=False``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .._threads import cpu_single_thread
from ..linalg import symmetrize
from ..scan import affine_combine, associative_scan
from .prepare import Prepared
from .steps import condition, innovation_log_prob, predict
from .types import LOG_2PI, check_cholesky

__all__ = [
    "MASK_CHUNK_FRAMES",
    "MEAN_LOOP_MIN_WORK",
    "shares_covariance",
    "shares_matrices",
    "forward_per_sequence",
    "forward_shared_matrices",
    "forward_shared_covariance",
    "sequential_forward",
    "expand_batch",
    "frame_products",
]

MASK_CHUNK_FRAMES = 128
"""Frames whose masked emission matrices :func:`forward_per_sequence` materialises at once
(memory ``O(N * MASK_CHUNK_FRAMES * D * (S + D))``); a constant, not an option."""

MEAN_LOOP_MIN_WORK = 1024
"""Smallest per-frame work ``N S^2`` for which the shared-covariance filter and smoother run their
mean recursions as a plain loop when autograd records nothing (below it, the associative scan):
measured with ``benchmarks/lds_speed.py``, the loop is faster at config B (``N S^2 = 2304``) and
~8x slower at config L (``N S^2 = 4``, ``T = 20000``, per-frame overhead bound)."""

_INNOVATION = "innovation covariance C P C^T + R"


def shares_matrices(p: Prepared) -> bool:
    """True when ``A`` and ``C`` are shared by the batch (``share="matrices"`` applies)."""
    return p.A.shape[0] == 1 and p.C.shape[0] == 1


def shares_covariance(p: Prepared) -> bool:
    """True when the covariance recursion is the same for every sequence
    (``share="covariance"`` applies).

    That holds when ``P_0``, ``A``, ``Q``, ``C`` and ``R`` are shared by the batch and, at
    every frame, all sequences observe the same rows.
    """
    if p.N == 1:
        return True
    if p.A.shape[0] != 1 or p.Q.shape[0] != 1 or p.C.shape[0] != 1 or p.R.shape[0] != 1:
        return False
    if p.P0.stride(0) != 0:
        return False
    if all(p.frame_full) or all(f or e for f, e in zip(p.frame_full, p.frame_empty, strict=True)):
        return True
    return bool((p.rm == p.rm[:1]).all())


def expand_batch(x: Tensor, N: int) -> Tensor:
    """A covariance stack shared by the batch (leading dim 1) seen by ``N`` sequences: an
    expanded view (no copy: read-only use; ``.clone()`` it before writing in place)."""
    if x.shape[0] == N:
        return x
    return x.expand(N, *x.shape[1:])


def _finish(p: Prepared, store, pm, pP, fm, fP, es, Ls, infos, col: bool):
    check_cholesky(infos, _INNOVATION)
    if es:
        e = torch.stack(es, 1)  # (N, T', D) or (N, T', D, 1)
        ll = innovation_log_prob(torch.stack(Ls, 1), e.squeeze(-1) if col else e, 0.0).sum(1)
    else:
        ll = torch.zeros(p.N, dtype=p.y.dtype, device=p.y.device)
    ll = ll - 0.5 * LOG_2PI * p.num_obs
    if not store:
        return None, None, None, None, ll
    pm, fm = torch.stack(pm, 1), torch.stack(fm, 1)
    if col:
        pm, fm = pm.squeeze(-1), fm.squeeze(-1)
    return pm, torch.stack(pP, 1), fm, torch.stack(fP, 1), ll


def forward_per_sequence(p: Prepared, store: bool, chunk: int = MASK_CHUNK_FRAMES):
    """Filter with batched ``bmm`` over the sequences (any parameters, any masks)."""
    N, T, S = p.N, p.T, p.S
    D = p.C.shape[-2]
    A, Q = p.A.expand(N, S, S), p.Q.expand(N, S, S)
    C, R = p.C.expand(N, D, S), p.R.expand(N, D, D)
    m, P = p.m0, p.P0  # means as columns (N, S, 1): fused baddbmm, no reshapes
    pm, pP, fm, fP, es, Ls, infos = [], [], [], [], [], [], []
    any_partial = not all(f or e for f, e in zip(p.frame_full, p.frame_empty, strict=True))
    eye_D = torch.eye(D, dtype=p.y.dtype, device=p.y.device)
    for t0 in range(0, T, chunk):
        t1 = min(T, t0 + chunk)
        ys = p.y[:, t0:t1].unbind(1)
        Bus = p.Bu[:, t0:t1].unbind(1) if p.Bu is not None else None
        if any_partial:  # masked C and R of the chunk's frames, built at once
            r = p.rm[:, t0:t1]  # (N, c, D, 1)
            Cms = (C.unsqueeze(1) * r).unbind(1)
            Rms = (R.unsqueeze(1) * (r * r.mT) + eye_D * (1.0 - r)).unbind(1)
        for t in range(t0, t1):
            k = t - t0
            if t > 0:
                m, P = predict(m, P, A, Q, None if Bus is None else Bus[k])
            if store:
                pm.append(m)
                pP.append(P)
            if not p.frame_empty[t]:
                Cc, Rc = (C, R) if p.frame_full[t] else (Cms[k], Rms[k])
                u = condition(m, P, Cc, Rc, ys[k], check=False)
                m, P = u.mean, u.cov
                es.append(u.innovation)
                Ls.append(u.chol)
                infos.append(u.info)
            if store:
                fm.append(m)
                fP.append(P)
    return _finish(p, store, pm, pP, fm, fP, es, Ls, infos, col=True)


def forward_shared_matrices(p: Prepared, store: bool):
    """Filter for ``A`` and ``C`` shared by the batch: products with them as one GEMM over the
    flattened batch (using the symmetry of ``P``: :math:`C P = (P C^\\top)^\\top`)."""
    A, C = p.A[0], p.C[0]  # (S, S), (D, S)
    Q, R = p.Q, p.R  # (b, ., .)
    m, P = p.m0[..., 0], p.P0  # (N, S), (N, S, S)
    pm, pP, fm, fP, es, Ls, infos = [], [], [], [], [], [], []
    ys = p.y[..., 0].unbind(1)
    rs = p.rm[..., 0].unbind(1)
    Bus = p.Bu[..., 0].unbind(1) if p.Bu is not None else None
    for t in range(p.T):
        if t > 0:
            m, P = predict(m, P, A, Q, None if Bus is None else Bus[t])
        if store:
            pm.append(m)
            pP.append(P)
        if not p.frame_empty[t]:
            u = condition(m, P, C, R, ys[t], None if p.frame_full[t] else rs[t], check=False)
            m, P = u.mean, u.cov
            es.append(u.innovation)
            Ls.append(u.chol)
            infos.append(u.info)
        if store:
            fm.append(m)
            fP.append(P)
    return _finish(p, store, pm, pP, fm, fP, es, Ls, infos, col=False)


def forward_shared_covariance(p: Prepared, store: bool, steady_rtol: Optional[float] = None):
    r"""Filter whose covariance recursion is shared by the batch (see the module docstring).

    With the gain :math:`K_t^\top = L_t^{-\top} W_t` (``(D, S)``), the predicted means obey the
    linear recursion

    .. math::

        m^p_{t+1} = m^p_t F_t + g_t, \quad
        F_t = (I - C_t^\top K_t^\top) A^\top, \quad
        g_t = y_t K_t^\top A^\top + (B u_{t+1})^\top

    (rows are sequences), run as one associative scan over the affine maps; innovations,
    filtered means and the log-likelihood then follow for all frames at once.

    Steady state (``steady_rtol`` not ``None``): once the predicted covariance of a fully
    observed frame differs from the previous one by at most ``steady_rtol`` relative to its
    largest entry, and every remaining frame is fully observed, the remaining frames reuse that
    frame's covariance quantities.  The induced log-likelihood error is of that relative order.
    """
    T, S = p.T, p.S
    dtype, device = p.y.dtype, p.y.device
    D = p.C.shape[-2]
    A, Q, C, R = p.A[0], p.Q[0], p.C[0], p.R[0]
    r_all = p.rm[0, :, :, 0]  # (T, D) the pattern shared by the batch
    full, empty = p.frame_full, p.frame_empty
    suffix_full = [False] * (T + 1)
    suffix_full[T] = True
    for t in range(T - 1, -1, -1):
        suffix_full[t] = suffix_full[t + 1] and full[t]

    # ---- covariance recursion (batch-free) ----
    P = symmetrize(p.P0[0])
    Pp_l, Pf_l, L_l, W_l, C_l, infos = [], [], [], [], [], []
    prev_full_P = None
    t_stop = T
    for t in range(T):
        if t > 0:
            _, P = predict(None, P, A, Q)
        if steady_rtol is not None and full[t] and suffix_full[t]:
            Pd = P.detach()
            if prev_full_P is not None:
                if float((Pd - prev_full_P).abs().max()) <= steady_rtol * float(Pd.abs().max()):
                    t_stop = t
                    break
            prev_full_P = Pd
        else:
            prev_full_P = None
        Pp_l.append(P)
        if empty[t]:
            Pf_l.append(P)
            L_l.append(None)
            W_l.append(None)
            C_l.append(None)
            continue
        rows = None if full[t] else r_all[t]
        u = condition(None, P, C, R, rows=rows, check=False)
        P = u.cov
        infos.append(u.info)
        Pf_l.append(P)
        L_l.append(u.chol)
        W_l.append(u.gain_factor)
        C_l.append(C if rows is None else C * rows.unsqueeze(-1))
    check_cholesky(infos, _INNOVATION)
    n_rep = T - t_stop
    # empty frames: identity factor, zero gain, zero rows
    eye_D = torch.eye(D, dtype=dtype, device=device)
    zDS = torch.zeros(D, S, dtype=dtype, device=device)
    L_l = [eye_D if x is None else x for x in L_l]
    W_l = [zDS if x is None else x for x in W_l]
    C_l = [zDS if x is None else x for x in C_l]

    def stack(xs):
        out = torch.stack(xs)
        if n_rep:
            out = torch.cat([out, xs[-1].expand(n_rep, *xs[-1].shape)])
        return out

    # Per-frame quantities of the t_stop frames that have their own; every later frame reuses
    # the last one's (steady state), so the products with them below are one GEMM over all
    # frames with the last frame's matrix, and per-frame products for the frames before it.
    Ls, Ws, Cs = torch.stack(L_l), torch.stack(W_l), torch.stack(C_l)  # (k, D, D), (k, D, S)
    At = A.mT
    Kt = torch.linalg.solve_triangular(Ls.mT, Ws, upper=True)  # (k, D, S) = K_t^T
    KtAt = Kt @ At
    F = At - Cs.mT @ KtAt  # (k, S, S)
    y = p.y[..., 0]  # (N, T, D)
    g = frame_products(y, KtAt)  # (N, T, S)
    if p.Bu is not None:
        g = g[:, :-1] + p.Bu[:, 1:, :, 0]

    # ---- mean recursion m_{t+1} = m_t F_t + g_t (rows are sequences) ----
    # Without autograd and with enough sequences a plain loop (one fused GEMM of (N, S) by
    # (S, S) per frame, written in place); otherwise an associative scan over the affine maps
    # (depth O(log T), differentiable, no per-frame Python loop); see MEAN_LOOP_MIN_WORK.
    # Every (N, T, .) stack is sequence-major: a mix of layouts costs a strided pass.
    m0 = p.m0[..., 0]  # (N, S)
    k = F.shape[0]
    if T > 1 and p.N * S * S >= MEAN_LOOP_MIN_WORK and not _recorded(F, g, m0):
        pm = y.new_empty(p.N, T, S)
        pm[:, 0] = m0
        pm[:, 1:] = g[:, : T - 1]
        Fs, pms = F.unbind(0), pm.unbind(1)
        for t in range(T - 1):  # in place on the frame's view: no copy, no view a frame
            pms[t + 1].addmm_(pms[t], Fs[min(t, k - 1)])
    elif T > 1:
        Fa = F if k >= T - 1 else torch.cat([F, F[-1].expand(T - 1 - k, S, S)])
        gt = g[:, : T - 1].transpose(0, 1)  # time-major for the scan
        Fc, gc = associative_scan(affine_combine, (Fa[: T - 1], gt), dim=0)
        pm = torch.cat([m0.unsqueeze(0), m0 @ Fc + gc]).transpose(0, 1).contiguous()
    else:
        pm = m0.unsqueeze(1)
    # innovations e_t = L_t^{-1} (y_t - C_t m_t), as rows: y_t L_t^{-T} - m_t C_t^T L_t^{-T}
    LiT = torch.linalg.solve_triangular(Ls, eye_D.expand(k, D, D), upper=False).mT
    e = frame_products(pm, Cs.mT @ LiT, frame_products(y, LiT), alpha=-1.0)  # (N, T, D)
    logdiag = Ls.diagonal(dim1=-2, dim2=-1).log()  # (k, D)
    logdet = logdiag.sum() + n_rep * logdiag[-1].sum()
    sq = torch.linalg.vector_norm(e.reshape(p.N, -1), dim=1).square()
    ll = -0.5 * sq - logdet - 0.5 * LOG_2PI * p.num_obs
    if not store:
        return None, None, None, None, ll
    fm = frame_products(e, Ws, pm)  # m_t + e_t W_t
    Pp, Pf = stack(Pp_l), stack(Pf_l)
    return pm, Pp.unsqueeze(0), fm, Pf.unsqueeze(0), ll


def frame_products(
    x: Tensor, mats: Tensor, base: Optional[Tensor] = None, alpha: float = 1.0
) -> Tensor:
    """``base[:, t] + alpha * x[:, t] @ mats[min(t, k - 1)]`` for every frame ``t`` of the row
    stacks ``x`` ``(N, T, a)``, ``mats`` ``(k, a, b)`` with ``k <= T`` (frames from ``k - 1`` on
    share the last matrix), ``base`` ``(N, T, b)`` or ``None`` (zero; then ``alpha`` is 1): one
    fused GEMM over all frames with ``mats[-1]`` and a batched product over the ``k - 1`` frames
    before. Returns ``(N, T, b)``."""
    assert base is not None or alpha == 1.0
    N, T, a = x.shape
    b = mats.shape[-1]
    x2 = x.reshape(N * T, a)
    if base is None:
        out = (x2 @ mats[-1]).view(N, T, b)
    else:
        out = torch.addmm(base.reshape(N * T, b), x2, mats[-1], alpha=alpha).view(N, T, b)
    h = mats.shape[0] - 1
    if h:
        head = torch.bmm(x[:, :h].transpose(0, 1), mats[:h]).transpose(0, 1)
        out[:, :h] = head if base is None else base[:, :h] + alpha * head
    return out


def _recorded(*tensors) -> bool:
    """Whether autograd records operations on any of ``tensors``."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def sequential_forward(p: Prepared, store: bool, share: str, steady_rtol: Optional[float]):
    """Run the sequential recursion ``share`` (``"covariance"``, ``"matrices"`` or
    ``"none"``, already resolved and checked to apply) with one intra-op thread on the CPU
    when the per-step work is small (see ``ops/_threads.py``)."""
    with cpu_single_thread(p.y.device, p.N * (p.S + p.C.shape[-2]) ** 2):
        if share == "covariance":
            return forward_shared_covariance(p, store, steady_rtol)
        if share == "matrices":
            return forward_shared_matrices(p, store)
        return forward_per_sequence(p, store)
