"""Chunked filtering with the filter state carried over (``ops/hmm/chunked.py``,
``ops/kalman/chunked.py``, ``log_likelihood(chunk_size=)`` of the HMM and the LDS).

Oracles: brute-force enumeration of every state path (factorial HMM), the dense joint Gaussian
of ``_kalman_oracle.py`` (LDS), and the unchunked routines. Tolerance ``rtol=1e-10,
atol=1e-10`` in float64: a chunked and an unchunked filter do the same arithmetic frame by
frame and differ only in the order of the final sum of per-frame log-normalizers (measured
<= 7e-15 on log-likelihoods of size ~50); a dropped, doubled or wrongly started chunk changes
them by the log-density of a frame, >= 1e-2.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest
import torch

from mmpgm.data import MultimodalData
from mmpgm.models import MultimodalHMM, MultimodalLDS
from mmpgm.ops import hmm as hops
from mmpgm.ops import kalman as kops
from mmpgm.ops.hmm.chunked import factorial_filter_chunk, factorial_smooth_chunked
from mmpgm.ops.kalman.chunked import kalman_filter_chunk, rts_smoother_chunked

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _kalman_oracle as oracle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

TOL = dict(rtol=1e-10, atol=1e-10)
DT = torch.float64
CHUNKS = [1, 2, 3, 5, 8, 20]  # 3 and 5 do not divide T = 8; 20 > T


def _hmm_params(sizes=(2, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    init = [torch.softmax(torch.randn(k, generator=g, dtype=DT), 0) for k in sizes]
    trans = [torch.softmax(torch.randn(k, k, generator=g, dtype=DT), -1) for k in sizes]
    return init, trans


def _chunked_hmm(init, trans, logE, chunk):
    T, total, filt = logE.shape[1], 0.0, None
    for start in range(0, T, chunk):
        filt, ll = factorial_filter_chunk(init, trans, logE[:, start : start + chunk], filt)
        total = total + ll
    return total, filt


def _brute_force(init, trans, logE):
    """log sum over every joint path of the factorial HMM per sequence, ``logE (N, T, K1, K2)``."""
    N, T = logE.shape[:2]
    sizes = logE.shape[2:]
    states = list(itertools.product(*[range(k) for k in sizes]))
    out = torch.empty(N, dtype=DT)
    for n in range(N):
        terms = []
        for path in itertools.product(states, repeat=T):
            lp = sum(torch.log(init[c][path[0][c]]) for c in range(len(sizes)))
            for t in range(T):
                if t:
                    lp = lp + sum(
                        torch.log(trans[c][path[t - 1][c], path[t][c]]) for c in range(len(sizes))
                    )
                lp = lp + logE[(n, t) + path[t]]
            terms.append(lp)
        out[n] = torch.logsumexp(torch.stack(terms), 0)
    return out


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_hmm_chunks_equal_brute_force(chunk):
    init, trans = _hmm_params((2, 2))
    g = torch.Generator().manual_seed(1)
    logE = torch.randn(2, 4, 2, 2, generator=g, dtype=DT) * 3
    logE[1, 3] = 0.0  # a padding frame past the second sequence's length
    got, _ = _chunked_hmm(init, trans, logE, chunk)
    torch.testing.assert_close(got, _brute_force(init, trans, logE), **TOL)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("T", [1, 8])
def test_hmm_chunks_equal_the_unchunked_filter(chunk, T):
    init, trans = _hmm_params()
    g = torch.Generator().manual_seed(2)
    logE = torch.randn(3, T, 2, 3, generator=g, dtype=DT) * 5 - 40  # far from 0: shifts matter
    logE[0, T // 2 :] = 0.0  # ragged: padding after a length of T // 2
    got, filt = _chunked_hmm(init, trans, logE, chunk)
    ref = hops.factorial_forward(init, trans, logE)
    torch.testing.assert_close(got, ref.log_likelihood, **TOL)
    torch.testing.assert_close(filt, ref.filtered[:, -1], **TOL)
    with pytest.raises(ValueError, match="filtered"):
        factorial_filter_chunk(init, trans, logE, torch.ones(3, 2))


def _kalman_case(N=3, T=8, U=None):
    params = oracle.make_params(S=3, dims=(2, 1), U=U)
    g = torch.Generator().manual_seed(5)
    controls = None if U is None else torch.randn(N, T, U, generator=g, dtype=DT)
    obs = oracle.sample_obs(params, N, T, controls=controls)
    masks = oracle.masks_scenario(N, T, 2, "random")
    lengths = torch.tensor([T, max(1, T - 3), 1])[:N]
    return params, obs, masks, lengths, controls


def _chunked_kalman(params, obs, masks, lengths, controls, chunk):
    T, total, carry = obs[0].shape[1], 0.0, None
    for start in range(0, T, chunk):
        sl = slice(start, start + chunk)
        res = kalman_filter_chunk(
            params,
            [o[:, sl] for o in obs],
            [m[:, sl] for m in masks],
            (lengths - start).clamp(0, chunk),
            carry,
            None if controls is None else controls[:, sl],
        )
        carry, total = res.carry, total + res.log_likelihood
    return total, carry


@pytest.mark.parametrize("chunk", CHUNKS)
def test_kalman_chunks_equal_the_dense_oracle_and_the_unchunked_filter(chunk):
    params, obs, masks, lengths, _ = _kalman_case()
    inside = [m & (torch.arange(8) < lengths[:, None]) for m in masks]
    got, carry = _chunked_kalman(params, obs, masks, lengths, None, chunk)
    ref = kops.kalman_filter(params, obs, masks, lengths=lengths)
    torch.testing.assert_close(got, ref.log_likelihood, **TOL)
    torch.testing.assert_close(carry.mean, ref.means[:, -1], **TOL)
    torch.testing.assert_close(carry.cov, ref.covs[:, -1], **TOL)
    for n in range(3):
        ll = oracle.dense_reference(params, obs, inside, n=n)[0]
        torch.testing.assert_close(got[n], ll, **TOL)


@pytest.mark.parametrize("chunk", [1, 3])
def test_kalman_chunks_with_controls_and_one_frame(chunk):
    params, obs, masks, lengths, controls = _kalman_case(U=2)
    got, _ = _chunked_kalman(params, obs, masks, lengths, controls, chunk)
    ref = kops.kalman_log_likelihood(params, obs, masks, controls, lengths)
    torch.testing.assert_close(got, ref, **TOL)
    params, obs, masks, lengths, _ = _kalman_case(T=1)
    got, _ = _chunked_kalman(params, obs, masks, torch.ones(3, dtype=torch.long), None, chunk)
    torch.testing.assert_close(got, kops.kalman_log_likelihood(params, obs, masks), **TOL)


# ---------------------------------------------------------------------- models
def _ragged(data, seed):
    g = torch.Generator().manual_seed(seed)
    N, T = data.num_sequences, data.num_timesteps
    lengths = torch.tensor([max(1, T - (3 * n) % 7) for n in range(N)])
    obs = {
        m: torch.where(
            (torch.rand(N, T, generator=g) < 0.15)[..., None], torch.full_like(x, float("nan")), x
        )
        for m, x in data.obs.items()
    }
    labels = {"shared": torch.where(torch.rand(N, T, generator=g) < 0.2,
                                    torch.randint(0, 2, (N, T), generator=g), -1)}
    return MultimodalData(obs, lengths=lengths, labels=labels)


def _models():
    torch.manual_seed(0)
    hmm = MultimodalHMM({"a": 2, "b": 1}, num_shared_states=2, num_private_states={"a": 2, "b": 1})
    faulty = MultimodalHMM({"a": 2, "b": 1}, num_shared_states=2, sensor_faults=["a"])
    lds = MultimodalLDS({"a": 2, "b": 1}, shared_dim=1, private_dim={"a": 1, "b": 0})
    return {"hmm": hmm.double(), "hmm_faults": faulty.double(), "lds": lds.double()}


@pytest.mark.parametrize("name", ["hmm", "hmm_faults", "lds"])
@pytest.mark.parametrize("T", [1, 9])
def test_model_log_likelihood_in_chunks(name, T):
    """Masks, labels clamping the shared state (HMM), ragged lengths with chunk boundaries past
    some of them (lengths 9, 6, 3, 7, 4 at T = 9), chunk sizes 1, dividing and not dividing T,
    and larger than T."""
    model = _models()[name]
    data, _ = model.sample(5, T, seed=1)
    data = _ragged(data, 2)
    if name == "lds":
        data.labels.clear()
    ref = model.log_likelihood(data)
    for chunk in (1, 2, 3, 4, T, T + 3):
        got = model.log_likelihood(data, chunk_size=chunk)
        assert got.shape == ref.shape and not got.requires_grad
        torch.testing.assert_close(got, ref.detach(), **TOL, msg=f"chunk_size={chunk}")


def test_chunk_size_errors():
    models = _models()
    data, _ = models["lds"].sample(2, 4, seed=0)
    for model in models.values():
        with pytest.raises(ValueError, match="chunk_size"):
            model.log_likelihood(data, chunk_size=0)
    lds = MultimodalLDS({"a": 2, "b": 1}, shared_dim=1, sensor_faults=["a"]).double()
    with pytest.raises(ValueError, match="chunk_size.*sensor_faults"):
        lds.log_likelihood(data, chunk_size=2)


# ---------------------------------------------------------------------- smoothing in chunks
@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("T", [1, 8])
def test_hmm_smoothing_in_chunks_equals_forward_backward(chunk, T):
    init, trans = _hmm_params()
    g = torch.Generator().manual_seed(3)
    logE = torch.randn(3, T, 2, 3, generator=g, dtype=DT) * 4 - 30
    logE[0, T // 2 :] = 0.0
    ref = hops.factorial_smooth(init, trans, logE)
    marg = torch.full_like(ref.marginals, float("nan"))
    calls = []

    def on_chunk(start, stop, m):
        calls.append(start)
        marg[:, start:stop] = m

    got = factorial_smooth_chunked(init, trans, lambda a, b: logE[:, a:b], T, chunk, on_chunk)
    assert calls == sorted(range(0, T, chunk), reverse=True)  # last chunk first, each once
    torch.testing.assert_close(marg, ref.marginals, **TOL)
    torch.testing.assert_close(got.log_likelihood, ref.log_likelihood, **TOL)
    for a, b in zip(got.initial_counts + got.transition_counts,
                    ref.initial_counts + ref.transition_counts, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("name", ["hmm", "hmm_faults"])
@pytest.mark.parametrize("T", [1, 9])
def test_hmm_em_statistics_in_chunks(name, T):
    model = _models()[name]
    data, _ = model.sample(5, T, seed=1)
    data = _ragged(data, 2)
    ref = model.em_statistics(data)
    for chunk in (1, 2, 4, T, T + 3):
        got = model.em_statistics(data, chunk_size=chunk)
        assert set(got) == set(ref)
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, **TOL, msg=f"{k}, chunk_size={chunk}")


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("T", [1, 8])
def test_kalman_smoothing_in_chunks_equals_the_rts_smoother_and_the_oracle(chunk, T):
    params, obs, masks, lengths, _ = _kalman_case(T=T)
    ref = kops.rts_smoother(params, obs, masks, lengths=lengths)
    means = torch.full_like(ref.means, float("nan"))
    covs = torch.full_like(ref.covs, float("nan"))
    cross = torch.full_like(ref.cross_covs, float("nan"))
    calls = []

    def inputs(a, b):
        return [o[:, a:b] for o in obs], [m[:, a:b] for m in masks], (lengths - a).clamp(0, b - a)

    def on_chunk(a, b, m, c, x, next_mean, next_cov):
        calls.append(a)
        means[:, a:b], covs[:, a:b], cross[:, a : a + x.shape[1]] = m, c, x
        assert (next_mean is None) == (b == T)
        if next_mean is not None:
            torch.testing.assert_close(next_mean, ref.means[:, b], **TOL)

    ll = rts_smoother_chunked(params, inputs, T, chunk, on_chunk)
    assert calls == sorted(range(0, T, chunk), reverse=True)
    inside = torch.arange(T) < lengths[:, None]
    torch.testing.assert_close(ll, ref.log_likelihood, **TOL)
    torch.testing.assert_close(means[inside], ref.means[inside], **TOL)
    torch.testing.assert_close(covs[inside], ref.covs[inside], **TOL)
    pairs = inside[:, 1:]
    torch.testing.assert_close(cross[pairs], ref.cross_covs[pairs], **TOL)
    # the dense joint Gaussian of the first (full-length) sequence
    _, _, _, sm, sP, sx = oracle.dense_reference(
        params, obs, [m & inside for m in masks], n=0
    )
    torch.testing.assert_close(means[0], sm, **TOL)
    torch.testing.assert_close(covs[0], sP, **TOL)
    torch.testing.assert_close(cross[0], sx, **TOL)


@pytest.mark.parametrize("T", [1, 9])
def test_lds_em_statistics_in_chunks(T):
    model = _models()["lds"]
    data, _ = model.sample(5, T, seed=1)
    data = _ragged(data, 2)
    data.labels.clear()
    ref = model.em_statistics(data)
    for chunk in (1, 2, 4, T, T + 3):
        got = model.em_statistics(data, chunk_size=chunk)
        assert set(got) == set(ref)
        for k, v in ref.items():
            torch.testing.assert_close(got[k], v, **TOL, msg=f"{k}, chunk_size={chunk}")
    lds = MultimodalLDS({"a": 2, "b": 1}, shared_dim=1, sensor_faults=["a"]).double()
    with pytest.raises(ValueError, match="chunk_size.*sensor_faults"):
        lds.em_statistics(data, chunk_size=2)
