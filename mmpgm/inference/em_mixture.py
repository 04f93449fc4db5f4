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

from ..ops import mixture as ops

__all__ = ["em_posteriors", "em_objective", "fit_em_mixture"]


def em_posteriors(model, data, fw):
    """E-step: ``(r (N, T, M), extra)`` with ``extra = (gamma_1 (N, M), xi (N, T, M, M))`` for the
    Markov gate, ``None`` otherwise; all detached. ``fw`` = ``model._forward(data)``."""
    out, _, avail, log_w = fw
    y, lab = model._target(data)
    ev = model._evidence_mask(data, lab, avail)
    with torch.enable_grad():
        lc = model._component(out, y).detach().requires_grad_(True)
        if model.gate_kind == "markov":
            li = log_w[0].detach().requires_grad_(True)
            lt = log_w[1].detach().requires_grad_(True)
            ll = ops.markov_log_likelihood(li, lt, lc, ev).sum()
            r, g1, xi = torch.autograd.grad(ll, (lc, li, lt))
            return r, (g1, xi)
        lw = log_w.detach()
        ll = ops.mixture_log_likelihood(lw, lc, ev).sum()
        (r,) = torch.autograd.grad(ll, (lc,))
        return r, None


def _finite(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def em_objective(model, data, fw, r, extra, gate_only: bool = False):
    """Expected complete-data log-likelihood minus the penalty (a scalar to maximize)."""
    out, _, avail, log_w = fw
    if model.gate_kind == "markov":
        g1, xi = extra
        q = (g1 * _finite(log_w[0])).sum() + (xi * _finite(log_w[1])).sum()
    else:
        q = (r * _finite(log_w)).sum()
    if not gate_only:
        y, _ = model._target(data)
        q = q + (r * model._component(out, y)).sum()
        pen = model._penalty_frames(data, fw)
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
    iteration, and the wall time.
    """
    if model.gate_kind == "recurrent":
        raise ValueError("gate: EM is implemented for 'conditional' and 'markov', got 'recurrent'")
    for name, v in (("num_iters", num_iters), ("m_steps", m_steps)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
    data = model.check_data(data)
    model.init_from_data(data)
    torch.manual_seed(seed)
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
                fw = model._forward(b)
                r, extra = em_posteriors(model, b, fw)
                ll = model._log_likelihood(b, fw).sum()
                pen = None if gate_only else model._penalty_frames(b, fw)
                total += float(ll - (0.0 if pen is None else pen.sum()))
                frames += float(r.sum())
            scale = max(1.0, float(r.sum()))
            for _ in range(m_steps):
                optim.zero_grad()
                loss = -em_objective(model, b, model._forward(b), r, extra, gate_only) / scale
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 10.0)
                optim.step()
        losses.append(-total / max(frames, 1.0))
    return losses, time.perf_counter() - t0
