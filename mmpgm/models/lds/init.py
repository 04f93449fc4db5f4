"""Data-driven start of the multimodal LDS (generalized-CCA shared scores, then per-block
least squares)."""

from __future__ import annotations

import math

import torch

from ...data import MultimodalData
from ...ops.linalg import symmetrize


def _lstsq(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Least-squares solution of ``A X = B``; on the CPU with LAPACK's SVD driver ``gelsd``: the
    default ``gelsy`` (MKL) varies in the last bits with the memory alignment of its inputs, which
    made :func:`init_from_data` not bitwise reproducible from call to call (CUDA has ``gels``)."""
    driver = "gelsd" if A.device.type == "cpu" else None
    return torch.linalg.lstsq(A, B, driver=driver).solution


@torch.no_grad()
def init_from_data(model, data: MultimodalData, seed: int = 0) -> None:
    """Data-driven start that respects the shared/private structure.

    1. PCA of the concatenated observations, each modality whitened (missing frames at the
       mean), gives ``k_s`` shared scores (this is MAXVAR generalized CCA: the directions the
       modalities have in common; plain PCA of the standardized data for one modality);
       :math:`C^m_s, d^m` by least
       squares of each modality on them (observed frames);
    2. PCA of each modality's residuals gives ``k_m`` private scores and :math:`C^m_m`;
    3. :math:`A_b` by least squares of consecutive scores (shrunk into the stable set),
       :math:`Q_b = I - A_b A_b^\\top` (unit stationary variance), :math:`P_0 = I`,
       :math:`R_m` the residual (co)variance; the noise-prior scale is set to the data variance.

    Deterministic (``seed`` is accepted for the :func:`mmpgm.fit` protocol).
    """
    data = model._checked(data)
    p = model._param()
    inside = data.time_mask
    cols, stats = [], {}
    for m in model.modalities:
        x, obs = data.filled(m), data.mask[m]
        if int(obs.sum()) < 2:
            raise ValueError(
                f"data.obs[{m!r}]: need at least 2 observed frames to initialize, got "
                f"{int(obs.sum())}"
            )
        mu = x[obs].mean(0)
        xo = x[obs]
        floor = (16 * torch.finfo(x.dtype).eps * xo.square().mean(0)).sqrt()  # relative to units
        sd = xo.std(0).clamp_min(floor).clamp_min(torch.finfo(x.dtype).tiny)
        stats[m] = (mu, sd)
        model.emissions[m].data_var.copy_(sd.square())
        z = torch.where(obs[..., None], (x - mu) / sd, torch.zeros_like(x))
        if len(model.modalities) > 1:
            # whiten each modality: PCA of the concatenation is then MAXVAR generalized CCA,
            # whose leading directions are those the modalities share (private variance,
            # however large, is not favoured)
            zo = z[obs]
            cov = zo.mT @ zo / zo.shape[0]
            cov = cov + 1e-3 * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
            evals, evecs = torch.linalg.eigh(cov)
            z = z @ (evecs * evals.rsqrt()) @ evecs.mT
        else:
            z = z / math.sqrt(z.shape[-1])
        cols.append(z)
    X = torch.cat(cols, -1)  # (N, T, sum D)
    F = X[inside]
    _, _, Vh = torch.linalg.svd(F - F.mean(0), full_matrices=False)
    ks = model.shared_dim
    V = Vh[:ks].mT
    if V.shape[-1] < ks:
        V = torch.cat([V, V.new_zeros(V.shape[0], ks - V.shape[-1])], -1)
    zs = X @ V
    zs = zs / zs[inside].std(0).clamp_min(1e-8)
    scores = {"shared": zs}
    for m in model.modalities:
        e = model.emissions[m]
        x, obs = data.filled(m), data.mask[m]
        Z = torch.cat([zs[obs], torch.ones_like(zs[obs][:, :1])], -1)
        W = _lstsq(Z, x[obs]).mT  # (D, ks + 1)
        e.shared_weight.copy_(W[:, :ks])
        e.offset.copy_(W[:, -1])
        resid = x - zs @ W[:, :ks].mT - W[:, -1]
        km = model.private_dims[m]
        if km > 0:
            r = resid[obs]
            _, _, Vr = torch.linalg.svd(r - r.mean(0), full_matrices=False)
            Vm = Vr[:km].mT
            if Vm.shape[-1] < km:
                Vm = torch.cat([Vm, Vm.new_zeros(Vm.shape[0], km - Vm.shape[-1])], -1)
            zm = torch.where(obs[..., None], resid @ Vm, torch.zeros(()).to(resid))
            zo = zm[obs]  # in the data's units: a floor relative to them
            floor = (16 * torch.finfo(zo.dtype).eps * zo.square().mean(0)).sqrt()
            zm = zm / zo.std(0).clamp_min(floor).clamp_min(torch.finfo(zo.dtype).tiny)
            scores[m] = zm
            Cm = _lstsq(zm[obs], resid[obs]).mT
            e.private_weight.copy_(Cm)
            resid = resid - zm @ Cm.mT
        r = resid[obs]
        Rm = r.mT @ r / r.shape[0]
        floor = 1e-2 * e.data_var
        Rm = Rm + torch.diag(floor)
        e.set_noise_cov(Rm if e.noise == "full" else torch.diag(Rm.diagonal()))
    for b in model.block_names:
        d = model.dynamics[b]
        z = scores[b]
        ok = inside if b == "shared" else data.mask[b]
        pair = ok[:, :-1] & ok[:, 1:]
        k = d.dim
        eye = torch.eye(k, dtype=p.dtype, device=p.device)
        if int(pair.sum()) > k:
            z0, z1 = z[:, :-1][pair], z[:, 1:][pair]
            A = torch.linalg.solve(z0.mT @ z0 + 1e-6 * eye, z0.mT @ z1).mT
        else:
            A = 0.9 * eye
        norm = float(torch.linalg.matrix_norm(A, ord=2))
        cap = 0.95 * (d.max_spectral_norm if d.stable else 1.0)
        A = A * min(1.0, cap / max(norm, 1e-12))
        d.set_transition_matrix(A)
        d.transition_scale_tril = torch.linalg.cholesky(symmetrize(eye - A @ A.mT) + 1e-3 * eye)
        d.init_loc.zero_()
        d.init_scale_tril = eye
