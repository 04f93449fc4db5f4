"""The closed-form MAP-EM step of the multimodal LDS."""

from __future__ import annotations

import torch

from ...data import MultimodalData
from ...ops import kalman as kops
from ...ops.linalg import symmetrize
from . import faults
from .priors import emission_prior_terms


def smoothed_moments(model, data):
    """RTS-smoothed moments of checked ``data`` at the current (detached) parameters."""
    obs, mask, lengths = model._ops_inputs(data)
    lg = model.linear_gaussian_params()
    lg = kops.LinearGaussianParams(
        *[
            {k: v.detach() for k, v in x.items()}
            if isinstance(x, dict)
            else (x.detach() if isinstance(x, torch.Tensor) else x)
            for x in lg
        ]
    )
    sm = kops.rts_smoother(lg, obs, mask, lengths=lengths)
    return sm


@torch.no_grad()
def em_step(model, data: MultimodalData) -> torch.Tensor:
    """One exact MAP-EM step (closed-form M-step from smoothed moments); returns the log joint
    ``sum_n log p(x_n) + log p(theta)`` at the parameters *before* the update.

    E-step: RTS smoother (means, covariances, lag-one cross-covariances). M-step, block by
    block (each maximizes its own part of the expected complete-data log joint, so the log
    joint never decreases):

    * emissions: per modality, a Bayesian multivariate regression of :math:`x^m_t` on
      :math:`[z^s_t, z^m_t, 1]` over the frames where :math:`m` is observed (normal-inverse-
      Wishart / inverse-gamma mode), so the zero blocks of :math:`C^m` stay zero;
    * dynamics: per block, :math:`A_b = S_{10} S_{00}^{-1}` over transitions inside the
      sequences (with ``stable=True``, the furthest point towards it from the current
      :math:`A_b` inside the stable set: the expected log joint is concave in :math:`A_b`, so
      this still improves it), then :math:`Q_b` given :math:`A_b` (inverse-Wishart mode);
    * initial state: :math:`\\mu_0` the mean of the first smoothed states, :math:`P_0` the
      inverse-Wishart mode.

    With ``sensor_faults`` (variational EM, :mod:`mmpgm.models.lds.faults`): the E-step is the
    mean-field fixed point of :func:`mmpgm.ops.kalman.robust.robust_smoother` (warm-started
    from the previous step's responsibilities on the same data object), the moments above are
    those of :math:`q(z)`, each observed frame of a faulty modality enters its emission
    regression with weight :math:`1 - r^m_t` (``n`` becomes :math:`\\sum_t (1 - r^m_t)`), and
    :math:`\\rho_m = \\mathrm{clip}(\\mathrm{mean}_t\\, r^m_t, \\text{floor}, 1/2)`; the returned
    value is the bound :math:`\\sum_n \\mathcal L_n + \\log p(\\theta)`, which no step decreases.
    """
    stats = em_statistics(model, data)
    log_joint = stats["log_likelihood"] + model.log_prior()
    em_update(model, stats)
    return log_joint


@torch.no_grad()
def em_statistics(model, data: MultimodalData) -> dict:
    """The E-step of :func:`em_step`: name -> tensor of expected sufficient statistics of
    checked ``data``, all sums over sequences (those of disjoint shards add; data-parallel EM
    all-reduces them, :mod:`mmpgm.inference.distributed`).

    ``"log_likelihood"``: :math:`\\sum_n \\log p(x_n)` (the bound with sensor faults). Per
    modality ``m`` (``u = [z^s, z^m, 1]``, frame weights :math:`w_t` = 1, or
    :math:`1 - r^m_t` with faults): ``"<m>.Szz" (k, k)`` :math:`\\sum w\\, E[u u^\\top]`,
    ``"<m>.Sxz" (D, k)`` :math:`\\sum w\\, x E[u]^\\top`, ``"<m>.Sxx" (D, D)``
    :math:`\\sum w\\, x x^\\top`, ``"<m>.frames"`` the number of observed frames, and with
    faults ``"<m>.fault_sum"`` :math:`\\sum_t r^m_t`. Per dynamics block ``b``:
    ``"<b>.E11"``, ``"<b>.E00"``, ``"<b>.E10"`` summed second moments of the transitions inside
    the sequences and ``"<b>.pairs"`` their number; ``"<b>.first_count"``, and centred at the
    current :math:`\\mu_0` (``d = E[z_1] - \\mu_0``) ``"<b>.first_sum"`` :math:`\\sum d`,
    ``"<b>.first_outer"`` :math:`\\sum d d^\\top`, ``"<b>.first_cov"`` :math:`\\sum
    \\mathrm{Cov}(z_1)`.
    """
    data = model._checked(data)
    fault_probs = {}
    if model.fault_modalities:
        # variational E-step (mmpgm.models.lds.faults): q(z) the reweighted exact smoother,
        # q(f) closed form; the log joint is the bound sum_n L_n + log p(theta)
        res, _, _ = faults.e_step(model, data, warm_start=True)
        sm, fault_probs = res.moments, res.fault_probs
        loglik = res.bound.sum()
    else:
        sm = smoothed_moments(model, data)
        loglik = sm.log_likelihood.sum()
    mean, cov, cross = sm.means, sm.covs, sm.cross_covs
    N, T, S = mean.shape
    second = cov + mean[..., :, None] * mean[..., None, :]  # E[z_t z_t^T]
    inside = data.time_mask
    dtype, device = mean.dtype, mean.device
    stats = {"log_likelihood": loglik}
    # ---- emissions
    for m in model.modalities:
        idx = model._state_index(m)
        obs = data.mask[m]
        x = data.obs[m][obs]  # (n, D)
        mz = mean[obs][:, idx]  # (n, k-1)
        k = idx.numel() + 1
        Szz = torch.zeros(k, k, dtype=dtype, device=device)
        if m in fault_probs:
            # q(f)-weighted statistics: frame weight 1 - r (the expected "ok" indicator)
            rates_obs = fault_probs[m][obs]
            wt = 1.0 - rates_obs  # (n,)
            Ezz = (wt[:, None, None] * second[obs][:, idx][:, :, idx]).sum(0)
            Ez = (wt[:, None] * mz).sum(0)
            xw = x * wt[:, None]
            n = wt.sum()
            stats[f"{m}.fault_sum"] = rates_obs.sum()
        else:
            Ezz = second[obs][:, idx][:, :, idx].sum(0)
            Ez = mz.sum(0)
            xw = x
            n = torch.tensor(float(x.shape[0]), dtype=dtype, device=device)
        Szz[:-1, :-1] = Ezz
        Szz[:-1, -1] = Ez
        Szz[-1, :-1] = Ez
        Szz[-1, -1] = n
        stats[f"{m}.Szz"] = Szz
        stats[f"{m}.Sxz"] = torch.cat([xw.mT @ mz, xw.sum(0)[:, None]], -1)  # (D, k)
        stats[f"{m}.Sxx"] = xw.mT @ x
        stats[f"{m}.frames"] = torch.tensor(float(x.shape[0]), dtype=dtype, device=device)
    # ---- dynamics and initial state
    pair = (inside[:, 1:]).reshape(-1)  # transition t -> t+1 inside the sequence
    first = inside[:, 0]
    for b in model.block_names:
        s0, s1 = model.block_slices[b]
        k = model.dynamics[b].dim
        zero = torch.zeros(k, k, dtype=dtype, device=device)
        if T > 1 and bool(pair.any()):
            E11 = second[:, 1:, s0:s1, s0:s1].reshape(-1, k, k)[pair].sum(0)
            E00 = second[:, :-1, s0:s1, s0:s1].reshape(-1, k, k)[pair].sum(0)
            E10 = (
                (cross[:, :, s0:s1, s0:s1] + mean[:, 1:, s0:s1, None] * mean[:, :-1, None, s0:s1])
                .reshape(-1, k, k)[pair]
                .sum(0)
            )
        else:
            E11, E00, E10 = zero, zero.clone(), zero.clone()
        stats[f"{b}.E11"], stats[f"{b}.E00"], stats[f"{b}.E10"] = E11, E00, E10
        stats[f"{b}.pairs"] = torch.tensor(
            float(pair.sum()) if T > 1 else 0.0, dtype=dtype, device=device
        )
        dev = mean[first, 0, s0:s1] - model.dynamics[b].init_loc.detach()
        stats[f"{b}.first_count"] = torch.tensor(float(dev.shape[0]), dtype=dtype, device=device)
        stats[f"{b}.first_sum"] = dev.sum(0)
        stats[f"{b}.first_outer"] = dev.mT @ dev
        stats[f"{b}.first_cov"] = cov[first, 0, s0:s1, s0:s1].sum(0)
    return stats


@torch.no_grad()
def em_update(model, stats: dict) -> None:
    """The M-step of :func:`em_step` from :func:`em_statistics` (summed over any number of
    shards); a modality with no observed frame and a block with no transition keep their
    parameters."""
    for m in model.modalities:
        e = model.emissions[m]
        if float(stats[f"{m}.frames"]) == 0:
            continue
        if f"{m}.fault_sum" in stats:
            model.faults[m].set_rate(stats[f"{m}.fault_sum"] / stats[f"{m}.frames"])
        Szz, Sxz, Sxx = stats[f"{m}.Szz"], stats[f"{m}.Sxz"], stats[f"{m}.Sxx"]
        n = Szz[-1, -1]
        k = Szz.shape[-1]
        _, lam, psi = emission_prior_terms(model, m)
        Pz = symmetrize(Szz + torch.diag(lam))
        W = torch.linalg.solve(Pz, Sxz.mT).mT  # (D, k)
        resid = symmetrize(Sxx - W @ Pz @ W.mT)
        D = e.obs_dim
        ks = e.shared_dim
        e.shared_weight.copy_(W[:, :ks])
        e.private_weight.copy_(W[:, ks:-1])
        e.offset.copy_(W[:, -1])
        # the residual cancels Sxx's terms: for a constant feature it is 0 up to rounding of
        # about eps * Sxx_dd, of either sign; a noise variance floored at a few ulps of the
        # feature's mean square keeps the innovation covariance positive definite (the filter
        # raised on data with a constant feature)
        floor = 16 * torch.finfo(Sxx.dtype).eps * Sxx.diagonal().abs() / n.clamp_min(1.0)
        if e.noise == "diag":
            var = (2 * psi + resid.diagonal()) / (n + k + 4)
            var = var.clamp_min(floor).clamp_min(torch.finfo(var.dtype).tiny)
            e.noise_scale = var.sqrt()
        else:
            R = (torch.diag(psi) + resid) / (n + k + 2 * D + 2) + torch.diag(floor)
            e.set_noise_cov(symmetrize(R))
    for b in model.block_names:
        d = model.dynamics[b]
        k = d.dim
        E11, E00, E10 = stats[f"{b}.E11"], stats[f"{b}.E00"], stats[f"{b}.E10"]
        eye = torch.eye(k, dtype=E11.dtype, device=E11.device)
        n = float(stats[f"{b}.pairs"])
        if n > 0:
            A_old = d.transition_matrix
            A_new = torch.linalg.solve(symmetrize(E00), E10.mT).mT
            if d.stable:
                A_new = feasible_step(A_old, A_new, d.max_spectral_norm)
            d.set_transition_matrix(A_new)
            A = d.transition_matrix
            Sres = symmetrize(E11 - A @ E10.mT - E10 @ A.mT + A @ E00 @ A.mT)
            Qn = (model.prior_noise * eye + Sres) / (n + 2 * k + 2)
            d.transition_scale_tril = torch.linalg.cholesky(symmetrize(Qn))
        c = stats[f"{b}.first_count"]
        mean_dev = stats[f"{b}.first_sum"] / c
        mu0 = d.init_loc + mean_dev
        # sum_n (m_n - mu0)(m_n - mu0)^T from the sums centred at the old mu0
        scatter = stats[f"{b}.first_outer"] - c * mean_dev[:, None] * mean_dev[None, :]
        P0 = ((2 * k + 2) * eye + stats[f"{b}.first_cov"] + scatter) / (c + 2 * k + 2)
        d.init_loc.copy_(mu0)
        d.init_scale_tril = torch.linalg.cholesky(symmetrize(P0))


def feasible_step(A_old, A_new, rho):
    """Largest ``a`` in [0, 1] with ``||A_old + a (A_new - A_old)||_2 <= rho`` (bisection)."""

    def norm(a):
        return float(torch.linalg.matrix_norm(A_old + a * (A_new - A_old), ord=2))

    if norm(1.0) <= rho:
        return A_new
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        if norm(mid) <= rho:
            lo = mid
        else:
            hi = mid
    return A_old + lo * (A_new - A_old)
