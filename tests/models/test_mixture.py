"""GatedMixture: enumerated Pyro loss = closed form, masks, causality, posteriors, I/O, errors."""

import pytest
import torch
from pyro.infer import TraceEnum_ELBO

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.models.mixture import GatedMixture
from mmpgm.results import MixturePosterior

DIMS = {"audio": 4, "image": 3, "flow": 2}
GATES = ["conditional", "markov", "recurrent"]
HEADS = [("bernoulli", {}), ("categorical", {"num_classes": 3}), ("normal", {})]


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(head="bernoulli", N=3, T=6, seed=0, dims=DIMS):
    g = torch.Generator().manual_seed(seed)
    obs = {m: torch.randn(N, T, d, dtype=torch.float64, generator=g) for m, d in dims.items()}
    mask = {m: torch.rand(N, T, generator=g) > 0.3 for m in dims}
    mask[next(iter(dims))][0, 3] = False
    for m in dims:
        mask[m][1, 2] = False  # a frame with no stream observed
    if head == "normal":
        y = torch.randn(N, T, dtype=torch.float64, generator=g)
        y[0, 1] = float("nan")
    else:
        top = 3 if head == "categorical" else 2
        y = torch.randint(0, top, (N, T), generator=g)
        y[0, 1] = -1
    lengths = torch.tensor([T] + [T - 1 - i for i in range(N - 1)])
    return MultimodalData(obs, mask=mask, labels={"speech": y}, lengths=lengths)


def _model(gate, head="bernoulli", seed=0, **kw):
    torch.manual_seed(seed)
    extra = {"num_classes": 3} if head == "categorical" else {}
    m = GatedMixture(DIMS, gate=gate, head=head, **extra, **kw).double()
    return m


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("head,_", HEADS)
@pytest.mark.parametrize("co,beta", [(0, 0.0), (3, 1.0)])
def test_enumerated_loss_equals_closed_form(gate, head, _, co, beta):
    data = _data(head)
    model = _model(
        gate,
        head,
        co_learning_units=co,
        co_learning_weight={"audio": 0.5, "image": 1.0, "flow": 2.0},
        context=1,
        expert_weight=beta,
    )
    model.init_from_data(data)
    loss = model.default_elbo().loss(model.model, model.guide, data)
    closed = -(model.log_likelihood(data).sum() - model.penalty(data).sum()).detach()
    assert abs(loss - float(closed)) < 1e-6 * max(1.0, abs(float(closed)))
    collapsed = model.default_elbo("collapsed").loss(
        model.model, model.guide, data, program="collapsed"
    )
    assert abs(collapsed - float(closed)) < 1e-9 * abs(float(closed))
    if co == 0:
        assert float(model.penalty(data).abs().sum().detach()) == 0.0
    else:
        assert float(model.penalty(data).sum().detach()) > 0
    # minibatch scaling: num_sequences = 2 N doubles the loss
    loss2 = TraceEnum_ELBO(max_plate_nesting=2).loss(
        model.model, model.guide, data, num_sequences=6
    )
    assert abs(loss2 - 2 * float(closed)) < 1e-6 * abs(float(closed))


def test_enumerated_loss_gradients_match_closed_form():
    data = _data()
    model = _model("markov", co_learning_units=2)
    loss = model.default_elbo().differentiable_loss(model.model, model.guide, data)
    g1 = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    closed = -(model.log_likelihood(data) - model.penalty(data)).sum()
    g2 = torch.autograd.grad(closed, list(model.parameters()), allow_unused=True)
    for a, b in zip(g1, g2, strict=False):
        if a is not None and b is not None:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_co_learning_penalty_formula():
    data = _data()
    model = _model(
        "conditional",
        co_learning_units=2,
        co_learning_weight={"audio": 0.5, "image": 1.0, "flow": 2.0},
        expert_weight=0.0,
    )
    xs, masks = model._inputs(data)
    zs = [
        model.experts[m](x, k)[1][..., :2]
        for m, x, k in zip(model.modalities, xs, masks, strict=True)
    ]
    lam = [0.5, 1.0, 2.0]
    N, T = 3, 6
    ref = torch.zeros(N, dtype=torch.float64)
    for n in range(N):
        for t in range(T):
            obs = [i for i in range(3) if masks[i][n, t]]
            if not obs:
                continue
            zeta = sum(zs[i][n, t] for i in obs) / len(obs)
            ref[n] += sum(lam[i] * ((zs[i][n, t] - zeta) ** 2).sum() for i in obs)
    torch.testing.assert_close(model.penalty(data), ref, rtol=1e-12, atol=1e-12)
    # expert fit: -beta * sum of each expert's own log-likelihood on its observed labelled frames
    model.expert_weight = 0.7
    post = model.posterior(data)
    y = data.labels["speech"]
    lab = (y >= 0) & data.time_mask
    fit = torch.zeros(N, dtype=torch.float64)
    for i in range(3):
        p = post.expert_predictions[..., i]
        lp = torch.where(y == 1, p.log(), (1 - p).log())
        fit += -0.7 * torch.where(lab & masks[i], lp, torch.zeros_like(lp)).sum(-1)
    torch.testing.assert_close(model.penalty(data), ref + fit, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("gate", GATES)
def test_masked_expert_gets_exactly_zero_weight(gate):
    data = _data()
    model = _model(gate)
    post = model.posterior(data)
    avail = torch.stack([data.mask[m] for m in model.modalities], -1)
    some = avail.any(-1)
    w = post.gate_weights
    assert bool((w[~avail & some[..., None]] == 0).all())
    assert bool((post.responsibilities[~avail & some[..., None]] == 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        post.responsibilities.sum(-1), torch.ones_like(w.sum(-1)), rtol=0, atol=1e-12
    )
    # the values of a masked stream do not matter at all
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["audio"][~data.mask["audio"]] = 1e3
    data2 = MultimodalData(obs, mask=data.mask, labels=data.labels, lengths=data.lengths)
    post2 = model.posterior(data2)
    torch.testing.assert_close(post2.predictive, post.predictive, rtol=0, atol=0)
    torch.testing.assert_close(post2.log_likelihood, post.log_likelihood, rtol=0, atol=0)


@pytest.mark.parametrize("gate", GATES)
@pytest.mark.parametrize("expert", ["mlp", "recurrent"])
def test_causal(gate, expert):
    data = _data(T=8)
    model = _model(gate, expert=expert, context=2, gate_recurrent=gate == "markov")
    before = model.posterior(data, causal=True)
    t0 = 4
    obs = {m: v.clone() for m, v in data.obs.items()}
    for m in obs:
        obs[m][:, t0 + 1 :] += 5.0 * torch.randn_like(obs[m][:, t0 + 1 :])
    y = data.labels["speech"].clone()
    y[:, t0 + 1 :] = 1 - y[:, t0 + 1 :].clamp_min(0)
    mask = {m: k.clone() for m, k in data.mask.items()}
    mask["image"][:, t0 + 1 :] = ~mask["image"][:, t0 + 1 :]
    after = model.posterior(
        MultimodalData(obs, mask=mask, labels={"speech": y}, lengths=data.lengths), causal=True
    )
    for field in ["predictive", "gate_weights", "responsibilities", "expert_predictions"]:
        a, b = getattr(before, field)[:, : t0 + 1], getattr(after, field)[:, : t0 + 1]
        assert torch.equal(a, b), field


def test_causal_predictive_is_gate_weighted_experts():
    data = _data()
    for gate in GATES:
        post = _model(gate).posterior(data)
        torch.testing.assert_close(
            post.predictive,
            (post.gate_weights * post.expert_predictions).sum(-1),
            rtol=1e-12,
            atol=1e-12,
        )


def test_markov_responsibilities_smoothed_vs_filtered():
    data = _data()
    model = _model("markov")
    s, f = model.posterior(data), model.posterior(data, causal=True)
    torch.testing.assert_close(
        s.responsibilities[:, -1], f.responsibilities[:, -1], rtol=1e-10, atol=1e-12
    )
    assert not torch.allclose(s.responsibilities[:, 0], f.responsibilities[:, 0])
    assert s.map.shape == (3, 6) and s.map.dtype == torch.long


def test_posterior_samples_and_arviz():
    data = _data(head="categorical")
    for gate in ["conditional", "markov"]:
        model = _model(gate, "categorical")
        post = mmpgm.infer(model, data, num_samples=4, seed=1)
        assert isinstance(post, MixturePosterior)
        assert post.samples.shape == (4, 3, 6)
        assert torch.equal(post.samples, model.posterior(data, num_samples=4, seed=1).samples)
        assert post.predictive.shape == (3, 6, 3)
        assert post.expert_predictions.shape == (3, 6, 3, 3)
        idata = post.to_arviz()
        assert idata.latent_states["expert"].dims == ("chain", "draw", "sequence", "time")
        assert list(idata.constant_data["gate_weights"].coords["expert"].values) == list(DIMS)
        assert int(idata.latent_states["expert"].values[0, 0, 2, 5]) == -1  # padding
        assert idata.posterior["expert_occupancy"].dims[-2:] == ("sequence", "expert")
        assert "log_likelihood" not in idata.groups()
    with pytest.raises(ValueError, match="num_param_samples: Laplace parameter draws are not"):
        mmpgm.infer(model, data, num_param_samples=2)


def test_unlabelled_data_gives_zero_likelihood_and_predictions():
    data = _data()
    bare = MultimodalData(data.obs, mask=data.mask, lengths=data.lengths)
    model = _model("markov")
    assert float(model.log_likelihood(bare).detach().abs().max()) < 1e-12
    post = model.posterior(bare)
    torch.testing.assert_close(post.responsibilities, post.gate_weights, rtol=1e-10, atol=1e-12)


def test_fit_and_save_load_roundtrip(tmp_path):
    data = _data(N=4, T=6)
    for gate in GATES:
        model = _model(gate, context=1)
        before = float(model.default_elbo().loss(model.model, model.guide, data))
        res = mmpgm.fit(model, data, num_steps=6, lr=0.02, patience=0)
        assert res.num_steps == 6
        after = float(model.default_elbo().loss(model.model, model.guide, data))
        assert after < before
        path = tmp_path / f"{gate}.pt"
        model.save(path)
        loaded = mmpgm.load_model(path)
        assert isinstance(loaded, GatedMixture) and loaded.config() == model.config()
        torch.testing.assert_close(
            loaded.log_likelihood(data), model.log_likelihood(data), rtol=0, atol=0
        )


def test_float32_follows_model():
    data = _data()
    torch.manual_seed(0)
    model = GatedMixture(DIMS)
    ll = model.log_likelihood(data)
    assert ll.dtype == torch.float32


def test_bad_inputs():
    with pytest.raises(ValueError, match="gate"):
        GatedMixture(DIMS, gate="attention")
    with pytest.raises(ValueError, match="head"):
        GatedMixture(DIMS, head="poisson")
    with pytest.raises(ValueError, match="expert"):
        GatedMixture(DIMS, expert="transformer")
    with pytest.raises(ValueError, match="num_classes"):
        GatedMixture(DIMS, head="categorical")
    with pytest.raises(ValueError, match="num_classes"):
        GatedMixture(DIMS, num_classes=3)
    with pytest.raises(TypeError, match="obs_dims"):
        GatedMixture({})
    with pytest.raises(ValueError, match="obs_dims"):
        GatedMixture({"a": 0})
    with pytest.raises(ValueError, match="co_learning_units"):
        GatedMixture(DIMS, hidden_dim=4, co_learning_units=5)
    with pytest.raises(ValueError, match="co_learning_weight"):
        GatedMixture(DIMS, co_learning_weight={"audio": 1.0})
    with pytest.raises(ValueError, match="co_learning_weight"):
        GatedMixture(DIMS, co_learning_weight=-1.0)
    with pytest.raises(ValueError, match="expert_weight"):
        GatedMixture(DIMS, expert_weight=-0.5)
    with pytest.raises(ValueError, match="context"):
        GatedMixture(DIMS, context=-1)
    model = _model("conditional")
    with pytest.raises(TypeError, match="data"):
        model.log_likelihood({"audio": torch.zeros(1, 2, 4)})
    data = _data()
    bad = MultimodalData(data.obs, mask=data.mask, labels={"speech": torch.full((3, 6), 2)})
    with pytest.raises(ValueError, match="speech"):
        model.log_likelihood(bad)
    wrong = MultimodalData(
        {"audio": torch.zeros(1, 2, 5), "image": torch.zeros(1, 2, 3), "flow": torch.zeros(1, 2, 2)}
    )
    with pytest.raises(ValueError):
        model.log_likelihood(wrong)
    per_seq = MultimodalData(data.obs, labels={"speech": torch.zeros(3)})
    with pytest.raises(ValueError, match="per-frame"):
        model.log_likelihood(per_seq)
    with pytest.raises(ValueError, match="num_samples"):
        model.posterior(data, num_samples=-1)


def test_fit_without_the_target_label_is_refused():
    """A mixture fitted on data without the label it predicts would train to loss 0 and learn
    nothing; fit and the mixture's training functions refuse it by name."""
    from mmpgm.inference.mixture import fit_gate, pretrain_experts

    g = torch.Generator().manual_seed(0)
    data = mmpgm.MultimodalData(
        {"a": torch.randn(3, 6, 2, generator=g), "b": torch.randn(3, 6, 1, generator=g)}
    )
    model = GatedMixture({"a": 2, "b": 1}, target="speech")
    for train in (
        lambda: mmpgm.fit(model, data, num_steps=1, progress=False),
        lambda: mmpgm.fit(model, data, method="em", num_steps=1, progress=False),
        lambda: pretrain_experts(model, data, num_steps=1),
        lambda: fit_gate(model, data, num_steps=1),
    ):
        with pytest.raises(ValueError, match=r"labels: the mixture predicts the label 'speech'"):
            train()
    unlabelled = mmpgm.MultimodalData(dict(data.obs), labels={"speech": -torch.ones(3, 6)})
    with pytest.raises(ValueError, match=r"labels\['speech'\]: no frame is labelled"):
        mmpgm.fit(model, unlabelled, num_steps=1, progress=False)
