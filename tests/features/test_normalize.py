"""Causal running normalization: brute force per frame, causality, masks, ragged lengths,
gain invariance, argument errors; the robust (clipped) statistics against a scalar loop and on a
gross corruption."""

import numpy as np
import pytest
import torch

from mmpgm.features.normalize import running_normalize


def _brute(x, obs, decay, scale, eps):
    """Frame by frame from the definition: weights of the observed frames s <= t built from the
    alpha_k recursion written out as explicit products, then a weighted mean / variance."""
    T, D = x.shape
    out = np.zeros((T, D))
    idx = [t for t in range(T) if obs[t]]
    for j, t in enumerate(idx):
        k = j + 1
        alphas = [max(1.0 / i, 1.0 - decay) for i in range(1, k + 1)]
        w = np.array([alphas[i] * np.prod([1 - a for a in alphas[i + 1 :]]) for i in range(k)])
        xs = x[idx[:k]]
        mean = (w[:, None] * xs).sum(0)
        var = (w[:, None] * (xs - mean) ** 2).sum(0)
        z = x[t] - mean
        out[t] = z / np.sqrt(var + eps * eps) if scale else z
    return out


@pytest.mark.parametrize("decay", [1.0, 0.9, 0.5])
@pytest.mark.parametrize("scale", [True, False])
def test_matches_weighted_moments(decay, scale):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 3)) * 3 + 1
    mask = np.ones((2, 9), bool)
    mask[1, [2, 5]] = False
    got = running_normalize(torch.tensor(x), torch.tensor(mask), decay=decay, scale=scale)
    for n in range(2):
        ref = _brute(x[n], mask[n], decay, scale, 1e-3)
        torch.testing.assert_close(got[n], torch.tensor(ref), rtol=1e-9, atol=1e-9)
    assert bool((got[1, [2, 5]] == 0).all())


def test_causal():
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.normal(size=(3, 12, 4)))
    base = running_normalize(x, decay=0.8)
    for t in range(12):
        y = x.clone()
        y[:, t + 1 :] = torch.tensor(rng.normal(size=(3, 11 - t, 4))) * 50
        got = running_normalize(y, decay=0.8)
        torch.testing.assert_close(got[:, : t + 1], base[:, : t + 1], rtol=0, atol=0)


def test_t1_batch_equals_loop_and_ragged_lengths():
    rng = np.random.default_rng(2)
    x = torch.tensor(rng.normal(size=(3, 7, 2)))
    lengths = torch.tensor([7, 1, 4])
    got = running_normalize(x, lengths=lengths)
    for n in range(3):
        L = int(lengths[n])
        one = running_normalize(x[n, :L])
        torch.testing.assert_close(got[n, :L], one, rtol=1e-12, atol=1e-12)
        assert bool((got[n, L:] == 0).all())
    assert bool((got[:, 0] == 0).all())  # nothing to compare the first frame with


def test_nan_frames_are_unobserved_and_numpy_round_trip():
    x = np.random.default_rng(3).normal(size=(6, 2)).astype(np.float32)
    x[2] = np.nan
    got = running_normalize(x)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (6, 2)
    assert (got[2] == 0).all()
    ref = running_normalize(np.delete(x, 2, 0))
    np.testing.assert_allclose(np.delete(got, 2, 0), ref, rtol=1e-6, atol=1e-6)


def test_gain_and_scale_invariance():
    rng = np.random.default_rng(4)
    logmag = torch.tensor(rng.normal(size=(2, 20, 5)))
    a = running_normalize(logmag, decay=0.95)
    b = running_normalize(logmag + np.log(0.01), decay=0.95)  # a waveform gain of 1/100
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    c = running_normalize(logmag * 7.0, decay=0.95, eps=1e-9)
    d = running_normalize(logmag, decay=0.95, eps=1e-9 / 7.0)
    torch.testing.assert_close(c, d, rtol=1e-7, atol=1e-7)


def _scalar_clipped(x, obs, decay, eps, clip):
    """The clipped recursion of the module docstring written out one scalar at a time."""
    T, D = x.shape
    out = np.zeros((T, D))
    for d in range(D):
        m = v = 0.0
        k = 0
        for t in range(T):
            if not obs[t]:
                continue
            k += 1
            a = max(1.0 / k, 1.0 - decay)
            inn = x[t, d] - m
            if k >= 3:
                lim = clip * np.sqrt(v + eps * eps)
                inn = min(max(inn, -lim), lim)
            m, v = m + a * inn, (1 - a) * (v + a * inn * inn)
            out[t, d] = (x[t, d] - m) / np.sqrt(v + eps * eps)
    return out


@pytest.mark.parametrize("decay", [1.0, 0.8])
@pytest.mark.parametrize("clip", [0.5, 2.0])
def test_clipped_statistics_match_a_scalar_loop(decay, clip):
    rng = np.random.default_rng(5)
    x = rng.standard_t(2, size=(3, 15, 2)) * 2 + 1  # heavy tails: many clipped innovations
    mask = np.ones((3, 15), bool)
    mask[1, [0, 3, 4]] = False
    lengths = np.array([15, 15, 1])
    got = running_normalize(torch.tensor(x), torch.tensor(mask), lengths, decay=decay, clip=clip)
    for n in range(3):
        obs = mask[n] & (np.arange(15) < lengths[n])
        ref = _scalar_clipped(x[n], obs, decay, 1e-3, clip)
        torch.testing.assert_close(got[n], torch.tensor(ref), rtol=1e-12, atol=1e-12)
    plain = running_normalize(torch.tensor(x), torch.tensor(mask), lengths, decay=decay)
    assert not torch.allclose(got, plain)  # the clipping changed something
    unclipped = running_normalize(torch.tensor(x), torch.tensor(mask), lengths, decay=decay,
                                  clip=float("inf"))
    torch.testing.assert_close(unclipped, plain, rtol=0, atol=0)


def test_clipped_statistics_do_not_absorb_a_gross_corruption():
    """A 25-frame failure 100 sd off after 50 clean frames (decay 0.98, c = 3): the plain
    statistics absorb it (within its first frames it looks ordinary), the clipped ones keep every
    one of its frames beyond 100 / sqrt(((1 - a)(1 + a c^2))^25) ~ 16 sd, the bound of the
    variance's growth (a = 0.02), less the mean's drift."""
    rng = np.random.default_rng(6)
    x = torch.tensor(rng.normal(size=(1, 120, 4)))
    bad = x.clone()
    bad[:, 50:75] += 100.0
    plain, robust = (running_normalize(bad, decay=0.98, clip=c) for c in (None, 3.0))
    assert float(robust[0, 50:75].abs().min()) > 12.0
    assert float(plain[0, 55:75].abs().mean()) < 3.0
    torch.testing.assert_close(robust[0, :50], running_normalize(x, decay=0.98, clip=3.0)[0, :50],
                               rtol=0, atol=0)


def test_clipped_statistics_keep_the_gain_and_scale_invariance():
    rng = np.random.default_rng(7)
    x = torch.tensor(rng.standard_t(3, size=(2, 30, 3)))
    a = running_normalize(x, decay=0.9, clip=2.0, eps=1e-9)
    torch.testing.assert_close(running_normalize(x - 4.6, decay=0.9, clip=2.0, eps=1e-9), a,
                               rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(running_normalize(x * 7.0, decay=0.9, clip=2.0, eps=7e-9), a,
                               rtol=1e-9, atol=1e-9)
    y = x.clone()
    y[:, 20:] = 1e3
    torch.testing.assert_close(running_normalize(y, decay=0.9, clip=2.0, eps=1e-9)[:, :20],
                               a[:, :20], rtol=0, atol=0)  # causal


@pytest.mark.parametrize(
    "kw, match",
    [({"decay": 0.0}, "decay"), ({"decay": 1.5}, "decay"), ({"eps": 0}, "eps"),
     ({"decay": True}, "decay"), ({"clip": 0.0}, "clip"), ({"clip": -1.0}, "clip"),
     ({"clip": True}, "clip"), ({"clip": float("nan")}, "clip"), ({"clip": "3"}, "clip")],
)
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        running_normalize(np.zeros((3, 2)), **kw)


def test_bad_shapes():
    with pytest.raises(ValueError, match="x: expected"):
        running_normalize(np.zeros(3))
    with pytest.raises(ValueError, match="mask: expected"):
        running_normalize(np.zeros((2, 3, 1)), mask=np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="lengths: expected"):
        running_normalize(np.zeros((2, 3, 1)), lengths=[1, 2, 3])


# --------------------------------------------------------------------------- temporal_delta
def test_temporal_delta_removes_a_static_face_and_skips_unobserved_frames():
    from mmpgm.features.normalize import temporal_delta

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 4, generator=gen, dtype=torch.float64)
    offset = 5.0 * torch.randn(2, 1, 4, generator=gen, dtype=torch.float64)  # another face
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 3] = False
    a, b = temporal_delta(x, mask), temporal_delta(x + offset, mask)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert a.shape == (2, 9, 5)
    assert bool((a[:, 0] == 0).all()) and bool((a[0, 3] == 0).all())
    torch.testing.assert_close(a[0, 4, :4], x[0, 4] - x[0, 2])  # across the gap
    torch.testing.assert_close(a[1, 5, :4], x[1, 5] - x[1, 4])
    e = torch.log(((x[1, 5] - x[1, 4]) ** 2).mean() + 1e-6)
    torch.testing.assert_close(a[1, 5, 4], e)
    assert temporal_delta(x, log_energy=False).shape == (2, 9, 4)


def test_temporal_delta_argument_errors():
    from mmpgm.features.normalize import temporal_delta

    with pytest.raises(ValueError, match="x"):
        temporal_delta(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="mask"):
        temporal_delta(torch.zeros(1, 3, 2), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="floor"):
        temporal_delta(torch.zeros(1, 3, 2), floor=0.0)
