r"""The product-space emission factor of a shared chain and ``M`` private chains.

Modality ``m`` of a multimodal HMM depends on the shared state ``s`` and its own private state
``p_m`` only, so the per-frame log-factor of the factorial HMM is a sum of ``M`` pieces,

.. math::
    \ell_t(s, p_1, \dots, p_M) = \sum_m \ell^m_t(s, p_m).

:func:`shared_private_log_factor` forms it. Its forward pass is a chain of broadcast additions;
its backward pass, the per-modality marginal sums of the incoming gradient
:math:`\sum_{p_{j \ne m}} g_t(s, p_1, \dots, p_M)`, is one matrix product with the 0/1
selection matrix :math:`S_{(m, p), (p_1 \dots p_M)} = [p_m = p]` instead of ``M`` reductions
over the small private axes (which torch runs slowly on CPU: at ``benchmarks/hmm_speed.py`` A1,
``K_s = K_m = 3``, two modalities, the two reductions took about 3.5x the forward sum, the
product about half of it; one thread, float64).
"""

from __future__ import annotations

import math

import torch

__all__ = ["shared_private_log_factor"]


def _selection(sizes, dtype, device) -> torch.Tensor:
    """``(sum(sizes), prod(sizes))`` 0/1: row ``(m, p)``, column ``(p_1..p_M)`` (C order) is 1
    where ``p_m = p``."""
    rows = []
    for m, k in enumerate(sizes):
        shape = [1] * len(sizes)
        shape[m] = k
        eye = torch.eye(k, dtype=dtype, device=device).reshape([k] + shape)
        rows.append(eye.expand([k] + list(sizes)).reshape(k, -1))
    return torch.cat(rows, 0)


class _SharedPrivateSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *log_factors):
        sizes = tuple(f.shape[-1] for f in log_factors)
        M = len(sizes)
        total = None
        for m, f in enumerate(log_factors):
            shape = list(f.shape[:-1]) + [1] * M
            shape[f.dim() - 1 + m] = sizes[m]
            term = f.reshape(shape)
            total = term if total is None else total + term
        ctx.sizes = sizes
        ctx.batch_shape = log_factors[0].shape[:-1]  # batch_shape + (K_s,)
        # contiguous (a clone where M = 1: never a view of an input); the inputs may be
        # transposed views, and torch gives a sum of those their layout
        return total.clone(memory_format=torch.contiguous_format) if M == 1 else total.contiguous()

    @staticmethod
    def backward(ctx, grad):
        sizes = ctx.sizes
        g = grad.reshape(-1, math.prod(sizes))  # (B K_s, prod K_m)
        sel = _selection(sizes, g.dtype, g.device)  # (sum K_m, prod K_m)
        marg = sel @ g.T  # (sum K_m, B K_s): a transposed layout is the faster product here
        return tuple(
            part.T.reshape(ctx.batch_shape + (k,))
            for part, k in zip(marg.split(sizes, 0), sizes, strict=True)
        )


def shared_private_log_factor(log_factors) -> torch.Tensor:
    r"""Sum of per-modality log-factors on the product space of one shared and ``M`` private
    chains.

    Parameters
    ----------
    log_factors : sequence of ``M >= 1`` tensors ``batch_shape + (K_s, K_m)``, the ``m``-th
        indexed ``(shared state, private state of modality m)``; same ``batch_shape``, ``K_s``,
        dtype and device.

    Returns
    -------
    ``batch_shape + (K_s, K_1, ..., K_M)`` (contiguous):
    ``out[..., s, p_1, ..., p_M] = sum_m log_factors[m][..., s, p_m]``. Differentiable (the
    backward is one matrix product with a 0/1 selection matrix, itself differentiable).
    """
    log_factors = tuple(log_factors)
    if not log_factors:
        raise ValueError("log_factors: expected at least one modality's log-factor, got none")
    lead = log_factors[0].shape[:-1]
    for m, f in enumerate(log_factors):
        if f.dim() < 2 or f.shape[:-1] != lead:
            raise ValueError(
                f"log_factors[{m}]: expected shape {tuple(lead)} + (K_m,) (batch_shape + (K_s,) "
                f"of log_factors[0]), got {tuple(f.shape)}"
            )
        if f.dtype != log_factors[0].dtype or f.device != log_factors[0].device:
            raise ValueError(
                f"log_factors[{m}]: expected dtype {log_factors[0].dtype} on "
                f"{log_factors[0].device} (those of log_factors[0]), got {f.dtype} on {f.device}"
            )
    return _SharedPrivateSum.apply(*log_factors)
