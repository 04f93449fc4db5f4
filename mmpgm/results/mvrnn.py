"""Immutable result types of the multimodal variational RNN."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._deprecated import deprecated_fields

__all__ = ["MVRNNPosterior", "MVRNNImputation"]


def _diagonal(covariance):
    """block -> ``(..., k, k)`` (or one tensor) -> the diagonals ``(..., k)``."""
    if isinstance(covariance, dict):
        return {b: c.diagonal(dim1=-2, dim2=-1) for b, c in covariance.items()}
    return covariance.diagonal(dim1=-2, dim2=-1)


def _sd(post):
    """block -> ``(N, T, Z)`` standard deviations, the old ``scale`` field."""
    return {b: v.sqrt() for b, v in post.variance.items()}


@deprecated_fields(scale=("covariance", _sd))
class MVRNNPosterior(NamedTuple):
    r"""Variational posterior and ELBO decomposition of an :class:`mmpgm.models.mvrnn.MVRNN`.

    Blocks are ``"shared"`` (:math:`z^s`) and every modality name (:math:`z^m`).

    mean : dict block -> ``(N, T, Z)`` mean of :math:`q(z_t \mid x_t, h_{t-1})` along the
        noise-free path (each :math:`z_t` set to its guide mean): the posterior mean path.
    covariance : dict block -> ``(N, T, Z, Z)`` the matching covariance of :math:`q`, diagonal
        (:math:`\mathrm{diag}(\sigma^2)`, the guide is mean-field); :attr:`variance` is its
        diagonal ``(N, T, Z)``.
    samples : dict block -> ``(S, N, T, Z)`` ancestral draws from :math:`q`, or None.
    elbo : ``(N, T)`` per-frame ELBO, :math:`\sum_m \text{reconstruction}_m - \sum_b \text{kl}_b`
        (eq. 45-47), averaged over ``max(S, 1)`` draws; 0 on padding.
    reconstruction : dict modality -> ``(N, T)``
        :math:`E_q \log p(x^m_t \mid z^m_t, z^s_t, h^m_{t-1})` (eq. 45); 0 where the modality is
        missing.
    kl : dict block -> ``(N, T)`` analytic :math:`\mathrm{KL}(q \| p)` per frame (eq. 46 for the
        modalities, eq. 47 for ``"shared"``); 0 for a missing modality (its posterior is its prior).
    log_likelihood : ``(N,)`` per-sequence ELBO, a lower bound on :math:`\log p(x^{(n)})`.
    lengths : ``(N,)``; mask : dict modality -> ``(N, T)`` observed frames.
    causal : the guide is causal by construction (eq. 43); recorded as asked.
    pointwise_log_likelihood : ``(P, N)`` or None (kept for :func:`mmpgm.infer`).

    The old name ``scale`` (the standard deviation, ``variance`` square-rooted) still reads
    (with a FutureWarning) for one release.
    """

    mean: dict
    covariance: dict
    samples: dict | None
    elbo: torch.Tensor
    reconstruction: dict
    kl: dict
    log_likelihood: torch.Tensor
    lengths: torch.Tensor
    mask: dict
    causal: bool
    pointwise_log_likelihood: torch.Tensor | None = None

    @property
    def variance(self) -> dict:
        """block -> ``(N, T, Z)`` the diagonal of :attr:`covariance` (computed, not stored)."""
        return _diagonal(self.covariance)

    @property
    def time_mask(self) -> torch.Tensor:
        T = self.elbo.shape[1]
        return torch.arange(T, device=self.lengths.device)[None, :] < self.lengths[:, None]

    def to_arviz(self):
        """:class:`arviz.InferenceData` with named dims.

        ``posterior``: ``z_<block>_time_mean`` (each draw's time average per sequence, dims
        ``(chain, draw, sequence, z_<block>_dim)``). ``latent_states``: ``z_<block>`` with dims
        ``(chain, draw, sequence, time, z_<block>_dim)`` (the draws, or the mean path as a
        single draw), NaN on padding. No ``log_likelihood`` group: an ELBO at one set of weights
        is not a pointwise log-likelihood under posterior draws. ``constant_data``:
        ``sequence_elbo``, ``z_<block>_mean``, ``z_<block>_sd`` (the square root of
        :attr:`variance`, as the LDS's ``state_sd``), ``elbo``,
        ``reconstruction_<m>``, ``kl_<block>`` (dims ``sequence, time``) and ``observed_<m>``.
        """
        from .arviz import mvrnn_posterior_to_arviz

        return mvrnn_posterior_to_arviz(self)


class MVRNNImputation(NamedTuple):
    r"""Predictive of one modality from the others under an MVRNN.

    mean : ``(N, T, D)`` :math:`E[x^m_t \mid x^{-m}]` (Monte Carlo over ``S`` guide draws).
    covariance : ``(N, T, D, D)`` predictive covariance, diagonal: the law of total variance
        over the draws, :math:`E_s[\mathrm{Var}[x \mid s]] + \mathrm{Var}_s[E[x \mid s]]` per
        feature (the decoder is factorized; cross-feature terms are not estimated).
        :attr:`variance` is its diagonal ``(N, T, D)``.
    samples : ``(S, N, T, D)`` the per-draw decoder means.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    samples: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        """``(N, T, D)`` the diagonal of :attr:`covariance` (computed, not stored)."""
        return _diagonal(self.covariance)

    def to_arviz(self):
        """``posterior_predictive`` group with ``x`` of dims ``(chain, draw, sequence, time,
        feature)``."""
        from .arviz import mvrnn_imputation_to_arviz

        return mvrnn_imputation_to_arviz(self)
