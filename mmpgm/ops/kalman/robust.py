r"""Sensor faults around the exact masked Kalman smoother: mean-field variational EM.

Model
-----
The linear-Gaussian model of :mod:`mmpgm.ops.kalman`, where each observed frame ``t`` of a
modality ``m`` *with faults* carries an indicator :math:`f^m_t \in \{0, 1\}`, iid over frames:

.. math::

    f^m_t \sim \mathrm{Bernoulli}(\rho_m), \qquad
    p(x^m_t \mid z_t, f^m_t) =
    \begin{cases} \mathcal N(x^m_t;\, C_m z_t + d_m,\, R_m) & f^m_t = 0 \\
                  g_m(x^m_t) & f^m_t = 1, \end{cases}

where the *background* :math:`g_m` does not depend on :math:`z` (any density: the callers pass
:math:`\log g_m(x^m_t)`), so a faulty frame carries no evidence about the states.  The exact
posterior is a mixture of :math:`2^{(\text{observed frames})}` Gaussians (one per fault pattern:
the faulty frames masked).

Approximation
-------------
Mean field :math:`q(z_{1:T})\, \prod_{m,t} q(f^m_t)` with :math:`r^m_t = q(f^m_t = 1)`
(Agamennoni et al. 2011; Piche et al. 2012), maximizing the bound

.. math::

    \mathcal L(q) = \mathbb E_q[\log p(x, z, f)] + H[q(z)] + \sum_{m,t} H[q(f^m_t)]
    \le \log p(x).

*q(z) step* (:func:`reweighted_smoother`): given :math:`r`, the optimal
:math:`q(z) \propto p(z) \prod_{m,t} \mathcal N(x^m_t; C_m z_t + d_m, R_m)^{w^m_t}` with
:math:`w^m_t = 1 - r^m_t`: the same linear-Gaussian model with the frame's covariance
:math:`R_m / w^m_t` (exact; :math:`w = 0` is an exactly masked frame).  It runs as the
package's Cholesky-form filter steps (:func:`~mmpgm.ops.kalman.steps.predict`,
:func:`~mmpgm.ops.kalman.steps.condition`) on the equivalent rows
:math:`\sqrt{w}\,(x - d) = \sqrt{w}\, C z + v,\ v \sim \mathcal N(0, R)` and the package's RTS
pass (:func:`~mmpgm.ops.kalman.smoother.smooth_from_filter`).  Its normalizer is

.. math::

    \log Z(w) = \log \int p(z) \prod \mathcal N(\cdot)^{w} \, dz
    = \ell_{\sqrt w} + \sum_{m,t\ \text{observed}} (1 - w^m_t)
      \left(\tfrac{D_m}{2} \log 2\pi + \tfrac12 \log |R_m|\right),

with :math:`\ell_{\sqrt w}` the filter's log-likelihood of the scaled rows.

*q(f) step* (:func:`fault_posterior`), closed form:

.. math::

    \operatorname{logit} r^m_t = \log\frac{\rho_m}{1 - \rho_m} + \log g_m(x^m_t)
    - \mathbb E_{q(z_t)}[\log \mathcal N(x^m_t; C_m z_t + d_m, R_m)],

    \mathbb E_{q}[\log \mathcal N] = \log \mathcal N(x^m_t; C_m \mu_t + d_m, R_m)
    - \tfrac12 \operatorname{tr}(R_m^{-1} C_m \Sigma_t C_m^\top)
    \quad (:func:`expected_log_emission`).

With :math:`q(z)` optimal for :math:`r`, :math:`\mathcal L = \log Z(1 - r) + \sum_{m,t}
[(1 - r) \log(1 - \rho) + r (\log \rho + \log g) + H(r)]` (:func:`fault_bound_terms`).
Alternating the two steps (coordinate ascent) never decreases :math:`\mathcal L`
(:func:`robust_smoother`).  The *causal* version (:func:`robust_filter`) runs the same fixed
point frame by frame on the filtered state (a few iterations per frame), as an online filter
does.

Shapes: ``N`` sequences, ``T`` frames, state ``S``, modality ``m`` of dimension ``D_m``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .prepare import prepare
from .smoother import backward_gains, smooth_from_filter
from .steps import condition, innovation_log_prob, predict
from .types import FilterResult, LinearGaussianParams, SmootherResult, check_cholesky

__all__ = [
    "RobustResult",
    "reweighted_filter",
    "reweighted_smoother",
    "expected_log_emission",
    "fault_posterior",
    "fault_bound_terms",
    "robust_condition",
    "robust_smoother",
    "robust_filter",
    "sample_from_filter",
]

_LOG_2PI = math.log(2.0 * math.pi)


class RobustResult(NamedTuple):
    """Output of :func:`robust_smoother` and :func:`robust_filter`."""

    moments: object
    """:class:`~mmpgm.ops.kalman.SmootherResult` (smoother) or
    :class:`~mmpgm.ops.kalman.FilterResult` (filter) of :math:`q(z)`; its ``log_likelihood``
    is :math:`\\log Z(1 - r)` (filter: the sum of the frames' normalizers)."""
    fault_probs: dict
    """modality -> ``(N, T)`` :math:`r^m_t = q(f^m_t = 1)` (0 where unobserved), for the
    modalities with faults."""
    bound: Tensor
    """``(N,)`` the variational bound :math:`\\mathcal L` (filter: the sum over frames of the
    per-frame bounds on :math:`\\log p(x_t \\mid x_{1:t-1})`)."""
    num_iters: int
    """q(f) updates run (smoother: until the largest change of :math:`r` fell below ``tol``;
    filter: the most any frame took)."""


# ---------------------------------------------------------------------------------- helpers
def _keys(params: LinearGaussianParams, obs) -> list:
    if not isinstance(obs, Mapping) or not isinstance(params.emission_matrices, Mapping):
        raise ValueError(
            "obs, params.emission_matrices: expected mappings modality -> tensor, got "
            f"{type(obs).__name__} and {type(params.emission_matrices).__name__}"
        )
    return list(params.emission_matrices.keys())


def _segments(obs, keys) -> dict:
    """modality -> (start, stop) of its rows in the stacked observation."""
    out, o = {}, 0
    for k in keys:
        D = obs[k].shape[-1]
        out[k] = (o, o + D)
        o += D
    return out


def _row_weights(p, weights, segs) -> Optional[Tensor]:
    """``(N, T, D)`` per-row weights from per-modality ``(N, T)`` weights (None = all 1)."""
    if weights is None:
        return None
    if not isinstance(weights, Mapping):
        raise ValueError(f"weights: expected a mapping modality -> (N, T), got {type(weights)}")
    unknown = [k for k in weights if k not in segs]
    if unknown:
        raise ValueError(f"weights: unknown modalities {unknown}; expected some of {list(segs)}")
    if all(weights.get(k) is None for k in segs):
        return None
    cols = []
    for k, (a, e) in segs.items():
        w = weights.get(k)
        if w is None:
            w = p.y.new_ones(p.N, p.T)
        else:
            if not isinstance(w, Tensor) or w.shape != (p.N, p.T):
                got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
                raise ValueError(f"weights[{k!r}]: expected shape ({p.N}, {p.T}), got {got}")
            w = w.detach().to(p.y).clamp(0.0, 1.0)
        cols.append(w.unsqueeze(-1).expand(p.N, p.T, e - a))
    return torch.cat(cols, -1)


def _observed(p, segs) -> dict:
    """modality -> ``(N, T)`` bool: observed (mask and lengths)."""
    return {k: p.rm[:, :, a, 0] > 0 for k, (a, e) in segs.items()}


def _block_logdets(p, segs) -> dict:
    """modality -> ``(b,)`` :math:`\\log |R_m|`."""
    out = {}
    for k, (a, e) in segs.items():
        L = torch.linalg.cholesky(p.R[:, a:e, a:e])
        out[k] = 2.0 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return out


def _forward(p, row_w: Optional[Tensor]):
    """The filter on rows scaled by ``sqrt(row_w)`` (frame by frame, batched ``bmm``):
    ``(pred_means, pred_covs, filt_means, filt_covs, log_lik)`` of the scaled rows."""
    N, T, S = p.N, p.T, p.S
    D = p.C.shape[-2]
    A, Q = p.A.expand(N, S, S), p.Q.expand(N, S, S)
    C, R = p.C.expand(N, D, S), p.R.expand(N, D, D)
    sw = None if row_w is None else row_w.sqrt()
    m, P = p.m0, p.P0
    pm, pP, fm, fP, infos = [], [], [], [], []
    ll = p.y.new_zeros(N)
    for t in range(T):
        if t > 0:
            m, P = predict(m, P, A, Q, None if p.Bu is None else p.Bu[:, t])
        pm.append(m)
        pP.append(P)
        if not p.frame_empty[t]:
            y, rows = p.y[:, t], p.rm[:, t, :, 0]
            Ct = C
            if sw is not None:
                Ct = C * sw[:, t, :, None]
                y = y * sw[:, t, :, None]
            u = condition(m, P, Ct, R, y, rows, check=False)
            m, P = u.mean, u.cov
            infos.append(u.info)
            ll = ll + innovation_log_prob(u.chol, u.innovation.squeeze(-1), rows.sum(-1))
        fm.append(m)
        fP.append(P)
    check_cholesky(infos, "innovation covariance C P C^T + R")
    return (
        torch.stack(pm, 1).squeeze(-1),
        torch.stack(pP, 1),
        torch.stack(fm, 1).squeeze(-1),
        torch.stack(fP, 1),
        ll,
    )


def _log_z_correction(p, segs, weights) -> Tensor:
    r"""``(N,)`` :math:`\sum (1 - w)(\tfrac{D_m}{2}\log 2\pi + \tfrac12 \log|R_m|)` over observed
    frames."""
    out = p.y.new_zeros(p.N)
    if weights is None:
        return out
    obs = _observed(p, segs)
    logdets = _block_logdets(p, segs)
    for k, (a, e) in segs.items():
        w = weights.get(k)
        if w is None:
            continue
        w = w.detach().to(p.y).clamp(0.0, 1.0)
        per = 0.5 * (e - a) * _LOG_2PI + 0.5 * logdets[k]  # (b,)
        out = out + ((1.0 - w) * obs[k]).sum(-1) * per
    return out


# ---------------------------------------------------------------------------------- q(z)
def reweighted_filter(
    params: LinearGaussianParams, obs, mask=None, weights=None, lengths=None
) -> FilterResult:
    r"""Kalman filter of :math:`q(z) \propto p(z) \prod_{m,t} \mathcal N(x^m_t; C_m z_t + d_m,
    R_m)^{w^m_t}` (per-frame covariance :math:`R_m / w^m_t`; see the module docstring).

    Parameters
    ----------
    params : LinearGaussianParams
        Model parameters with ``emission_matrices`` a mapping modality -> ``(D_m, S)`` (or
        ``(N, D_m, S)``).
    obs : Mapping[str, Tensor]
        modality -> ``(N, T, D_m)``; unobserved entries may hold anything (NaN included).
    mask : Mapping[str, Tensor] or Tensor, optional
        ``(N, T)`` bool per modality, ``True`` = observed.
    weights : Mapping[str, Tensor], optional
        modality -> ``(N, T)`` weights :math:`w^m_t \in [0, 1]` (detached; missing or ``None``:
        1).  ``w = 0`` masks the frame exactly.
    lengths : Tensor, optional
        ``(N,)`` integer lengths.

    Returns
    -------
    FilterResult
        Moments of the filter; ``log_likelihood`` ``(N,)`` is :math:`\log Z(w)` (with all
        weights 1: :math:`\log p(x^{obs})`).  Differentiable w.r.t. the parameters.
    """
    keys = _keys(params, obs)
    p = prepare(params, obs, mask, None, lengths)
    segs = _segments(obs, keys)
    pm, pP, fm, fP, ll = _forward(p, _row_weights(p, weights, segs))
    if weights is not None:
        ll = ll + _log_z_correction(p, segs, weights)
    return FilterResult(fm, fP, pm, pP, ll)


def reweighted_smoother(
    params: LinearGaussianParams, obs, mask=None, weights=None, lengths=None
) -> SmootherResult:
    r"""RTS moments of the reweighted :math:`q(z)` of :func:`reweighted_filter` (same
    parameters); ``log_likelihood`` is :math:`\log Z(w)`.

    Returns
    -------
    SmootherResult
        ``means`` ``(N, T, S)``, ``covs`` ``(N, T, S, S)``, ``cross_covs`` ``(N, T-1, S, S)``,
        ``log_likelihood`` ``(N,)``.
    """
    filt = reweighted_filter(params, obs, mask, weights, lengths)
    A = params.transition_matrix
    A = A.to(filt.means).unsqueeze(0) if A.dim() == 2 else A.to(filt.means)
    return smooth_from_filter(A, filt)


def sample_from_filter(
    transition_matrix: Tensor, filt: FilterResult, num_samples: int, generator=None
) -> Tensor:
    r"""Backward sampling of joint paths from the Gaussian :math:`q(z_{1:T})` whose filter
    moments are ``filt`` (e.g. of :func:`reweighted_filter`): :math:`z_T \sim \mathcal N(m_T,
    P_T)`, :math:`z_t \mid z_{t+1} \sim \mathcal N(m_t + G_t (z_{t+1} - m^p_{t+1}),
    P_t - G_t P^p_{t+1} G_t^\top)`.

    Returns
    -------
    Tensor
        ``(K, N, T, S)`` draws.
    """
    fm, fP, pm, pP = filt.means, filt.covs, filt.predicted_means, filt.predicted_covs
    N, T, S = fm.shape
    A = transition_matrix.to(fm)
    A = A.unsqueeze(0) if A.dim() == 2 else A
    eps = torch.randn(
        num_samples, N, T, S, 1, generator=generator, dtype=fm.dtype, device=fm.device
    )

    def chol(M):
        eye = torch.eye(S, dtype=M.dtype, device=M.device)
        jitter = 1e-12 * M.diagonal(dim1=-2, dim2=-1).abs().amax(-1)[..., None, None]
        return torch.linalg.cholesky(M + jitter * eye)

    z = fm[:, -1].unsqueeze(-1) + chol(fP[:, -1]) @ eps[:, :, -1]
    out = [z]
    if T > 1:
        G, Cond = backward_gains(A, fP, pP)
        Lc = chol(Cond)
        base = fm[:, :-1].unsqueeze(-1) - G @ pm[:, 1:].unsqueeze(-1)
        for t in range(T - 2, -1, -1):
            z = base[:, t] + Lc[:, t] @ eps[:, :, t] + G[:, t] @ z
            out.append(z)
    return torch.stack(out[::-1], dim=2).squeeze(-1)


# ---------------------------------------------------------------------------------- q(f)
def expected_log_emission(
    y: Tensor, emission_matrix: Tensor, emission_cov: Tensor, mean: Tensor, cov: Tensor
) -> Tensor:
    r""":math:`\mathbb E_{z \sim \mathcal N(\mu, \Sigma)}[\log \mathcal N(y; C z, R)]
    = \log \mathcal N(y; C\mu, R) - \tfrac12 \operatorname{tr}(R^{-1} C \Sigma C^\top)`.

    Parameters
    ----------
    y : Tensor
        ``(..., D)`` observation minus offset, :math:`x - d` (finite).
    emission_matrix : Tensor
        :math:`C`, ``(D, S)`` or broadcastable ``(..., D, S)``.
    emission_cov : Tensor
        :math:`R`, ``(D, D)`` or broadcastable ``(..., D, D)`` (SPD).
    mean, cov : Tensor
        ``(..., S)`` and ``(..., S, S)``: the moments of :math:`q(z)`.

    Returns
    -------
    Tensor
        ``(...)``.
    """
    C, R = emission_matrix, emission_cov
    L = torch.linalg.cholesky(R)
    resid = y - (C @ mean.unsqueeze(-1)).squeeze(-1)
    shape = torch.broadcast_shapes(L.shape[:-2], resid.shape[:-1])
    Lb = L.expand(*shape, *L.shape[-2:])
    white = torch.linalg.solve_triangular(Lb, resid.unsqueeze(-1), upper=False).squeeze(-1)
    cshape = torch.broadcast_shapes(L.shape[:-2], C.shape[:-2], cov.shape[:-2])
    W = torch.linalg.solve_triangular(
        L.expand(*cshape, *L.shape[-2:]), C.expand(*cshape, *C.shape[-2:]), upper=False
    )  # L^{-1} C
    tr = ((W @ cov) * W).sum((-2, -1))
    D = R.shape[-1]
    logdet = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return -0.5 * white.square().sum(-1) - 0.5 * tr - logdet - 0.5 * D * _LOG_2PI


def fault_posterior(
    expected_loglik: Tensor, log_background: Tensor, rate, observed: Tensor
) -> Tensor:
    r"""The closed-form q(f) step: :math:`r = \sigma(\log\frac{\rho}{1-\rho} + \log g -
    \mathbb E_q[\log \mathcal N])`, 0 where unobserved.

    Parameters
    ----------
    expected_loglik : Tensor
        ``(...)`` :math:`\mathbb E_q[\log \mathcal N(x; C z + d, R)]`
        (:func:`expected_log_emission`).
    log_background : Tensor
        ``(...)`` :math:`\log g(x)`.
    rate : Tensor or float
        :math:`\rho \in (0, 1)`, broadcastable.
    observed : Tensor
        ``(...)`` bool.

    Returns
    -------
    Tensor
        ``(...)`` :math:`r \in [0, 1]`.
    """
    rate = torch.as_tensor(rate, dtype=expected_loglik.dtype, device=expected_loglik.device)
    logit = torch.log(rate) - torch.log1p(-rate) + log_background - expected_loglik
    r = torch.sigmoid(logit)
    return torch.where(observed, r, torch.zeros_like(r))


def fault_bound_terms(r: Tensor, log_background: Tensor, rate, observed: Tensor) -> Tensor:
    r""":math:`\sum_t [(1 - r_t) \log(1 - \rho) + r_t (\log \rho + \log g_t) + H(r_t)]` over
    observed frames: the fault part of the bound.

    Parameters
    ----------
    r, log_background, observed : Tensor
        ``(N, T)``.
    rate : Tensor or float
        :math:`\rho` (differentiable).

    Returns
    -------
    Tensor
        ``(N,)``.
    """
    rate = torch.as_tensor(rate, dtype=r.dtype, device=r.device)
    zero = torch.zeros_like(r)
    lg = torch.where(observed, log_background, zero)
    ent = -(torch.special.xlogy(r, r) + torch.special.xlogy(1.0 - r, 1.0 - r))
    term = (1.0 - r) * torch.log1p(-rate) + r * (torch.log(rate) + lg) + ent
    return torch.where(observed, term, zero).sum(-1)


def _update_faults(p, segs, faulty, moments_mean, moments_cov, log_backgrounds, rates, obs_k):
    """q(f) step for every faulty modality from ``(N, T, S)`` / ``(N, T, S, S)`` moments."""
    out = {}
    for k in faulty:
        a, e = segs[k]
        y = p.y[:, :, a:e, 0]
        C = p.C[:, a:e].unsqueeze(1)  # (b, 1, D_m, S)
        R = p.R[:, a:e, a:e].unsqueeze(1)
        ell = expected_log_emission(y, C, R, moments_mean, moments_cov)
        out[k] = fault_posterior(ell, log_backgrounds[k], rates[k], obs_k[k])
    return out


def _check_faults(keys, log_backgrounds, rates):
    if not isinstance(log_backgrounds, Mapping) or not isinstance(rates, Mapping):
        raise ValueError("log_backgrounds, rates: expected mappings modality -> tensor")
    faulty = [k for k in keys if k in log_backgrounds]
    for k in log_backgrounds:
        if k not in keys:
            raise ValueError(f"log_backgrounds: unknown modality {k!r}; expected some of {keys}")
        if k not in rates:
            raise ValueError(f"rates: expected an entry for {k!r}")
    return faulty


def robust_smoother(
    params: LinearGaussianParams,
    obs,
    mask=None,
    log_backgrounds=None,
    rates=None,
    lengths=None,
    *,
    num_iters: int = 20,
    tol: float = 1e-6,
    init: Optional[Mapping] = None,
) -> RobustResult:
    r"""Mean-field variational smoother of the sensor-fault model (module docstring).

    Starts from :math:`r = \rho` (or ``init``), then alternates the q(f) step and the exact
    reweighted smoother (q(z) step) up to ``num_iters`` times; a sequence stops (its :math:`r`
    is frozen) once the largest change of its :math:`r` is below ``tol``, so each sequence gets
    the result it would get alone, whatever the batch; the returned :math:`q(z)` is optimal for
    the returned :math:`r`, so ``bound`` is the bound at that pair.  No gradients flow (run under
    ``torch.no_grad``; for a differentiable bound call :func:`reweighted_filter` at the
    returned ``fault_probs``, which is exact by the envelope theorem at a fixed point).

    Parameters
    ----------
    params, obs, mask, lengths
        As in :func:`reweighted_filter`.
    log_backgrounds : Mapping[str, Tensor]
        modality with faults -> ``(N, T)`` :math:`\log g_m(x^m_t)` (anything where
        unobserved); modalities absent have no faults.
    rates : Mapping[str, Tensor or float]
        modality with faults -> :math:`\rho_m`.
    num_iters : int
        The most q(f) updates (0: :math:`r` stays at its start).
    tol : float
        A sequence stops when :math:`\max_{m,t} |r_{new} - r| <` ``tol``.
    init : Mapping[str, Tensor], optional
        Starting :math:`r` per faulty modality, ``(N, T)``.

    Returns
    -------
    RobustResult
        ``moments`` a :class:`SmootherResult`, ``fault_probs``, ``bound`` ``(N,)``,
        ``num_iters``.
    """
    keys = _keys(params, obs)
    faulty = _check_faults(keys, log_backgrounds or {}, rates or {})
    with torch.no_grad():
        params = _detached(params)
        p = prepare(params, obs, mask, None, lengths)
        segs = _segments(obs, keys)
        obs_k = _observed(p, segs)
        lb = {k: log_backgrounds[k].to(p.y) for k in faulty}
        rt = {k: torch.as_tensor(rates[k]).to(p.y) for k in faulty}
        if init is not None:
            r = {k: torch.where(obs_k[k], init[k].to(p.y), p.y.new_zeros(())) for k in faulty}
        else:
            r = {k: obs_k[k] * rt[k] for k in faulty}
        sm = reweighted_smoother(params, obs, mask, {k: 1.0 - r[k] for k in faulty}, lengths)
        done = 0
        active = torch.ones(p.N, dtype=torch.bool, device=p.y.device)
        for _ in range(num_iters if faulty else 0):
            new = _update_faults(p, segs, faulty, sm.means, sm.covs, lb, rt, obs_k)
            delta = torch.stack([(new[k] - r[k]).abs().amax(-1) for k in faulty]).amax(0)
            r = {k: torch.where(active[:, None], new[k], r[k]) for k in faulty}
            done += 1
            sm = reweighted_smoother(params, obs, mask, {k: 1.0 - r[k] for k in faulty}, lengths)
            active = active & (delta >= tol)
            if not bool(active.any()):
                break
        bound = sm.log_likelihood.clone()
        for k in faulty:
            bound = bound + fault_bound_terms(r[k], lb[k], rt[k], obs_k[k])
    return RobustResult(sm, r, bound, done)


def _detached(params: LinearGaussianParams) -> LinearGaussianParams:
    def det(x):
        if isinstance(x, Mapping):
            return {k: det(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(det(v) for v in x)
        return x.detach() if isinstance(x, Tensor) else x

    return LinearGaussianParams(*[det(x) for x in params])


# ---------------------------------------------------------------------------------- causal
def robust_condition(
    mean: Tensor,
    cov: Tensor,
    emission_matrix: Tensor,
    emission_cov: Tensor,
    y: Tensor,
    rows: Tensor,
    segments: Mapping,
    log_backgrounds: Mapping,
    rates: Mapping,
    *,
    num_iters: int = 20,
    tol: float = 1e-6,
):
    r"""One frame of the causal fixed point: condition the predicted state
    :math:`\mathcal N(m, P)` on the frame with weights :math:`1 - r`, update :math:`r` from the
    conditioned moments, repeat (``num_iters`` at most, until the change is below ``tol``);
    the last conditioning uses the returned :math:`r`.  Each sequence stops on its own (as in
    :func:`robust_smoother`).

    Parameters
    ----------
    mean, cov : Tensor
        ``(N, S)`` and ``(N, S, S)`` predicted moments.
    emission_matrix, emission_cov : Tensor
        Stacked :math:`C` ``(D, S)`` (or ``(N, D, S)``) and block-diagonal :math:`R`
        ``(D, D)`` (or ``(N, D, D)``).
    y : Tensor
        ``(N, D)`` observation minus offsets, zero where unobserved.
    rows : Tensor
        ``(N, D)`` bool, observed rows.
    segments : Mapping[str, tuple]
        modality -> ``(start, stop)`` rows.
    log_backgrounds, rates : Mapping
        faulty modality -> ``(N,)`` :math:`\log g_m(x^m_t)` and :math:`\rho_m`.

    Returns
    -------
    tuple
        ``(conditioned, r, bound, iters)``: the :class:`~mmpgm.ops.kalman.steps.Conditioned`
        update (``mean`` ``(N, S)``), ``r`` dict modality -> ``(N,)``, ``bound`` ``(N,)`` the
        frame's bound on :math:`\log p(x_t \mid x_{1:t-1})` (under the Gaussian predictive),
        and the number of q(f) updates run.
    """
    N, D = y.shape
    C = emission_matrix if emission_matrix.dim() == 3 else emission_matrix.expand(N, -1, -1)
    R = emission_cov if emission_cov.dim() == 3 else emission_cov.expand(N, -1, -1)
    rows = rows.to(torch.bool)
    faulty = [k for k in segments if k in log_backgrounds]
    obs_k = {k: rows[:, a] for k, (a, e) in segments.items()}
    rt = {k: torch.as_tensor(rates[k]).to(y) for k in faulty}
    r = {k: obs_k[k] * rt[k] for k in faulty}

    def cond(r):
        w = y.new_ones(N, D)
        for k in faulty:
            a, e = segments[k]
            w[:, a:e] = (1.0 - r[k]).clamp(0.0, 1.0)[:, None]
        sw = w.sqrt()
        return condition(mean.unsqueeze(-1), cov, C * sw[..., None], R, (y * sw)[..., None], rows)

    u = cond(r)
    done = 0
    active = torch.ones(N, dtype=torch.bool, device=y.device)
    for _ in range(num_iters if faulty else 0):
        mu = u.mean.squeeze(-1)
        new = {}
        for k in faulty:
            a, e = segments[k]
            ell = expected_log_emission(y[:, a:e], C[:, a:e], R[:, a:e, a:e], mu, u.cov)
            new[k] = fault_posterior(ell, log_backgrounds[k].to(y), rt[k], obs_k[k])
        delta = torch.stack([(new[k] - r[k]).abs() for k in faulty]).amax(0)
        r = {k: torch.where(active, new[k], r[k]) for k in faulty}
        done += 1
        u = cond(r)
        active = active & (delta >= tol)
        if not bool(active.any()):
            break
    bound = innovation_log_prob(u.chol, u.innovation.squeeze(-1), rows.sum(-1))
    for k, (a, e) in segments.items():
        if k not in faulty:
            continue
        logdet = 2.0 * torch.linalg.cholesky(R[:, a:e, a:e]).diagonal(dim1=-2, dim2=-1).log()
        per = 0.5 * (e - a) * _LOG_2PI + 0.5 * logdet.sum(-1)
        bound = bound + r[k] * obs_k[k] * per
        bound = bound + fault_bound_terms(
            r[k][:, None], log_backgrounds[k].to(y)[:, None], rt[k], obs_k[k][:, None]
        )
    return u._replace(mean=u.mean.squeeze(-1), innovation=u.innovation.squeeze(-1)), r, bound, done


def robust_filter(
    params: LinearGaussianParams,
    obs,
    mask=None,
    log_backgrounds=None,
    rates=None,
    lengths=None,
    *,
    num_iters: int = 20,
    tol: float = 1e-6,
) -> RobustResult:
    r"""Causal (filtered) version of :func:`robust_smoother`: frame by frame,
    :func:`robust_condition` on the predicted state, so :math:`r^m_t` and :math:`q(z_t)` use
    :math:`x_{1:t}` only (assumed-density filtering: the filtered :math:`q(z_t)` is Gaussian).

    Returns
    -------
    RobustResult
        ``moments`` a :class:`FilterResult` (``log_likelihood``: the bound, as ``bound``),
        ``fault_probs`` ``(N, T)``, ``bound`` ``(N,)`` the sum of the frames'
        bounds, ``num_iters`` the most q(f) updates of any frame.
    """
    keys = _keys(params, obs)
    faulty = _check_faults(keys, log_backgrounds or {}, rates or {})
    with torch.no_grad():
        params = _detached(params)
        p = prepare(params, obs, mask, None, lengths)
        segs = _segments(obs, keys)
        N, T, S = p.N, p.T, p.S
        D = p.C.shape[-2]
        A, Q = p.A.expand(N, S, S), p.Q.expand(N, S, S)
        C, R = p.C.expand(N, D, S), p.R.expand(N, D, D)
        lb = {k: log_backgrounds[k].to(p.y) for k in faulty}
        rt = {k: torch.as_tensor(rates[k]).to(p.y) for k in faulty}
        m, P = p.m0[..., 0], p.P0
        pm, pP, fm, fP = [], [], [], []
        rs = {k: [] for k in faulty}
        bound = p.y.new_zeros(N)
        most = 0
        for t in range(T):
            if t > 0:
                m, P = predict(m, P, A, Q, None if p.Bu is None else p.Bu[:, t, :, 0])
            pm.append(m)
            pP.append(P)
            rows = p.rm[:, t, :, 0] > 0
            if bool(rows.any()):
                u, r, b, it = robust_condition(
                    m, P, C, R, p.y[:, t, :, 0], rows, segs,
                    {k: lb[k][:, t] for k in faulty}, rt, num_iters=num_iters, tol=tol,
                )  # fmt: skip
                m, P = u.mean, u.cov
                bound = bound + b
                most = max(most, it)
            else:
                r = {k: p.y.new_zeros(N) for k in faulty}
            for k in faulty:
                rs[k].append(r[k])
            fm.append(m)
            fP.append(P)
        filt = FilterResult(
            torch.stack(fm, 1), torch.stack(fP, 1), torch.stack(pm, 1), torch.stack(pP, 1), bound
        )
        r = {k: torch.stack(rs[k], 1) for k in faulty}
    return RobustResult(filt, r, bound, most)
