"""MultimodalHMM(sensor_faults=...): exactness against brute-force enumeration over every joint
path (fault chains included), the enumerated Pyro program, posteriors, I/O, errors, and a
seeded statistical test of fault detection."""

import itertools
import math

import numpy as np
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import mmpgm
from mmpgm import MultimodalData, MultimodalHMM
from mmpgm.online import HMMFilter

pytestmark = pytest.mark.usefixtures("float64")


def random_fault_model(obs_dims, K_s, K_m, emission="diag", sensor_faults=True, seed=0):
    torch.manual_seed(seed)
    model = MultimodalHMM(obs_dims, K_s, K_m, emission=emission, sensor_faults=sensor_faults)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for chain in [model.shared_chain] + list(model.private_chains.values()):
            K = chain.num_states
            chain.initial_probs = torch.rand(K, generator=g).add(0.2).softmax(0)
            chain.transition_probs = (torch.rand(K, K, generator=g) * 3).softmax(-1)
        for fc in model.fault_chains.values():
            p0, a, b = 0.05 + 0.4 * torch.rand(3, generator=g)
            fc.set_probs(
                torch.stack([1 - p0, p0]), torch.tensor([[1 - a, a], [0.2, 0.8 + 0.1 * b]])
            )
        for e in model.emissions.values():
            if hasattr(e, "loc"):
                e.loc = 2 * torch.randn(e.loc.shape, generator=g)
            if hasattr(e, "scale"):
                e.scale = torch.rand(e.scale.shape, generator=g) + 0.5
            if hasattr(e, "probs"):
                e.probs = torch.rand(e.probs.shape, generator=g).add(0.1).softmax(-1)
        for bg in model.fault_backgrounds.values():
            bg.loc = torch.randn(bg.loc.shape, generator=g)
            bg.scale = torch.rand(bg.scale.shape, generator=g) + 1.0
            bg.stuck_scale = 0.3 * torch.rand(bg.scale.shape, generator=g) + 0.2  # visible
            bg.stuck_weight = torch.tensor(0.3)
    return model


def _emission_log_prob(e, x, s, p):
    """log p(x | s, p) written from the emission's parameters (not its log_prob)."""
    names = ("probs", "scale_tril", "loc", "scale")
    e = {k: getattr(e, k).detach() for k in names if hasattr(e, k)}
    if "probs" in e:
        return float(torch.log(e["probs"][s, p, int(x[0])]))
    if "scale_tril" in e:
        L = e["scale_tril"][s, p]
        return float(
            torch.distributions.MultivariateNormal(e["loc"][s, p], scale_tril=L).log_prob(x)
        )
    return float(torch.distributions.Normal(e["loc"][s, p], e["scale"][s, p]).log_prob(x).sum())


def _background_log_prob(bg, x, prev=None):
    """log q(x | previous frame ``prev`` or None), written from the buffers."""
    if bg.num_categories is not None:
        return -math.log(bg.num_categories)
    broad = float(torch.distributions.Cauchy(bg.loc, bg.scale).log_prob(x).sum())
    w = float(bg.stuck_weight)
    if prev is None or w == 0:
        return broad
    held = float(torch.distributions.Normal(prev, bg.stuck_scale).log_prob(x).sum())
    return float(np.logaddexp(math.log(1 - w) + broad, math.log(w) + held))


def brute_force(model, data):
    """Every joint path of every chain: log p(x) per sequence, smoothed joint marginals
    ``(N, T, P)``, filtered joint marginals and the MAP path, by enumeration."""
    chains = model._chains()
    sizes = model.chain_sizes
    states = list(itertools.product(*[range(k) for k in sizes]))
    M = len(model.modalities)
    init = [c.initial_probs.detach() for c in chains]
    trans = [c.transition_probs.detach() for c in chains]
    out_ll, out_marg, out_filt, out_map = [], [], [], []
    for n in range(data.num_sequences):
        L = int(data.lengths[n])
        # per-frame log factor of each product state
        frame = np.zeros((data.num_timesteps, len(states)))
        for t in range(L):
            for k, z in enumerate(states):
                total = 0.0
                for i, m in enumerate(model.modalities):
                    if not bool(data.mask[m][n, t]):
                        continue
                    x = data.obs[m][n, t]
                    if m in model.fault_modalities:
                        f = z[1 + M + model.fault_modalities.index(m)]
                        if f == 1:
                            seen = t > 0 and bool(data.mask[m][n, t - 1])
                            prev = data.obs[m][n, t - 1] if seen else None
                            total += _background_log_prob(model.fault_backgrounds[m], x, prev)
                            continue
                    total += _emission_log_prob(model.emissions[m], x, z[0], z[1 + i])
                frame[t, k] = total
        log_init = np.array(
            [sum(math.log(init[c][z[c]]) for c in range(len(sizes))) for z in states]
        )
        log_trans = np.array(
            [
                [sum(math.log(trans[c][a[c], b[c]]) for c in range(len(sizes))) for b in states]
                for a in states
            ]
        )
        scores = {}
        for path in itertools.product(range(len(states)), repeat=L):
            lp = log_init[path[0]] + frame[0, path[0]]
            for t in range(1, L):
                lp += log_trans[path[t - 1], path[t]] + frame[t, path[t]]
            scores[path] = lp
        vals = np.array(list(scores.values()))
        ll = np.logaddexp.reduce(vals)
        marg = np.zeros((data.num_timesteps, len(states)))
        filt = np.zeros((data.num_timesteps, len(states)))
        for path, lp in scores.items():
            for t in range(L):
                marg[t, path[t]] += math.exp(lp - ll)
        for t in range(L):  # filtered: enumerate the prefix 0..t
            pref = {}
            for path in scores:  # the prefix score, recomputed (not a sum over suffixes)
                pre = path[: t + 1]
                if pre in pref:
                    continue
                s = log_init[pre[0]] + frame[0, pre[0]]
                for u in range(1, t + 1):
                    s += log_trans[pre[u - 1], pre[u]] + frame[u, pre[u]]
                pref[pre] = s
            z = np.logaddexp.reduce(np.array(list(pref.values())))
            for pre, s in pref.items():
                filt[t, pre[-1]] += math.exp(s - z)
        best = max(scores, key=scores.get)
        out_ll.append(ll)
        out_marg.append(marg.reshape((data.num_timesteps,) + sizes))
        out_filt.append(filt.reshape((data.num_timesteps,) + sizes))
        out_map.append(np.array([states[k] for k in best] + [states[0]] * (data.num_timesteps - L)))
    return (
        torch.tensor(np.array(out_ll)),
        torch.tensor(np.array(out_marg)),
        torch.tensor(np.array(out_filt)),
        np.array(out_map),
    )


def _tiny_data(model, T, seed=1):
    data, _ = model.sample(2, T, seed=seed)
    obs = {m: v.clone() for m, v in data.obs.items()}
    first = model.modalities[0]
    if T > 2:
        obs[first][0, 1] = math.nan  # one modality hidden at one frame
    lengths = [T, max(1, T - 1)]
    return MultimodalData(obs, lengths=lengths)


CASES = [
    # obs_dims, K_s, K_m, emission, sensor_faults
    ({"a": 2, "b": 1}, 2, {"a": 2, "b": 1}, "diag", True),
    ({"a": 2, "b": 2}, 2, 1, {"a": "full", "b": "diag"}, ["b"]),
    ({"a": 1, "c": 3}, 2, 1, {"a": "diag", "c": "categorical"}, {"a": True, "c": True}),
]


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("obs_dims,K_s,K_m,emission,faults", CASES)
def test_likelihood_posteriors_and_map_equal_brute_force(obs_dims, K_s, K_m, emission, faults, T):
    model = random_fault_model(obs_dims, K_s, K_m, emission, faults)
    data = _tiny_data(model, T)
    ll, marg, filt, best = brute_force(model, data)
    torch.testing.assert_close(model.log_likelihood(data).detach(), ll, rtol=1e-10, atol=1e-10)

    post = mmpgm.infer(model, data)
    C = len(model.chain_sizes)
    for c, name in enumerate(model.chain_names):
        dims = [2 + d for d in range(C) if d != c]
        inside = data.time_mask
        expect = marg.sum(dims)[inside]
        torch.testing.assert_close(post.marginals[name][inside], expect, rtol=1e-9, atol=1e-10)
    for m in model.fault_modalities:
        f = post.marginals[f"{m}_fault"]
        inside = data.time_mask
        torch.testing.assert_close(
            f.sum(-1)[inside], torch.ones(int(inside.sum())), rtol=0, atol=1e-12
        )
        torch.testing.assert_close(post.fault_probs[m], f[..., 1] * inside, rtol=0, atol=0)
    for n in range(data.num_sequences):
        L = int(data.lengths[n])
        for c, name in enumerate(model.chain_names):
            assert post.map[name][n, :L].tolist() == best[n, :L, c].tolist()

    causal = mmpgm.infer(model, data, causal=True)
    for c, name in enumerate(model.chain_names):
        dims = [2 + d for d in range(C) if d != c]
        inside = data.time_mask
        torch.testing.assert_close(
            causal.marginals[name][inside], filt.sum(dims)[inside], rtol=1e-9, atol=1e-10
        )


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("obs_dims,K_s,K_m,emission,faults", CASES)
def test_enumerated_program_matches_collapsed(obs_dims, K_s, K_m, emission, faults, T):
    model = random_fault_model(obs_dims, K_s, K_m, emission, faults)
    data = _tiny_data(model, T)
    if K_s > 1 and T > 1:
        lab = torch.full((2, T), -1)
        lab[0, 0] = 1
        data = MultimodalData(dict(data.obs), lengths=data.lengths, labels={"shared": lab})
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    a = elbo.loss(model.model, model.guide, data, program="enumerated")
    b = float(-(model.log_likelihood(data).sum() + model.log_prior()).detach())
    assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), (a, b)


def test_online_filter_equals_causal_infer():
    model = random_fault_model({"a": 2, "b": 1}, 2, 2)
    data = _tiny_data(model, 5)
    post = mmpgm.infer(model, data, causal=True)
    f = HMMFilter(model, num_sequences=2)
    for t in range(5):
        state = f.step({m: data.obs[m][:, t] for m in model.modalities})
        for name in model.chain_names:
            inside = data.time_mask[:, t]
            torch.testing.assert_close(
                state.marginals[name][inside],
                post.marginals[name][inside, t],
                rtol=1e-9,
                atol=1e-12,
            )


def test_sampled_faults_come_from_the_background():
    model = random_fault_model({"a": 1, "b": 1}, 2, 1, seed=3)
    bg = model.fault_backgrounds["a"]
    bg.loc = torch.tensor([100.0])
    bg.scale = torch.tensor([1e-3])
    bg.stuck_weight = torch.tensor(0.0)
    data, latents = model.sample(20, 30, seed=0)
    faulty = latents["a_fault"].bool()
    assert 0 < int(faulty.sum()) < faulty.numel()
    x = data.obs["a"][..., 0]
    assert bool(((x - 100).abs() < 1).eq(faulty).all())  # Cauchy(100, 1e-3) vs emissions near 0
    assert set(latents) == {"shared", "a", "b", "a_fault", "b_fault"}
    bg.stuck_weight = torch.tensor(1.0)  # every faulty frame after the first holds the reading
    data, latents = model.sample(20, 30, seed=0)
    x, faulty = data.obs["a"][..., 0], latents["a_fault"].bool()
    held = faulty[:, 1:]
    assert bool(held.any()) and bool((x[:, 1:][held] == x[:, :-1][held]).all())


def test_save_load_from_params_and_config_roundtrip(tmp_path):
    model = random_fault_model({"a": 2, "b": 1}, 2, 2, sensor_faults=["a"])
    data = _tiny_data(model, 4)
    path = tmp_path / "m.pt"
    model.save(path)
    loaded = mmpgm.load_model(path)
    assert loaded.fault_modalities == ("a",)
    torch.testing.assert_close(
        loaded.log_likelihood(data), model.log_likelihood(data), rtol=0, atol=0
    )
    rebuilt = MultimodalHMM.from_params(model.params)
    assert rebuilt.fault_modalities == ("a",)
    torch.testing.assert_close(
        rebuilt.log_likelihood(data), model.log_likelihood(data), rtol=1e-12, atol=1e-12
    )


def test_without_faults_params_and_chains_are_unchanged():
    model = MultimodalHMM({"a": 2, "b": 1}, 2, 2)
    assert model.chain_names == ("shared", "a", "b")
    p = model.params
    assert p.fault_initial_probs is None and p.fault_backgrounds is None
    data, _ = model.sample(2, 4, seed=0)
    assert mmpgm.infer(model, data).fault_probs is None


@pytest.mark.parametrize(
    "value,error,match",
    [
        (["z"], ValueError, "sensor_faults: unknown modalities"),
        ("a", TypeError, "sensor_faults: expected a bool"),
        ({"a": 1}, TypeError, r"sensor_faults\['a'\]: expected a bool"),
        (["a", "a"], ValueError, "distinct"),
    ],
)
def test_bad_sensor_faults_are_named(value, error, match):
    with pytest.raises(error, match=match):
        MultimodalHMM({"a": 2, "b": 1}, 2, sensor_faults=value)


def test_set_params_refuses_fault_probabilities_outside_the_floors():
    model = random_fault_model({"a": 2, "b": 1}, 2, 1)
    p = model.params
    bad = dict(p.fault_transition_probs)
    bad["a"] = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    with pytest.raises(ValueError, match=r"transition_probs\[0, 1\]: expected a value in"):
        model.set_params(p._replace(fault_transition_probs=bad))
    with pytest.raises(ValueError, match="fault modalities"):
        model.set_params(p._replace(fault_initial_probs={"a": p.fault_initial_probs["a"]}))
    bg = {m: dict(v) for m, v in p.fault_backgrounds.items()}
    bg["b"]["scale"] = -bg["b"]["scale"]
    with pytest.raises(ValueError, match="positive scales"):
        model.set_params(p._replace(fault_backgrounds=bg))


def _truth():
    truth = MultimodalHMM({"a": 2, "b": 2}, 3, 1)
    with torch.no_grad():
        truth.shared_chain.transition_probs = torch.full((3, 3), 0.05).fill_diagonal_(0.9)
        truth.emissions["a"].loc = torch.tensor([[[-3.0, 0.0]], [[0.0, 3.0]], [[3.0, 0.0]]])
        truth.emissions["b"].loc = torch.tensor([[[0.0, -3.0]], [[3.0, 3.0]], [[-3.0, 0.0]]])
        for e in truth.emissions.values():
            e.scale = torch.ones_like(e.scale)
    return truth


def _corrupted_corpus(seed):
    """Two 2-d sensors explaining one shared 3-state chain; sensor ``a`` is replaced by a large
    offset plus noise on a contiguous half of every test sequence."""
    g = torch.Generator().manual_seed(seed)
    truth = _truth()
    train, _ = truth.sample(30, 60, seed=seed)
    test, latents = truth.sample(20, 60, seed=seed + 1)
    corrupt = torch.zeros(20, 60, dtype=torch.bool)
    starts = torch.randint(0, 30, (20,), generator=g)
    for n in range(20):
        corrupt[n, starts[n] : starts[n] + 30] = True
    junk = 8.0 + 2.0 * torch.randn(20, 60, 2, generator=g)
    obs = dict(test.obs)
    obs["a"] = torch.where(corrupt[..., None], junk, obs["a"])
    return train, MultimodalData(obs), latents["shared"], corrupt


def _clean_test_stream(seed):
    """Stream ``a`` of :func:`_corrupted_corpus`'s test split before corruption."""
    truth = _truth()
    truth.sample(30, 60, seed=seed)
    return truth.sample(20, 60, seed=seed + 1)[0].obs["a"]


def _auroc(score, label):
    score, label = np.asarray(score, float), np.asarray(label, bool)
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    n1, n0 = label.sum(), (~label).sum()
    return (ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


def _state_accuracy(true, pred, K):
    """Accuracy under the best relabelling of the K states."""
    best = 0.0
    for perm in itertools.permutations(range(K)):
        best = max(best, float((torch.tensor(perm)[pred] == true).double().mean()))
    return best


def test_faults_are_detected_and_the_shared_state_survives():
    """Seeded: EM on clean training data, test data with sensor ``a`` corrupted on half of
    every sequence. Margins: the corruption is gross (8 sd off), so detection should be near
    perfect (AUROC >= 0.95 is the issue's target); with stream ``b`` alone the 3 states are
    separated by 3 sd, whose Bayes accuracy is about 0.95, so shared-state accuracy on corrupted
    frames >= 0.9 and within 0.08 of the clean frames' (the plain model falls far below)."""
    train, test, true_shared, corrupt = _corrupted_corpus(seed=0)
    model = MultimodalHMM({"a": 2, "b": 2}, 3, 1, sensor_faults=True)
    mmpgm.fit(model, train, method="em", num_steps=60, seed=0)
    post = mmpgm.infer(model, test)
    assert _auroc(post.fault_probs["a"].flatten(), corrupt.flatten()) >= 0.95
    false_alarm = float(post.fault_probs["b"].mean())
    assert false_alarm < 0.02, false_alarm
    pred = post.map["shared"]
    acc_bad = _state_accuracy(true_shared[corrupt], pred[corrupt], 3)
    acc_ok = _state_accuracy(true_shared[~corrupt], pred[~corrupt], 3)
    assert acc_bad >= 0.9 and acc_ok - acc_bad <= 0.08, (acc_ok, acc_bad)

    plain = MultimodalHMM({"a": 2, "b": 2}, 3, 1)
    mmpgm.fit(plain, train, method="em", num_steps=60, seed=0)
    plain_bad = _state_accuracy(
        true_shared[corrupt], mmpgm.infer(plain, test).map["shared"][corrupt], 3
    )
    assert plain_bad < acc_bad - 0.1, (plain_bad, acc_bad)

    # the failed stream's imputation comes from the healthy one
    imp = model.impute(test, "a")
    clean_means = model.emissions["a"].mean().detach()[:, 0]  # (K_s, D)
    err = (imp.mean[corrupt] - clean_means[pred[corrupt]]).norm(dim=-1).median()
    assert float(err) < 0.5, float(err)


def test_svi_keeps_the_fault_chain_inside_its_floors():
    train, _, _, _ = _corrupted_corpus(seed=1)
    model = MultimodalHMM({"a": 2, "b": 2}, 3, 1, sensor_faults=True)
    mmpgm.fit(model, train, method="svi", num_steps=30, lr=0.1, seed=0)
    for fc in model.fault_chains.values():
        assert 1e-3 <= float(fc.fault_onset_prob) <= 0.5
        assert 0.8 <= float(fc.fault_persistence_prob) < 1
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())


def test_a_stuck_sensor_is_detected_and_a_quantized_one_is_not_flagged():
    """Seeded: sensor ``a`` holds its last clean reading on half of every test sequence. A held
    reading is a likely value for some state, so only the held-value part of the background
    can see it: AUROC >= 0.95 (measured 1.0 on seeds 0-2). A stream quantized so coarsely that
    its clean frames repeat gets the held-value part switched off at fit time (else every
    repeat would be flagged)."""
    train, test, true_shared, corrupt = _corrupted_corpus(seed=0)
    obs = dict(test.obs)
    a = _clean_test_stream(seed=0).clone()
    for n in range(a.shape[0]):
        idx = torch.nonzero(corrupt[n])[:, 0]
        start = int(idx[0])
        hold = a[n, start - 1].clone() if start > 0 else torch.zeros(2)
        a[n, idx] = hold
    obs["a"] = a
    model = MultimodalHMM({"a": 2, "b": 2}, 3, 1, sensor_faults=True)
    mmpgm.fit(model, train, method="em", num_steps=60, seed=0)
    assert float(model.fault_backgrounds["a"].stuck_weight) > 0
    post = mmpgm.infer(model, MultimodalData(obs))
    auroc = _auroc(post.fault_probs["a"].flatten(), corrupt.flatten())
    assert auroc >= 0.95, auroc

    coarse = MultimodalData({m: torch.round(v) for m, v in train.obs.items()})
    quantized = MultimodalHMM({"a": 2, "b": 2}, 3, 1, sensor_faults=True)
    quantized.init_from_data(coarse)
    assert float(quantized.fault_backgrounds["a"].stuck_weight) == 0.0


def test_rescaling_the_units_moves_the_likelihood_by_the_jacobian_only():
    """The SVI units map (mmpgm.models.hmm.units) carries the fault backgrounds, both parts."""
    from mmpgm.models.hmm.units import rescale_observations

    model = random_fault_model({"a": 2, "b": 1}, 2, 2)
    data = _tiny_data(model, 4)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["a"][1, 2] = obs["a"][1, 1]  # a held reading, so the held-value part matters
    data = MultimodalData(obs, lengths=data.lengths)
    before = model.log_likelihood(data).detach()
    shift = {"a": torch.tensor([1.0, -2.0]), "b": torch.tensor([0.5])}
    scale = {"a": torch.tensor([1e-3, 10.0]), "b": torch.tensor([1e4])}
    rescale_observations(model, shift, scale)
    moved = MultimodalData({m: (obs[m] - shift[m]) / scale[m] for m in obs}, lengths=data.lengths)
    jac = sum((data.mask[m].double() * scale[m].log().sum()).sum(-1) for m in model.modalities)
    torch.testing.assert_close(
        model.log_likelihood(moved).detach(), before + jac, rtol=1e-10, atol=1e-9
    )
