"""Held-out model comparison, restart agreement of MAP paths, posterior entropy, PSIS-LOO with
its Pareto-k warning (mmpgm.diagnostics)."""

import math
import warnings

import numpy as np
import pytest
import torch

import mmpgm
from mmpgm.datasets import demo_hmm
from mmpgm.diagnostics import (
    ParetoKWarning,
    held_out_comparison,
    loo,
    map_path_agreement,
    permute_params,
    posterior_entropy,
    state_accuracy,
)
from mmpgm.inference.laplace import laplace_log_likelihood_draws


@pytest.fixture(scope="module")
def fitted():
    """Models with 2, 3, 4 shared states fitted to data of the 3-state ``demo_hmm``; held-out
    sequences of the same source."""
    truth = demo_hmm(seed=0)
    train, _ = truth.sample(30, 40, seed=0)
    test, _ = truth.sample(12, 40, seed=1)
    models = {}
    for K in (2, 3, 4):
        m = mmpgm.MultimodalHMM(train.obs_dims, num_shared_states=K, num_private_states=2)
        mmpgm.fit(m.double(), train, method="em", num_steps=40, seed=0, progress=False)
        models[f"K={K}"] = m
    return truth, train, test, models


def test_held_out_comparison_is_the_held_out_log_likelihood_and_ranks_the_true_size_first(fitted):
    _, _, test, models = fitted
    c = held_out_comparison(models, test)
    # plug-in: per-sequence values are the models' own log-likelihoods
    for name, model in models.items():
        with torch.no_grad():
            ll = model.log_likelihood(test).double()
        torch.testing.assert_close(c.per_sequence[name], ll, rtol=1e-12, atol=1e-9)
        assert c.elpd[name] == pytest.approx(float(ll.sum()), rel=1e-12)
    frames = sum(int(m.sum()) for m in test.mask.values())
    assert c.elpd_per_frame["K=3"] == pytest.approx(c.elpd["K=3"] / frames, rel=1e-12)
    # the generating size wins; two states are far worse, by many standard errors
    assert c.names[0] == "K=3"
    assert c.difference["K=3"] == 0.0 and c.difference_se["K=3"] == 0.0
    assert c.difference["K=2"] > 5 * c.difference_se["K=2"]
    # the standard error of the paired difference, by hand
    d = c.per_sequence["K=3"] - c.per_sequence["K=4"]
    se = float(np.std(d.numpy(), ddof=1) * math.sqrt(len(d)))
    assert c.difference_se["K=4"] == pytest.approx(se, rel=1e-10)
    assert c.names[0] in c.table().splitlines()[1]


def test_held_out_comparison_with_parameter_draws_is_the_log_mean_of_the_draws(fitted):
    _, _, test, models = fitted
    c = held_out_comparison({"K=3": models["K=3"]}, test, num_param_samples=8, seed=3)
    draws = laplace_log_likelihood_draws(models["K=3"], test, 8, seed=3).double()
    expected = torch.logsumexp(draws, 0) - math.log(8)
    torch.testing.assert_close(c.per_sequence["K=3"], expected, rtol=1e-12, atol=1e-9)
    # Jensen: the predictive density averages the draws, never above the best draw
    assert bool((c.per_sequence["K=3"] <= draws.max(0).values + 1e-9).all())


def test_held_out_comparison_rejects_bad_input(fitted):
    _, _, test, models = fitted
    with pytest.raises(TypeError, match="models"):
        held_out_comparison([models["K=3"]], test)
    with pytest.raises(ValueError, match="num_param_samples"):
        held_out_comparison(models, test, num_param_samples=-1)


def test_map_path_agreement_is_label_free_and_sees_a_different_segmentation(fitted):
    _, train, test, models = fitted
    model = models["K=3"]
    relabelled = mmpgm.MultimodalHMM(train.obs_dims, num_shared_states=3, num_private_states=2)
    relabelled = relabelled.double()
    perm = (np.array([2, 0, 1]), {m: np.array([1, 0]) for m in train.obs_dims})
    relabelled.set_params(permute_params(model.params, *perm))
    same = map_path_agreement([model, relabelled], test)
    assert same.pairwise.shape == (2, 2)
    assert same.minimum == pytest.approx(1.0) and same.mean == pytest.approx(1.0)
    # an unfitted 3-state model (its construction-time parameters) segments differently
    rough = mmpgm.MultimodalHMM(train.obs_dims, num_shared_states=3, num_private_states=2)
    rough = rough.double()
    mixed = map_path_agreement([model, relabelled, rough], test)
    np.testing.assert_allclose(mixed.pairwise, mixed.pairwise.T, rtol=0, atol=0)
    a = mmpgm.infer(model, test).map["shared"]
    b = mmpgm.infer(rough, test).map["shared"]
    by_hand = state_accuracy(a, b, lengths=test.lengths).accuracy
    assert by_hand < 0.99  # the rough fit does segment differently (else the test is void)
    assert mixed.pairwise[0, 2] == pytest.approx(by_hand, abs=1e-12)
    assert mixed.minimum == pytest.approx(min(by_hand, mixed.pairwise[1, 2]), abs=1e-12)
    assert mixed.mean == pytest.approx(np.mean([1.0, by_hand, mixed.pairwise[1, 2]]), abs=1e-12)
    with pytest.raises(ValueError, match="chain"):
        map_path_agreement([model], test, chain="nope")
    with pytest.raises(ValueError, match="models"):
        map_path_agreement([], test)


def test_posterior_entropy_by_hand_on_ragged_sequences(fitted):
    truth, _, _, _ = fitted
    data, _ = truth.sample(3, 12, seed=4)
    data = mmpgm.MultimodalData(
        {m: [x[: n] for x, n in zip(v, (12, 5, 1), strict=True)] for m, v in data.obs.items()}
    )
    post = mmpgm.infer(truth, data, map_path=False)
    h = posterior_entropy(post)
    assert set(h) == set(post.marginals)
    for name, p in post.marginals.items():
        for n, length in enumerate((12, 5, 1)):
            q = p[n, :length].double()
            by_hand = float(-(q * q.clamp_min(1e-300).log()).sum(-1).mean())
            assert float(h[name][n]) == pytest.approx(by_hand, abs=1e-12)
            assert 0.0 <= float(h[name][n]) <= math.log(p.shape[-1]) + 1e-12
    with pytest.raises(TypeError, match="posterior"):
        posterior_entropy(object())


def test_loo_surfaces_bad_pareto_k_and_explains_a_missing_group(fitted):
    _, train, _, models = fitted
    post = mmpgm.infer(models["K=3"], train, num_param_samples=30, seed=0, map_path=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = loo(post)
    assert np.isfinite(out.elpd_loo)
    k = np.asarray(out.pareto_k)
    bad = [w for w in caught if issubclass(w.category, ParetoKWarning)]
    threshold = float(out.good_k)
    # 40-frame training sequences under 30 draws: many k are bad (the tutorial's 100-frame
    # sequences had 27-52 of 100), so the warning must fire and count them exactly
    assert len(bad) == 1
    assert f"for {int((k > threshold).sum())} of {k.size} sequences" in str(bad[0].message)
    # ArviZ's own generic warning is replaced by the one above
    assert not [w for w in caught if "Estimated shape parameter" in str(w.message)]
    with pytest.raises(ValueError, match="num_param_samples"):
        loo(mmpgm.infer(models["K=3"], train, map_path=False))


@pytest.mark.parametrize("family", ["hmm", "lds"])
def test_laplace_parameter_draws_fill_the_posterior_group(family, fitted):
    from mmpgm.inference.laplace import flatten_params, parameter_draws

    truth, train, _, models = fitted
    data = train[:6]
    if family == "hmm":
        model = models["K=3"]
    else:
        model = mmpgm.MultimodalLDS(train.obs_dims, shared_dim=2, private_dim=1).double()
        mmpgm.fit(model, data, method="em", num_steps=3, patience=0, seed=0, progress=False)
    post = mmpgm.infer(model, data, num_param_samples=5, seed=2, num_samples=3)
    expected = [flatten_params(model.params) for _ in parameter_draws(model, data, 5, seed=2)]
    assert set(post.parameter_samples) == set(expected[0])
    for name, value in post.parameter_samples.items():
        torch.testing.assert_close(
            value, torch.stack([e[name] for e in expected]), rtol=0, atol=0
        )
    idata = post.to_arviz()
    assert set(idata.posterior.data_vars) == set(post.parameter_samples)
    assert idata.posterior.sizes["draw"] == 5  # parameter draws, not the 3 path draws
    assert idata.log_likelihood["sequence_log_likelihood"].shape == (1, 5, 6)
    summaries = {"hmm": "shared_occupancy", "lds": "state_time_mean"}[family]
    assert summaries in idata.latent_states  # path summaries move next to the paths
    # without parameter draws the posterior group holds the path summaries, as before
    plain = mmpgm.infer(model, data, num_samples=3, seed=2)
    assert plain.parameter_samples is None
    assert summaries in plain.to_arviz().posterior
