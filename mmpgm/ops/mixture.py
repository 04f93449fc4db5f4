r"""Exact likelihoods and posteriors of gated mixtures of experts (torch only).

A gated mixture explains a per-frame target :math:`y_t` by one of ``M`` experts chosen by a
latent indicator :math:`c_t \in \{0..M-1\}`:

.. math::
    p(y_{1:T} \mid x) = \sum_{c_{1:T}} p(c_{1:T} \mid x) \prod_t p(y_t \mid c_t, x_{\le t}).

Two gate structures are handled exactly:

* **conditional** (paper eq. 15/17): the :math:`c_t` are independent given :math:`x`,
  :math:`p(c_t = m \mid x) = g_{tm}`, so :math:`\log p(y \mid x) = \sum_t \log \sum_m g_{tm}
  f_m(y_t)`;
* **Markov** (paper eq. 16): :math:`c_1 \sim \pi(x)`, :math:`c_t \mid c_{t-1} \sim A_t(x)_{c_{t-1},
  \cdot}` with frame-dependent transition matrices; the sum over the :math:`M^T` paths is the
  forward recursion :math:`\alpha_t(j) = f_j(y_t) \sum_i \alpha_{t-1}(i) A_t(i, j)`.

Everything works in the log domain (``logsumexp``), is batched over sequences ``N`` and is
differentiable by autograd. ``log_component[n, t, m]`` :math:`= \log p(y_t \mid c_t = m)`;
frames with ``mask[n, t] = False`` (unlabelled, padding, nothing observed) carry no evidence:
their component factor is replaced by 1. Impossible experts are expressed by very negative
(finite) log-weights such as ``-1e30``, whose ``exp`` is exactly 0; avoid ``-inf`` rows.

Shapes: ``log_weights (N, T, M)``; ``log_initial (N, M)``; ``log_transition (N, T, M, M)``
indexed ``[n, t, old, new]`` (entry ``t = 0`` is unused); ``log_component (N, T, M)``;
``mask (N, T)`` bool. All log-weights/rows must be normalized (``logsumexp = 0``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "MarkovForward",
    "mixture_log_likelihood",
    "mixture_responsibilities",
    "markov_forward",
    "markov_log_likelihood",
    "markov_smooth",
    "markov_prior_marginals",
    "markov_viterbi",
    "markov_sample",
    "masked_log_weights",
    "NEG_LOG",
]

#: Log-weight used for an expert that must get exactly zero weight (``exp`` underflows to 0).
NEG_LOG = -1e30


def _evidence(log_component: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if log_component.dim() != 3:
        raise ValueError(
            f"log_component: expected shape (N, T, M), got {tuple(log_component.shape)}"
        )
    if mask is None:
        return log_component
    if mask.shape != log_component.shape[:2]:
        raise ValueError(
            f"mask: expected shape {tuple(log_component.shape[:2])}, got {tuple(mask.shape)}"
        )
    return torch.where(
        mask[..., None],
        log_component,
        torch.zeros((), dtype=log_component.dtype, device=log_component.device),
    )


def masked_log_weights(logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
    """``log_softmax`` of ``logits (..., M)`` over the experts with ``available (..., M)`` True.

    Unavailable experts get :data:`NEG_LOG` (weight exactly 0). Where no expert is available,
    all are allowed (such frames must then carry no evidence: ``mask`` False).
    """
    none = ~available.any(-1, keepdim=True)
    allow = available | none
    neg = torch.as_tensor(NEG_LOG, dtype=logits.dtype, device=logits.device)
    return torch.log_softmax(torch.where(allow, logits, neg), -1)


# ---------------------------------------------------------------------- conditional gate
def mixture_log_likelihood(log_weights, log_component, mask=None) -> torch.Tensor:
    r""":math:`\sum_t \text{mask}_t \log \sum_m g_{tm} p(y_t \mid c_t = m)`, shape ``(N,)``."""
    lc = _evidence(log_component, mask)
    if log_weights.shape != lc.shape:
        raise ValueError(
            f"log_weights: expected shape {tuple(lc.shape)}, got {tuple(log_weights.shape)}"
        )
    per_frame = torch.logsumexp(log_weights + lc, -1)
    if mask is not None:  # exactly 0 without evidence (not log sum_m g_tm, 0 up to rounding)
        per_frame = torch.where(mask, per_frame, torch.zeros((), dtype=lc.dtype, device=lc.device))
    return per_frame.sum(-1)


def mixture_responsibilities(log_weights, log_component, mask=None) -> torch.Tensor:
    r"""Posterior :math:`p(c_t = m \mid y_t, x) \propto g_{tm} p(y_t \mid m)`, ``(N, T, M)``;
    the prior weights where ``mask`` is False."""
    return torch.softmax(log_weights + _evidence(log_component, mask), -1)


# ---------------------------------------------------------------------- Markov gate
class MarkovForward(NamedTuple):
    """log_likelihood ``(N,)``; log_alpha ``(N, T, M)`` unnormalized forward messages
    :math:`\\log p(y_{\\le t}, c_t)`; filtered ``(N, T, M)`` :math:`p(c_t \\mid y_{\\le t}, x)`."""

    log_likelihood: torch.Tensor
    log_alpha: torch.Tensor
    filtered: torch.Tensor


def _check_markov(log_initial, log_transition, lc):
    N, T, M = lc.shape
    if log_initial.shape != (N, M):
        raise ValueError(f"log_initial: expected shape {(N, M)}, got {tuple(log_initial.shape)}")
    if log_transition.shape != (N, T, M, M):
        raise ValueError(
            f"log_transition: expected shape {(N, T, M, M)}, got {tuple(log_transition.shape)}"
        )


def markov_forward(log_initial, log_transition, log_component, mask=None) -> MarkovForward:
    """Forward recursion over the gate chain (exact, differentiable)."""
    lc = _evidence(log_component, mask)
    _check_markov(log_initial, log_transition, lc)
    T = lc.shape[1]
    alphas = [log_initial + lc[:, 0]]
    for t in range(1, T):
        prev = alphas[-1]
        alphas.append(torch.logsumexp(prev[..., :, None] + log_transition[:, t], -2) + lc[:, t])
    log_alpha = torch.stack(alphas, 1)
    ll = torch.logsumexp(log_alpha[:, -1], -1)
    filtered = torch.softmax(log_alpha, -1)
    return MarkovForward(ll, log_alpha, filtered)


def markov_log_likelihood(log_initial, log_transition, log_component, mask=None) -> torch.Tensor:
    r""":math:`\log p(y_{1:T} \mid x)` summed over all gate paths, ``(N,)``."""
    return markov_forward(log_initial, log_transition, log_component, mask).log_likelihood


def markov_smooth(log_initial, log_transition, log_component, mask=None) -> torch.Tensor:
    r"""Smoothed responsibilities :math:`p(c_t \mid y_{1:T}, x)`, ``(N, T, M)``
    (forward-backward)."""
    lc = _evidence(log_component, mask)
    fw = markov_forward(log_initial, log_transition, lc)
    T = lc.shape[1]
    betas = [torch.zeros_like(lc[:, 0])]
    for t in range(T - 1, 0, -1):
        nxt = lc[:, t] + betas[-1]
        betas.append(torch.logsumexp(log_transition[:, t] + nxt[..., None, :], -1))
    log_beta = torch.stack(betas[::-1], 1)
    return torch.softmax(fw.log_alpha + log_beta, -1)


def markov_prior_marginals(log_initial, log_transition) -> torch.Tensor:
    r"""Prior gate marginals :math:`p(c_t \mid x_{\le t})` (no target evidence), ``(N, T, M)``."""
    N, T, M, _ = log_transition.shape
    lc = torch.zeros(N, T, M, dtype=log_transition.dtype, device=log_transition.device)
    return markov_forward(log_initial, log_transition, lc).filtered


def markov_viterbi(log_initial, log_transition, log_component, mask=None) -> torch.Tensor:
    r"""Most probable gate path :math:`\arg\max_c p(c \mid y, x)`, ``(N, T)`` int64."""
    lc = _evidence(log_component, mask)
    _check_markov(log_initial, log_transition, lc)
    N, T, M = lc.shape
    delta = log_initial + lc[:, 0]
    back = []
    for t in range(1, T):
        scores = delta[..., :, None] + log_transition[:, t]  # (N, old, new)
        delta, arg = scores.max(-2)
        delta = delta + lc[:, t]
        back.append(arg)
    path = torch.empty(N, T, dtype=torch.long, device=lc.device)
    path[:, -1] = delta.argmax(-1)
    for t in range(T - 1, 0, -1):
        path[:, t - 1] = back[t - 1].gather(-1, path[:, t : t + 1])[:, 0]
    return path


def markov_sample(
    log_initial, log_transition, log_component, mask=None, num_samples=1, generator=None
):
    r"""Exact draws :math:`c_{1:T} \sim p(c \mid y, x)` (forward filter, backward sample), ``(S, N,
    T)``."""
    lc = _evidence(log_component, mask)
    fw = markov_forward(log_initial, log_transition, lc)
    N, T, M = lc.shape
    S = num_samples
    out = torch.empty(S, N, T, dtype=torch.long, device=lc.device)
    probs = fw.filtered[:, -1].expand(S, N, M).reshape(S * N, M)
    out[:, :, -1] = torch.multinomial(probs, 1, generator=generator).reshape(S, N)
    for t in range(T - 1, 0, -1):
        nxt = out[:, :, t]  # (S, N)
        trans_col = (
            log_transition[:, t]
            .expand(S, N, M, M)
            .gather(-1, nxt[..., None, None].expand(S, N, M, 1))[..., 0]
        )  # (S, N, old)
        logits = fw.log_alpha[:, t - 1] + trans_col
        p = torch.softmax(logits, -1).reshape(S * N, M)
        out[:, :, t - 1] = torch.multinomial(p, 1, generator=generator).reshape(S, N)
    return out
