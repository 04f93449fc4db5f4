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

Where every modality's log-density is linear in fixed features of its frame,
:math:`\ell^m_t(s, p) = \phi^m(x^m_t) \cdot W^m_{s p}` (the diagonal Gaussian in its expanded
square; :meth:`mmpgm.observations.ObservationModel.linear_log_prob`), the product-space factor is
itself linear in the stacked features, and :func:`shared_private_linear_log_factor` forms it with
matrix products alone, forward and backward, never summing or copying tensors whose last axis is
a small state axis (slow on CPU: at ``benchmarks/hmm_speed.py`` A1 the model-level emission
forward+backward fell from about 10 ms to about 4.5 ms, most of it now the features and the
backward's product).
"""

from __future__ import annotations

import math

import torch

__all__ = ["shared_private_log_factor", "shared_private_linear_log_factor"]


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


#: :func:`shared_private_linear_log_factor` forms the product-space weights (one matrix product)
#: unless that costs more than this many times the flops of the two-product plan (measured, one
#: thread, float64, forward+backward: at ``benchmarks/hmm_speed.py`` A1, flop ratio 1.06, one
#: product 1.5 ms against 1.8 ms; at A2, ratio 2.0, 2.8 ms against 2.3 ms).
ONE_PRODUCT_MAX_FLOP_RATIO = 1.5


def _check_linear_terms(features, weights):
    weights = tuple(weights)
    if isinstance(features, torch.Tensor):  # stacked: split into the modalities' blocks
        R = sum(w.shape[0] for w in weights if w.dim() == 3)
        if features.dim() != 2 or features.shape[0] != R:
            raise ValueError(
                f"features: expected a stacked (R, F) tensor with R = {R} (the weights' rows "
                f"summed) or a sequence of (R_m, F) tensors, got shape {tuple(features.shape)}"
            )
        features = features.split([w.shape[0] for w in weights], 0)
    features = tuple(features)
    if not features or len(features) != len(weights):
        raise ValueError(
            f"features, weights: expected one (features, weights) pair per modality (at least "
            f"one), got {len(features)} features and {len(weights)} weights"
        )
    ref = weights[0]
    if ref.dim() != 3:
        raise ValueError(f"weights[0]: expected shape (R_0, K_s, K_0), got {tuple(ref.shape)}")
    num_frames = features[0].shape[-1] if features[0].dim() == 2 else None
    for m, (phi, w) in enumerate(zip(features, weights, strict=True)):
        if w.dim() != 3 or w.shape[1] != ref.shape[1]:
            raise ValueError(
                f"weights[{m}]: expected shape (R_{m}, {ref.shape[1]}, K_{m}) (K_s of "
                f"weights[0]), got {tuple(w.shape)}"
            )
        if phi.dim() != 2 or phi.shape != (w.shape[0], num_frames):
            raise ValueError(
                f"features[{m}]: expected shape ({w.shape[0]}, {num_frames}) (R_{m} of "
                f"weights[{m}], frames of features[0]), got {tuple(phi.shape)}"
            )
        for name, t in ((f"features[{m}]", phi), (f"weights[{m}]", w)):
            if t.dtype != ref.dtype or t.device != ref.device:
                raise ValueError(
                    f"{name}: expected dtype {ref.dtype} on {ref.device} (those of weights[0]), "
                    f"got {t.dtype} on {t.device}"
                )
    return features, weights


def shared_private_linear_log_factor(features, weights) -> torch.Tensor:
    r"""Product-space log-factor of modalities whose log-densities are linear in features.

    .. math::
        \ell_t(s, p_1, \dots, p_M) = \sum_m \phi^m_t \cdot W^m_{s p_m}
            = [\phi^1_t; \dots; \phi^M_t] \cdot \bar W_{s p_1 \dots p_M}.

    Formed as matrix products only (autograd through plain products: differentiable to any
    order, in the features too). Two plans, chosen by flop count
    (:data:`ONE_PRODUCT_MAX_FLOP_RATIO`): the stacked weights :math:`\bar W` (``R x P``, ``R =
    sum_m R_m``, ``P = K_s prod_m K_m``) in one product, cost ``F R P``; or a block-diagonal
    product to the per-modality factors ``(F K_s, sum_m K_m)`` followed by the 0/1 selection
    product of :func:`shared_private_log_factor`, cost ``F (R K_s sum_m K_m + P sum_m K_m)``.

    Parameters
    ----------
    features : sequence of ``M >= 1`` tensors ``(R_m, F)``, or one ``(sum_m R_m, F)`` tensor
        Modality ``m``'s features of each of ``F`` frames, frames last (a missing frame's
        features are 0, so it contributes exactly 0); stacked in modality order where given as
        one tensor (saves the stacking copy).
    weights : sequence of ``M`` tensors ``(R_m, K_s, K_m)``
        :math:`W^m`, indexed ``(feature, shared state, private state)``; same ``K_s``, dtype and
        device as the features.

    Returns
    -------
    ``(F, K_s, K_1, ..., K_M)`` contiguous:
    ``out[f, s, p_1, ..., p_M] = sum_m features[m][:, f] @ weights[m][:, s, p_m]``.
    """
    phi = features if isinstance(features, torch.Tensor) else None  # (R, F) when stacked
    features, weights = _check_linear_terms(features, weights)
    K_s = weights[0].shape[1]
    sizes = tuple(w.shape[2] for w in weights)
    R = sum(w.shape[0] for w in weights)
    P = K_s * math.prod(sizes)
    num_frames = features[0].shape[1]
    if phi is None:
        phi = features[0] if len(features) == 1 else torch.cat(features, 0)
    out_shape = (num_frames, K_s) + sizes
    one_flops = R * P
    two_flops = R * K_s * sum(sizes) + P * sum(sizes)
    if len(sizes) == 1 or one_flops <= ONE_PRODUCT_MAX_FLOP_RATIO * two_flops:
        M = len(sizes)
        blocks = []
        for m, w in enumerate(weights):
            shape = [w.shape[0], K_s] + [1] * M
            shape[2 + m] = sizes[m]
            blocks.append(w.reshape(shape).expand([w.shape[0], K_s, *sizes]))
        w_bar = torch.cat(blocks, 0).reshape(R, P)
        # (R, F)^T @ (R, P): the frames-first product, contiguous with no transposing copy
        return (phi.T @ w_bar).reshape(out_shape)
    # block-diagonal weights (R, K_s, sum K_m): modality m's rows feed only its own columns
    total = sum(sizes)
    blocks, start = [], 0
    for w, k in zip(weights, sizes, strict=True):
        pad = (start, total - start - k)
        blocks.append(torch.nn.functional.pad(w, pad))
        start += k
    block = torch.cat(blocks, 0).reshape(R, K_s * total)
    per_modality = (phi.T @ block).reshape(num_frames * K_s, total)
    sel = _selection(sizes, per_modality.dtype, per_modality.device)  # (sum K_m, prod K_m)
    return (per_modality @ sel).reshape(out_shape)
