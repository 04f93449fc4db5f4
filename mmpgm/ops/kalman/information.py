r"""Information-form Kalman filter and smoother, and the log-likelihood gradient by Fisher's
identity: the fast exact path for masks that differ between sequences (``method="information"``).

Why
---
With missing data at random per sequence, the covariance recursion differs between sequences and
cannot be shared (``share="covariance"`` needs one mask pattern for the batch).  The covariance
form conditions on the observed rows with a ``D x D`` factorisation per frame, and autograd records
some 40 batched products per frame: at ``N = 64``, ``S = 6``, ``D = 10`` the log-likelihood and
gradient cost 20x the unmasked one.  Here a frame is one Cholesky factorisation, two triangular
solves and two fused products of size ``S`` forward and three products backward, no graph is
recorded, and every other quantity is computed for many frames at once (measured at config B of
``benchmarks/lds_speed.py``: the log-likelihood and gradient with 20% of each modality missing
about 5x faster than the sequential recursions).

Filter
------
A missing modality adds zero precision, so the measurement update in information form needs no
row selection: with the per-modality precisions :math:`\Lambda_m = C_m^\top R_m^{-1} C_m` and
:math:`r_{tm} \in \{0, 1\}`,

.. math::

    J^f_t = J^p_t + \Lambda_t, \quad \Lambda_t = \sum_m r_{tm} \Lambda_m, \qquad
    h^f_t = h^p_t + C^\top R^{-1} y_t

(:math:`y_t = x_t - d` zero on missing rows; :math:`R` is block diagonal over modalities, so
:math:`\Lambda_t` and :math:`C^\top R^{-1} y_t` are computed for all frames at once).  The time
update, with :math:`c_{t+1} = B u_{t+1}`, :math:`M_t = J^f_t + A^\top Q^{-1} A` and
:math:`h'_t = h^f_t - A^\top Q^{-1} c_{t+1}`, is

.. math::

    J^p_{t+1} = Q^{-1} - Q^{-1} A M_t^{-1} A^\top Q^{-1}, \qquad
    h^p_{t+1} = Q^{-1} c_{t+1} + Q^{-1} A M_t^{-1} h'_t,

so with :math:`M_t = L_t L_t^\top`, :math:`V_t = L_t^{-1} A^\top Q^{-1}` and
:math:`w_t = L_t^{-1} h'_t` one frame is :math:`M_{t+1} = Z^J_{t+1} - V_t^\top V_t`,
:math:`h'_{t+1} = Z^h_{t+1} + V_t^\top w_t`, where the increments :math:`Z^J_{t+1} = Q^{-1} +
\Lambda_{t+1} + A^\top Q^{-1} A` and :math:`Z^h_{t+1} = Q^{-1} c_{t+1} + C^\top R^{-1} y_{t+1}
- A^\top Q^{-1} c_{t+2}` are computed for all frames beforehand (at the last frame
:math:`M_T = J^f_T`, :math:`h'_T = h^f_T`; at the first the prior gives :math:`P_0^{-1}` and
:math:`P_0^{-1} \mu_0`).  Every factorisation is of an ``S x S`` SPD matrix
(:math:`M_t \succeq A^\top Q^{-1} A + J^p_t`).

Log-likelihood
--------------
With :math:`\varphi(J, h) = \tfrac12 h^\top J^{-1} h - \tfrac12 \log|J|`, each frame contributes
:math:`\varphi(J^f_t, h^f_t) - \varphi(J^p_t, h^p_t) - \tfrac12 y_t^\top R_o^{-1} y_t -
\tfrac12 \log|2\pi R_o|`; integrating :math:`z_t` out of the joint of :math:`(z_t, z_{t+1})`
gives :math:`\varphi(J^f_t, h^f_t) - \varphi(J^p_{t+1}, h^p_{t+1}) = \tfrac12 \lVert w_t
\rVert^2 - \sum_i \log (L_t)_{ii} - \tfrac12 \log|Q| - \tfrac12 c_{t+1}^\top Q^{-1} c_{t+1}`,
so the sum telescopes into quantities of the recursion plus :math:`\varphi(J^f_T, h^f_T) -
\varphi(P_0^{-1}, P_0^{-1} \mu_0)`.  A sequence with nothing observed gets exactly 0.

Smoother
--------
:math:`p(z_t \mid z_{t+1}, x_{1:t}) = \mathcal N(M_t^{-1} h'_t + G_t z_{t+1}, M_t^{-1})` with the
gain :math:`G_t = M_t^{-1} A^\top Q^{-1}`, both by-products of the filter's solve; so
:math:`m^s_t = M_t^{-1} h'_t + G_t m^s_{t+1}`, :math:`P^s_t = M_t^{-1} + G_t P^s_{t+1}
G_t^\top`, :math:`\mathrm{Cov}[z_{t+1}, z_t] = P^s_{t+1} G_t^\top`.

Gradient
--------
Fisher's identity :math:`\nabla_\theta \log p(x) = E_{p(z \mid x)}[\nabla_\theta \log p(x, z)]`
gives the exact gradient of the log-likelihood w.r.t. every parameter, control and observation
from the smoothed moments (the expected complete-data scores in closed form, e.g.
:math:`\partial_A = Q^{-1} \sum_t E[(z_{t+1} - A z_t - c_{t+1}) z_t^\top]`,
:math:`\partial_{R} = \tfrac12 \sum_t (R_o^{-1} E[e_t e_t^\top] R_o^{-1} - R_o^{-1})`,
:math:`\partial_{y_t} = -R_o^{-1}(y_t - C E[z_t])`): :func:`information_log_likelihood` is a
:class:`torch.autograd.Function` whose backward runs the smoother backward in chunks of
:data:`BACKWARD_CHUNK_FRAMES` frames and accumulates the scores' sums.  It is first-order only:
with ``create_graph=True`` the gradient it returns carries no graph (no Hessian-vector products
through it; use ``method="sequential"`` for those).
:func:`information_forward` and :func:`information_smoother` record the same recursion on
autograd instead (differentiable outputs, slower).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .._threads import cpu_single_thread, run_chunks, sequence_chunks
from ..linalg import symmetrize
from .prepare import Prepared, join_sequences, records_grad, sequence_slice
from .types import LOG_2PI, SmootherResult, check_cholesky

__all__ = [
    "information_log_likelihood",
    "information_forward",
    "information_smoother",
]


class _Model(NamedTuple):
    """Precomputed inverses and per-frame increments (``b`` is 1 or ``N``)."""

    Qi: Tensor  # (b, S, S)  Q^{-1}
    AtQi: Tensor  # (b, S, S)  A^T Q^{-1}
    AtQiA: Tensor  # (b, S, S)
    Rinv: Tensor  # (b, D, D)  block diagonal
    P0i: Tensor  # (N, S, S)
    Zj: Tensor  # (T, N, S, S) per-frame increment of M (J^f_T itself at the last frame)
    Zh: Tensor  # (T, N, S, 1) per-frame increment of h' (h^f_T at the last frame)
    c: Optional[Tensor]  # (N, T, S) controls B u_t as rows (or None)
    const: Tensor  # (N,) the log-likelihood terms that need no recursion
    observed: Tensor  # (N,) bool: the sequence has an observed entry
    infos: list  # Cholesky infos of R, Q, P0


def _blocks(p: Prepared) -> list:
    """``(start, stop)`` rows of each modality block of the stacked observation."""
    dims = p.dims if p.dims else (p.C.shape[-2],)
    out, o = [], 0
    for d in dims:
        out.append((o, o + d))
        o += d
    return out


def _modality_rows(p: Prepared) -> Tensor:
    """``(N, T, M)`` modality masks (0/1 floats) from the row mask (rows of a modality agree)."""
    return p.rm[:, :, [a for a, _ in _blocks(p)], 0]


def _rows_times(x: Tensor, W: Tensor) -> Tensor:
    """``x @ W`` for rows ``x`` ``(N, T, k)`` and ``W`` ``(b, k, l)``, b in {1, N}."""
    return x @ W if W.shape[0] == 1 else torch.bmm(x, W)


def _model(p: Prepared) -> _Model:
    N, T, S = p.N, p.T, p.S
    A, Q, C, R = p.A, p.Q, p.C, p.R
    infos = []
    LR, info = torch.linalg.cholesky_ex(R)
    infos.append(info)
    Rinv = torch.cholesky_inverse(LR)
    RiC = Rinv @ C  # (b, D, S)
    LQ, info = torch.linalg.cholesky_ex(Q)
    infos.append(info)
    Qi = torch.cholesky_inverse(LQ)
    AtQi = A.mT @ Qi
    AtQiA = symmetrize(AtQi @ A)
    shared_P0 = p.P0.stride(0) == 0
    LP0, info = torch.linalg.cholesky_ex(p.P0[:1] if shared_P0 else p.P0)
    infos.append(info)
    P0i = torch.cholesky_inverse(LP0).expand(N, S, S)
    m0 = p.m0[..., 0]  # (N, S)
    P0i_m0 = (P0i @ m0.unsqueeze(-1))[..., 0]

    # per-frame precision increments: sum over observed modalities of C_m^T R_m^{-1} C_m
    rmod = _modality_rows(p).transpose(0, 1)  # (T, N, M)
    blocks = _blocks(p)
    M_ = len(blocks)
    Lam_m = torch.stack([symmetrize(C[:, a:e].mT @ RiC[:, a:e]) for a, e in blocks], 1)
    if Lam_m.shape[0] == 1:  # (b, M, S, S)
        Lam = (rmod.reshape(T * N, M_) @ Lam_m.reshape(M_, S * S)).reshape(T, N, S, S)
    else:
        Lam = (rmod.unsqueeze(-2) @ Lam_m.reshape(N, M_, S * S)).reshape(T, N, S, S)
    y = p.y[..., 0]  # (N, T, D), zero on missing rows

    # M_t = J^p_t + Lambda_t + A^T Q^{-1} A (t < T), J^f_T = J^p_T + Lambda_T: the prior
    # precision is P_0^{-1} at the first frame, Q^{-1} after (plus the recursion's term);
    # built in place on the fresh Lambda stack
    Zj = Lam
    Zj[0] += P0i
    if T > 1:
        Zj[:-1] += AtQiA.unsqueeze(0)
        Zj[1:] += Qi.unsqueeze(0)
    # h'_t = h^p_t + C^T R^{-1} y_t - A^T Q^{-1} c_{t+1}; h^p_1 = P_0^{-1} m_0, Q^{-1} c_t after
    yt = y.transpose(0, 1)  # (T, N, D)
    Zh = yt @ RiC if RiC.shape[0] == 1 else (yt.unsqueeze(-2) @ RiC.unsqueeze(0)).squeeze(-2)
    Zh[0] += P0i_m0
    c = None
    if T > 1 and p.Bu is not None:
        c = p.Bu[..., 0]  # (N, T, S); c[:, 0] unused
        c1 = c[:, 1:]
        Qic = _rows_times(c1, Qi)  # rows: (Q^{-1} c)^T
        AtQic = _rows_times(c1, AtQi.mT)  # rows: (A^T Q^{-1} c)^T
        Zh[1:] += Qic.transpose(0, 1)
        Zh[:-1] -= AtQic.transpose(0, 1)
    Zh = Zh.unsqueeze(-1)  # (T, N, S, 1)

    # terms without recursion: -1/2 y^T R_o^{-1} y - 1/2 log|2 pi R_o| per frame, the prior's
    # -phi(P0^{-1}, P0^{-1} m0), and -1/2 log|Q| - 1/2 c^T Q^{-1} c for every transition
    yRy = (y * _rows_times(y, Rinv)).sum((1, 2))
    logdiagR = LR.diagonal(dim1=-2, dim2=-1).log()  # (b, D)
    logdetR = (p.rm[..., 0].sum(1) * logdiagR).sum(-1)
    logdetP0 = 2.0 * LP0.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (N,) or (1,)
    logdetQ = 2.0 * LQ.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (b,)
    const = (
        -0.5 * yRy
        - logdetR
        - 0.5 * LOG_2PI * p.num_obs
        - 0.5 * (m0 * P0i_m0).sum(-1)
        - 0.5 * logdetP0
        - 0.5 * (T - 1) * logdetQ
    )
    if c is not None:
        const = const - 0.5 * (Qic * c1).sum((1, 2))
    return _Model(Qi, AtQi, AtQiA, Rinv, P0i, Zj, Zh, c, const, p.num_obs > 0, infos)


class _Recursion(NamedTuple):
    """The filter's by-products, per frame ``t < T``: ``(T-1, N, ...)`` stacks."""

    L: Tensor  # Cholesky factors L_t of M_t (T-1, N, S, S)
    w: Tensor  # w_t = L_t^{-1} h'_t (T-1, N, S, 1)
    M: Optional[Tensor]  # M_t (T-1, N, S, S) (only with keep=True)
    h: Optional[Tensor]  # h'_t (T-1, N, S, 1) (only with keep=True)
    J_last: Tensor  # J^f_T (N, S, S)
    h_last: Tensor  # h^f_T (N, S, 1)
    L_last: Tensor  # Cholesky factor of J^f_T
    infos: list


def _recursion(mdl: _Model, S: int, keep: bool = False) -> _Recursion:
    """The filter's frame loop (any autograd mode): per frame one Cholesky factorisation of
    :math:`M_t`, two triangular solves and two fused products of size ``S``:
    :math:`V_t = L_t^{-1} A^\top Q^{-1}`, :math:`w_t = L_t^{-1} h'_t`,
    :math:`M_{t+1} = Z^J_{t+1} - V_t^\top V_t`, :math:`h'_{t+1} = Z^h_{t+1} + V_t^\top w_t`."""
    Zj, Zh = mdl.Zj.unbind(0), mdl.Zh.unbind(0)
    T = len(Zj)
    N = Zj[0].shape[0]
    AtQi_T = mdl.AtQi.mT.contiguous()  # Q^{-1} A (Q symmetric)
    M, h = Zj[0], Zh[0]
    Ms, hs = [], []
    z = Zj[0]
    if not (torch.is_grad_enabled() and (mdl.Zj.requires_grad or mdl.Zh.requires_grad)):
        # no autograd: write every frame's factors into preallocated stacks (no copies)
        Lb = z.new_empty(T - 1, N, S, S)
        Vt = z.new_empty(N, S, S)  # reused: only L and w are kept
        wb = z.new_empty(T - 1, N, S, 1)
        ib = torch.empty(T - 1, N, dtype=torch.int32, device=z.device)
        for t in range(T - 1):
            L, w = Lb[t], wb[t]
            torch.linalg.cholesky_ex(M, out=(L, ib[t]))
            # V^T = (A^T Q^{-1})^T L^{-T} solved from the right: contiguous V^T, so both products
            # below read their operands in the layouts bmm runs fastest (measured at N = 64,
            # S = 6: 41 against 50 us a frame for the solves and products)
            torch.linalg.solve_triangular(L.mT, AtQi_T, upper=True, left=False, out=Vt)
            torch.linalg.solve_triangular(L, h, upper=False, out=w)
            if keep:
                Ms.append(M)
                hs.append(h)
            M = torch.baddbmm(Zj[t + 1], Vt, Vt.mT, alpha=-1.0)
            h = torch.baddbmm(Zh[t + 1], Vt, w)
        infos = [ib]
    else:
        Ls, ws, infos = [], [], []
        for t in range(T - 1):
            L, info = torch.linalg.cholesky_ex(M)
            Vt = torch.linalg.solve_triangular(L.mT, AtQi_T, upper=True, left=False)
            w = torch.linalg.solve_triangular(L, h, upper=False)
            Ls.append(L)
            ws.append(w)
            infos.append(info)
            if keep:
                Ms.append(M)
                hs.append(h)
            M = torch.baddbmm(Zj[t + 1], Vt, Vt.mT, alpha=-1.0)
            h = torch.baddbmm(Zh[t + 1], Vt, w)

        def stack(xs, *shape):
            return torch.stack(xs, 0) if xs else z.new_zeros(0, N, *shape)

        Lb, wb = stack(Ls, S, S), stack(ws, S, 1)
    L, info = torch.linalg.cholesky_ex(M)
    infos.append(info)
    Ms = (torch.stack(Ms, 0) if Ms else z.new_zeros(0, N, S, S)) if keep else None
    hs = (torch.stack(hs, 0) if hs else z.new_zeros(0, N, S, 1)) if keep else None
    return _Recursion(Lb, wb, Ms, hs, M, h, L, infos)


def _log_likelihood(mdl: _Model, rec: _Recursion) -> tuple:
    """``(log_lik (N,), m^s_T (N, S, 1))`` from the recursion (the telescoped sum)."""
    hT = rec.h_last
    mT = torch.cholesky_solve(hT, rec.L_last)
    ll = (
        mdl.const
        + 0.5 * (hT * mT).sum((1, 2))
        - rec.L_last.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        + 0.5 * rec.w.square().sum((0, 2, 3))
        - rec.L.diagonal(dim1=-2, dim2=-1).log().sum((0, 2))
    )
    # nothing observed: exactly zero (the telescoped terms cancel only up to rounding)
    ll = torch.where(mdl.observed, ll, torch.zeros_like(ll))
    return ll, mT


def _smoothed(mdl: _Model, rec: _Recursion, mT: Tensor, S: int, sym: bool = True):
    """Smoothed means ``(N, T, S)``, covariances ``(N, T, S, S)`` and ``Cov[z_{t+1}, z_t]``
    ``(N, T-1, S, S)`` (any autograd mode).  ``sym=False`` leaves the covariances symmetric
    only up to rounding (the gradient symmetrizes its sums instead)."""
    ms, Ps = mT, torch.cholesky_inverse(rec.L_last)
    means, covs, cross = [ms], [Ps], []
    n = rec.L.shape[0]
    if n:
        # M_t^{-1}, G_t = M_t^{-1} A^T Q^{-1} and M_t^{-1} h'_t for all frames at once
        Minv = torch.cholesky_inverse(rec.L)  # (T-1, N, S, S)
        if mdl.AtQi.shape[0] == 1:  # one GEMM over the flattened rows
            G = (Minv.reshape(-1, S) @ mdl.AtQi[0]).reshape(Minv.shape)
        else:
            G = Minv @ mdl.AtQi
        g = torch.linalg.solve_triangular(rec.L.mT, rec.w, upper=True)
        Minv, G, g = Minv.unbind(0), G.unbind(0), g.unbind(0)
        for t in range(n - 1, -1, -1):
            # P^s_t = M_t^{-1} + G_t P^s_{t+1} G_t^T with G P^s = G (P^s)^T (symmetric): both
            # products read their second operand contiguously (see _recursion)
            Gt = G[t]
            ms = torch.baddbmm(g[t], Gt, ms)
            GP = torch.bmm(Gt, Ps.mT)
            Ps = torch.baddbmm(Minv[t], GP, Gt.mT)
            means.append(ms)
            covs.append(Ps)
            cross.append(GP.mT)
    means = torch.stack(means[::-1], 1)[..., 0]
    covs = torch.stack(covs[::-1], 1)
    if sym:
        covs = symmetrize(covs)
    if cross:
        cross = torch.stack(cross[::-1], 1)
    else:
        cross = mT.new_zeros(mT.shape[0], 0, S, S)
    return means, covs, cross


BACKWARD_CHUNK_FRAMES = 256
"""Frames the gradient's backward pass (:func:`_fisher_backward`) smooths and scores at once
(memory ``O(N * BACKWARD_CHUNK_FRAMES * S^2)`` beyond the filter's stacks); a constant."""


class _Scores:
    """Running sums of the expected complete-data scores over chunks of frames (per sequence),
    and their assembly into gradients (:meth:`gradients`)."""

    def __init__(self, p: Prepared, mdl: _Model, g: Tensor):
        N, T, S = p.N, p.T, p.S
        self.p, self.mdl, self.g = p, mdl, g
        self.blocks = _blocks(p)
        M_ = len(self.blocks)
        D = p.C.shape[-2]
        dt = dict(dtype=p.y.dtype, device=p.y.device)
        rmod = _modality_rows(p)  # (N, T, M)
        pairs = (rmod.unsqueeze(-1) * rmod.unsqueeze(-2)).reshape(N, T, M_ * M_)
        first, last = rmod.new_ones(N, T, 1), rmod.new_ones(N, T, 1)
        first[:, -1] = 0.0
        last[:, 0] = 0.0
        # weights of the sums over frames of P^s_t: sum_t r_tm (M), sum_t r_ta r_tb (M^2),
        # sum_{t<T}, sum_{t>1}
        self.wts = torch.cat([rmod, pairs, first, last], -1)  # (N, T, K)
        self.Cb = p.C.expand(N, D, S)
        self.Rb = mdl.Rinv.expand(N, D, D)
        self.Ab = p.A.expand(N, S, S)
        self.sums = torch.zeros(N, self.wts.shape[-1], S * S, **dt)
        self.GyM = torch.zeros(N, D, S, **dt)  # sum_t Gy_t m_t^T
        self.GyGy = torch.zeros(N, D, D, **dt)
        self.sX = torch.zeros(N, S, S, **dt)  # sum_t Cov[z_{t+1}, z_t]
        self.RR = torch.zeros(N, S, S, **dt)  # sum_t res_t res_t^T
        self.RM = torch.zeros(N, S, S, **dt)  # sum_t res_t m_t^T
        self.grad_y = torch.zeros(N, T, D, 1, **dt)
        self.res = torch.zeros(N, T, S, **dt) if mdl.c is not None else None
        self.first = None  # (m^s_1, P^s_1)

    def frames(self, a: int, ms: Tensor, Ps: Tensor) -> None:
        """Frames ``a .. a + k - 1``: smoothed means ``ms`` ``(N, k, S)``, covariances ``Ps``
        ``(N, k, S, S)``."""
        p, k = self.p, ms.shape[1]
        N, S = p.N, p.S
        r = p.rm[:, a : a + k, :, 0]
        e = (p.y[:, a : a + k, :, 0] - torch.bmm(ms, self.Cb.mT)) * r  # (N, k, D)
        Gy = torch.bmm(e, self.Rb) * r  # R_o^{-1} (y - C m^s) on observed rows
        # d/dy log N(y; C z, R) = -R^{-1} (y - C z)
        self.grad_y[:, a : a + k, :, 0] = Gy * -self.g.reshape(N, 1, 1)
        self.GyM.baddbmm_(Gy.mT, ms)
        self.GyGy.baddbmm_(Gy.mT, Gy)
        self.sums.baddbmm_(self.wts[:, a : a + k].mT, Ps.reshape(N, k, S * S))
        if a == 0:
            self.first = (ms[:, 0], Ps[:, 0])

    def transitions(self, a: int, ms: Tensor, m_next: Tensor, cross: Tensor) -> None:
        r"""Transitions ``t -> t + 1`` for ``t = a .. a + k - 1``: means ``ms`` ``(N, k, S)`` of
        frames ``a ..``, ``m_next`` ``(N, S)`` of frame ``a + k``, ``cross`` ``(N, k, S, S)``
        :math:`\mathrm{Cov}[z_{t+1}, z_t]`."""
        k = ms.shape[1]
        mu1 = torch.cat([ms[:, 1:], m_next.unsqueeze(1)], 1)
        res = mu1 - torch.bmm(ms, self.Ab.mT)
        if self.mdl.c is not None:
            res = res - self.mdl.c[:, a + 1 : a + k + 1]
            self.res[:, a + 1 : a + k + 1] = res
        self.sX += cross.sum(1)
        self.RR.baddbmm_(res.mT, res)
        self.RM.baddbmm_(res.mT, ms)

    def gradients(self) -> tuple:
        """Gradients w.r.t. ``m0, P0, A, Q, C, R, y, Bu`` of ``p`` (shaped like them)."""
        p, mdl = self.p, self.mdl
        N, T, S = p.N, p.T, p.S
        A, Q, C = p.A, p.Q, p.C
        Qi, P0i = mdl.Qi, mdl.P0i
        Rb = self.Rb
        gw = self.g.reshape(N, 1, 1)

        def reduce(x, b):  # per-sequence (N, ...) weighted by g, summed when shared (b == 1)
            x = x * gw
            return x.sum(0, keepdim=True) if b == 1 else x

        blocks = self.blocks
        M_ = len(blocks)
        sums = self.sums.reshape(N, -1, S, S)
        Wm = sums[:, :M_]  # (N, M, S, S)
        V = sums[:, M_ : M_ + M_ * M_].reshape(N, M_, M_, S, S).transpose(2, 3)
        V = V.reshape(N, M_ * S, M_ * S)
        sP0, sP1 = sums[:, -2], sums[:, -1]

        # emission: C and R
        Cb = self.Cb
        CW = torch.cat([torch.bmm(Cb[:, a:e], Wm[:, i]) for i, (a, e) in enumerate(blocks)], 1)
        grad_C = reduce(self.GyM - torch.bmm(Rb, CW), C.shape[0])
        Cbig = C.new_zeros(C.shape[0], C.shape[1], M_ * S)
        for i, (a, e) in enumerate(blocks):
            Cbig[:, a:e, i * S : (i + 1) * S] = C[:, a:e]
        Cbig = Cbig.expand(N, *Cbig.shape[1:])
        CVC = torch.bmm(torch.bmm(Cbig, V), Cbig.mT)  # sum_t diag(r) C P^s C^T diag(r)
        count = p.rm[..., 0].sum(1)  # (N, D)
        gR = self.GyGy + torch.bmm(torch.bmm(Rb, CVC), Rb) - Rb * count.unsqueeze(-1)
        grad_R = reduce(0.5 * symmetrize(gR), p.R.shape[0])

        # initial state
        m1, P1 = self.first
        d0 = m1 - p.m0[..., 0]
        grad_m0 = (torch.bmm(P0i, d0.unsqueeze(-1))) * gw
        E0 = P1 + d0.unsqueeze(-1) * d0.unsqueeze(-2) - p.P0
        grad_P0 = 0.5 * symmetrize(torch.bmm(torch.bmm(P0i, E0), P0i)) * gw

        # transitions
        Ab = self.Ab
        Qb = Qi.expand(N, S, S)
        grad_Bu = None
        if T > 1:
            sX = self.sX
            sXAt = torch.bmm(sX, Ab.mT)
            Eee = sP1 - sXAt - sXAt.mT + torch.bmm(torch.bmm(Ab, sP0), Ab.mT) + self.RR
            gQ = torch.bmm(torch.bmm(Qb, Eee - (T - 1) * Q.expand(N, S, S)), Qb)
            grad_Q = reduce(0.5 * symmetrize(gQ), Q.shape[0])
            grad_A = reduce(torch.bmm(Qb, sX - torch.bmm(Ab, sP0) + self.RM), A.shape[0])
            if self.res is not None:  # d/dc_{t+1} = Q^{-1} res_t; c_1 is unused
                grad_Bu = (torch.bmm(self.res, Qb) * gw).unsqueeze(-1)
        else:
            grad_Q = torch.zeros_like(Q)
            grad_A = torch.zeros_like(A)
        return grad_m0, grad_P0, grad_A, grad_Q, grad_C, grad_R, self.grad_y, grad_Bu


def _fisher_backward(p: Prepared, mdl: _Model, rec: _Recursion, mT: Tensor, g: Tensor) -> tuple:
    r"""Gradients of ``(g * log_lik).sum()`` by Fisher's identity: the smoother of
    :func:`_smoothed` run backward in chunks of :data:`BACKWARD_CHUNK_FRAMES` frames, each chunk
    scored (:class:`_Scores`) before the next, so memory stays small beyond the filter's
    stacks."""
    S = p.S
    sc = _Scores(p, mdl, g)
    ms, Ps = mT, torch.cholesky_inverse(rec.L_last)
    sc.frames(p.T - 1, ms.mT, Ps.unsqueeze(1))
    n = rec.L.shape[0]  # T - 1 backward steps
    shared = mdl.AtQi.shape[0] == 1
    for b in range(n, 0, -BACKWARD_CHUNK_FRAMES):
        a = max(0, b - BACKWARD_CHUNK_FRAMES)
        L = rec.L[a:b]
        Minv = torch.cholesky_inverse(L)  # (k, N, S, S)
        if shared:
            G = (Minv.reshape(-1, S) @ mdl.AtQi[0]).reshape(Minv.shape)
        else:
            G = Minv @ mdl.AtQi
        gv = torch.linalg.solve_triangular(L.mT, rec.w[a:b], upper=True)
        Minv, G, gv = Minv.unbind(0), G.unbind(0), gv.unbind(0)
        m_next = ms[..., 0]
        means, covs, cross = [], [], []
        for j in range(b - a - 1, -1, -1):
            Gt = G[j]
            ms = torch.baddbmm(gv[j], Gt, ms)
            GP = torch.bmm(Gt, Ps.mT)
            Ps = torch.baddbmm(Minv[j], GP, Gt.mT)
            means.append(ms)
            covs.append(Ps)
            cross.append(GP.mT)
        mch = torch.stack(means[::-1], 1)[..., 0]  # (N, k, S)
        sc.frames(a, mch, torch.stack(covs[::-1], 1))
        sc.transitions(a, mch, m_next, torch.stack(cross[::-1], 1))
    return sc.gradients()


def _prepared(m0, P0, A, Q, C, R, y, Bu, like: Prepared) -> Prepared:
    return like._replace(m0=m0, P0=P0, A=A, Q=Q, C=C, R=R, y=y, Bu=Bu)


def _chunks(p: Prepared) -> list:
    """How the batch is split over CPU threads (:func:`~mmpgm.ops._threads.sequence_chunks`):
    every sequence's recursion is independent of the others'."""
    return sequence_chunks(p.N, p.N * p.T * p.S * p.S, p.y.device)


def _run(p: Prepared, fn, chunks: Optional[list] = None) -> list:
    """``fn(a, b)`` over the chunks of sequences (default :func:`_chunks`), concurrently; one
    chunk runs single-threaded when its per-frame work is small (see ``ops/_threads.py``)."""
    chunks = _chunks(p) if chunks is None else chunks
    with cpu_single_thread(p.y.device, p.N * (p.S + p.C.shape[-2]) ** 2):
        return run_chunks(fn, chunks)


def _filter_chunk(p: Prepared) -> tuple:
    mdl = _model(p)
    rec = _recursion(mdl, p.S)
    check_cholesky(mdl.infos + rec.infos, "information matrix")
    ll, mT = _log_likelihood(mdl, rec)
    return p, mdl, rec, mT, ll


def _gather(parts: list, like: tuple) -> tuple:
    """Per-chunk gradients of the tensors ``like`` (``m0 .. Bu`` of the whole batch) joined:
    a tensor shared by the batch (leading size 1) gets the sum of the chunks', a per-sequence
    one their concatenation."""
    out = []
    for k, x in enumerate(like):
        gs = [part[k] for part in parts]
        if gs[0] is None:
            out.append(None)
        elif x.shape[0] == 1:
            out.append(torch.stack(gs, 0).sum(0))
        else:
            out.append(torch.cat(gs, 0))
    return tuple(out)


class _FisherLogLik(torch.autograd.Function):
    """Log-likelihood by the information filter; backward by Fisher's identity. Both passes run
    the batch's chunks of sequences (:func:`_chunks`) concurrently."""

    @staticmethod
    def forward(ctx, meta, m0, P0, A, Q, C, R, y, Bu):
        p = _prepared(m0, P0, A, Q, C, R, y, Bu, meta)
        chunks = _chunks(p)
        states = _run(p, lambda a, b: _filter_chunk(sequence_slice(p, a, b)), chunks)
        ctx.chunks, ctx.states = chunks, states
        ctx.like = (m0, P0, A, Q, C, R, y, Bu)
        return join_sequences([(s[-1],) for s in states], p.N)[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        index = {chunk: i for i, chunk in enumerate(ctx.chunks)}

        def grads(a, b):
            q, mdl, rec, mT, _ = ctx.states[index[(a, b)]]
            return _fisher_backward(q, mdl, rec, mT, g[a:b])

        parts = _run(ctx.states[0][0], grads, ctx.chunks)
        return (None, *_gather(parts, ctx.like))


def information_log_likelihood(p: Prepared) -> Tensor:
    """``(N,)`` log-likelihoods by the information filter; the gradient (first order) by Fisher's
    identity from the information smoother. On the CPU the batch's sequences are split over
    threads (:func:`~mmpgm.ops._threads.sequence_chunks`)."""
    if records_grad(p):
        return _FisherLogLik.apply(p, p.m0, p.P0, p.A, p.Q, p.C, p.R, p.y, p.Bu)
    with torch.no_grad():
        parts = _run(p, lambda a, b: (_filter_chunk(sequence_slice(p, a, b))[-1],))
        return join_sequences(parts, p.N)[0]


def information_forward(p: Prepared, store: bool):
    """``(pred_means (N, T, S), pred_covs (N, T, S, S), filt_means, filt_covs, log_lik (N,))``
    by the information filter (recorded on autograd: differentiable; all but the last ``None``
    with ``store=False``). Split over CPU threads by sequences when autograd records nothing."""
    if not store:
        return None, None, None, None, information_log_likelihood(p)
    if records_grad(p):
        return _information_moments(p)
    parts = _run(p, lambda a, b: _information_moments(sequence_slice(p, a, b)))
    return join_sequences(parts, p.N)


def _information_moments(p: Prepared) -> tuple:
    N, T, S = p.N, p.T, p.S
    mdl = _model(p)
    rec = _recursion(mdl, S, keep=True)
    check_cholesky(mdl.infos + rec.infos, "information matrix")
    ll, _ = _log_likelihood(mdl, rec)
    # filtered: J^f_t = M_t - A^T Q^{-1} A, h^f_t = h'_t + A^T Q^{-1} c_{t+1} (t < T)
    Jf = torch.cat([rec.M, rec.J_last.unsqueeze(0)], 0).transpose(0, 1)  # (N, T, S, S)
    hf = torch.cat([rec.h, rec.h_last.unsqueeze(0)], 0).transpose(0, 1)[..., 0]  # (N, T, S)
    if T > 1:
        corr = torch.cat(
            [mdl.AtQiA.unsqueeze(1).expand(N, T - 1, S, S), Jf.new_zeros(N, 1, S, S)], 1
        )
        Jf = Jf - corr
        if mdl.c is not None:
            AtQic = _rows_times(mdl.c[:, 1:], mdl.AtQi.mT)
            hf = hf + torch.cat([AtQic, hf.new_zeros(N, 1, S)], 1)
    Lf, info = torch.linalg.cholesky_ex(symmetrize(Jf))
    check_cholesky(info, "filtered information matrix")
    fP = torch.cholesky_inverse(Lf)
    fm = torch.cholesky_solve(hf.unsqueeze(-1), Lf)[..., 0]
    # predicted: z_{t+1} | x_{1:t}: mean A m^f_t + c_{t+1}, covariance A P^f_t A^T + Q
    pm, pP = p.m0[..., 0].unsqueeze(1), p.P0.unsqueeze(1)
    if T > 1:
        Ab = p.A.unsqueeze(1)
        pm_rest = (Ab @ fm[:, :-1].unsqueeze(-1))[..., 0]
        if mdl.c is not None:
            pm_rest = pm_rest + mdl.c[:, 1:]
        pP_rest = symmetrize(Ab @ fP[:, :-1] @ Ab.mT + p.Q.unsqueeze(1))
        pm = torch.cat([pm, pm_rest], 1)
        pP = torch.cat([pP, pP_rest], 1)
    return pm, pP, fm, fP, ll


def information_smoother(p: Prepared) -> SmootherResult:
    """RTS smoother from the information filter's by-products (recorded on autograd; split over
    CPU threads by sequences when autograd records nothing)."""
    if records_grad(p):
        return _information_smoothed(p)
    parts = _run(p, lambda a, b: _information_smoothed(sequence_slice(p, a, b)))
    return SmootherResult(*join_sequences(parts, p.N))


def _information_smoothed(p: Prepared) -> SmootherResult:
    mdl = _model(p)
    rec = _recursion(mdl, p.S)
    check_cholesky(mdl.infos + rec.infos, "information matrix")
    ll, mT = _log_likelihood(mdl, rec)
    ms, Ps, cross = _smoothed(mdl, rec, mT, p.S)
    return SmootherResult(ms, Ps, cross, ll)
