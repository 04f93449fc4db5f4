r"""Gate structures of the gated mixture: how the expert indicators :math:`c_t` are distributed.

One gating object is chosen from the constructor's ``gate=`` string (:func:`make_gating`); the
model never looks at the string again. The objects hold no parameters (the gate *network* is
``model.gate``, built by :meth:`network`); they turn the network's logits into masked log
gate weights and wrap the exact sums over :math:`c` of :mod:`mmpgm.ops.mixture`:

* :class:`ConditionalGating` (eq. 17) and :class:`RecurrentGating` (eq. 15, a GRU gate): the
  :math:`c_t` are independent given :math:`x`, log weights ``(N, T, M)``;
* :class:`MarkovGating` (eq. 16): a chain :math:`c_1 \sim \pi(x)`,
  :math:`c_t \mid c_{t-1} \sim A_t(x)_{c_{t-1}, \cdot}`, log weights
  :class:`MarkovLogWeights` (``initial (N, M)``, ``transition (N, T, M, M)`` indexed
  ``[n, t, old, new]``).

Shapes everywhere: ``log_component (N, T, M)`` :math:`= \log p(y_t \mid c_t = m)`,
``evidence (N, T)`` bool (frames without evidence contribute a factor 1), ``available (N, T, M)``
bool (expert ``m``'s stream observed; unavailable experts get weight exactly 0).
"""

from __future__ import annotations

from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.ops.indexing import Vindex

from ..._validation import check_choice
from ...nn.gates import ConditionalGate, MarkovGate
from ...ops import mixture as ops

__all__ = [
    "GATES",
    "ConditionalGating",
    "MarkovGating",
    "MarkovLogWeights",
    "RecurrentGating",
    "make_gating",
]

_ENUM = {"enumerate": "parallel"}


class MarkovLogWeights(NamedTuple):
    r"""Log gate weights of the Markov gate: ``initial (N, M)`` :math:`\log p(c_1 \mid x)` and
    ``transition (N, T, M, M)`` :math:`\log p(c_t = j \mid c_{t-1} = i, x_{\le t})` at
    ``[n, t, i, j]`` (entry ``t = 0`` unused); every row normalized."""

    initial: torch.Tensor
    transition: torch.Tensor


def _finite(x):
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


class ConditionalGating:
    r"""Independent indicators, :math:`p(c_t = m \mid x) = g_{tm}` (eq. 17: an MLP gate)."""

    name = "conditional"
    recurrent_network = False
    #: Plates of the enumerated program: ``sequences`` (dim -2) and ``time`` (dim -1).
    max_plate_nesting = 2
    sequence_dim = -2
    #: The Appendix-A EM (:mod:`mmpgm.inference.em_mixture`) is written for this gate.
    supports_em = True

    def network(self, in_dims, hidden_dim, context, recurrent, stickiness) -> ConditionalGate:
        """The gate network (``recurrent`` and ``stickiness`` are Markov-gate options)."""
        return ConditionalGate(in_dims, hidden_dim, context, recurrent=self.recurrent_network)

    def log_weights(self, logits: torch.Tensor, available: torch.Tensor) -> torch.Tensor:
        """``logits (N, T, M)`` -> log weights ``(N, T, M)``, unavailable experts at
        :data:`mmpgm.ops.mixture.NEG_LOG`."""
        return ops.masked_log_weights(logits, available)

    def log_likelihood(self, log_weights, log_component, evidence) -> torch.Tensor:
        r""":math:`\sum_t \log \sum_m g_{tm} p(y_t \mid c_t = m)` over the evidence frames,
        ``(N,)``."""
        return ops.mixture_log_likelihood(log_weights, log_component, evidence)

    def prior_weights(self, log_weights) -> torch.Tensor:
        r"""Prior gate weights :math:`p(c_t \mid x_{\le t})`, ``(N, T, M)``."""
        return log_weights.exp()

    def responsibilities(self, log_weights, log_component, evidence, causal: bool):
        r""":math:`p(c_t \mid y, x)` ``(N, T, M)`` (the same filtered or smoothed: the
        :math:`c_t` are independent)."""
        return ops.mixture_responsibilities(log_weights, log_component, evidence)

    def map_path(self, log_weights, log_component, evidence) -> torch.Tensor:
        """Most probable indicators ``(N, T)`` int64."""
        return ops.mixture_responsibilities(log_weights, log_component, evidence).argmax(-1)

    def sample(self, log_weights, log_component, evidence, num_samples: int, generator=None):
        r"""Exact draws :math:`c \sim p(c \mid y, x)`, ``(S, N, T)`` int64."""
        resp = ops.mixture_responsibilities(log_weights, log_component, evidence)
        N, T, M = resp.shape
        draws = torch.multinomial(
            resp.reshape(-1, M), num_samples, replacement=True, generator=generator
        )
        return draws.T.reshape(num_samples, N, T)

    def posterior_statistics(self, log_weights, log_component, evidence):
        r"""E-step of the Appendix-A EM, all detached: ``(r (N, T, M), pairwise)`` with
        :math:`r_{tm} = p(c_t = m \mid y, x)` on the evidence frames (0 elsewhere), read off by
        Fisher's identity as :math:`\partial \log p(y \mid x) / \partial \ell_{tm}`;
        ``pairwise`` is None (no chain)."""
        with torch.enable_grad():
            lc = log_component.detach().requires_grad_(True)
            ll = self.log_likelihood(log_weights.detach(), lc, evidence).sum()
            (r,) = torch.autograd.grad(ll, (lc,))
        return r, None

    def expected_log_prior(self, log_weights, responsibilities, pairwise) -> torch.Tensor:
        r""":math:`\sum_{t,m} r_{tm} \log g_{tm}` (the gate terms of the EM objective ``Q``)."""
        return (responsibilities * _finite(log_weights)).sum()

    def sample_program(
        self, sequences, log_weights, head, outputs, y, bins, evidence, penalty
    ) -> None:
        """The enumerated Pyro program: one vectorized site ``expert`` in the ``sequences``
        (dim -2) and ``time`` (dim -1) plates, the target ``y`` observed under
        ``poutine.mask(evidence)``, the per-frame ``penalty (N, T)`` as a factor."""
        with sequences, pyro.plate("time", y.shape[1], dim=-1):
            c = pyro.sample("expert", dist.Categorical(logits=log_weights), infer=_ENUM)
            with poutine.mask(mask=evidence):
                pyro.sample("y", head.distribution(outputs, c, bins), obs=y)
            if penalty is not None:
                pyro.factor("penalty", -penalty)


class RecurrentGating(ConditionalGating):
    r"""Independent indicators whose weights read a causal GRU state :math:`h'_t` over
    :math:`x_{\le t}` (eq. 15). The Appendix-A EM is not offered for it."""

    name = "recurrent"
    recurrent_network = True
    supports_em = False


class MarkovGating:
    r"""A Markov chain over the experts whose transition rows the gate network modulates
    (eq. 16)."""

    name = "markov"
    #: Plates of the enumerated program: ``sequences`` (dim -1) around ``pyro.markov`` steps.
    max_plate_nesting = 1
    sequence_dim = -1
    supports_em = True

    def network(self, in_dims, hidden_dim, context, recurrent, stickiness) -> MarkovGate:
        return MarkovGate(in_dims, hidden_dim, context, recurrent, stickiness)

    def log_weights(self, logits, available) -> MarkovLogWeights:
        """``logits = (initial (N, M), transition (N, T, M, M))`` -> :class:`MarkovLogWeights`;
        a row gives weight 0 to the experts unavailable at its (new) frame."""
        init_logits, trans_logits = logits
        return MarkovLogWeights(
            ops.masked_log_weights(init_logits, available[:, 0]),
            ops.masked_log_weights(trans_logits, available[:, :, None, :]),
        )

    def log_likelihood(self, log_weights, log_component, evidence) -> torch.Tensor:
        """The forward algorithm over the chain, ``(N,)``."""
        return ops.markov_log_likelihood(*log_weights, log_component, evidence)

    def prior_weights(self, log_weights) -> torch.Tensor:
        return ops.markov_prior_marginals(*log_weights)

    def responsibilities(self, log_weights, log_component, evidence, causal: bool):
        """Filtered :math:`p(c_t \\mid y_{\\le t}, x)` (``causal``) or smoothed, ``(N, T, M)``."""
        if causal:
            return ops.markov_forward(*log_weights, log_component, evidence).filtered
        return ops.markov_smooth(*log_weights, log_component, evidence)

    def map_path(self, log_weights, log_component, evidence) -> torch.Tensor:
        """The Viterbi path ``(N, T)`` int64."""
        return ops.markov_viterbi(*log_weights, log_component, evidence)

    def sample(self, log_weights, log_component, evidence, num_samples: int, generator=None):
        """Forward filter, backward sample: ``(S, N, T)`` int64."""
        return ops.markov_sample(
            *log_weights, log_component, evidence, num_samples, generator=generator
        )

    def posterior_statistics(self, log_weights, log_component, evidence):
        r"""E-step: ``(r, (gamma_1 (N, M), xi (N, T, M, M)))``, all detached, with
        :math:`\xi_{t,ij} = \partial \log p / \partial \log A_{t,ij} = p(c_{t-1} = i, c_t = j
        \mid y, x)` and :math:`\gamma_{1i} = \partial \log p / \partial \log \pi_i`."""
        with torch.enable_grad():
            lc = log_component.detach().requires_grad_(True)
            li = log_weights.initial.detach().requires_grad_(True)
            lt = log_weights.transition.detach().requires_grad_(True)
            ll = ops.markov_log_likelihood(li, lt, lc, evidence).sum()
            r, g1, xi = torch.autograd.grad(ll, (lc, li, lt))
        return r, (g1, xi)

    def expected_log_prior(self, log_weights, responsibilities, pairwise) -> torch.Tensor:
        r""":math:`\sum \gamma_{1i} \log \pi_i + \sum \xi_{t,ij} \log A_{t,ij}`."""
        g1, xi = pairwise
        return (g1 * _finite(log_weights.initial)).sum() + (
            xi * _finite(log_weights.transition)
        ).sum()

    def sample_program(
        self, sequences, log_weights, head, outputs, y, bins, evidence, penalty
    ) -> None:
        """The enumerated Pyro program: per-step sites ``expert_{t}``, ``y_{t}`` inside
        ``pyro.markov`` in the ``sequences`` plate (dim -1); the penalty summed per sequence."""
        log_init, log_trans = log_weights
        with sequences:
            if penalty is not None:
                pyro.factor("penalty", -penalty.sum(-1))
            c = None
            for t in pyro.markov(range(y.shape[1])):
                logits = log_init if t == 0 else Vindex(log_trans[:, t])[..., c, :]
                c = pyro.sample(f"expert_{t}", dist.Categorical(logits=logits), infer=_ENUM)
                with poutine.mask(mask=evidence[:, t]):
                    pyro.sample(
                        f"y_{t}",
                        head.distribution(outputs[:, t], c, None if bins is None else bins[:, t]),
                        obs=y[:, t],
                    )


GATES = {"conditional": ConditionalGating, "markov": MarkovGating, "recurrent": RecurrentGating}


def make_gating(gate: str):
    """The gating object for the constructor's ``gate=`` string."""
    check_choice("gate", gate, tuple(GATES))
    return GATES[gate]()
