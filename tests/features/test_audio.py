"""Audio features: exact 25 frames/s framing, shapes, kinds, alignment, read errors."""

import numpy as np
import pytest

librosa = pytest.importorskip("librosa", reason="librosa not installed (pip install 'mmpgm[prep]')")

from mmpgm.features import audio as fa  # noqa: E402


@pytest.mark.parametrize("seconds", [3.0, 2.0, 1.0, 2.52, 0.5])
def test_stft_frame_count_and_shape(seconds):
    y = np.random.default_rng(0).standard_normal(int(round(seconds * 16000))).astype(np.float32)
    X = fa.audio_features(y, 16000, kind="stft")
    assert X.shape == (int(np.floor(seconds * 25 + 0.5)), 513)  # rounded half up
    assert X.dtype == np.float32 and np.all(np.isfinite(X))


def test_three_seconds_is_75_by_513_and_resampled():
    for sr in (16000, 22050, 50000):
        y = np.random.default_rng(1).standard_normal(3 * sr).astype(np.float32)
        assert fa.audio_features(y, sr).shape == (75, 513)
    assert fa.HOP == 640 and fa.N_FFT == 1024


@pytest.mark.parametrize("kind,dim", [("logmel", 40), ("mfcc", 13)])
def test_alternative_kinds(kind, dim):
    y = np.random.default_rng(2).standard_normal(48000).astype(np.float32)
    X = fa.audio_features(y, kind=kind)
    assert X.shape == (75, dim) and np.all(np.isfinite(X))


def test_bad_kind_raises():
    with pytest.raises(ValueError, match="kind"):
        fa.audio_features(np.zeros(16000, np.float32), kind="spectrogram")


def test_frames_are_centred_on_their_40ms_interval():
    # a burst inside [t*hop, (t+1)*hop) must peak at frame t
    for t in (0, 10, 37, 74):
        y = np.zeros(48000, np.float32)
        y[t * 640 + 200 : t * 640 + 440] = np.random.default_rng(t).standard_normal(240)
        energy = np.exp(fa.audio_features(y)).sum(1)
        assert int(np.argmax(energy)) == t


def test_align_frames_pads_and_trims_and_reports():
    X = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    Y, info = fa.align_frames(X, 13)
    assert Y.shape == (13, 3) and info.padded == 3 and info.trimmed == 0
    assert np.array_equal(Y[10:], np.repeat(X[-1:], 3, 0))
    Y, info = fa.align_frames(X, 13, mode="zero")
    assert np.all(Y[10:] == 0)
    Y, info = fa.align_frames(X, 7)
    assert Y.shape == (7, 3) and info.trimmed == 3 and info.padded == 0
    assert np.array_equal(Y, X[:7])
    Y, info = fa.align_frames(X, 10)
    assert info.padded == info.trimmed == 0
    with pytest.raises(ValueError):
        fa.align_frames(X, 5, mode="reflect")


def test_load_audio_errors_name_the_file(tmp_path):
    sf = pytest.importorskip("soundfile")
    bad = tmp_path / "garbage.wav"
    bad.write_bytes(b"RIFF\x00\x00junkjunkjunk" * 10)
    with pytest.raises(fa.AudioReadError, match="garbage.wav"):
        fa.load_audio(bad)
    good = tmp_path / "ok.wav"
    sf.write(
        str(good), np.random.default_rng(0).uniform(-0.5, 0.5, 22050).astype(np.float32), 22050
    )
    y = fa.load_audio(good)
    assert y.shape == (16000,)
    with pytest.raises(fa.AudioReadError):
        fa.load_audio(tmp_path / "missing.wav")


def test_frame_rms():
    y = np.ones(640 * 3, np.float32)
    y[640:1280] = 0
    assert np.allclose(fa.frame_rms(y, 4), [1, 0, 1, 0])


def test_stft_magnitude_is_the_spectrogram_of_the_features():
    y = np.random.default_rng(3).standard_normal(48000).astype(np.float32)
    mag = fa.stft_magnitude(y)
    assert mag.shape == (75, 513) and mag.dtype == np.float32
    np.testing.assert_array_equal(fa.audio_features(y), np.log(mag + fa.LOG_EPS))
    np.testing.assert_array_equal(mag, np.abs(fa.frame_signal_stft(y)))
    assert fa.stft_magnitude(np.zeros(3 * 22050, np.float32), 22050).shape == (75, 513)


def test_waveform_ratio_mask():
    rng = np.random.default_rng(4)
    clean = np.zeros(48000, np.float32)
    clean[16000:32000] = rng.standard_normal(16000)  # digital silence around 1 s of "speech"
    # no noise: exactly 1 everywhere, the silent bins included
    np.testing.assert_array_equal(fa.waveform_ratio_mask(clean, clean), np.ones((75, 513)))
    noisy = clean.copy()
    noisy[:8000] += 0.1 * rng.standard_normal(8000).astype(np.float32)  # noise in 0-0.5 s only
    m = fa.waveform_ratio_mask(clean, noisy)
    assert m.shape == (75, 513) and m.dtype == np.float32
    assert (m[:10] == 0).all()  # noise alone: mask 0
    assert (m[15:] == 1).all()  # no noise reaches these frames: mask 1
    S, N = fa.stft_magnitude(clean), fa.stft_magnitude(noisy.astype(np.float64) - clean)
    np.testing.assert_allclose(m, np.where(N == 0, 1, fa.ideal_ratio_mask(S, N)), atol=1e-6)
    with pytest.raises(ValueError, match="differ"):
        fa.waveform_ratio_mask(clean, noisy[:-640])
