"""Typed results of one forward pass of the gated mixture (shapes in each field)."""

from __future__ import annotations

from typing import NamedTuple, Union

import torch

from .gating import MarkovLogWeights

__all__ = ["LogWeights", "MixtureOutputs", "TargetScores"]

LogWeights = Union[torch.Tensor, MarkovLogWeights]


class MixtureOutputs(NamedTuple):
    r"""What the networks give for one batch (:meth:`GatedMixture.forward_outputs`).

    Attributes
    ----------
    expert_outputs : Tensor ``(N, T, M, P)``
        Raw outputs of every expert (``P`` = the head's ``out_dim``).
    hidden : tuple of ``M`` Tensors ``(N, T, H)``
        Each expert's last hidden layer (the co-learning penalty reads its first units).
    available : Tensor ``(N, T, M)`` bool
        Stream ``m`` observed at frame ``t``.
    log_weights : Tensor ``(N, T, M)`` or MarkovLogWeights
        Masked log gate weights (unavailable experts at weight 0); for ``gate="markov"``
        ``(initial (N, M), transition (N, T, M, M))``.
    """

    expert_outputs: torch.Tensor
    hidden: tuple
    available: torch.Tensor
    log_weights: LogWeights


class TargetScores(NamedTuple):
    r"""The target of one batch scored by every expert (:meth:`GatedMixture.target_scores`).

    Attributes
    ----------
    target : Tensor ``(N, T)`` or ``(N, T, F)``
        The label, a valid dummy value at unlabelled frames (ratio mask: NaN at missing bins).
    labelled : Tensor ``(N, T)`` bool
        Labelled frames inside their sequence.
    log_component : Tensor ``(N, T, M)``
        :math:`\ell_{tm} = \log p(y_t \mid c_t = m)`.
    evidence : Tensor ``(N, T)`` bool
        Labelled frames with at least one observed stream (the frames that carry evidence).
    """

    target: torch.Tensor
    labelled: torch.Tensor
    log_component: torch.Tensor
    evidence: torch.Tensor
