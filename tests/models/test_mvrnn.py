"""MVRNN: bound correctness, no leakage from missing frames, program equivalences, shapes,
errors."""

import importlib.util
import math
from pathlib import Path

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

import mmpgm
from mmpgm import MultimodalData
from mmpgm.models.mvrnn import MVRNN
from mmpgm.nn.heads import _inv_scale
from mmpgm.ops.gaussian import product_of_experts
from mmpgm.results import MVRNNImputation, MVRNNPosterior

DIMS = {"a": 3, "b": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    kw = {"hidden_dim": 8, "shared_dim": 3, "private_dim": 2, **kw}
    return MVRNN(DIMS, **kw).double()


def make_data(seed=1, N=4, T=6, lengths=None, missing=True):
    g = torch.Generator().manual_seed(seed)
    obs = {m: torch.randn(N, T, d, generator=g, dtype=torch.float64) for m, d in DIMS.items()}
    mask = None
    if missing:
        mask = {"a": torch.ones(N, T, dtype=torch.bool), "b": torch.ones(N, T, dtype=torch.bool)}
        mask["a"][0, 2:4] = False
        mask["b"][1, 1] = False
        mask["b"][2, 3:] = False
    return MultimodalData(obs, lengths=lengths, mask=mask)


def guide_latents(model, data, seed):
    pyro.set_rng_seed(seed)
    tr = pyro.poutine.trace(model.guide).get_trace(data, program="sites")
    T = data.num_timesteps
    return {
        b: torch.stack([tr.nodes[f"z_{b}_{t}"]["value"] for t in range(T)]) for b in model.blocks
    }


# --------------------------------------------------------------------------- building blocks
def test_product_of_experts_closed_form_and_absent_experts_do_not_leak():
    g = torch.Generator().manual_seed(0)
    p_loc, p_scale = torch.randn(5, 3, generator=g), torch.rand(5, 3, generator=g) + 0.5
    locs, scales = torch.randn(2, 5, 3, generator=g), torch.rand(2, 5, 3, generator=g) + 0.5
    masks = torch.tensor([[True, False, True, False, True], [True, True, False, False, True]])
    loc, scale = product_of_experts(p_loc, p_scale, locs, scales, masks)
    for n in range(5):
        prec = p_scale[n] ** -2 + sum(scales[m, n] ** -2 for m in range(2) if masks[m, n])
        mean = (
            p_loc[n] * p_scale[n] ** -2
            + sum(locs[m, n] * scales[m, n] ** -2 for m in range(2) if masks[m, n])
        ) / prec
        torch.testing.assert_close(loc[n], mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(scale[n], prec.rsqrt(), rtol=1e-6, atol=1e-6)
    # NaN in an absent expert never reaches the result
    locs2, scales2 = locs.clone(), scales.clone()
    locs2[~masks] = math.nan
    scales2[~masks] = math.nan
    loc2, scale2 = product_of_experts(p_loc, p_scale, locs2, scales2, masks)
    assert torch.equal(loc2, loc) and torch.equal(scale2, scale)


@pytest.mark.parametrize("private_dim,batched", [(2, True), (2, False), ({"a": 2, "b": 1}, True)])
def test_vectorized_scan_equals_plain_per_step_implementation(private_dim, batched):
    """The fused/hoisted scan (modalities batched, or one at a time, or the fallback for unequal
    private sizes) computes the same loss and gradient as the naive per-step code of the
    benchmark."""
    spec = importlib.util.spec_from_file_location(
        "mvrnn_speed", Path(__file__).resolve().parents[2] / "benchmarks" / "mvrnn_speed.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model = make_model(private_dim=private_dim)
    model.net.batched = batched
    assert model.net.can_batch == (batched and private_dim == 2)
    data = model.check_data(make_data(lengths=[6, 4, 6, 1]))
    xs, masks, tm = model._inputs(data)
    params = list(model.parameters())
    pyro.set_rng_seed(3)
    ours = -model.sequence_elbo(data).sum()
    g_ours = torch.autograd.grad(ours, params)
    pyro.set_rng_seed(3)
    plain = bench.plain_loss(model.net, xs, masks, model.net.draw_noise(6, 4), tm)
    g_plain = torch.autograd.grad(plain, params)
    torch.testing.assert_close(ours, plain, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_ours, g_plain, strict=False):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


# --------------------------------------------------------------------------- Pyro programs
def test_site_program_meanfield_loss_and_gradient_equal_the_vectorized_elbo():
    model = make_model()
    data = make_data(lengths=[6, 4, 6, 2])
    pyro.set_rng_seed(5)
    loss = TraceMeanField_ELBO().differentiable_loss(
        model.model, model.guide, data, program="sites"
    )
    g_site = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    lat = guide_latents(model, data, 5)
    ref = -model.sequence_elbo(data, latents=lat).sum()
    g_ref = torch.autograd.grad(ref, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_site, g_ref, strict=False):
        if a is None or b is None:
            assert (a is None or not a.abs().sum()) and (b is None or not b.abs().sum())
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_model_reuses_guide_states_only_when_replayed():
    """The replayed model reuses the guide's states; recomputing them gives the same log-joint."""
    model = make_model()
    data = make_data()
    calls = []
    step = model.net.shared_step
    model.net.shared_step = lambda *a, **k: calls.append(1) or step(*a, **k)
    pyro.set_rng_seed(2)
    gtr = pyro.poutine.trace(model.guide).get_trace(data, program="sites")
    assert len(calls) == data.num_timesteps
    cached = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=gtr)).get_trace(
        data, program="sites"
    )
    assert len(calls) == data.num_timesteps  # nothing recomputed by the replayed model
    assert model._site_cache is None  # consumed
    fresh = pyro.poutine.trace(pyro.poutine.replay(model.model, trace=gtr)).get_trace(
        data, program="sites"
    )
    assert len(calls) == 2 * data.num_timesteps  # a model run without a fresh guide recomputes
    torch.testing.assert_close(cached.log_prob_sum(), fresh.log_prob_sum(), rtol=1e-12, atol=1e-12)
    # Trace_ELBO (Monte Carlo KL) runs and is finite
    assert math.isfinite(float(Trace_ELBO().loss(model.model, model.guide, data, program="sites")))


def test_default_training_loss_is_the_negative_elbo_and_kl_scale_weights_the_kl():
    model = make_model()
    data = make_data()
    elbo = model.default_elbo()
    for w in (1.0, 0.25):
        model.kl_scale = w
        pyro.set_rng_seed(0)
        loss = elbo.differentiable_loss(model.model, model.guide, data)
        pyro.set_rng_seed(0)
        res, _ = model.elbo_terms(model.check_data(data))
        expect = -(sum(res.reconstruction.values()) - w * sum(res.kl.values())).sum()
        torch.testing.assert_close(loss, expect, rtol=1e-12, atol=1e-12)
    # minibatch: the plate rescales to the full data set
    pyro.set_rng_seed(0)
    half = elbo.differentiable_loss(model.model, model.guide, data, num_sequences=8)
    torch.testing.assert_close(half, 2 * loss, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- bound correctness
def linear_gaussian_mvrnn(seed=0):
    """An MVRNN that *is* a static linear-Gaussian factor model (linear heads, no use of h):
    x^m_t = mu_m + B_m z^s_t + A_m z^m_t + sigma_m eps, z ~ N(0, I) i.i.d. over time."""
    model = make_model(seed, head_dim=0)
    g = torch.Generator().manual_seed(seed + 10)
    net = model.net
    one = _inv_scale(torch.tensor(1.0, dtype=torch.float64))
    true = {}
    with torch.no_grad():
        for head in [net.prior_shared] + [net.prior_private[m] for m in DIMS]:
            head.l1.weight.zero_()
            Z = head.l1.out_features // 2
            head.l1.bias[:Z] = 0.0
            head.l1.bias[Z:] = one
        for m, D in DIMS.items():
            Zm, Zs = net.private_dims[m], net.shared_dim
            A = torch.randn(D, Zm, generator=g, dtype=torch.float64)
            B = torch.randn(D, Zs, generator=g, dtype=torch.float64)
            mu = torch.randn(D, generator=g, dtype=torch.float64)
            sigma = torch.rand(D, generator=g, dtype=torch.float64) + 0.3
            dec = net.decoders[m].l1
            dec.weight.zero_()
            dec.weight[:D, :Zm] = A
            dec.weight[:D, Zm : Zm + Zs] = B
            dec.bias[:D] = mu
            dec.bias[D:] = _inv_scale(sigma)
            true[m] = (A, B, mu, sigma)
    return model, true


def exact_log_likelihood(true, data):
    """Dense joint Gaussian over all observed (t, d) entries of each sequence."""
    out = []
    mods = list(DIMS)
    for n in range(data.num_sequences):
        xs, means, rows = [], [], []  # rows: (t, loading on z^s_t, loading on z^m_t, noise var)
        for t in range(int(data.lengths[n])):
            for m in mods:
                if not data.mask[m][n, t]:
                    continue
                A, B, mu, sigma = true[m]
                xs.append(data.obs[m][n, t])
                means.append(mu)
                rows.append((t, m, A, B, sigma))
        x = torch.cat(xs)
        mean = torch.cat(means)
        L = []  # loadings on the stacked latents (t, block)
        T = int(data.lengths[n])
        Zs = rows[0][3].shape[1]
        blocks = [("shared", Zs)] + [(m, true[m][0].shape[1]) for m in mods]
        offsets, k = {}, 0
        for t in range(T):
            for b, z in blocks:
                offsets[(t, b)] = k
                k += z
        for t, m, A, B, _ in rows:
            W = torch.zeros(A.shape[0], k, dtype=torch.float64)
            W[:, offsets[(t, "shared")] : offsets[(t, "shared")] + Zs] = B
            W[:, offsets[(t, m)] : offsets[(t, m)] + A.shape[1]] = A
            L.append(W)
        W = torch.cat(L)
        noise = torch.cat([r[4] ** 2 for r in rows])
        cov = W @ W.T + torch.diag(noise)
        out.append(torch.distributions.MultivariateNormal(mean, cov).log_prob(x))
    return torch.stack(out)


def test_elbo_and_iwae_bound_the_exact_log_likelihood_of_a_linear_gaussian_mvrnn():
    model, true = linear_gaussian_mvrnn()
    sample, _ = model.sample(4, 5, seed=0)
    obs = sample.obs
    mask = {m: torch.ones(4, 5, dtype=torch.bool) for m in DIMS}
    mask["a"][0, 1:3] = False
    mask["b"][2, 0] = False
    data = MultimodalData(obs, lengths=[5, 3, 5, 1], mask=mask)
    exact = exact_log_likelihood(true, data)
    with torch.no_grad():
        K = 2000
        elbo = model.sequence_elbo(data, kl_scale=1.0, repeat=K).reshape(K, 4)
        elbo_mean, elbo_se = elbo.mean(0), elbo.std(0) / math.sqrt(K)
        iwae = torch.stack(
            [model.log_likelihood(data, num_particles=256, seed=s) for s in range(4)]
        ).mean(0)
    # expected ELBO <= log p(x), strictly here (the encoder is random); 4 standard errors of slack
    assert bool((elbo_mean - 4 * elbo_se < exact).all()), (elbo_mean, exact)
    assert bool((elbo_mean < exact).all())
    # the importance-weighted bound is tighter and still below (up to its own noise)
    assert bool((iwae > elbo_mean).all()), (iwae, elbo_mean)
    assert bool((iwae < exact + 0.05).all()), (iwae, exact)


# --------------------------------------------------------------------------- missing modalities
def _everything(model, data):
    out = {}
    post = model.posterior(data, num_samples=2, seed=7)
    out["elbo"] = post.elbo
    for b in model.blocks:
        out[f"mean_{b}"], out[f"covariance_{b}"], out[f"samples_{b}"] = (
            post.mean[b],
            post.covariance[b],
            post.samples[b],
        )
        out[f"kl_{b}"] = post.kl[b]
    for m in DIMS:
        out[f"rec_{m}"] = post.reconstruction[m]
    with torch.no_grad():
        out["ll"] = model.log_likelihood(data, seed=3)
        out["iwae"] = model.log_likelihood(data, num_particles=3, seed=3)
    for m in DIMS:
        out[f"impute_{m}"] = model.impute(data, m, num_samples=3, seed=4).mean
    pyro.set_rng_seed(9)
    loss = model.default_elbo().differentiable_loss(model.model, model.guide, data)
    out["grad"] = torch.cat(
        [g.flatten() for g in torch.autograd.grad(loss, list(model.parameters()))]
    )
    return out


def test_values_stored_in_missing_frames_change_nothing():
    model = make_model()
    base = make_data(lengths=[6, 5, 6, 6])
    changed_obs = {m: v.clone() for m, v in base.obs.items()}
    for m in DIMS:
        hidden = ~base.mask[m]  # masked frames and padding
        changed_obs[m][hidden] = 1e3 * torch.randn(int(hidden.sum()), DIMS[m], dtype=torch.float64)
    changed_obs["a"][0, 3] = math.nan  # NaN is just another stored value
    changed = MultimodalData(changed_obs, lengths=base.lengths, mask=base.mask)
    assert all(torch.equal(changed.mask[m], base.mask[m]) for m in DIMS)
    a, b = _everything(model, base), _everything(model, changed)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the masked values do matter once observed (the comparison is not vacuous)
    revealed = MultimodalData(changed_obs, lengths=base.lengths, mask={"b": base.mask["b"]})
    assert not torch.equal(model.log_likelihood(revealed, seed=3), a["ll"])


def test_a_missing_modality_has_no_reconstruction_or_private_kl_and_imputation_ignores_it():
    model = make_model()
    data = make_data()
    post = model.posterior(data, seed=0)
    for m in DIMS:
        hidden = ~data.mask[m]
        assert bool((post.reconstruction[m][hidden] == 0).all())
        assert bool((post.kl[m][hidden] == 0).all())  # private posterior = prior there
    # impute() ignores every frame of the modality it generates, observed or not
    other = MultimodalData(
        {"a": torch.randn(4, 6, 3, dtype=torch.float64), "b": data.obs["b"]},
        mask={"b": data.mask["b"]},
    )
    i1 = model.impute(data, "a", num_samples=4, seed=1)
    i2 = model.impute(other, "a", num_samples=4, seed=1)
    assert torch.equal(i1.mean, i2.mean) and torch.equal(i1.covariance, i2.covariance)
    assert isinstance(i1, MVRNNImputation) and i1.samples.shape == (4, 4, 6, 3)
    assert bool((i1.variance > 0).all())  # the diagonal of the (diagonal) covariance
    assert torch.equal(i1.covariance, torch.diag_embed(i1.variance))
    assert i1.to_arviz().posterior_predictive["x"].dims == (
        "chain",
        "draw",
        "sequence",
        "time",
        "feature",
    )


def test_fully_missing_modality_leaves_a_valid_model_of_the_others():
    model = make_model()
    data = make_data(missing=False)
    gone = MultimodalData(
        data.obs,
        mask={"a": torch.ones(4, 6, dtype=torch.bool), "b": torch.zeros(4, 6, dtype=torch.bool)},
    )
    post = model.posterior(gone, seed=0)
    assert bool(torch.isfinite(post.elbo).all())
    assert bool((post.reconstruction["b"] == 0).all()) and bool((post.kl["b"] == 0).all())
    assert bool((post.reconstruction["a"] != 0).all())
    imp = model.impute(gone, "b", num_samples=2, seed=0)
    assert bool(torch.isfinite(imp.mean).all())
    result = mmpgm.fit(model, gone, num_steps=3, lr=1e-2, progress=False)
    assert all(math.isfinite(v) for v in result.losses)
    # the stored values of b are irrelevant
    gone2 = MultimodalData(
        {"a": data.obs["a"], "b": torch.full((4, 6, 2), 5.0, dtype=torch.float64)}, mask=gone.mask
    )
    assert torch.equal(model.log_likelihood(gone, seed=1), model.log_likelihood(gone2, seed=1))


# --------------------------------------------------------------------------- results, shapes
@pytest.mark.parametrize("T,lengths", [(1, None), (5, [5, 2, 1])])
def test_shapes_padding_and_arviz(T, lengths):
    model = make_model()
    N = 3
    g = torch.Generator().manual_seed(0)
    data = MultimodalData(
        {m: torch.randn(N, T, d, generator=g) for m, d in DIMS.items()}, lengths=lengths
    )
    post = mmpgm.infer(model, data, num_samples=2, seed=0)
    assert isinstance(post, MVRNNPosterior)
    assert post.elbo.shape == (N, T) and post.log_likelihood.shape == (N,)
    assert post.mean["shared"].shape == (N, T, 3) and post.samples["a"].shape == (2, N, T, 2)
    inside = post.time_mask
    assert bool((post.elbo[~inside] == 0).all())
    for b in model.blocks:
        assert bool((post.kl[b][~inside] == 0).all())
    torch.testing.assert_close(post.log_likelihood, post.elbo.sum(-1))
    torch.testing.assert_close(
        post.elbo, sum(post.reconstruction.values()) - sum(post.kl.values()), rtol=1e-12, atol=1e-12
    )
    idata = post.to_arviz()
    z = idata.latent_states["z_shared"]
    assert z.dims == ("chain", "draw", "sequence", "time", "z_shared_dim")
    assert idata.latent_states["z_a"].shape == (1, 2, N, T, 2)
    assert idata.posterior["z_a_time_mean"].shape == (1, 2, N, 2)
    assert "log_likelihood" not in idata.groups()  # an ELBO is not a pointwise log-likelihood
    assert idata.constant_data["sequence_elbo"].dims == ("sequence",)
    assert idata.constant_data["elbo"].dims == ("sequence", "time")
    if lengths is not None:
        assert bool(z.isnull()[0, 0, 2, 1:].all())
    ll = model.log_likelihood(data)
    assert ll.shape == (N,) and ll.requires_grad
    assert model.impute(data, "b", num_samples=2).mean.shape == (N, T, 2)


def test_sequences_are_independent():
    model = make_model()
    data = make_data(lengths=[6, 3, 6, 2], missing=False)
    # each sequence's noise-free posterior depends on that sequence only
    full = model.posterior(data, seed=0)
    for n in range(4):
        one = model.posterior(data[n], seed=0)
        torch.testing.assert_close(
            one.mean["shared"][0], full.mean["shared"][n], rtol=1e-12, atol=1e-12
        )


def test_sample_fit_save_load_and_bernoulli():
    model = make_model(kl_annealing=None)  # a fixed kl_scale, saved with the model
    data, latents = model.sample(3, 4, seed=0)
    assert data.obs["a"].shape == (3, 4, 3) and latents["shared"].shape == (3, 4, 3)
    data2, _ = model.sample(3, 4, seed=0)
    assert torch.equal(data.obs["a"], data2.obs["a"])
    model.kl_scale = 0.5
    result = mmpgm.fit(model, data, num_steps=5, lr=1e-2, progress=False)
    assert result.num_steps == 5
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = f"{d}/m.pt"
        model.save(path)
        loaded = mmpgm.load_model(path)
    assert (
        isinstance(loaded, MVRNN) and loaded.kl_scale == 0.5 and loaded.config() == model.config()
    )
    torch.testing.assert_close(
        loaded.log_likelihood(data, seed=1), model.log_likelihood(data, seed=1)
    )
    bern = MVRNN(
        {"bits": 4, "y": 2},
        hidden_dim=6,
        shared_dim=2,
        private_dim={"bits": 1, "y": 0},
        likelihood={"bits": "bernoulli", "y": "gaussian"},
    )
    g = torch.Generator().manual_seed(0)
    bd = MultimodalData(
        {
            "bits": (torch.rand(2, 5, 4, generator=g) > 0.5).float(),
            "y": torch.randn(2, 5, 2, generator=g),
        }
    )
    assert bool(torch.isfinite(bern.log_likelihood(bd)).all())
    imp = bern.impute(bd, "bits", num_samples=2)
    assert bool(((imp.mean > 0) & (imp.mean < 1)).all())
    assert bern.sample(2, 3, seed=0)[0].obs["bits"].unique().tolist() in ([0.0, 1.0], [0.0], [1.0])


# --------------------------------------------------------------------------- errors
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(TypeError, match="obs_dims"):
        MVRNN([3, 2])
    with pytest.raises(ValueError, match="obs_dims\\['a'\\]"):
        MVRNN({"a": 0})
    with pytest.raises(ValueError, match="hidden_dim"):
        MVRNN(DIMS, hidden_dim=0)
    with pytest.raises(ValueError, match="private_dim"):
        MVRNN(DIMS, private_dim={"a": 1})
    with pytest.raises(ValueError, match="likelihood"):
        MVRNN(DIMS, likelihood="poisson")
    model = make_model()
    with pytest.raises(ValueError, match="kl_scale"):
        model.kl_scale = -1.0
    with pytest.raises(TypeError, match="MultimodalData"):
        model.log_likelihood({"a": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="lacks"):
        model.posterior(MultimodalData({"a": torch.zeros(1, 2, 3)}))
    with pytest.raises(ValueError, match="obs_dim"):
        model.posterior(MultimodalData({"a": torch.zeros(1, 2, 4), "b": torch.zeros(1, 2, 2)}))
    # integer arrays: MultimodalData stores them as floats (negative = missing), so they arrive
    # here as floating-point observations
    data = make_data()
    with pytest.raises(ValueError, match="modality"):
        model.impute(data, "c")
    with pytest.raises(ValueError, match="num_particles"):
        model.log_likelihood(data, num_particles=0)
    with pytest.raises(ValueError, match="num_samples"):
        model.posterior(data, num_samples=-1)
    with pytest.raises(ValueError, match="num_sequences"):
        model.sample(0, 3)


@pytest.mark.benchmark
def test_speed_benchmark_quick_runs_and_agrees():
    import json
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "mvrnn_speed.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.strip()]
    for k in ("benchmark", "config", "median_s", "speedup", "peak_mib", "agreement", "env"):
        assert k in rec, k
    assert rec["benchmark"] == "mvrnn_speed" and rec["config"]["name"] == "quick"
    assert {"mmpgm", "torch_plain", "pyro_trace_elbo", "pyro_meanfield_elbo"} <= set(
        rec["median_s"]
    )
    # float32, same noise: only rounding differs
    assert rec["agreement"]["torch_plain"] < 1e-5 and rec["agreement"]["pyro_meanfield_elbo"] < 1e-5
