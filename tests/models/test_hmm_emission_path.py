"""MultimodalHMM's emission factor on the fast path (one centred matrix product per diagonal
modality, masks inside it, the product-space sum of ops.hmm) against the previous path, values
and gradients, with masks, ragged lengths, T = 1 and mixed observation models (float64)."""

import math
import pathlib
import sys

import pytest
import torch

from mmpgm.data import MultimodalData
from mmpgm.models.hmm import MultimodalHMM
from mmpgm.observations.base import ObservationModel
from mmpgm.ops.hmm import factorial_log_likelihood

# the shared reference sits in tests/ops (test modules are imported with importlib)
sys.path.insert(0, str(pathlib.Path(__file__).parent.parent / "ops"))
from _emission_reference import previous_log_prob  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.usefixtures("float64")




def previous_log_emissions(model, data):
    """``MultimodalHMM.log_emissions`` as it was: per-modality log_prob of the filled data
    (previous expansion for diagonal emissions), masked by ``torch.where``, summed by
    broadcasting into the product space."""
    N, T, M = data.num_sequences, data.num_timesteps, len(model.modalities)
    total = None
    for i, m in enumerate(model.modalities):
        e = model.emissions[m]
        x = data.filled(m)
        if e.kind == "diag":
            lp = previous_log_prob(x, e.loc, e.scale)
        else:
            lp = e.log_prob(x)
        lp = torch.where(data.mask[m][..., None, None], lp, 0.0)
        shape = [N, T, lp.shape[-2]] + [1] * M
        shape[3 + i] = lp.shape[-1]
        total = lp.reshape(shape) if total is None else total + lp.reshape(shape)
    return total.expand((N, T) + model.chain_sizes)


@pytest.mark.parametrize(
    "emission,K_m,T",
    [
        ("diag", 2, 1),
        ("diag", {"a": 2, "b": 3}, 6),
        ({"a": "full", "b": "diag"}, 2, 5),
        ({"a": "diag", "b": "categorical"}, 3, 4),
    ],
)
def test_model_log_emissions_and_gradients_match_the_previous_path(emission, K_m, T):
    obs_dims = {"a": 3, "b": 2}
    model = MultimodalHMM(obs_dims, 2, K_m, emission=emission)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modalities:
            e = model.emissions[m]
            if e.kind == "diag":
                e.loc = 2 * torch.randn(e.loc.shape)
                e.scale = 0.5 + torch.rand(e.scale.shape)
    data, _ = model.sample(4, T, seed=3)
    obs = {m: v.clone() for m, v in data.obs.items()}
    if T > 2:
        obs["a"][0, 1:3] = math.nan  # a stretch of one modality missing
        obs["b"][2, 0] = math.nan
    data = model.check_data(MultimodalData(obs, lengths=[T, max(1, T - 2), T, max(1, T - 1)]))
    got = model.log_emissions(data)
    want = previous_log_emissions(model, data)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    params_ = [p for p in model.parameters() if p.requires_grad]

    def grads(log_emissions):
        chains = model._chains()
        init = [c.initial_probs for c in chains]
        trans = [c.transition_probs for c in chains]
        ll = factorial_log_likelihood(init, trans, log_emissions).sum()
        return torch.autograd.grad(ll, params_)

    g_new, g_old = grads(got), grads(want)
    for a, b in zip(g_new, g_old, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # excluded modalities leave their chain's axis broadcast, as before
    torch.testing.assert_close(
        model.log_emissions(data, exclude=("b",)),
        model.combine_log_factors({"a": model.modality_log_probs(data)["a"]}, {}, (4, T)),
        rtol=1e-12,
        atol=1e-12,
    )


@pytest.mark.parametrize("exclude", [(), ("b",), ("a", "c")])
@pytest.mark.parametrize("labelled", [False, True])
def test_all_matrix_product_path_equals_the_per_modality_path(monkeypatch, exclude, labelled):
    """Diagonal modalities take ``ops.hmm.shared_private_linear_log_factor``; values and
    gradients equal the per-modality log-probs summed by ``combine_log_factors``, with missing
    frames (NaN there), ragged lengths, excluded modalities and clamping labels."""
    import mmpgm.models.hmm.model as model_module

    calls = []
    original = model_module.ops.shared_private_linear_log_factor
    monkeypatch.setattr(
        model_module.ops,
        "shared_private_linear_log_factor",
        lambda *a: calls.append(1) or original(*a),
    )
    model = MultimodalHMM({"a": 3, "b": 2, "c": 4}, 3, {"a": 2, "b": 1, "c": 3})
    torch.manual_seed(1)
    with torch.no_grad():
        for m in model.modalities:
            e = model.emissions[m]
            e.loc = 2 * torch.randn(e.loc.shape)
            e.scale = 0.5 + torch.rand(e.scale.shape)
    data, states = model.sample(3, 5, seed=4)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["a"][0, 1:3] = math.nan
    obs["c"][2, 4] = math.nan
    labels = {}
    if labelled:
        lab = states["shared"].clone()
        lab[:, ::2] = -1
        labels = {"shared": lab}
    data = model.check_data(MultimodalData(obs, lengths=[5, 3, 4], labels=labels))
    got = model.log_emissions(data, exclude)
    assert calls, "the all-matrix-product path was not taken"
    N, T = 3, 5
    lps = model.modality_log_probs(data, exclude)
    want = model.combine_log_factors(lps, {}, (N, T))
    clamp = model._clamp_log_factor(data)
    if clamp is not None:
        want = want + clamp.reshape((N, T, 3, 1, 1, 1))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    params_ = [p for p in model.emissions.parameters() if p.requires_grad]
    weight = torch.randn(got.shape).masked_fill(~torch.isfinite(got), 0.0)

    def grads(t):
        return torch.autograd.grad(
            (t.masked_fill(~torch.isfinite(t), 0.0) * weight).sum(), params_, allow_unused=True
        )

    for a, b in zip(grads(got), grads(want), strict=True):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_checked_data_passes_through_until_a_tensor_changes(monkeypatch):
    """A MultimodalData the model checked (no move, no cast) is not checked again on the next
    call; writing into one of its tensors in place, or replacing one, checks it again."""
    model = MultimodalHMM({"a": 2}, 2, 1)
    data, _ = model.sample(2, 4, seed=0)
    checks = []
    original = MultimodalHMM.check_data
    monkeypatch.setattr(
        MultimodalHMM, "check_data", lambda self, d: checks.append(1) or original(self, d)
    )
    model.log_likelihood(data)
    model.log_likelihood(data)
    assert len(checks) == 1
    data.obs["a"][0, 1, 0] = 1e300  # its square overflows: must be caught, not skipped
    with pytest.raises(ValueError, match=r"data.obs\['a'\]: expected observed values"):
        model.log_likelihood(data)
    assert len(checks) == 2
    data.obs["a"] = torch.zeros(2, 4, 2)
    model.log_likelihood(data)
    assert len(checks) == 3
    model.to(torch.float32)
    model.log_likelihood(data)  # another dtype: checked (and cast) again
    assert len(checks) == 4


def test_a_subclass_that_changes_log_prob_keeps_its_own_density():
    """``masked_log_prob`` takes the fast path only for the diagonal Gaussian's own log_prob."""
    from mmpgm.observations.gaussian import DiagonalGaussianObservation

    class Shifted(DiagonalGaussianObservation):
        def log_prob(self, x):
            return super().log_prob(x) + 1.0

    e = Shifted(2, 2, 3)
    x = torch.randn(5, 2)
    mask = torch.tensor([True, False, True, True, False])
    got = e.masked_log_prob(x, mask)
    want = ObservationModel.masked_log_prob(e, x, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert bool((got[mask] != DiagonalGaussianObservation.log_prob(e, x)[mask]).all())
