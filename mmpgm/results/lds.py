"""Immutable result types of :class:`mmpgm.models.lds.MultimodalLDS` inference."""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._deprecated import deprecated_fields

__all__ = ["LDSPosterior", "LDSImputation"]


@deprecated_fields(
    means="mean", covs="covariance", state_cov="state_covariance", cross_covs="cross_covariance"
)
class LDSPosterior(NamedTuple):
    r"""Gaussian posterior over the continuous states of a multimodal LDS.

    The state is :math:`z_t = [z^s_t, z^1_t, \dots, z^M_t]`; ``block_slices`` says where each block
    (``"shared"``, then each modality with a private block) lives in the last axis.

    mean : dict block -> ``(N, T, k_b)``; smoothed :math:`E[z^b_t \mid x_{1:T}]`, or filtered
        :math:`E[z^b_t \mid x_{1:t}]` when ``causal``.
    covariance : dict block -> ``(N, T, k_b, k_b)``, the matching covariances
        :math:`\mathrm{Cov}[z^b_t \mid \cdot]`.
    state_mean : ``(N, T, S)`` the whole state's mean (all blocks).
    state_covariance : ``(N, T, S, S)`` the whole state's covariance (blocks are correlated a
        posteriori).
    cross_covariance : ``(N, T-1, S, S)`` :math:`\mathrm{Cov}[z_{t+1}, z_t \mid x_{1:T}]`
        (smoothed only; None when ``causal``).
    map : ``(N, T, S)`` joint mode :math:`\arg\max_z p(z \mid x)` (the smoothed mean, for a
        linear-Gaussian model), or None.
    samples : ``(K, N, T, S)`` exact joint draws :math:`z_{1:T} \sim p(z \mid x)` by
        forward-filter backward-sample, or None.
    log_likelihood : ``(N,)`` :math:`\log p(x^{(n)}_{\text{observed}})`.
    lengths : ``(N,)``; frames ``t >= lengths[n]`` are padding (pure predictions).
    causal : whether the moments are filtered.
    block_slices : dict block -> ``(start, stop)`` into the state axis.
    pointwise_log_likelihood : ``(P, N)`` under ``P`` Laplace parameter draws (see
        :func:`mmpgm.infer`), or None.
    fault_probs : dict modality -> ``(N, T)`` fault probabilities :math:`q(f^m_t = 1)` of the
        modalities with ``sensor_faults`` (smoothed, filtered when ``causal``; the prior rate
        where the modality is masked, 0 on padding), or None without sensor faults.  With
        sensor faults the moments are those of the mean-field :math:`q(z)` and
        ``log_likelihood`` is the variational bound.
    parameter_samples : dict name -> ``(P, ...)``, the ``P`` Laplace parameter draws behind
        ``pointwise_log_likelihood`` in natural form (``"field.key"`` names of the model's
        ``params``), or None.

    The old names ``means``, ``covs``, ``state_cov`` and ``cross_covs`` still read (with a
    FutureWarning) for one release.
    """

    mean: dict
    covariance: dict
    state_mean: torch.Tensor
    state_covariance: torch.Tensor
    cross_covariance: torch.Tensor | None
    map: torch.Tensor | None
    samples: torch.Tensor | None
    log_likelihood: torch.Tensor
    lengths: torch.Tensor
    causal: bool
    block_slices: dict
    pointwise_log_likelihood: torch.Tensor | None = None
    fault_probs: dict | None = None
    parameter_samples: dict | None = None

    def latent_names(self) -> list:
        """Coordinate labels of the state axis: ``shared_0, .., <modality>_0, ..``."""
        names = []
        for b, (a, e) in self.block_slices.items():
            names += [f"{b}_{i}" for i in range(e - a)]
        return names

    def to_arviz(self):
        """Convert to :class:`arviz.InferenceData` with named dims.

        Groups: ``posterior`` (the Laplace parameter draws, ``parameter_samples``, when
        ``mmpgm.infer(..., num_param_samples=)`` drew them; else ``state_time_mean``, each draw's
        time average per sequence, dims ``(chain, draw, sequence, latent)``, which otherwise
        goes to ``latent_states``), ``latent_states`` (``state`` with dims ``(chain,
        draw, sequence, time, latent)``: the FFBS draws, else the joint mode as a single draw;
        padding frames NaN), ``log_likelihood`` (``sequence_log_likelihood`` ``(chain, draw,
        sequence)``, only with Laplace parameter draws, so :func:`arviz.loo` works), and
        ``constant_data`` (``state_mean`` and ``state_sd``, the marginal
        posterior means and standard deviations, dims ``(sequence, time, latent)``).
        """
        from .arviz import lds_posterior_to_arviz

        return lds_posterior_to_arviz(self)


@deprecated_fields(state_cov="state_covariance")
class LDSImputation(NamedTuple):
    r"""Posterior predictive of one modality given the others (see ``MultimodalLDS.impute``).

    mean : ``(N, T, D)`` :math:`E[x^m_t \mid x^{-m}] = C^m E[z_t \mid x^{-m}] + d^m`.
    covariance : ``(N, T, D, D)`` :math:`C^m \mathrm{Cov}[z_t \mid x^{-m}] C^{m\top} + R_m`.
    state_mean : ``(N, T, S)`` :math:`E[z_t \mid x^{-m}]`.
    state_covariance : ``(N, T, S, S)`` :math:`\mathrm{Cov}[z_t \mid x^{-m}]`.

    The old name ``state_cov`` still reads (with a FutureWarning) for one release.
    """

    mean: torch.Tensor
    covariance: torch.Tensor
    state_mean: torch.Tensor
    state_covariance: torch.Tensor
