"""Data-driven start of the multimodal HMM (a diagonal Gaussian mixture on all streams for the
shared chain, then k-means on each stream's residuals for its private chain)."""

from __future__ import annotations

import torch

from ...data import MultimodalData
from ...ops.gmm import diagonal_gmm
from ...ops.kmeans import kmeans


@torch.no_grad()
def init_from_data(model, data: MultimodalData, seed: int = 0) -> None:
    """Data-driven start that respects the shared/private structure.

    1. a diagonal Gaussian mixture with ``K_s`` components on the standardized frames of all
       modalities together (missing entries left out of the likelihood; several k-means++
       starts, the best kept; :func:`mmpgm.ops.gmm.diagonal_gmm`) gives a shared label per
       frame and per-modality shared centres :math:`c^m_s`. Unlike k-means it lets clusters
       differ in spread, so states whose noise levels differ many-fold are not split and
       merged wrongly;
    2. k-means with ``K_m`` clusters on each modality's residuals :math:`x^m_t - c^m_{s_t}`
       gives private offsets :math:`d^m_p`;
    3. emission means start at :math:`c^m_s + d^m_p` (additive, as in the generative story),
       the weak priors at the data scale, then one M-step from the mixture's responsibilities
       (soft shared labels) and the private labels sets per-state means and spreads;
    4. with ``sensor_faults``, the background densities are fitted to the pooled frames.

    Called by :func:`mmpgm.fit` before the first fit; ``seed`` makes it reproducible.
    """
    data = model._checked(data)
    gen = torch.Generator().manual_seed(seed)
    inside = data.time_mask
    cols, observed = [], []
    for m in model.modalities:
        x = data.filled(m)
        obs = data.mask[m]
        if not bool(obs.any()):
            raise ValueError(f"data.obs[{m!r}]: no observed frame to initialize from")
        e = model.emissions[m]
        if e.discrete:
            x = torch.nn.functional.one_hot(e.pyro_value(x), e.num_categories).to(x)
        mu = x[obs].mean(0)
        xo = x[obs]
        floor = (16 * torch.finfo(x.dtype).eps * xo.square().mean(0)).sqrt()  # relative to units
        sd = (
            xo.std(0).clamp_min(floor).clamp_min(torch.finfo(x.dtype).tiny)
            if int(obs.sum()) > 1
            else torch.ones_like(mu)
        )
        z = torch.where(obs[..., None], (x - mu) / sd, torch.zeros_like(x))
        cols.append(z)
        observed.append(obs[..., None].expand(z.shape))
    frames = torch.cat(cols, -1)[inside]  # (F, sum D)
    frame_mask = torch.cat(observed, -1)[inside]
    gmm = diagonal_gmm(frames, frame_mask, model.num_shared_states, generator=gen)
    shared = gmm.responsibilities.argmax(-1)
    for m in model.modalities:
        e = model.emissions[m]
        obs = data.mask[m][inside]
        x = data.filled(m)[inside][obs]
        s = shared[obs]
        if e.discrete:
            e.init_from_data(x, generator=gen)
            continue
        K_s, K_m = e.state_shape
        counts = torch.bincount(s, minlength=K_s).to(x.dtype)
        sums = torch.zeros(K_s, x.shape[-1], dtype=x.dtype, device=x.device).index_add_(0, s, x)
        global_mean = x.mean(0)
        centres = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], global_mean)
        resid = x - centres[s]
        private = kmeans(resid, K_m, generator=gen)
        e.init_from_data(x, generator=gen, means=centres[:, None, :] + private.centers[None])
        # one M-step from the mixture's soft shared labels and the hard private ones: per-state
        # means and spreads (not one pooled variance), so EM starts in the right basin
        onehot = torch.nn.functional.one_hot(private.assignments, K_m).to(x.dtype)
        e.m_step(x, gmm.responsibilities[obs][:, :, None] * onehot[:, None, :])
    model.fit_fault_background(data)
