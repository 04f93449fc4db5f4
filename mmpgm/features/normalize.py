r"""Causal per-utterance feature normalization (DESIGN.md section 6; issue 12, item 4).

A model trained on one recording setup meets another with other levels: another microphone gain,
another face photograph, another lighting. Features standardized with *corpus* statistics carry
those absolute levels into the experts (the babble-trained audio experts of issue 12 said "no
speech" on every frame of a new corpus). :func:`running_normalize` removes them per utterance,
causally (frame ``t`` only uses frames ``<= t``, so it runs online):

.. math::
    \alpha_k = \max(1/k,\ 1 - \lambda), \qquad
    m_k = m_{k-1} + \alpha_k (x_t - m_{k-1}), \qquad
    v_k = (1 - \alpha_k)\,\big(v_{k-1} + \alpha_k (x_t - m_{k-1})^2\big),

    z_t = \frac{x_t - m_k}{\sqrt{v_k + \epsilon^2}} \quad (\texttt{scale=True}), \qquad
    z_t = x_t - m_k \quad (\texttt{scale=False}),

where ``k`` counts the *observed* frames of the utterance up to and including ``t`` and
:math:`\lambda` is ``decay``. The warm-up :math:`\alpha_k = 1/k` makes :math:`m_k, v_k` the
exact mean and (biased) variance of the first ``k`` observed frames until :math:`1/k` falls
below :math:`1 - \lambda` (after ``1 / (1 - decay)`` frames); from then on they are
exponentially weighted with time constant ``1 / (1 - decay)`` frames. ``decay=1`` gives the
cumulative mean and variance of the utterance so far. The first frame of an utterance is always
0 (nothing to compare it with).

Unobserved frames (``mask`` False, or past ``lengths``) neither update the statistics nor are
normalized: they come out as 0.

Gain invariance: on log-magnitude features (log-STFT, log-mel, their band means) a gain ``g``
of the waveform adds ``log g`` to every bin of every frame (exactly, up to the ``1e-5`` floor of
:data:`mmpgm.features.audio.LOG_EPS` in digitally silent bins), which :math:`m_k` absorbs:
``running_normalize(log_features + c) == running_normalize(log_features)`` for any constant
``c`` (tested). With ``scale=True`` the output is also invariant to a positive scale of the
features (video features under another contrast), up to :math:`\epsilon`. MFCCs share the
property for their 0-th coefficient only through the DCT's linearity (a constant log offset
moves only ``c_0``), so the running mean removes it too.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["running_normalize", "NORMALIZATIONS"]

#: Values of the ``normalize=`` options of the preparation and the benchmark.
NORMALIZATIONS = ("none", "running")


def _check(decay, eps):
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
        raise ValueError(f"decay: expected a number in (0, 1], got {decay!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")


def running_normalize(x, mask=None, lengths=None, *, decay: float = 0.98, scale: bool = True,
                      eps: float = 1e-3):
    r"""Causal running mean / variance normalization of every feature of every sequence.

    Parameters
    ----------
    x : Tensor or ndarray ``(N, T, D)`` or ``(T, D)``
        Features; NaN entries are treated as unobserved frames (the whole frame).
    mask : bool ``(N, T)`` or ``(T,)``, optional
        Observed frames (default: the frames without NaN, inside ``lengths``).
    lengths : int ``(N,)``, optional
        True lengths; frames ``t >= lengths[n]`` are unobserved.
    decay : float in (0, 1]
        :math:`\lambda` of the module docstring (time constant ``1 / (1 - decay)`` frames;
        ``1`` = cumulative statistics of the utterance so far).
    scale : bool
        Divide by the running standard deviation (else only subtract the running mean).
    eps : float
        :math:`\epsilon`, floor of the standard deviation (feature units).

    Returns
    -------
    Same type, shape and (floating) dtype as ``x``
        :math:`z_t`, 0 at unobserved frames. Causal: changing frames ``> t`` never changes
        the output at frames ``<= t``.
    """
    _check(decay, eps)
    is_numpy = not isinstance(x, torch.Tensor)
    xt = torch.as_tensor(np.asarray(x) if is_numpy else x)
    if not xt.is_floating_point():
        xt = xt.to(torch.get_default_dtype())
    squeeze = xt.dim() == 2
    if squeeze:
        xt = xt[None]
    if xt.dim() != 3:
        raise ValueError(f"x: expected shape (N, T, D) or (T, D), got {tuple(xt.shape)}")
    N, T, D = xt.shape
    obs = ~torch.isnan(xt).any(-1)
    if mask is not None:
        mk = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        mk = mk.to(device=xt.device, dtype=torch.bool)
        if squeeze and mk.dim() == 1:
            mk = mk[None]
        if tuple(mk.shape) != (N, T):
            raise ValueError(f"mask: expected shape ({N}, {T}), got {tuple(mk.shape)}")
        obs = obs & mk
    if lengths is not None:
        ln = torch.as_tensor(np.asarray(lengths) if not isinstance(lengths, torch.Tensor)
                             else lengths).to(xt.device).reshape(-1)
        if ln.shape[0] != N:
            raise ValueError(f"lengths: expected shape ({N},), got {tuple(ln.shape)}")
        obs = obs & (torch.arange(T, device=xt.device)[None] < ln[:, None])
    xf = torch.where(obs[..., None], xt, torch.zeros((), dtype=xt.dtype, device=xt.device))
    m = torch.zeros(N, D, dtype=xt.dtype, device=xt.device)
    v = torch.zeros(N, D, dtype=xt.dtype, device=xt.device)
    k = torch.zeros(N, dtype=xt.dtype, device=xt.device)
    floor = 1.0 - float(decay)
    out = torch.zeros_like(xf)
    for t in range(T):
        o = obs[:, t]
        k = k + o.to(xt.dtype)
        a = torch.clamp(1.0 / k.clamp_min(1.0), min=floor)[:, None]
        d = xf[:, t] - m
        m_new = m + a * d
        v_new = (1.0 - a) * (v + a * d * d)
        m = torch.where(o[:, None], m_new, m)
        v = torch.where(o[:, None], v_new, v)
        z = xf[:, t] - m
        if scale:
            z = z / torch.sqrt(v + eps * eps)
        out[:, t] = torch.where(o[:, None], z, torch.zeros_like(z))
    if squeeze:
        out = out[0]
    if is_numpy:
        return out.numpy().astype(np.asarray(x).dtype if np.asarray(x).dtype.kind == "f"
                                  else np.float64, copy=False)
    return out
