r"""Causal temporal smoothing of per-frame binary posteriors with a two-state Markov chain over
the label (the hybrid HMM / neural-network decoder, Bourlard and Morgan 1994; torch only).

A frame classifier gives :math:`p_t = p(y_t = 1 \mid x_t)` (from a network trained with the
label frequency :math:`\pi = p(y = 1)` of its training data); the label itself moves slowly
(speech and pauses last many frames). Dividing by the prior turns :math:`p_t` into a scaled
likelihood, :math:`p(x_t \mid y_t = k) \propto p(y_t = k \mid x_t) / p(y = k)`, which a
chain with transition matrix :math:`A` (``[old, new]``) filters forward:

.. math::
    \alpha_t(k) \propto \frac{p(y_t = k \mid x_t)}{p(y = k)} \sum_j \alpha_{t-1}(j) A_{jk},
    \qquad \alpha_1(k) \propto p(y_t = k \mid x_t),

:math:`\alpha_t(1) = p(y_t = 1 \mid x_{\le t})`. Causal (frame ``t`` reads frames ``<= t``).
The chain's statistics come from *labels* (e.g. of the training corpus,
:func:`label_transitions`), not from the classifier.

Shapes: ``posterior (N, T)``, ``frames (N, T)`` bool, ``transition (2, 2)``.
"""

from __future__ import annotations

import torch

__all__ = ["label_transitions", "filter_binary_posterior"]

_EPS = 1e-6


def label_transitions(labels: torch.Tensor, frames: torch.Tensor | None = None,
                      pseudo_count: float = 1.0) -> tuple[torch.Tensor, float]:
    r"""Transition matrix ``(2, 2)`` (rows ``old``, columns ``new``) and speech prior
    :math:`\pi` of binary ``labels (N, T)`` (-1 = unlabelled; ``frames (N, T)`` bool, the
    frames inside the sequences), with ``pseudo_count`` added to every transition count.
    Pairs with an unlabelled or outside frame are skipped."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2:
        raise ValueError("labels: expected a tensor (N, T) of 0 / 1 / -1")
    if frames is None:
        frames = torch.ones(labels.shape, dtype=torch.bool, device=labels.device)
    if not isinstance(frames, torch.Tensor) or frames.shape != labels.shape:
        raise ValueError(f"frames: expected a bool tensor of shape {tuple(labels.shape)}")
    if isinstance(pseudo_count, bool) or not isinstance(pseudo_count, (int, float)) or not (
        pseudo_count >= 0
    ):
        raise ValueError(f"pseudo_count: expected a non-negative number, got {pseudo_count!r}")
    ok = (labels >= 0) & frames.bool()
    if not bool(ok.any()):
        raise ValueError("labels: no labelled frame")
    y = labels.long().clamp_min(0)
    pair = ok[:, 1:] & ok[:, :-1]
    counts = torch.full((2, 2), float(pseudo_count), dtype=torch.float64)
    for i in range(2):
        for j in range(2):
            counts[i, j] += float((pair & (y[:, :-1] == i) & (y[:, 1:] == j)).sum())
    if not bool((counts.sum(1) > 0).all()):
        raise ValueError("labels: a class never starts a transition; use pseudo_count > 0")
    prior = float((y[ok] == 1).double().mean())
    return counts / counts.sum(1, keepdim=True), prior


def filter_binary_posterior(posterior: torch.Tensor, transition: torch.Tensor, prior: float,
                            frames: torch.Tensor | None = None) -> torch.Tensor:
    r"""Forward-filter ``posterior (N, T)`` (per-frame :math:`p(y_t = 1 \mid x_t)`) with the
    two-state chain ``transition (2, 2)`` and the classifier's training prior ``prior``
    :math:`\pi \in (0, 1)` (see the module docstring).

    Returns
    -------
    Tensor ``(N, T)``
        :math:`p(y_t = 1 \mid x_{\le t})`; frames outside ``frames`` keep the filter state
        unchanged and give 0.
    """
    if not isinstance(posterior, torch.Tensor) or posterior.dim() != 2:
        raise ValueError("posterior: expected a tensor (N, T) of probabilities")
    N, T = posterior.shape
    if frames is None:
        frames = torch.ones(N, T, dtype=torch.bool, device=posterior.device)
    if not isinstance(frames, torch.Tensor) or frames.shape != (N, T):
        raise ValueError(f"frames: expected a bool tensor of shape {(N, T)}")
    A = torch.as_tensor(transition, dtype=posterior.dtype, device=posterior.device)
    if A.shape != (2, 2) or bool((A < 0).any()) or not torch.allclose(
        A.sum(1), torch.ones(2, dtype=A.dtype, device=A.device), atol=1e-6
    ):
        raise ValueError("transition: expected a (2, 2) row-stochastic matrix")
    if isinstance(prior, bool) or not isinstance(prior, (int, float)) or not 0 < prior < 1:
        raise ValueError(f"prior: expected a number in (0, 1), got {prior!r}")
    fr = frames.bool()
    p = posterior.clamp(_EPS, 1 - _EPS)
    scaled = torch.stack([(1 - p) / (1 - prior), p / prior], -1)  # (N, T, 2)
    start = torch.tensor([1 - prior, prior], dtype=p.dtype, device=p.device).expand(N, 2)
    alpha = start
    started = torch.zeros(N, dtype=torch.bool, device=p.device)
    out = torch.zeros_like(p)
    for t in range(T):
        pred = torch.where(started[:, None], alpha @ A, start)  # the first frame: alpha_1 = p_1
        a = pred * scaled[:, t]
        a = a / a.sum(-1, keepdim=True)
        o = fr[:, t]
        alpha = torch.where(o[:, None], a, alpha)
        started = started | o
        out[:, t] = torch.where(o, a[:, 1], torch.zeros_like(a[:, 1]))
    return out
