"""The fast HMM emission path: diagonal-Gaussian log-probs of all states as one centred matrix
product (``ops.gaussian.diagonal_gaussian_state_log_probs``) and the shared/private
product-space sum (``ops.hmm.shared_private_log_factor``) and its all-matrix-product form for
features linear in the parameters (``ops.hmm.shared_private_linear_log_factor``), against
torch.distributions, dense broadcasting and the previous implementation (float64, tight
tolerances)."""

import itertools
import math
import pathlib
import sys

import pytest
import torch

from mmpgm.ops.gaussian import (
    diagonal_gaussian_features,
    diagonal_gaussian_state_log_probs,
    diagonal_gaussian_weights,
)
from mmpgm.ops.hmm import emissions as emissions_module
from mmpgm.ops.hmm import shared_private_linear_log_factor, shared_private_log_factor

# the shared reference sits in tests/ops (test modules are imported with importlib)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _emission_reference import previous_log_prob  # noqa: E402

sys.path.pop(0)

pytestmark = pytest.mark.usefixtures("float64")


def oracle(x, loc, scale):
    """``torch.distributions.Normal`` per state: ``batch + state_shape``."""
    S = loc.shape[:-1]
    xb = x.reshape(x.shape[:-1] + (1,) * len(S) + x.shape[-1:])
    return torch.distributions.Normal(loc, scale).log_prob(xb).sum(-1)


def params(state_shape, D, seed, dtype=torch.float64, offset=0.0):
    g = torch.Generator().manual_seed(seed)
    loc = offset + torch.randn(state_shape + (D,), generator=g, dtype=dtype)
    scale = 0.5 + torch.rand(state_shape + (D,), generator=g, dtype=dtype)
    return loc, scale


# batch_shape, state_shape, D
SHAPES = [
    ((1,), (1, 1), 1),  # one frame, one state
    ((7,), (3, 2), 4),
    ((2, 1, 5), (2, 3), 3),  # T = 1 inside a batch
    ((4, 6), (3, 3), 6),
    ((3, 5), (4,), 2),  # any state_shape
]


@pytest.mark.parametrize("batch_shape,state_shape,D", SHAPES)
def test_state_log_probs_match_torch_distributions_and_the_previous_expansion(
    batch_shape, state_shape, D
):
    loc, scale = params(state_shape, D, seed=1)
    x = torch.randn(batch_shape + (D,), generator=torch.Generator().manual_seed(2))
    got = diagonal_gaussian_state_log_probs(x, loc, scale)
    assert got.shape == batch_shape + state_shape
    torch.testing.assert_close(got, oracle(x, loc, scale), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, previous_log_prob(x, loc, scale), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batch_shape,state_shape,D", SHAPES)
def test_mask_gives_exactly_zero_whatever_the_missing_frames_hold(batch_shape, state_shape, D):
    loc, scale = params(state_shape, D, seed=3)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(batch_shape + (D,), generator=g)
    mask = torch.rand(batch_shape, generator=g) < 0.6
    mask.view(-1)[0] = False
    x[~mask] = math.nan
    got = diagonal_gaussian_state_log_probs(x, loc, scale, mask)
    want = torch.where(
        mask.reshape(batch_shape + (1,) * len(state_shape)),
        oracle(torch.where(mask[..., None], x, 0.0), loc, scale),
        0.0,
    )
    assert bool(torch.isfinite(got).all())
    assert bool((got[~mask] == 0).all())
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_features_and_weights_reproduce_the_density_for_any_reference():
    loc, scale = params((2, 3), 4, seed=5)
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(6))
    for ref in (torch.zeros(4), loc.reshape(-1, 4).mean(0), torch.tensor([3.0, -1.0, 0.5, 2.0])):
        F = diagonal_gaussian_features(x, ref)
        W = diagonal_gaussian_weights(loc, scale, ref)
        assert F.shape == (9, 9) and W.shape == (9, 2, 3)
        got = (W.reshape(9, -1).T @ F).T.reshape(9, 2, 3)
        torch.testing.assert_close(got, oracle(x, loc, scale), rtol=1e-10, atol=1e-11)


def test_gradients_match_torch_distributions_and_pass_gradcheck():
    loc, scale = params((2, 2), 3, seed=7)
    g = torch.Generator().manual_seed(8)
    x = torch.randn(4, 3, 3, generator=g)
    mask = torch.tensor([[True, False, True], [True, True, True], [False, False, True], [True] * 3])
    w = torch.randn(4, 3, 2, 2, generator=g)
    grads = []
    for fn in (
        lambda lo, sc: diagonal_gaussian_state_log_probs(x, lo, sc, mask),
        lambda lo, sc: torch.where(mask[..., None, None], oracle(x, lo, sc), 0.0),
    ):
        lo, sc = loc.clone().requires_grad_(), scale.clone().requires_grad_()
        (fn(lo, sc) * w).sum().backward()
        grads.append((lo.grad, sc.grad))
    for a, b in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    lo, sc = loc.clone().requires_grad_(), scale.clone().requires_grad_()
    xs = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x_, lo_, sc_: diagonal_gaussian_state_log_probs(x_, lo_, sc_, mask),
        (xs, lo, sc),
        eps=1e-6,
        atol=1e-7,
        rtol=1e-6,
    )


@pytest.mark.parametrize("offset", [0.0, 100.0, 1e4])
def test_float32_with_a_large_offset_stays_accurate(offset):
    """Data at mean ``offset``, sd about 1, in float32: the centred expansion stays at the
    rounding level of the direct formula (measured max relative error 2.3e-7 at offset 100,
    2.9e-7 at 1e4; direct ``Normal.log_prob`` 2.1e-7); the previous, uncentred one lost
    2.5e-3 at offset 100 and 25 (relative) at 1e4."""
    loc, scale = params((3, 3), 6, seed=9, offset=offset)
    x = loc[1, 2] + scale[1, 2] * torch.randn(2000, 6, generator=torch.Generator().manual_seed(10))
    x32, loc32, scale32 = x.float(), loc.float(), scale.float()
    # the float64 density of the float32-rounded inputs: only the arithmetic is measured
    want = oracle(x32.double(), loc32.double(), scale32.double())

    def rel(v):
        return float(((v.double() - want).abs() / want.abs().clamp_min(1.0)).max())

    got = diagonal_gaussian_state_log_probs(x32, loc32, scale32)
    assert got.dtype == torch.float32
    assert rel(got) < 1e-6
    assert rel(got) < 3 * rel(oracle(x32, loc32, scale32))
    if offset >= 100:
        assert rel(previous_log_prob(x32, loc32, scale32)) > 1e-3  # the cancellation avoided


# ------------------------------------------------------------ shared/private product space
def broadcast_oracle(factors):
    K_s = factors[0].shape[-2]
    sizes = [f.shape[-1] for f in factors]
    lead = factors[0].shape[:-2]
    out = torch.zeros(lead + (K_s,) + tuple(sizes), dtype=factors[0].dtype)
    for ps in itertools.product(*[range(k) for k in sizes]):
        out[(..., slice(None)) + ps] = sum(f[..., :, p] for f, p in zip(factors, ps, strict=True))
    return out


@pytest.mark.parametrize(
    "lead,K_s,sizes",
    [
        ((1,), 1, (1,)),
        ((5,), 2, (3,)),
        ((2, 3), 3, (3, 2)),
        ((4, 1), 2, (2, 3, 4)),
        ((), 3, (2, 2)),
    ],
)
def test_shared_private_log_factor_matches_enumeration_with_gradients(lead, K_s, sizes):
    g = torch.Generator().manual_seed(11)
    factors = [torch.randn(lead + (K_s, k), generator=g, requires_grad=True) for k in sizes]
    got = shared_private_log_factor(factors)
    assert got.shape == lead + (K_s,) + sizes and got.is_contiguous()
    want = broadcast_oracle([f.detach() for f in factors])
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn(got.shape, generator=g)
    gr = torch.autograd.grad((got * w).sum(), factors)
    for f, gf in zip(factors, gr, strict=True):
        ref = torch.autograd.grad((broadcast_oracle_autograd(factors) * w).sum(), f)[0]
        torch.testing.assert_close(gf, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *fs: shared_private_log_factor(fs), tuple(factors))
    assert torch.autograd.gradgradcheck(lambda *fs: shared_private_log_factor(fs), tuple(factors))


def broadcast_oracle_autograd(factors):
    M = len(factors)
    total = 0
    for m, f in enumerate(factors):
        shape = list(f.shape[:-1]) + [1] * M
        shape[f.dim() - 1 + m] = f.shape[-1]
        total = total + f.reshape(shape)
    return total


def test_shared_private_log_factor_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="log_factors: expected at least one"):
        shared_private_log_factor([])
    with pytest.raises(ValueError, match=r"log_factors\[1\]: expected shape"):
        shared_private_log_factor([torch.zeros(4, 2, 3), torch.zeros(4, 3, 3)])
    with pytest.raises(ValueError, match=r"log_factors\[1\]: expected dtype"):
        shared_private_log_factor([torch.zeros(4, 2, 3), torch.zeros(4, 2, 3).float()])


def test_state_log_probs_reject_mismatched_shapes():
    loc, scale = params((2, 2), 3, seed=0)
    with pytest.raises(ValueError, match="x, loc, scale"):
        diagonal_gaussian_state_log_probs(torch.zeros(5, 2), loc, scale)
    with pytest.raises(ValueError, match="mask: expected shape"):
        diagonal_gaussian_state_log_probs(torch.zeros(5, 3), loc, scale, torch.ones(4, dtype=bool))


def test_features_without_gradient_match_the_autograd_form_into_a_buffer_too():
    """The no-gradient path writes rows of a buffer in place; it equals the broadcast form
    (taken when ``x`` requires a gradient), NaN in missing frames included."""
    g = torch.Generator().manual_seed(21)
    x = torch.randn(3, 5, 4, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.7
    x[~mask] = math.nan
    ref = torch.randn(4, generator=g)
    want = diagonal_gaussian_features(x.clone().requires_grad_(), ref, mask).detach()
    assert bool(torch.isfinite(want).all())
    got = diagonal_gaussian_features(x, ref, mask)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    buffer = torch.full((2 + 9 + 3, 15), math.nan)
    out = buffer[2:11]
    assert diagonal_gaussian_features(x, ref, mask, out=out) is out
    torch.testing.assert_close(out, want, rtol=0, atol=1e-15)
    assert bool(buffer[:2].isnan().all() and buffer[11:].isnan().all())  # nothing else written
    no_mask = diagonal_gaussian_features(x.nan_to_num(), ref)
    assert bool((no_mask[-1] == 1).all())
    with pytest.raises(ValueError, match="out: expected"):
        diagonal_gaussian_features(x, ref, mask, out=torch.zeros(9, 14))


def linear_oracle(features, weights):
    """Per-modality ``einsum`` then the broadcast sum into the product space (autograd)."""
    pairs = zip(features, weights, strict=True)
    per_modality = [torch.einsum("rf,rij->fij", f, w) for f, w in pairs]
    return broadcast_oracle_autograd(per_modality)


LINEAR_CASES = [  # frames, K_s, private sizes, feature dims
    (1, 1, (1,), (1,)),
    (5, 2, (3,), (3,)),
    (7, 3, (3, 2), (5, 2)),
    (4, 2, (2, 3, 4), (3, 1, 7)),
    (6, 1, (2, 2), (2, 2)),
]


@pytest.mark.parametrize("plan", ["one product", "two products"])
@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("F,K_s,sizes,dims", LINEAR_CASES)
def test_shared_private_linear_log_factor_matches_enumeration_with_gradients(
    monkeypatch, plan, stacked, F, K_s, sizes, dims
):
    ratio = math.inf if plan == "one product" else 0.0
    monkeypatch.setattr(emissions_module, "ONE_PRODUCT_MAX_FLOP_RATIO", ratio)
    selections = []
    original = emissions_module._selection
    monkeypatch.setattr(
        emissions_module, "_selection", lambda *a: selections.append(a) or original(*a)
    )
    g = torch.Generator().manual_seed(len(sizes) * 10 + F)
    features = [torch.randn(r, F, generator=g, requires_grad=True) for r in dims]
    weights = [
        torch.randn(r, K_s, k, generator=g, requires_grad=True)
        for r, k in zip(dims, sizes, strict=True)
    ]
    arg = torch.cat(features, 0) if stacked else features
    got = shared_private_linear_log_factor(arg, weights)
    assert got.shape == (F, K_s) + sizes and got.is_contiguous()
    # the plan asked for ran (one modality always takes the one-product plan)
    assert bool(selections) == (plan == "two products" and len(sizes) > 1)
    want = broadcast_oracle(
        [torch.einsum("rf,rij->fij", f, w).detach() for f, w in zip(features, weights, strict=True)]
    )
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    w = torch.randn(got.shape, generator=g)
    leaves = features + weights
    grads = torch.autograd.grad((got * w).sum(), leaves, allow_unused=True)
    refs = torch.autograd.grad((linear_oracle(features, weights) * w).sum(), leaves)
    for a, b in zip(grads, refs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    if F * K_s * math.prod(sizes) <= 60:
        assert torch.autograd.gradcheck(
            lambda *t: shared_private_linear_log_factor(t[: len(dims)], t[len(dims) :]),
            tuple(leaves),
        )


def test_shared_private_linear_log_factor_rejects_mismatched_inputs():
    f, w = torch.zeros(3, 5), torch.zeros(3, 2, 4)
    with pytest.raises(ValueError, match="features, weights: expected one"):
        shared_private_linear_log_factor([f], [w, w])
    with pytest.raises(ValueError, match="features, weights: expected one"):
        shared_private_linear_log_factor([], [])
    with pytest.raises(ValueError, match=r"weights\[1\]: expected shape \(R_1, 2, K_1\)"):
        shared_private_linear_log_factor([f, f], [w, torch.zeros(3, 3, 4)])
    with pytest.raises(ValueError, match=r"features\[1\]: expected shape \(3, 5\)"):
        shared_private_linear_log_factor([f, torch.zeros(3, 6)], [w, w])
    with pytest.raises(ValueError, match=r"features\[0\]: expected dtype"):
        shared_private_linear_log_factor([f.float()], [w])
    with pytest.raises(ValueError, match="features: expected a stacked"):
        shared_private_linear_log_factor(torch.zeros(5, 5), [w, w])
