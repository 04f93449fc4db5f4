"""The scaled forward-backward recursion and its exact hand-written backward pass: the
log-likelihood, filtering and smoothing."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from .._threads import cpu_single_thread
from .transitions import _apply_chains, _check, _kron, _Transition, transition_groups
from .types import ForwardResult, SmoothResult


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
