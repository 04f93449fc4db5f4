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
normalized, so nothing underflows while products stay plain matrix products. The transition of
the joint state is applied one chain at a time (cost per step :math:`\prod_c K_c \sum_c K_c`)
or, for small products, as one dense Kronecker matrix (cost :math:`(\prod_c K_c)^2`), which is
faster when the product is small; ``dense=None`` picks by size (see
``benchmarks/hmm_speed.py``).

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
    "ForwardResult",
    "SmoothResult",
    "ViterbiResult",
    "factorial_forward",
    "factorial_log_likelihood",
    "factorial_smooth",
    "factorial_viterbi",
    "factorial_sample",
    "chain_marginals",
    "factorial_filter_step",
    "factorial_predict",
    "use_dense",
]

# Product sizes up to this use one dense (P, P) transition per step; above it, per-chain
# transitions. Measured with `benchmarks/hmm_speed.py --crossover` (N=64, T=75, 1 thread, 2-core
# CPU): dense was faster up to P = 128 for 2, 3 and 4 chains, per-chain from P = 256.
DENSE_MAX_STATES = 128
# Forward-backward groups adjacent chains into Kronecker blocks of at most this many states
# (measured at A1/A2/A3 with benchmarks/hmm_speed.py configs: 64 was best or within noise).
GROUP_MAX_STATES = 64


class ForwardResult(NamedTuple):
    """Result of the forward pass.

    log_likelihood : ``batch_shape``, :math:`\\log p(x_{1:T})`.
    filtered : ``batch_shape + (T, K_1, ..., K_C)``, :math:`p(z_t | x_{1:t})`.
    """

    log_likelihood: torch.Tensor
    filtered: torch.Tensor


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
        raise TypeError("initial_probs and transition_probs: expected sequences of tensors, one per chain")
    C = len(initial_probs)
    if C == 0 or len(transition_probs) != C:
        raise ValueError(
            f"expected one initial distribution and one transition matrix per chain, got "
            f"{len(initial_probs)} and {len(transition_probs)}"
        )
    sizes = tuple(int(p.shape[-1]) for p in initial_probs)
    for c, (p, a) in enumerate(zip(initial_probs, transition_probs)):
        if p.dim() != 1:
            raise ValueError(f"initial_probs[{c}]: expected shape (K,), got {tuple(p.shape)}")
        if a.shape != (sizes[c], sizes[c]):
            raise ValueError(
                f"transition_probs[{c}]: expected shape {(sizes[c], sizes[c])}, got {tuple(a.shape)}"
            )
    if log_emissions.dim() < C + 1 or tuple(log_emissions.shape[-C:]) != sizes:
        raise ValueError(
            f"log_emissions: expected shape batch_shape + (T,) + {sizes}, got "
            f"{tuple(log_emissions.shape)}"
        )
    return sizes


def chain_groups(sizes: Sequence[int], max_states: int | None = None) -> list:
    """Group adjacent chains greedily while a group's product of state counts stays at most
    ``max_states`` (default :data:`GROUP_MAX_STATES`); each group's transition is then applied as
    one Kronecker matrix. Fewer, larger products beat many tiny ones until the matrix work grows."""
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
    """Whether one dense product-space transition is expected to beat per-chain transitions."""
    return math.prod(sizes) <= DENSE_MAX_STATES


def _kron(mats: Sequence[torch.Tensor]) -> torch.Tensor:
    out = mats[0]
    for m in mats[1:]:
        out = torch.kron(out, m)
    return out


def _apply_chains(x: torch.Tensor, mats: Sequence, sizes: Sequence[int]) -> torch.Tensor:
    """Multiply ``x`` of shape ``(B, prod sizes)`` by ``mats[c]`` along chain axis ``c``.

    Computes ``y[b, j_1..j_C] = sum_i x[b, i_1..i_C] prod_c M_c[j_c, i_c]`` for ``M_c = mats[c]``
    (``None`` = identity), one chain at a time and never forming a product-space matrix: the
    chain being processed is the last axis, so its product is one 2-D matrix product
    ``(B * P / K_c, K_c) @ M_c^T``; then that axis is rotated to the front, which makes the
    previous chain the last axis. After ``C`` steps the axes are back in order.
    """
    B = x.shape[0]
    for k, m in zip(reversed(sizes), reversed(list(mats))):
        if m is not None:
            x = (x.reshape(-1, k) @ m.transpose(0, 1)).reshape(B, -1, m.shape[0])
        else:
            x = x.reshape(B, -1, k)
        x = x.transpose(1, 2)
    return x.reshape(B, -1)


class _Model:
    """Internal: flattened factorial HMM quantities shared by the routines below."""

    def __init__(self, initial_probs, transition_probs, log_emissions, dense):
        self.sizes = _check(initial_probs, transition_probs, log_emissions)
        C = len(self.sizes)
        self.batch_shape = log_emissions.shape[: -C - 1]
        self.T = log_emissions.shape[-C - 1]
        self.P = math.prod(self.sizes)
        logE = log_emissions.reshape(-1, self.T, self.P)
        self.B = logE.shape[0]
        # Per-frame maximum keeps exp() in (0, 1]; it is added back to the log-likelihood.
        shift = logE.detach().amax(-1, keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        self.shift = shift.squeeze(-1)  # (B, T)
        self.E = torch.exp(logE.detach() - shift)  # (B, T, P)
        self.init = [p.detach() for p in initial_probs]
        self.trans = [a.detach() for a in transition_probs]
        self.init_flat = _kron([p[None, :] for p in self.init]).reshape(self.P)
        # Adjacent chains are grouped; a group's transition is the Kronecker product of its
        # chains' (one dense matrix when all chains form one group).
        if dense is None:
            self.groups = chain_groups(self.sizes)
        else:
            self.groups = [list(range(C))] if dense else [[c] for c in range(C)]
        self.group_sizes = [math.prod(self.sizes[c] for c in g) for g in self.groups]
        self.group_trans = [_kron([self.trans[c] for c in g]) for g in self.groups]

    def predict(self, alpha):
        """One-step prediction :math:`\\sum_z alpha(z) T(z, z')`, ``(B, P)``."""
        return _apply_chains(alpha, [a.transpose(0, 1) for a in self.group_trans], self.group_sizes)

    def pull_back(self, v):
        """:math:`\\sum_{z'} T(z, z') v(z')`, ``(B, P)``."""
        return _apply_chains(v, self.group_trans, self.group_sizes)

    def forward(self):
        alphas = torch.empty_like(self.E)
        norms = torch.empty(self.B, self.T, dtype=self.E.dtype, device=self.E.device)
        a = self.init_flat * self.E[:, 0]
        for t in range(self.T):
            if t > 0:
                a = self.predict(a) * self.E[:, t]
            c = a.sum(-1, keepdim=True)
            a = a / c
            alphas[:, t] = a
            norms[:, t] = c.squeeze(-1)
        return alphas, norms

    def log_likelihood(self, norms):
        return norms.log().sum(-1) + self.shift.sum(-1)

    def backward(self, norms, weight=None):
        """Scaled backward messages ``b_t`` with ``alpha_t * b_t = p(z_t | x)``.

        With ``weight`` (``(B,)``, the incoming gradient per sequence) also returns the gradients
        of ``sum_b weight_b log p(x_b)`` with respect to the initial and transition
        probabilities (division-free; times the parameter they are the expected counts).
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
                b = self._adjoint_step(self.alphas[:, t - 1] * weight[:, None], g, gt)
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
        for group, grad in zip(self.groups, gt):
            gt_chains.extend(self._split_group_grad(grad, group))
        return betas, gi, gt_chains

    def _adjoint_step(self, prev, g, grads):
        """Pull ``g`` back through one factored transition, accumulating transition gradients.

        The prediction applies chains ``C-1, ..., 0`` in turn as ``x -> x @ A_c`` with chain ``c``
        as the last axis (then rotated to the front). Replaying those steps on ``prev`` gives each
        matrix product's input ``u_c``; the adjoint runs them backwards: ``dA_c += u_c^T gy`` and
        ``gy -> gy A_c^T``.
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
        for c, u in zip(range(len(sizes)), reversed(inputs)):
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
    def forward(ctx, log_emissions, dense, num_chains, *params):
        init, trans = list(params[:num_chains]), list(params[num_chains:])
        m = _Model(init, trans, log_emissions, dense)
        alphas, norms = m.forward()
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
        m.alphas = alphas
        if any(ctx.needs_input_grad[3:]):
            betas, gi, gt = m.backward(norms, weight)
            grads = gi + gt
        else:
            betas = m.backward(norms)
        grad_emissions = None
        if ctx.needs_input_grad[0]:
            grad_emissions = (alphas * betas * weight[:, None, None]).reshape(ctx.emission_shape)
        return (grad_emissions, None, None, *grads)


@_small_steps_single_thread
def factorial_log_likelihood(
    initial_probs: Sequence[torch.Tensor],
    transition_probs: Sequence[torch.Tensor],
    log_emissions: torch.Tensor,
    *,
    dense: bool | None = None,
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
    dense : bool, optional
        Force the dense product-space (True) or per-chain (False) transition; default by size.

    Returns
    -------
    Tensor ``batch_shape``
        Gradients flow to all three inputs through the exact backward recursion.
    """
    C = len(initial_probs)
    return _FactorialLogZ.apply(log_emissions, dense, C, *initial_probs, *transition_probs)


@_small_steps_single_thread
def factorial_forward(initial_probs, transition_probs, log_emissions, *, dense=None) -> ForwardResult:
    """Forward filter: log-likelihood and filtered joint marginals :math:`p(z_t | x_{1:t})`.

    Shapes as in :func:`factorial_log_likelihood`; not differentiable (use that function).
    """
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, dense)
        alphas, norms = m.forward()
        shape = m.batch_shape + (m.T,) + tuple(m.sizes)
        return ForwardResult(m.log_likelihood(norms).reshape(m.batch_shape), alphas.reshape(shape))


@_small_steps_single_thread
def factorial_smooth(initial_probs, transition_probs, log_emissions, *, dense=None) -> SmoothResult:
    """Forward-backward: smoothed joint marginals and expected initial/transition counts.

    Shapes as in :func:`factorial_log_likelihood`. The counts are summed over the batch and time
    (the sufficient statistics of Baum-Welch / EM).
    """
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, dense)
        alphas, norms = m.forward()
        m.alphas = alphas
        weight = torch.ones(m.B, dtype=m.E.dtype, device=m.E.device)
        betas, gi, gt = m.backward(norms, weight)
        shape = m.batch_shape + (m.T,) + tuple(m.sizes)
        marg = alphas * betas
        marg = marg / marg.sum(-1, keepdim=True)  # exact up to rounding; renormalize
        init_counts = tuple(g * p for g, p in zip(gi, m.init))
        trans_counts = tuple(g * a for g, a in zip(gt, m.trans))
        return SmoothResult(
            m.log_likelihood(norms).reshape(m.batch_shape),
            marg.reshape(shape),
            alphas.reshape(shape),
            init_counts,
            trans_counts,
        )


def chain_marginals(joint: torch.Tensor, num_chains: int) -> tuple:
    """Split joint marginals ``(..., K_1, ..., K_C)`` into ``C`` per-chain marginals ``(..., K_c)``."""
    C = num_chains
    dims = list(range(joint.dim() - C, joint.dim()))
    return tuple(joint.sum([d for d in dims if d != dims[c]]) for c in range(C))


@_small_steps_single_thread
def factorial_viterbi(initial_probs, transition_probs, log_emissions, *, dense=None) -> ViterbiResult:
    r"""Joint MAP path :math:`\arg\max_z p(x, z)` over all chains (max-product in log space).

    Per-chain max-plus products are exact because the transition factorizes over chains:
    :math:`\max_{z} \sum_c \log A_c(z_c, z'_c) + v(z) = \max_{z_1} (\dots \max_{z_C}(\dots))`.
    Back-pointers of every chain-wise maximization are kept and replayed backwards.
    """
    sizes = _check(initial_probs, transition_probs, log_emissions)
    C = len(sizes)
    batch_shape = log_emissions.shape[: -C - 1]
    T = log_emissions.shape[-C - 1]
    P = math.prod(sizes)
    with torch.no_grad():
        logE = log_emissions.reshape(-1, T, P)
        B = logE.shape[0]
        log_init = _kron([p[None, :] for p in initial_probs]).reshape(P).log()
        log_trans = [a.log() for a in transition_probs]
        dense = use_dense(sizes) if dense is None else dense
        v = log_init + logE[:, 0]
        pointers = []  # per t>0: list of per-chain back-pointer tensors
        if dense:
            # dense log-transition as a sum of broadcast per-chain terms
            lt = torch.zeros(tuple(sizes) + tuple(sizes), dtype=logE.dtype, device=logE.device)
            for c in range(C):
                shape = [1] * (2 * C)
                shape[c] = shape[C + c] = sizes[c]
                lt = lt + log_trans[c].reshape(shape)
            lt = lt.reshape(P, P)
        for t in range(1, T):
            if dense:
                vals, idx = (v[:, :, None] + lt).max(1)
                pointers.append(idx)  # (B, P): best previous joint state
                v = vals + logE[:, t]
            else:
                ptrs = []
                x = v
                for c, k in enumerate(sizes):
                    x = x.reshape(B, k, -1)  # (B, old_c, R)
                    vals, idx = (x[:, :, None, :] + log_trans[c][None, :, :, None]).max(1)
                    ptrs.append(idx)  # (B, new_c, R): argmax old_c given new_c and the rest
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
                cur = _backtrack_factored(pointers[t - 1], cur, sizes)
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
    for i, k in zip(idx, sizes):
        flat = flat * k + i
    return flat


def _backtrack_factored(ptrs, cur_flat, sizes):
    """Recover the previous joint state from per-chain back-pointers.

    During the forward sweep chain ``c``'s maximization saw the tensor with axis order
    ``(old_c, new_{c-1}..new_0 rotated ..., old_{c+1}..old_{C-1})``; concretely after processing
    chains ``0..c-1`` the layout was ``(old_c, ..., old_{C-1}, new_0, ..., new_{c-1})``.
    We replay the chains in reverse, reading ``old_c`` given ``new_c`` and the rest.
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
    initial_probs,
    transition_probs,
    log_emissions,
    num_samples: int,
    *,
    generator: torch.Generator | None = None,
    dense=None,
) -> torch.Tensor:
    r"""Forward-filter backward-sample joint state paths :math:`z_{1:T} \sim p(z | x)`.

    Returns
    -------
    Tensor ``(num_samples,) + batch_shape + (T, C)`` int64.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive int, got {num_samples!r}")
    with torch.no_grad():
        m = _Model(initial_probs, transition_probs, log_emissions, dense)
        alphas, _ = m.forward()
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
    filtered: torch.Tensor | None,
    initial_probs,
    transition_probs,
    log_emission: torch.Tensor,
    *,
    dense: bool | None = None,
):
    r"""One step of the forward filter, for streaming use (constant memory).

    Parameters
    ----------
    filtered : ``batch_shape + (K_1, ..., K_C)`` or None
        :math:`p(z_{t-1} \mid x_{1:t-1})`; None at the first frame.
    log_emission : ``batch_shape + (K_1, ..., K_C)``
        Log factor of frame ``t`` (0 where nothing is observed).

    Returns
    -------
    filtered : :math:`p(z_t \mid x_{1:t})`, same shape as ``log_emission``.
    log_increment : ``batch_shape``, :math:`\log p(x_t \mid x_{1:t-1})`.
    """
    sizes = _check(initial_probs, transition_probs, log_emission.unsqueeze(-len(initial_probs) - 1))
    C = len(sizes)
    P = math.prod(sizes)
    batch_shape = log_emission.shape[:-C]
    with torch.no_grad():
        logE = log_emission.reshape(-1, P)
        shift = logE.amax(-1, keepdim=True)
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        e = torch.exp(logE - shift)
        if filtered is None:
            pred = _kron([p[None, :] for p in initial_probs]).reshape(1, P)
        else:
            prev = filtered.reshape(-1, P)
            if (use_dense(sizes) if dense is None else dense):
                pred = prev @ _kron(list(transition_probs))
            else:
                pred = _apply_chains(prev, [a.transpose(0, 1) for a in transition_probs], sizes)
        a = pred * e
        c = a.sum(-1, keepdim=True)
        out = (a / c).reshape(batch_shape + tuple(sizes))
        return out, (c.log() + shift).squeeze(-1).reshape(batch_shape)


def factorial_predict(filtered: torch.Tensor, transition_probs) -> torch.Tensor:
    r"""One-step state prediction :math:`p(z_{t+1} \mid x_{1:t})` from filtered marginals
    ``batch_shape + (K_1, ..., K_C)``."""
    sizes = tuple(a.shape[0] for a in transition_probs)
    P = math.prod(sizes)
    with torch.no_grad():
        prev = filtered.reshape(-1, P)
        pred = _apply_chains(prev, [a.transpose(0, 1) for a in transition_probs], sizes)
        return pred.reshape(filtered.shape)
