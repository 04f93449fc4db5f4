"""Immutable result types of the multimodal variational RNN, and their conversion to ArviZ."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["MVRNNPosterior", "MVRNNImputation"]


def _np(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


class MVRNNPosterior(NamedTuple):
    r"""Variational posterior and ELBO decomposition of an :class:`mmpgm.models.mvrnn.MVRNN`.

    Blocks are ``"shared"`` (:math:`z^s`) and every modality name (:math:`z^m`).

    mean, scale : dict block -> ``(N, T, Z)`` parameters of :math:`q(z_t \mid x_t, h_{t-1})` along the
        noise-free path (each :math:`z_t` set to its guide mean): the posterior mean path.
    samples : dict block -> ``(S, N, T, Z)`` ancestral draws from :math:`q`, or None.
    elbo : ``(N, T)`` per-frame ELBO, :math:`\sum_m \text{reconstruction}_m - \sum_b \text{kl}_b`
        (eq. 45-47), averaged over ``max(S, 1)`` draws; 0 on padding.
    reconstruction : dict modality -> ``(N, T)`` :math:`E_q \log p(x^m_t \mid z^m_t, z^s_t, h^m_{t-1})`
        (eq. 45); 0 where the modality is missing.
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

        ``posterior``: ``z_<block>`` with dims ``(chain, draw, sequence, time, z_<block>_dim)`` (the
        draws, or the mean path as a single draw), NaN on padding. ``log_likelihood``:
        ``sequence_elbo`` ``(chain, draw, sequence)``. ``constant_data``: ``z_<block>_mean``,
        ``z_<block>_scale``, ``elbo``, ``reconstruction_<m>``, ``kl_<block>`` (dims ``sequence, time``)
        and ``observed_<m>``.
        """
        import arviz as az

        N, T = self.elbo.shape
        inside = _np(self.time_mask)
        coords = {"sequence": np.arange(N), "time": np.arange(T)}
        dims, posterior, constant = {}, {}, {}
        for b, mu in self.mean.items():
            dim = f"z_{b}_dim"
            coords[dim] = np.arange(mu.shape[-1])
            draws = self.samples[b] if self.samples is not None else mu[None]
            arr = _np(draws).copy()
            arr[:, ~inside] = np.nan
            posterior[f"z_{b}"] = arr[None]
            dims[f"z_{b}"] = ["sequence", "time", dim]
            for key, val in ((f"z_{b}_mean", mu), (f"z_{b}_scale", self.scale[b])):
                constant[key] = _np(val)
                dims[key] = ["sequence", "time", dim]
            constant[f"kl_{b}"] = _np(self.kl[b])
            dims[f"kl_{b}"] = ["sequence", "time"]
        constant["elbo"] = _np(self.elbo)
        dims["elbo"] = ["sequence", "time"]
        for m, r in self.reconstruction.items():
            constant[f"reconstruction_{m}"] = _np(r)
            constant[f"observed_{m}"] = _np(self.mask[m])
            dims[f"reconstruction_{m}"] = dims[f"observed_{m}"] = ["sequence", "time"]
        if self.pointwise_log_likelihood is not None:
            ll = _np(self.pointwise_log_likelihood)[None]
        else:
            ll = _np(self.log_likelihood)[None, None]
        dims["sequence_elbo"] = ["sequence"]
        return az.from_dict(posterior=posterior, log_likelihood={"sequence_elbo": ll},
                            constant_data=constant, dims=dims, coords=coords)


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
        """``posterior_predictive`` group with ``x`` of dims ``(chain, draw, sequence, time, feature)``."""
        import arviz as az

        s = _np(self.samples)[None]
        return az.from_dict(posterior_predictive={"x": s},
                            dims={"x": ["sequence", "time", "feature"]})
