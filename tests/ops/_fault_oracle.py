"""Exact posterior of the sensor-fault model by enumerating every fault pattern (shared by
``tests/ops/test_kalman_robust.py`` and ``tests/models/test_lds_faults.py``).

Model (:mod:`mmpgm.ops.kalman.robust`): every observed frame ``t`` of a faulty modality ``m``
has :math:`f^m_t \\sim \\mathrm{Bernoulli}(\\rho_m)`; faulty frames are drawn from a background
:math:`g_m` independent of the states.  For a pattern :math:`f`, :math:`p(x, f) = p(f)
\\prod_{f=1} g(x) \\; p(x_{f=0})` with :math:`p(x_{f=0})` the Gaussian likelihood of the frames
left observed, so the exact posterior is a mixture of :math:`2^{n}` Gaussians (``n`` the
observed frames of faulty modalities), each computed here by the dense joint-Gaussian oracle
(``_kalman_oracle.dense_reference``), independent of the Kalman code under test.
"""

from __future__ import annotations

import itertools
import math
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _kalman_oracle import dense_reference  # noqa: E402

sys.path.pop(0)


def enumerate_faults(params, obs, masks, log_bg, rates, n=0, filtered_at=None):
    """Exact quantities of sequence ``n`` by enumeration.

    Parameters
    ----------
    params : LinearGaussianParams with tuple (positional) per-modality entries.
    obs, masks : lists over modalities of ``(N, T, D_m)`` / ``(N, T)`` bool.
    log_bg : list over modalities of ``(N, T)`` log g (None: modality without faults).
    rates : list of floats (None without faults).
    filtered_at : int, optional
        Use only frames ``<= filtered_at`` (then fault marginals are filtered ones,
        :math:`p(f_t \\mid x_{1:t})` at ``t = filtered_at``).

    Returns
    -------
    dict with ``log_lik`` (scalar), ``fault_probs`` (list of ``(T,)``, 0 where not enumerated),
    ``mean`` ``(T, S)`` the exact posterior mean of the states (smoothed over the used frames),
    ``filtered_mean`` ``(S,)`` at ``filtered_at`` when given.
    """
    M = len(obs)
    T = obs[0].shape[1]
    masks = [mk.clone() for mk in masks]
    if filtered_at is not None:
        for mk in masks:
            mk[:, filtered_at + 1 :] = False
    slots = [
        (m, t) for m in range(M) if log_bg[m] is not None for t in range(T) if bool(masks[m][n, t])
    ]
    logw, means, fmeans, pats = [], [], [], []
    for pat in itertools.product((0, 1), repeat=len(slots)):
        mk = [x.clone() for x in masks]
        lj = 0.0
        for (m, t), f in zip(slots, pat, strict=True):
            rho = rates[m]
            if f:
                mk[m][n, t] = False
                lj += math.log(rho) + float(log_bg[m][n, t])
            else:
                lj += math.log1p(-rho)
        ll, fm, _, sm, _, _ = dense_reference(params, obs, mk, n=n)
        logw.append(lj + float(ll))
        means.append(sm)
        fmeans.append(fm)
        pats.append(pat)
    logw = torch.tensor(logw, dtype=torch.float64)
    log_lik = torch.logsumexp(logw, 0)
    post = (logw - log_lik).exp()
    mean = (post[:, None, None] * torch.stack(means)).sum(0)
    probs = [torch.zeros(T, dtype=torch.float64) for _ in range(M)]
    for i, (m, t) in enumerate(slots):
        sel = torch.tensor([p[i] for p in pats], dtype=torch.float64)
        probs[m][t] = (post * sel).sum()
    out = {"log_lik": log_lik, "fault_probs": probs, "mean": mean}
    if filtered_at is not None:
        out["filtered_mean"] = (post[:, None] * torch.stack(fmeans)[:, filtered_at]).sum(0)
    return out
