"""The joint MAP path (Viterbi) over all chains, dense or factored."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .forward_backward import _small_steps_single_thread
from .transitions import _check, _kron, _log_kron, transition_groups
from .types import ViterbiResult


@_small_steps_single_thread
def factorial_viterbi(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> ViterbiResult:
    r"""Joint MAP path :math:`\arg\max_z p(x, z)` over all chains (max-product in log space).

    Per-group max-plus products are exact because the transition factorizes over chains:
    :math:`\max_{z} \sum_c \log A_c(z_c, z'_c) + v(z) = \max_{z_1} (\dots \max_{z_C}(\dots))`;
    a group's log-transition is the Kronecker sum of its chains'. Back-pointers of every
    group-wise maximization are kept and replayed backwards.

    Parameters
    ----------
    initial_probs, transition_probs, log_emissions, max_group_states
        As in :func:`factorial_log_likelihood`.
    transition : {"auto", "dense", "chainwise", "grouped"}, default "auto"
        As there, except that ``"auto"`` is ``"dense"`` up to :data:`DENSE_MAX_STATES` joint
        states and ``"chainwise"`` above (max-plus products have no matrix-product kernel, so
        blocks do not pay off as in the sum-product routines).

    Returns
    -------
    ViterbiResult
        ``log_prob`` ``batch_shape``; ``path`` ``batch_shape + (T, C)`` int64.
    """
    sizes = _check(initial_probs, transition_probs, log_emissions)
    groups = transition_groups(sizes, transition, max_group_states, max_product=True)
    C = len(sizes)
    batch_shape = log_emissions.shape[: -C - 1]
    T = log_emissions.shape[-C - 1]
    P = math.prod(sizes)
    with torch.no_grad():
        logE = log_emissions.reshape(-1, T, P)
        B = logE.shape[0]
        log_init = _kron([p[None, :] for p in initial_probs]).reshape(P).log()
        log_trans = [a.log() for a in transition_probs]
        gsizes = [math.prod(sizes[c] for c in g) for g in groups]
        glt = [_log_kron([log_trans[c] for c in g]) for g in groups]
        v = log_init + logE[:, 0]
        dense = len(groups) == 1
        pointers = []  # per t>0: (B, P) best previous joint state if dense, else per group
        for t in range(1, T):
            if dense:
                vals, idx = (v[:, :, None] + glt[0]).max(1)
                pointers.append(idx)
                v = vals + logE[:, t]
                continue
            ptrs = []
            x = v
            for g, k in enumerate(gsizes):
                x = x.reshape(B, k, -1)  # (B, old_g, R)
                vals, idx = (x[:, :, None, :] + glt[g][None, :, :, None]).max(1)
                ptrs.append(idx)  # (B, new_g, R): argmax old_g given new_g and the rest
                x = vals.transpose(1, 2)
            v = x.reshape(B, P) + logE[:, t]
            pointers.append(ptrs)
        log_prob, last = v.max(-1)
        path_flat = torch.empty(B, T, dtype=torch.long, device=logE.device)
        path_flat[:, T - 1] = last
        cur = last
        for t in range(T - 1, 0, -1):
            if dense:
                cur = pointers[t - 1].gather(1, cur[:, None]).squeeze(1)
            else:
                # the flat index over the groups' states is the one over the chains' states
                cur = _backtrack_factored(pointers[t - 1], cur, gsizes)
            path_flat[:, t - 1] = cur
        path = torch.stack(_unravel(path_flat, sizes), -1)
        return ViterbiResult(log_prob.reshape(batch_shape), path.reshape(batch_shape + (T, C)))


def _unravel(flat: torch.Tensor, sizes: Sequence[int]) -> list:
    out = []
    for k in reversed(sizes):
        out.append(flat % k)
        flat = flat // k
    return out[::-1]


def _ravel(idx: Sequence[torch.Tensor], sizes: Sequence[int]) -> torch.Tensor:
    flat = torch.zeros_like(idx[0])
    for i, k in zip(idx, sizes, strict=True):
        flat = flat * k + i
    return flat


def _backtrack_factored(ptrs, cur_flat, sizes):
    """Recover the previous joint state from per-group back-pointers (``sizes``: the groups').

    During the forward sweep group ``c``'s maximization saw the tensor with axis order
    ``(old_c, new_{c-1}..new_0 rotated ..., old_{c+1}..old_{C-1})``; concretely after processing
    groups ``0..c-1`` the layout was ``(old_c, ..., old_{C-1}, new_0, ..., new_{c-1})``.
    We replay the groups in reverse, reading ``old_c`` given ``new_c`` and the rest.
    """
    C = len(sizes)
    new = _unravel(cur_flat, sizes)
    old = [None] * C
    for c in reversed(range(C)):
        # layout of ptrs[c]: (B, new_c, [old_{c+1}..old_{C-1}, new_0..new_{c-1}])
        rest_idx = [old[k] for k in range(c + 1, C)] + [new[k] for k in range(c)]
        rest_sizes = [sizes[k] for k in range(c + 1, C)] + [sizes[k] for k in range(c)]
        r = _ravel(rest_idx, rest_sizes) if rest_idx else torch.zeros_like(cur_flat)
        p = ptrs[c]
        B = p.shape[0]
        flat_index = new[c] * (p.shape[2]) + r
        old[c] = p.reshape(B, -1).gather(1, flat_index[:, None]).squeeze(1)
    return _ravel(old, sizes)
