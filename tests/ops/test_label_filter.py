"""Two-state label filter (mmpgm.ops.label_filter): the forward filter equals brute-force
enumeration of all label paths, frames outside a sequence are skipped, the transition counts
are those of the labels, and the arguments are validated."""

import itertools

import pytest
import torch

from mmpgm.ops.label_filter import filter_binary_posterior, label_transitions


def _brute(p, A, prior, t):
    """p(y_t = 1 | x_<=t) by summing over all 2^(t+1) label paths of the chain whose emissions
    are the scaled likelihoods p(y | x) / p(y)."""
    tot = {0: 0.0, 1: 0.0}
    for path in itertools.product((0, 1), repeat=t + 1):
        w = prior if path[0] == 1 else 1 - prior
        for s in range(1, t + 1):
            w *= float(A[path[s - 1], path[s]])
        for s in range(t + 1):
            w *= float(p[s]) / prior if path[s] == 1 else (1 - float(p[s])) / (1 - prior)
        tot[path[-1]] += w
    return tot[1] / (tot[0] + tot[1])


def test_filter_equals_enumeration_and_skips_outside_frames():
    gen = torch.Generator().manual_seed(0)
    p = torch.rand(2, 6, generator=gen, dtype=torch.float64)
    A = torch.tensor([[0.8, 0.2], [0.1, 0.9]], dtype=torch.float64)
    out = filter_binary_posterior(p, A, 0.6)
    for n in range(2):
        for t in range(6):
            assert abs(float(out[n, t]) - _brute(p[n], A, 0.6, t)) < 1e-10
    torch.testing.assert_close(out[:, 0], p[:, 0])
    frames = torch.ones(2, 6, dtype=torch.bool)
    frames[1, 5:] = False
    gap = filter_binary_posterior(p, A, 0.6, frames)
    torch.testing.assert_close(gap[:, :5], out[:, :5])
    assert bool((gap[1, 5:] == 0).all())
    # an identity chain with the classifier's prior at 1/2 and a flat chain change nothing
    flat = torch.full((2, 2), 0.5, dtype=torch.float64)
    torch.testing.assert_close(filter_binary_posterior(p, flat, 0.5), p)


def test_label_transitions_counts():
    y = torch.tensor([[0, 0, 1, 1, 1, -1, 1], [1, 1, 0, 0, 0, 0, 0]])
    frames = torch.ones(2, 7, dtype=torch.bool)
    frames[1, 6] = False
    A, prior = label_transitions(y, frames, pseudo_count=0.0)
    # pairs: row 0: 00, 01, 11, 11 ; row 1: 11, 10, 00, 00, 00
    torch.testing.assert_close(A, torch.tensor([[4 / 5, 1 / 5], [1 / 4, 3 / 4]],
                                               dtype=torch.float64))
    assert prior == pytest.approx(6 / 12)


@pytest.mark.parametrize(
    "fn, kw, match",
    [
        (filter_binary_posterior, dict(posterior=torch.rand(3), transition=torch.eye(2),
                                       prior=0.5), "posterior"),
        (filter_binary_posterior, dict(posterior=torch.rand(1, 3), transition=torch.ones(2, 2),
                                       prior=0.5), "transition"),
        (filter_binary_posterior, dict(posterior=torch.rand(1, 3), transition=torch.eye(2),
                                       prior=1.0), "prior"),
        (filter_binary_posterior, dict(posterior=torch.rand(1, 3), transition=torch.eye(2),
                                       prior=0.5, frames=torch.ones(1, 2, dtype=torch.bool)),
         "frames"),
        (label_transitions, dict(labels=torch.zeros(3)), "labels"),
        (label_transitions, dict(labels=-torch.ones(1, 3)), "labels"),
        (label_transitions, dict(labels=torch.zeros(1, 3), pseudo_count=-1.0), "pseudo_count"),
    ],
)
def test_argument_errors(fn, kw, match):
    with pytest.raises(ValueError, match=match):
        fn(**kw)
