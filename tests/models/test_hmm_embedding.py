"""EmbeddingObservation: a Gaussian on G(x), and the HMM's exactness with an embedding modality
(brute force over all joint paths, masks, ragged lengths, batch = loop, enumerated program),
EM on the embeddings, frozen / trainable encoders under SVI, save and load."""

import itertools
import math

import pytest
import torch
from pyro.infer import TraceEnum_ELBO
from torch import nn

import mmpgm
from mmpgm import MultimodalData, MultimodalHMM
from mmpgm.nn.siamese import MLPTower
from mmpgm.observations import (
    DiagonalEmbeddingObservation,
    EmbeddingObservation,
    FullEmbeddingObservation,
)
from mmpgm.observations.gaussian import DiagonalGaussianObservation, FullGaussianObservation

pytestmark = pytest.mark.usefixtures("float64")

D, E = 5, 3


class UserEncoder(nn.Module):
    """An encoder the package does not know (no config, no input_dim attribute)."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(D, E)

    def forward(self, x):
        return torch.tanh(self.lin(x))


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for chain in model._chains():
            K = chain.num_states
            chain.initial_probs = torch.rand(K, generator=g).add(0.2).softmax(0)
            chain.transition_probs = (torch.rand(K, K, generator=g) * 3).softmax(-1)
        for e in model.emissions.values():
            e.loc = torch.randn(e.loc.shape, generator=g)
            if hasattr(e, "scale"):
                e.scale = torch.rand(e.scale.shape, generator=g) + 0.5
            if hasattr(e, "scale_tril"):
                L = torch.randn(e.scale_tril.shape, generator=g).tril(-1) * 0.3
                e.scale_tril = L + torch.diag_embed(torch.rand(e.loc.shape, generator=g) + 0.5)
    return model


def make_model(covariance="diag", K_s=2, K_m=2, encoder=None, seed=0):
    torch.manual_seed(seed)
    encoder = MLPTower(D, (7,), E) if encoder is None else encoder
    k_spec = K_m["spec"] if isinstance(K_m, dict) else K_m
    spec = EmbeddingObservation(encoder, K_s, k_spec, covariance=covariance, input_dim=D)
    model = MultimodalHMM({"spec": E, "a": 2}, K_s, K_m, emission={"spec": spec, "a": "diag"})
    return randomize(model, seed)


def make_data(N=3, T=4, seed=1, holes=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, T, D, generator=g) * 2
    a = torch.randn(N, T, 2, generator=g)
    if holes and T > 2:
        x[0, 1:3] = math.nan  # the embedding modality missing for a stretch
        a[N - 1, 0] = math.nan  # the other one missing at the start
    lengths = [T, max(1, T - 2)] + [max(1, T - 1)] * (N - 2)
    return MultimodalData({"spec": x, "a": a}, lengths=lengths[:N])


def gaussian_log_prob(e, z):
    """``log N(z; mu_ij, Sigma_ij)`` by torch.distributions, ``(..., K_s, K_m)``."""
    z = z[..., None, None, :]
    if isinstance(e, (FullGaussianObservation,)):
        return torch.distributions.MultivariateNormal(e.loc, scale_tril=e.scale_tril).log_prob(z)
    return torch.distributions.Normal(e.loc, e.scale).log_prob(z).sum(-1)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_log_prob_is_a_gaussian_on_the_embeddings(covariance):
    model = make_model(covariance)
    e = model.emissions["spec"]
    assert isinstance(
        e, FullEmbeddingObservation if covariance == "full" else DiagonalEmbeddingObservation
    )
    assert (e.obs_dim, e.data_dim, e.rescalable) == (E, D, False)
    x = torch.randn(6, 4, D)
    with torch.no_grad():
        z = e.encoder(x)
    torch.testing.assert_close(e.log_prob(x), gaussian_log_prob(e, z), rtol=1e-12, atol=1e-12)
    # the same model as a plain Gaussian emission on the embeddings
    plain = (FullGaussianObservation if covariance == "full" else DiagonalGaussianObservation)(
        E, 2, 2
    )
    plain.load_state_dict({k: v for k, v in e.state_dict().items() if not k.startswith("encoder.")})
    torch.testing.assert_close(e.log_prob(x), plain.log_prob(z), rtol=1e-12, atol=1e-12)


def brute_force(model, data):
    """log p(x_n observed) per sequence by summing over every joint path of the three chains,
    with each emission's density computed independently (torch.distributions on G(x))."""
    chains = model._chains()
    sizes = [c.num_states for c in chains]
    states = list(itertools.product(*[range(k) for k in sizes]))  # (s, p_spec, p_a)
    out = []
    for n in range(data.num_sequences):
        L = int(data.lengths[n])
        logE = torch.zeros(L, len(states))
        for t in range(L):
            for m, e in model.emissions.items():
                if not data.mask[m][n, t]:
                    continue
                x = data.obs[m][n, t]
                z = e.encoder(x) if m == "spec" else x
                lp = gaussian_log_prob(e, z)
                c = 1 + model.modalities.index(m)
                logE[t] += torch.stack([lp[s[0], s[c]] for s in states])
        total = []
        for path in itertools.product(range(len(states)), repeat=L):
            lp = 0.0
            for t, k in enumerate(path):
                for c, chain in enumerate(chains):
                    cur = states[k][c]
                    if t == 0:
                        lp = lp + chain.initial_probs[cur].log()
                    else:
                        lp = lp + chain.transition_probs[states[path[t - 1]][c], cur].log()
                lp = lp + logE[t, k]
            total.append(lp)
        out.append(torch.logsumexp(torch.stack(total), 0))
    return torch.stack(out)


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("T", [1, 3])
def test_collapsed_likelihood_equals_brute_force(covariance, T):
    model = make_model(covariance, K_s=2, K_m={"spec": 2, "a": 1} if T == 3 else 2)
    data = make_data(N=3, T=T)
    with torch.no_grad():
        got = model.log_likelihood(data)
        want = brute_force(model, data)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("covariance", ["diag", "full"])
@pytest.mark.parametrize("T", [1, 5])
def test_enumerated_program_equals_collapsed(covariance, T):
    model = make_model(covariance)
    data = make_data(N=3, T=T)
    lab = torch.full((3, T), -1)
    lab[1, 0] = 1
    data = MultimodalData(data.obs, lengths=data.lengths, labels={"shared": lab})
    enum = TraceEnum_ELBO(max_plate_nesting=1).loss(
        model.model, model.guide, data, program="enumerated"
    )
    with torch.no_grad():
        collapsed = float(-(model.log_likelihood(data).sum() + model.log_prior()))
    assert math.isclose(enum, collapsed, rel_tol=1e-6, abs_tol=1e-6), (enum, collapsed)


def test_masks_ragged_and_batch_equal_a_loop():
    model = make_model("diag")
    data = make_data(N=3, T=5)
    with torch.no_grad():
        batch = model.log_likelihood(data)
        for n in range(3):
            L = int(data.lengths[n])
            one = MultimodalData(
                {m: data.obs[m][n : n + 1, :L] for m in data.obs},
                mask={m: data.mask[m][n : n + 1, :L] for m in data.obs},
            )
            torch.testing.assert_close(
                model.log_likelihood(one), batch[n : n + 1], rtol=1e-12, atol=1e-12
            )
        # a masked frame contributes nothing, whatever its value (padding too)
        obs = {m: v.clone() for m, v in data.obs.items()}
        obs["spec"][0, 1:3] = 1e3
        obs["spec"][1, 3:] = -1e3  # past sequence 1's length
        mask = {m: data.mask[m] for m in data.obs}
        moved = MultimodalData(obs, lengths=data.lengths, mask=mask)
        torch.testing.assert_close(model.log_likelihood(moved), batch, rtol=1e-12, atol=1e-12)


def test_em_is_closed_form_on_the_embeddings_and_monotone():
    model = make_model("diag")
    data = make_data(N=4, T=6, holes=True)
    e = model.emissions["spec"]
    before = {k: v.clone() for k, v in e.encoder.state_dict().items()}
    stats = model.em_statistics(data)
    # the statistics are those of a Gaussian on the embeddings of the observed frames
    x = data.obs["spec"][data.mask["spec"]]
    with torch.no_grad():
        z = e.encoder(x)
    plain = DiagonalGaussianObservation(E, 2, 2)
    w = torch.rand(z.shape[0], 2, 2)
    torch.testing.assert_close(
        e.sufficient_statistics(x, w)["sxx"],
        plain.sufficient_statistics(z, w)["sxx"],
        rtol=1e-12,
        atol=1e-12,
    )
    assert stats["emission.spec.sx"].shape == (2, 2, E)
    joints = [float(model.em_step(data)) for _ in range(8)]
    assert all(b >= a - 1e-9 for a, b in zip(joints, joints[1:], strict=False)), joints
    for k, v in e.encoder.state_dict().items():
        assert torch.equal(v, before[k])  # EM never touches the encoder


@pytest.mark.parametrize("trainable", [False, True])
def test_svi_moves_the_encoder_only_when_trainable(trainable):
    torch.manual_seed(0)
    tower = MLPTower(D, (7,), E)
    spec = EmbeddingObservation(tower, 2, 1, trainable=trainable)
    model = MultimodalHMM({"spec": E}, 2, 1, emission={"spec": spec})
    data = make_data(N=3, T=6)
    data = MultimodalData({"spec": data.obs["spec"]}, lengths=data.lengths)
    before = [p.detach().clone() for p in tower.parameters()]
    loc = None
    mmpgm.fit(model, data, num_steps=5, lr=0.01, progress=False, patience=0)
    loc = spec.loc.detach().clone()
    moved = any(not torch.equal(a, b) for a, b in zip(before, tower.parameters(), strict=True))
    assert moved == trainable
    assert loc is not None and bool(torch.isfinite(loc).all())
    n_gauss = 2 * 1 * 2 * E
    extra = sum(p.numel() for p in tower.parameters()) if trainable else 0
    assert spec.num_free_parameters() == n_gauss + extra


def test_siamese_encoder_plugs_in_and_infer_runs():
    enc = mmpgm.SiameseEncoder(MLPTower(D, (6,), E), modality="spec")
    spec = EmbeddingObservation(enc, 3, 1, covariance="full")  # sizes from the encoder
    assert (spec.input_dim, spec.embed_dim) == (D, E)
    model = MultimodalHMM({"spec": E}, 3, 1, emission={"spec": spec})
    data = make_data(N=2, T=5)
    data = MultimodalData({"spec": data.obs["spec"]}, lengths=data.lengths)
    mmpgm.fit(model, data, method="em", num_steps=3, patience=0, progress=False)
    post = mmpgm.infer(model, data)
    assert post.marginals["shared"].shape == (2, 5, 3)
    imp = model.impute(data, "spec")  # moments of the embedding
    assert imp.mean.shape == (2, 5, E)


def test_save_load_carries_the_encoder(tmp_path):
    data = make_data(N=3, T=4)
    # a package tower: rebuilt from the config
    model = make_model("full")
    model.save(tmp_path / "hmm.pt")
    loaded = mmpgm.load_model(tmp_path / "hmm.pt")
    torch.testing.assert_close(
        loaded.log_likelihood(data), model.log_likelihood(data), rtol=1e-12, atol=1e-12
    )
    # a SiameseEncoder with a package tower, standardizer buffers included
    enc = mmpgm.SiameseEncoder(MLPTower(D, (4,), E), modality="spec")
    enc.standardizer.fit_to(torch.randn(20, D) * 3 + 1)
    model = make_model("diag", encoder=enc)
    model.save(tmp_path / "hmm2.pt")
    loaded = mmpgm.load_model(tmp_path / "hmm2.pt")
    torch.testing.assert_close(
        loaded.log_likelihood(data), model.log_likelihood(data), rtol=1e-12, atol=1e-12
    )
    # a user encoder: passed again, its weights come from the file
    model = make_model("diag", encoder=UserEncoder())
    model.save(tmp_path / "hmm3.pt")
    with pytest.raises(ValueError, match="EmbeddingObservation"):
        mmpgm.load_model(tmp_path / "hmm3.pt")
    fresh = EmbeddingObservation(UserEncoder(), 2, 2, input_dim=D)
    loaded = mmpgm.load_model(tmp_path / "hmm3.pt", emission={"spec": fresh})
    torch.testing.assert_close(
        loaded.log_likelihood(data), model.log_likelihood(data), rtol=1e-12, atol=1e-12
    )
    with pytest.raises(ValueError, match="not a constructor argument"):
        mmpgm.load_model(tmp_path / "hmm3.pt", encoder=UserEncoder())


def test_bad_input_raises_by_name():
    with pytest.raises(TypeError, match="encoder"):
        EmbeddingObservation("not a module", 2, 1)
    with pytest.raises(ValueError, match="covariance"):
        EmbeddingObservation(MLPTower(D, (), E), 2, 1, covariance="spherical")
    with pytest.raises(ValueError, match="input_dim"):
        EmbeddingObservation(UserEncoder(), 2, 1)  # no input_dim attribute, none given
    spec = EmbeddingObservation(MLPTower(D, (), E), 2, 1)
    with pytest.raises(ValueError, match="obs_dim"):
        MultimodalHMM({"spec": D}, 2, 1, emission={"spec": spec})  # obs_dims holds E, not D
    with pytest.raises(ValueError, match="input_dim"):
        spec.log_prob(torch.zeros(4, D + 1))
    with pytest.raises(NotImplementedError, match="embedding"):
        spec.sample_at(torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="embedding"):
        MultimodalHMM({"spec": E}, 2, 1, emission={"spec": "embedding"})


def test_params_hold_the_gaussian_and_the_model_holds_the_encoder():
    model = make_model("full")
    data = make_data(N=2, T=4)
    params = model.params
    assert set(params.emissions["spec"]) == {"loc", "scale_tril"}  # state-indexed only
    names = [n for n, _ in model.named_parameters()]
    assert any(n.startswith("emissions.spec.encoder.") for n in names)  # SVI sees the encoder
    with torch.no_grad():
        before = model.log_likelihood(data)
        params.emissions["spec"]["loc"] += 1.0
        model.set_params(params)
        after = model.log_likelihood(data)
        params.emissions["spec"]["loc"] -= 1.0
        model.set_params(params)
        torch.testing.assert_close(model.log_likelihood(data), before, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(after, before)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_equals_a_gaussian_hmm_on_the_embedded_stream(covariance):
    enc = mmpgm.SiameseEncoder(MLPTower(D, (6,), E), modality="spec")
    enc.standardizer.fit_to(torch.randn(30, D) * 2 + 1)
    model = make_model(covariance, encoder=enc)
    data = make_data(N=3, T=5)
    plain = MultimodalHMM({"spec": E, "a": 2}, 2, 2, emission={"spec": covariance, "a": "diag"})
    own = {k: v for k, v in model.state_dict().items() if ".encoder." not in k}
    plain.load_state_dict(own)
    embedded = enc.embed_data(data)  # the stream replaced by G(x), NaN where missing
    with torch.no_grad():
        torch.testing.assert_close(
            model.log_likelihood(data), plain.log_likelihood(embedded), rtol=1e-12, atol=1e-12
        )
    post, ref = mmpgm.infer(model, data), mmpgm.infer(plain, embedded)
    torch.testing.assert_close(
        post.marginals["shared"], ref.marginals["shared"], rtol=1e-10, atol=1e-12
    )
