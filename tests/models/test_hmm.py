"""MultimodalHMM: enumerated Pyro program vs collapsed ops, hmmlearn, imputation, I/O, errors."""

import math

import arviz as az
import numpy as np
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import mmpgm
from mmpgm import MultimodalData, MultimodalHMM
from mmpgm.observations import CategoricalObservation

pytestmark = pytest.mark.usefixtures("float64")


def random_model(obs_dims, K_s, K_m, emission="diag", seed=0):
    torch.manual_seed(seed)
    model = MultimodalHMM(obs_dims, K_s, K_m, emission=emission)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for chain in model._chains():
            K = chain.num_states
            chain.initial_probs = torch.rand(K, generator=g).add(0.2).softmax(0)
            chain.transition_probs = (torch.rand(K, K, generator=g) * 3).softmax(-1)
        for _m, e in model.emissions.items():
            if hasattr(e, "loc"):
                e.loc = 2 * torch.randn(e.loc.shape, generator=g)
            if hasattr(e, "scale"):
                e.scale = torch.rand(e.scale.shape, generator=g) + 0.5
            if hasattr(e, "probs"):
                e.probs = torch.rand(e.probs.shape, generator=g).add(0.1).softmax(-1)
    return model


def enum_loss(model, data):
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    return elbo.loss(model.model, model.guide, data, program="enumerated")


def collapsed_loss(model, data):
    return float(-(model.log_likelihood(data).sum() + model.log_prior()).detach())


CASES = [
    # obs_dims, K_s, K_m, emission
    ({"a": 2, "b": 3}, 2, 2, "diag"),
    ({"a": 2}, 3, 1, "diag"),  # plain HMM
    ({"a": 2, "b": 2}, 1, 2, "diag"),  # independent HMMs
    ({"a": 2, "b": 3}, 2, {"a": 2, "b": 3}, {"a": "full", "b": "diag"}),
    ({"a": 2, "c": 3}, 2, 2, {"a": "diag", "c": "categorical"}),
]


@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("obs_dims,K_s,K_m,emission", CASES)
def test_enumerated_program_matches_collapsed_likelihood(obs_dims, K_s, K_m, emission, T):
    model = random_model(obs_dims, K_s, K_m, emission)
    data, _ = model.sample(3, T, seed=1)
    obs = dict(data.obs)
    if T > 2:
        first = next(iter(obs))
        obs[first] = obs[first].clone()
        obs[first][0, 1:3] = math.nan  # one modality hidden for a stretch
    lengths = [T, max(1, T - 2), T]
    labels = None
    if K_s > 1 and T > 1:
        lab = torch.full((3, T), -1)
        lab[1, 0] = 1
        labels = {"shared": lab}
    data = MultimodalData(obs, lengths=lengths, labels=labels)
    a, b = enum_loss(model, data), collapsed_loss(model, data)
    assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6), (a, b)


def test_clamped_labels_restrict_the_posterior():
    model = random_model({"a": 2, "b": 2}, 3, 2)
    data, _ = model.sample(2, 6, seed=3)
    lab = torch.full((2, 6), -1)
    lab[0, 2] = 2
    clamped = MultimodalData(data.obs, labels={"shared": lab})
    post = mmpgm.infer(model, clamped)
    torch.testing.assert_close(
        post.marginals["shared"][0, 2], torch.tensor([0.0, 0.0, 1.0]), rtol=0, atol=1e-12
    )
    assert post.map["shared"][0, 2] == 2
    assert model.log_likelihood(clamped)[0] < model.log_likelihood(data)[0]


def test_plain_hmm_matches_hmmlearn():
    hmmlearn = pytest.importorskip("hmmlearn.hmm")
    model = random_model({"a": 3}, 4, 1)
    data, _ = model.sample(3, 30, seed=2)
    data = MultimodalData(data.obs, lengths=[30, 17, 25])
    ref = hmmlearn.GaussianHMM(n_components=4, covariance_type="diag", implementation="log")
    ref.startprob_ = model.shared_chain.initial_probs.detach().numpy()
    ref.transmat_ = model.shared_chain.transition_probs.detach().numpy()
    ref.means_ = model.emissions["a"].loc.detach()[:, 0].numpy()
    ref.covars_ = (model.emissions["a"].scale.detach()[:, 0] ** 2).numpy()
    post = mmpgm.infer(model, data)
    for n in range(3):
        L = int(data.lengths[n])
        X = data.obs["a"][n, :L].numpy()
        ll, gamma = ref.score_samples(X)
        np.testing.assert_allclose(post.log_likelihood[n].item(), ll, rtol=1e-8)
        np.testing.assert_allclose(
            post.marginals["shared"][n, :L].numpy(), gamma, rtol=1e-8, atol=1e-12
        )
        _, vit = ref.decode(X, algorithm="viterbi")
        assert (post.map["shared"][n, :L].numpy() == vit).all()


def test_causal_marginals_ignore_the_future():
    model = random_model({"a": 2, "b": 2}, 2, 2)
    data, _ = model.sample(2, 8, seed=4)
    full = mmpgm.infer(model, data, causal=True)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["a"][:, 5:] += 10.0
    changed = mmpgm.infer(model, MultimodalData(obs), causal=True)
    for name in model.chain_names:
        torch.testing.assert_close(
            full.marginals[name][:, :5], changed.marginals[name][:, :5], rtol=1e-12, atol=1e-12
        )
        assert not torch.allclose(full.marginals[name][:, 5:], changed.marginals[name][:, 5:])


def test_impute_is_the_mixture_of_state_means():
    model = random_model({"a": 2, "b": 3}, 3, 2)
    data, _ = model.sample(2, 5, seed=5)
    imp = model.impute(data, "b")
    # brute force: posterior of (s, p_b) given only modality a, via a model without b's evidence
    hidden = MultimodalData({"a": data.obs["a"], "b": torch.full_like(data.obs["b"], math.nan)})
    post = mmpgm.infer(model, hidden)
    w_s = post.marginals["shared"]
    torch.testing.assert_close(imp.state_weights.sum(-1), w_s, rtol=1e-10, atol=1e-12)
    mean = torch.einsum("ntij,ijd->ntd", imp.state_weights, model.emissions["b"].loc.detach())
    torch.testing.assert_close(imp.mean, mean)
    # the observed values of b do not matter
    obs = dict(data.obs)
    obs["b"] = obs["b"] + 5
    torch.testing.assert_close(model.impute(MultimodalData(obs), "b").mean, imp.mean)
    assert (torch.linalg.eigvalsh(imp.covariance) > 0).all()


def test_sample_posterior_shapes_and_arviz():
    model = random_model({"a": 2, "b": 1}, 2, 3)
    data, latents = model.sample(4, 6, seed=0)
    assert latents["shared"].shape == (4, 6) and latents["b"].shape == (4, 6)
    post = mmpgm.infer(model, data, num_samples=7, seed=1)
    assert post.samples["a"].shape == (7, 4, 6)
    assert post.map["shared"].shape == (4, 6)
    idata = post.to_arviz()
    # full paths in their own group; az.summary sees per-sequence occupancies only
    assert idata.latent_states["shared_state"].dims == ("chain", "draw", "sequence", "time")
    assert idata.latent_states["shared_state"].shape == (1, 7, 4, 6)
    occ = idata.posterior["shared_occupancy"]
    assert occ.dims == ("chain", "draw", "sequence", "shared_value") and occ.shape == (1, 7, 4, 2)
    np.testing.assert_allclose(occ.values.sum(-1), 1.0, rtol=0, atol=1e-12)
    z = post.samples["shared"][3, 2].numpy()
    np.testing.assert_allclose(occ.values[0, 3, 2], np.bincount(z, minlength=2) / 6, atol=1e-12)
    assert "log_likelihood" not in idata.groups()  # a point estimate is not pointwise
    assert len(az.summary(idata)) == 4 * sum(model.chain_sizes)  # sequences x state values


def test_save_load_and_from_params_roundtrip(tmp_path):
    model = random_model({"a": 2, "c": 3}, 2, 2, {"a": "full", "c": "categorical"})
    data, _ = model.sample(3, 5, seed=0)
    path = tmp_path / "m.pt"
    model.save(path)
    loaded = mmpgm.load_model(path)
    torch.testing.assert_close(loaded.log_likelihood(data), model.log_likelihood(data))
    rebuilt = MultimodalHMM.from_params(model.params)
    torch.testing.assert_close(rebuilt.log_likelihood(data), model.log_likelihood(data))
    assert isinstance(rebuilt.emissions["c"], CategoricalObservation)


def test_float32_follows_the_model():
    model = random_model({"a": 2}, 2, 1).float()
    data, _ = model.sample(2, 5, seed=0)
    assert model.log_likelihood(data).dtype == torch.float32
    assert (
        mmpgm.infer(model, data.to(dtype=torch.float64)).marginals["shared"].dtype == torch.float32
    )


def test_bad_model_input_raises():
    model = random_model({"a": 2, "b": 3}, 2, 2)
    data, _ = model.sample(2, 4, seed=0)
    with pytest.raises(ValueError, match="unknown modality 'c'"):
        model.log_likelihood(MultimodalData({**data.obs, "c": torch.zeros(2, 4, 1)}))
    with pytest.raises(ValueError, match="lacks"):
        model.log_likelihood(MultimodalData({"a": data.obs["a"]}))
    with pytest.raises(ValueError, match=r"obs\['a'\]: the model expects obs_dim 2, got 3"):
        model.log_likelihood(MultimodalData({"a": torch.zeros(2, 4, 3), "b": data.obs["b"]}))
    with pytest.raises(ValueError, match="labels\\['shared'\\]: expected -1"):
        model.log_likelihood(MultimodalData(data.obs, labels={"shared": torch.full((2, 4), 5)}))
    with pytest.raises(ValueError, match="modality: unknown modality"):
        model.impute(data, "z")
    with pytest.raises(ValueError, match="num_private_states: unknown modalities"):
        MultimodalHMM({"a": 2}, 2, {"a": 2, "q": 1})
    with pytest.raises(ValueError, match="emission: unknown observation model"):
        MultimodalHMM({"a": 2}, 2, 1, emission="poisson")
    with pytest.raises(ValueError, match="'shared' is reserved"):
        MultimodalHMM({"shared": 2}, 2)
    with pytest.raises(ValueError, match="num_shared_states: expected a positive int"):
        MultimodalHMM({"a": 2}, 0)
    params = model.params
    params.shared_transition_probs[0, 0] = math.nan
    with pytest.raises(ValueError, match="params.shared_transition_probs: expected finite"):
        model.set_params(params)
    with pytest.raises(TypeError, match="data: expected a MultimodalData"):
        mmpgm.fit(model, {"a": 1})
    with pytest.raises(ValueError, match="method: expected one of"):
        mmpgm.fit(model, data, method="nuts")


def test_fit_is_deterministic_and_decreases_the_loss(tmp_path):
    truth = random_model({"a": 2, "b": 2}, 2, 2)
    data, _ = truth.sample(10, 20, seed=0)
    runs = []
    for _ in range(2):
        model = MultimodalHMM({"a": 2, "b": 2}, 2, 2)
        res = mmpgm.fit(model, data, num_steps=30, lr=0.05, seed=3, progress=False)
        runs.append((res, model))
    assert np.array_equal(runs[0][0].losses, runs[1][0].losses)
    assert runs[0][0].losses[-1] < runs[0][0].losses[0]
    em = MultimodalHMM({"a": 2, "b": 2}, 2, 2)
    res = mmpgm.fit(em, data, method="em", num_steps=30, progress=False)
    assert np.all(np.diff(res.losses) <= 1e-9), "EM must not decrease the log joint"


def test_checkpoint_resume_equals_uninterrupted(tmp_path):
    truth = random_model({"a": 2}, 2, 1)
    data, _ = truth.sample(6, 10, seed=0)
    straight = MultimodalHMM({"a": 2}, 2, 1)
    r1 = mmpgm.fit(
        straight, data, num_steps=20, seed=1, patience=None, batch_size=3, progress=False
    )
    ck = tmp_path / "ck.pt"
    resumed = MultimodalHMM({"a": 2}, 2, 1)
    mmpgm.fit(resumed, data, num_steps=10, seed=1, batch_size=3, checkpoint=str(ck), progress=False)
    r2 = mmpgm.fit(
        resumed, data, num_steps=20, seed=1, batch_size=3, checkpoint=str(ck), progress=False
    )
    assert r2.start_step == 10
    np.testing.assert_allclose(r2.losses, r1.losses, rtol=1e-10)
    torch.testing.assert_close(resumed.log_likelihood(data), straight.log_likelihood(data))


def test_enumerated_training_path_runs():
    truth = random_model({"a": 2}, 2, 2)
    data, _ = truth.sample(4, 5, seed=0)
    model = MultimodalHMM({"a": 2}, 2, 2)
    res = mmpgm.fit(model, data, num_steps=3, program="enumerated", progress=False)
    assert res.num_steps == 3 and np.isfinite(res.losses).all()


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda p: p._replace(shared_initial_probs=p.shared_initial_probs * 1.5),
            r"params.shared_initial_probs: expected .*",
        ),
        (
            lambda p: p._replace(
                shared_transition_probs=p.shared_transition_probs.flip(-1) * 0
                + torch.tensor([[0.7, 0.2], [0.5, 0.5]], dtype=torch.float64)
            ),
            r"params.shared_transition_probs: expected rows summing to 1 .* row \(0,\)",
        ),
        (
            lambda p: p._replace(
                private_initial_probs={"a": torch.tensor([1.2, -0.2], dtype=torch.float64)}
            ),
            r"params.private_initial_probs\['a'\]: expected finite probabilities in \[0, 1\]",
        ),
        (
            lambda p: p._replace(
                emissions={"a": {**p.emissions["a"], "scale": -p.emissions["a"]["scale"]}}
            ),
            r"params.emissions\['a'\]\['scale'\]: expected positive scales",
        ),
    ],
)
def test_set_params_refuses_invalid_parameters_by_name(edit, match):
    model = MultimodalHMM({"a": 2}, num_shared_states=2, num_private_states=2).double()
    before = model.params
    with pytest.raises(ValueError, match=match):
        model.set_params(edit(before))
    torch.testing.assert_close(
        model.params.shared_initial_probs, before.shared_initial_probs, rtol=0, atol=0
    )


def test_from_params_keeps_the_emission_kind():
    model = MultimodalHMM({"a": 2}, num_shared_states=2, emission="full").double()
    again = MultimodalHMM.from_params(model.params)
    assert again.params.emission_kinds == {"a": "full"}
    bad_tril = dict(model.params.emissions["a"])
    bad_tril["scale_tril"] = -bad_tril["scale_tril"]
    with pytest.raises(ValueError, match=r"scale_tril'\]: expected lower-triangular Cholesky"):
        model.set_params(model.params._replace(emissions={"a": bad_tril}))
