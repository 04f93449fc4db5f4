"""Tests for mmpgm.ops.kalman against a dense joint-Gaussian reference."""

from __future__ import annotations

import math
import pathlib
import sys
import time

import pytest
import torch

from mmpgm.ops.kalman import (
    FilterResult,
    LinearGaussianParams,
    NumericalError,
    SmootherResult,
    ffbs_sample,
    kalman_filter,
    kalman_log_likelihood,
    parallel_kalman_filter,
    rts_smoother,
)
from mmpgm.ops.kalman.prepare import prepare
from mmpgm.ops.kalman.sequential import shares_covariance

# the shared oracle sits next to this file (test modules are imported with importlib)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _kalman_oracle import (  # noqa: E402
    DT,
    dense_reference,
    leaf_params,
    make_params,
    masks_scenario,
    nan_masked,
    sample_obs,
)

sys.path.pop(0)

TOL = dict(rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _check_against_dense(params, obs, masks, controls=None, lengths=None, tol=TOL):
    N = obs[0].shape[0]
    filt = kalman_filter(params, nan_masked(obs, masks), masks, controls=controls, lengths=lengths)
    smooth = rts_smoother(params, nan_masked(obs, masks), masks, controls=controls, lengths=lengths)
    ll = kalman_log_likelihood(
        params, nan_masked(obs, masks), masks, controls=controls, lengths=lengths
    )
    if lengths is not None:
        T = obs[0].shape[1]
        lm = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
        masks = [m & lm for m in masks]
    for n in range(N):
        rll, rfm, rfP, rsm, rsP, rcross = dense_reference(params, obs, masks, controls, n)
        torch.testing.assert_close(filt.log_likelihood[n], rll, **tol)
        torch.testing.assert_close(ll[n], rll, **tol)
        torch.testing.assert_close(smooth.log_likelihood[n], rll, **tol)
        torch.testing.assert_close(filt.means[n], rfm, **tol)
        torch.testing.assert_close(filt.covs[n], rfP, **tol)
        torch.testing.assert_close(smooth.means[n], rsm, **tol)
        torch.testing.assert_close(smooth.covs[n], rsP, **tol)
        torch.testing.assert_close(smooth.cross_covs[n], rcross, **tol)
    return filt, smooth


# --------------------------------------------------------------------------
# exactness against the dense joint Gaussian
# --------------------------------------------------------------------------


@pytest.mark.parametrize("N", [1, 3])
@pytest.mark.parametrize("T", [1, 2, 7])
@pytest.mark.parametrize("kind", ["full", "stretch", "random"])
def test_matches_dense_joint(N, T, kind):
    params = make_params(S=3, dims=(2, 1))
    obs = sample_obs(params, N, T)
    masks = masks_scenario(N, T, 2, kind)
    filt, smooth = _check_against_dense(params, obs, masks)
    S = 3
    assert isinstance(filt, FilterResult) and isinstance(smooth, SmootherResult)
    assert filt.means.shape == (N, T, S) and filt.covs.shape == (N, T, S, S)
    assert filt.predicted_means.shape == (N, T, S) and filt.predicted_covs.shape == (N, T, S, S)
    assert filt.log_likelihood.shape == (N,)
    assert smooth.cross_covs.shape == (N, T - 1, S, S)
    torch.testing.assert_close(filt.predicted_means[:, 0], params.initial_mean.expand(N, S), **TOL)


def test_per_sequence_params_controls_and_three_modalities():
    N, T, U = 3, 5, 2
    params = make_params(S=2, dims=(1, 3, 2), U=U, N=N, seed=5)
    controls = torch.randn(N, T, U, generator=torch.Generator().manual_seed(9), dtype=DT)
    obs = sample_obs(params, N, T, controls=controls)
    masks = masks_scenario(N, T, 3, "random", seed=11)
    _check_against_dense(params, obs, masks, controls=controls)


def test_ragged_lengths():
    N, T = 3, 6
    params = make_params(S=2, dims=(2, 2))
    obs = sample_obs(params, N, T)
    masks = masks_scenario(N, T, 2, "stretch")
    lengths = torch.tensor([6, 3, 1])
    filt, _ = _check_against_dense(params, obs, masks, lengths=lengths)
    # garbage past the end must not matter
    obs2 = [o.clone() for o in obs]
    for o in obs2:
        o[1, 3:] = float("nan")
        o[2, 1:] = 1e6
    ll2 = kalman_log_likelihood(params, obs2, masks, lengths=lengths)
    torch.testing.assert_close(ll2, filt.log_likelihood, **TOL)
    # a zero-length sequence has zero log-likelihood and pure-prediction moments
    ll0 = kalman_log_likelihood(params, obs, masks, lengths=torch.tensor([0, 2, 6]))
    assert ll0[0].item() == 0.0


def test_dict_inputs_and_single_mask():
    N, T = 2, 4
    params = make_params(S=2, dims=(2, 1))
    obs = sample_obs(params, N, T)
    mask = torch.tensor([[True, False, True, True], [True, True, False, True]])
    ref = kalman_log_likelihood(params, obs, [mask, mask])
    pd = params._replace(
        emission_matrices={"a": params.emission_matrices[0], "b": params.emission_matrices[1]},
        emission_offsets={"b": params.emission_offsets[1], "a": params.emission_offsets[0]},
        emission_covs={"a": params.emission_covs[0], "b": params.emission_covs[1]},
    )
    got = kalman_log_likelihood(pd, {"b": obs[1], "a": obs[0]}, mask)
    torch.testing.assert_close(got, ref, **TOL)
    # sequence params with mapping observations, ordered by obs keys
    got2 = kalman_log_likelihood(params, {"x": obs[0], "y": obs[1]}, {"x": mask, "y": mask})
    torch.testing.assert_close(got2, ref, **TOL)


def test_batched_equals_loop():
    N, T = 3, 6
    params = make_params(S=3, dims=(2, 2), N=N, seed=2)
    obs = sample_obs(params, N, T)
    masks = masks_scenario(N, T, 2, "random")
    sb = rts_smoother(params, obs, masks)
    for n in range(N):
        pn = LinearGaussianParams(
            *[
                tuple(x[n : n + 1] for x in f)
                if isinstance(f, tuple)
                else (None if f is None else f[n : n + 1])
                for f in params
            ]
        )
        sn = rts_smoother(pn, [o[n : n + 1] for o in obs], [m[n : n + 1] for m in masks])
        for a, b in zip(sb, sn, strict=True):
            torch.testing.assert_close(a[n : n + 1], b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# pykalman
# --------------------------------------------------------------------------


def test_matches_pykalman():
    pykalman = pytest.importorskip("pykalman")
    import numpy as np

    params = make_params(S=3, dims=(2,), seed=7)
    T = 30
    obs = sample_obs(params, 1, T)
    kf = pykalman.KalmanFilter(
        transition_matrices=params.transition_matrix.numpy(),
        observation_matrices=params.emission_matrices[0].numpy(),
        transition_covariance=params.transition_cov.numpy(),
        observation_covariance=params.emission_covs[0].numpy(),
        transition_offsets=np.zeros(3),
        observation_offsets=params.emission_offsets[0].numpy(),
        initial_state_mean=params.initial_mean.numpy(),
        initial_state_covariance=params.initial_cov.numpy(),
    )
    X = obs[0][0].numpy()
    ll_ref = kf.loglikelihood(X)
    fm, fP = kf.filter(X)
    sm, sP = kf.smooth(X)
    filt = kalman_filter(params, obs)
    smooth = rts_smoother(params, obs)
    rel = dict(rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(filt.log_likelihood[0], torch.tensor(ll_ref, dtype=DT), **rel)
    torch.testing.assert_close(filt.means[0], torch.from_numpy(fm), **rel)
    torch.testing.assert_close(filt.covs[0], torch.from_numpy(fP), **rel)
    torch.testing.assert_close(smooth.means[0], torch.from_numpy(sm), **rel)
    torch.testing.assert_close(smooth.covs[0], torch.from_numpy(sP), **rel)


# --------------------------------------------------------------------------
# FFBS
# --------------------------------------------------------------------------


def test_ffbs_moments_match_smoother():
    N, T, S, K = 2, 5, 2, 20000
    params = make_params(S=S, dims=(2, 1), seed=4)
    obs = sample_obs(params, N, T)
    masks = masks_scenario(N, T, 2, "stretch")
    sm = rts_smoother(params, obs, masks)
    gen = torch.Generator().manual_seed(1234)
    z = ffbs_sample(params, nan_masked(obs, masks), masks, num_samples=K, generator=gen)
    assert z.shape == (K, N, T, S)
    # Monte-Carlo standard errors: sd(mean) = sqrt(var / K); sd of a sample
    # covariance entry = sqrt((S_ii S_jj + S_ij^2) / K).  We allow 5 standard
    # errors per entry (two-sided p ~ 6e-7 per entry; ~150 entries checked).
    var = sm.covs.diagonal(dim1=-2, dim2=-1)
    se_mean = (var / K).sqrt()
    assert ((z.mean(0) - sm.means).abs() <= 5 * se_mean).all()
    zc = z - z.mean(0)
    emp_cov = torch.einsum("knti,kntj->ntij", zc, zc) / (K - 1)
    se_cov = ((var.unsqueeze(-1) * var.unsqueeze(-2) + sm.covs.square()) / K).sqrt()
    assert ((emp_cov - sm.covs).abs() <= 5 * se_cov).all()
    # lag-one cross covariance Cov(z_{t+1}, z_t)
    emp_cross = torch.einsum("knti,kntj->ntij", zc[:, :, 1:], zc[:, :, :-1]) / (K - 1)
    se_cross = (
        (var[:, 1:].unsqueeze(-1) * var[:, :-1].unsqueeze(-2) + sm.cross_covs.square()) / K
    ).sqrt()
    assert ((emp_cross - sm.cross_covs).abs() <= 5 * se_cross).all()
    # reproducible with the same seed
    z2 = ffbs_sample(params, obs, masks, num_samples=3, generator=torch.Generator().manual_seed(5))
    z3 = ffbs_sample(params, obs, masks, num_samples=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(z2, z3)


def test_ffbs_T1():
    params = make_params(S=2, dims=(1,))
    obs = sample_obs(params, 3, 1)
    z = ffbs_sample(params, obs, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert z.shape == (4, 3, 1, 2) and torch.isfinite(z).all()


# --------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------


def test_gradient_finite_through_masked_nan():
    N, T = 2, 6
    base = make_params(S=2, dims=(2, 1))
    leaves = [
        t.clone().requires_grad_(True)
        for t in (
            base.initial_mean,
            base.initial_cov,
            base.transition_matrix,
            base.transition_cov,
            *base.emission_matrices,
            *base.emission_offsets,
            *base.emission_covs,
        )
    ]
    params = LinearGaussianParams(
        leaves[0],
        leaves[1],
        leaves[2],
        leaves[3],
        tuple(leaves[4:6]),
        tuple(leaves[6:8]),
        tuple(leaves[8:10]),
    )
    obs = sample_obs(base, N, T)
    masks = masks_scenario(N, T, 2, "stretch")
    obs_nan = [o.clone().requires_grad_(True) for o in nan_masked(obs, masks)]
    ll = kalman_log_likelihood(params, obs_nan, masks).sum()
    sm = rts_smoother(params, obs_nan, masks)
    loss = ll + sm.means.sum() + sm.covs.sum() + sm.cross_covs.sum()
    grads = torch.autograd.grad(loss, leaves + obs_nan)
    for g in grads:
        assert torch.isfinite(g).all()
    for g, m in zip(grads[-2:], masks, strict=True):
        assert (g[~m] == 0).all()
    # gradient of the log-likelihood agrees with autograd through the dense reference
    g_kf = torch.autograd.grad(kalman_log_likelihood(params, obs, masks).sum(), leaves)
    dense = sum(dense_reference(params, obs, masks, n=n)[0] for n in range(N))
    g_ref = torch.autograd.grad(dense, leaves)
    for a, b in zip(g_kf, g_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)


def test_gradcheck_small():
    N, T = 2, 3
    base = make_params(S=2, dims=(1, 1))
    obs = sample_obs(base, N, T)
    masks = masks_scenario(N, T, 2, "random")
    A0 = base.transition_matrix.clone().requires_grad_(True)
    C0 = base.emission_matrices[0].clone().requires_grad_(True)

    def f(A, C):
        p = base._replace(transition_matrix=A, emission_matrices=(C, base.emission_matrices[1]))
        return kalman_log_likelihood(p, obs, masks)

    assert torch.autograd.gradcheck(f, (A0, C0))


# --------------------------------------------------------------------------
# long float32 sequence
# --------------------------------------------------------------------------


def _simulate_numpy(params, T, seed):
    """Fast single-sequence simulation (numpy loop) for long T."""
    import numpy as np

    rng = np.random.default_rng(seed)
    A = params.transition_matrix.numpy()
    Lq = np.linalg.cholesky(params.transition_cov.numpy())
    S = A.shape[0]
    noise = rng.standard_normal((T, S)) @ Lq.T
    z = np.empty((T, S))
    z[0] = params.initial_mean.numpy() + np.linalg.cholesky(
        params.initial_cov.numpy()
    ) @ rng.standard_normal(S)
    for t in range(1, T):
        z[t] = A @ z[t - 1] + noise[t]
    obs = []
    for C, d, R in zip(
        params.emission_matrices, params.emission_offsets, params.emission_covs, strict=True
    ):
        v = rng.standard_normal((T, C.shape[0])) @ np.linalg.cholesky(R.numpy()).T
        obs.append(torch.from_numpy(z @ C.numpy().T + d.numpy() + v).unsqueeze(0))
    return obs


def test_long_float32_sequence_stable():
    T = 100_000
    g = torch.Generator().manual_seed(0)
    th = 0.1
    A = 0.99 * torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=DT)
    params64 = LinearGaussianParams(
        initial_mean=torch.zeros(2, dtype=DT),
        initial_cov=torch.eye(2, dtype=DT),
        transition_matrix=A,
        transition_cov=0.1 * torch.eye(2, dtype=DT),
        emission_matrices=(
            torch.tensor([[1.0, 0.5]], dtype=DT),
            torch.tensor([[0.0, 1.0]], dtype=DT),
        ),
        emission_offsets=(torch.zeros(1, dtype=DT), torch.zeros(1, dtype=DT)),
        emission_covs=(torch.tensor([[0.05]], dtype=DT), torch.tensor([[0.5]], dtype=DT)),
    )
    obs = _simulate_numpy(params64, T, seed=0)
    masks = [torch.ones(1, T, dtype=torch.bool), torch.rand(1, T, generator=g) < 0.5]
    masks[0][0, 5000:5100] = False  # a fully missing stretch
    masks[1][0, 5000:5100] = False
    params32 = LinearGaussianParams(
        *[
            tuple(x.float() for x in f)
            if isinstance(f, tuple)
            else (None if f is None else f.float())
            for f in params64
        ]
    )
    obs32 = [o.float() for o in obs]
    t0 = time.perf_counter()
    f32 = kalman_filter(params32, obs32, masks, method="sequential")
    elapsed32 = time.perf_counter() - t0
    # float64 reference from the (algebraically different) time-parallel filter;
    # both float64 filters agree to ~1e-12 on shorter sequences (test below).
    f64 = parallel_kalman_filter(params64, obs, masks)
    assert f32.means.dtype == torch.float32
    for x in f32:
        assert torch.isfinite(x).all()
    # covariances stay symmetric positive definite
    ev = torch.linalg.eigvalsh(f32.covs[0].double())
    assert (ev > 0).all()
    assert torch.equal(f32.covs, f32.covs.mT)
    # float32 rounding (~6e-8 relative) does not accumulate: the filter forgets
    # errors geometrically (here at rate ~0.99^t at worst), so moments match
    # float64 to ~100 * 6e-8 ~ 1e-5 of their scale; we allow 1e-4.
    scale = f64.means.abs().max()
    assert (f32.means.double() - f64.means).abs().max() <= 1e-4 * scale
    assert (f32.covs.double() - f64.covs).abs().max() <= 1e-4 * f64.covs.abs().max()
    # the log-likelihood is a float32 sum of 1.5e5 O(1) terms: relative 1e-5.
    torch.testing.assert_close(f32.log_likelihood.double(), f64.log_likelihood, rtol=1e-5, atol=0)
    # time-parallel filter in float32 is also stable over 1e5 frames
    p32 = parallel_kalman_filter(params32, obs32, masks)
    assert (p32.means.double() - f64.means).abs().max() <= 1e-4 * scale
    torch.testing.assert_close(p32.log_likelihood.double(), f64.log_likelihood, rtol=1e-5, atol=0)
    # ~6 s on one idle core; generous bound against loaded CI machines
    assert elapsed32 < 60.0


@pytest.mark.parametrize("kind", ["full", "random"])
def test_parallel_filter_matches_sequential(kind):
    N, T, U = 3, 37, 2
    params = make_params(S=3, dims=(2, 1), U=U, seed=8)
    controls = torch.randn(N, T, U, generator=torch.Generator().manual_seed(1), dtype=DT)
    obs = sample_obs(params, N, T, controls=controls)
    masks = masks_scenario(N, T, 2, kind)
    a = kalman_filter(params, obs, masks, controls=controls)
    b = parallel_kalman_filter(params, nan_masked(obs, masks), masks, controls=controls)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    for T1 in (1, 2):
        a = kalman_filter(params, [o[:, :T1] for o in obs], [m[:, :T1] for m in masks])
        b = parallel_kalman_filter(params, [o[:, :T1] for o in obs], [m[:, :T1] for m in masks])
        for x, y in zip(a, b, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------


def test_bad_inputs_raise():
    params = make_params(S=2, dims=(2, 1))
    obs = sample_obs(params, 2, 4)
    masks = [torch.ones(2, 4, dtype=torch.bool)] * 2
    with pytest.raises(ValueError, match="obs"):
        kalman_filter(params, [obs[0]], masks)  # missing modality
    with pytest.raises(ValueError, match=r"obs\[1\]"):
        kalman_filter(params, [obs[0], obs[1][:, :3]], masks)
    with pytest.raises(ValueError, match=r"mask\[0\]"):
        kalman_filter(params, obs, [masks[0][:, :3], masks[1]])
    with pytest.raises(ValueError, match="dtype torch.bool"):
        kalman_filter(params, obs, [masks[0].float(), masks[1]])
    with pytest.raises(ValueError, match="transition_matrix"):
        kalman_filter(params._replace(transition_matrix=torch.eye(3, dtype=DT)), obs, masks)
    with pytest.raises(ValueError, match=r"emission_matrices\[0\]"):
        kalman_filter(
            params._replace(
                emission_matrices=(torch.ones(2, 3, dtype=DT), params.emission_matrices[1])
            ),
            obs,
            masks,
        )
    with pytest.raises(ValueError, match="initial_cov"):
        kalman_filter(
            params._replace(initial_cov=torch.eye(2, dtype=DT).expand(5, 2, 2)), obs, masks
        )
    with pytest.raises(ValueError, match="control_matrix"):
        kalman_filter(params, obs, masks, controls=torch.zeros(2, 4, 1, dtype=DT))
    with pytest.raises(ValueError, match="controls"):
        kalman_filter(
            params._replace(control_matrix=torch.ones(2, 1, dtype=DT)),
            obs,
            masks,
            controls=torch.zeros(2, 3, 1, dtype=DT),
        )
    with pytest.raises(ValueError, match="lengths"):
        kalman_filter(params, obs, masks, lengths=torch.tensor([5, 1]))
    bad_R = params._replace(emission_covs=(-torch.eye(2, dtype=DT), params.emission_covs[1]))
    for method in ("sequential", "parallel"):
        for share in ("auto", "none") if method == "sequential" else ("auto",):
            with pytest.raises(NumericalError, match="positive definite.*float64"):
                kalman_filter(bad_R, obs, masks, method=method, share=share)
    assert issubclass(NumericalError, ValueError)
    with pytest.raises(ValueError, match="num_samples"):
        ffbs_sample(params, obs, masks, num_samples=0)
    with pytest.raises(ValueError, match="params"):
        kalman_filter(tuple(params), obs, masks)
    with pytest.raises(ValueError, match="method"):
        kalman_log_likelihood(params, obs, masks, method="fast")


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            dict(method="fast"),
            r"method: expected one of 'auto', 'sequential', 'parallel', 'information', got 'fast'",
        ),
        (dict(method=None), r"method: expected one of .*, got None"),
        (
            dict(share=True),
            r"share: expected one of 'auto', 'covariance', 'matrices', 'none', got True",
        ),
        (dict(share="cov"), r"share: expected one of .*, got 'cov'"),
        (dict(steady_state="yes"), r"steady_state: expected one of True, False, got 'yes'"),
        (
            dict(steady_state_rtol=0.0),
            r"steady_state_rtol: expected None or a finite float > 0, got 0.0",
        ),
        (dict(steady_state_rtol=True), r"steady_state_rtol: .*, got True"),
        (dict(steady_state_rtol=float("nan")), r"steady_state_rtol: .*, got nan"),
        (dict(method="parallel", share="covariance"), r"share: expected 'auto' or 'none' with"),
    ],
)
@pytest.mark.parametrize(
    "fn", ["kalman_filter", "kalman_log_likelihood", "rts_smoother", "ffbs_sample"]
)
def test_bad_options_raise(kw, match, fn):
    """Every implementation keyword is validated in one place, the same for every function."""
    f = dict(
        kalman_filter=kalman_filter,
        kalman_log_likelihood=kalman_log_likelihood,
        rts_smoother=rts_smoother,
        ffbs_sample=ffbs_sample,
    )[fn]
    params = make_params(S=2, dims=(1,))
    obs = sample_obs(params, 2, 3)
    with pytest.raises(ValueError, match=match):
        f(params, obs, **kw)


def test_auto_method_choice_and_agreement_on_long_cheap_sequences():
    from mmpgm.ops.kalman import choose_method

    # a shared covariance recursion that may reach its steady state: sequential at every size;
    # otherwise the scan for long sequences with little work per frame
    assert choose_method(1, 20000, 2, 2, steady_state=True) == "sequential"
    assert choose_method(1, 20000, 2, 2) == "parallel"
    assert choose_method(64, 500, 6, 10) == "sequential"
    params = make_params(S=2, dims=(1,), seed=3)
    T = 300
    obs = [torch.randn(1, T, 1, generator=torch.Generator().manual_seed(0), dtype=DT)]
    a = kalman_log_likelihood(params, obs, method="sequential")
    b = kalman_log_likelihood(params, obs)  # auto
    c = kalman_filter(params, obs, method="parallel")
    torch.testing.assert_close(a, b, rtol=1e-10, atol=0)
    torch.testing.assert_close(c.log_likelihood, a, rtol=1e-10, atol=0)


# --------------------------------------------------------------------------
# covariance recursion shared by the batch, steady state
# --------------------------------------------------------------------------


def _run_all(params, leaves, obs, masks, controls, share):
    kw = dict(controls=controls, method="sequential", share=share)
    filt = kalman_filter(params, obs, masks, **kw)
    sm = rts_smoother(params, obs, masks, **kw)
    z = ffbs_sample(
        params, obs, masks, num_samples=2, generator=torch.Generator().manual_seed(0), **kw
    )
    loss = (
        kalman_log_likelihood(params, obs, masks, **kw).sum()
        + sm.means.sum()
        + sm.covs.sum()
        + sm.cross_covs.sum()
        + z.sum()
    )
    grads = torch.autograd.grad(loss, leaves)
    return list(filt) + list(sm) + [z] + list(grads)


@pytest.mark.parametrize("kind", ["full", "aligned"])
def test_shared_covariance_path_equals_general_path(kind):
    """Shared parameters + the same mask pattern in every sequence: the batch-free
    covariance recursion gives the per-sequence filters' values and gradients."""
    N, T, U = 4, 9, 2
    base = make_params(S=3, dims=(2, 2), U=U, seed=12)
    controls = torch.randn(N, T, U, generator=torch.Generator().manual_seed(2), dtype=DT)
    obs = sample_obs(base, N, T, controls=controls)
    masks = [torch.ones(N, T, dtype=torch.bool) for _ in range(2)]
    if kind == "aligned":  # dropouts aligned across sequences, incl. an all-missing frame
        masks[0][:, 2:5] = False
        masks[1][:, 4] = False
        masks[1][:, 7] = False
    gen = torch.Generator().manual_seed(3)
    m0 = torch.randn(N, 3, generator=gen, dtype=DT)  # per-sequence prior mean
    params, leaves = leaf_params(base, m0)
    assert shares_covariance(prepare(params, obs, masks, controls))
    obs_nan = nan_masked(obs, masks)
    fast = _run_all(params, leaves, obs_nan, masks, controls, "covariance")
    for share in ("matrices", "none"):
        slow = _run_all(params, leaves, obs_nan, masks, controls, share)
        for a, b in zip(fast, slow, strict=True):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    _check_against_dense(
        base._replace(control_matrix=base.control_matrix), obs, masks, controls=controls
    )


def test_mixed_mask_patterns_fall_back(monkeypatch):
    import mmpgm.ops.kalman.sequential as seq

    N, T = 3, 6
    params = make_params(S=2, dims=(2, 1))
    obs = sample_obs(params, N, T)
    masks = masks_scenario(N, T, 2, "random")
    p = prepare(params, obs, masks)
    assert not shares_covariance(p)
    with pytest.raises(ValueError, match="share: 'covariance' needs"):
        kalman_log_likelihood(params, obs, masks, share="covariance")
    calls = []
    orig = seq.forward_shared_covariance
    monkeypatch.setattr(
        seq, "forward_shared_covariance", lambda *a, **k: calls.append(1) or orig(*a, **k)
    )
    _check_against_dense(params, obs, masks)
    assert not calls
    # ragged lengths make the patterns differ as well
    lengths = torch.tensor([6, 4, 6])
    full = [torch.ones(N, T, dtype=torch.bool)] * 2
    assert not shares_covariance(prepare(params, obs, full, lengths=lengths))
    _check_against_dense(params, obs, full, lengths=lengths)
    assert not calls
    # per-sequence parameters never share the recursion (nor the matrix products)
    pn = make_params(S=2, dims=(2, 1), N=N)
    assert not shares_covariance(prepare(pn, obs, full))
    with pytest.raises(ValueError, match="share: 'matrices' needs"):
        kalman_log_likelihood(pn, obs, full, share="matrices")
    # and the shared-covariance path does run when it applies
    kalman_log_likelihood(params, obs, full, method="sequential")
    assert calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_steady_state_matches_full_recursion(dtype, monkeypatch):
    """Over a long fully observed stretch the Riccati recursion converges and is
    reused; log-likelihood, moments and gradients stay those of the full recursion."""
    N, T = 3, 400
    base = make_params(S=3, dims=(2, 2), U=1, seed=21)  # control matrix unused
    obs = sample_obs(base, N, T)
    masks = [torch.ones(N, T, dtype=torch.bool) for _ in range(2)]
    masks[0][:, 100:110] = False  # aligned dropout: the recursion leaves and re-enters steady state
    cast = [x.to(dtype) for x in obs]
    out = {}
    for steady in (True, False):
        params, leaves = leaf_params(base)
        pc = LinearGaussianParams(
            *[
                tuple(x.to(dtype) for x in f)
                if isinstance(f, tuple)
                else (None if f is None else f.to(dtype))
                for f in params
            ]
        )
        kw = dict(method="sequential", steady_state=steady)
        ll = kalman_log_likelihood(pc, cast, masks, **kw)
        grads = torch.autograd.grad(ll.sum(), leaves[:-1])
        filt = kalman_filter(pc, cast, masks, **kw)
        out[steady] = (ll.detach(), grads, filt)
    (ll1, g1, f1), (ll0, g0, f0) = out[True], out[False]
    # the reuse did happen: far fewer innovation factorisations than frames
    calls = []
    chol = torch.linalg.cholesky_ex
    monkeypatch.setattr(
        torch.linalg, "cholesky_ex", lambda *a, **k: calls.append(1) or chol(*a, **k)
    )
    kalman_log_likelihood(base, obs, masks, method="sequential", steady_state=True)
    assert len(calls) < T // 2, len(calls)
    assert torch.equal(f1.predicted_covs[:, -1], f1.predicted_covs[:, -2])
    if dtype == torch.float64:
        # stop when the predicted covariance changes by <= 1e-12 relative per step; the
        # log-likelihood error is of that order (measured ~1e-15), the gradients
        # converge like k * rho^(2k) (measured ~1e-11 relative here)
        torch.testing.assert_close(ll1, ll0, rtol=1e-12, atol=0)
        for a, b in zip(g1, g0, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8 * b.abs().max().item())
        for a, b in zip(f1, f0, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    else:
        # float32: tolerance 1e-7 relative; rounding alone is ~1e-6 on a 400-frame sum
        torch.testing.assert_close(ll1, ll0, rtol=1e-5, atol=0)
        for a, b in zip(f1, f0, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
