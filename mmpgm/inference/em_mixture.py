r"""Generalized EM for the gated mixture (paper Appendix A), for the conditional and Markov gates.

Each iteration, per minibatch:

* **E-step** (no gradient into the networks): the posterior over the expert indicators under the
  current parameters, read off exactly as derivatives of the closed-form log-likelihood
  (Fisher's identity): with the gate log-weights and the component log-likelihoods
  :math:`\ell_{tm} = \log p(y_t \mid c_t = m)` as leaves,
  :math:`r_{tm} = \partial \log p(y \mid x) / \partial \ell_{tm} = p(c_t = m \mid y, x)`, and for
  the Markov gate :math:`\xi_{t,ij} = \partial \log p / \partial \log A_{t,ij} =
  p(c_{t-1} = i, c_t = j \mid y, x)` and
  :math:`\gamma_{1i} = \partial \log p / \partial \log \pi_i`.
* **M-step**: ``m_steps`` Adam steps on the expected complete-data objective
  :math:`Q = \sum r_{tm} \ell_{tm} + \sum \xi_{t,ij} \log A_{t,ij} + \sum \gamma_{1i} \log \pi_i
  - \text{penalty}` (responsibility-weighted expert updates and gate updates as soft-label
  cross-entropies). :math:`Q` has the same gradient as :math:`\log p(y \mid x)` at the E-step's
  parameters, so this is a generalized EM that never needs the enumerated Pyro program.
"""

from __future__ import annotations

import time

import torch

from .._rng import seeded
from .._validation import check_int

__all__ = ["em_posteriors", "em_objective", "fit_em_mixture"]


def em_posteriors(model, data, outputs):
    """E-step: ``(r (N, T, M), extra)`` with ``extra = (gamma_1 (N, M), xi (N, T, M, M))`` for the
    Markov gate, ``None`` otherwise; all detached. ``outputs`` = ``model.forward_outputs(data)``
    (:class:`~mmpgm.models.mixture.MixtureOutputs`), ``data`` checked by ``model.check_data``."""
    scores = model.target_scores(outputs, data)
    return model.gating.posterior_statistics(
        outputs.log_weights, scores.log_component, scores.evidence
    )


def em_objective(model, data, outputs, r, extra, gate_only: bool = False):
    """Expected complete-data log-likelihood minus the penalty (a scalar to maximize), at the
    current ``outputs = model.forward_outputs(data)`` with the E-step's ``(r, extra)``."""
    q = model.gating.expected_log_prior(outputs.log_weights, r, extra)
    if not gate_only:
        scores = model.target_scores(outputs, data)
        q = q + (r * scores.log_component).sum()
        pen = model.frame_penalty(outputs, scores)
        if pen is not None:
            q = q - pen.sum()
    return q


def fit_em_mixture(
    model,
    data,
    *,
    num_iters: int = 20,
    m_steps: int = 5,
    lr: float = 0.01,
    batch_size: int | None = None,
    seed: int = 0,
    gate_only: bool = False,
):
    """Appendix-A EM for a :class:`~mmpgm.models.mixture.GatedMixture` (conditional or Markov gate).

    ``gate_only=True`` keeps the experts fixed (staged training: only the gate's parameters are
    updated, on the gate terms of :math:`Q`). Returns ``(losses, seconds)``: the negative
    log-likelihood per labelled frame (minus penalty when training everything) before each
    iteration, and the wall time. ``data`` is validated once here (``model.check_data``).
    """
    if not model.gating.supports_em:
        raise ValueError(
            f"gate: EM is implemented for 'conditional' and 'markov', got {model.gate_kind!r}"
        )
    check_int("num_iters", num_iters)
    check_int("m_steps", m_steps)
    check_int("seed", seed, minimum=0)
    data = model.check_data(data)
    model.check_training_data(data)
    model.init_from_data(data)
    with seeded(seed, next(model.parameters()).device):
        return _em_loop(
            model,
            data,
            num_iters=num_iters,
            m_steps=m_steps,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            gate_only=gate_only,
        )


def _em_loop(model, data, *, num_iters, m_steps, lr, batch_size, seed, gate_only):
    """The EM iterations of :func:`fit_em_mixture` on checked ``data``."""
    gen = torch.Generator().manual_seed(seed)
    params = list(model.gate.parameters()) if gate_only else list(model.parameters())
    optim = torch.optim.Adam(params, lr=lr)
    N = data.num_sequences
    losses = []
    t0 = time.perf_counter()
    for _ in range(num_iters):
        total, frames = 0.0, 0.0
        batches = (
            [data] if batch_size is None or batch_size >= N else data.batches(batch_size, True, gen)
        )
        for b in batches:
            with torch.no_grad():
                outputs = model.forward_outputs(b)
                scores = model.target_scores(outputs, b)
                r, extra = model.gating.posterior_statistics(
                    outputs.log_weights, scores.log_component, scores.evidence
                )
                ll = model.log_likelihood_from_outputs(outputs, scores).sum()
                pen = None if gate_only else model.frame_penalty(outputs, scores)
                total += float(ll - (0.0 if pen is None else pen.sum()))
                frames += float(r.sum())
            scale = max(1.0, float(r.sum()))
            for _ in range(m_steps):
                optim.zero_grad()
                outputs = model.forward_outputs(b)
                loss = -em_objective(model, b, outputs, r, extra, gate_only) / scale
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                optim.step()
        losses.append(-total / max(frames, 1.0))
    return losses, time.perf_counter() - t0
