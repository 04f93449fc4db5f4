"""Per-sequence Dawid-Skene EM (mmpgm.ops.agreement): recovers the experts' reliabilities
without labels, ignores an expert that disagrees, batched == looped, EM raises the likelihood,
and validates its arguments."""

import pytest
import torch

from mmpgm.ops.agreement import dawid_skene


def _votes(gen, N, T, sens, spec, prior=0.6):
    """Hard votes of experts with the given sensitivities / specificities; labels ``(N, T)``."""
    y = (torch.rand(N, T, generator=gen, dtype=torch.float64) < prior).double()
    cols = []
    for s, c in zip(sens, spec, strict=True):
        u = torch.rand(N, T, generator=gen, dtype=torch.float64)
        cols.append(torch.where(y == 1, (u < s).double(), (u >= c).double()))
    return torch.stack(cols, -1), y


def test_recovers_reliabilities_and_beats_the_equal_weight_mix():
    gen = torch.Generator().manual_seed(0)
    # three informative experts (Dawid-Skene needs three conditionally independent views to
    # tell which of two disagreeing experts is right) and a fourth about chance
    sens, spec = (0.92, 0.8, 0.75, 0.55), (0.9, 0.75, 0.7, 0.45)
    v, y = _votes(gen, 4, 2000, sens, spec)
    post = dawid_skene(v, prior_strength=0.0)
    # 2000 frames per sequence: the binomial standard error of a rate near 0.8 over the
    # ~1200 positive / ~800 negative frames is ~0.012-0.015; 0.05 is over three of them
    assert torch.allclose(post.sensitivity, torch.tensor(sens, dtype=v.dtype).expand(4, 4),
                          atol=0.05)
    assert torch.allclose(post.specificity, torch.tensor(spec, dtype=v.dtype).expand(4, 4),
                          atol=0.05)
    acc = ((post.posterior > 0.5).double() == y).double().mean()
    # the Bayes rule with the true parameters (what EM estimates) and the equal-weight vote
    s, c = torch.tensor(sens, dtype=v.dtype), torch.tensor(spec, dtype=v.dtype)
    lo = (v * torch.log(s / (1 - c)) + (1 - v) * torch.log((1 - s) / c)).sum(-1)
    oracle = (((lo + torch.log(torch.tensor(1.5))) > 0).double() == y).double().mean()
    uniform = ((v.mean(-1) > 0.5).double() == y).double().mean()
    # 8000 frames: the accuracy's standard error is ~0.003; EM's estimated parameters cost
    # less than one point against the oracle, the equal-weight vote many more
    assert acc >= oracle - 0.01 and acc > uniform + 0.05
    # the near-chance expert carries little weight
    assert post.log_odds[..., 3].abs().mean() < 0.2 * post.log_odds[..., 0].abs().mean()


def test_an_always_on_expert_counts_only_its_zero_votes():
    gen = torch.Generator().manual_seed(1)
    v, y = _votes(gen, 2, 1500, (0.98, 0.85, 0.8), (0.1, 0.85, 0.8))
    post = dawid_skene(v, prior_strength=0.0)
    assert bool((post.specificity[:, 0] < 0.2).all())
    lam = post.log_odds[..., 0]
    assert lam[v[..., 0] == 1].abs().mean() < 0.3 * lam[v[..., 0] == 0].abs().mean()


def test_batched_equals_a_loop_and_respects_masks():
    gen = torch.Generator().manual_seed(2)
    v, _ = _votes(gen, 3, 200, (0.9, 0.8, 0.7), (0.85, 0.8, 0.6))
    v = 0.8 * v + 0.1  # soft votes
    avail = torch.rand(3, 200, 3, generator=gen) > 0.2
    frames = torch.ones(3, 200, dtype=torch.bool)
    frames[1, 150:] = False
    batched = dawid_skene(v, avail, frames, tol=0.0, num_iters=60)
    for n in range(3):
        one = dawid_skene(v[n : n + 1], avail[n : n + 1], frames[n : n + 1], tol=0.0,
                          num_iters=60)
        torch.testing.assert_close(batched.posterior[n], one.posterior[0], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(batched.sensitivity[n], one.sensitivity[0])
    # frames outside the sequence and unavailable votes change nothing
    v2 = v.clone()
    v2[1, 150:] = 1.0
    v2[~avail] = 0.0
    again = dawid_skene(v2, avail, frames, tol=0.0, num_iters=60)
    torch.testing.assert_close(again.posterior, batched.posterior, rtol=1e-10, atol=1e-12)
    assert bool((batched.posterior[1, 150:] == 0).all())
    assert bool((batched.log_odds[~avail] == 0).all())


def test_em_does_not_lower_the_likelihood():
    gen = torch.Generator().manual_seed(3)
    v, _ = _votes(gen, 2, 300, (0.9, 0.75, 0.6), (0.8, 0.7, 0.6))
    v = (0.7 * v + 0.3 * torch.rand(v.shape, generator=gen, dtype=v.dtype)).clamp(0, 1)
    lls = [dawid_skene(v, prior_strength=0.0, num_iters=k, tol=0.0).log_likelihood
           for k in (1, 2, 5, 20, 80)]
    for a, b in zip(lls, lls[1:], strict=False):
        assert bool((b >= a - 1e-9).all())


def test_weights_zero_removes_an_expert():
    gen = torch.Generator().manual_seed(4)
    v, _ = _votes(gen, 2, 300, (0.9, 0.8, 0.7), (0.85, 0.8, 0.6))
    w = torch.ones_like(v)
    w[..., 2] = 0.0
    a = dawid_skene(v, weights=w, tol=0.0, num_iters=50)
    b = dawid_skene(v[..., :2], tol=0.0, num_iters=50)
    torch.testing.assert_close(a.posterior, b.posterior)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(probs=torch.zeros(2, 3)), "probs"),
        (dict(probs=torch.zeros(2, 3, 1)), "probs"),
        (dict(probs=torch.full((1, 3, 2), 1.5)), "probs"),
        (dict(probs=torch.zeros(1, 3, 2), available=torch.ones(1, 3, 3, dtype=torch.bool)),
         "available"),
        (dict(probs=torch.zeros(1, 3, 2), frames=torch.ones(1, 4, dtype=torch.bool)), "frames"),
        (dict(probs=torch.zeros(1, 3, 2), weights=-torch.ones(1, 3, 2)), "weights"),
        (dict(probs=torch.zeros(1, 3, 2), num_iters=0), "num_iters"),
        (dict(probs=torch.zeros(1, 3, 2), prior_strength=-1.0), "prior_strength"),
        (dict(probs=torch.zeros(1, 3, 2), prior_accuracy=1.0), "prior_accuracy"),
    ],
)
def test_argument_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        dawid_skene(**kw)
