"""Dense joint-Gaussian oracle for the Kalman ops tests (shared by ``test_kalman.py`` and
``test_kalman_implementations.py``): random stable models, simulated observations, mask
scenarios, and exact moments by conditioning the joint Gaussian of all states and observations
(differentiable, so its autograd gives reference gradients)."""

from __future__ import annotations

import torch

from mmpgm.ops.kalman import LinearGaussianParams

DT = torch.float64


def spd(n, gen, batch=(), scale=1.0, floor=0.3):
    X = torch.randn(*batch, n, n, generator=gen, dtype=DT)
    return scale * (X @ X.mT / n + floor * torch.eye(n, dtype=DT))


def make_params(S=3, dims=(2, 1), U=None, N=None, seed=0):
    """Random stable model; with ``N`` every parameter is per sequence."""
    g = torch.Generator().manual_seed(seed)
    b = () if N is None else (N,)
    A = torch.randn(*b, S, S, generator=g, dtype=DT)
    A = 0.9 * A / torch.linalg.matrix_norm(A, ord=2).unsqueeze(-1).unsqueeze(-1)
    return LinearGaussianParams(
        initial_mean=torch.randn(*b, S, generator=g, dtype=DT),
        initial_cov=spd(S, g, b),
        transition_matrix=A,
        transition_cov=spd(S, g, b, scale=0.5),
        emission_matrices=tuple(torch.randn(*b, d, S, generator=g, dtype=DT) for d in dims),
        emission_offsets=tuple(torch.randn(*b, d, generator=g, dtype=DT) for d in dims),
        emission_covs=tuple(spd(d, g, b, scale=0.4) for d in dims),
        control_matrix=None if U is None else torch.randn(*b, S, U, generator=g, dtype=DT),
    )


def sample_obs(params, N, T, seed=1, controls=None):
    g = torch.Generator().manual_seed(seed)
    S = params.initial_mean.shape[-1]

    def per(x, n, core):
        return x if x.dim() > core else x.expand(N, *x.shape)

    A = per(params.transition_matrix, N, 2)
    Lq = torch.linalg.cholesky(per(params.transition_cov, N, 2))
    z = per(params.initial_mean, N, 1) + (
        torch.linalg.cholesky(per(params.initial_cov, N, 2))
        @ torch.randn(N, S, 1, generator=g, dtype=DT)
    ).squeeze(-1)
    zs = [z]
    for t in range(1, T):
        z = (A @ z.unsqueeze(-1)).squeeze(-1) + (
            Lq @ torch.randn(N, S, 1, generator=g, dtype=DT)
        ).squeeze(-1)
        if controls is not None:
            z = z + (per(params.control_matrix, N, 2) @ controls[:, t].unsqueeze(-1)).squeeze(-1)
        zs.append(z)
    Z = torch.stack(zs, 1)
    obs = []
    for C, d, R in zip(
        params.emission_matrices, params.emission_offsets, params.emission_covs, strict=True
    ):
        C, d, R = per(C, N, 2), per(d, N, 1), per(R, N, 2)
        Dm = C.shape[-2]
        noise = (
            torch.linalg.cholesky(R).unsqueeze(1) @ torch.randn(N, T, Dm, 1, generator=g, dtype=DT)
        ).squeeze(-1)
        obs.append((C.unsqueeze(1) @ Z.unsqueeze(-1)).squeeze(-1) + d.unsqueeze(1) + noise)
    return obs


def dense_reference(params, obs, masks, controls=None, n=0):
    """Exact moments for sequence ``n`` by conditioning the dense joint Gaussian.

    Returns (loglik, filtered means/covs, smoothed means/covs, cross covs).
    """

    def sel(x, core):
        return x[n] if x.dim() > core else x

    A = sel(params.transition_matrix, 2)
    Q = sel(params.transition_cov, 2)
    mu0, P0 = sel(params.initial_mean, 1), sel(params.initial_cov, 2)
    Cs = [sel(c, 2) for c in params.emission_matrices]
    ds = [sel(d, 1) for d in params.emission_offsets]
    Rs = [sel(r, 2) for r in params.emission_covs]
    T = obs[0].shape[1]
    S = mu0.shape[0]
    dims = [c.shape[0] for c in Cs]
    D = sum(dims)
    # state means
    mus = [mu0]
    for t in range(1, T):
        mt = A @ mus[-1]
        if controls is not None:
            mt = mt + sel(params.control_matrix, 2) @ controls[n, t]
        mus.append(mt)
    mz = torch.cat(mus)
    # z = G w with G[t, k] = A^{t-k}
    G = torch.zeros(T * S, T * S, dtype=DT)
    for t in range(T):
        for k in range(t + 1):
            G[t * S : (t + 1) * S, k * S : (k + 1) * S] = torch.linalg.matrix_power(A, t - k)
    Wcov = torch.block_diag(P0, *([Q] * (T - 1)))
    Szz = G @ Wcov @ G.mT
    Cfull = torch.cat(Cs, 0)
    Rfull = torch.block_diag(*Rs)
    dfull = torch.cat(ds)
    Cbig = torch.block_diag(*([Cfull] * T))
    mx = Cbig @ mz + dfull.repeat(T)
    Sxx = Cbig @ Szz @ Cbig.mT + torch.block_diag(*([Rfull] * T))
    Szx = Szz @ Cbig.mT
    x = torch.cat([o[n] for o in obs], -1).reshape(-1)  # (T*D,)
    obs_rows = torch.cat(
        [m[n].unsqueeze(-1).expand(T, d) for m, d in zip(masks, dims, strict=True)], -1
    ).reshape(-1)
    time_of_row = torch.arange(T).repeat_interleave(D)

    def condition(rows):
        idx = torch.nonzero(rows).squeeze(-1)
        if idx.numel() == 0:
            return mz, Szz
        Soo = Sxx[idx][:, idx]
        K = torch.linalg.solve(Soo, Szx[:, idx].mT).mT
        m = mz + K @ (x[idx] - mx[idx])
        P = Szz - K @ Szx[:, idx].mT
        return m, P

    idx = torch.nonzero(obs_rows).squeeze(-1)
    if idx.numel():
        ll = torch.distributions.MultivariateNormal(mx[idx], Sxx[idx][:, idx]).log_prob(x[idx])
    else:
        ll = torch.zeros((), dtype=DT)
    fm, fP = [], []
    for t in range(T):
        m, P = condition(obs_rows & (time_of_row <= t))
        fm.append(m[t * S : (t + 1) * S])
        fP.append(P[t * S : (t + 1) * S, t * S : (t + 1) * S])
    m, P = condition(obs_rows)
    sm = m.reshape(T, S)
    sP = torch.stack([P[t * S : (t + 1) * S, t * S : (t + 1) * S] for t in range(T)])
    cross = (
        torch.stack([P[(t + 1) * S : (t + 2) * S, t * S : (t + 1) * S] for t in range(T - 1)])
        if T > 1
        else torch.zeros(0, S, S, dtype=DT)
    )
    return ll, torch.stack(fm), torch.stack(fP), sm, sP, cross


def masks_scenario(N, T, M, kind, seed=3):
    g = torch.Generator().manual_seed(seed)
    masks = [torch.ones(N, T, dtype=torch.bool) for _ in range(M)]
    if kind == "full":
        return masks
    if kind == "stretch":  # modality 0 hidden over a stretch, then all-missing frames
        masks[0][:, 1:4] = False
        for m in masks:
            m[:, min(4, T - 1)] = False
        masks[-1][-1, 0] = False
        return masks
    if kind == "random":
        return [torch.rand(N, T, generator=g) < 0.6 for _ in range(M)]
    raise ValueError(kind)


def nan_masked(obs, masks):
    return [
        torch.where(m.unsqueeze(-1), o, torch.full_like(o, float("nan")))
        for o, m in zip(obs, masks, strict=True)
    ]


def leaf_params(base, m0=None):
    leaves = [
        t.clone().requires_grad_(True)
        for t in (
            base.initial_mean if m0 is None else m0,
            base.initial_cov,
            base.transition_matrix,
            base.transition_cov,
            *base.emission_matrices,
            *base.emission_offsets,
            *base.emission_covs,
            base.control_matrix,
        )
    ]
    M = len(base.emission_matrices)
    params = LinearGaussianParams(
        leaves[0],
        leaves[1],
        leaves[2],
        leaves[3],
        tuple(leaves[4 : 4 + M]),
        tuple(leaves[4 + M : 4 + 2 * M]),
        tuple(leaves[4 + 2 * M : 4 + 3 * M]),
        leaves[-1],
    )
    return params, leaves
