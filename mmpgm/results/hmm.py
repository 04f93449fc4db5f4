"""Immutable result types of :class:`mmpgm.models.hmm.MultimodalHMM` inference."""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["Posterior", "Imputation"]


class Imputation(NamedTuple):
    r"""Posterior predictive of one modality given the others.

    mean : ``(N, T, D)`` :math:`E[x^m_t \mid x^{-m}]` (class probabilities for a categorical
        modality).
    covariance : ``(N, T, D, D)`` :math:`\mathrm{Cov}[x^m_t \mid x^{-m}]`.
    state_weights : ``(N, T, K_s, K_m)`` :math:`p(s_t, p^m_t \mid x^{-m})`, the mixture weights.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    state_weights: torch.Tensor


class Posterior(NamedTuple):
    r"""Posterior over the latent chains of a multimodal HMM-like model.

    marginals : dict chain -> ``(N, T, K)``; smoothed :math:`p(z_t \mid x_{1:T})`, or filtered
        :math:`p(z_t \mid x_{1:t})` when ``causal``.
    map : dict chain -> ``(N, T)`` int64, joint MAP path :math:`\arg\max_z p(z \mid x)` (or None).
    samples : dict chain -> ``(S, N, T)`` int64 draws :math:`z \sim p(z \mid x)` (or None).
    log_likelihood : ``(N,)`` :math:`\log p(x^{(n)})` under the point estimate.
    lengths : ``(N,)`` sequence lengths; frames ``t >= lengths[n]`` are padding.
    causal : whether ``marginals`` are filtered.
    pointwise_log_likelihood : ``(P, N)`` :math:`\log p(x^{(n)} \mid \theta_p)` for ``P`` parameter
        draws (Laplace approximation, see :func:`mmpgm.infer`), or None.
    fault_probs : dict modality -> ``(N, T)`` :math:`p(f^m_t = 1 \mid x)` (smoothed, or filtered
        when ``causal``), the probability that the stream is faulty at each frame (0 on
        padding), for the modalities with a fault chain (``sensor_faults``); None without.
        The fault chains' full marginals, MAP path and samples are under ``"<modality>_fault"``
        in ``marginals``, ``map`` and ``samples``.
    parameter_samples : dict name -> ``(P, ...)``, the ``P`` Laplace parameter draws behind
        ``pointwise_log_likelihood`` in natural form (``"field.key"`` names of the model's
        ``params``), or None.
    """

    marginals: dict
    map: dict | None
    samples: dict | None
    log_likelihood: torch.Tensor
    lengths: torch.Tensor
    causal: bool
    pointwise_log_likelihood: torch.Tensor | None
    fault_probs: dict | None = None
    parameter_samples: dict | None = None

    def to_arviz(self):
        """Convert to :class:`arviz.InferenceData` with named dims.

        Groups: ``posterior`` (the Laplace parameter draws, ``parameter_samples``, when
        ``mmpgm.infer(..., num_param_samples=)`` drew them; else ``<chain>_occupancy``, the
        fraction of each sequence's frames in each state per path draw, dims ``(chain, draw,
        sequence, <chain>_value)``: a few rows per sequence for :func:`arviz.summary`, which
        otherwise goes to ``latent_states``), ``latent_states`` (the path draws, or the MAP
        path as one draw, ``<chain>_state`` with dims ``(chain, draw, sequence, time)``, padding
        -1), ``log_likelihood`` (``sequence_log_likelihood`` ``(chain, draw, sequence)``, only
        with Laplace parameter draws, ``mmpgm.infer(..., num_param_samples=)``, so
        :func:`arviz.loo` and :func:`arviz.compare` compare real pointwise quantities; a single
        point estimate is left out) and ``constant_data`` (the marginals ``<chain>_marginal``,
        dims ``(sequence, time, <chain>_value)``).
        """
        from .arviz import hmm_posterior_to_arviz

        return hmm_posterior_to_arviz(self)
