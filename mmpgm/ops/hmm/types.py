"""Result types and the measured constants of the factorial-HMM ops."""

from __future__ import annotations

from typing import NamedTuple

import torch

#: Largest product of state counts for which ``transition="auto"`` runs
#: :func:`factorial_viterbi` with one dense product-space transition (chain-wise above it).
#: Measured with ``benchmarks/hmm_speed.py --crossover`` (N=64, T=75, 1 thread, 2-core CPU):
#: dense was faster up to P = 128 for 2, 3 and 4 chains, per-chain from P = 256.
#: Read only by ``"auto"``; pass ``transition=`` to choose otherwise.
DENSE_MAX_STATES = 128
#: Largest Kronecker block (product of its chains' state counts) with which ``"auto"`` (and
#: ``"grouped"`` without ``max_group_states``) groups adjacent chains in the sum-product
#: routines. Measured at A1/A2/A3 with ``benchmarks/hmm_speed.py``: 64 was best or within noise.
#: Pass ``transition="grouped", max_group_states=...`` for another grouping.
GROUP_MAX_STATES = 64
#: The allowed values of the ``transition`` keyword.
TRANSITIONS = ("auto", "dense", "chainwise", "grouped")


class ForwardResult(NamedTuple):
    """Result of the forward pass.

    log_likelihood : ``batch_shape``, :math:`\\log p(x_{1:T})`.
    filtered : ``batch_shape + (T, K_1, ..., K_C)``, :math:`p(z_t | x_{1:t})`.
    predicted : ``batch_shape + (T, K_1, ..., K_C)``, the one-step prediction
        :math:`p(z_t | x_{1:t-1})` (at ``t = 1`` the initial joint distribution).
    """

    log_likelihood: torch.Tensor
    filtered: torch.Tensor
    predicted: torch.Tensor


class SmoothResult(NamedTuple):
    """Result of forward-backward.

    log_likelihood : ``batch_shape``, :math:`\\log p(x_{1:T})`.
    marginals : ``batch_shape + (T, K_1, ..., K_C)``, :math:`p(z_t | x_{1:T})` jointly over chains.
    filtered : ``batch_shape + (T, K_1, ..., K_C)``, :math:`p(z_t | x_{1:t})`.
    initial_counts : tuple of ``(K_c,)``, :math:`\\sum_n p(z^c_1 = i | x^{(n)})`.
    transition_counts : tuple of ``(K_c, K_c)``,
        :math:`\\sum_n \\sum_{t>1} p(z^c_{t-1} = i, z^c_t = j | x^{(n)})`.
    """

    log_likelihood: torch.Tensor
    marginals: torch.Tensor
    filtered: torch.Tensor
    initial_counts: tuple
    transition_counts: tuple


class ViterbiResult(NamedTuple):
    """Joint MAP path.

    log_prob : ``batch_shape``, :math:`\\max_{z} \\log p(x_{1:T}, z_{1:T})`.
    path : ``batch_shape + (T, C)`` int64, the maximizing states of every chain.
    """

    log_prob: torch.Tensor
    path: torch.Tensor
