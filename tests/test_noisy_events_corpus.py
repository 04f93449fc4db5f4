"""The corpus maker of ``benchmarks/noisy_event_classification.py`` (``_noisy_events.py``)
on synthetic waveforms (no synthesizer needed): the log-mel analysis against librosa, the
per-utterance standardization, exact SNRs for every noise kind, and the frame labels and context
windows of the HMM sequences."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
ne = pytest.importorskip("_noisy_events")
librosa = pytest.importorskip("librosa")

from mmpgm.features.corrupt import snr_db  # noqa: E402


def _tone(freq, seconds, rng):
    t = np.arange(int(seconds * ne.SR)) / ne.SR
    env = np.hanning(t.size)
    return (0.5 * env * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(
        np.float32
    )


def test_logmel_matches_librosa():
    """Same frames, window, FFT size and mel filters as ``librosa.feature.melspectrogram`` with
    reflect padding (float64, relative 1e-9 on the power before the floor and the log)."""
    rng = np.random.default_rng(0)
    y = rng.standard_normal(5000)
    for hop in (160, 320):
        ref = librosa.feature.melspectrogram(
            y=y, sr=ne.SR, n_fft=512, win_length=400, hop_length=hop, n_mels=ne.NUM_MELS,
            power=2.0, center=True, pad_mode="reflect",
        ).T  # fmt: skip
        floor = ref.max() * 10 ** (-ne.FLOOR_DB / 10) + 1e-12
        np.testing.assert_allclose(ne._logmel(y, hop), np.log(ref + floor), rtol=1e-9, atol=1e-9)


def test_word_features_standardized_per_utterance():
    """Every band of the (24, 32) window has mean 0 and the window has sd 1, whatever the level
    of the clip (a gain changes nothing but the floor's position, which scales with it)."""
    rng = np.random.default_rng(1)
    clip = _tone(440.0, 0.4, rng)
    x = ne.word_features(clip)
    assert x.shape == (ne.NUM_FRAMES * ne.NUM_MELS,) and x.dtype == np.float32
    win = x.reshape(ne.NUM_FRAMES, ne.NUM_MELS).astype(np.float64)
    np.testing.assert_allclose(win.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(win.std(), 1.0, rtol=1e-4)
    np.testing.assert_allclose(ne.word_features(100.0 * clip), x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ne.TRAIN_NOISES + ne.UNSEEN_NOISES)
def test_noise_kinds_at_exact_snr(kind):
    rng = np.random.default_rng(2)
    y = _tone(300.0, 0.5, rng)
    babble = [_tone(f, 0.7, rng) for f in (200.0, 350.0)]
    noise = ne.make_noise(kind, y.size, np.random.default_rng(3), babble)
    assert noise.shape == y.shape and np.all(np.isfinite(noise)) and np.any(noise)
    for snr in (-8.0, 0.0, 5.0):
        noisy = ne._noisy(y, kind, snr, np.random.default_rng(4), babble)
        assert noisy.dtype == np.float32
        assert snr_db(y, noisy.astype(np.float64) - y) == pytest.approx(snr, abs=1e-4)


def test_unknown_noise_kind_raises():
    with pytest.raises(ValueError, match="kind: expected one of"):
        ne.make_noise("pink", 10, np.random.default_rng(0))


def test_sequences_labels_and_context():
    """Word frames are labelled 1 + word (their count = the words' durations in frames, +-1 per
    word), silence 0, padding -1; the centre of every context window is the frame itself (edge
    frames repeated); clean word frames carry more energy than silence frames."""
    rng = np.random.default_rng(5)
    freqs = 200.0 * 1.3 ** np.arange(len(ne.WORDS))
    waves = {(v, w, r): _tone(freqs[w], 0.2 + 0.02 * w, rng)
             for v in range(2) for w in range(len(ne.WORDS)) for r in range(2)}  # fmt: skip
    S = ne.make_sequences(waves, 2, ("clean", "white"), (0.0,), seed=0)
    N, T, D = S.frames.shape
    assert N == 2 * 2 * 2 and D == (2 * ne.CONTEXT + 1) * ne.NUM_MELS
    assert list(S.noise) == ["clean"] * 4 + ["white"] * 4
    hop = 320
    for i in range(N):
        n = S.lengths[i]
        lab = S.labels[i]
        assert np.all(lab[n:] == -1) and np.all(lab[:n] >= 0) and lab[:n].max() <= len(ne.WORDS)
        centre = S.frames[i, :n, ne.CONTEXT * ne.NUM_MELS : (ne.CONTEXT + 1) * ne.NUM_MELS]
        np.testing.assert_array_equal(centre, S.raw[i, :n])
        np.testing.assert_array_equal(S.frames[i, 0, : ne.NUM_MELS], S.raw[i, 0])
        # runs of one word: each as long as that word's tone (in frames) up to one frame
        runs, t = [], 0
        while t < n:
            u = t
            while u < n and lab[u] == lab[t]:
                u += 1
            if lab[t] > 0:
                runs.append((lab[t] - 1, u - t))
            t = u
        assert 3 <= len(runs) <= 4
        for w, length in runs:
            assert abs(length - (0.2 + 0.02 * w) * ne.SR / hop) <= 1.0 + 1e-9, (w, length)
    # the same strings under both kinds (same labels), and energy where the labels say words
    np.testing.assert_array_equal(S.labels[:4], S.labels[4:])
    for i in range(4):
        n = S.lengths[i]
        energy = S.raw[i, :n].mean(1)  # standardized log-mel averaged over the bands
        word, sil = S.labels[i, :n] > 0, S.labels[i, :n] == 0
        # silence of a clean clip is digital zero: the floor, the utterance's minimum (measured
        # -0.22 against a word mean of 0.41 for these tones)
        assert np.median(energy[sil]) == pytest.approx(energy.min(), abs=1e-6)
        assert energy[word].mean() > energy[sil].mean() + 0.3
