r"""Exact inference in factorial hidden Markov models (torch only).

A factorial HMM has ``C`` independent Markov chains :math:`z^c_t \in \{0..K_c-1\}` with initial
distributions :math:`\pi_c` and transition matrices :math:`A_c` (indexed ``(old, new)``, rows sum
to one), coupled only through the per-frame emission factor

.. math::
    p(x_{1:T}, z_{1:T}) = \prod_c \pi_c(z^c_1) \prod_{t>1} \prod_c A_c(z^c_{t-1}, z^c_t)
        \prod_t \exp \ell_t(z^1_t, \dots, z^C_t),

where ``log_emissions[..., t, k_1, ..., k_C]`` :math:`= \ell_t(k_1..k_C)` is any log-factor
(for the multimodal HMM, the sum over modalities of :math:`\log p(x^m_t | s_t, p^m_t)`, zero on
missing frames). Padding frames past a sequence's length carry ``log_emissions = 0`` and then
contribute exactly nothing, so ragged batches need no special case here.

All routines are batched over leading dimensions of ``log_emissions`` and work in the scaled
probability domain: each frame's factor is divided by its maximum and each forward message is
normalized, so nothing underflows while products stay plain matrix products.

How the joint transition is applied is the keyword ``transition`` of every routine (checked in
one place, :func:`transition_groups`):

``"dense"``
    one product-space Kronecker matrix, cost per step :math:`(\prod_c K_c)^2`;
``"chainwise"``
    one chain at a time, never forming a product-space matrix, cost per step
    :math:`\prod_c K_c \sum_c K_c`;
``"grouped"``
    adjacent chains grouped greedily into Kronecker blocks of at most ``max_group_states``
    states (default :data:`GROUP_MAX_STATES`), each block applied as one matrix;
``"auto"`` (default)
    picks by size from the measured constants :data:`GROUP_MAX_STATES` (sum-product routines:
    ``"grouped"``) and :data:`DENSE_MAX_STATES` (:func:`factorial_viterbi`: ``"dense"`` up to
    it, ``"chainwise"`` above). Only ``"auto"`` and the default of ``"grouped"`` read them.

All choices are exact; they differ only in rounding and speed.

The log-likelihood is a custom autograd function whose backward pass is the exact backward
recursion (hand-written because no torch/Pyro routine does the factored backward pass without
materializing the product-space transition); its gradient with respect to ``log_emissions`` is
the smoothed posterior, which :func:`factorial_smooth` returns directly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ._threads import cpu_single_thread

__all__ = [
    "DENSE_MAX_STATES",
    "GROUP_MAX_STATES",
    "TRANSITIONS",
    "ForwardResult",
    "SmoothResult",
    "ViterbiResult",
    "factorial_forward",
    "factorial_log_likelihood",
    "factorial_smooth",
    "factorial_viterbi",
    "factorial_sample",
    "chain_marginals",
    "chain_groups",
    "transition_groups",
    "factorial_filter_step",
    "factorial_predict",
    "use_dense",
]

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
        if (
            isinstance(max_group_states, bool)
            or not isinstance(max_group_states, int)
            or max_group_states < 1
        ):
            raise ValueError(f"max_group_states: expected a positive int, got {max_group_states!r}")
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


class _Model(_Transition):
    """Internal: flattened factorial HMM quantities shared by the routines below.

    The forward recursion is :meth:`predict` then :meth:`condition`, once per frame; the
    streaming :func:`factorial_filter_step` runs the same two methods on one frame.
    """

    def __init__(
        self, initial_probs, transition_probs, log_emissions, transition, max_group_states=None
    ):
        sizes = _check(initial_probs, transition_probs, log_emissions)
        super().__init__(
            sizes, transition_probs, transition_groups(sizes, transition, max_group_states)
        )
        C = len(self.sizes)
        self.batch_shape = log_emissions.shape[: -C - 1]
        self.T = log_emissions.shape[-C - 1]
        self.P = math.prod(self.sizes)
        logE = log_emissions.detach().reshape(-1, self.T, self.P)
        self.B = logE.shape[0]
        # Per-frame maximum keeps exp() in (0, 1]; it is added back to the log-likelihood.
        shift = logE.amax(-1, keepdim=True).nan_to_num(0.0, posinf=0.0, neginf=0.0)
        self.shift = shift.squeeze(-1)  # (B, T)
        self.E = torch.exp(logE - shift)  # (B, T, P)
        self.init = [p.detach() for p in initial_probs]

    @functools.cached_property
    def init_flat(self):
        """Joint initial distribution ``(P,)`` (on first use: a streaming step past the first
        frame never needs it)."""
        return _kron([p[None, :] for p in self.init]).reshape(self.P)

    @staticmethod
    def condition(pred, e):
        """Condition the prediction ``pred`` ``(B, P)`` (or ``(P,)``) on one frame's scaled
        factor ``e`` ``(B, P)``: the normalized filtered message ``(B, P)`` and its normalizer
        ``(B,)``."""
        a = pred * e
        c = a.sum(-1, keepdim=True)
        return a / c, c.squeeze(-1)

    def forward(self, with_predicted: bool = False):
        """Scaled forward messages ``(B, T, P)`` (the filtered marginals), per-frame normalizers
        ``(B, T)`` and, with ``with_predicted``, the one-step predictions ``(B, T, P)`` (else
        None)."""
        alphas = torch.empty_like(self.E)
        norms = torch.empty(self.B, self.T, dtype=self.E.dtype, device=self.E.device)
        predicted = torch.empty_like(self.E) if with_predicted else None
        pred = self.init_flat
        for t in range(self.T):
            if predicted is not None:
                predicted[:, t] = pred
            a, norms[:, t] = self.condition(pred, self.E[:, t])
            alphas[:, t] = a
            if t + 1 < self.T:
                pred = self.predict(a)
        return alphas, norms, predicted

    def log_likelihood(self, norms):
        return norms.log().sum(-1) + self.shift.sum(-1)

    def backward(self, alphas, norms, weight=None):
        """Scaled backward messages ``b_t`` with ``alpha_t * b_t = p(z_t | x)``.

        ``alphas`` and ``norms`` are :meth:`forward`'s. With ``weight`` (``(B,)``, the incoming
        gradient per sequence) also returns the gradients of ``sum_b weight_b log p(x_b)`` with
        respect to the initial and transition probabilities (division-free; times the parameter
        they are the expected counts).
        """
        betas = torch.empty_like(self.E)
        b = torch.ones(self.B, self.P, dtype=self.E.dtype, device=self.E.device)
        betas[:, -1] = b
        grads = weight is not None
        sizes, C = self.sizes, len(self.sizes)
        if grads:
            gt = [torch.zeros_like(a) for a in self.group_trans]
        for t in range(self.T - 1, 0, -1):
            g = self.E[:, t] * b / norms[:, t, None]  # d log Z / d predicted probability at t
            if grads:
                b = self._adjoint_step(alphas[:, t - 1] * weight[:, None], g, gt)
            else:
                b = self.pull_back(g)
            betas[:, t - 1] = b
        if not grads:
            return betas
        # initial distribution: contract d log Z / d pi_flat with the other chains' pis
        g1 = self.E[:, 0] * betas[:, 0] / norms[:, 0, None] * weight[:, None]
        gi = []
        for c in range(C):
            mats = [None if k == c else self.init[k][None, :] for k in range(C)]
            gi.append(_apply_chains(g1, mats, sizes).sum(0))
        gt_chains = []
        for group, grad in zip(self.groups, gt, strict=True):
            gt_chains.extend(self._split_group_grad(grad, group))
        return betas, gi, gt_chains

    def _adjoint_step(self, prev, g, grads):
        """Pull ``g`` back through one factored transition, accumulating transition gradients.

        The prediction applies groups ``G-1, ..., 0`` in turn as ``x -> x @ A_g`` with group
        ``g`` as the last axis (then rotated to the front). Replaying those steps on ``prev``
        gives each matrix product's input ``u_g``; the adjoint runs them backwards:
        ``dA_g += u_g^T gy`` and ``gy -> gy A_g^T``.
        """
        B, sizes, trans = self.B, self.group_sizes, self.group_trans
        inputs = []
        x = prev
        for c in reversed(range(len(sizes))):
            k = sizes[c]
            u = x.reshape(-1, k)
            inputs.append(u)
            x = (u @ trans[c]).reshape(B, -1, k).transpose(1, 2)
        gy = g
        for c, u in zip(range(len(sizes)), reversed(inputs), strict=True):
            k = sizes[c]
            gy = gy.reshape(B, k, -1).transpose(1, 2).reshape(-1, k)
            grads[c].addmm_(u.transpose(0, 1), gy)
            gy = gy @ trans[c].transpose(0, 1)
        return gy.reshape(B, -1)

    def _split_group_grad(self, G, group):
        """Per-chain gradients from the gradient ``G`` of a group's Kronecker transition."""
        sizes = [self.sizes[c] for c in group]
        trans = [self.trans[c] for c in group]
        C = len(group)
        if C == 1:
            return [G]
        H = G.reshape(tuple(sizes) + tuple(sizes))
        out = []
        for c in range(C):
            W = H
            for k in range(C):
                if k != c:
                    shape = [1] * (2 * C)
                    shape[k] = shape[C + k] = sizes[k]
                    W = W * trans[k].reshape(shape)
            dims = [k for k in range(C) if k != c] + [C + k for k in range(C) if k != c]
            out.append(W.sum(dims) if dims else W)
        return out


def _step_numel(initial_probs, log_emissions) -> int:
    C = len(initial_probs)
    if log_emissions.dim() < C + 1:
        return log_emissions.numel()
    return log_emissions.numel() // max(1, log_emissions.shape[-C - 1])


def _small_steps_single_thread(fn):
    """Run ``fn(initial_probs, transition_probs, log_emissions, ...)`` under
    :func:`cpu_single_thread` sized by one time step of ``log_emissions``."""

    @functools.wraps(fn)
    def wrapper(initial_probs, transition_probs, log_emissions, *args, **kwargs):
        with cpu_single_thread(log_emissions.device, _step_numel(initial_probs, log_emissions)):
            return fn(initial_probs, transition_probs, log_emissions, *args, **kwargs)

    return wrapper


class _FactorialLogZ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, log_emissions, transition, max_group_states, num_chains, *params):
        init, trans = list(params[:num_chains]), list(params[num_chains:])
        m = _Model(init, trans, log_emissions, transition, max_group_states)
        alphas, norms, _ = m.forward()
        ctx.model = m
        ctx.save_for_backward(alphas, norms)
        ctx.num_chains = num_chains
        ctx.emission_shape = log_emissions.shape
        return m.log_likelihood(norms).reshape(m.batch_shape)

    @staticmethod
    def backward(ctx, grad_output):
        with cpu_single_thread(grad_output.device, ctx.model.B * ctx.model.P):
            return _FactorialLogZ._backward(ctx, grad_output)

    @staticmethod
    def _backward(ctx, grad_output):
        alphas, norms = ctx.saved_tensors
        m = ctx.model
        weight = grad_output.reshape(m.B)
        grads = [None] * (2 * ctx.num_chains)
        if any(ctx.needs_input_grad[4:]):
            betas, gi, gt = m.backward(alphas, norms, weight)
            grads = gi + gt
        else:
            betas = m.backward(alphas, norms)
        grad_emissions = None
        if ctx.needs_input_grad[0]:
            grad_emissions = (alphas * betas * weight[:, None, None]).reshape(ctx.emission_shape)
        return (grad_emissions, None, None, None, *grads)


@_small_steps_single_thread
def factorial_log_likelihood(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> torch.Tensor:
    r"""Differentiable :math:`\log p(x_{1:T})` of a factorial HMM.

    Parameters
    ----------
    initial_probs : sequence of ``C`` tensors ``(K_c,)``
        Initial distribution of each chain.
    transition_probs : sequence of ``C`` tensors ``(K_c, K_c)``
        Transition matrix of each chain, indexed ``(old, new)``.
    log_emissions : tensor ``batch_shape + (T, K_1, ..., K_C)``
        Log emission factor of every joint state at every frame (0 where nothing is observed).
    transition : {"auto", "dense", "chainwise", "grouped"}, default "auto"
        How the joint transition is applied (see the module docstring); exact either way.
    max_group_states : int, optional
        With ``transition="grouped"``: the largest Kronecker block of adjacent chains (default
        :data:`GROUP_MAX_STATES`).

    Returns
    -------
    Tensor ``batch_shape``
        Gradients flow to all three inputs through the exact backward recursion.
    """
    C = len(initial_probs)
    return _FactorialLogZ.apply(
        log_emissions, transition, max_group_states, C, *initial_probs, *transition_probs
    )


@_small_steps_single_thread
def factorial_forward(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> ForwardResult:
    r"""Forward filter: log-likelihood, filtered :math:`p(z_t | x_{1:t})` and predicted
    :math:`p(z_t | x_{1:t-1})` joint marginals.

    Parameters
    ----------
    initial_probs, transition_probs, log_emissions, transition, max_group_states
        As in :func:`factorial_log_likelihood`.

    Returns
    -------
    ForwardResult
        ``log_likelihood`` ``batch_shape``; ``filtered`` and ``predicted``
        ``batch_shape + (T, K_1, ..., K_C)``. Not differentiable (use
        :func:`factorial_log_likelihood`).
    """
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, transition, max_group_states)
        alphas, norms, predicted = m.forward(with_predicted=True)
        shape = m.batch_shape + (m.T,) + tuple(m.sizes)
        return ForwardResult(
            m.log_likelihood(norms).reshape(m.batch_shape),
            alphas.reshape(shape),
            predicted.reshape(shape),
        )


@_small_steps_single_thread
def factorial_smooth(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> SmoothResult:
    """Forward-backward: smoothed joint marginals and expected initial/transition counts.

    Parameters
    ----------
    initial_probs, transition_probs, log_emissions, transition, max_group_states
        As in :func:`factorial_log_likelihood`.

    Returns
    -------
    SmoothResult
        Marginals ``batch_shape + (T, K_1, ..., K_C)``; the counts are summed over the batch
        and time (the sufficient statistics of Baum-Welch / EM).
    """
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, transition, max_group_states)
        alphas, norms, _ = m.forward()
        weight = torch.ones(m.B, dtype=m.E.dtype, device=m.E.device)
        betas, gi, gt = m.backward(alphas, norms, weight)
        shape = m.batch_shape + (m.T,) + tuple(m.sizes)
        marg = alphas * betas
        marg = marg / marg.sum(-1, keepdim=True)  # exact up to rounding; renormalize
        init_counts = tuple(g * p for g, p in zip(gi, m.init, strict=True))
        trans_counts = tuple(g * a for g, a in zip(gt, m.trans, strict=True))
        return SmoothResult(
            m.log_likelihood(norms).reshape(m.batch_shape),
            marg.reshape(shape),
            alphas.reshape(shape),
            init_counts,
            trans_counts,
        )


def chain_marginals(joint: torch.Tensor, num_chains: int) -> tuple:
    """Split joint marginals ``(..., K_1, ..., K_C)`` into ``C`` per-chain marginals
    ``(..., K_c)``."""
    C = num_chains
    dims = list(range(joint.dim() - C, joint.dim()))
    return tuple(joint.sum([d for d in dims if d != dims[c]]) for c in range(C))


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


@_small_steps_single_thread
def factorial_sample(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> torch.Tensor:
    r"""Forward-filter backward-sample joint state paths :math:`z_{1:T} \sim p(z | x)`.

    Parameters
    ----------
    initial_probs, transition_probs, log_emissions, transition, max_group_states
        As in :func:`factorial_log_likelihood` (``transition`` is that of the forward filter;
        the backward draws are chain-wise). Every choice consumes ``generator`` identically.
    num_samples : int
        Number of paths ``S`` per sequence.
    generator : torch.Generator, optional
        Source of randomness (default: torch's global one).

    Returns
    -------
    Tensor ``(num_samples,) + batch_shape + (T, C)`` int64.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, transition, max_group_states)
        alphas, _, _ = m.forward()
        S, B, T, P, sizes = num_samples, m.B, m.T, m.P, m.sizes
        C = len(sizes)

        def draw(probs):  # probs (S*B, P)
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

        out = torch.empty(S, B, T, dtype=torch.long, device=alphas.device)
        w = alphas[:, -1].expand(S, B, P).reshape(S * B, P)
        cur = draw(w)
        out[:, :, -1] = cur.reshape(S, B)
        for t in range(T - 2, -1, -1):
            nxt = _unravel(cur, sizes)
            w = alphas[:, t].expand(S, B, P).reshape(S * B, 1, P).reshape((S * B,) + tuple(sizes))
            for c in range(C):
                col = m.trans[c][:, nxt[c]].transpose(0, 1)  # (S*B, K_c): A_c(z_c, next_c)
                shape = [S * B] + [1] * C
                shape[c + 1] = sizes[c]
                w = w * col.reshape(shape)
            cur = draw(w.reshape(S * B, P))
            out[:, :, t] = cur.reshape(S, B)
        path = torch.stack(_unravel(out, sizes), -1)
        return path.reshape((S,) + m.batch_shape + (T, C))


def factorial_filter_step(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emission: torch.Tensor,
    filtered: torch.Tensor | None = None,
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
):
    r"""One step of the forward filter, for streaming use (constant memory).

    The same prediction and conditioning, with the same grouping of chains, as one frame of
    :func:`factorial_forward`.

    Parameters
    ----------
    initial_probs, transition_probs, transition, max_group_states
        As in :func:`factorial_log_likelihood`.
    log_emission : ``batch_shape + (K_1, ..., K_C)``
        Log factor of frame ``t`` (0 where nothing is observed).
    filtered : ``batch_shape + (K_1, ..., K_C)``, optional
        :math:`p(z_{t-1} \mid x_{1:t-1})`; None (default) at the first frame.

    Returns
    -------
    filtered : :math:`p(z_t \mid x_{1:t})`, same shape as ``log_emission``.
    log_increment : ``batch_shape``, :math:`\log p(x_t \mid x_{1:t-1})`.
    """
    C = len(initial_probs)
    if filtered is not None and filtered.shape != log_emission.shape:
        raise ValueError(
            f"filtered: expected the shape of log_emission {tuple(log_emission.shape)}, got "
            f"{tuple(filtered.shape)}"
        )
    with torch.no_grad():
        m = _Model(
            initial_probs,
            transition_probs,
            log_emission.unsqueeze(-C - 1),
            transition,
            max_group_states,
        )
        pred = m.init_flat if filtered is None else m.predict(filtered.reshape(m.B, m.P))
        a, c = m.condition(pred, m.E[:, 0])
        out = a.reshape(log_emission.shape)
        return out, (c.log() + m.shift[:, 0]).reshape(m.batch_shape)


def factorial_predict(
    filtered: torch.Tensor,
    transition_probs: Sequence[torch.Tensor],
    *,
    transition: str = "auto",
    max_group_states: int | None = None,
) -> torch.Tensor:
    r"""One-step state prediction :math:`p(z_{t+1} \mid x_{1:t})` from filtered marginals.

    Parameters
    ----------
    filtered : ``batch_shape + (K_1, ..., K_C)``
        :math:`p(z_t \mid x_{1:t})`.
    transition_probs, transition, max_group_states
        As in :func:`factorial_log_likelihood`.

    Returns
    -------
    Tensor, same shape as ``filtered``.
    """
    sizes = tuple(int(a.shape[0]) for a in transition_probs)
    C = len(sizes)
    if filtered.dim() < C or tuple(filtered.shape[filtered.dim() - C :]) != sizes:
        raise ValueError(
            f"filtered: expected shape batch_shape + {sizes}, got {tuple(filtered.shape)}"
        )
    with torch.no_grad():
        step = _Transition(
            sizes, transition_probs, transition_groups(sizes, transition, max_group_states)
        )
        pred = step.predict(filtered.reshape(-1, math.prod(sizes)))
        return pred.reshape(filtered.shape)
