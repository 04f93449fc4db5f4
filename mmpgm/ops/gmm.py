r"""A diagonal Gaussian mixture fitted by EM with missing entries, for data-driven starts.

Hand-written because scikit-learn's ``GaussianMixture`` neither accepts missing values nor
runs on torch tensors; with diagonal covariances a missing entry simply drops out of that
frame's likelihood, so EM stays exact under the mask:

.. math::
    p(x_f) = \sum_k w_k \prod_{d \in O_f} \mathcal N(x_{fd}; \mu_{kd}, \sigma^2_{kd}),

with :math:`O_f` the observed entries of frame :math:`f`. Unlike k-means (one shared spherical
variance), the mixture gives each cluster its own variances, so a tight cluster next to a
broad one is not split in two while the tight ones are merged.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._validation import check_int
from .kmeans import kmeans_plus_plus

__all__ = ["GMMResult", "diagonal_gmm"]


class GMMResult(NamedTuple):
    """weights ``(K,)``; means, variances ``(K, D)``; responsibilities ``(F, K)``;
    log_likelihood: the observed-data log-likelihood (a 0-d tensor)."""

    weights: torch.Tensor
    means: torch.Tensor
    variances: torch.Tensor
    responsibilities: torch.Tensor
    log_likelihood: torch.Tensor


def _log_joint(x, mask, weights, means, variances):
    """``(F, K)``: :math:`\\log w_k + \\sum_{d \\in O_f}
    \\log N(x_{fd}; \\mu_{kd}, \\sigma^2_{kd})`."""
    m = mask.to(x.dtype)
    # sum_d m_fd [ (x_fd - mu_kd)^2 / var_kd + log(2 pi var_kd) ], expanded to three matmuls
    inv = 1.0 / variances
    quad = (m * x * x) @ inv.T - 2 * (m * x) @ (means * inv).T + m @ (means * means * inv).T
    logdet = m @ (variances.log() + math.log(2 * math.pi)).T
    return weights.log() - 0.5 * (quad + logdet)


def diagonal_gmm(
    x: torch.Tensor,
    mask: torch.Tensor,
    num_components: int,
    *,
    num_iters: int = 50,
    num_starts: int = 8,
    variance_floor: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> GMMResult:
    """Fit a ``num_components`` diagonal Gaussian mixture to ``x (F, D)`` where ``mask (F, D)``
    is True (entries where it is False are ignored; their values may be anything finite).

    ``num_starts`` seedings, alternately k-means++ (far-apart points) and uniformly drawn frames
    (which land in dense, tight clusters that k-means++ tends to miss next to a broad one),
    each refined by ``num_iters`` EM iterations; the start with the highest log-likelihood is
    returned. ``variance_floor``
    ``(D,)`` bounds every variance below (default: 1e-3 of the pooled variance per dimension).
    """
    check_int("num_components", num_components)
    check_int("num_iters", num_iters)
    check_int("num_starts", num_starts)
    if x.shape != mask.shape or x.dim() != 2:
        raise ValueError(
            f"x, mask: expected equal shapes (F, D), got {tuple(x.shape)} and {tuple(mask.shape)}"
        )
    K = num_components
    m = mask.to(x.dtype)
    x = torch.where(mask, x, torch.zeros_like(x))
    count = m.sum(0).clamp_min(1)
    mean = x.sum(0) / count
    var = ((x - mean) ** 2 * m).sum(0) / count
    if variance_floor is None:
        variance_floor = 1e-3 * var.clamp_min(torch.finfo(x.dtype).tiny)
    floor = variance_floor.to(x).clamp_min(torch.finfo(x.dtype).tiny)
    filled = torch.where(mask, x, mean)
    best = None
    F = x.shape[0]
    for start in range(num_starts):
        if start % 2 == 0:
            means = kmeans_plus_plus(filled, K, generator).clone()
        else:
            pick = torch.randperm(F, generator=generator)[: min(K, F)].to(x.device)
            means = filled[pick][torch.arange(K, device=x.device) % pick.numel()].clone()
        variances = var.clamp_min(floor).expand(K, -1).clone()
        weights = torch.full((K,), 1.0 / K, dtype=x.dtype, device=x.device)
        for _ in range(num_iters):
            lj = _log_joint(x, mask, weights, means, variances)
            resp = (lj - lj.logsumexp(-1, keepdim=True)).exp()  # (F, K)
            nk = resp.sum(0)
            weights = (nk / nk.sum()).clamp_min(1e-8)
            weights = weights / weights.sum()
            rd = resp.T @ m  # (K, D): responsibility mass of observed entries
            rd_safe = rd.clamp_min(1e-12)
            means = torch.where(rd > 1e-12, (resp.T @ x) / rd_safe, means)
            second = (resp.T @ (x * x)) / rd_safe
            variances = torch.where(rd > 1e-12, second - means**2, variances).clamp_min(floor)
        lj = _log_joint(x, mask, weights, means, variances)
        ll = lj.logsumexp(-1).sum()
        if best is None or ll > best.log_likelihood:
            resp = (lj - lj.logsumexp(-1, keepdim=True)).exp()
            best = GMMResult(weights, means, variances, resp, ll)
    return best
