"""Seeded statistical checks of the MVRNN after short fits (marked slow).

Measured numbers (seeds fixed, float32, 2 shared CPU cores) are stated next to each assertion.
"""

import math
import time

import pytest
import torch

import mmpgm
from mmpgm import MultimodalData
from mmpgm.models.mvrnn import MVRNN

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def ar1(phi, N, T, g):
    z = torch.zeros(N, T)
    z[:, 0] = torch.randn(N, generator=g)
    e = torch.randn(N, T, generator=g) * math.sqrt(1 - phi**2)
    for t in range(1, T):
        z[:, t] = phi * z[:, t - 1] + e[:, t]
    return z


def factor_data(seed, N, T):
    """One shared AR(1) factor s (phi 0.5) and one private AR(1) factor per stream (phi 0.3), each
    of unit variance, mixed linearly into 6- and 5-dimensional streams with noise sd 0.3."""
    g = torch.Generator().manual_seed(seed)
    s, pa, pb = ar1(0.5, N, T, g), ar1(0.3, N, T, g), ar1(0.3, N, T, g)
    gw = torch.Generator().manual_seed(123)  # the same mixing for every split
    Wa, Wb = torch.randn(2, 6, generator=gw), torch.randn(2, 5, generator=gw)
    Wa[0] *= 1.5
    Wb[0] *= 1.5
    xa = torch.stack([s, pa], -1) @ Wa + 0.3 * torch.randn(N, T, 6, generator=g)
    xb = torch.stack([s, pb], -1) @ Wb + 0.3 * torch.randn(N, T, 5, generator=g)
    return MultimodalData({"a": xa, "b": xb}), {"shared": s, "a": pa, "b": pb}


def probe_r2(z, y):
    """Held-in R^2 of the least-squares linear probe y ~ z (with intercept), over all frames."""
    X = torch.cat([z.reshape(-1, z.shape[-1]), torch.ones(z.shape[0] * z.shape[1], 1)], -1).double()
    Y = y.reshape(-1, 1).double()
    beta = torch.linalg.lstsq(X, Y).solution
    return float(1 - ((Y - X @ beta) ** 2).sum() / ((Y - Y.mean()) ** 2).sum())


def annealed_fit(model, data, steps_per_stage):
    """The default fit: KL annealing kl_scale 0 -> 0.3 -> 1 over three equal stages and lr 1e-2
    (without annealing the shared latent collapses: measured R^2(s | z^s) <= 0.04 after 150-300
    steps at kl_scale 1)."""
    assert model.kl_annealing == (0.0, 0.3, 1.0)
    mmpgm.fit(model, data, num_steps=3 * steps_per_stage, seed=0, progress=False, patience=0)


def test_shared_and_private_latents_separate_and_imputation_beats_the_mean():
    torch.manual_seed(0)
    train, _ = factor_data(0, 64, 20)
    test, factors = factor_data(1, 64, 20)
    model = MVRNN({"a": 6, "b": 5}, hidden_dim=16, shared_dim=1, private_dim=1)
    t0 = time.perf_counter()
    annealed_fit(model, train, 50)
    elapsed = time.perf_counter() - t0
    post = model.posterior(test, seed=0)
    r2 = {f: {b: probe_r2(post.mean[b], y) for b in model.blocks} for f, y in factors.items()}
    print(f"fit {elapsed:.1f} s; held-out probe R^2 (factor -> latent block): {r2}")
    # measured: shared factor from z^s 0.98, from z^a 0.00, from z^b 0.00
    assert r2["shared"]["shared"] > 0.8
    assert r2["shared"]["shared"] > max(r2["shared"]["a"], r2["shared"]["b"]) + 0.5
    # measured: private a from z^a 0.91 vs from z^s 0.00; private b from z^b 0.95 vs 0.00
    for m in ("a", "b"):
        assert r2[m][m] > 0.7
        assert r2[m][m] > r2[m]["shared"] + 0.5
    # cross-modal imputation vs predicting the training mean (which is also what a unimodal model
    # of the imputed stream, blind to the other streams, predicts when the stream is absent)
    for m in ("a", "b"):
        imp = model.impute(test, m, num_samples=8, seed=0)
        x = test.obs[m]
        mse = float(((imp.mean - x) ** 2).mean())
        base = float(((train.obs[m].mean((0, 1)) - x) ** 2).mean())
        print(f"impute {m}: mse {mse:.3f} vs mean {base:.3f}")
        assert mse < 0.85 * base  # measured: a 0.50 vs 1.11, b 0.79 vs 1.42


def lgssm(seed, N, T):
    """2-modality linear-Gaussian state-space model, latent 2, observations 2 + 2."""
    g = torch.Generator().manual_seed(seed)
    gp = torch.Generator().manual_seed(7)
    A = torch.tensor([[0.8, -0.3], [0.3, 0.8]], dtype=torch.float64)
    Q = 0.3 * torch.eye(2, dtype=torch.float64)
    C = {
        "a": torch.randn(2, 2, generator=gp, dtype=torch.float64),
        "b": torch.randn(2, 2, generator=gp, dtype=torch.float64),
    }
    R = {
        "a": torch.tensor([0.2, 0.3], dtype=torch.float64),
        "b": torch.tensor([0.25, 0.15], dtype=torch.float64),
    }
    z = torch.zeros(N, T, 2, dtype=torch.float64)
    z[:, 0] = torch.randn(N, 2, generator=g, dtype=torch.float64)
    for t in range(1, T):
        z[:, t] = (
            z[:, t - 1] @ A.T + torch.randn(N, 2, generator=g, dtype=torch.float64) @ Q.sqrt().T
        )
    obs = {
        m: z @ C[m].T + R[m].sqrt() * torch.randn(N, T, 2, generator=g, dtype=torch.float64)
        for m in C
    }
    return obs, (A, Q, C, R)


def lgssm_exact_log_likelihood(obs, params):
    """Dense joint Gaussian over all T * 4 observations of each sequence."""
    A, Q, C, R = params
    N, T, _ = obs["a"].shape
    S = 2
    # z = M e with e_1 ~ N(0, I), e_t ~ N(0, Q)
    M = torch.zeros(T * S, T * S, dtype=torch.float64)
    for t in range(T):
        for k in range(t + 1):
            M[t * S : (t + 1) * S, k * S : (k + 1) * S] = torch.linalg.matrix_power(A, t - k)
    E = torch.block_diag(torch.eye(S, dtype=torch.float64), *[Q] * (T - 1))
    Cfull = torch.block_diag(*[torch.cat([C["a"], C["b"]], 0)] * T)
    cov = Cfull @ M @ E @ M.T @ Cfull.T + torch.diag(torch.cat([R["a"], R["b"]]).repeat(T))
    x = torch.cat([obs["a"], obs["b"]], -1).reshape(N, T * 4)
    return torch.distributions.MultivariateNormal(
        torch.zeros(T * 4, dtype=torch.float64), cov
    ).log_prob(x)


def test_trained_elbo_stays_below_the_exact_log_likelihood_of_the_true_state_space_model():
    torch.manual_seed(0)
    T = 8
    obs_train, params = lgssm(0, 128, T)
    obs_test, _ = lgssm(1, 32, T)
    train = MultimodalData({m: v.float() for m, v in obs_train.items()})
    model = MVRNN({"a": 2, "b": 2}, hidden_dim=16, shared_dim=2, private_dim=1)
    annealed_fit(model, train, 60)
    model = model.double()
    test = MultimodalData(obs_test)
    exact = lgssm_exact_log_likelihood(obs_test, params)
    with torch.no_grad():
        K = 256
        elbo = model.sequence_elbo(test, kl_scale=1.0, repeat=K).reshape(K, -1).mean(0)
        iwae = model.log_likelihood(test, num_particles=K, seed=0)
    gap = (exact - elbo) / T
    gap_iwae = (exact - iwae) / T
    print(
        f"held-out gap exact - ELBO per frame: mean {float(gap.mean()):.3f} nats "
        f"(min {float(gap.min()):.3f}); exact - IWAE(256): {float(gap_iwae.mean()):.3f}; "
        f"exact {float(exact.mean() / T):.3f} nats/frame"
    )
    below = float((elbo < exact).double().mean())
    print(f"fraction of held-out sequences with ELBO < exact: {below:.3f}")
    # The ELBO bounds the *fitted* model's log-likelihood; on held-out data from the true model
    # that is below the true log-likelihood in expectation (Gibbs), not for every sequence: a
    # fitted model may give one sequence more density than the truth. Measured (seeded): mean gap
    # 0.54 nats/frame, 31 of 32 sequences below (the other by 0.03 nats/frame); exact - IWAE(256)
    # 0.45 nats/frame. The per-sequence bound itself is checked exactly in
    # tests/models/test_mvrnn.py (MVRNN configured as a known linear-Gaussian model).
    assert float(elbo.mean()) < float(exact.mean())
    assert below >= 0.85
    assert 0 < float(gap.mean()) < 1.0
    assert float(gap_iwae.mean()) < float(gap.mean())  # the IWAE bound is tighter
