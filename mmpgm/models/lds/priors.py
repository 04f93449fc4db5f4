"""The weak conjugate parameter prior of the multimodal LDS (see the package docstring):
inverse-Wishart on state noise and initial covariances, normal-inverse-gamma / -Wishart on the
emission regressions."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch

_LOG_2PI = math.log(2 * math.pi)


def _inv_wishart_log_prob(X: torch.Tensor, Psi: torch.Tensor, df: float) -> torch.Tensor:
    """log density of the inverse-Wishart :math:`\\mathcal{IW}(\\Psi, \\nu)` at SPD ``X`` ``(p,
    p)``."""
    p = X.shape[-1]
    LX = torch.linalg.cholesky(X)
    logdet_X = 2 * LX.diagonal().log().sum()
    logdet_Psi = torch.logdet(Psi)
    tr = torch.cholesky_solve(Psi, LX).diagonal().sum()  # tr(X^-1 Psi)
    return (
        0.5 * df * logdet_Psi
        - 0.5 * df * p * math.log(2.0)
        - torch.mvlgamma(torch.as_tensor(0.5 * df, dtype=X.dtype), p)
        - 0.5 * (df + p + 1) * logdet_X
        - 0.5 * tr
    )


def emission_prior_terms(model, m):
    """``(k, lam, psi)``: regressor count, prior precisions of the regression weights and the
    noise prior scale of modality ``m``."""
    e = model.emissions[m]
    k = e.shared_dim + e.private_dim + 1
    lam = torch.full((k,), model.prior_precision, dtype=e.offset.dtype, device=e.offset.device)
    lam[-1] = 1e-6
    psi = model.prior_noise * e.data_var
    return k, lam, psi


def log_prior(model) -> torch.Tensor:
    """Log density of the (weak, conjugate) parameter prior; see the module docstring."""
    total = model._param().new_zeros(())
    for b in model.block_names:
        d = model.dynamics[b]
        k = d.dim
        eye = torch.eye(k, dtype=total.dtype, device=total.device)
        total = total + _inv_wishart_log_prob(d.transition_cov, model.prior_noise * eye, k + 1)
        total = total + _inv_wishart_log_prob(d.initial_cov, (2 * k + 2) * eye, k + 1)
    for m in model.modalities:
        e = model.emissions[m]
        k, lam, psi = emission_prior_terms(model, m)
        W = torch.cat([e.weight, e.offset[:, None]], -1)  # (D, k)
        D = e.obs_dim
        if e.noise == "diag":
            var = e.noise_scale.square()
            # InvGamma(var; 1, psi) = psi / var^2 exp(-psi / var)
            total = total + (psi.log() - 2 * var.log() - psi / var).sum()
            total = total + dist.Normal(0.0, (var[:, None] / lam).sqrt()).log_prob(W).sum()
        else:
            R = e.noise_cov
            total = total + _inv_wishart_log_prob(R, torch.diag(psi), D + 1)
            L = torch.linalg.cholesky(R)
            sol = torch.linalg.solve_triangular(L, W * lam.sqrt(), upper=False)
            total = total + (
                -0.5 * k * D * _LOG_2PI
                - k * L.diagonal().log().sum()
                + 0.5 * D * lam.log().sum()
                - 0.5 * sol.square().sum()
            )
    return total
