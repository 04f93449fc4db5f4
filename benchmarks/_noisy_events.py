"""Corpus of the noisy event classification experiment (paper section 6.4; issue 13 item 4).

Everything is made here from real components, nothing is downloaded:

* **Events**: the ten GRID digit words (``zero`` ... ``nine``) spoken by the ``espeak-ng``
  synthesizer. Training speakers are the eight voices of corpus variant ``A`` of
  :mod:`data_prep.synth_grid`, test speakers the eight (disjoint) voices of variant ``B``. Each
  (word, voice) is spoken ``renditions`` times with the pitch and the rate jittered (pitch
  +-12, rate +-25 words/min, seeded), so one speaker gives several different tokens of a word.
  Synthesized words are cached per voice (``.npz`` of 16 kHz waveforms) in ``cache_dir``.
* **Noises**, added to the waveform at an exact SNR over the clip
  (:func:`mmpgm.features.corrupt.add_noise_at_snr`):

  ``TRAIN_NOISES`` (seen in training; test "seen" items get new realizations)
      ``white`` (Gaussian), ``babble`` (a sum of 3 GRID sentences of other synthesized voices:
      ``BABBLE_VOICES[:3]`` in training, ``BABBLE_VOICES[3:]`` at test, so the babble voices of
      the test items are new too), ``nonstationary`` (pink noise under a random envelope with
      loud bursts, :func:`mmpgm.features.corrupt.nonstationary_noise`).
  ``UNSEEN_NOISES`` (never in training, only at test)
      ``hum``: mains hum, 50 or 60 Hz with harmonics up to 3 kHz of random amplitudes
      (a buzzing appliance), slowly amplitude-modulated; ``clicks``: impulsive noise,
      Poisson-distributed clicks (20-60/s, decaying 1-4 ms bursts of random sign and level) over
      a faint white floor; ``tones``: music-like interference, chords of 3 harmonic tones with
      random fundamentals (110-880 Hz) changing every 150-400 ms.

  SNRs: training ``TRAIN_SNRS`` (-5, 0, 5 dB), seen-noise test items the same, unseen-noise test
  items ``UNSEEN_SNRS`` (-8, -3, 2 dB: levels not used in training either).
* **Features** (:func:`word_features`): the word (trimmed of silence by espeak-ng's output, with
  ``MARGIN_S`` of silence both sides) -> log-mel power, 32 bands, 25 ms window, 10 ms hop,
  floored 40 dB under the clip's peak band energy, resampled in time to ``NUM_FRAMES`` = 24
  frames (a speaking-rate normalization: every word fills the window), then standardized **per
  utterance**: each band's mean over the window is removed (cepstral-mean-like, removes the
  channel and the stationary part of the noise floor) and the window is divided by its overall
  standard deviation (removes the level). One item is the flattened ``(24, 32)`` window, 768
  values: a sequence of length 1 in the item convention of mmpgm (``obs[m][n, 0]``).
* **Frame sequences** for the HMM (:func:`make_sequences`): 3-4 random digits of one speaker
  with 0.12-0.4 s pauses between them and 0.2-0.5 s of leading / trailing silence, the noise
  over the whole clip; per frame (20 ms hop) 32 log-mel bands standardized per utterance
  (band means and the overall sd of the utterance) and a context window of +-``CONTEXT``
  frames stacked (``(2 CONTEXT + 1) * 32`` values); per-frame labels ``0`` = silence, ``1 + d``
  = digit ``d`` (the frame's centre inside the word).
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:  # data_prep lives at the repository root
    sys.path.insert(0, str(_ROOT))

from data_prep.synth_grid import (  # noqa: E402
    BABBLE_VOICES,
    DIGITS,
    GRAMMAR,
    VARIANTS,
    _espeak_word,
    _trim,
)
from mmpgm.features.audio import resample  # noqa: E402
from mmpgm.features.corrupt import (  # noqa: E402
    add_noise_at_snr,
    babble_noise,
    nonstationary_noise,
    white_noise,
)

__all__ = [
    "WORDS",
    "TRAIN_VOICES",
    "TEST_VOICES",
    "TRAIN_NOISES",
    "UNSEEN_NOISES",
    "TRAIN_SNRS",
    "UNSEEN_SNRS",
    "SR",
    "NUM_FRAMES",
    "NUM_MELS",
    "CONTEXT",
    "WordSet",
    "SequenceSet",
    "synth_words",
    "make_noise",
    "word_features",
    "make_word_set",
    "make_sequences",
]

SR = 16000
WORDS = tuple(DIGITS)
TRAIN_VOICES = tuple(VARIANTS["A"]["speakers"])
TEST_VOICES = tuple(VARIANTS["B"]["speakers"])
TRAIN_NOISES = ("white", "babble", "nonstationary")
UNSEEN_NOISES = ("hum", "clicks", "tones")
TRAIN_SNRS = (-5.0, 0.0, 5.0)
UNSEEN_SNRS = (-8.0, -3.0, 2.0)
NUM_FRAMES = 24
NUM_MELS = 32
MARGIN_S = 0.08
FLOOR_DB = 40.0
CONTEXT = 4
_N_FFT, _WIN, _HOP_WORD, _HOP_SEQ = 512, 400, 160, 320


# --------------------------------------------------------------------------- speech
def synth_words(voices: Sequence, renditions: int, cache_dir, *, seed: int = 0) -> dict:
    """Waveforms ``{(voice_index, word_index, rendition): float32 (n,) at 16 kHz}``.

    Rendition ``r`` of voice ``(name, pitch, wpm)`` speaks with pitch ``pitch + dp`` and rate
    ``wpm + ds`` (``dp``, ``ds`` drawn once per (voice, rendition) from a generator seeded by
    ``seed``, the voice name and ``r``; rendition 0 is the voice's own setting). Cached per voice
    in ``cache_dir/<voice>_<pitch>_<wpm>_r<renditions>_s<seed>.npz``.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for vi, (name, pitch, wpm) in enumerate(voices):
        tag = f"{name.replace('+', '_')}_{pitch}_{wpm}_r{renditions}_s{seed}"
        path = cache_dir / f"{tag}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                for key in f.files:
                    wi, r = (int(v) for v in key.split("_"))
                    out[(vi, wi, r)] = f[key]
            continue
        rng = np.random.default_rng([seed, sum(map(ord, name)), pitch, wpm])
        arrays = {}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(renditions):
                dp = 0 if r == 0 else int(rng.integers(-12, 13))
                ds = 0 if r == 0 else int(rng.integers(-25, 26))
                p, s = int(np.clip(pitch + dp, 0, 99)), max(80, wpm + ds)
                for wi, word in enumerate(WORDS):
                    y, sr = _espeak_word(word, name, p, s, tmp)
                    y = _trim(np.asarray(y, np.float32), sr)
                    y = resample(y, sr, SR)
                    y = y / (np.abs(y).max() + 1e-9) * 0.7
                    arrays[f"{wi}_{r}"] = y.astype(np.float32)
                    out[(vi, wi, r)] = arrays[f"{wi}_{r}"]
        tmp_path = path.with_suffix(f".tmp{os.getpid()}.npz")
        np.savez(tmp_path, **arrays)
        os.replace(tmp_path, path)
    return out


def _babble_sources(voices, cache_dir, seed):
    """One waveform per babble voice: a random GRID sentence (words concatenated)."""
    rng = np.random.default_rng([seed, 77])
    cache_dir = Path(cache_dir)
    srcs = []
    for name, pitch, wpm in voices:
        path = cache_dir / f"babble_{name.replace('+', '_')}_{pitch}_{wpm}_s{seed}.npy"
        words = [str(opts[int(rng.integers(len(opts)))]) for opts in GRAMMAR]
        if path.exists():
            srcs.append(np.load(path, allow_pickle=False))
            continue
        parts = []
        with tempfile.TemporaryDirectory() as tmp:
            for w in words:
                y, sr = _espeak_word(w, name, pitch, wpm, tmp)
                parts.append(resample(_trim(np.asarray(y, np.float32), sr), sr, SR))
                parts.append(np.zeros(int(0.05 * SR), np.float32))
        y = np.concatenate(parts)
        np.save(path, y)
        srcs.append(y)
    return srcs


# --------------------------------------------------------------------------- noise
def _hum(n, rng):
    f0 = float(rng.choice([50.0, 60.0]))
    t = np.arange(n) / SR
    out = np.zeros(n)
    for h in range(1, int(3000 // f0) + 1):
        amp = float(rng.uniform(0.2, 1.0)) / math.sqrt(h)
        out += amp * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 2 * np.pi))
    mod = 1.0 + 0.3 * np.sin(2 * np.pi * float(rng.uniform(0.5, 3.0)) * t)
    return out * mod


def _clicks(n, rng):
    out = 0.05 * rng.standard_normal(n)
    rate = float(rng.uniform(20, 60))
    k = rng.poisson(rate * n / SR)
    for start in rng.integers(0, n, size=k):
        dur = int(rng.uniform(0.001, 0.004) * SR)
        seg = rng.standard_normal(dur) * np.exp(-np.arange(dur) / (0.3 * dur))
        seg *= float(rng.choice([-1.0, 1.0])) * float(rng.uniform(2.0, 10.0))
        stop = min(n, start + dur)
        out[start:stop] += seg[: stop - start]
    return out


def _tones(n, rng):
    out = np.zeros(n)
    pos = 0
    t = np.arange(n) / SR
    while pos < n:
        dur = int(rng.uniform(0.15, 0.4) * SR)
        stop = min(n, pos + dur)
        seg = np.zeros(stop - pos)
        for _ in range(3):
            f0 = float(np.exp(rng.uniform(np.log(110), np.log(880))))
            for h in range(1, 6):
                if f0 * h < SR / 2:
                    seg += np.sin(2 * np.pi * f0 * h * t[pos:stop]) / h
        ramp = np.minimum(1.0, np.minimum(np.arange(stop - pos), np.arange(stop - pos)[::-1]) / 80)
        out[pos:stop] = seg * ramp
        pos = stop
    return out


def make_noise(kind: str, n: int, rng: np.random.Generator, babble=None) -> np.ndarray:
    """``n`` samples of noise ``kind`` (``TRAIN_NOISES + UNSEEN_NOISES``) at 16 kHz."""
    if kind == "white":
        return white_noise(n, rng)
    if kind == "babble":
        return babble_noise(babble, n, rng)[0]
    if kind == "nonstationary":
        return nonstationary_noise(n, rng, sr=SR)[0]
    if kind == "hum":
        return _hum(n, rng)
    if kind == "clicks":
        return _clicks(n, rng)
    if kind == "tones":
        return _tones(n, rng)
    raise ValueError(f"kind: expected one of {TRAIN_NOISES + UNSEEN_NOISES}, got {kind!r}")


def _noisy(y, kind, snr, rng, babble):
    if kind == "clean":
        return y
    noise = make_noise(kind, y.size, rng, babble)
    return add_noise_at_snr(y, noise, snr)[0].astype(np.float32)


# --------------------------------------------------------------------------- features
_MEL = None


def _logmel(y, hop):
    """Log mel power ``(F, NUM_MELS)``: periodic Hann window of ``_WIN`` samples zero-padded to
    ``_N_FFT``, frames centred at ``t * hop`` (the signal reflect-padded as librosa's
    ``center=True``), Slaney mel filters (``librosa.filters.mel``), floored ``FLOOR_DB`` under
    the clip's peak band energy."""
    global _MEL
    if _MEL is None:
        import librosa

        _MEL = librosa.filters.mel(sr=SR, n_fft=_N_FFT, n_mels=NUM_MELS).T.astype(np.float64)
    y = np.pad(np.asarray(y, np.float64), _N_FFT // 2, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(y, _N_FFT)[::hop]
    win = np.zeros(_N_FFT)
    off = (_N_FFT - _WIN) // 2
    win[off : off + _WIN] = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(_WIN) / _WIN)
    spec = np.abs(np.fft.rfft(frames * win, axis=1)) ** 2
    mel = spec @ _MEL
    floor = mel.max() * 10 ** (-FLOOR_DB / 10) + 1e-12
    return np.log(mel + floor)


def _standardize(x):
    x = x - x.mean(axis=0, keepdims=True)
    return x / (x.std() + 1e-6)


def word_features(clip: np.ndarray) -> np.ndarray:
    """Flattened per-utterance standardized log-mel window ``(NUM_FRAMES * NUM_MELS,)`` float32
    of a word clip (see the module docstring)."""
    lm = _logmel(clip, _HOP_WORD)
    src = np.linspace(0.0, 1.0, lm.shape[0])
    dst = np.linspace(0.0, 1.0, NUM_FRAMES)
    win = np.stack([np.interp(dst, src, lm[:, b]) for b in range(NUM_MELS)], axis=1)
    return _standardize(win).reshape(-1).astype(np.float32)


class WordSet(NamedTuple):
    """Word items of one split. ``clean``/``noisy``: ``(N, NUM_FRAMES * NUM_MELS)`` float32
    features of the same token without / with noise; ``word``, ``speaker`` ``(N,)`` int;
    ``noise`` ``(N,)`` str (``"clean"`` where no noise was added); ``snr`` ``(N,)`` float
    (nan for clean)."""

    clean: np.ndarray
    noisy: np.ndarray
    word: np.ndarray
    speaker: np.ndarray
    noise: np.ndarray
    snr: np.ndarray


def make_word_set(waves: dict, noises: Sequence[str], snrs: Sequence[float], *, seed: int,
                  babble=None, copies: int = 1) -> WordSet:
    """Every token of ``waves`` (from :func:`synth_words`) ``copies`` times per noise kind in
    ``noises`` (``"clean"`` allowed), the SNR drawn uniformly from ``snrs`` per item and a new
    noise realization per item."""
    rng = np.random.default_rng([seed, 13])
    pad = np.zeros(int(MARGIN_S * SR), np.float32)
    cols = {k: [] for k in WordSet._fields}
    for (vi, wi, _r), y in sorted(waves.items()):
        clip = np.concatenate([pad, y, pad])
        clean = word_features(clip)
        for kind in noises:
            for _ in range(copies if kind != "clean" else 1):
                snr = float(rng.choice(snrs)) if kind != "clean" else math.nan
                if kind == "clean":
                    x = clean
                else:
                    x = word_features(_noisy(clip, kind, snr, rng, babble))
                cols["clean"].append(clean)
                cols["noisy"].append(x)
                cols["word"].append(wi)
                cols["speaker"].append(vi)
                cols["noise"].append(kind)
                cols["snr"].append(snr)
    return WordSet(
        clean=np.stack(cols["clean"]),
        noisy=np.stack(cols["noisy"]),
        word=np.asarray(cols["word"], np.int64),
        speaker=np.asarray(cols["speaker"], np.int64),
        noise=np.asarray(cols["noise"]),
        snr=np.asarray(cols["snr"], np.float64),
    )


class SequenceSet(NamedTuple):
    """Frame sequences of one split. ``frames``: ``(N, T, (2 CONTEXT + 1) * NUM_MELS)``
    context windows, ``raw``: ``(N, T, NUM_MELS)`` the centre frames; ``labels``: ``(N, T)``
    int (0 silence, ``1 + d`` digit ``d``); ``lengths`` ``(N,)``; ``noise`` ``(N,)`` str."""

    frames: np.ndarray
    raw: np.ndarray
    labels: np.ndarray
    lengths: np.ndarray
    noise: np.ndarray


def _context(x, c):
    T = x.shape[0]
    idx = np.clip(np.arange(T)[:, None] + np.arange(-c, c + 1)[None, :], 0, T - 1)
    return x[idx].reshape(T, -1)


def make_sequences(waves: dict, num_per_speaker: int, noises: Sequence[str],
                   snrs: Sequence[float], *, seed: int, babble=None) -> SequenceSet:
    """``num_per_speaker`` digit strings per speaker of ``waves`` for each kind in ``noises``
    (the same strings for every kind; a new noise realization and SNR per sequence)."""
    rng = np.random.default_rng([seed, 29])
    speakers = sorted({k[0] for k in waves})
    reps = sorted({k[2] for k in waves})
    hop_s = _HOP_SEQ / SR
    clips = []
    for vi in speakers:
        for _ in range(num_per_speaker):
            n_words = int(rng.integers(3, 5))
            parts, spans = [np.zeros(int(rng.uniform(0.2, 0.5) * SR), np.float32)], []
            pos = parts[0].size
            for j in range(n_words):
                wi = int(rng.integers(len(WORDS)))
                y = waves[(vi, wi, int(rng.choice(reps)))]
                spans.append((pos, pos + y.size, wi))
                parts.append(y)
                pos += y.size
                gap = rng.uniform(0.12, 0.4) if j < n_words - 1 else rng.uniform(0.2, 0.5)
                parts.append(np.zeros(int(gap * SR), np.float32))
                pos += parts[-1].size
            clips.append((np.concatenate(parts), spans))
    out = {k: [] for k in ("frames", "raw", "labels", "noise")}
    for kind in noises:
        for clip, spans in clips:
            snr = float(rng.choice(snrs)) if kind != "clean" else math.nan
            x = _standardize(_logmel(_noisy(clip, kind, snr, rng, babble), _HOP_SEQ))
            T = x.shape[0]
            centre = np.arange(T) * hop_s  # librosa center=True: frame t centred at t * hop
            lab = np.zeros(T, np.int64)
            for a, b, wi in spans:
                lab[(centre >= a / SR) & (centre < b / SR)] = 1 + wi
            out["frames"].append(_context(x, CONTEXT).astype(np.float32))
            out["raw"].append(x.astype(np.float32))
            out["labels"].append(lab)
            out["noise"].append(kind)
    lengths = np.asarray([f.shape[0] for f in out["frames"]])
    T = int(lengths.max())
    N = len(lengths)
    D = out["frames"][0].shape[1]
    frames = np.zeros((N, T, D), np.float32)
    raw = np.zeros((N, T, NUM_MELS), np.float32)
    labels = np.full((N, T), -1, np.int64)
    for i, (f, r, lab) in enumerate(zip(out["frames"], out["raw"], out["labels"], strict=True)):
        frames[i, : f.shape[0]] = f
        raw[i, : r.shape[0]] = r
        labels[i, : lab.shape[0]] = lab
    return SequenceSet(frames, raw, labels, lengths, np.asarray(out["noise"]))


def babble_sources(split: str, cache_dir, seed: int = 0):
    """Babble waveforms: ``split="train"`` voices ``BABBLE_VOICES[:3]``, ``"test"`` the rest."""
    voices = BABBLE_VOICES[:3] if split == "train" else BABBLE_VOICES[3:]
    return _babble_sources(voices, cache_dir, seed)
