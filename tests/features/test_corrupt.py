"""Corruptions: exact SNR, patch segment/location/indicator, determinism, validation."""

import json

import numpy as np
import pytest

from mmpgm.features import corrupt as fc


def _speech_like(n, seed=0):
    r = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    return (
        np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) ** 2
        + 0.01 * r.standard_normal(n)
    ).astype(np.float32)


@pytest.mark.parametrize("kind", fc.NOISE_KINDS)
@pytest.mark.parametrize("snr", [-5.0, 0.0, 10.0, 20.0])
def test_snr_within_0p1_db(kind, snr):
    y = _speech_like(48000)
    babble = [_speech_like(30000 + 1000 * k, seed=k + 1) for k in range(4)]
    noisy, ind, rec = fc.corrupt_audio(
        y, np.random.default_rng(3), kind, snr, babble_sources=babble
    )
    assert noisy.shape == y.shape and noisy.dtype == np.float32
    measured = fc.snr_db(y, noisy.astype(np.float64) - y)
    assert abs(measured - snr) < 0.1
    assert ind.shape == (75,) and ind.all()
    assert rec["kind"] == kind and rec["snr_db"] == snr
    json.dumps(rec)  # recordable


def test_noise_on_a_segment():
    y = _speech_like(48000)
    noisy, ind, rec = fc.corrupt_audio(
        y, np.random.default_rng(0), "white", 5.0, seg_range=(20, 30)
    )
    s, n = rec["start_frame"], rec["n_frames"]
    assert 20 <= n <= 30 and ind.sum() == n and ind[s : s + n].all()
    diff = noisy - y
    assert np.all(diff[: s * 640] == 0) and np.all(diff[(s + n) * 640 :] == 0)
    a, b = s * 640, (s + n) * 640
    assert abs(fc.snr_db(y[a:b], diff[a:b]) - 5.0) < 0.1


def test_nonstationary_noise_is_nonstationary():
    x, rec = fc.nonstationary_noise(48000, np.random.default_rng(0))
    rms = np.sqrt((x.reshape(75, 640) ** 2).mean(1))
    assert rms.max() / np.median(rms) > 2.0 and rec["n_bursts"] >= 2


def test_babble_requires_sources():
    with pytest.raises(ValueError, match="babble"):
        fc.corrupt_audio(_speech_like(16000), np.random.default_rng(0), "babble", 0.0)


def test_validation():
    with pytest.raises(ValueError):
        fc.corrupt_audio(_speech_like(16000), np.random.default_rng(0), "pink", 0.0)
    with pytest.raises(TypeError):
        fc.corrupt_audio(_speech_like(16000), 0, "white", 0.0)
    with pytest.raises(TypeError):
        fc.corrupt_video(np.zeros((30, 10, 10), np.uint8), np.random.RandomState(0))


@pytest.mark.parametrize("seed", range(8))
def test_video_patch_located_where_the_label_says(seed):
    T, H, W = 75, 288, 360
    frames = np.random.default_rng(100).integers(0, 256, (T, H, W, 3), dtype=np.uint8)
    out, ind, rec = fc.corrupt_video(frames, np.random.default_rng(seed))
    assert 20 <= rec["n_frames"] <= 30 and 50 <= rec["side"] <= 150
    assert ind.dtype == bool and ind.sum() == rec["n_frames"]
    changed = np.any(out != frames, axis=(1, 2, 3))
    assert np.array_equal(changed, ind)
    s, x, y, side = rec["start_frame"], rec["x"], rec["y"], rec["side"]
    assert ind[s : s + rec["n_frames"]].all()
    patch_mask = np.zeros((H, W), bool)
    patch_mask[y : y + side, x : x + side] = True
    diff = np.any(out[s] != frames[s], axis=-1)
    assert not diff[~patch_mask].any()
    assert np.all(out[s][patch_mask] == rec["brightness"])


def test_video_patch_clipped_and_in_region_and_deterministic():
    frames = np.zeros((25, 80, 100), np.uint8)  # grey, smaller than the largest patch
    for seed in range(10):
        out, ind, rec = fc.corrupt_video(frames, np.random.default_rng(seed), side_range=(90, 150))
        assert rec["side"] == 80 and rec["y"] == 0 and 0 <= rec["x"] <= 20
        assert 20 <= ind.sum() <= 25
    big = np.zeros((40, 288, 360), np.uint8)
    region = (100, 60, 150, 150)
    for seed in range(10):
        _, _, rec = fc.corrupt_video(big, np.random.default_rng(seed), region=region)
        cx, cy = rec["x"] + rec["side"] / 2, rec["y"] + rec["side"] / 2
        assert 100 - 1 <= cx <= 250 + 1 and 60 - 1 <= cy <= 210 + 1
    a = fc.corrupt_video(big, np.random.default_rng(5))
    b = fc.corrupt_video(big, np.random.default_rng(5))
    assert a[2] == b[2] and np.array_equal(a[0], b[0])
