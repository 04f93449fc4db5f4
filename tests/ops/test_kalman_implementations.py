"""One table over every implementation of :mod:`mmpgm.ops.kalman` (float64).

Each implementation is a choice of the keywords ``method`` x ``share`` x ``steady_state``
(``IMPLS``); combinations that are not an implementation are listed once, skipped, with the
reason in their id.  Every implementation runs over every data scenario (``SCENARIOS``):
N = 1 and 3, T = 1, 2 and 7 (and T = 30, where the steady state engages), parameters shared by
the batch or per sequence, and masks that are full, aligned across sequences, random per
modality, or random with ragged lengths.  Masked observation entries are NaN.

Against the dense joint-Gaussian oracle (``_kalman_oracle.dense_reference``, whose autograd
gives the reference gradients) each case checks log-likelihood values, filtered and smoothed
means / covariances / cross-covariances, gradients of the log-likelihood w.r.t. every parameter
and every observed entry (zero and finite at masked ones), and FFBS draws: their shape, and
their mean and covariance against the oracle's smoothed moments (6 Monte-Carlo standard
errors).  Where the data do not allow an explicit ``share`` (per-sequence parameters, mask
patterns that differ between sequences) the case checks that it raises ``ValueError``.
"""

from __future__ import annotations

import functools
import pathlib
import sys
from typing import NamedTuple

import pytest
import torch

from mmpgm.ops.kalman import (
    choose_method,
    ffbs_sample,
    kalman_filter,
    kalman_log_likelihood,
    rts_smoother,
)
from mmpgm.ops.kalman.method import resolve
from mmpgm.ops.kalman.prepare import prepare

# the shared oracle sits next to this file (test modules are imported with importlib)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
from _kalman_oracle import (  # noqa: E402
    DT,
    dense_reference,
    leaf_params,
    make_params,
    nan_masked,
    sample_obs,
)

sys.path.pop(0)

VALUES = dict(rtol=1e-9, atol=1e-9)
GRADS = dict(rtol=1e-8, atol=1e-8)
NUM_DRAWS = 2000


class Impl(NamedTuple):
    method: str
    share: str
    steady_state: bool
    split: bool = False  # the batch's sequences split over CPU threads, one per sequence (where
    # autograd records nothing: the moments and draws; the gradient runs unsplit)


_RUN = [
    Impl("sequential", "covariance", True),
    Impl("sequential", "covariance", False),
    Impl("sequential", "matrices", False),
    Impl("sequential", "none", False),
    Impl("parallel", "none", False),
    Impl("information", "none", False),
    Impl("information", "none", False, split=True),
    Impl("sequential", "covariance", True, split=True),
    Impl("sequential", "none", False, split=True),
]
_NOT_AN_IMPLEMENTATION = {
    Impl("sequential", "matrices", True): "steady state exists only in the shared-cov recursion",
    Impl("sequential", "none", True): "steady state exists only in the shared-cov recursion",
    Impl("parallel", "none", True): "the parallel scan has no Riccati recursion to stop",
    Impl("parallel", "covariance", False): "the parallel scan shares nothing across the batch",
    Impl("parallel", "covariance", True): "the parallel scan shares nothing across the batch",
    Impl("parallel", "matrices", False): "the parallel scan shares nothing across the batch",
    Impl("parallel", "matrices", True): "the parallel scan shares nothing across the batch",
    Impl("information", "none", True): "the information filter has no steady state",
    Impl("information", "covariance", False): "the information filter shares nothing",
    Impl("information", "covariance", True): "the information filter shares nothing",
    Impl("information", "matrices", False): "the information filter shares nothing",
    Impl("information", "matrices", True): "the information filter shares nothing",
}


def _impl_id(impl: Impl) -> str:
    split = "-split_threads" if impl.split else ""
    return f"{impl.method}-share_{impl.share}-steady_{'on' if impl.steady_state else 'off'}{split}"


@pytest.fixture
def split_threads(monkeypatch):
    """Every batch split over threads, one sequence each (``sequence_chunks`` forced)."""
    import importlib

    from mmpgm.ops import _threads

    prepare_module = importlib.import_module("mmpgm.ops.kalman.prepare")  # not the function

    monkeypatch.setattr(_threads, "SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(prepare_module, "SPLIT_MIN_WORK", 0)
    monkeypatch.setattr(_threads, "SPLIT_MIN_SEQUENCES", 1)
    old = torch.get_num_threads()
    torch.set_num_threads(4)
    assert _threads.sequence_chunks(3, 0, torch.device("cpu")) == [(0, 1), (1, 2), (2, 3)]
    yield
    torch.set_num_threads(old)


class Scenario(NamedTuple):
    N: int
    T: int
    params: str  # "shared" | "per_sequence"
    masks: str  # "none" (mask=None) | "full" | "aligned" | "random" | "ragged"


SCENARIOS = [
    Scenario(N, T, params, masks)
    for N in (1, 3)
    for T in (1, 2, 7)
    for params in ("shared", "per_sequence")
    for masks in ("none", "full", "aligned", "random", "ragged")
] + [
    Scenario(3, 30, "shared", "none"),
    Scenario(3, 30, "shared", "full"),
    Scenario(3, 30, "shared", "aligned"),
]

S, DIMS, U = 3, (2, 1), 1


def _scenario_id(sc: Scenario) -> str:
    return f"N{sc.N}-T{sc.T}-{sc.params}-{sc.masks}"


@functools.lru_cache(maxsize=None)
def _data(sc: Scenario):
    """Parameters, controls, observations, masks and lengths of a scenario (deterministic)."""
    seed = 100 * sc.N + sc.T
    base = make_params(S=S, dims=DIMS, U=U, N=sc.N if sc.params == "per_sequence" else None)
    g = torch.Generator().manual_seed(seed)
    controls = torch.randn(sc.N, sc.T, U, generator=g, dtype=DT)
    obs = sample_obs(base, sc.N, sc.T, seed=seed, controls=controls)
    masks = [torch.ones(sc.N, sc.T, dtype=torch.bool) for _ in DIMS]
    lengths = None
    if sc.masks == "aligned":  # one random pattern for every sequence, incl. an empty frame
        masks = [(torch.rand(1, sc.T, generator=g) < 0.6).expand(sc.N, sc.T).clone() for _ in DIMS]
        masks[0][:, 0] = True  # something observed (else the log-likelihood is a constant)
        if sc.T > 1:
            for m in masks:
                m[:, 1] = False
        if sc.T > 10:  # fully observed after the first third: the steady state can engage
            masks = [m.clone() for m in masks]
            for m in masks:
                m[:, sc.T // 3 :] = True
    elif sc.masks in ("random", "ragged"):  # per modality and per sequence
        masks = [torch.rand(sc.N, sc.T, generator=g) < 0.6 for _ in DIMS]
    if sc.masks == "ragged":
        full = [sc.T, sc.T // 2, 1][: sc.N] if sc.N > 1 else [max(1, sc.T - 1)]
        lengths = torch.tensor(full)
    return base, controls, obs, masks, lengths


def _observed(sc: Scenario, masks, lengths):
    """The masks the oracle sees: the given masks and-ed with the lengths."""
    if lengths is None:
        return masks
    lm = torch.arange(sc.T).unsqueeze(0) < lengths.unsqueeze(1)
    return [m & lm for m in masks]


@functools.lru_cache(maxsize=None)
def _oracle(sc: Scenario):
    """Per-sequence oracle moments, and the gradient of the summed log-likelihood w.r.t. every
    parameter leaf and the observations."""
    base, controls, obs, masks, lengths = _data(sc)
    params, leaves = leaf_params(base)
    obs_leaves = [o.clone().requires_grad_(True) for o in obs]
    seen = _observed(sc, masks, lengths)
    refs = [dense_reference(params, obs_leaves, seen, controls, n) for n in range(sc.N)]
    total = sum(r[0] for r in refs)
    grads = torch.autograd.grad(
        total, leaves + obs_leaves, allow_unused=True, materialize_grads=True
    )  # T = 1: Q, B unused
    moments = [tuple(x.detach() for x in r) for r in refs]
    return moments, [g.detach() for g in grads]


def _applies(impl: Impl, sc: Scenario) -> bool:
    """Whether the explicit ``share`` of ``impl`` applies to the scenario's inputs (written
    from the definitions, not from the library's own test)."""
    if sc.N == 1 or impl.share == "none":
        return True
    if sc.params == "per_sequence":
        return False
    if impl.share == "matrices":
        return True
    return sc.masks in ("none", "full", "aligned")  # the same pattern in every sequence


# every implementation over every scenario, and each non-implementation once (skipped, why)
CASES = [
    pytest.param(i, s, id=f"{_impl_id(i)}-{_scenario_id(s)}") for i in _RUN for s in SCENARIOS
] + [
    pytest.param(i, None, id=f"{_impl_id(i)}[n/a: {why}]", marks=pytest.mark.skip(reason=why))
    for i, why in _NOT_AN_IMPLEMENTATION.items()
]


@pytest.mark.parametrize("impl, sc", CASES)
def test_implementation_matches_dense_oracle(impl, sc, request):
    if impl.split:
        request.getfixturevalue("split_threads")
    base, controls, obs, masks, lengths = _data(sc)
    kw = dict(
        controls=controls,
        lengths=lengths,
        method=impl.method,
        share=impl.share,
        steady_state=impl.steady_state,
    )
    if not _applies(impl, sc):
        with pytest.raises(ValueError, match=f"share: '{impl.share}' needs"):
            kalman_log_likelihood(base, obs, masks, **kw)
        return
    moments, ref_grads = _oracle(sc)
    seen = _observed(sc, masks, lengths)
    obs_nan = nan_masked(obs, seen)
    if sc.masks == "none":  # everything observed, said by mask=None (prepare's fast path)
        masks = None

    filt = kalman_filter(base, obs_nan, masks, **kw)
    smooth = rts_smoother(base, obs_nan, masks, **kw)
    for n, (rll, rfm, rfP, rsm, rsP, rcross) in enumerate(moments):
        torch.testing.assert_close(filt.log_likelihood[n], rll, **VALUES)
        torch.testing.assert_close(smooth.log_likelihood[n], rll, **VALUES)
        torch.testing.assert_close(filt.means[n], rfm, **VALUES)
        torch.testing.assert_close(filt.covs[n], rfP, **VALUES)
        torch.testing.assert_close(smooth.means[n], rsm, **VALUES)
        torch.testing.assert_close(smooth.covs[n], rsP, **VALUES)
        torch.testing.assert_close(smooth.cross_covs[n], rcross, **VALUES)
    assert filt.predicted_means.shape == (sc.N, sc.T, S)
    assert filt.predicted_covs.shape == (sc.N, sc.T, S, S)
    if impl.steady_state and sc.T == 30:
        # the recursion stopped and reused its last covariance (bitwise equal frames)
        assert torch.equal(filt.predicted_covs[:, -1], filt.predicted_covs[:, -2])

    # gradients of the log-likelihood: parameters, observed entries; masked entries get 0
    params, leaves = leaf_params(base)
    obs_leaves = [o.clone().requires_grad_(True) for o in obs_nan]
    ll = kalman_log_likelihood(params, obs_leaves, masks, **kw)
    torch.testing.assert_close(ll.detach(), torch.stack([m[0] for m in moments]), **VALUES)
    grads = torch.autograd.grad(
        ll.sum(), leaves + obs_leaves, allow_unused=True, materialize_grads=True
    )
    for g, r in zip(grads[: len(leaves)], ref_grads[: len(leaves)], strict=True):
        torch.testing.assert_close(g, r, **GRADS)
    for g, r, m in zip(grads[len(leaves) :], ref_grads[len(leaves) :], seen, strict=True):
        assert torch.isfinite(g).all()
        assert (g[~m] == 0).all()
        torch.testing.assert_close(g[m], r[m], **GRADS)

    # FFBS: shape, finite despite NaN in masked entries, moments of the oracle's posterior
    gen = torch.Generator().manual_seed(7)
    z = ffbs_sample(base, obs_nan, masks, num_samples=NUM_DRAWS, generator=gen, **kw)
    assert z.shape == (NUM_DRAWS, sc.N, sc.T, S) and torch.isfinite(z).all()
    sm = torch.stack([m[3] for m in moments])  # (N, T, S)
    sP = torch.stack([m[4] for m in moments])  # (N, T, S, S)
    var = sP.diagonal(dim1=-2, dim2=-1)
    assert ((z.mean(0) - sm).abs() <= 6 * (var / NUM_DRAWS).sqrt()).all()
    zc = z - z.mean(0)
    emp_cov = torch.einsum("knti,kntj->ntij", zc, zc) / (NUM_DRAWS - 1)
    se_cov = ((var.unsqueeze(-1) * var.unsqueeze(-2) + sP.square()) / NUM_DRAWS).sqrt()
    assert ((emp_cov - sP).abs() <= 6 * se_cov).all()


def test_auto_runs_information_when_masks_differ_between_sequences():
    """``method="auto"`` picks the information filter exactly when the covariance recursion is
    not shared and the parallel scan's rule does not apply (config-B-like sizes)."""
    assert choose_method(64, 500, 6, 10, shared_covariance=False) == "information"
    assert choose_method(64, 500, 6, 10, shared_covariance=True) == "sequential"
    assert choose_method(1, 20000, 2, 2, steady_state=True, shared_covariance=False) == "parallel"
    cases = (("random", "information"), ("aligned", "sequential"), ("full", "sequential"))
    for masks, want in cases:
        base, controls, obs, mk, lengths = _data(Scenario(3, 7, "shared", masks))
        p = prepare(base, obs, mk, controls, lengths)
        assert resolve(p).method == want


@pytest.mark.parametrize("chunk", [1, 3])
@pytest.mark.parametrize("params", ["shared", "per_sequence"])
def test_information_gradient_across_backward_chunks(monkeypatch, chunk, params):
    """The information filter's Fisher-identity backward runs in chunks of frames: with chunk
    boundaries inside the sequences (T = 7, chunks of 1 and 3 frames) the gradient of a weighted
    sum of log-likelihoods equals the dense oracle's (random masks, ragged lengths, controls)."""
    from mmpgm.ops.kalman import information

    monkeypatch.setattr(information, "BACKWARD_CHUNK_FRAMES", chunk)
    sc = Scenario(3, 7, params, "ragged")
    base, controls, obs, masks, lengths = _data(sc)
    seen = _observed(sc, masks, lengths)
    weights = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    p_ref, leaves_ref = leaf_params(base)
    refs = [dense_reference(p_ref, obs, seen, controls, n)[0] for n in range(sc.N)]
    ref = torch.autograd.grad((torch.stack(refs) * weights).sum(), leaves_ref, allow_unused=True,
                              materialize_grads=True)
    p_got, leaves_got = leaf_params(base)
    ll = kalman_log_likelihood(p_got, nan_masked(obs, seen), masks, controls, lengths,
                               method="information")
    got = torch.autograd.grad((ll * weights).sum(), leaves_got, allow_unused=True,
                              materialize_grads=True)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, **GRADS)


_LOOP_SCENARIOS = [Scenario(3, 7, "shared", "aligned"), Scenario(3, 30, "shared", "full")]


@pytest.mark.parametrize("sc", _LOOP_SCENARIOS, ids=_scenario_id)
def test_shared_covariance_mean_loop_matches_oracle(monkeypatch, sc):
    """Without autograd and above ``MEAN_LOOP_MIN_WORK`` the shared-covariance filter and smoother
    run their means as a plain loop instead of the scan (forced here at tiny sizes): the moments
    equal the dense oracle's."""
    from mmpgm.ops.kalman import sequential, smoother

    monkeypatch.setattr(sequential, "MEAN_LOOP_MIN_WORK", 0)
    monkeypatch.setattr(smoother, "MEAN_LOOP_MIN_WORK", 0)
    base, controls, obs, masks, lengths = _data(sc)
    moments, _ = _oracle(sc)
    seen = _observed(sc, masks, lengths)
    kw = dict(controls=controls, lengths=lengths, share="covariance")
    filt = kalman_filter(base, nan_masked(obs, seen), masks, **kw)
    smooth = rts_smoother(base, nan_masked(obs, seen), masks, **kw)
    for n, (rll, rfm, rfP, rsm, rsP, rcross) in enumerate(moments):
        torch.testing.assert_close(filt.log_likelihood[n], rll, **VALUES)
        torch.testing.assert_close(filt.means[n], rfm, **VALUES)
        torch.testing.assert_close(filt.covs[n], rfP, **VALUES)
        torch.testing.assert_close(smooth.means[n], rsm, **VALUES)
        torch.testing.assert_close(smooth.covs[n], rsP, **VALUES)
        torch.testing.assert_close(smooth.cross_covs[n], rcross, **VALUES)


@pytest.mark.parametrize("loop", [False, True], ids=["scan", "loop"])
def test_steady_state_smoother_matches_exact_recursion(monkeypatch, loop):
    """Over a long fully observed stretch the shared-covariance smoother stops its backward
    covariance recursion once converged and reuses the value (``steady_state=True``): its
    moments equal those of the exact recursion (``steady_state=False``, itself checked against
    the dense oracle above) to the tolerance of the steady state, and the reuse did happen
    (far fewer backward steps than frames).  An observed-then-missing start gives the
    gains before the steady state their own values."""
    from mmpgm.ops.kalman import smoother

    if loop:
        monkeypatch.setattr(smoother, "MEAN_LOOP_MIN_WORK", 0)
    N, T = 3, 400
    base = make_params(S=S, dims=DIMS, U=U)
    g = torch.Generator().manual_seed(11)
    controls = torch.randn(N, T, U, generator=g, dtype=DT)
    obs = sample_obs(base, N, T, seed=11, controls=controls)
    masks = [torch.ones(N, T, dtype=torch.bool) for _ in DIMS]
    masks[1][:, :5] = False  # aligned: the covariance recursion is still shared
    kw = dict(controls=controls, share="covariance")
    steps = []  # backward covariance steps taken one by one (each symmetrized once)
    sym = smoother.symmetrize
    monkeypatch.setattr(smoother, "symmetrize", lambda x: steps.append(1) or sym(x))
    steady = rts_smoother(base, obs, masks, steady_state=True, **kw)
    assert 5 < len(steps) < T // 4  # converged, reused, then the first frames' own gains
    exact = rts_smoother(base, obs, masks, steady_state=False, **kw)
    for a, b in zip(steady, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
