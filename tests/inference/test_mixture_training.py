"""Training of the gated mixture above the model (mmpgm.inference.mixture, em_mixture): expert
pre-training, the staged gate fit, the Appendix-A EM (moved from tests/models/test_mixture.py)."""

import pytest
import torch

import mmpgm
from mmpgm.data import MultimodalData
from mmpgm.inference.em_mixture import em_objective, em_posteriors, fit_em_mixture
from mmpgm.inference.mixture import fit_gate, pretrain_experts
from mmpgm.models.mixture import GatedMixture
from mmpgm.ops import mixture as ops

DIMS = {"audio": 4, "image": 3, "flow": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(N=3, T=6, seed=0, dims=DIMS):
    """Bernoulli targets with an unlabelled frame, masked streams, a frame with no stream and
    ragged lengths (as in tests/models/test_mixture.py)."""
    g = torch.Generator().manual_seed(seed)
    obs = {m: torch.randn(N, T, d, dtype=torch.float64, generator=g) for m, d in dims.items()}
    mask = {m: torch.rand(N, T, generator=g) > 0.3 for m in dims}
    mask[next(iter(dims))][0, 3] = False
    for m in dims:
        mask[m][1, 2] = False  # a frame with no stream observed
    y = torch.randint(0, 2, (N, T), generator=g)
    y[0, 1] = -1
    lengths = torch.tensor([T] + [T - 1 - i for i in range(N - 1)])
    return MultimodalData(obs, mask=mask, labels={"speech": y}, lengths=lengths)


def _model(gate, seed=0, **kw):
    torch.manual_seed(seed)
    return GatedMixture(DIMS, gate=gate, **kw).double()


def test_pretraining_then_collapsed_fit():
    data = _data(N=4, T=10)
    model = _model("markov")
    losses = pretrain_experts(model, data, num_steps=20, lr=0.02)
    assert losses[-1] < losses[0]
    res = mmpgm.fit(model, data, num_steps=10, lr=0.02, program="collapsed", patience=0)
    assert res.losses[-1] < res.losses[0]


# ---------------------------------------------------------------- Appendix-A EM and staged gate fit
@pytest.mark.parametrize("gate", ["conditional", "markov"])
def test_em_posteriors_exact_and_q_gradient_equals_loglik_gradient(gate):
    data = _data(N=3, T=6)
    model = _model(gate, co_learning_units=3)
    data = model.check_data(data)
    with torch.no_grad():
        outputs = model.forward_outputs(data)
        r, extra = em_posteriors(model, data, outputs)
        y, lab = model.targets(data)
        lc = model.component_log_prob(outputs.expert_outputs, y)
        ev = model.evidence_mask(lab, outputs.available)
        if gate == "markov":
            ref = ops.markov_smooth(outputs.log_weights[0], outputs.log_weights[1], lc, ev)
        else:
            ref = ops.mixture_responsibilities(outputs.log_weights, lc, ev)
    # responsibilities = the closed-form smoother on evidence frames, zero elsewhere
    torch.testing.assert_close(r[ev], ref[ev], rtol=0, atol=1e-10)
    assert float(r[~ev].abs().max()) == 0.0
    if gate == "markov":  # pairwise marginals are consistent with the singles
        g1, xi = extra
        torch.testing.assert_close(g1, ref[:, 0], rtol=0, atol=1e-10)
        torch.testing.assert_close(xi[:, 1:].sum(-2), ref[:, 1:], rtol=0, atol=1e-10)
    # Fisher's identity: grad Q = grad (log p(y|x) - penalty) at the E-step parameters
    params = list(model.parameters())
    q = em_objective(model, data, model.forward_outputs(data), r, extra)
    gq = torch.autograd.grad(q, params, allow_unused=True)
    obj = model.log_likelihood(data).sum() - model.penalty(data).sum()
    gl = torch.autograd.grad(obj, params, allow_unused=True)
    for a, b in zip(gq, gl, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(
    "gate,method", [("conditional", "em"), ("markov", "em"), ("recurrent", "svi")]
)
def test_fit_gate_trains_only_the_gate(gate, method):
    data = _data(N=4, T=10)
    model = _model(gate)
    pretrain_experts(model, data, num_steps=5, lr=0.02)
    experts = {k: v.clone() for k, v in model.experts.state_dict().items()}
    before = float(model.log_likelihood(data).sum().detach())
    losses = fit_gate(model, data, num_steps=8, lr=0.05, method=method, m_steps=3)
    assert len(losses) == 8 and losses[-1] < losses[0]
    assert float(model.log_likelihood(data).sum().detach()) > before
    for k, v in model.experts.state_dict().items():
        assert torch.equal(v, experts[k])


def test_em_full_fit_and_errors():
    data = _data(N=4, T=10)
    model = _model("conditional", co_learning_units=2)
    losses, secs = fit_em_mixture(model, data, num_iters=6, m_steps=3, lr=0.05, batch_size=2)
    assert len(losses) == 6 and losses[-1] < losses[0] and secs > 0
    with pytest.raises(ValueError, match="gate"):
        fit_em_mixture(_model("recurrent"), data, num_iters=1)
    with pytest.raises(ValueError, match="m_steps"):
        fit_em_mixture(model, data, num_iters=1, m_steps=0)
    with pytest.raises(ValueError, match="method"):
        fit_gate(model, data, method="adam")
