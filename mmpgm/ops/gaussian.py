r"""Diagonal-Gaussian algebra: the precision-weighted product of experts, the analytic KL and
the log-density (torch only; used by the MVRNN's guide and ELBO)."""

from __future__ import annotations

import math

import torch

__all__ = ["product_of_experts", "gaussian_kl", "gaussian_log_prob"]


def product_of_experts(prior_loc, prior_scale, locs, scales, masks):
    r"""Precision-weighted product of diagonal Gaussian experts.

    Parameters
    ----------
    prior_loc, prior_scale : ``(..., Z)`` the prior expert (always present).
    locs, scales : ``(M, ..., Z)`` the data experts.
    masks : ``(M, ...)`` bool, True where expert ``m`` is present (its modality observed).

    Returns
    -------
    loc, scale : ``(..., Z)`` of :math:`\propto \mathcal N(\mu_0, \sigma_0^2) \prod_{m \in
        \text{present}} \mathcal N(\mu_m, \sigma_m^2)`: precision :math:`\sum_m \sigma_m^{-2}`,
        mean :math:`\sum_m \sigma_m^{-2} \mu_m / \sum_m \sigma_m^{-2}`. Absent experts enter
        through ``torch.where`` (their values never reach the result, not even as NaN).
    """
    prec0 = prior_scale.pow(-2)
    prec = scales.pow(-2)
    present = masks[..., None]
    zero = torch.zeros((), dtype=prec.dtype, device=prec.device)
    prec = torch.where(present, prec, zero)
    weighted = torch.where(present, prec * locs, zero)
    total = prec0 + prec.sum(0)
    loc = (prec0 * prior_loc + weighted.sum(0)) / total
    return loc, total.rsqrt()


def gaussian_kl(q_loc, q_scale, p_loc, p_scale) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu_q, \sigma_q^2) \| \mathcal N(\mu_p, \sigma_p^2))`, summed
    over the last axis."""
    var_ratio = (q_scale / p_scale).pow(2)
    t1 = ((q_loc - p_loc) / p_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum(-1)


def gaussian_log_prob(x, loc, scale) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last axis."""
    z = (x - loc) / scale
    return (-0.5 * z.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
