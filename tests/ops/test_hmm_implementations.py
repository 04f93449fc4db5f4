"""One table over every transition implementation of :mod:`mmpgm.ops.hmm` (float64).

Each row of ``CASES`` is (chain sizes, ``transition=`` keywords, the chain grouping those keywords
must produce, T, batch shape). At tiny sizes every row is checked against a brute-force oracle
that enumerates all joint paths (and whose autograd gives the reference gradients); at sizes
(4, 4, 4, 2), where enumeration is too big, against ``transition="dense"``. Every test below runs
over the whole table: log-likelihood and gradients, forward (filtered and predicted), smoothing
(marginals and expected counts), the streaming filter step, Viterbi, and FFBS samples.
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import NamedTuple

import pytest
import torch

from mmpgm.ops.hmm import (
    factorial_filter_step,
    factorial_forward,
    factorial_log_likelihood,
    factorial_sample,
    factorial_smooth,
    factorial_viterbi,
    transition_groups,
)

DTYPE = torch.float64
NUM_SAMPLES = 20000


class Case(NamedTuple):
    sizes: tuple
    kwargs: dict  # transition= (and max_group_states=) for every routine
    groups: list  # the grouping of the sum-product routines those keywords must produce
    T: int
    batch: tuple
    oracle: bool  # True: brute force; False: against transition="dense"


# implementation name -> (keywords, expected grouping), per chain sizes
TINY_IMPLS = {
    (2, 3, 2): {
        "dense": ({"transition": "dense"}, [[0, 1, 2]]),
        "chainwise": ({"transition": "chainwise"}, [[0], [1], [2]]),
        "grouped6": ({"transition": "grouped", "max_group_states": 6}, [[0, 1], [2]]),
        "auto": ({}, [[0, 1, 2]]),
    },
    (2, 2, 2, 2): {
        "dense": ({"transition": "dense"}, [[0, 1, 2, 3]]),
        "chainwise": ({"transition": "chainwise"}, [[0], [1], [2], [3]]),
        # two multi-chain groups
        "grouped4": ({"transition": "grouped", "max_group_states": 4}, [[0, 1], [2, 3]]),
        "grouped8": ({"transition": "grouped", "max_group_states": 8}, [[0, 1, 2], [3]]),
        "auto": ({"transition": "auto"}, [[0, 1, 2, 3]]),
    },
}
LARGE_SIZES = (4, 4, 4, 2)  # P = 128: 128**5 paths at T = 5, so the reference is "dense"
LARGE_IMPLS = {
    "chainwise": ({"transition": "chainwise"}, [[0], [1], [2], [3]]),
    # the default grouping: the A2 benchmark size (4, 4, 4, 4) groups the same way
    "grouped64": ({"transition": "grouped", "max_group_states": 64}, [[0, 1, 2], [3]]),
    "grouped16": ({"transition": "grouped", "max_group_states": 16}, [[0, 1], [2, 3]]),
    "auto": ({}, [[0, 1, 2], [3]]),
}


def _table():
    rows = []
    for sizes, impls in TINY_IMPLS.items():
        for (name, (kw, groups)), T, batch in itertools.product(
            impls.items(), (1, 2, 4), ((), (3,))
        ):
            case = Case(sizes, kw, groups, T, batch, True)
            rows.append(pytest.param(case, id=f"{'x'.join(map(str, sizes))}-{name}-T{T}-B{batch}"))
    for (name, (kw, groups)), batch in itertools.product(LARGE_IMPLS.items(), ((), (3,))):
        case = Case(LARGE_SIZES, kw, groups, 5, batch, False)
        rows.append(pytest.param(case, id=f"4x4x4x2-{name}-T5-B{batch}-vs-dense"))
    return rows


CASES = _table()
table = pytest.mark.parametrize("case", CASES)


# --------------------------------------------------------------------------- problem
@functools.lru_cache(maxsize=None)
def problem(sizes, T, batch):
    """Positive random parameters and log-factors with missing and padding frames (zero)."""
    g = torch.Generator().manual_seed(100 * len(sizes) + 10 * T + len(batch))
    init = [torch.rand(k, generator=g, dtype=DTYPE) + 0.1 for k in sizes]
    trans = [torch.rand(k, k, generator=g, dtype=DTYPE) + 0.05 for k in sizes]
    init = [p / p.sum() for p in init]
    trans = [a / a.sum(-1, keepdim=True) for a in trans]
    logE = 2.0 * torch.randn(batch + (T,) + sizes, generator=g, dtype=DTYPE)
    flat = logE.reshape((-1, T) + sizes)
    if T >= 2:
        flat[0, 1] = 0.0  # a frame with nothing observed
    if T >= 4 and flat.shape[0] > 1:
        flat[1, -2:] = 0.0  # padding past this sequence's length
    return init, trans, logE


def weights(batch):
    """Per-sequence weights of the differentiated sum (not all equal, one negative)."""
    if batch == ():
        return torch.tensor(1.3, dtype=DTYPE)
    return torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)


def path_score(init, trans, logE, path):
    """``log p(x, z)`` of given paths ``batch + (T, C)`` (no enumeration)."""
    sizes = tuple(p.shape[0] for p in init)
    C, T = len(sizes), logE.shape[-len(sizes) - 1]
    flat_E = logE.reshape(-1, T, math.prod(sizes))
    z = path.reshape(-1, T, C)
    score = sum(init[c].log()[z[:, 0, c]] for c in range(C))
    for t in range(1, T):
        score = score + sum(trans[c].log()[z[:, t - 1, c], z[:, t, c]] for c in range(C))
    joint = torch.zeros_like(z[..., 0])
    for c, k in enumerate(sizes):
        joint = joint * k + z[..., c]
    score = score + flat_E.gather(-1, joint[..., None]).squeeze(-1).sum(-1)
    return score.reshape(path.shape[:-2])


# --------------------------------------------------------------------------- the oracle
def oracle_log_joint(init, trans, logE):
    """``log p(x, z_{1:T})`` of every joint path, ``batch + (P,) * T`` (differentiable)."""
    sizes = tuple(p.shape[0] for p in init)
    C, P = len(sizes), math.prod(sizes)
    T = logE.shape[-C - 1]
    batch = logE.shape[: -C - 1]

    def kron_sum(terms, ndim):  # sum_c of terms[c] broadcast along chain axis c (or c and C+c)
        out = 0.0
        for c, x in enumerate(terms):
            shape = [1] * (ndim * C)
            for j in range(ndim):
                shape[j * C + c] = sizes[c]
            out = out + x.reshape(shape)
        return out.reshape((P,) * ndim)

    log_pi = kron_sum([p.log() for p in init], 1)
    log_A = kron_sum([a.log() for a in trans], 2)
    le = logE.reshape(batch + (T, P))
    out = log_pi + le[..., 0, :]
    for t in range(1, T):
        out = out.unsqueeze(-1) + log_A + le[..., t, :].reshape(batch + (1,) * t + (P,))
    return out


def oracle_last_marginal(init, trans, logE):
    """``p(z_T | x_{1:T})`` of the oracle, ``batch + sizes``."""
    sizes = tuple(p.shape[0] for p in init)
    T = logE.shape[-len(sizes) - 1]
    lj = oracle_log_joint(init, trans, logE)
    flat = lj.reshape(lj.shape[: lj.dim() - T] + (-1,))
    post = torch.softmax(flat, -1).reshape(lj.shape)
    dims = list(range(lj.dim() - T, lj.dim() - 1))
    last = post.sum(dims) if dims else post
    return last.reshape(lj.shape[: lj.dim() - T] + sizes)


def _time_slice(logE, C, stop, zero_last=False):
    x = logE.narrow(-C - 1, 0, stop).clone()
    if zero_last:
        x.select(-C - 1, stop - 1).zero_()
    return x


@functools.lru_cache(maxsize=None)
def oracle(sizes, T, batch):
    """Everything the tests compare, by enumerating all ``P ** T`` joint paths."""
    init, trans, logE = problem(sizes, T, batch)
    C = len(sizes)
    leaves = [x.clone().requires_grad_() for x in init + trans + [logE]]
    lj = oracle_log_joint(leaves[:C], leaves[C : 2 * C], leaves[-1])
    flat = lj.reshape(batch + (-1,))
    logZ = torch.logsumexp(flat, -1)
    # T = 1 uses no transition: its gradient is zero (materialize_grads)
    grads = torch.autograd.grad(
        (logZ * weights(batch)).sum(), leaves, retain_graph=True, materialize_grads=True
    )
    count_grads = torch.autograd.grad(logZ.sum(), leaves[: 2 * C], materialize_grads=True)
    with torch.no_grad():
        post = torch.softmax(flat, -1).reshape(lj.shape)
        nb = len(batch)
        marginals = torch.stack(
            [post.sum([nb + s for s in range(T) if s != t]) if T > 1 else post for t in range(T)],
            nb,
        ).reshape(batch + (T,) + sizes)
        filtered = torch.stack(
            [oracle_last_marginal(init, trans, _time_slice(logE, C, t + 1)) for t in range(T)], nb
        )
        predicted = torch.stack(
            [
                oracle_last_marginal(init, trans, _time_slice(logE, C, t + 1, zero_last=True))
                for t in range(T)
            ],
            nb,
        )
    return {
        "log_likelihood": logZ.detach(),
        "grads": grads,
        "initial_counts": [p * g for p, g in zip(init, count_grads[:C], strict=True)],
        "transition_counts": [a * g for a, g in zip(trans, count_grads[C:], strict=True)],
        "marginals": marginals,
        "filtered": filtered,
        "predicted": predicted,
        "viterbi_log_prob": flat.detach().max(-1).values,
        "path_probs": post.reshape(batch + (-1,)),
    }


# --------------------------------------------------------------------------- the reference
def _run(sizes, T, batch, kwargs):
    """Every routine at one setting of ``transition=`` (cached: each test reads a part)."""
    return _run_cached(sizes, T, batch, tuple(sorted(kwargs.items())))


@functools.lru_cache(maxsize=None)
def _run_cached(sizes, T, batch, kw):
    kwargs = dict(kw)
    init, trans, logE = problem(sizes, T, batch)
    C = len(sizes)
    leaves = [x.clone().requires_grad_() for x in init + trans + [logE]]
    ll = factorial_log_likelihood(leaves[:C], leaves[C : 2 * C], leaves[-1], **kwargs)
    grads = torch.autograd.grad((ll * weights(batch)).sum(), leaves)
    sm = factorial_smooth(init, trans, logE, **kwargs)
    fw = factorial_forward(init, trans, logE, **kwargs)
    vit = factorial_viterbi(init, trans, logE, **kwargs)
    gen = torch.Generator().manual_seed(1234)
    num = 50 if sizes == LARGE_SIZES else NUM_SAMPLES
    samples = factorial_sample(init, trans, logE, num, generator=gen, **kwargs)
    return {
        "ll": ll.detach(),
        "grads": grads,
        "smooth": sm,
        "forward": fw,
        "viterbi": vit,
        "samples": samples,
    }


def reference(case):
    """The oracle's quantities (tiny sizes) or those of ``transition="dense"``."""
    if case.oracle:
        return oracle(case.sizes, case.T, case.batch)
    d = _run(case.sizes, case.T, case.batch, {"transition": "dense"})
    return {
        "log_likelihood": d["ll"],
        "grads": d["grads"],
        "initial_counts": d["smooth"].initial_counts,
        "transition_counts": d["smooth"].transition_counts,
        "marginals": d["smooth"].marginals,
        "filtered": d["forward"].filtered,
        "predicted": d["forward"].predicted,
        "viterbi_log_prob": d["viterbi"].log_prob,
        "samples": d["samples"],
    }


# --------------------------------------------------------------------------- the tests
# Tolerances: float64 recursions of at most 5 frames differ from the oracle (and from each other)
# by rounding only, ~1e-15 relative per operation; the values below leave three to five orders of
# magnitude of room and still fail any wrong transition, gradient or grouping by far.
VALUE = dict(rtol=1e-10, atol=1e-10)
PROB = dict(rtol=1e-9, atol=1e-12)
GRAD = dict(rtol=1e-9, atol=1e-10)


@table
def test_grouping_is_the_one_named(case):
    assert transition_groups(case.sizes, **case.kwargs) == case.groups


@table
def test_log_likelihood_and_gradients(case):
    ours, ref = _run(case.sizes, case.T, case.batch, case.kwargs), reference(case)
    torch.testing.assert_close(ours["ll"], ref["log_likelihood"], **VALUE)
    names = ["initial"] * len(case.sizes) + ["transition"] * len(case.sizes) + ["log_emissions"]
    for name, a, b in zip(names, ours["grads"], ref["grads"], strict=True):
        torch.testing.assert_close(a, b, **GRAD, msg=lambda m, name=name: f"d/d {name}: {m}")


@table
def test_forward_filtered_and_predicted(case):
    ours, ref = _run(case.sizes, case.T, case.batch, case.kwargs), reference(case)
    fw = ours["forward"]
    torch.testing.assert_close(fw.log_likelihood, ref["log_likelihood"], **VALUE)
    torch.testing.assert_close(fw.filtered, ref["filtered"], **PROB)
    torch.testing.assert_close(fw.predicted, ref["predicted"], **PROB)


@table
def test_smoothed_marginals_and_counts(case):
    ours, ref = _run(case.sizes, case.T, case.batch, case.kwargs), reference(case)
    sm = ours["smooth"]
    torch.testing.assert_close(sm.log_likelihood, ref["log_likelihood"], **VALUE)
    torch.testing.assert_close(sm.marginals, ref["marginals"], **PROB)
    torch.testing.assert_close(sm.filtered, ref["filtered"], **PROB)
    for a, b in zip(sm.initial_counts, ref["initial_counts"], strict=True):
        torch.testing.assert_close(a, b, **PROB)
    for a, b in zip(sm.transition_counts, ref["transition_counts"], strict=True):
        torch.testing.assert_close(a, b, **PROB)


@table
def test_filter_steps_equal_the_forward_filter(case):
    init, trans, logE = problem(case.sizes, case.T, case.batch)
    fw = _run(case.sizes, case.T, case.batch, case.kwargs)["forward"]
    C = len(case.sizes)
    filtered, total = None, 0.0
    for t in range(case.T):
        frame = logE.select(-C - 1, t)
        filtered, inc = factorial_filter_step(init, trans, frame, filtered, **case.kwargs)
        total = total + inc
        torch.testing.assert_close(filtered, fw.filtered.select(-C - 1, t), rtol=1e-12, atol=1e-14)
    assert total.shape == case.batch
    torch.testing.assert_close(total, fw.log_likelihood, rtol=1e-12, atol=1e-12)


@table
def test_viterbi_path_and_score(case):
    init, trans, logE = problem(case.sizes, case.T, case.batch)
    vit = _run(case.sizes, case.T, case.batch, case.kwargs)["viterbi"]
    assert vit.path.shape == case.batch + (case.T, len(case.sizes))
    torch.testing.assert_close(vit.log_prob, reference(case)["viterbi_log_prob"], **VALUE)
    # the returned path attains the returned (maximal) score
    torch.testing.assert_close(path_score(init, trans, logE, vit.path), vit.log_prob, **VALUE)


@table
def test_ffbs_samples(case):
    samples = _run(case.sizes, case.T, case.batch, case.kwargs)["samples"]
    S = samples.shape[0]
    assert samples.shape == (S,) + case.batch + (case.T, len(case.sizes))
    ref = reference(case)
    if not case.oracle:
        # Every implementation consumes the generator identically (one multinomial draw per
        # frame from the same-shaped filtered weights, equal up to rounding), so the same seed
        # gives the same paths as transition="dense".
        assert torch.equal(samples, ref["samples"])
        return
    # Exact path distribution: chi-square of the full-path counts against the oracle posterior,
    # per sequence, over the paths expected more than 5 times.
    P = math.prod(case.sizes)
    joint = torch.zeros_like(samples[..., 0])
    for c, k in enumerate(case.sizes):
        joint = joint * k + samples[..., c]  # (S,) + batch + (T,)
    index = torch.zeros_like(joint[..., 0])
    for t in range(case.T):
        index = index * P + joint[..., t]
    probs = ref["path_probs"].reshape(-1, P**case.T)
    index = index.reshape(S, -1)
    for b in range(probs.shape[0]):
        counts = torch.bincount(index[:, b], minlength=P**case.T).to(DTYPE)
        expected = probs[b] * S
        keep = expected > 5
        chi2 = (((counts - expected) ** 2) / expected)[keep].sum()
        dof = max(int(keep.sum()) - 1, 1)
        # The bound is the chi-square 99.9% quantile or above (dof + 3.1 sqrt(2 dof) exceeds
        # it for every dof >= 1 by Wilson-Hilferty, and +10 covers dof = 1): a correct sampler
        # fails it with probability < 1e-3 per sequence (the draws are seeded, so the result
        # is reproducible), while a wrong transition or grouping shifts the counts of
        # S = 20000 draws by orders of magnitude more.
        assert chi2 < dof + 3.1 * math.sqrt(2 * dof) + 10, (b, float(chi2), dof)
        # the rarely expected paths together: a binomial count within 5 standard deviations
        rare, rare_expected = counts[~keep].sum(), expected[~keep].sum()
        assert abs(rare - rare_expected) < 5 * math.sqrt(rare_expected) + 5, (b, float(rare))


def test_bad_transition_raises():
    init, trans, logE = problem((2, 3, 2), 2, (3,))
    routines = [
        lambda **kw: factorial_log_likelihood(init, trans, logE, **kw),
        lambda **kw: factorial_forward(init, trans, logE, **kw),
        lambda **kw: factorial_smooth(init, trans, logE, **kw),
        lambda **kw: factorial_viterbi(init, trans, logE, **kw),
        lambda **kw: factorial_sample(init, trans, logE, 2, **kw),
        lambda **kw: factorial_filter_step(init, trans, logE[:, 0], **kw),
    ]
    for fn in routines:
        with pytest.raises(ValueError, match=r"transition: expected one of 'auto'.*got 'blocked'"):
            fn(transition="blocked")
        with pytest.raises(ValueError, match="max_group_states: only used with"):
            fn(transition="dense", max_group_states=4)
        with pytest.raises(ValueError, match="max_group_states: expected a positive int"):
            fn(transition="grouped", max_group_states=0)
