"""One result vocabulary across model families: the fields of every result type, and the old
names that still read (with a FutureWarning) for one release."""

import math
import warnings

import pytest
import torch

import mmpgm
from mmpgm.datasets import demo_hmm
from mmpgm.models.lds import MultimodalLDS
from mmpgm.models.mvrnn import MVRNN
from mmpgm.online import FilterState, HMMFilter, LDSFilter, LDSFilterState
from mmpgm.results import (
    Imputation,
    LDSImputation,
    LDSPosterior,
    MixturePosterior,
    MVRNNImputation,
    MVRNNPosterior,
    Posterior,
)

pytestmark = pytest.mark.usefixtures("float64")

# the vocabulary, family x fields (README "Result types" shows the same table)
FIELDS = {
    Posterior: (
        "marginals", "map", "samples", "log_likelihood", "lengths", "causal",
        "pointwise_log_likelihood", "fault_probs", "parameter_samples",
    ),
    Imputation: ("mean", "covariance", "state_weights"),
    LDSPosterior: (
        "mean", "covariance", "state_mean", "state_covariance", "cross_covariance", "map",
        "samples", "log_likelihood", "lengths", "causal", "block_slices",
        "pointwise_log_likelihood", "fault_probs", "parameter_samples",
    ),
    LDSImputation: ("mean", "covariance", "state_mean", "state_covariance"),
    MixturePosterior: (
        "predictive", "gate_weights", "responsibilities", "expert_predictions", "map",
        "samples", "log_likelihood", "lengths", "causal", "modalities", "head",
    ),
    MVRNNPosterior: (
        "mean", "covariance", "samples", "elbo", "reconstruction", "kl", "log_likelihood",
        "lengths", "mask", "causal", "pointwise_log_likelihood",
    ),
    MVRNNImputation: ("mean", "covariance", "samples"),
    FilterState: (
        "step", "marginals", "predicted_marginals", "predicted", "predicted_covariance",
        "log_likelihood", "log_increment",
    ),
    LDSFilterState: (
        "step", "mean", "covariance", "state_mean", "state_covariance", "predicted_state_mean",
        "predicted_state_covariance", "predicted", "predicted_covariance", "log_likelihood",
        "log_increment", "fault_probs",
    ),
}  # fmt: skip

# old name -> new name, per type (the deprecation shims)
OLD = {
    LDSPosterior: {
        "means": "mean", "covs": "covariance", "state_cov": "state_covariance",
        "cross_covs": "cross_covariance",
    },
    LDSImputation: {"state_cov": "state_covariance"},
    MVRNNPosterior: {"scale": "covariance"},
    LDSFilterState: {
        "means": "mean", "covs": "covariance", "cov": "state_covariance",
        "predicted_mean": "predicted_state_mean", "predicted_cov": "predicted_state_covariance",
        "predicted_obs": "predicted",
    },
}  # fmt: skip

RETIRED = {"means", "covs", "cov", "state_cov", "cross_covs", "scale", "variance"}
RETIRED |= {"predicted_obs", "predicted_mean", "predicted_cov", "covariances", "var"}


@pytest.mark.parametrize("cls", list(FIELDS), ids=lambda c: c.__name__)
def test_fields_follow_the_vocabulary(cls):
    assert cls._fields == FIELDS[cls]
    assert not RETIRED & set(cls._fields)
    assert getattr(cls, "_deprecated_fields", {}) == OLD.get(cls, {})


def test_same_names_for_the_same_things_across_families():
    imputations = (Imputation, LDSImputation, MVRNNImputation)
    assert all(c._fields[:2] == ("mean", "covariance") for c in imputations)
    assert {"mean", "covariance"} <= set(LDSPosterior._fields) & set(MVRNNPosterior._fields)
    shared = {"step", "predicted", "predicted_covariance", "log_likelihood", "log_increment"}
    assert shared <= set(FilterState._fields) & set(LDSFilterState._fields)
    assert {"state_mean", "state_covariance"} <= set(LDSImputation._fields)
    assert {"state_mean", "state_covariance"} <= set(LDSFilterState._fields)
    discrete = (Posterior, MixturePosterior)
    for name in ("map", "samples", "log_likelihood", "lengths", "causal"):
        assert all(name in c._fields for c in discrete + (LDSPosterior,)), name


def _old_reads(result, old, new):
    cls = type(result).__name__
    with pytest.warns(FutureWarning, match=rf"^{cls}\.{old} is deprecated; use \.{new}$"):
        return getattr(result, old)


def _same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _same(a[k], b[k])
    elif isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _same(x, y)
    elif a is None:
        assert b is None
    else:
        assert torch.equal(a, b)


def _lds():
    model = MultimodalLDS({"a": 2, "b": 1}, shared_dim=1, private_dim={"a": 1, "b": 0})
    data, _ = model.sample(2, 5, seed=0)
    return model, data


def test_lds_old_names_warn_and_equal_the_new_fields():
    model, data = _lds()
    post = mmpgm.infer(model, data, num_samples=2, seed=0)
    for old, new in OLD[LDSPosterior].items():
        _same(_old_reads(post, old, new), getattr(post, new))
    assert post.cross_covariance.shape == (2, 4, 2, 2)
    imp = model.impute(data, "b")
    _same(_old_reads(imp, "state_cov", "state_covariance"), imp.state_covariance)
    f = LDSFilter(model, num_sequences=2)
    state = f.step({m: data.obs[m][:, 0] for m in model.modalities})
    for old, new in OLD[LDSFilterState].items():
        value = _old_reads(state, old, new)
        if old == "predicted_obs":  # modality -> (mean, covariance), as before
            expect = {m: f.predict_observation(m) for m in model.modalities}
            _same(value, expect)
            _same(value, {m: (state.predicted[m], state.predicted_covariance[m]) for m in value})
        else:
            _same(value, getattr(state, new))
    # the new names only: construction, _replace and _asdict take no old name
    assert not RETIRED & set(post._asdict()) and not RETIRED & set(state._asdict())
    with pytest.raises(ValueError, match="means"):
        post._replace(means={})
    with pytest.raises(AttributeError):
        post.covs = {}  # read-only


def test_mvrnn_covariance_is_the_diagonal_of_the_variance_and_scale_its_root():
    torch.manual_seed(0)
    model = MVRNN({"a": 2, "b": 1}, hidden_dim=4, shared_dim=2, private_dim=1).double()
    data = mmpgm.MultimodalData(
        {"a": torch.randn(2, 4, 2), "b": torch.randn(2, 4, 1)}, lengths=[4, 3]
    )
    post = model.posterior(data, seed=0)
    # the guide's scale along the noise-free path, read at the source
    with torch.no_grad():
        res, _ = model.elbo_terms(data, noise="zero")
    for b, cov in post.covariance.items():
        sd = res.q_scale[b].transpose(0, 1)
        torch.testing.assert_close(cov, torch.diag_embed(sd**2), rtol=0, atol=0)
        torch.testing.assert_close(post.variance[b], sd**2, rtol=0, atol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # variance is the vocabulary's own (no warning)
        assert set(post.variance) == set(post.covariance)
    scale = _old_reads(post, "scale", "covariance")
    for b in post.covariance:
        torch.testing.assert_close(scale[b], post.variance[b].sqrt(), rtol=0, atol=0)
    idata = post.to_arviz()
    for b in post.covariance:
        assert f"z_{b}_scale" not in idata.constant_data
        got = torch.as_tensor(idata.constant_data[f"z_{b}_sd"].values)
        torch.testing.assert_close(got, post.variance[b].sqrt(), rtol=0, atol=0)
    imp = model.impute(data, "a", num_samples=3, seed=0)
    assert imp.covariance.shape == (2, 4, 2, 2)
    torch.testing.assert_close(imp.covariance, torch.diag_embed(imp.variance), rtol=0, atol=0)
    # the law of total variance over the draws: the decoder's variance plus the means' spread
    assert bool((imp.variance >= imp.samples.var(0, unbiased=False)).all())


def test_hmm_filter_state_shares_the_lds_names():
    model = demo_hmm(seed=0)
    data, _ = model.sample(2, 3, seed=1)
    f = HMMFilter(model, num_sequences=2)
    for t in range(3):
        state = f.step({m: data.obs[m][:, t] for m in model.modalities})
    assert state.step == 3 and set(state.predicted) == set(model.modalities)
    assert set(state.predicted_marginals) == set(model.chain_names)
    for m, d in model.data_dims.items():
        assert state.predicted[m].shape == (2, d)
        assert state.predicted_covariance[m].shape == (2, d, d)
    torch.testing.assert_close(state.log_likelihood, model.log_likelihood(data), rtol=1e-10, atol=0)


def _dense_predicted_observation(model, obs):
    """Brute-force oracle: the product-space forward filter over every joint state
    ``(s, p_1, .., p_M)`` with explicit Kronecker transitions and diagonal-Gaussian densities
    written out here, then the one-step prediction and its observation moments per modality."""
    chains = [model.shared_chain] + [model.private_chains[m] for m in model.modalities]
    sizes = [c.initial_probs.numel() for c in chains]
    init, trans = torch.ones(1), torch.ones(1, 1)
    for c in chains:
        init = torch.kron(init, c.initial_probs.detach())
        trans = torch.kron(trans, c.transition_probs.detach())
    N, T = next(iter(obs.values())).shape[:2]
    alpha = None
    for t in range(T):
        like = torch.ones((N,) + tuple(sizes))
        for i, m in enumerate(model.modalities):
            e = model.emissions[m]
            x = obs[m][:, t]  # (N, D); a NaN row is missing
            dens = torch.distributions.Normal(e.loc.detach(), e.scale.detach())
            missing = torch.isnan(x).any(-1)[:, None, None]
            x = torch.nan_to_num(x)[:, None, None, :]
            lp = dens.log_prob(x).sum(-1).exp()  # (N, K_s, K_m)
            lp = torch.where(missing, torch.ones_like(lp), lp)
            shape = [N, sizes[0]] + [1] * len(model.modalities)
            shape[2 + i] = sizes[1 + i]
            like = like * lp.reshape(shape)
        prior = init.expand(N, -1) if alpha is None else alpha @ trans
        alpha = prior * like.reshape(N, -1)
        alpha = alpha / alpha.sum(-1, keepdim=True)
    pred = (alpha @ trans).reshape((N,) + tuple(sizes))
    out = {}
    for i, m in enumerate(model.modalities):
        keep = (1, 2 + i)
        w = pred.sum([d for d in range(1, pred.dim()) if d not in keep])  # (N, K_s, K_m)
        e = model.emissions[m]
        mu, var = e.loc.detach(), e.scale.detach() ** 2  # (K_s, K_m, D)
        mean = torch.einsum("nsp,spd->nd", w, mu)
        second = torch.einsum(
            "nsp,spde->nde", w, torch.diag_embed(var) + mu[..., :, None] * mu[..., None, :]
        )
        out[m] = (mean, second - mean[:, :, None] * mean[:, None, :])
    return out


@pytest.mark.parametrize("T", [1, 3])
def test_hmm_filter_predicted_observation_equals_the_dense_oracle(T):
    model = demo_hmm(seed=0)
    data, _ = model.sample(2, T, seed=2)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["video"][0, 0] = math.nan  # one stream misses video at the first frame
    f = HMMFilter(model, num_sequences=2)
    for t in range(T):
        state = f.step({m: obs[m][:, t] for m in model.modalities})
    oracle = _dense_predicted_observation(model, obs)
    for m, (mean, cov) in oracle.items():
        torch.testing.assert_close(state.predicted[m], mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(state.predicted_covariance[m], cov, rtol=1e-10, atol=1e-12)


def test_readme_result_table_lists_every_field():
    """README "Result types": each type's row names all of its fields (docs match the code)."""
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[2] / "README.md"
    if not readme.exists():  # an installed package without the repository around it
        pytest.skip("README.md not found next to the tests")
    rows = {}
    for line in readme.read_text().splitlines():
        m = re.match(r"\| `(\w+)` \(", line)
        if m:
            rows[m.group(1)] = set(re.findall(r"`\.?(\w+)`", line))
    for cls in FIELDS:
        assert cls.__name__ in rows, cls.__name__
        missing = set(cls._fields) - rows[cls.__name__]
        assert not missing, (cls.__name__, sorted(missing))
        assert not (RETIRED - {"variance"}) & rows[cls.__name__], cls.__name__
