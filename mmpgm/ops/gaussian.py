r"""Diagonal-Gaussian algebra: the precision-weighted product of experts, the analytic KL and
the log-density (torch only; used by the MVRNN's guide and ELBO), and the log-density of every
state at once as one matrix product (the HMM's diagonal-Gaussian emissions)."""

from __future__ import annotations

import math

import torch

__all__ = [
    "product_of_experts",
    "gaussian_kl",
    "gaussian_log_prob",
    "diagonal_gaussian_features",
    "diagonal_gaussian_weights",
    "diagonal_gaussian_linear_terms",
    "diagonal_gaussian_state_log_probs",
]


def product_of_experts(prior_loc, prior_scale, locs, scales, masks):
    r"""Precision-weighted product of diagonal Gaussian experts.

    Parameters
    ----------
    prior_loc, prior_scale : ``(..., Z)`` the prior expert (always present).
    locs, scales : ``(M, ..., Z)`` the data experts.
    masks : ``(M, ...)`` bool, True where expert ``m`` is present (its modality observed).

    Returns
    -------
    loc, scale : ``(..., Z)`` of :math:`\propto \mathcal N(\mu_0, \sigma_0^2) \prod_{m \in
        \text{present}} \mathcal N(\mu_m, \sigma_m^2)`: precision :math:`\sum_m \sigma_m^{-2}`,
        mean :math:`\sum_m \sigma_m^{-2} \mu_m / \sum_m \sigma_m^{-2}`. Absent experts enter
        through ``torch.where`` (their values never reach the result, not even as NaN).
    """
    prec0 = prior_scale.pow(-2)
    prec = scales.pow(-2)
    present = masks[..., None]
    zero = torch.zeros((), dtype=prec.dtype, device=prec.device)
    prec = torch.where(present, prec, zero)
    weighted = torch.where(present, prec * locs, zero)
    total = prec0 + prec.sum(0)
    loc = (prec0 * prior_loc + weighted.sum(0)) / total
    return loc, total.rsqrt()


def gaussian_kl(q_loc, q_scale, p_loc, p_scale) -> torch.Tensor:
    r""":math:`\mathrm{KL}(\mathcal N(\mu_q, \sigma_q^2) \| \mathcal N(\mu_p, \sigma_p^2))`, summed
    over the last axis."""
    var_ratio = (q_scale / p_scale).pow(2)
    t1 = ((q_loc - p_loc) / p_scale).pow(2)
    return 0.5 * (var_ratio + t1 - 1 - var_ratio.log()).sum(-1)


def gaussian_log_prob(x, loc, scale) -> torch.Tensor:
    """Diagonal Gaussian log-density summed over the last axis."""
    z = (x - loc) / scale
    return (-0.5 * z.pow(2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def diagonal_gaussian_features(x, reference, mask=None, *, out=None) -> torch.Tensor:
    r"""Per-frame features of the expanded diagonal-Gaussian log-density, frames last.

    Parameters
    ----------
    x : ``batch_shape + (D,)`` observations.
    reference : ``(D,)`` centring point :math:`c` (any value gives the same density; one near
        the means, e.g. their average, keeps the expanded square accurate when
        :math:`|x| \gg \sigma`).
    mask : ``batch_shape`` bool or None; False where the frame is missing (its features are 0,
        so its log-density is exactly 0, whatever ``x`` holds there, NaN included).
    out : ``(2 D + 1, prod(batch_shape))`` tensor or None; where given (and no gradient is
        needed: neither ``x`` nor ``reference`` requires one), the features are written there
        (e.g. into rows of a buffer stacking several modalities) and ``out`` is returned.

    Returns
    -------
    ``(2 D + 1, prod(batch_shape))`` (contiguous unless ``out`` is a strided view): rows
    :math:`(x - c)^2`, :math:`x - c`, 1, times the mask; one column per frame (the faster
    layout for the product with the weights on CPU: a wide output instead of a tall, narrow
    one).
    """
    D = x.shape[-1]
    if not (torch.is_grad_enabled() and (x.requires_grad or reference.requires_grad)):
        return _diagonal_gaussian_features_no_grad(x, reference, mask, out)
    xc = (x - reference).reshape(-1, D).T  # (D, B)
    if mask is None:
        one = torch.ones((1, xc.shape[1]), dtype=x.dtype, device=x.device)
    else:
        keep = mask.reshape(1, -1)
        xc = torch.where(keep, xc, torch.zeros((), dtype=x.dtype, device=x.device))
        one = keep.to(x.dtype)
    return torch.cat([xc * xc, xc, one], 0)


def _diagonal_gaussian_features_no_grad(x, reference, mask, out=None):
    """:func:`diagonal_gaussian_features` written row by row into one ``(2 D + 1, B)`` buffer
    (no autograd): every pass but the first reads and writes contiguous rows, about 3x faster
    than the broadcast-and-concatenate form on CPU (A1 of ``benchmarks/hmm_speed.py``, 6
    features of 25,600 frames: 0.45 ms against 1.3 ms)."""
    D = x.shape[-1]
    shape = (2 * D + 1, x[..., 0].numel())
    if out is None:
        out = torch.empty(shape, dtype=x.dtype, device=x.device)
    elif out.shape != shape or out.dtype != x.dtype or out.device != x.device:
        raise ValueError(
            f"out: expected a {x.dtype} tensor of shape {shape} on {x.device}, got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}"
        )
    xc, sq, one = out[D : 2 * D], out[:D], out[2 * D]
    torch.sub(x.reshape(-1, D).T, reference.detach()[:, None], out=xc)
    if mask is None:
        one.fill_(1.0)
    else:
        keep = mask.reshape(-1)
        # zeroed, not multiplied by the mask: x may be NaN there. On the CPU filling the
        # missing columns by index is about 3x faster than masked_fill_ with a broadcast mask
        # (0.065 against 0.19 ms at 6 x 25,600); on an accelerator nonzero() would synchronize
        if xc.device.type == "cpu":
            xc.index_fill_(1, (~keep).nonzero().squeeze(1), 0.0)
        else:
            xc.masked_fill_(~keep, 0.0)
        one.copy_(keep)
    torch.mul(xc, xc, out=sq)
    return out


def diagonal_gaussian_weights(loc, scale, reference) -> torch.Tensor:
    r"""Weights of the expanded diagonal-Gaussian log-density, one column per state.

    Parameters
    ----------
    loc, scale : ``state_shape + (D,)`` means :math:`\mu_k` and standard deviations
        :math:`\sigma_k`.
    reference : ``(D,)`` the centring point :math:`c` of :func:`diagonal_gaussian_features`.

    Returns
    -------
    ``(2 D + 1,) + state_shape``: rows :math:`-\tfrac12 \sigma_k^{-2}`,
    :math:`(\mu_k - c) \sigma_k^{-2}` and :math:`-\tfrac12 \sum_d (\mu_{kd} - c_d)^2
    \sigma_{kd}^{-2} - \sum_d \log \sigma_{kd} - \tfrac D2 \log 2\pi`, so that
    ``W.reshape(2 D + 1, -1).T @ diagonal_gaussian_features(x, c)`` is
    :math:`\log N(x; \mu_k, \mathrm{diag}\, \sigma_k^2)` for every state and frame at once.
    """
    D = loc.shape[-1]
    prec = scale.pow(-2)
    mc = loc - reference
    wm = mc * prec
    const = -0.5 * (mc * wm).sum(-1) - scale.log().sum(-1) - 0.5 * D * math.log(2 * math.pi)
    w = torch.cat([-0.5 * prec, wm, const[..., None]], -1)  # state_shape + (2D + 1,)
    return w.movedim(-1, 0)


def diagonal_gaussian_linear_terms(x, loc, scale, mask=None, *, out=None):
    r"""Features and weights of the expanded diagonal-Gaussian log-density, centred at the mean
    of the means.

    :math:`\log N(x; \mu_k, \mathrm{diag}\,\sigma_k^2) = [(x - c)^2, x - c, 1] \cdot W_k`
    (:func:`diagonal_gaussian_features`, :func:`diagonal_gaussian_weights`). The centring point
    :math:`c` is the mean of ``loc`` over states (detached: the density does not depend on it);
    it keeps the expanded square accurate on data far from the origin (without it, float32
    loses about :math:`\epsilon |x|^2 / \sigma^2`).

    Parameters
    ----------
    x : ``batch_shape + (D,)`` observations.
    loc, scale : ``state_shape + (D,)`` means and (positive) standard deviations.
    mask : ``batch_shape`` bool or None; a frame where it is False gets log-density 0 in every
        state (whatever ``x`` holds there, NaN included).
    out : optional buffer for the features (:func:`diagonal_gaussian_features`).

    Returns
    -------
    features : ``(2 D + 1, prod(batch_shape))``
    weights : ``(2 D + 1,) + state_shape``
    """
    D = loc.shape[-1]
    if scale.shape != loc.shape or x.shape[-1] != D:
        raise ValueError(
            f"x, loc, scale: expected loc and scale of equal shapes (..., D) and x (..., D), got "
            f"x {tuple(x.shape)}, loc {tuple(loc.shape)}, scale {tuple(scale.shape)}"
        )
    if mask is not None and mask.shape != x.shape[:-1]:
        raise ValueError(
            f"mask: expected shape {tuple(x.shape[:-1])} (x without its last axis), got "
            f"{tuple(mask.shape)}"
        )
    ref = loc.detach().reshape(-1, D).mean(0)
    features = diagonal_gaussian_features(x, ref, mask, out=out)
    return features, diagonal_gaussian_weights(loc, scale, ref)


def diagonal_gaussian_state_log_probs(x, loc, scale, mask=None) -> torch.Tensor:
    r"""Diagonal-Gaussian log-densities of every state at once, as one matrix product.

    The terms of :func:`diagonal_gaussian_linear_terms` in one ``(K, 2 D + 1) @ (2 D + 1,
    frames)`` product, whose backward to the parameters is one more.

    Parameters
    ----------
    x, loc, scale, mask
        As in :func:`diagonal_gaussian_linear_terms`.

    Returns
    -------
    ``batch_shape + state_shape``.
    """
    feats, w = diagonal_gaussian_linear_terms(x, loc, scale, mask)  # (2D + 1, B), (2D + 1, ..)
    state_shape = loc.shape[:-1]
    w = w.reshape(w.shape[0], -1)
    # (K, R) @ (R, B) (on CPU about 3x faster than (B, R) @ (R, K)), transposed back
    return (w.T @ feats).T.contiguous().reshape(x.shape[:-1] + state_shape)
