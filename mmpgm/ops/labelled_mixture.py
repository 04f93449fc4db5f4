r"""A per-frame mixture whose indicator is observed on some frames: the exact sums of the gated
mixture of denoisers (:class:`mmpgm.models.denoising.GatedDenoisers`, paper section 6.4).

Per frame ``t`` an indicator :math:`c_t \in \{0..K-1\}` with prior log weights
:math:`\log g_{tk}` and component log-likelihoods :math:`\ell_{tk} = \log p(y_t \mid c_t = k)`.
Where the label :math:`c^*_t` is known (``label >= 0`` on a ``gate_mask`` frame) the indicator is
observed; elsewhere it is summed out:

.. math::
    \log p(y, c^*_{\mathcal K} \mid x) = \sum_{t \in \mathcal K} \big(\log g_{t c^*_t}
    + e_t \ell_{t c^*_t}\big) + \sum_{t \notin \mathcal K} e_t \log \sum_k g_{tk} e^{\ell_{tk}},

``e_t`` = 1 on evidence frames (``y_t`` observed), 0 elsewhere (a factor 1). Torch only.
"""

from __future__ import annotations

import torch

__all__ = ["labelled_mixture_log_likelihood", "labelled_mixture_responsibilities", "known_labels"]


def known_labels(label: torch.Tensor, gate_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(known (N, T) bool, index (N, T) int64)``: frames whose label is given (``label >= 0``
    and ``gate_mask``) and the label clamped to a valid index (0 where unknown)."""
    known = (label >= 0) & gate_mask
    return known, torch.where(known, label, torch.zeros_like(label)).long()


def labelled_mixture_log_likelihood(
    log_weights: torch.Tensor,
    log_component: torch.Tensor,
    label: torch.Tensor,
    gate_mask: torch.Tensor,
    evidence: torch.Tensor,
) -> torch.Tensor:
    r"""Exact :math:`\log p(y, c^*_{\mathcal K} \mid x)` per sequence (module docstring).

    Parameters
    ----------
    log_weights : Tensor ``(N, T, K)``
        Normalized log gate weights :math:`\log g_{tk}`.
    log_component : Tensor ``(N, T, K)``
        :math:`\ell_{tk}`; only read on evidence frames (may hold anything elsewhere).
    label : Tensor ``(N, T)`` int
        Known indicator, ``-1`` = unknown.
    gate_mask : Tensor ``(N, T)`` bool
        Frames where the gate's site exists (input observed, inside the length): a label only
        counts there.
    evidence : Tensor ``(N, T)`` bool
        Frames whose ``y_t`` is observed.

    Returns
    -------
    Tensor ``(N,)``
    """
    known, idx = known_labels(label, gate_mask)
    ev = evidence
    lc = torch.where(ev[..., None], log_component, torch.zeros_like(log_component))
    log_g_known = log_weights.gather(-1, idx[..., None]).squeeze(-1)
    lc_known = lc.gather(-1, idx[..., None]).squeeze(-1)
    summed = torch.logsumexp(log_weights + lc, -1)
    zero = torch.zeros_like(summed)
    frame = torch.where(known, log_g_known + lc_known, torch.where(ev, summed, zero))
    return frame.sum(-1)


def labelled_mixture_responsibilities(
    log_weights: torch.Tensor,
    log_component: torch.Tensor,
    label: torch.Tensor,
    gate_mask: torch.Tensor,
    evidence: torch.Tensor,
) -> torch.Tensor:
    r"""Posterior :math:`p(c_t = k \mid y, x, c^*)` ``(N, T, K)``: one-hot at known labels,
    :math:`\propto g_{tk} e^{\ell_{tk}}` on evidence frames, the gate weights elsewhere (same
    arguments as :func:`labelled_mixture_log_likelihood`)."""
    known, idx = known_labels(label, gate_mask)
    lc = torch.where(evidence[..., None], log_component, torch.zeros_like(log_component))
    post = torch.softmax(log_weights + lc, -1)
    onehot = torch.nn.functional.one_hot(idx, log_weights.shape[-1]).to(post.dtype)
    return torch.where(known[..., None], onehot, post)
