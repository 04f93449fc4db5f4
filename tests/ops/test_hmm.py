"""Factorial HMM ops against brute-force enumeration over all joint paths (float64)."""

import itertools
import math

import pytest
import torch

from mmpgm.ops.hmm import (
    chain_marginals,
    factorial_forward,
    factorial_log_likelihood,
    factorial_sample,
    factorial_smooth,
    factorial_viterbi,
)

pytestmark = pytest.mark.usefixtures("float64")


def random_params(sizes, seed, zero_prob=False):
    g = torch.Generator().manual_seed(seed)
    init = [torch.rand(k, generator=g).add(0.1) for k in sizes]
    trans = [torch.rand(k, k, generator=g).add(0.05) for k in sizes]
    if zero_prob and sizes[0] > 1:
        trans[0][0, -1] = 0.0
    init = [p / p.sum() for p in init]
    trans = [a / a.sum(-1, keepdim=True) for a in trans]
    return init, trans


def random_log_emissions(batch, T, sizes, seed, mask_frames=None):
    g = torch.Generator().manual_seed(seed + 100)
    logE = 3.0 * torch.randn((batch, T) + tuple(sizes), generator=g)
    if mask_frames is not None:  # (batch, T) bool: frames with no observation
        logE = torch.where(mask_frames.reshape(batch, T, *([1] * len(sizes))), 0.0, logE)
    return logE


def brute_force(init, trans, logE):
    """Enumerate all joint paths of one sequence: logZ, path log-joint table."""
    sizes = [p.shape[0] for p in init]
    T = logE.shape[0]
    states = list(itertools.product(*[range(k) for k in sizes]))
    paths = list(itertools.product(range(len(states)), repeat=T))
    logp = torch.empty(len(paths))
    for n, path in enumerate(paths):
        lp = 0.0
        for t, si in enumerate(path):
            z = states[si]
            if t == 0:
                lp += sum(
                    math.log(init[c][z[c]]) if init[c][z[c]] > 0 else -math.inf
                    for c in range(len(sizes))
                )
            else:
                zp = states[path[t - 1]]
                for c in range(len(sizes)):
                    a = trans[c][zp[c], z[c]]
                    lp += math.log(a) if a > 0 else -math.inf
            lp += float(logE[(t,) + z])
        logp[n] = lp
    return states, paths, logp


SHAPES = [
    # (sizes, T, batch)
    ((2,), 1, 1),
    ((3,), 4, 2),
    ((2, 2), 1, 3),
    ((2, 3), 3, 2),
    ((2, 1, 2), 3, 1),
    ((3, 2), 4, 1),
]


@pytest.mark.parametrize("transition", ["dense", "chainwise"])
@pytest.mark.parametrize("sizes,T,batch", SHAPES)
def test_against_brute_force(sizes, T, batch, transition):
    init, trans = random_params(sizes, seed=T * 7 + batch, zero_prob=True)
    mask = torch.zeros(batch, T, dtype=torch.bool)
    if T > 2:
        mask[0, 1:3] = True  # a stretch with nothing observed
    logE = random_log_emissions(batch, T, sizes, seed=len(sizes), mask_frames=mask)
    sm = factorial_smooth(init, trans, logE, transition=transition)
    fw = factorial_forward(init, trans, logE, transition=transition)
    vit = factorial_viterbi(init, trans, logE, transition=transition)
    C = len(sizes)
    for b in range(batch):
        states, paths, logp = brute_force(init, trans, logE[b])
        logZ = torch.logsumexp(logp, 0)
        torch.testing.assert_close(sm.log_likelihood[b], logZ, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(fw.log_likelihood[b], logZ, rtol=1e-10, atol=1e-10)
        post = torch.exp(logp - logZ)
        marg = torch.zeros((T,) + tuple(sizes))
        init_counts = [torch.zeros(k) for k in sizes]
        trans_counts = [torch.zeros(k, k) for k in sizes]
        for n, path in enumerate(paths):
            for t, si in enumerate(path):
                marg[(t,) + states[si]] += post[n]
                if t > 0:
                    for c in range(C):
                        trans_counts[c][states[path[t - 1]][c], states[si][c]] += post[n]
            for c in range(C):
                init_counts[c][states[path[0]][c]] += post[n]
        torch.testing.assert_close(sm.marginals[b], marg, rtol=1e-9, atol=1e-12)
        # filtered at t = smoothed marginal of the prefix model
        for t in range(T):
            _, pp, lp = brute_force(init, trans, logE[b, : t + 1])
            filt = torch.zeros(tuple(sizes))
            pz = torch.exp(lp - torch.logsumexp(lp, 0))
            for n, path in enumerate(pp):
                filt[states[path[-1]]] += pz[n]
            torch.testing.assert_close(fw.filtered[b, t], filt, rtol=1e-9, atol=1e-12)
        best = int(torch.argmax(logp))
        torch.testing.assert_close(vit.log_prob[b], logp[best], rtol=1e-10, atol=1e-10)
        # the returned path attains the maximum (ties between paths are possible on masked frames)
        ours = tuple(states.index(tuple(z)) for z in vit.path[b].tolist())
        torch.testing.assert_close(logp[paths.index(ours)], logp[best], rtol=1e-12, atol=1e-12)
        if batch == 1:
            for c in range(C):
                torch.testing.assert_close(
                    sm.initial_counts[c], init_counts[c], rtol=1e-9, atol=1e-12
                )
                torch.testing.assert_close(
                    sm.transition_counts[c], trans_counts[c], rtol=1e-9, atol=1e-12
                )


@pytest.mark.parametrize("uniform", [True, False])
@pytest.mark.parametrize("transition", ["dense", "chainwise"])
def test_gradients_match_autograd_of_naive_forward(transition, uniform):
    sizes, T, batch = (2, 3, 2), 5, 3
    init, trans = random_params(sizes, seed=3)
    logE = random_log_emissions(batch, T, sizes, seed=4)
    leaves = [p.clone().requires_grad_() for p in init + trans] + [logE.clone().requires_grad_()]
    C = len(sizes)
    # the usual .sum().backward() (uniform weights) and a weighted sum
    w = torch.full((3,), 0.7) if uniform else torch.tensor([0.5, -1.0, 2.0])
    (
        factorial_log_likelihood(leaves[:C], leaves[C : 2 * C], leaves[-1], transition=transition)
        * w
    ).sum().backward()
    ours = [x.grad for x in leaves]

    leaves2 = [p.clone().requires_grad_() for p in init + trans] + [logE.clone().requires_grad_()]
    ini, tr, le = leaves2[:C], leaves2[C : 2 * C], leaves2[-1]
    pi = ini[0]
    A = tr[0]
    for c in range(1, C):
        pi = torch.kron(pi, ini[c])
        A = torch.kron(A, tr[c])
    le_flat = le.reshape(batch, T, -1)
    la = pi.log() + le_flat[:, 0]
    for t in range(1, T):
        la = torch.logsumexp(la[:, :, None] + A.log(), 1) + le_flat[:, t]
    (torch.logsumexp(la, -1) * w).sum().backward()
    for a, b in zip(ours, [x.grad for x in leaves2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_gradient_is_smoothed_marginal_and_chain_marginals_sum():
    sizes = (2, 3)
    init, trans = random_params(sizes, seed=5)
    logE = random_log_emissions(2, 4, sizes, seed=6).requires_grad_()
    factorial_log_likelihood(init, trans, logE).sum().backward()
    sm = factorial_smooth(init, trans, logE.detach())
    torch.testing.assert_close(logE.grad, sm.marginals, rtol=1e-10, atol=1e-12)
    for m in chain_marginals(sm.marginals, 2):
        torch.testing.assert_close(m.sum(-1), torch.ones(2, 4), rtol=0, atol=1e-12)


def test_dense_and_factored_agree_at_moderate_size():
    sizes, T, batch = (3, 4, 2), 20, 5
    init, trans = random_params(sizes, seed=8)
    logE = random_log_emissions(batch, T, sizes, seed=9)
    a = factorial_smooth(init, trans, logE, transition="dense")
    b = factorial_smooth(init, trans, logE, transition="chainwise")
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(a.marginals, b.marginals, rtol=1e-9, atol=1e-12)
    va = factorial_viterbi(init, trans, logE, transition="dense")
    vb = factorial_viterbi(init, trans, logE, transition="chainwise")
    assert torch.equal(va.path, vb.path)


def test_batch_equals_loop_and_batch_shape():
    sizes = (2, 2)
    init, trans = random_params(sizes, seed=10)
    logE = random_log_emissions(6, 5, sizes, seed=11).reshape(2, 3, 5, 2, 2)
    ll = factorial_log_likelihood(init, trans, logE)
    assert ll.shape == (2, 3)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(
                ll[i, j], factorial_log_likelihood(init, trans, logE[i, j]), rtol=1e-12, atol=1e-12
            )
    assert factorial_viterbi(init, trans, logE).path.shape == (2, 3, 5, 2)
    assert factorial_sample(init, trans, logE, 4).shape == (4, 2, 3, 5, 2)


def test_padding_frames_contribute_nothing():
    sizes = (2, 3)
    init, trans = random_params(sizes, seed=12)
    logE = random_log_emissions(1, 6, sizes, seed=13)
    padded = torch.cat([logE, torch.zeros((1, 4) + sizes)], 1)
    torch.testing.assert_close(
        factorial_log_likelihood(init, trans, padded),
        factorial_log_likelihood(init, trans, logE),
        rtol=1e-12,
        atol=1e-12,
    )
    a = factorial_smooth(init, trans, padded).marginals[:, :6]
    torch.testing.assert_close(
        a, factorial_smooth(init, trans, logE).marginals, rtol=1e-10, atol=1e-12
    )


@pytest.mark.parametrize("transition", ["dense", "chainwise"])
def test_ffbs_matches_exact_path_distribution(transition):
    """Exact path frequencies: chi-square over all joint paths at a tiny size."""
    sizes, T = (2, 2), 3
    init, trans = random_params(sizes, seed=14)
    logE = random_log_emissions(1, T, sizes, seed=15) * 0.5
    states, paths, logp = brute_force(init, trans, logE[0])
    probs = torch.exp(logp - torch.logsumexp(logp, 0))
    S = 20000
    g = torch.Generator().manual_seed(0)
    samples = factorial_sample(init, trans, logE, S, generator=g, transition=transition)[
        :, 0
    ]  # (S, T, C)
    index = {tuple(st): i for i, st in enumerate(states)}
    path_index = {p: n for n, p in enumerate(paths)}
    counts = torch.zeros(len(paths))
    for s in samples.tolist():
        counts[path_index[tuple(index[tuple(z)] for z in s)]] += 1
    expected = probs * S
    keep = expected > 5
    chi2 = (((counts - expected) ** 2) / expected)[keep].sum()
    dof = int(keep.sum()) - 1
    # chi-square 99.9% quantile ~ dof + 3.1 sqrt(2 dof) + 10 (Wilson-Hilferty is tighter; this
    # loose bound keeps the false-failure rate below 1e-3 while a wrong sampler fails by orders)
    assert chi2 < dof + 3.1 * math.sqrt(2 * dof) + 10, (float(chi2), dof)
    assert counts[~keep].sum() < 5 * max(1, int((~keep).sum()))


def test_bad_input_raises():
    init, trans = random_params((2, 3), seed=0)
    with pytest.raises(ValueError, match="log_emissions"):
        factorial_log_likelihood(init, trans, torch.zeros(1, 4, 3, 2))
    with pytest.raises(ValueError, match="transition_probs"):
        factorial_log_likelihood(init, [trans[0], trans[0]], torch.zeros(1, 4, 2, 3))
    with pytest.raises(ValueError, match="num_samples"):
        factorial_sample(init, trans, torch.zeros(1, 4, 2, 3), 0)


def test_float32_long_sequence_is_finite():
    sizes = (3, 2)
    init, trans = random_params(sizes, seed=1)
    logE = random_log_emissions(2, 5000, sizes, seed=2)
    ll64 = factorial_log_likelihood(init, trans, logE)
    ll32 = factorial_log_likelihood(
        [p.float() for p in init], [a.float() for a in trans], logE.float()
    )
    assert torch.isfinite(ll32).all()
    # per-frame rounding of float32 (~6e-8 relative) accumulates over 5000 frames
    torch.testing.assert_close(ll32.double(), ll64, rtol=1e-5, atol=0)
