"""MultimodalLDS: exact likelihood and imputation vs a dense joint Gaussian, GaussianHMM program,
EM monotonicity, posteriors, I/O, errors."""

import math

import pytest
import torch
from pyro.infer import Trace_ELBO

import mmpgm
from mmpgm import MultimodalData
from mmpgm.models.lds import LDSParams, MultimodalLDS

pytestmark = pytest.mark.usefixtures("float64")

OBS_DIMS = {"a": 3, "b": 2}


def random_params(model, seed=0, scale=1.0):
    """Random stable parameters for ``model`` (blocks of any size, full or diagonal noise)."""
    g = torch.Generator().manual_seed(seed)

    def spd(k, s=1.0):
        X = torch.randn(k, k, generator=g)
        return s * (X @ X.mT / k + 0.5 * torch.eye(k))

    tm, tc, im, ic = {}, {}, {}, {}
    for b in model.block_names:
        k = model.dynamics[b].dim
        A = torch.randn(k, k, generator=g)
        tm[b] = 0.9 * A / torch.linalg.matrix_norm(A, ord=2)
        tc[b], im[b], ic[b] = spd(k, 0.3), torch.randn(k, generator=g), spd(k)
    se, pe, off, nc = {}, {}, {}, {}
    for m in model.modalities:
        e = model.emissions[m]
        se[m] = scale * torch.randn(e.obs_dim, e.shared_dim, generator=g)
        pe[m] = scale * torch.randn(e.obs_dim, e.private_dim, generator=g)
        off[m] = torch.randn(e.obs_dim, generator=g)
        R = spd(e.obs_dim, 0.2)
        nc[m] = R if e.noise == "full" else torch.diag(R.diagonal())
    return LDSParams(tm, tc, im, ic, se, pe, off, nc)


def random_model(obs_dims=OBS_DIMS, shared_dim=2, private_dim=1, noise="diag", seed=0):
    model = MultimodalLDS(obs_dims, shared_dim, private_dim, noise=noise)
    return model.set_params(random_params(model, seed))


def masked_data(model, N=3, T=6, seed=1):
    """Sampled data with a stretch where modality b is hidden, an all-missing frame, single
    missing frames, and ragged lengths."""
    data, _ = model.sample(N, T, seed=seed)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["b"][0, 1:4] = math.nan  # b hidden for a stretch
    obs["a"][1, 2] = math.nan
    obs["a"][2, 3] = math.nan
    obs["b"][2, 3] = math.nan  # nothing observed at (2, 3)
    lengths = torch.tensor([T, T - 2, T - 1] + [T] * (N - 3))
    return MultimodalData(obs, lengths=lengths)


def dense_moments(model):
    """Mean ``(T*D,)`` and covariance of all observations of one sequence of length T, built from
    the joint Gaussian over states (no recursion shared with the ops)."""
    p = model.linear_gaussian_params()
    p = [x.detach() if isinstance(x, torch.Tensor) else x for x in p]
    mu0, P0, A, Q, Cs, ds, Rs = p[0], p[1], p[2], p[3], p[4], p[5], p[6]
    mods = model.modalities
    C = torch.cat([Cs[m].detach() for m in mods])
    d = torch.cat([ds[m].detach() for m in mods])
    R = torch.block_diag(*[Rs[m].detach() for m in mods])

    def moments(T):
        S = A.shape[0]
        means, marg = [mu0], [P0]
        for _ in range(1, T):
            means.append(A @ means[-1])
            marg.append(A @ marg[-1] @ A.mT + Q)
        Z = torch.zeros(T * S, T * S)
        for t in range(T):
            for s in range(t + 1):
                blk = torch.linalg.matrix_power(A, t - s) @ marg[s]  # Cov(z_t, z_s)
                Z[t * S : (t + 1) * S, s * S : (s + 1) * S] = blk
                Z[s * S : (s + 1) * S, t * S : (t + 1) * S] = blk.mT
        big_C = torch.block_diag(*[C] * T)
        mean = big_C @ torch.cat(means) + d.repeat(T)
        cov = big_C @ Z @ big_C.mT + torch.block_diag(*[R] * T)
        return mean, cov

    return moments


def observed_index(data, n):
    """Flat indices (into ``(T*D,)``, modality order of the data) observed in sequence ``n``."""
    mods = list(data.obs)
    dims = [data.obs[m].shape[-1] for m in mods]
    D = sum(dims)
    idx = []
    for t in range(data.num_timesteps):
        o = 0
        for m, Dm in zip(mods, dims, strict=False):
            if bool(data.mask[m][n, t]):
                idx += list(range(t * D + o, t * D + o + Dm))
            o += Dm
    return torch.tensor(idx, dtype=torch.long)


def flat_obs(data, n):
    return torch.cat([torch.nan_to_num(data.obs[m][n]) for m in data.obs], -1).reshape(-1)


@pytest.mark.parametrize("noise", ["diag", "full"])
def test_log_likelihood_equals_dense_gaussian_with_masks_and_ragged_lengths(noise):
    model = random_model(noise=noise, private_dim={"a": 1, "b": 2})
    data = masked_data(model)
    ll = model.log_likelihood(data)
    moments = dense_moments(model)
    for n in range(data.num_sequences):
        mean, cov = moments(data.num_timesteps)
        idx = observed_index(data, n)
        x = flat_obs(data, n)[idx]
        ref = torch.distributions.MultivariateNormal(mean[idx], cov[idx][:, idx]).log_prob(x)
        torch.testing.assert_close(ll[n], ref, rtol=1e-10, atol=1e-10)


def test_emission_matrices_are_zero_on_other_private_blocks():
    model = random_model(obs_dims={"a": 2, "b": 2, "c": 1}, private_dim={"a": 1, "b": 2, "c": 0})
    assert model.block_names == ("shared", "a", "b")
    Cb = model.emission_matrix("b")
    s0, s1 = model.block_slices["a"]
    assert Cb.shape == (2, model.state_dim) and bool((Cb[:, s0:s1] == 0).all())
    Cc = model.emission_matrix("c")
    assert bool((Cc[:, model.shared_dim :] == 0).all())


def test_gaussian_hmm_program_agrees_with_ops_unmasked():
    model = random_model(private_dim={"a": 2, "b": 1})
    data, _ = model.sample(4, 7, seed=3)
    ll = model.log_likelihood(data)
    x = torch.cat([data.obs[m] for m in model.modalities], -1)
    torch.testing.assert_close(model.pyro_gaussian_hmm(7).log_prob(x), ll, rtol=1e-10, atol=1e-10)
    elbo = Trace_ELBO()
    collapsed = elbo.loss(model.model, model.guide, data)
    ghmm = elbo.loss(model.model, model.guide, data, program="gaussian_hmm")
    assert collapsed == pytest.approx(ghmm, rel=1e-10)
    assert collapsed == pytest.approx(
        -(float(ll.detach().sum()) + float(model.log_prior().detach())), rel=1e-10
    )
    with pytest.raises(ValueError, match="fully observed"):
        elbo.loss(model.model, model.guide, masked_data(model), program="gaussian_hmm")


@pytest.mark.parametrize("noise", ["diag", "full"])
def test_em_never_decreases_the_log_joint(noise):
    truth = random_model(noise=noise, seed=5)
    data = masked_data(truth, N=4, T=25, seed=2)
    model = MultimodalLDS(OBS_DIMS, 2, 1, noise=noise)
    model.set_params(random_params(model, seed=11, scale=0.3))
    values = [float(model.em_step(data)) for _ in range(25)]
    diffs = torch.diff(torch.tensor(values))
    assert bool((diffs >= -1e-9 * abs(values[0])).all()), diffs.min()
    assert values[-1] > values[0] + 1.0
    # the returned value is the log joint before the update
    lj = float((model.log_likelihood(data).sum() + model.log_prior()).detach())
    assert float(model.em_step(data)) == pytest.approx(lj, rel=1e-12)
    # the block structure is kept
    assert model.emission_matrix("a")[:, model.block_slices["b"][0] :].abs().max() == 0


def test_em_with_a_binding_stability_constraint_stays_stable_and_monotone():
    # data from a nearly unit-root process: the unconstrained A update leaves the stable set
    model = MultimodalLDS({"a": 2, "b": 2}, 1, 0, max_spectral_norm=0.5)
    g = torch.Generator().manual_seed(0)
    walk = torch.randn(2, 40, 1, generator=g).cumsum(1)
    data = MultimodalData(
        {
            "a": walk + 0.1 * torch.randn(2, 40, 2, generator=g),
            "b": -walk + 0.1 * torch.randn(2, 40, 2, generator=g),
        }
    )
    model.init_from_data(data)
    values = [float(model.em_step(data)) for _ in range(10)]
    assert all(b >= a - 1e-9 * abs(a) for a, b in zip(values, values[1:], strict=False))
    A = model.params.transition_matrices["shared"]
    assert float(torch.linalg.matrix_norm(A, ord=2)) <= 0.5 + 1e-9


def test_impute_matches_dense_gaussian_conditional():
    model = random_model(noise="full", private_dim={"a": 1, "b": 2}, seed=2)
    data = masked_data(model, seed=4)
    imp = model.impute(data, "b")
    moments = dense_moments(model)
    T, D, Da = data.num_timesteps, 5, 3
    for n in range(data.num_sequences):
        mean, cov = moments(T)
        o = observed_index(data, n)
        o = o[(o % D) < Da]  # observed entries of "a" only
        x = flat_obs(data, n)
        target = torch.tensor([t * D + Da + j for t in range(T) for j in range(2)])
        K = torch.linalg.solve(cov[o][:, o], cov[o][:, target]).mT
        cmean = mean[target] + K @ (x[o] - mean[o])
        ccov = cov[target][:, target] - K @ cov[o][:, target]
        torch.testing.assert_close(imp.mean[n].reshape(-1), cmean, rtol=1e-9, atol=1e-9)
        for t in range(T):
            torch.testing.assert_close(
                imp.covariance[n, t],
                ccov[2 * t : 2 * t + 2, 2 * t : 2 * t + 2],
                rtol=1e-9,
                atol=1e-9,
            )


def test_posterior_smoothed_filtered_samples_and_arviz():
    from mmpgm.ops import kalman as kops

    model = random_model(private_dim={"a": 1, "b": 2})
    data = masked_data(model, T=8)
    post = mmpgm.infer(model, data, num_samples=5, seed=0)
    N, T, S = 3, 8, model.state_dim
    assert post.state_mean.shape == (N, T, S) and post.state_covariance.shape == (N, T, S, S)
    assert post.mean["shared"].shape == (N, T, 2) and post.mean["b"].shape == (N, T, 2)
    assert post.covariance["a"].shape == (N, T, 1, 1)
    assert post.samples.shape == (5, N, T, S) and post.cross_covariance.shape == (N, T - 1, S, S)
    torch.testing.assert_close(post.map, post.state_mean)
    torch.testing.assert_close(post.log_likelihood, model.log_likelihood(data).detach())
    again = mmpgm.infer(model, data, num_samples=5, seed=0)
    torch.testing.assert_close(post.samples, again.samples)
    causal = mmpgm.infer(model, data, causal=True)
    obs, mask, lengths = model._ops_inputs(model.check_data(data))
    filt = kops.kalman_filter(
        model.linear_gaussian_params(), obs, mask, lengths=lengths, method="sequential"
    )
    torch.testing.assert_close(causal.state_mean, filt.means.detach())
    torch.testing.assert_close(causal.covariance["shared"], filt.covs[..., :2, :2].detach())
    assert causal.causal and causal.cross_covariance is None
    idata = post.to_arviz()
    states = idata.latent_states["state"]
    assert states.dims == ("chain", "draw", "sequence", "time", "latent")
    assert states.shape == (1, 5, N, T, S)
    assert list(states["latent"].values) == ["shared_0", "shared_1", "a_0", "b_0", "b_1"]
    assert idata.posterior["state_time_mean"].dims == ("chain", "draw", "sequence", "latent")
    assert "log_likelihood" not in idata.groups()  # no parameter draws asked for
    # padding frames (t >= length) are NaN in the ArviZ view
    assert bool(torch.isnan(torch.as_tensor(states.values[0, :, 1, T - 1])).all())
    assert idata.constant_data["state_sd"].dims == ("sequence", "time", "latent")


def test_sample_shapes_and_fit_runs_with_svi_and_em():
    model = random_model()
    data, latents = model.sample(3, 20, seed=0)
    assert data.obs["a"].shape == (3, 20, 3) and data.obs["b"].shape == (3, 20, 2)
    assert latents["shared"].shape == (3, 20, 2) and latents["a"].shape == (3, 20, 1)
    fresh = MultimodalLDS(OBS_DIMS, 2, 1)
    res = mmpgm.fit(fresh, data, method="em", num_steps=5)
    assert res.num_steps == 5
    assert all(b <= a + 1e-9 for a, b in zip(res.losses, res.losses[1:], strict=False))
    fresh2 = MultimodalLDS(OBS_DIMS, 2, 1)
    res2 = mmpgm.fit(fresh2, data, num_steps=5, lr=0.01)
    assert len(res2.losses) == 5 and all(math.isfinite(v) for v in res2.losses)
    # every parameter (the stable A's raw weight included) receives a gradient
    fresh2.zero_grad()
    (-fresh2.log_likelihood(data).sum() - fresh2.log_prior()).backward()
    for name, p in fresh2.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), name


def test_save_load_roundtrip(tmp_path):
    model = random_model(noise={"a": "full", "b": "diag"}, private_dim={"a": 2, "b": 0})
    data, _ = model.sample(2, 10, seed=0)
    path = tmp_path / "lds.pt"
    model.save(path)
    loaded = mmpgm.load_model(path)
    assert isinstance(loaded, MultimodalLDS) and loaded.config() == model.config()
    torch.testing.assert_close(loaded.log_likelihood(data), model.log_likelihood(data))
    assert MultimodalLDS.from_config(model.config()).block_names == ("shared", "a")


def test_float32_model_keeps_its_dtype():
    model = random_model().float()
    data, _ = random_model().sample(2, 12, seed=0)
    assert model.log_likelihood(data).dtype == torch.float32
    model.em_step(data)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match="obs_dims"):
        MultimodalLDS([3, 2])
    with pytest.raises(ValueError, match="shared_dim"):
        MultimodalLDS(OBS_DIMS, 0)
    with pytest.raises(ValueError, match=r"private_dim\['b'\]"):
        MultimodalLDS(OBS_DIMS, 1, {"a": 1, "b": -1})
    with pytest.raises(ValueError, match="noise"):
        MultimodalLDS(OBS_DIMS, 1, 1, noise="tied")
    with pytest.raises(ValueError, match="reserved"):
        MultimodalLDS({"shared": 2}, 1)
    model = random_model()
    data, _ = model.sample(2, 5, seed=0)
    with pytest.raises(ValueError, match="obs_dim 3, got 4"):
        model.log_likelihood(MultimodalData({"a": torch.zeros(2, 5, 4), "b": torch.zeros(2, 5, 2)}))
    with pytest.raises(ValueError, match="lacks"):
        model.log_likelihood(MultimodalData({"a": torch.zeros(2, 5, 3)}))
    bad = MultimodalData({"a": data.obs["a"].clone(), "b": data.obs["b"]})
    bad.obs["a"][0, 1, 0] = math.nan
    bad.mask["a"][0, 1] = True  # mask says observed
    with pytest.raises(ValueError, match="NaN/inf where the mask says observed"):
        model.log_likelihood(bad)
    p = model.params
    Q = dict(p.transition_covs)
    Q["shared"] = torch.tensor([[1.0, 2.0], [2.0, 1.0]])  # symmetric, not PD
    with pytest.raises(ValueError, match=r"transition_covs\['shared'\].*positive-definite"):
        model.set_params(p._replace(transition_covs=Q))
    R = dict(p.emission_covs)
    R["b"] = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    with pytest.raises(ValueError, match="diagonal"):
        model.set_params(p._replace(emission_covs=R))
    A = dict(p.transition_matrices)
    A["a"] = torch.tensor([[1.5]])
    with pytest.raises(ValueError, match="spectral norm"):
        model.set_params(p._replace(transition_matrices=A))
    C = dict(p.shared_emission_matrices)
    C["a"] = torch.zeros(3, 3)
    with pytest.raises(
        ValueError, match=r"shared_emission_matrices\['a'\]: expected shape \(3, 2\)"
    ):
        model.set_params(p._replace(shared_emission_matrices=C))
    with pytest.raises(ValueError, match="unknown modality"):
        model.impute(data, "c")
    with pytest.raises(ValueError, match="program"):
        Trace_ELBO().loss(model.model, model.guide, data, program="nope")
    with pytest.raises(TypeError, match="MultimodalData"):
        model.log_likelihood({"a": data.obs["a"]})
