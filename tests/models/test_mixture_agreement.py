"""GatedMixture.agreement: the per-utterance Dawid-Skene combination of the model's experts
equals the op on the experts' outputs (uniform votes, or M x the gate weights, for both gate
structures), reads no label, and validates its options."""

import pytest
import torch

from mmpgm.data import MultimodalData
from mmpgm.models.mixture import GatedMixture
from mmpgm.ops.agreement import dawid_skene

DIMS = {"audio": 4, "image": 3, "flow": 2}

pytestmark = pytest.mark.usefixtures("one_thread")


def _data(N=3, T=8, seed=0, labels=True):
    g = torch.Generator().manual_seed(seed)
    obs = {m: torch.randn(N, T, d, dtype=torch.float64, generator=g) for m, d in DIMS.items()}
    mask = {m: torch.rand(N, T, generator=g) > 0.2 for m in DIMS}
    lab = {"speech": torch.randint(0, 2, (N, T), generator=g)} if labels else {}
    return MultimodalData(obs, mask=mask, labels=lab, lengths=torch.tensor([T, T - 2, T - 3]))


@pytest.mark.parametrize("gate", ["conditional", "markov"])
@pytest.mark.parametrize("weights", ["uniform", "gate"])
def test_agreement_is_the_op_on_the_experts(gate, weights):
    torch.manual_seed(0)
    model = GatedMixture(DIMS, gate=gate, context=1,
                         gate_inputs=("features", "disagreement")).double()
    data = _data()
    model.init_from_data(data)
    got = model.agreement(data, weights=weights, prior_strength=3.0)
    with torch.no_grad():
        post = model.posterior(data)
    avail = torch.stack([data.mask[m] for m in DIMS], -1) & data.time_mask[..., None]
    w = None if weights == "uniform" else 3 * post.gate_weights
    want = dawid_skene(post.expert_predictions, avail, data.time_mask, weights=w,
                       prior_strength=3.0)
    torch.testing.assert_close(got.posterior, want.posterior)
    torch.testing.assert_close(got.log_odds, want.log_odds)
    # no label is read
    again = model.agreement(_data(labels=False), weights=weights, prior_strength=3.0)
    torch.testing.assert_close(again.posterior, got.posterior)
    assert bool((got.posterior[1, 6:] == 0).all())


def test_agreement_options():
    model = GatedMixture(DIMS).double()
    with pytest.raises(ValueError, match="weights"):
        model.agreement(_data(), weights="gates")
    normal = GatedMixture(DIMS, head="normal", target="speech").double()
    with pytest.raises(ValueError, match="head"):
        normal.agreement(_data(labels=False))
