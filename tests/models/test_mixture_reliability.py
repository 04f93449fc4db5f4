"""GatedMixture gate_inputs (novelty, disagreement): brute-force formulas, masks, causality, the
enumerated program, save/load, argument errors, and a seeded test that the gate leaves a
corrupted stream."""

import pytest
import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.inference.cross_fit import out_of_fold_scores
from mmpgm.inference.mixture import fit_gate_to_scores, pretrain_experts
from mmpgm.models.mixture import GatedMixture
from mmpgm.models.mixture.reliability import ReliabilityInputs

DIMS = {"audio": 4, "image": 3, "flow": 2}
REL = ("features", "novelty", "disagreement")

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(N=3, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = {m: torch.randn(N, T, d, dtype=torch.float64, generator=g) for m, d in DIMS.items()}
    mask = {m: torch.rand(N, T, generator=g) > 0.3 for m in DIMS}
    for m in DIMS:
        mask[m][1, 2] = False  # a frame with no stream observed
    y = torch.randint(0, 2, (N, T), generator=g)
    y[0, 1] = -1
    lengths = torch.tensor([T] + [T - 1 - i for i in range(N - 1)])
    return MultimodalData(obs, mask=mask, labels={"speech": y}, lengths=lengths)


def _model(gate="conditional", seed=0, **kw):
    torch.manual_seed(seed)
    return GatedMixture(DIMS, gate=gate, context=1, **kw).double()


def test_novelty_and_disagreement_match_brute_force():
    g = torch.Generator().manual_seed(1)
    N, T = 2, 5
    xs = [torch.randn(N, T, d, dtype=torch.float64, generator=g) for d in (4, 3, 2)]
    masks = [torch.rand(N, T, generator=g) > 0.3 for _ in range(3)]
    probs = torch.rand(N, T, 3, dtype=torch.float64, generator=g)
    rel = ReliabilityInputs([4, 3, 2], ("novelty", "disagreement"), novelty_decay=0.7).double()
    rel.fit([x * 2 + 1 for x in xs], [torch.ones(N, T, dtype=torch.bool)] * 3)
    r = rel(xs, masks, probs)
    assert r.shape == (N, T, 9)
    for n in range(N):
        for m in range(3):
            mu, var = getattr(rel, f"mean_{m}"), getattr(rel, f"var_{m}")
            run, k = 0.0, 0
            for t in range(T):
                if not masks[m][n, t]:
                    assert float(r[n, t, m]) == 0 and float(r[n, t, 3 + m]) == 0
                    assert float(r[n, t, 6 + m]) == 0
                    continue
                nu = torch.log(((xs[m][n, t] - mu) ** 2 / var).mean() + 1e-6)
                k += 1
                run = run + max(1.0 / k, 0.3) * (float(nu) - run)
                others = [float(probs[n, t, j]) for j in range(3) if j != m and masks[j][n, t]]
                dis = abs(float(probs[n, t, m]) - sum(others) / len(others)) if others else 0.0
                torch.testing.assert_close(r[n, t, m], nu, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(float(r[n, t, 3 + m]), run, rtol=1e-12, atol=1e-12)
                torch.testing.assert_close(float(r[n, t, 6 + m]), dis, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("gate", ["conditional", "markov", "recurrent"])
def test_starts_as_the_plain_gate_and_enumerated_equals_closed_form(gate):
    data = _data()
    plain, rel = _model(gate), _model(gate, gate_inputs=REL)
    plain.init_from_data(data)
    rel.init_from_data(data)
    torch.testing.assert_close(
        rel.log_likelihood(data), plain.log_likelihood(data), rtol=1e-12, atol=1e-12
    )
    with torch.no_grad():  # a nonzero reliability map: the Pyro program still agrees
        rel.gate.reliability.weight.normal_(0, 1.0)
    loss = rel.default_elbo().loss(rel.model, rel.guide, data)
    closed = -(rel.log_likelihood(data).sum() - rel.penalty(data).sum()).detach()
    torch.testing.assert_close(torch.tensor(loss, dtype=torch.float64), closed, rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("gate", ["conditional", "markov"])
@pytest.mark.parametrize("inputs", [REL, ("novelty",), ("disagreement",)])
def test_causal_and_masked(gate, inputs):
    data = _data(T=7)
    model = _model(gate, gate_inputs=inputs)
    model.init_from_data(data)
    with torch.no_grad():
        model.gate.reliability.weight.normal_(0, 1.0)
    base = model.posterior(data, causal=True).gate_weights
    for t in range(6):
        obs = {m: v.clone() for m, v in data.obs.items()}
        for v in obs.values():
            v[:, t + 1 :] += 10.0
        other = MultimodalData(obs, mask=data.mask, labels=data.labels, lengths=data.lengths)
        w = model.posterior(other, causal=True).gate_weights
        torch.testing.assert_close(w[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-12)
    avail = torch.stack([data.mask[m] for m in DIMS], -1)
    some = avail.any(-1, keepdim=True).expand_as(avail)
    assert bool((base[~avail & some] == 0).all())


def test_out_of_fold_outputs_match_scores_and_feed_the_gate():
    data = _data(N=4, T=5)
    groups = torch.tensor([0, 0, 1, 1])
    model = _model(gate_inputs=REL)
    scores, ev, _, out = out_of_fold_scores(model, data, groups, expert_steps=2,
                                            return_outputs=True)
    y = data.labels["speech"].clamp_min(0).double()[..., None]
    lp = torch.nn.functional.logsigmoid(out[..., 0])
    lq = torch.nn.functional.logsigmoid(-out[..., 0])
    ref = y * lp + (1 - y) * lq
    torch.testing.assert_close(scores[ev], ref[ev], rtol=1e-12, atol=1e-12)
    losses = fit_gate_to_scores(model, data, scores, ev, num_steps=3, expert_outputs=out)
    assert len(losses) == 3
    with pytest.raises(ValueError, match="expert_outputs"):
        fit_gate_to_scores(model, data, scores, ev, num_steps=1, expert_outputs=out[:, :2])


def test_save_load_roundtrip(tmp_path):
    data = _data()
    model = _model("markov", gate_inputs=("novelty", "disagreement"), novelty_decay=0.8)
    model.fit_novelty(data)
    with torch.no_grad():
        model.gate.reliability.weight.normal_(0, 1.0)
    path = tmp_path / "m.pt"
    model.save(path)
    back = mmpgm.load_model(path)
    assert back.gate_inputs == ("novelty", "disagreement") and bool(back.reliability.fitted)
    torch.testing.assert_close(back.log_likelihood(data), model.log_likelihood(data),
                               rtol=1e-12, atol=1e-12)


def test_default_is_the_former_gate():
    a, b = _model(), _model(gate_inputs=("features",))
    assert a.reliability is None and set(a.state_dict()) == set(b.state_dict())
    assert not any("reliability" in k for k in a.state_dict())


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"gate_inputs": ("novelty", "colour")}, ValueError, "gate_inputs"),
        ({"gate_inputs": ()}, ValueError, "gate_inputs"),
        ({"gate_inputs": ("novelty", "novelty")}, ValueError, "gate_inputs"),
        ({"gate_inputs": 3}, TypeError, "gate_inputs"),
        ({"gate_inputs": "disagreement", "head": "normal"}, ValueError, "bernoulli"),
        ({"gate_inputs": "novelty", "novelty_decay": 0.0}, ValueError, "novelty_decay"),
        ({"gate_inputs": "novelty", "novelty_decay": 1.5}, ValueError, "novelty_decay"),
    ],
)
def test_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        GatedMixture(DIMS, **kw)


def test_fit_novelty_needs_novelty():
    with pytest.raises(ValueError, match="novelty"):
        _model().fit_novelty(_data())


def _corrupted_pair(N, seed, corrupt=True):
    """Two noisy views of a binary speech-like target; the second stream is replaced on a
    random 8-frame segment of every clip by a constant far from its data (a stuck sensor)."""
    g = torch.Generator().manual_seed(seed)
    T = 30
    y = (torch.rand(N, T, generator=g) < 0.5).long()
    y = torch.repeat_interleave(y[:, ::3], 3, dim=1)[:, :T]
    s = 2 * y.double() - 1
    a = s[..., None] + 1.2 * torch.randn(N, T, 2, generator=g, dtype=torch.float64)
    v = s[..., None] + 0.5 * torch.randn(N, T, 3, generator=g, dtype=torch.float64)
    bad = torch.zeros(N, T, dtype=torch.bool)
    for n in range(N):
        t0 = int(torch.randint(0, T - 8, (1,), generator=g))
        bad[n, t0 : t0 + 8] = corrupt
    v = torch.where(bad[..., None], torch.full_like(v, 6.0), v)
    return MultimodalData({"a": a, "v": v}, labels={"speech": y}), bad


def test_gate_leaves_a_corrupted_stream():
    """Seeded: experts fit on corrupted clips, the novelty density on clean ones, a gate that
    reads only the reliability inputs (no features) fit on other clips, scored on a third set.
    The margin: weight on the stuck stream inside its segment <= 0.6 x outside (the issue's
    target); measured 0.045 / 0.30 = 0.15 at these seeds, so the test has room; a gate whose
    reliability inputs carried nothing would have no way to tell the segment apart (its
    weights would be constant, ratio 1)."""
    torch.manual_seed(0)
    model = GatedMixture({"a": 2, "v": 3}, gate="conditional", hidden_dim=8,
                         gate_inputs=("novelty", "disagreement")).double()
    train, _ = _corrupted_pair(40, 1)
    gate_data, _ = _corrupted_pair(40, 2)
    test, bad = _corrupted_pair(40, 3)
    pretrain_experts(model, train, num_steps=30, lr=0.03)
    model.fit_novelty(_corrupted_pair(40, 4, corrupt=False)[0])
    scores, ev = model.expert_scores(model.check_data(gate_data))
    fit_gate_to_scores(model, gate_data, scores, ev, num_steps=60, lr=0.05)
    w = model.posterior(test, causal=True).gate_weights[..., 1]
    inside, outside = float(w[bad].mean()), float(w[~bad].mean())
    assert inside <= 0.6 * outside, (inside, outside)
