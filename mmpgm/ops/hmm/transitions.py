"""Validation of the ops' inputs and of the ``transition`` keyword, and how the joint transition
is applied (dense Kronecker, chain-wise, grouped blocks)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..._validation import check_int
from .types import DENSE_MAX_STATES, GROUP_MAX_STATES, TRANSITIONS


# --------------------------------------------------------------------------- validation
def _check(initial_probs, transition_probs, log_emissions):
    if not isinstance(initial_probs, (list, tuple)) or not isinstance(
        transition_probs, (list, tuple)
    ):
        raise TypeError(
            "initial_probs and transition_probs: expected sequences of tensors, one per chain"
        )
    C = len(initial_probs)
    if C == 0 or len(transition_probs) != C:
        raise ValueError(
            f"expected one initial distribution and one transition matrix per chain, got "
            f"{len(initial_probs)} and {len(transition_probs)}"
        )
    sizes = tuple(int(p.shape[-1]) for p in initial_probs)
    for c, (p, a) in enumerate(zip(initial_probs, transition_probs, strict=True)):
        if p.dim() != 1:
            raise ValueError(f"initial_probs[{c}]: expected shape (K,), got {tuple(p.shape)}")
        if a.shape != (sizes[c], sizes[c]):
            raise ValueError(
                f"transition_probs[{c}]: expected shape {(sizes[c], sizes[c])}, "
                f"got {tuple(a.shape)}"
            )
    if log_emissions.dim() < C + 1 or tuple(log_emissions.shape[-C:]) != sizes:
        raise ValueError(
            f"log_emissions: expected shape batch_shape + (T,) + {sizes}, got "
            f"{tuple(log_emissions.shape)}"
        )
    return sizes


def chain_groups(sizes: Sequence[int], max_states: int | None = None) -> list:
    """Group adjacent chains greedily while a group's product of state counts stays at most
    ``max_states`` (default :data:`GROUP_MAX_STATES`).

    Parameters
    ----------
    sizes : sequence of ``C`` ints
        State counts ``K_1, ..., K_C``.
    max_states : int, optional
        Largest product of state counts in one group (a chain larger than it is a group alone).

    Returns
    -------
    list of lists of int
        Chain indices of each group, in order; each group's transition is then applied as one
        Kronecker matrix. Fewer, larger products beat many tiny ones until the matrix work grows.
    """
    limit = GROUP_MAX_STATES if max_states is None else max_states
    groups, current, size = [], [], 1
    for c, k in enumerate(sizes):
        if current and size * k > limit:
            groups.append(current)
            current, size = [], 1
        current.append(c)
        size *= k
    groups.append(current)
    return groups


def use_dense(sizes: Sequence[int]) -> bool:
    """Whether ``transition="auto"`` runs :func:`factorial_viterbi` with one dense product-space
    transition (product of ``sizes`` at most :data:`DENSE_MAX_STATES`)."""
    return math.prod(sizes) <= DENSE_MAX_STATES


def transition_groups(
    sizes: Sequence[int],
    transition: str = "auto",
    max_group_states: int | None = None,
    *,
    max_product: bool = False,
) -> list:
    """The chain grouping a routine uses for ``transition`` (the one place it is checked).

    Parameters
    ----------
    sizes : sequence of ``C`` ints
        State counts ``K_1, ..., K_C``.
    transition : {"auto", "dense", "chainwise", "grouped"}
        See the module docstring.
    max_group_states : int, optional
        Only with ``"grouped"``: the largest Kronecker block (default :data:`GROUP_MAX_STATES`).
    max_product : bool
        Resolve ``"auto"`` as :func:`factorial_viterbi` does (dense up to
        :data:`DENSE_MAX_STATES`, chain-wise above) instead of as the sum-product routines do
        (grouped by :data:`GROUP_MAX_STATES`).

    Returns
    -------
    list of lists of int
        Chain indices of each group: ``[[0, ..., C-1]]`` is dense, ``[[0], ..., [C-1]]``
        chain-wise.

    Raises
    ------
    ValueError
        For a ``transition`` not in :data:`TRANSITIONS`, or a ``max_group_states`` that is not a
        positive int or is given without ``transition="grouped"``.
    """
    if not isinstance(transition, str) or transition not in TRANSITIONS:
        raise ValueError(
            f"transition: expected one of {', '.join(map(repr, TRANSITIONS))}, got {transition!r}"
        )
    if max_group_states is not None:
        if transition != "grouped":
            raise ValueError(
                f"max_group_states: only used with transition='grouped', got transition="
                f"{transition!r} and max_group_states={max_group_states!r}"
            )
        check_int("max_group_states", max_group_states)
    C = len(sizes)
    if transition == "auto":
        if max_product:
            transition = "dense" if use_dense(sizes) else "chainwise"
        else:
            transition = "grouped"
    if transition == "dense":
        return [list(range(C))]
    if transition == "chainwise":
        return [[c] for c in range(C)]
    return chain_groups(sizes, max_group_states)


def _kron(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = torch.kron(out, m)
    return out


def _log_kron(log_mats: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(kron(exp(L_1), ..., exp(L_n)))`` as a sum of broadcast logs (no underflow of the
    products of small probabilities), ``(prod K, prod K)``."""
    if len(log_mats) == 1:
        return log_mats[0]
    sizes = [m.shape[0] for m in log_mats]
    n = len(sizes)
    out = torch.zeros(
        tuple(sizes) + tuple(sizes), dtype=log_mats[0].dtype, device=log_mats[0].device
    )
    for c, m in enumerate(log_mats):
        shape = [1] * (2 * n)
        shape[c] = shape[n + c] = sizes[c]
        out = out + m.reshape(shape)
    P = math.prod(sizes)
    return out.reshape(P, P)


def _apply_chains(x: torch.Tensor, mats: Sequence, sizes: Sequence[int]) -> torch.Tensor:
    """Multiply ``x`` of shape ``(B, prod sizes)`` by ``mats[c]`` along chain axis ``c``.

    Computes ``y[b, j_1..j_C] = sum_i x[b, i_1..i_C] prod_c M_c[j_c, i_c]`` for ``M_c = mats[c]``
    (``None`` = identity), one chain at a time and never forming a product-space matrix: the
    chain being processed is the last axis, so its product is one 2-D matrix product
    ``(B * P / K_c, K_c) @ M_c^T``; then that axis is rotated to the front, which makes the
    previous chain the last axis. After ``C`` steps the axes are back in order.
    """
    if len(sizes) == 1 and mats[0] is not None:  # one dense matrix: skip the axis bookkeeping
        return x @ mats[0].transpose(0, 1)
    B = x.shape[0]
    for k, m in zip(reversed(sizes), reversed(list(mats)), strict=True):
        if m is not None:
            x = (x.reshape(-1, k) @ m.transpose(0, 1)).reshape(B, -1, m.shape[0])
        else:
            x = x.reshape(B, -1, k)
        x = x.transpose(1, 2)
    return x.reshape(B, -1)


class _Transition:
    """Internal: the joint transition of grouped chains, ``x -> x T`` and ``v -> T v``.

    ``groups`` from :func:`transition_groups`; a group's matrix is the Kronecker product of its
    chains' (detached) transitions, one dense matrix when all chains form one group.
    """

    def __init__(self, sizes, transition_probs, groups):
        self.sizes = tuple(sizes)
        self.trans = [a.detach() for a in transition_probs]
        self.groups = groups
        self.group_sizes = [math.prod(self.sizes[c] for c in g) for g in groups]
        self.group_trans = [_kron([self.trans[c] for c in g]) for g in groups]
        self._group_trans_t = [a.transpose(0, 1) for a in self.group_trans]

    def predict(self, alpha):
        """One-step prediction :math:`\\sum_z alpha(z) T(z, z')`, ``(B, P)``."""
        return _apply_chains(alpha, self._group_trans_t, self.group_sizes)

    def pull_back(self, v):
        """:math:`\\sum_{z'} T(z, z') v(z')`, ``(B, P)``."""
        return _apply_chains(v, self.group_trans, self.group_sizes)
