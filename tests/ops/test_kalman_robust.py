"""mmpgm.ops.kalman.robust: the reweighted exact smoother against rts_smoother and a dense
information-form oracle, and the mean-field sensor-fault smoother/filter against the exact
posterior by enumerating every fault pattern (a mixture of 2^n Gaussians)."""

from __future__ import annotations

import math
import pathlib
import sys

import pytest
import torch

from mmpgm.ops.kalman import LinearGaussianParams, kalman_log_likelihood, rts_smoother
from mmpgm.ops.kalman import robust as rb

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _fault_oracle import enumerate_faults  # noqa: E402
from _kalman_oracle import DT, make_params, masks_scenario, nan_masked, sample_obs  # noqa: E402

sys.path.pop(0)

KEYS = ("a", "b")


def keyed(p):
    """The oracle's positional parameters keyed by modality name."""
    return LinearGaussianParams(
        p.initial_mean,
        p.initial_cov,
        p.transition_matrix,
        p.transition_cov,
        dict(zip(KEYS, p.emission_matrices, strict=True)),
        dict(zip(KEYS, p.emission_offsets, strict=True)),
        dict(zip(KEYS, p.emission_covs, strict=True)),
    )


def as_dict(xs):
    return dict(zip(KEYS, xs, strict=True))


def close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def cauchy_log_bg(obs, scale=4.0):
    return [-(math.log(math.pi * scale) + torch.log1p((o / scale) ** 2)).sum(-1) for o in obs]


# ------------------------------------------------------------------ reweighted smoother
@pytest.mark.parametrize("kind", ["full", "stretch", "random"])
@pytest.mark.parametrize("T", [1, 6])
def test_unit_weights_equal_the_exact_smoother(kind, T):
    p = make_params(S=3, dims=(2, 1), seed=1)
    N = 3
    obs = sample_obs(p, N, T, seed=2)
    masks = masks_scenario(N, T, 2, kind) if T > 4 else [torch.ones(N, T, dtype=torch.bool)] * 2
    obs = nan_masked(obs, masks)
    lengths = torch.tensor([T, max(T - 2, 1), max(T - 1, 1)])
    P, o, mk = keyed(p), as_dict(obs), as_dict(masks)
    ref = rts_smoother(P, o, mk, lengths=lengths)
    for w in (None, {"a": torch.ones(N, T, dtype=DT), "b": None}):
        got = rb.reweighted_smoother(P, o, mk, w, lengths)
        for a, b in zip(got, ref, strict=True):
            close(a, b)


def test_zero_weight_is_an_exactly_masked_frame():
    p = make_params(S=2, dims=(2, 1), seed=3)
    N, T = 2, 5
    obs = sample_obs(p, N, T, seed=4)
    masks = [torch.ones(N, T, dtype=torch.bool) for _ in range(2)]
    w = {k: torch.ones(N, T, dtype=DT) for k in KEYS}
    w["a"][0, 1] = 0.0
    w["b"][1, 0] = 0.0
    w["b"][1, 4] = 0.0
    masked = [m.clone() for m in masks]
    masked[0][0, 1] = False
    masked[1][1, 0] = masked[1][1, 4] = False
    P = keyed(p)
    ref = rts_smoother(P, as_dict(obs), as_dict(masked))
    got = rb.reweighted_smoother(P, as_dict(obs), as_dict(masks), w)
    for a, b in zip(got, ref, strict=True):
        close(a, b)


def dense_weighted(p, obs, masks, weights, n):
    r"""Information-form oracle of :math:`q(z) \propto p(z) \prod N(x; Cz + d, R)^w` for
    sequence ``n``: joint prior of all states, precision :math:`J = \Sigma^{-1} + \sum w C^\top
    R^{-1} C`, and :math:`\log Z` in closed form."""
    A, Q, mu0, P0 = p.transition_matrix, p.transition_cov, p.initial_mean, p.initial_cov
    T = obs[0].shape[1]
    S = mu0.shape[0]
    mz = torch.cat([torch.linalg.matrix_power(A, t) @ mu0 for t in range(T)])
    G = torch.zeros(T * S, T * S, dtype=DT)
    for t in range(T):
        for k in range(t + 1):
            G[t * S : (t + 1) * S, k * S : (k + 1) * S] = torch.linalg.matrix_power(A, t - k)
    Szz = G @ torch.block_diag(P0, *([Q] * (T - 1))) @ G.mT
    Jp = torch.linalg.inv(Szz)
    J, h = Jp.clone(), Jp @ mz
    const = -0.5 * mz @ Jp @ mz - 0.5 * torch.logdet(Szz)
    for C, d, R, x, mk, w in zip(
        p.emission_matrices, p.emission_offsets, p.emission_covs, obs, masks, weights, strict=True
    ):
        Ri = torch.linalg.inv(R)
        for t in range(T):
            if not bool(mk[n, t]):
                continue
            wt = float(w[n, t])
            r = x[n, t] - d
            sl = slice(t * S, (t + 1) * S)
            J[sl, sl] += wt * C.mT @ Ri @ C
            h[sl] += wt * C.mT @ Ri @ r
            const = const - 0.5 * wt * (r @ Ri @ r) - 0.5 * wt * torch.logdet(2 * math.pi * R)
    cov = torch.linalg.inv(J)
    mean = cov @ h
    log_z = const + 0.5 * h @ mean - 0.5 * torch.logdet(J)
    means = mean.reshape(T, S)
    covs = torch.stack([cov[t * S : (t + 1) * S, t * S : (t + 1) * S] for t in range(T)])
    return log_z, means, covs


def test_fractional_weights_against_the_dense_oracle():
    p = make_params(S=2, dims=(2, 1), seed=5)
    N, T = 3, 5
    obs = sample_obs(p, N, T, seed=6)
    masks = masks_scenario(N, T, 2, "random", seed=7)
    g = torch.Generator().manual_seed(8)
    weights = [torch.rand(N, T, generator=g, dtype=DT) for _ in range(2)]
    weights[0][0, 2] = 0.0
    got = rb.reweighted_smoother(keyed(p), as_dict(obs), as_dict(masks), as_dict(weights))
    for n in range(N):
        log_z, means, covs = dense_weighted(p, obs, masks, weights, n)
        close(got.log_likelihood[n], log_z)
        close(got.means[n], means)
        close(got.covs[n], covs)


def test_reweighted_filter_log_z_is_differentiable_like_the_exact_one():
    p = make_params(S=2, dims=(1, 1), seed=9)
    obs = sample_obs(p, 2, 4, seed=10)
    A = p.transition_matrix.clone().requires_grad_(True)
    P = keyed(p)._replace(transition_matrix=A)
    (g1,) = torch.autograd.grad(rb.reweighted_filter(P, as_dict(obs)).log_likelihood.sum(), A)
    (g2,) = torch.autograd.grad(kalman_log_likelihood(P, as_dict(obs)).sum(), A)
    close(g1, g2)


def test_expected_log_emission_monte_carlo():
    # E_q[log N(y; Cz, R)] by 200k draws; the MC standard error is printed by the margin below
    g = torch.Generator().manual_seed(11)
    C = torch.randn(2, 3, generator=g, dtype=DT)
    R = torch.tensor([[0.5, 0.1], [0.1, 0.3]], dtype=DT)
    mu = torch.randn(3, generator=g, dtype=DT)
    X = torch.randn(3, 3, generator=g, dtype=DT)
    cov = X @ X.mT / 3 + 0.1 * torch.eye(3, dtype=DT)
    y = torch.randn(2, generator=g, dtype=DT)
    z = mu + torch.randn(200_000, 3, generator=g, dtype=DT) @ torch.linalg.cholesky(cov).mT
    lp = torch.distributions.MultivariateNormal(z @ C.mT, R).log_prob(y)
    se = float(lp.std() / math.sqrt(lp.numel()))
    got = float(rb.expected_log_emission(y, C, R, mu, cov))
    assert abs(got - float(lp.mean())) < 5 * se  # 5 standard errors: false alarm ~6e-7


def test_sample_from_filter_matches_the_smoothed_moments():
    p = make_params(S=2, dims=(1, 1), seed=12)
    obs = sample_obs(p, 2, 4, seed=13)
    w = {"a": torch.tensor([[1.0, 0.3, 1.0, 0.0], [0.5, 1.0, 1.0, 1.0]], dtype=DT), "b": None}
    P = keyed(p)
    filt = rb.reweighted_filter(P, as_dict(obs), None, w)
    sm = rb.reweighted_smoother(P, as_dict(obs), None, w)
    K = 40_000
    z = rb.sample_from_filter(p.transition_matrix, filt, K, torch.Generator().manual_seed(0))
    sd = sm.covs.diagonal(dim1=-2, dim2=-1).sqrt()
    # 5 standard errors of a mean over K draws, per entry (16 entries: false alarm ~1e-5)
    assert bool(((z.mean(0) - sm.means).abs() <= 5 * sd / math.sqrt(K)).all())
    emp = torch.einsum("kntS,kntR->ntSR", z - sm.means, z - sm.means) / K
    close(emp, sm.covs, tol=0.05)  # relative 5%: the sd of a variance estimate is 0.7%


# ------------------------------------------------------------------ against enumeration
def fault_case(seed, S, T, outlier, rate=0.05):
    p = make_params(S=S, dims=(1, 1), seed=seed)
    obs = sample_obs(p, 2, T, seed=seed + 10)
    if outlier:
        obs[0][:, 1] += 25.0  # a gross outlier in sensor a at t = 1 (noise sd ~ 0.6)
    masks = [torch.ones(2, T, dtype=torch.bool) for _ in range(2)]
    masks[1][0, 2] = False  # b missing at (0, 2)
    return p, obs, masks, cauchy_log_bg(obs), [rate, rate]


def run_smoother(p, obs, masks, lb, rates, lengths=None, **kw):
    return rb.robust_smoother(
        keyed(p), as_dict(obs), as_dict(masks), as_dict(lb), as_dict(rates), lengths, **kw
    )


def test_bound_never_decreases_and_stays_below_the_exact_log_likelihood():
    p, obs, masks, lb, rates = fault_case(3, 1, 4, outlier=False, rate=0.2)
    bounds = [run_smoother(p, obs, masks, lb, rates, num_iters=k, tol=0.0).bound for k in range(8)]
    for a, b in zip(bounds, bounds[1:], strict=False):
        assert bool((b >= a - 1e-10).all())
    exact = enumerate_faults(p, obs, masks, lb, rates, n=0)["log_lik"]
    assert float(bounds[-1][0]) <= float(exact) + 1e-10


def test_smoothed_fault_probs_and_states_against_enumeration():
    # Measured (seeds 0, 1; S = 1, 2; T = 4; one gross outlier; b missing at one frame; 4
    # sequences): max |q(f) - p(f | x)| over all frames 0.008-0.014, max |E_q z - E z|
    # 0.005-0.014, exact log p(x) minus the bound 0.015-0.029 nats; on the outlier frame both
    # are 1 to 6 digits. Bounds: 0.03, 0.03, 0.06 (about twice the largest).
    for seed, S in ((0, 1), (1, 2)):
        p, obs, masks, lb, rates = fault_case(seed, S, 4, outlier=True)
        res = run_smoother(p, obs, masks, lb, rates, num_iters=100, tol=1e-12)
        for n in range(2):
            ex = enumerate_faults(p, obs, masks, lb, rates, n=n)
            for i, k in enumerate(KEYS):
                assert float((res.fault_probs[k][n] - ex["fault_probs"][i]).abs().max()) < 0.03
            assert (
                float(ex["fault_probs"][0][1]) > 0.999 and float(res.fault_probs["a"][n, 1]) > 0.999
            )
            assert float((res.moments.means[n] - ex["mean"]).abs().max()) < 0.03
            gap = float(ex["log_lik"] - res.bound[n])
            assert -1e-10 <= gap < 0.06
        assert float(res.fault_probs["b"][0, 2]) == 0.0  # unobserved: no responsibility


def test_ragged_lengths_match_the_truncated_sequence():
    p, obs, masks, lb, rates = fault_case(1, 2, 4, outlier=True)
    full = run_smoother(p, obs, masks, lb, rates, num_iters=50, tol=1e-12)
    cut = run_smoother(
        p, obs, masks, lb, rates, lengths=torch.tensor([4, 3]), num_iters=50, tol=1e-12
    )
    close(cut.moments.means[0], full.moments.means[0])
    trunc = run_smoother(
        p, [o[1:, :3] for o in obs], [m[1:, :3] for m in masks], [x[1:, :3] for x in lb], rates,
        num_iters=50, tol=1e-12,
    )  # fmt: skip
    close(cut.moments.means[1, :3], trunc.moments.means[0])
    close(cut.bound[1], trunc.bound[0])
    for k in KEYS:
        close(cut.fault_probs[k][1, :3], trunc.fault_probs[k][0])
        assert float(cut.fault_probs[k][1, 3]) == 0.0


def test_filtered_fault_probs_against_enumeration():
    # Measured (seed 0, S = 1; seed 1, S = 2; T = 3, every prefix): max |q(f_t | x_1:t) -
    # p(f_t | x_1:t)| 0.0001-0.029 and filtered-mean error 0.0007-0.030; bounds 0.06 (twice).
    for seed, S in ((0, 1), (1, 2)):
        p, obs, masks, lb, rates = fault_case(seed, S, 3, outlier=True)
        fr = rb.robust_filter(
            keyed(p), as_dict(obs), as_dict(masks), as_dict(lb), as_dict(rates),
            num_iters=100, tol=1e-12,
        )  # fmt: skip
        for t in range(3):
            ex = enumerate_faults(p, obs, masks, lb, rates, n=0, filtered_at=t)
            for i, k in enumerate(KEYS):
                assert abs(float(fr.fault_probs[k][0, t] - ex["fault_probs"][i][t])) < 0.06
            assert float((fr.moments.means[0, t] - ex["filtered_mean"]).abs().max()) < 0.06


def test_without_faulty_modalities_it_is_the_exact_smoother():
    p = make_params(S=2, dims=(1, 1), seed=4)
    obs = sample_obs(p, 2, 4, seed=5)
    res = rb.robust_smoother(keyed(p), as_dict(obs), None, {}, {})
    ref = rts_smoother(keyed(p), as_dict(obs))
    close(res.bound, ref.log_likelihood)
    close(res.moments.means, ref.means)
    assert res.fault_probs == {}


def test_errors_name_the_argument():
    p = make_params(S=2, dims=(1, 1), seed=4)
    obs = sample_obs(p, 2, 4, seed=5)
    with pytest.raises(ValueError, match="weights\\['a'\\]"):
        rb.reweighted_filter(keyed(p), as_dict(obs), None, {"a": torch.ones(3, 4)})
    with pytest.raises(ValueError, match="weights: unknown modalities \\['c'\\]"):
        rb.reweighted_filter(keyed(p), as_dict(obs), None, {"c": torch.ones(2, 4)})
    with pytest.raises(ValueError, match="obs"):
        rb.reweighted_filter(keyed(p), obs)
    with pytest.raises(ValueError, match="log_backgrounds"):
        rb.robust_smoother(keyed(p), as_dict(obs), None, {"c": torch.zeros(2, 4)}, {"c": 0.1})
    with pytest.raises(ValueError, match="rates"):
        rb.robust_smoother(keyed(p), as_dict(obs), None, {"a": torch.zeros(2, 4)}, {})


def test_each_sequence_gets_its_own_result_whatever_the_batch():
    # sequences stop iterating on their own, so a sequence's fixed point does not depend on the
    # other sequences in the batch (data-parallel fits, minibatches)
    p, obs, masks, lb, rates = fault_case(1, 2, 4, outlier=True, rate=0.2)
    both = run_smoother(p, obs, masks, lb, rates, num_iters=20, tol=1e-3)
    for n in range(2):
        one = run_smoother(
            p, [o[n : n + 1] for o in obs], [m[n : n + 1] for m in masks],
            [x[n : n + 1] for x in lb], rates, num_iters=20, tol=1e-3,
        )  # fmt: skip
        close(one.bound[0], both.bound[n], tol=1e-12)
        for k in KEYS:
            close(one.fault_probs[k][0], both.fault_probs[k][n], tol=1e-12)
        fr1 = rb.robust_filter(
            keyed(p), as_dict([o[n : n + 1] for o in obs]), as_dict([m[n : n + 1] for m in masks]),
            as_dict([x[n : n + 1] for x in lb]), as_dict(rates), num_iters=20, tol=1e-3,
        )  # fmt: skip
        fr2 = rb.robust_filter(
            keyed(p), as_dict(obs), as_dict(masks), as_dict(lb), as_dict(rates),
            num_iters=20, tol=1e-3,
        )  # fmt: skip
        close(fr1.moments.means[0], fr2.moments.means[n], tol=1e-12)
