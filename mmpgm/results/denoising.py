r"""Result types of the denoising pipeline (:mod:`mmpgm.models.denoising`, paper section 6.4)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

__all__ = ["DenoisedResult", "DenoisingPosterior", "FinetuneResult"]


class DenoisedResult(NamedTuple):
    r"""What the gated denoisers make of noisy items ``x (..., D)``.

    Attributes
    ----------
    gate_weights : Tensor ``(..., K)``
        :math:`g_k(x) = p(c = k \mid x)`, the gate's choice of denoiser.
    per_expert : Tensor ``(..., K, D)``
        :math:`f_k(x)`, every denoiser's output.
    mixed : Tensor ``(..., D)``
        :math:`\sum_k g_k(x) f_k(x)`, the gate-weighted denoised item.
    """

    gate_weights: torch.Tensor
    per_expert: torch.Tensor
    mixed: torch.Tensor


class DenoisingPosterior(NamedTuple):
    r"""Posterior of the denoiser indicator :math:`c_t` of every frame.

    Attributes
    ----------
    gate_weights : Tensor ``(N, T, K)``
        Prior :math:`p(c_t \mid x_t)` (the gate).
    responsibilities : Tensor ``(N, T, K)``
        :math:`p(c_t \mid x_t, y_t, c^*_t)`: one-hot where the noise type is known,
        :math:`\propto g_{tk}\,\mathcal N(y_t; f_k(x_t), \sigma_k^2)` where the clean item is
        observed, the gate weights elsewhere.
    per_expert : Tensor ``(N, T, K, D)``
        :math:`f_k(x_t)`.
    mixed : Tensor ``(N, T, D)``
        :math:`\sum_k g_{tk} f_k(x_t)`.
    map : Tensor ``(N, T)`` int64 or None
        Most probable indicator (argmax of the responsibilities).
    samples : Tensor ``(S, N, T)`` int64 or None
        Exact draws from the responsibilities.
    log_likelihood : Tensor ``(N,)``
        :math:`\log p(y, c^*_{\mathcal K} \mid x)` (exact, indicators summed out where unknown).
    """

    gate_weights: torch.Tensor
    responsibilities: torch.Tensor
    per_expert: torch.Tensor
    mixed: torch.Tensor
    map: torch.Tensor | None
    samples: torch.Tensor | None
    log_likelihood: torch.Tensor


class FinetuneResult(NamedTuple):
    r"""Outcome of :func:`mmpgm.models.denoising.finetune_into_embedding`.

    Attributes
    ----------
    losses : ndarray ``(num_steps_run,)``
        The objective at each step (of the step's minibatch, before its update): the mean
        squared embedding distance :math:`\lVert \hat G - G_0(y) \rVert^2` per item, plus the
        ``denoise_weight`` term when it is on.
    num_steps : int
        Steps run.
    converged : bool
        Stopped early on a plateau.
    initial_distance, final_distance : float
        Mean squared embedding distance over all items before and after fine-tuning (the
        embedding term only).
    train : str
        Which parts were trained (``"denoiser"``, ``"encoder"`` or ``"both"``).
    wall_time : float
        Seconds.
    """

    losses: np.ndarray
    num_steps: int
    converged: bool
    initial_distance: float
    final_distance: float
    train: str
    wall_time: float
