"""Exact mixture ops against brute-force enumeration over all expert paths (float64)."""

import itertools

import pytest
import torch

from mmpgm.ops import mixture as ops


def _random_markov(N, T, M, seed, masked_experts=False):
    g = torch.Generator().manual_seed(seed)
    kw = dict(dtype=torch.float64, generator=g)
    init_logits = torch.randn(N, M, **kw)
    trans_logits = torch.randn(N, T, M, M, **kw)
    avail = torch.ones(N, T, M, dtype=torch.bool)
    if masked_experts:
        avail = torch.rand(N, T, M, generator=g) > 0.4
        avail[0, min(1, T - 1)] = False  # a frame with no expert: all allowed, no evidence
    log_init = ops.masked_log_weights(init_logits, avail[:, 0])
    log_trans = ops.masked_log_weights(trans_logits, avail[:, :, None, :])
    lc = torch.randn(N, T, M, **kw) - 1.0
    mask = torch.rand(N, T, generator=g) > 0.25
    mask &= avail.any(-1)
    return log_init, log_trans, lc, mask


def _brute(log_init, log_trans, lc, mask):
    """All M^T paths: joint log p(y, c) per path, shape (N, M^T), and the paths."""
    N, T, M = lc.shape
    lc = torch.where(mask[..., None], lc, torch.zeros_like(lc))
    paths = list(itertools.product(range(M), repeat=T))
    scores = []
    for p in paths:
        s = log_init[:, p[0]] + lc[:, 0, p[0]]
        for t in range(1, T):
            s = s + log_trans[:, t, p[t - 1], p[t]] + lc[:, t, p[t]]
        scores.append(s)
    return torch.stack(scores, -1), torch.tensor(paths)


@pytest.mark.parametrize("T,M", [(1, 2), (3, 2), (4, 3), (2, 3)])
@pytest.mark.parametrize("masked", [False, True])
def test_markov_forward_equals_brute_force(T, M, masked):
    args = _random_markov(3, T, M, seed=T * 10 + M, masked_experts=masked)
    scores, paths = _brute(*args)
    ref_ll = torch.logsumexp(scores, -1)
    torch.testing.assert_close(ops.markov_log_likelihood(*args), ref_ll, rtol=1e-12, atol=1e-12)
    post = torch.softmax(scores, -1)  # (N, P)
    ref_marg = torch.stack(
        [torch.stack([post[:, paths[:, t] == k].sum(-1) for k in range(M)], -1) for t in range(T)],
        1,
    )
    torch.testing.assert_close(ops.markov_smooth(*args), ref_marg, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ops.markov_viterbi(*args), paths[scores.argmax(-1)], rtol=0, atol=0)
    # filtered at the last frame equals smoothed at the last frame
    fw = ops.markov_forward(*args)
    torch.testing.assert_close(fw.filtered[:, -1], ref_marg[:, -1], rtol=1e-10, atol=1e-12)
    # prior marginals: brute force with no evidence
    log_init, log_trans, lc, mask = args
    s0, _ = _brute(log_init, log_trans, torch.zeros_like(lc), torch.zeros_like(mask))
    p0 = torch.softmax(s0, -1)
    ref_prior = torch.stack(
        [torch.stack([p0[:, paths[:, t] == k].sum(-1) for k in range(M)], -1) for t in range(T)], 1
    )
    torch.testing.assert_close(
        ops.markov_prior_marginals(log_init, log_trans), ref_prior, rtol=1e-10, atol=1e-12
    )


def test_markov_filtered_equals_brute_force_on_prefixes():
    args = _random_markov(2, 4, 3, seed=7)
    fw = ops.markov_forward(*args)
    for t in range(4):
        pre = [args[0], args[1][:, : t + 1], args[2][:, : t + 1], args[3][:, : t + 1]]
        scores, paths = _brute(*pre)
        post = torch.softmax(scores, -1)
        ref = torch.stack([post[:, paths[:, t] == k].sum(-1) for k in range(3)], -1)
        torch.testing.assert_close(fw.filtered[:, t], ref, rtol=1e-10, atol=1e-12)


def test_markov_samples_follow_posterior():
    args = _random_markov(1, 3, 2, seed=3)
    scores, paths = _brute(*args)
    post = torch.softmax(scores, -1)[0]
    draws = ops.markov_sample(*args, num_samples=20000, generator=torch.Generator().manual_seed(0))[
        :, 0
    ]
    idx = (draws * torch.tensor([4, 2, 1])).sum(-1)  # path index in itertools.product order
    freq = torch.bincount(idx, minlength=8).double() / 20000
    # 20000 draws: binomial sd <= 0.0036; 5 sd
    torch.testing.assert_close(freq, post, rtol=0, atol=0.018)


def test_conditional_mixture_equals_brute_force():
    g = torch.Generator().manual_seed(1)
    N, T, M = 2, 3, 3
    avail = torch.rand(N, T, M, generator=g) > 0.3
    lw = ops.masked_log_weights(torch.randn(N, T, M, dtype=torch.float64, generator=g), avail)
    lc = torch.randn(N, T, M, dtype=torch.float64, generator=g)
    mask = avail.any(-1) & (torch.rand(N, T, generator=g) > 0.2)
    # conditional gate = Markov chain whose transition rows all equal the frame's weights
    log_trans = lw[:, :, None, :].expand(N, T, M, M)
    scores, _ = _brute(lw[:, 0], log_trans, lc, mask)
    torch.testing.assert_close(
        ops.mixture_log_likelihood(lw, lc, mask),
        torch.logsumexp(scores, -1),
        rtol=1e-12,
        atol=1e-12,
    )
    r = ops.mixture_responsibilities(lw, lc, mask)
    torch.testing.assert_close(r.sum(-1), torch.ones(N, T, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        ops.markov_smooth(lw[:, 0], log_trans, lc, mask), r, rtol=1e-10, atol=1e-12
    )


def test_masked_weights_exactly_zero_and_finite_gradients():
    logits = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    avail = torch.ones(2, 5, 3, dtype=torch.bool)
    avail[:, 2, 1] = False
    avail[1, 3] = False  # nothing available: all allowed
    lw = ops.masked_log_weights(logits, avail)
    w = lw.exp()
    assert bool((w[:, 2, 1] == 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(w[1, 3], torch.softmax(logits[1, 3], -1), rtol=1e-12, atol=0)
    lc = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = avail.any(-1)
    log_trans = lw[:, :, None, :].expand(2, 5, 3, 3)
    total = (
        ops.mixture_log_likelihood(lw, lc, mask).sum()
        + ops.markov_log_likelihood(lw[:, 0], log_trans, lc, mask).sum()
    )
    total.backward()
    assert bool(torch.isfinite(logits.grad).all())
    assert bool((logits.grad[:, 2, 1] == 0).all())


def test_bad_shapes():
    log_init, log_trans, lc, mask = _random_markov(2, 3, 2, seed=0)
    with pytest.raises(ValueError, match="log_transition"):
        ops.markov_log_likelihood(log_init, log_trans[:, :2], lc, mask)
    with pytest.raises(ValueError, match="log_initial"):
        ops.markov_log_likelihood(log_init[:1], log_trans, lc, mask)
    with pytest.raises(ValueError, match="mask"):
        ops.mixture_log_likelihood(lc, lc, mask[:, :2])
    with pytest.raises(ValueError, match="log_component"):
        ops.mixture_log_likelihood(lc[0], lc[0])
