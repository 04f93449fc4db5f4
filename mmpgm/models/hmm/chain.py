"""A Markov chain's parameters (initial distribution, transition matrix) with its Dirichlet
prior and closed-form M-step: one per chain of the multimodal HMM."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.nn import PyroParam
from torch.distributions import constraints

from ..._pyro import TypedPyroModule
from ..._validation import check_int

__all__ = ["MarkovChain"]


class MarkovChain(TypedPyroModule):
    r"""A discrete Markov chain: :math:`z_1 \sim \pi`, :math:`z_t \mid z_{t-1} \sim A_{z_{t-1},
    \cdot}`.

    Parameters
    ----------
    num_states : int
        ``K``.
    concentration : float
        Dirichlet prior concentration ``alpha`` of :math:`\pi` and every row of :math:`A`.
    stickiness : float
        Initial self-transition probability (before fitting).
    """

    def __init__(self, num_states: int, concentration: float = 1.5, stickiness: float = 0.8):
        super().__init__()
        check_int("num_states", num_states)
        if not concentration >= 1.0:
            raise ValueError(
                f"concentration: expected a float >= 1 (MAP needs it), got {concentration!r}"
            )
        K = num_states
        self.num_states = K
        self.concentration = float(concentration)
        init = torch.full((K,), 1.0 / K)
        if K > 1:
            trans = torch.full((K, K), (1.0 - stickiness) / (K - 1))
            trans.fill_diagonal_(stickiness)
        else:
            trans = torch.ones(1, 1)
        self.initial_probs = PyroParam(init, constraint=constraints.simplex)
        self.transition_probs = PyroParam(trans, constraint=constraints.simplex)

    def log_prior(self) -> torch.Tensor:
        if self.num_states == 1:
            return self.initial_probs.new_zeros(())
        conc = torch.full_like(self.initial_probs, self.concentration)
        d = dist.Dirichlet(conc)
        return d.log_prob(self.initial_probs) + d.log_prob(self.transition_probs).sum()

    def num_free_parameters(self) -> int:
        K = self.num_states
        return (K - 1) * (K + 1)

    @torch.no_grad()
    def m_step(self, initial_counts, transition_counts) -> None:
        a = self.concentration - 1.0
        init = initial_counts + a
        trans = transition_counts + a
        self.initial_probs = init / init.sum()
        self.transition_probs = trans / trans.sum(-1, keepdim=True)
