"""MultimodalLDS(sensor_faults=...): the keyword, the unchanged default, the mean-field
posterior against the exact one (enumeration of every fault pattern), EM/SVI, save/load, the
online filter, and a seeded recovery test with gross outliers in one sensor."""

from __future__ import annotations

import math
import pathlib
import sys

import pytest
import torch

import mmpgm
from mmpgm import MultimodalData
from mmpgm.models.lds import LDSParams, MultimodalLDS
from mmpgm.models.lds import faults as lds_faults
from mmpgm.ops import kalman as kops
from mmpgm.ops.kalman import LinearGaussianParams

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "ops"))
from _fault_oracle import enumerate_faults  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.usefixtures("float64")


def close(a, b, tol=1e-9):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def set_random_params(model, seed=0, rate=0.05, bg_scale=4.0):
    """Random stable parameters (and, with sensor faults, a fixed background and rate)."""
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
        se[m] = torch.randn(e.obs_dim, e.shared_dim, generator=g)
        pe[m] = torch.randn(e.obs_dim, e.private_dim, generator=g)
        off[m] = torch.randn(e.obs_dim, generator=g)
        nc[m] = torch.diag(spd(e.obs_dim, 0.2).diagonal())
    fm = model.fault_modalities
    extra = {}
    if fm:
        extra = dict(
            fault_rates={m: torch.tensor(rate) for m in fm},
            fault_background_locs={m: torch.zeros(model.obs_dims[m]) for m in fm},
            fault_background_scales={m: torch.full((model.obs_dims[m],), bg_scale) for m in fm},
        )
    return model.set_params(LDSParams(tm, tc, im, ic, se, pe, off, nc, **extra))


def tiny_model(private_dim=0, faults=True, rate=0.05, **kw):
    model = MultimodalLDS(
        {"a": 1, "b": 1}, shared_dim=1, private_dim=private_dim, sensor_faults=faults, **kw
    )
    return set_random_params(model, seed=1, rate=rate)


# ------------------------------------------------------------------ the keyword
def test_sensor_faults_keyword_forms_and_errors():
    dims = {"a": 1, "b": 2}
    assert MultimodalLDS(dims).fault_modalities == ()
    assert MultimodalLDS(dims, sensor_faults=True).fault_modalities == ("a", "b")
    assert MultimodalLDS(dims, sensor_faults=["b"]).fault_modalities == ("b",)
    assert MultimodalLDS(dims, sensor_faults=("a",)).fault_modalities == ("a",)
    assert MultimodalLDS(dims, sensor_faults={"a": True, "b": False}).fault_modalities == ("a",)
    with pytest.raises(ValueError, match="sensor_faults: unknown modalities \\['c'\\]"):
        MultimodalLDS(dims, sensor_faults=["c"])
    with pytest.raises(ValueError, match="sensor_faults"):
        MultimodalLDS(dims, sensor_faults={"c": True})
    with pytest.raises(TypeError, match="sensor_faults"):
        MultimodalLDS(dims, sensor_faults="a")
    with pytest.raises(TypeError, match="sensor_faults\\['a'\\]"):
        MultimodalLDS(dims, sensor_faults={"a": 1})
    with pytest.raises(ValueError, match="fault_rate_floor"):
        MultimodalLDS(dims, sensor_faults=True, fault_rate_floor=0.3)
    with pytest.raises(ValueError, match="fault_scale"):
        MultimodalLDS(dims, sensor_faults=True, fault_scale=0.0)
    model = MultimodalLDS(dims, sensor_faults=True)
    data, _ = MultimodalLDS(dims).sample(2, 5, seed=0)
    with pytest.raises(ValueError, match="program='gaussian_hmm'"):
        model.model(data, program="gaussian_hmm")


def test_default_is_unchanged():
    """sensor_faults=False (and [] / all-False dicts) is today's model: same state, config,
    exact likelihood, exact posterior, EM step, no fault_probs."""
    dims = {"a": 3, "b": 2}
    models = [
        MultimodalLDS(dims, 2, 1),
        MultimodalLDS(dims, 2, 1, sensor_faults=False),
        MultimodalLDS(dims, 2, 1, sensor_faults=[]),
        MultimodalLDS(dims, 2, 1, sensor_faults={"a": False, "b": False}),
    ]
    ref = set_random_params(models[0], seed=3)
    data, _ = ref.sample(3, 6, seed=4)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["b"][0, 1:3] = math.nan
    data = MultimodalData(obs, lengths=torch.tensor([6, 4, 5]))
    lg = ref.linear_gaussian_params()
    d = ref.check_data(data)
    exact_ll = kops.kalman_log_likelihood(lg, d.obs, d.mask, lengths=d.lengths)
    exact_sm = kops.rts_smoother(lg, d.obs, d.mask, lengths=d.lengths)
    log_prior = ref.log_prior().detach()
    for model in models:
        set_random_params(model, seed=3)
        assert model.config() == ref.config()
        assert list(model.state_dict()) == list(ref.state_dict())
        assert model.params[8:] == (None, None, None)
        close(model.log_likelihood(data), exact_ll)
        post = mmpgm.infer(model, data)
        assert post.fault_probs is None
        close(post.state_mean, exact_sm.means)
        close(post.state_covariance, exact_sm.covs)
        assert mmpgm.infer(model, data, causal=True).fault_probs is None
        log_joint = model.em_step(data)
        close(log_joint, exact_ll.sum() + log_prior)
    after = [m.params for m in models]
    for p in after[1:]:
        for f in LDSParams._fields[:8]:
            for k in getattr(p, f):
                close(getattr(p, f)[k], getattr(after[0], f)[k])


# ------------------------------------------------------------------ against enumeration
def enumeration_inputs(model, data):
    d = model.check_data(data)
    lg = model.linear_gaussian_params()
    names = model.modalities
    pos = LinearGaussianParams(
        lg.initial_mean.detach(),
        lg.initial_cov.detach(),
        lg.transition_matrix.detach(),
        lg.transition_cov.detach(),
        tuple(lg.emission_matrices[m].detach() for m in names),
        tuple(lg.emission_offsets[m].detach() for m in names),
        tuple(lg.emission_covs[m].detach() for m in names),
    )
    obs = [d.filled(m) for m in names]
    masks = [d.mask[m] & d.time_mask for m in names]
    lb, rates = lds_faults.fault_inputs(model, d)
    return (
        pos,
        obs,
        masks,
        [lb.get(m) for m in names],
        [float(rates[m].detach()) if m in rates else None for m in names],
    )


def outlier_data(model, T=4):
    data, _ = model.sample(3, T, seed=7)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["a"][:, 1] = obs["a"][:, 1] + 25.0  # gross outlier (noise sd ~ 0.3-0.6)
    obs["b"][1, 2] = math.nan  # b missing once
    return MultimodalData(obs, lengths=torch.tensor([T, T, T - 1]))


@pytest.mark.parametrize("private_dim", [0, 1])
def test_posterior_against_enumeration_with_masks_and_lengths(private_dim):
    # Measured (state dim 1 and 2, T = 3, 3 sequences: one gross outlier in a at t = 1, b
    # missing once, one sequence a frame shorter): max |q(f) - p(f | x)| over observed frames
    # 0.0002-0.022, max |E_q z - E z| 0.0002-0.031, exact log p(x) minus the bound
    # 0.0005-0.026 nats; the outlier frame 1.00000 in both. (At T = 4: up to 0.067, 0.054 and
    # 0.16.) Bounds 0.05, 0.05, 0.05 (about twice the largest at T = 3).
    model = tiny_model(private_dim=private_dim, fault_iters=200, fault_tol=1e-12)
    data = outlier_data(model, T=3)
    post = mmpgm.infer(model, data)
    pos, obs, masks, lb, rates = enumeration_inputs(model, data)
    for n in range(3):
        ex = enumerate_faults(pos, obs, masks, lb, rates, n=n)
        for i, m in enumerate(model.modalities):
            q = post.fault_probs[m][n]
            seen = masks[i][n]
            assert float((q[seen] - ex["fault_probs"][i][seen]).abs().max()) < 0.05
        assert float(post.fault_probs["a"][n, 1]) > 0.999
        assert float((post.state_mean[n] - ex["mean"]).abs().max()) < 0.05
        gap = float(ex["log_lik"] - post.log_likelihood[n])
        assert -1e-10 <= gap < 0.05
    rate_b = float(model.faults["b"].rate.detach())
    close(post.fault_probs["b"][1, 2], torch.tensor(rate_b))  # masked: the prior rate
    assert float(post.fault_probs["a"][2, 2]) == 0.0  # padding
    close(model.log_likelihood(data), post.log_likelihood, tol=1e-6)


# ------------------------------------------------------------------ learning
def corrupted(T=60, N=3, seed=0, frac=0.1):
    """Data of a two-sensor model with ``frac`` gross outlier frames in sensor a."""
    gen = MultimodalLDS({"a": 2, "b": 2}, shared_dim=2, private_dim=0)
    set_random_params(gen, seed=seed)
    data, lat = gen.sample(N, T, seed=seed + 1)
    g = torch.Generator().manual_seed(seed + 2)
    xa = data.obs["a"].clone()
    flags = torch.rand(N, T, generator=g) < frac
    sd = xa.std((0, 1))
    k = int(flags.sum())
    jump = (8 + 4 * torch.rand(k, 2, generator=g)) * sd * torch.randn(k, 2, generator=g).sign()
    xa[flags] = xa[flags] + jump
    return gen, MultimodalData({"a": xa, "b": data.obs["b"]}), flags, lat


def test_em_bound_never_decreases_and_rates_respect_the_floor():
    _, data, _, _ = corrupted(T=30, N=2)
    model = MultimodalLDS({"a": 2, "b": 2}, 2, 0, sensor_faults=True, fault_rate_floor=0.02)
    res = mmpgm.fit(model, data, method="em", num_steps=10, patience=0)
    losses = torch.as_tensor(res.losses)
    assert bool((losses.diff() <= 1e-9).all()), losses
    assert float(model.faults["b"].rate.detach()) >= 0.02 - 1e-12  # clean sensor: at the floor
    assert float(model.faults["a"].rate.detach()) > 0.05


def test_svi_on_the_bound_runs_and_improves():
    _, data, _, _ = corrupted(T=15, N=2)
    model = MultimodalLDS({"a": 2, "b": 2}, 2, 0, sensor_faults=["a"])
    res = mmpgm.fit(model, data, method="svi", num_steps=8, lr=0.02, patience=0)
    assert res.losses[-1] < res.losses[0]
    loss = -model.log_likelihood(data).sum()
    loss.backward()
    assert model.faults["a"].rate_unconstrained.grad is not None


def test_save_load_roundtrip(tmp_path):
    _, data, _, _ = corrupted(T=20, N=2)
    model = MultimodalLDS({"a": 2, "b": 2}, 2, 0, sensor_faults={"a": True}, fault_scale=3.0)
    mmpgm.fit(model, data, method="em", num_steps=3)
    path = tmp_path / "lds.pt"
    model.save(path)
    again = mmpgm.load_model(path)
    assert again.fault_modalities == ("a",) and again.fault_scale == 3.0
    assert again.config() == model.config()
    for f in ("fault_rates", "fault_background_locs", "fault_background_scales"):
        close(getattr(again.params, f)["a"], getattr(model.params, f)["a"])
    close(mmpgm.infer(again, data).fault_probs["a"], mmpgm.infer(model, data).fault_probs["a"])
    rebuilt = MultimodalLDS({"a": 2, "b": 2}, 2, 0, sensor_faults=["a"]).set_params(model.params)
    close(rebuilt.params.fault_rates["a"], model.params.fault_rates["a"])
    with pytest.raises(ValueError, match="fault_rates\\['a'\\]"):
        rebuilt.set_params(model.params._replace(fault_rates={"a": torch.tensor(0.9)}))


def test_online_filter_matches_the_causal_posterior():
    from mmpgm.online.lds import LDSFilter

    model = tiny_model(private_dim=1)
    data = outlier_data(model, T=5)
    post = mmpgm.infer(model, data, causal=True)
    d = model.check_data(data)
    filt = LDSFilter(model, num_sequences=3)
    for t in range(5):
        frame = {}
        for m in model.modalities:
            x = d.obs[m][:, t].clone()
            x[~(d.mask[m][:, t] & d.time_mask[:, t])] = math.nan
            frame[m] = x
        state = filt.step(frame)
        inside = d.time_mask[:, t]
        close(state.state_mean[inside], post.state_mean[inside, t])
        for m in model.modalities:
            close(state.fault_probs[m][inside], post.fault_probs[m][inside, t])
    assert float(post.fault_probs["a"][0, 1]) > 0.99


def test_sample_impute_and_draws():
    model = tiny_model(private_dim=1, rate=0.3)
    data, lat = model.sample(4, 25, seed=3)
    flags = lat["faults"]
    assert set(flags) == {"a", "b"} and flags["a"].shape == (4, 25)
    # 100 Bernoulli(0.3) draws per sensor: sd 0.046, margin 4 sd
    assert abs(float(flags["a"].double().mean()) - 0.3) < 0.18
    imp = model.impute(data, "b")
    assert imp.mean.shape == (4, 25, 1) and bool(torch.isfinite(imp.covariance).all())
    post = mmpgm.infer(model, data, num_samples=3, seed=0)
    assert post.samples.shape == (3, 4, 25, model.state_dim)


# ------------------------------------------------------------------ seeded statistics
@pytest.mark.slow
def test_gross_outliers_in_one_sensor_recovery():
    """10% gross outlier frames in sensor a (8-12 data sd), true parameters, background fitted
    to the corrupted data: the fault-aware smoothed-state RMSE within 10% of the oracle that
    masks the outlier frames, far below the plain smoother's; fault AUROC >= 0.95.

    Measured (N = 4, T = 150, 2 + 2 sensors, fault_scale 4): RMSE fault-aware / oracle 1.000
    (seed 0; 1.000 and 1.000 for seeds 1, 2), plain / oracle 3.97 (seed 0; 1.33 and 3.42),
    AUROC 1.0000. The margins 1.10 and 0.95 are the targets of issue 12; plain >= 2 x oracle is
    half the measured 3.97. (With EM-fitted models, 100 steps, seeds 0-2, the RMSE of the
    reconstructed clean signal of a: fault-aware / oracle-masked fit 0.98-1.01, plain 1.7-2.9 x
    worse, AUROC 1.0; not run here: about a minute.)
    """
    gen, data, flags, lat = corrupted(T=150, N=4, seed=0)
    z = lat["shared"]
    model = MultimodalLDS({"a": 2, "b": 2}, 2, 0, sensor_faults=["a"])
    model.set_params(gen.params)
    lds_faults.fit_background(model, data)
    post = mmpgm.infer(model, data)
    plain = mmpgm.infer(gen, data)
    xo = data.obs["a"].clone()
    xo[flags] = math.nan
    oracle = mmpgm.infer(gen, MultimodalData({"a": xo, "b": data.obs["b"]}))

    def rmse(p):
        return float((p.mean["shared"] - z).square().mean().sqrt())

    assert rmse(post) <= 1.10 * rmse(oracle)
    assert rmse(plain) >= 2 * rmse(oracle)
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(flags.flatten().numpy(), post.fault_probs["a"].flatten().numpy())
    assert auc >= 0.95
