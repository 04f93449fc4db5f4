"""Immutable result types of the multimodal variational RNN."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MVRNNPosterior", "MVRNNImputation"]


class MVRNNPosterior(NamedTuple):
    r"""Variational posterior and ELBO decomposition of an :class:`mmpgm.models.mvrnn.MVRNN`.

    Blocks are ``"shared"`` (:math:`z^s`) and every modality name (:math:`z^m`).

    mean, scale : dict block -> ``(N, T, Z)`` parameters of :math:`q(z_t \mid x_t, h_{t-1})` along
        the noise-free path (each :math:`z_t` set to its guide mean): the posterior mean path.
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
    """

    mean: dict
    scale: dict
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
        ``sequence_elbo``, ``z_<block>_mean``, ``z_<block>_scale``, ``elbo``,
        ``reconstruction_<m>``, ``kl_<block>`` (dims ``sequence, time``) and ``observed_<m>``.
        """
        from .arviz import mvrnn_posterior_to_arviz

        return mvrnn_posterior_to_arviz(self)


class MVRNNImputation(NamedTuple):
    r"""Predictive of one modality from the others under an MVRNN.

    mean : ``(N, T, D)`` :math:`E[x^m_t \mid x^{-m}]` (Monte Carlo over ``S`` guide draws).
    variance : ``(N, T, D)`` predictive variance (law of total variance over the draws).
    samples : ``(S, N, T, D)`` the per-draw decoder means.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    samples: torch.Tensor

    def to_arviz(self):
        """``posterior_predictive`` group with ``x`` of dims ``(chain, draw, sequence, time,
        feature)``."""
        from .arviz import mvrnn_imputation_to_arviz

        return mvrnn_imputation_to_arviz(self)
