r"""Label-free reliability of experts from their agreement: per-sequence Dawid-Skene EM (torch
only).

``M`` experts each give :math:`v_{mt} = p_m(y_t = 1) \in [0, 1]` on every frame of a sequence;
the true binary label :math:`y_t` is unknown. Dawid and Skene (1979) treat :math:`y_t` as a
latent variable and every expert as a noisy annotator with its own *sensitivity*
:math:`s_m = p(\text{vote } 1 \mid y = 1)` and *specificity* :math:`c_m = p(\text{vote } 0
\mid y = 0)`, the votes conditionally independent given :math:`y_t`. Here the votes are soft
(the expert's probability is a fractional vote) and every parameter is estimated **per
sequence**, on the sequence itself, so the reliabilities adapt to a new corpus (or a new
noise, a new face) without labels:

.. math::
    y_t \sim \mathrm{Bernoulli}(\pi), \qquad
    \log p(v_t \mid y_t = 1) = \sum_m w_{tm}\big[v_{mt}\log s_m + (1 - v_{mt})\log(1 - s_m)\big],

    \log p(v_t \mid y_t = 0) = \sum_m w_{tm}\big[v_{mt}\log(1 - c_m) + (1 - v_{mt})\log c_m\big],

with optional per-frame weights :math:`w_{tm} \ge 0` (default 1; 0 where expert ``m`` is not
available): a tempered likelihood in which frame ``t`` counts expert ``m``'s vote
:math:`w_{tm}` times (e.g. ``M`` times a gate's weight). EM on
:math:`\sum_t \log \sum_y p(y)\,p(v_t \mid y)`:

* E-step: :math:`q_t = p(y_t = 1 \mid v_t) = \sigma\big(\operatorname{logit}\pi + \sum_m
  \lambda_{tm}\big)` with the per-expert log-likelihood ratios :math:`\lambda_{tm} =
  w_{tm}\big[v_{mt}\log\frac{s_m}{1 - c_m} + (1 - v_{mt})\log\frac{1 - s_m}{c_m}\big]`;
* M-step (MAP under Beta priors of mean ``prior_accuracy`` for :math:`s_m, c_m` and 1/2 for
  :math:`\pi`, each worth ``prior_strength`` pseudo-frames):
  :math:`s_m = \frac{\sum_t w_{tm} q_t v_{mt} + \kappa a}{\sum_t w_{tm} q_t + \kappa}`,
  :math:`c_m = \frac{\sum_t w_{tm} (1 - q_t)(1 - v_{mt}) + \kappa a}{\sum_t w_{tm}(1 - q_t) +
  \kappa}`, :math:`\pi = \frac{\sum_t q_t + \kappa/2}{T_n + \kappa}`.

EM starts from the weighted mix :math:`q_t = \sum_m w_{tm} v_{mt} / \sum_m w_{tm}` (the
equal-weight mix by default; an M-step first), which puts it in the basin where the experts
are better than chance (the labels are not switched). An expert that disagrees with the
others gets :math:`s_m + c_m \to 1` and log-likelihood ratios near 0: it is ignored on that
sequence. An expert that says "speech" on every frame (audio under babble) gets a high
:math:`s_m` and a low :math:`c_m`: its "1" votes carry little, its "0" votes much.

The estimate uses the whole sequence (it is **per utterance, not causal**: frame ``t``'s
reliabilities read frames after ``t``). Errors that are correlated between experts (two
video experts under one patch) break the independence assumption; they are then counted as
agreement.

Shapes: ``probs (N, T, M)``, ``available (N, T, M)`` bool, ``frames (N, T)`` bool,
``weights (N, T, M)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = ["AgreementPosterior", "dawid_skene"]

_EPS = 1e-6


class AgreementPosterior(NamedTuple):
    r"""What :func:`dawid_skene` estimated, per sequence.

    Attributes
    ----------
    posterior : Tensor ``(N, T)``
        :math:`q_t = p(y_t = 1 \mid v_t, \hat\theta_n)`; 0 on frames outside ``frames``.
    log_odds : Tensor ``(N, T, M)``
        :math:`\lambda_{tm}`, expert ``m``'s contribution to :math:`\operatorname{logit} q_t`
        (0 where not available or outside ``frames``).
    sensitivity : Tensor ``(N, M)``
        :math:`s_m = p(\text{vote } 1 \mid y = 1)`.
    specificity : Tensor ``(N, M)``
        :math:`c_m = p(\text{vote } 0 \mid y = 0)`.
    prior : Tensor ``(N,)``
        :math:`\pi = p(y_t = 1)`.
    log_likelihood : Tensor ``(N,)``
        :math:`\sum_t \log \sum_y p(y)\,p(v_t \mid y)` at the estimate (without the prior terms).
    num_iters : int
        EM iterations run.
    """

    posterior: torch.Tensor
    log_odds: torch.Tensor
    sensitivity: torch.Tensor
    specificity: torch.Tensor
    prior: torch.Tensor
    log_likelihood: torch.Tensor
    num_iters: int


def _check(probs, available, frames, weights, num_iters, prior_strength, prior_accuracy, tol):
    if not isinstance(probs, torch.Tensor) or probs.dim() != 3 or not probs.is_floating_point():
        raise ValueError(
            "probs: expected a floating tensor (N, T, M), got "
            f"{tuple(probs.shape) if isinstance(probs, torch.Tensor) else type(probs).__name__}"
        )
    N, T, M = probs.shape
    if M < 2:
        raise ValueError(f"probs: expected at least 2 experts (M >= 2), got M={M}")
    if available is None:
        available = torch.ones(N, T, M, dtype=torch.bool, device=probs.device)
    if not isinstance(available, torch.Tensor) or available.shape != probs.shape:
        raise ValueError(f"available: expected a bool tensor of shape {tuple(probs.shape)}")
    if frames is None:
        frames = torch.ones(N, T, dtype=torch.bool, device=probs.device)
    if not isinstance(frames, torch.Tensor) or frames.shape != (N, T):
        raise ValueError(f"frames: expected a bool tensor of shape {(N, T)}")
    available = available.bool() & frames.bool()[..., None]
    ok = torch.where(available, probs, torch.full_like(probs, 0.5))
    if bool(torch.isnan(ok).any()) or bool(((ok < 0) | (ok > 1)).any()):
        raise ValueError("probs: expected probabilities in [0, 1] on the available frames")
    if weights is None:
        weights = torch.ones_like(probs)
    if not isinstance(weights, torch.Tensor) or weights.shape != probs.shape:
        raise ValueError(f"weights: expected a tensor of shape {tuple(probs.shape)}")
    w = torch.where(available, weights.to(probs.dtype), torch.zeros_like(probs))
    if bool(torch.isnan(w).any()) or bool((w < 0).any()):
        raise ValueError("weights: expected non-negative weights on the available frames")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or num_iters < 1:
        raise ValueError(f"num_iters: expected a positive int, got {num_iters!r}")
    for name, v, lo, hi in (
        ("prior_strength", prior_strength, 0.0, float("inf")),
        ("prior_accuracy", prior_accuracy, 0.0, 1.0),
        ("tol", tol, 0.0, float("inf")),
    ):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise ValueError(f"{name}: expected a number in [{lo}, {hi}], got {v!r}")
    if not 0.0 < prior_accuracy < 1.0:
        raise ValueError(f"prior_accuracy: expected a number in (0, 1), got {prior_accuracy!r}")
    return ok.clamp(0.0, 1.0), available, frames.bool(), w


def dawid_skene(
    probs: torch.Tensor,
    available: torch.Tensor | None = None,
    frames: torch.Tensor | None = None,
    *,
    weights: torch.Tensor | None = None,
    num_iters: int = 100,
    prior_strength: float = 5.0,
    prior_accuracy: float = 0.7,
    tol: float = 1e-6,
) -> AgreementPosterior:
    r"""Per-sequence Dawid-Skene EM over soft binary votes (see the module docstring).

    Parameters
    ----------
    probs : Tensor ``(N, T, M)``
        Every expert's :math:`p(y_t = 1)` (the soft votes :math:`v_{mt}`).
    available : bool Tensor ``(N, T, M)``, optional
        Expert ``m`` gives a vote at frame ``t`` (default: all).
    frames : bool Tensor ``(N, T)``, optional
        Frames inside the sequence (default: all); the others carry no vote.
    weights : Tensor ``(N, T, M)``, optional
        :math:`w_{tm} \ge 0`, how many times expert ``m``'s vote counts at frame ``t``
        (default 1).
    num_iters : int
        Most EM iterations; stops earlier when no :math:`q_t` moves by more than ``tol``.
    prior_strength : float
        :math:`\kappa \ge 0`, pseudo-frames of the Beta priors (0: maximum likelihood).
    prior_accuracy : float in (0, 1)
        :math:`a`, the prior mean of every sensitivity and specificity.
    tol : float
        Convergence tolerance on :math:`q_t`.

    Returns
    -------
    AgreementPosterior
    """
    v, avail, frames, w = _check(
        probs, available, frames, weights, num_iters, prior_strength, prior_accuracy, tol
    )
    kappa, a = float(prior_strength), float(prior_accuracy)
    fr = frames.to(v.dtype)
    cnt = w.sum(-1)
    q = torch.where(cnt > 0, (v * w).sum(-1) / cnt.clamp_min(_EPS), torch.full_like(cnt, 0.5))
    q = q * fr
    n_frames = fr.sum(-1)

    def m_step(q):
        qe = q[..., None]
        s = ((w * qe * v).sum(1) + kappa * a) / ((w * qe).sum(1) + kappa).clamp_min(_EPS)
        c = ((w * (1 - qe) * (1 - v)).sum(1) + kappa * a) / (
            (w * (1 - qe)).sum(1) + kappa
        ).clamp_min(_EPS)
        pi = ((q * fr).sum(-1) + kappa / 2) / (n_frames + kappa).clamp_min(_EPS)
        lim = (_EPS, 1 - _EPS)
        return s.clamp(*lim), c.clamp(*lim), pi.clamp(*lim)

    def e_step(s, c, pi):
        s_, c_ = s[:, None, :], c[:, None, :]
        l1 = w * (v * torch.log(s_) + (1 - v) * torch.log1p(-s_))
        l0 = w * (v * torch.log1p(-c_) + (1 - v) * torch.log(c_))
        lam = l1 - l0
        lp1 = torch.log(pi)[:, None] + l1.sum(-1)
        lp0 = torch.log1p(-pi)[:, None] + l0.sum(-1)
        ll = (torch.logaddexp(lp1, lp0) * fr).sum(-1)
        return torch.sigmoid(lp1 - lp0) * fr, lam * fr[..., None], ll

    done = 0
    while done < num_iters:
        s, c, pi = m_step(q)
        q_new, lam, ll = e_step(s, c, pi)
        done += 1
        moved = float((q_new - q).abs().max()) if q.numel() else 0.0
        q = q_new
        if moved <= tol:
            break
    return AgreementPosterior(q, lam, s, c, pi, ll, done)
