r"""Gate inputs that carry evidence of corruption (issue 12, item 3; DESIGN.md section 4.4).

A gate that reads only the (normalized) features has to learn from them, on the training
corpus, what a failing stream looks like; on another corpus the features themselves move and
such a gate stays near equal weights. The reliability inputs are per-stream summaries whose
meaning does not depend on the corpus:

* **novelty** (``"novelty"``): how far frame ``t`` of stream ``m`` lies from a density model of
  clean training features, a diagonal Gaussian :math:`\mathcal N(\mu_m, \mathrm{diag}\,
  \sigma^2_m)` of the model's standardized inputs :math:`\tilde x^m_t` (fit by
  :meth:`ReliabilityInputs.fit`, e.g. on clean data; before that :math:`\mu = 0,
  \sigma = 1`, the training data the standardizer was fit on):

  .. math::
      \nu_{mt} = \log\Big(\frac{1}{D_m}\sum_d \frac{(\tilde x^m_{td} - \mu_{md})^2}
      {\sigma^2_{md}} + 10^{-6}\Big),

  i.e. up to constants :math:`-\tfrac{2}{D_m}\log \mathcal N(\tilde x^m_t)` on a log scale
  (about 0 for typical clean frames). Two gate inputs per stream: :math:`\nu_{mt}` and its
  causal running mean :math:`\bar\nu_{mt} = \bar\nu_{m,t-1} + a_k(\nu_{mt} - \bar\nu_{m,t-1})`,
  :math:`a_k = \max(1/k, 1 - \lambda)` over the observed frames (``novelty_decay``
  :math:`= \lambda`), so a sustained corruption stands out from one odd frame.
* **disagreement** (``"disagreement"``, Bernoulli head): :math:`\delta_{mt} = |p_{mt} -
  \bar p_{-m,t}|`, expert ``m``'s :math:`p(y_t = 1)` against the mean of the other observed
  experts (0 when none is observed), computed from detached expert outputs.

Unobserved frames of a stream give 0 in its columns. Everything is causal (frame ``t`` reads
frames ``<= t``).

:class:`ReliabilityGate` adds a linear map of these inputs to the logits of the gate network
(zero at initialization, so the gate starts as the plain one):
:math:`\mathrm{logits}_t = g(x_{\le t}) + W r_t + b`; for the Markov gate :math:`W r_t` is added
to the initial logits and to every transition row's logit of the *new* expert. Linear in
:math:`r_t`, so a gate that lowers a stream's weight where its novelty is high on one corpus
does so on another; with ``"features"`` left out of ``gate_inputs`` the gate network sees
zeros and the gate is :math:`\mathrm{softmax}(c + W r_t)` alone.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["GATE_INPUTS", "ReliabilityGate", "ReliabilityInputs", "check_gate_inputs"]

#: The values of ``GatedMixture(gate_inputs=...)``.
GATE_INPUTS = ("features", "novelty", "disagreement")


def check_gate_inputs(gate_inputs, head: str) -> tuple:
    """``gate_inputs`` as a tuple of distinct names from :data:`GATE_INPUTS`, in that order
    (ValueError / TypeError naming the argument otherwise)."""
    if isinstance(gate_inputs, str):
        gate_inputs = (gate_inputs,)
    try:
        items = tuple(gate_inputs)
    except TypeError:
        raise TypeError(
            f"gate_inputs: expected names from {GATE_INPUTS}, got {gate_inputs!r}"
        ) from None
    bad = [g for g in items if g not in GATE_INPUTS]
    if not items or bad or len(set(items)) != len(items):
        raise ValueError(
            f"gate_inputs: expected distinct names from {GATE_INPUTS}, got {gate_inputs!r}"
        )
    if "disagreement" in items and head != "bernoulli":
        raise ValueError(
            f"gate_inputs: 'disagreement' needs head='bernoulli', got head={head!r}"
        )
    return tuple(g for g in GATE_INPUTS if g in items)


def _running_mean(x: torch.Tensor, obs: torch.Tensor, decay: float) -> torch.Tensor:
    """Causal running mean of ``x (N, T, K)`` over the frames where ``obs (N, T, K)`` (0
    elsewhere): weights :math:`a_k = \\max(1/k, 1 - \\lambda)`."""
    N, T, K = x.shape
    m = torch.zeros(N, K, dtype=x.dtype, device=x.device)
    k = torch.zeros(N, K, dtype=x.dtype, device=x.device)
    out = torch.zeros_like(x)
    for t in range(T):
        o = obs[:, t]
        k = k + o.to(x.dtype)
        a = torch.clamp(1.0 / k.clamp_min(1.0), min=1.0 - decay)
        m = torch.where(o, m + a * (x[:, t] - m), m)
        out[:, t] = torch.where(o, m, torch.zeros_like(m))
    return out


class ReliabilityInputs(nn.Module):
    r"""The reliability inputs :math:`r_t` of the module docstring, ``(N, T, R)``.

    Parameters
    ----------
    obs_dims : sequence of int
        :math:`D_m` of the ``M`` streams, in the model's order.
    inputs : tuple of str
        From :data:`GATE_INPUTS` (``"features"`` is the gate network's business, not this
        module's).
    novelty_decay : float in (0, 1]
        :math:`\lambda` of the running mean of the novelty.

    Attributes
    ----------
    num_inputs : int
        ``R = 2 M`` with novelty, plus ``M`` with disagreement.
    """

    def __init__(self, obs_dims, inputs, novelty_decay: float = 0.9):
        super().__init__()
        self.novelty = "novelty" in inputs
        self.disagreement = "disagreement" in inputs
        self.decay = float(novelty_decay)
        M = len(obs_dims)
        for i, d in enumerate(obs_dims):
            self.register_buffer(f"mean_{i}", torch.zeros(d))
            self.register_buffer(f"var_{i}", torch.ones(d))
        self.register_buffer("fitted", torch.tensor(False))
        self.num_streams = M
        self.num_inputs = 2 * M * self.novelty + M * self.disagreement

    @torch.no_grad()
    def fit(self, xs, masks, var_floor: float = 1e-3) -> None:
        r"""Fit the clean-feature density: per stream the mean and variance of the standardized
        inputs ``xs`` (``M`` x ``(N, T, D_m)``) over the observed frames ``masks``
        (``M`` x ``(N, T)`` bool); variances floored at ``var_floor``."""
        for i, (x, mk) in enumerate(zip(xs, masks, strict=True)):
            v = x[mk]
            if v.shape[0] < 2:
                raise ValueError(f"novelty density: stream {i} has fewer than 2 observed frames")
            getattr(self, f"mean_{i}").copy_(v.mean(0))
            getattr(self, f"var_{i}").copy_(v.var(0).clamp_min(var_floor))
        self.fitted.fill_(True)

    def novelty_scores(self, xs, masks) -> torch.Tensor:
        r""":math:`\nu_{mt}` ``(N, T, M)``, 0 at unobserved frames."""
        cols = []
        for i, (x, mk) in enumerate(zip(xs, masks, strict=True)):
            mu, var = getattr(self, f"mean_{i}"), getattr(self, f"var_{i}")
            z2 = ((x - mu.to(x.dtype)) ** 2 / var.to(x.dtype)).mean(-1)
            nu = torch.log(z2 + 1e-6)
            cols.append(torch.where(mk, nu, torch.zeros_like(nu)))
        return torch.stack(cols, -1)

    def forward(self, xs, masks, expert_probs=None) -> torch.Tensor:
        r"""``r (N, T, R)`` from the standardized inputs ``xs`` (unobserved frames zeroed),
        ``masks`` and, for disagreement, the experts' :math:`p(y_t = 1)` ``(N, T, M)``."""
        avail = torch.stack(masks, -1)
        cols = []
        if self.novelty:
            nu = self.novelty_scores(xs, masks)
            cols += [nu, _running_mean(nu, avail, self.decay)]
        if self.disagreement:
            if expert_probs is None:
                raise ValueError("expert_probs: the disagreement input needs the experts' outputs")
            p = expert_probs.detach().to(xs[0].dtype)
            w = avail.to(p.dtype)
            tot, cnt = (p * w).sum(-1, keepdim=True), w.sum(-1, keepdim=True)
            others = (tot - p * w) / (cnt - w).clamp_min(1.0)
            has = (cnt - w) > 0
            d = torch.where(avail & has, (p - others).abs(), torch.zeros_like(p))
            cols.append(d)
        return torch.cat(cols, -1)


class ReliabilityGate(nn.Module):
    """A gate network plus a linear map of the reliability inputs added to its logits.

    ``forward(xs, masks, r)``: ``base(xs, masks)`` (logits ``(N, T, M)``, or the Markov pair
    ``(initial (N, M), transition (N, T, M, M))``) plus ``W r_t + b`` (``(N, T, M)``; for the
    Markov gate added to ``initial`` at ``t = 0`` and to the new-expert axis of every
    transition row). ``W`` and ``b`` start at zero.
    """

    def __init__(self, base: nn.Module, num_inputs: int, num_experts: int, markov: bool):
        super().__init__()
        self.base = base
        self.markov = markov
        self.reliability = nn.Linear(num_inputs, num_experts)
        nn.init.zeros_(self.reliability.weight)
        nn.init.zeros_(self.reliability.bias)

    def forward(self, xs, masks, r):
        logits = self.base(xs, masks)
        u = self.reliability(r)
        if self.markov:
            initial, transition = logits
            return initial + u[:, 0], transition + u[:, :, None, :]
        return logits + u
