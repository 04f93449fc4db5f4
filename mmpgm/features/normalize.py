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

Robust statistics (``clip=c``): a sensor that silently fails for a stretch (a patch over the
camera, a frozen frame, a stuck channel) is, to the plain recursion, just a new level, which the
running mean and variance absorb within a few time constants, so the failing frames soon look
normal. With ``clip`` the innovation that updates the statistics is clipped (a Huber-type
running estimate),

.. math::
    d_k = \operatorname{clip}\big(x_t - m_{k-1},\ -c\,s_{k-1},\ c\,s_{k-1}\big), \qquad
    s_{k-1} = \sqrt{v_{k-1} + \epsilon^2},

in both updates above (from the third observed frame on: before it, :math:`v` rests on fewer
than two frames). A gross corruption then moves :math:`m` by at most :math:`\alpha_k c\,s` a
frame and :math:`v` grows by at most the factor :math:`(1 - \alpha_k)(1 + \alpha_k c^2)` a
frame, so it stays far out in :math:`z_t` (which uses the unclipped :math:`x_t`) for many
frames: at :math:`\lambda = 0.98,\ c = 3` a failure 100 standard deviations off is still
beyond 12 after 25 frames, where the plain statistics bring it under 3 within a few (tested).
The price is a slower adaptation to a genuine change of level, and features whose normal
behaviour is sudden large jumps (speech onsets in log-spectra: clipping them cost the audio
expert of ``benchmarks/av_speech_activity.py`` 4-16 points) are better left unclipped.

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

__all__ = ["running_normalize", "temporal_delta", "NORMALIZATIONS"]

#: Values of the ``normalize=`` options of the preparation and the benchmark.
NORMALIZATIONS = ("none", "running")


def _check(decay, eps):
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay <= 1.0:
        raise ValueError(f"decay: expected a number in (0, 1], got {decay!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps!r}")


def running_normalize(x, mask=None, lengths=None, *, decay: float = 0.98, scale: bool = True,
                      eps: float = 1e-3, clip: float | None = None):
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
    clip : float, optional
        :math:`c` of the robust statistics in the module docstring: innovations beyond ``clip``
        running standard deviations are clipped before they update the statistics (default
        ``None``: not clipped).

    Returns
    -------
    Same type, shape and (floating) dtype as ``x``
        :math:`z_t`, 0 at unobserved frames. Causal: changing frames ``> t`` never changes
        the output at frames ``<= t``.
    """
    _check(decay, eps)
    if clip is not None and (isinstance(clip, bool) or not isinstance(clip, (int, float))
                             or not clip > 0 or clip != clip):
        raise ValueError(f"clip: expected a positive number or None, got {clip!r}")
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
        if clip is not None:  # robust statistics: clipped innovations from the third frame
            lim = float(clip) * torch.sqrt(v + eps * eps)
            d = torch.where((k >= 3.0)[:, None], torch.maximum(torch.minimum(d, lim), -lim), d)
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


def temporal_delta(x: torch.Tensor, mask: torch.Tensor | None = None, *,
                   log_energy: bool = True, floor: float = 1e-6) -> torch.Tensor:
    r"""Frame-to-frame differences of every feature, a face-invariant view of appearance
    features (the delta features of audio-visual speech recognition, Potamianos et al. 2003).

    .. math::
        \Delta_t = x_t - x_{t'}, \qquad
        e_t = \log\Big(\frac{1}{D}\sum_d \Delta_{td}^2 + \phi\Big),

    with :math:`t'` the previous observed frame of the sequence. The static part of the
    features (which face, where its mouth sits in the crop, the lighting) cancels in
    :math:`\Delta_t`; what is left is how the region changes. On orthonormal DCT
    coefficients :math:`e_t` is (by Parseval, up to the discarded high frequencies) the
    log mean-square frame difference of the region's pixels: its motion energy, which does
    not depend on where in the crop the motion happens. Causal.

    Parameters
    ----------
    x : Tensor ``(N, T, D)``
        Features.
    mask : bool Tensor ``(N, T)``, optional
        Observed frames (default all). Unobserved frames give 0 and are skipped: the
        difference at ``t`` is taken to the last observed frame before it.
    log_energy : bool
        Append :math:`e_t` as a last column (output ``(N, T, D + 1)``).
    floor : float
        :math:`\phi > 0`, in squared feature units.

    Returns
    -------
    Tensor ``(N, T, D)`` or ``(N, T, D + 1)``
        0 on the first observed frame of every sequence (both the differences and,
        there, :math:`e_t = \log \phi` is replaced by 0) and on unobserved frames.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 3 or not x.is_floating_point():
        raise ValueError(f"x: expected a floating tensor (N, T, D), got {getattr(x, 'shape', x)}")
    N, T, D = x.shape
    if mask is None:
        mask = torch.ones(N, T, dtype=torch.bool, device=x.device)
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (N, T):
        raise ValueError(f"mask: expected a bool tensor of shape ({N}, {T})")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not floor > 0:
        raise ValueError(f"floor: expected a positive number, got {floor!r}")
    mask = mask.to(device=x.device, dtype=torch.bool)
    prev = torch.zeros(N, D, dtype=x.dtype, device=x.device)
    seen = torch.zeros(N, dtype=torch.bool, device=x.device)
    out = torch.zeros_like(x)
    has = torch.zeros(N, T, dtype=torch.bool, device=x.device)
    for t in range(T):
        o = mask[:, t]
        d = x[:, t] - prev
        ok = o & seen
        out[:, t] = torch.where(ok[:, None], d, torch.zeros_like(d))
        has[:, t] = ok
        prev = torch.where(o[:, None], x[:, t], prev)
        seen = seen | o
    if not log_energy:
        return out
    e = torch.log((out**2).mean(-1) + float(floor))
    e = torch.where(has, e, torch.zeros_like(e))
    return torch.cat([out, e[..., None]], -1)
