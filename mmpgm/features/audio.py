"""Audio features at the video frame rate (paper section 7.2; DESIGN.md section 6).

Audio is resampled to 16 kHz and analysed with a 1024-sample window and a
640-sample hop, i.e. exactly 25 frames per second, one audio frame per video
frame.  Frame ``t`` covers the 40 ms interval ``[t*hop, (t+1)*hop)`` and its
analysis window (1024 samples) is centred on the middle of that interval, so
the number of frames is exactly ``round(duration * 25)``, rounded half up
(3 s -> 75 frames).

Three feature kinds are available through ``kind=``:

* ``"stft"``  -- log-magnitude STFT, 513 bins (the paper's representation);
* ``"logmel"`` -- log mel-band energies (``n_mels`` bands, default 40);
* ``"mfcc"``   -- MFCCs (``n_mfcc`` coefficients, default 13) of the log-mel.

``align_frames`` pads or trims a feature matrix to a given frame count and
*returns* how many frames it padded / trimmed, so nothing is done silently.

Speech enhancement targets (paper section 4.6): ``ideal_ratio_mask`` computes the
ideal ratio mask of a clean and a noise spectrogram, the per time-frequency bin
target of ``GatedMixture(head="ratio_mask")``; ``apply_ratio_mask`` multiplies a
(predicted) mask with the noisy spectrogram (the noisy phase is kept);
``waveform_ratio_mask`` is the IRM of a clean and a noisy waveform on exactly the frames of
``audio_features`` (``stft_magnitude``, the one STFT definition both use).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 1024
FRAME_RATE = 25
HOP = SAMPLE_RATE // FRAME_RATE  # 640
N_BINS = N_FFT // 2 + 1  # 513
LOG_EPS = 1e-5
FEATURE_KINDS = ("stft", "logmel", "mfcc")

__all__ = [
    "SAMPLE_RATE",
    "N_FFT",
    "FRAME_RATE",
    "HOP",
    "N_BINS",
    "FEATURE_KINDS",
    "AudioReadError",
    "AlignInfo",
    "load_audio",
    "num_frames",
    "frame_signal_stft",
    "stft_magnitude",
    "audio_features",
    "align_frames",
    "frame_rms",
    "resample",
    "ideal_ratio_mask",
    "apply_ratio_mask",
    "waveform_ratio_mask",
]


class AudioReadError(RuntimeError):
    """An audio file is missing, unreadable, corrupt or too short."""


@dataclass(frozen=True)
class AlignInfo:
    """What ``align_frames`` did: frames appended (``padded``) or dropped (``trimmed``)."""

    n_in: int
    n_out: int
    padded: int
    trimmed: int

    def as_dict(self) -> dict:
        return {
            "n_in": self.n_in,
            "n_out": self.n_out,
            "padded": self.padded,
            "trimmed": self.trimmed,
        }


def load_audio(path, sr: int = SAMPLE_RATE, min_seconds: float = 0.02) -> np.ndarray:
    """Read a (mono-mixed) waveform from ``path`` and resample it to ``sr`` Hz.

    Raises :class:`AudioReadError` naming the file if it cannot be decoded or
    holds less than ``min_seconds`` of audio (e.g. a truncated file).
    """
    import warnings

    path = str(path)
    try:
        import soundfile as sf

        y, native = sf.read(path, dtype="float32", always_2d=True)
        y = y.mean(axis=1)
    except Exception as exc:
        if path.lower().endswith((".wav", ".flac", ".ogg")):
            raise AudioReadError(
                f"cannot decode audio {path}: {type(exc).__name__}: {exc}"
            ) from exc
        try:  # other containers (e.g. audio tracks of .mpg/.mp4) through audioread
            import librosa

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                y, native = librosa.load(path, sr=None, mono=True)
        except Exception as exc2:
            raise AudioReadError(
                f"cannot decode audio {path}: {type(exc2).__name__}: {exc2}"
            ) from exc2
    if native != sr and y.size:
        y = resample(y, native, sr)
    if y.size < max(1, int(min_seconds * sr)):
        raise AudioReadError(
            f"audio {path} too short: {y.size} samples at {sr} Hz (truncated or empty file?)"
        )
    if not np.all(np.isfinite(y)):
        raise AudioReadError(f"audio {path} contains non-finite samples")
    return y.astype(np.float32, copy=False)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Band-limited resampling (soxr high quality, as ``librosa.resample``'s default)."""
    if orig_sr == target_sr:
        return np.asarray(y, dtype=np.float32)
    try:
        import soxr
    except ImportError:  # pragma: no cover - soxr is a librosa dependency
        import librosa

        return librosa.resample(y, orig_sr=orig_sr, target_sr=target_sr).astype(np.float32)
    return soxr.resample(np.asarray(y, dtype=np.float32), orig_sr, target_sr, "HQ")


def num_frames(n_samples: int, sr: int = SAMPLE_RATE, frame_rate: int = FRAME_RATE) -> int:
    """Number of feature frames for ``n_samples`` samples: ``round(duration * frame_rate)``."""
    return int(math.floor(n_samples * frame_rate / sr + 0.5))


def frame_signal_stft(y: np.ndarray, n_fft: int = N_FFT, hop: int = HOP) -> np.ndarray:
    """Complex STFT with exactly ``round(len(y)/hop)`` frames, shape (T, n_fft//2+1).

    The signal is zero-padded by ``(n_fft-hop)/2`` on the left and as needed
    on the right (or trimmed on the right) so that window ``t`` is centred on
    the middle of ``[t*hop, (t+1)*hop)``; then a non-centred STFT is taken.
    """
    y = np.asarray(y, dtype=np.float32)
    n = int(math.floor(len(y) / hop + 0.5))
    if n < 1:
        raise ValueError(f"signal of {len(y)} samples gives no frame at hop {hop}")
    left = (n_fft - hop) // 2
    total = (n - 1) * hop + n_fft
    right = total - left - len(y)
    if right >= 0:
        yp = np.pad(y, (left, right))
    else:
        yp = np.pad(y[: len(y) + right], (left, 0))
    # periodic Hann window and a non-centred STFT, as librosa.stft(center=False)
    window = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)).astype(np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(yp, n_fft)[::hop]
    S = np.fft.rfft(frames * window, axis=1).T
    assert S.shape[1] == n, (S.shape, n)
    return S.T


def _mono_16k(y, sr):
    y = np.asarray(y, dtype=np.float32)
    if y.ndim != 1:
        raise ValueError(f"expected a mono 1-D waveform, got shape {y.shape}")
    if sr != SAMPLE_RATE:
        y = resample(y, sr, SAMPLE_RATE)
    return y


def stft_magnitude(y: np.ndarray, sr: int = SAMPLE_RATE) -> np.ndarray:
    """STFT magnitude ``|frame_signal_stft(y)|``, shape (T, 513) float32, T = round(duration*25).

    The spectrogram behind every audio feature (``audio_features``) and every ratio-mask target
    (``waveform_ratio_mask``), so features and masks share their frames and bins. ``y`` is
    resampled to 16 kHz first if ``sr`` differs.
    """
    return np.abs(frame_signal_stft(_mono_16k(y, sr))).astype(np.float32, copy=False)


def audio_features(
    y: np.ndarray, sr: int = SAMPLE_RATE, kind: str = "stft", *, n_mels: int = 40, n_mfcc: int = 13
) -> np.ndarray:
    """Per-frame features of a waveform, shape (T, D) float32, T = round(duration*25).

    ``y`` is resampled to 16 kHz first if ``sr`` differs.  ``kind`` is one of
    ``"stft"`` (D = 513 log-magnitudes), ``"logmel"`` (D = ``n_mels``) or
    ``"mfcc"`` (D = ``n_mfcc``).
    """
    if kind not in FEATURE_KINDS:
        raise ValueError(f"kind must be one of {FEATURE_KINDS}, got {kind!r}")

    mag = stft_magnitude(y, sr)
    if kind == "stft":
        out = np.log(mag + LOG_EPS)
    else:
        import librosa

        mel = librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels)
        logmel = np.log(mag**2 @ mel.T + LOG_EPS**2)
        if kind == "logmel":
            out = logmel
        else:
            import scipy.fft

            out = scipy.fft.dct(logmel, type=2, norm="ortho", axis=1)[:, :n_mfcc]
    return np.ascontiguousarray(out, dtype=np.float32)


def align_frames(feats: np.ndarray, n_frames: int, mode: str = "edge"):
    """Pad (``mode`` ``"edge"`` repeats the last frame, ``"zero"`` appends zeros)
    or trim ``feats`` (T, ...) to ``n_frames`` rows.

    Returns ``(aligned, AlignInfo)``; ``info.padded`` / ``info.trimmed`` say
    how many frames were appended / dropped so callers can mask or report them.
    """
    if mode not in ("edge", "zero"):
        raise ValueError(f"mode must be 'edge' or 'zero', got {mode!r}")
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    feats = np.asarray(feats)
    T = feats.shape[0]
    if T == n_frames:
        return feats, AlignInfo(T, n_frames, 0, 0)
    if T > n_frames:
        return feats[:n_frames], AlignInfo(T, n_frames, 0, T - n_frames)
    pad = n_frames - T
    if mode == "edge" and T > 0:
        tail = np.repeat(feats[-1:], pad, axis=0)
    else:
        tail = np.zeros((pad,) + feats.shape[1:], dtype=feats.dtype)
    return np.concatenate([feats, tail], axis=0), AlignInfo(T, n_frames, pad, 0)


def frame_rms(y: np.ndarray, n_frames: int | None = None, hop: int = HOP) -> np.ndarray:
    """Root-mean-square of ``y`` in consecutive ``hop``-sample frames (frame ``t`` is
    ``[t*hop, (t+1)*hop)``), zero-padded to ``n_frames`` frames (default ceil)."""
    y = np.asarray(y, dtype=np.float64)
    if n_frames is None:
        n_frames = int(math.ceil(len(y) / hop))
    yp = np.zeros(n_frames * hop)
    m = min(len(y), n_frames * hop)
    yp[:m] = y[:m]
    return np.sqrt(np.mean(yp.reshape(n_frames, hop) ** 2, axis=1))


def _is_torch(*arrays) -> bool:
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; numpy users skip it
    return torch is not None and any(isinstance(a, torch.Tensor) for a in arrays)


def _positive(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")


def ideal_ratio_mask(
    clean_magnitude,
    noise_magnitude,
    *,
    eps: float = 1e-8,
    power: float = 0.5,
    spectral_power: float = 2.0,
):
    r"""Ideal ratio mask (IRM) of a clean-speech and a noise spectrogram, values in [0, 1].

    .. math::
        \mathrm{IRM}_{t,f} = \left(\frac{|S_{t,f}|^q}
        {\max(|S_{t,f}|^q + |N_{t,f}|^q,\ \epsilon)}\right)^{\beta}

    with ``q = spectral_power`` and ``beta = power``. The defaults ``q = 2, beta = 0.5`` are
    Wang et al.'s IRM (the square root of the speech-to-total energy ratio per bin);
    ``q = 1, beta = 1`` is the magnitude ratio ``|S| / (|S| + |N|)``, which turns a noisy
    magnitude ``|S| + |N|`` (speech and noise in phase) back into ``|S|`` exactly under
    :func:`apply_ratio_mask`. The mask is exactly 1 where the noise is 0 (and
    ``|S|^q >= eps``) and exactly 0 where the speech is 0; ``eps`` only guards silent bins
    (both ~0, mask ~0).

    ``clean_magnitude``, ``noise_magnitude``: broadcastable magnitude spectrograms, e.g.
    ``(T, F)``; their absolute values are used, so complex STFTs are accepted too. numpy
    arrays give a numpy array, torch tensors a tensor (on their device and real dtype; a
    numpy partner is converted to it).
    """
    _positive("eps", eps)
    _positive("power", power)
    _positive("spectral_power", spectral_power)
    if _is_torch(clean_magnitude, noise_magnitude):
        import torch

        ref = clean_magnitude if isinstance(clean_magnitude, torch.Tensor) else noise_magnitude
        s, n = (
            torch.as_tensor(a, device=ref.device).abs() for a in (clean_magnitude, noise_magnitude)
        )
        if not s.is_floating_point():
            s = s.to(torch.get_default_dtype())
        s, n = s**spectral_power, n.to(s.dtype) ** spectral_power
        ratio = (s / (s + n).clamp_min(eps)).clamp(0.0, 1.0)
    else:
        s = np.abs(np.asarray(clean_magnitude))
        n = np.abs(np.asarray(noise_magnitude))
        if s.dtype.kind != "f":
            s = s.astype(np.float64)
        s, n = s**spectral_power, n.astype(s.dtype) ** spectral_power
        ratio = np.clip(s / np.maximum(s + n, eps), 0.0, 1.0)
    return ratio if power == 1 else ratio**power


def apply_ratio_mask(mask, noisy_magnitude):
    """Enhanced spectrogram ``mask * noisy``: the mask (e.g. ``MixturePosterior.predictive`` of
    ``GatedMixture(head="ratio_mask")``, or :func:`ideal_ratio_mask`) times the noisy magnitude
    spectrogram. A complex noisy STFT gives the complex enhanced STFT with the noisy phase
    reused, ready for the inverse STFT; a magnitude gives the enhanced magnitude.

    ``mask`` must lie in [0, 1] (ValueError otherwise, NaN included) and broadcast against
    ``noisy_magnitude``. numpy in, numpy out; torch in, torch out.
    """
    if _is_torch(mask, noisy_magnitude):
        import torch

        ref = mask if isinstance(mask, torch.Tensor) else noisy_magnitude
        mask = torch.as_tensor(mask, device=ref.device)
        noisy = torch.as_tensor(noisy_magnitude, device=ref.device)
    else:
        mask, noisy = np.asarray(mask), np.asarray(noisy_magnitude)
    bad = ~((mask >= 0) & (mask <= 1))  # NaN fails both comparisons
    if bool(bad.any()):
        raise ValueError(
            f"mask: expected values in [0, 1], got {int(bad.sum())} outside "
            f"(NaN included), e.g. {mask[bad][:3].tolist()}"
        )
    return mask * noisy


def waveform_ratio_mask(
    clean: np.ndarray, noisy: np.ndarray, sr: int = SAMPLE_RATE, **irm_kwargs
) -> np.ndarray:
    """Ideal ratio mask (T, 513) float32 of a noisy waveform against its clean source.

    The noise is ``noisy - clean`` (what was added, e.g. by
    :func:`mmpgm.features.corrupt.corrupt_audio`); the mask is :func:`ideal_ratio_mask` of
    ``stft_magnitude(clean)`` and ``stft_magnitude(noise)`` (``irm_kwargs``: ``power``,
    ``spectral_power``, ``eps``; default Wang's IRM), on exactly the frames and bins of
    :func:`audio_features`. Where the noise magnitude is exactly 0 (no noise added, or bins
    the noise does not reach) the mask is 1 by definition -- ``mask * |noisy|`` is then the
    clean magnitude -- also in digitally silent bins, where :func:`ideal_ratio_mask` alone
    would give 0/eps.
    """
    clean = _mono_16k(clean, sr).astype(np.float64)
    noisy = _mono_16k(noisy, sr).astype(np.float64)
    if clean.shape != noisy.shape:
        raise ValueError(f"clean {clean.shape} and noisy {noisy.shape} waveforms differ in length")
    s = stft_magnitude(clean)
    n = stft_magnitude(noisy - clean)
    irm = ideal_ratio_mask(s, n, **irm_kwargs)
    return np.where(n == 0, np.float32(1), irm).astype(np.float32)
