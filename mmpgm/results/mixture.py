"""Immutable result type of :meth:`mmpgm.models.mixture.GatedMixture.posterior`."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["MixturePosterior"]


class MixturePosterior(NamedTuple):
    r"""Posterior of a gated mixture of modality experts.

    predictive : causal predictive of the target given the inputs only,
        :math:`p(y_t \mid x_{\le t}) = \sum_m p(c_t = m \mid x_{\le t}) f_m(x^m_{\le t})`:
        ``(N, T)`` :math:`p(y_t = 1)` (bernoulli), ``(N, T, K)`` class probabilities
        (categorical), ``(N, T)`` mean (normal) or ``(N, T, F)`` the gate-weighted mixture of the
        experts' masks :math:`\sum_m g_{tm} \sigma(o_{m,t})` (ratio_mask; the mean of the
        predictive, in ``[0, 1]``).
    gate_weights : ``(N, T, M)`` prior gate weights :math:`p(c_t = m \mid x_{\le t})` (for the
        Markov
        gate, the chain's marginal given the inputs); exactly 0 on unobserved experts.
    responsibilities : ``(N, T, M)`` :math:`p(c_t = m \mid y, x)`: smoothed (all labels) or, with
        ``causal``, filtered :math:`p(c_t \mid y_{\le t}, x_{\le t})`; the gate weights on
            unlabelled frames
        (conditional gates).
    expert_predictions : expert-wise predictions, ``(N, T, M)`` :math:`p(y_t = 1 \mid x^m)`
        (bernoulli),
        ``(N, T, M, K)`` (categorical), ``(N, T, M)`` means (normal) or ``(N, T, M, F)`` masks
        :math:`\sigma(o_{m,t})` (ratio_mask).
    map : ``(N, T)`` int64 most probable expert path given ``y`` (or None).
    samples : ``(S, N, T)`` int64 exact draws of the expert path given ``y`` (or None).
    log_likelihood : ``(N,)`` :math:`\log p(y \mid x)` on the labelled, observed frames.
    lengths : ``(N,)``.
    causal : whether ``responsibilities`` are filtered.
    modalities : expert names, in the order of the ``M`` axis.
    head : the model's target head (``"bernoulli"``, ``"categorical"``, ``"normal"``,
        ``"ratio_mask"``), or None when unknown; names the last axis in :meth:`to_arviz`.
    """

    predictive: torch.Tensor
    gate_weights: torch.Tensor
    responsibilities: torch.Tensor
    expert_predictions: torch.Tensor
    map: torch.Tensor | None
    samples: torch.Tensor | None
    log_likelihood: torch.Tensor
    lengths: torch.Tensor
    causal: bool
    modalities: tuple
    head: str | None = None

    def to_arviz(self):
        """:class:`arviz.InferenceData` with named dims.

        ``posterior``: ``expert_occupancy`` (the fraction of each sequence's frames given to
        each expert per draw, dims ``(chain, draw, sequence, expert)``); ``latent_states``:
        ``expert`` (chosen expert index; draws from ``samples``, else the MAP path as one draw,
        padding -1) with dims ``(chain, draw, sequence, time)``; no ``log_likelihood`` group
        (no parameter draws for neural models);
        ``constant_data``: ``gate_weights``, ``responsibilities``, ``expert_predictions``
        (dims ``sequence, time, expert[, class]``, ``frequency`` instead of ``class`` for a ratio
        mask) and ``predictive``.
        """
        from .arviz import mixture_posterior_to_arviz

        return mixture_posterior_to_arviz(self)
