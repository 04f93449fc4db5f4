"""Seeded, recorded corruptions (paper section 7.4; DESIGN.md section 6).

Every function takes a ``numpy.random.Generator`` and returns
``(corrupted, indicator, record)``: the corrupted signal, a per-frame boolean
indicator (True = this frame was corrupted) and a JSON-serialisable dict of
every random choice, so the corruption can be saved next to the data and
reproduced.

* :func:`corrupt_video` -- a square patch (side 50-150 px, clipped to the
  frame) of a random uniform brightness over a random segment of 20-30
  consecutive frames.
* :func:`corrupt_audio` -- additive noise scaled to an exact SNR (dB):
  ``"white"`` Gaussian noise, ``"babble"`` (a sum of several other speakers'
  waveforms, passed in), or ``"nonstationary"`` (pink noise under a slowly
  varying random envelope with random loud bursts; a stand-in for the
  paper's casino noise).  SNR is ``10 log10(sum s^2 / sum n^2)`` over the
  corrupted span.
"""

from __future__ import annotations

import math

import numpy as np

from .audio import FRAME_RATE, HOP, SAMPLE_RATE

NOISE_KINDS = ("white", "babble", "nonstationary")
PATCH_SHAPES = ("square", "rect", "ellipse")

__all__ = [
    "NOISE_KINDS",
    "PATCH_SHAPES",
    "apply_gain",
    "corrupt_video",
    "corrupt_audio",
    "add_noise_at_snr",
    "snr_db",
    "white_noise",
    "pink_noise",
    "babble_noise",
    "nonstationary_noise",
    "frames_to_samples",
]


def _check_rng(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _segment(rng, T, seg_range):
    lo, hi = int(seg_range[0]), int(seg_range[1])
    if lo < 1 or hi < lo:
        raise ValueError(f"bad segment range {seg_range}")
    length = int(rng.integers(lo, hi + 1))
    length = min(length, T)
    start = int(rng.integers(0, T - length + 1))
    return start, length


def corrupt_video(
    frames: np.ndarray,
    rng: np.random.Generator,
    *,
    side_range=(50, 150),
    seg_range=(20, 30),
    brightness_range=(0, 255),
    region=None,
    shape: str = "square",
):
    """Overlay a patch of random brightness on a random frame segment.

    ``frames``: (T, H, W[, C]) uint8.  The side is drawn uniformly from
    ``side_range`` and clipped to ``min(H, W)``; the segment length from
    ``seg_range`` (clipped to T); the brightness (one grey level) from
    ``brightness_range``.  The patch centre is uniform over ``region``
    ``(x, y, w, h)`` if given (e.g. the face box, so the patch hides the
    speaker), else over the frame; the patch is then shifted to lie inside
    the frame.  ``shape``: ``"square"`` (default), ``"rect"`` (the square's width and height
    multiplied by ``sqrt(r)`` and ``1/sqrt(r)``, aspect ``r`` log-uniform in [1/3, 3], clipped
    to the frame) or ``"ellipse"`` (the disc inscribed in the square, axes of the ``"rect"``
    draw); the extra draws come after the square's, so ``"square"`` consumes the stream as
    before.  Returns ``(corrupted copy, indicator (T,), record)``.
    """
    _check_rng(rng)
    if shape not in PATCH_SHAPES:
        raise ValueError(f"shape: expected one of {PATCH_SHAPES}, got {shape!r}")
    frames = np.asarray(frames)
    T, H, W = frames.shape[:3]
    side = int(rng.integers(int(side_range[0]), int(side_range[1]) + 1))
    side = min(side, H, W)
    start, length = _segment(rng, T, seg_range)
    if region is None:
        rx, ry, rw, rh = 0, 0, W, H
    else:
        rx, ry, rw, rh = (int(v) for v in region)
    cx = rx + float(rng.uniform(0, max(rw, 1)))
    cy = ry + float(rng.uniform(0, max(rh, 1)))
    x0 = int(min(max(round(cx - side / 2), 0), W - side))
    y0 = int(min(max(round(cy - side / 2), 0), H - side))
    value = int(rng.integers(int(brightness_range[0]), int(brightness_range[1]) + 1))
    out = frames.copy()
    rec = {"type": "video_patch", "shape": shape}
    if shape == "square":
        out[start : start + length, y0 : y0 + side, x0 : x0 + side] = value
        pw, ph = side, side
    else:
        r = math.exp(float(rng.uniform(math.log(1 / 3), math.log(3))))
        pw = int(min(W, max(2, round(side * math.sqrt(r)))))
        ph = int(min(H, max(2, round(side / math.sqrt(r)))))
        x0 = int(min(max(round(cx - pw / 2), 0), W - pw))
        y0 = int(min(max(round(cy - ph / 2), 0), H - ph))
        if shape == "rect":
            out[start : start + length, y0 : y0 + ph, x0 : x0 + pw] = value
        else:
            yy, xx = np.mgrid[0:ph, 0:pw]
            disc = ((xx + 0.5 - pw / 2) / (pw / 2)) ** 2 + ((yy + 0.5 - ph / 2) / (ph / 2)) ** 2
            sub = out[start : start + length, y0 : y0 + ph, x0 : x0 + pw]
            sub[:, disc <= 1.0] = value
        rec.update({"width": pw, "height": ph})
    ind = np.zeros(T, dtype=bool)
    ind[start : start + length] = True
    rec.update({
        "x": x0,
        "y": y0,
        "side": side,
        "brightness": value,
        "start_frame": start,
        "n_frames": length,
    })  # fmt: skip
    return out, ind, rec


def apply_gain(y: np.ndarray, rng: np.random.Generator, gain_db_range=(-20.0, 6.0),
               peak: float = 0.99):
    """Multiply the waveform by a random gain ``g`` (dB uniform in ``gain_db_range``), then by
    ``peak / max|g y|`` where that would clip (levels rescaled against clipping, as a recording
    chain with an automatic gain stage). Returns ``(float32 waveform, record)``."""
    _check_rng(rng)
    lo, hi = float(gain_db_range[0]), float(gain_db_range[1])
    if not hi >= lo:
        raise ValueError(f"gain_db_range: expected (lo, hi) with lo <= hi, got {gain_db_range}")
    db = float(rng.uniform(lo, hi))
    out = np.asarray(y, dtype=np.float64) * 10.0 ** (db / 20.0)
    m = float(np.abs(out).max()) if out.size else 0.0
    rescale = peak / m if m > peak else 1.0
    return (out * rescale).astype(np.float32), {"type": "gain", "gain_db": db,
                                               "anti_clip_rescale": rescale}


def snr_db(signal: np.ndarray, noise: np.ndarray) -> float:
    """``10 log10(sum signal^2 / sum noise^2)``."""
    s = np.asarray(signal, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    return float(10.0 * np.log10(np.sum(s * s) / np.sum(n * n)))


def add_noise_at_snr(signal: np.ndarray, noise: np.ndarray, snr: float):
    """Return ``(signal + g*noise, g*noise, g)`` with ``g`` chosen so the SNR is ``snr`` dB."""
    s = np.asarray(signal, dtype=np.float64)
    n = np.asarray(noise, dtype=np.float64)
    if s.shape != n.shape:
        raise ValueError(f"signal {s.shape} and noise {n.shape} differ in shape")
    ps, pn = np.sum(s * s), np.sum(n * n)
    if ps <= 0 or pn <= 0:
        raise ValueError("signal and noise must both have nonzero energy")
    g = math.sqrt(ps / (pn * 10.0 ** (snr / 10.0)))
    return s + g * n, g * n, g


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    _check_rng(rng)
    return rng.standard_normal(n)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a 1/f power spectrum (unit variance)."""
    _check_rng(rng)
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / (x.std() + 1e-12)


def babble_noise(sources, n: int, rng: np.random.Generator):
    """Sum of the given waveforms (other speakers), each normalised to unit RMS,
    circularly shifted by a random offset and tiled/cut to ``n`` samples.
    Returns ``(noise, record)``."""
    _check_rng(rng)
    if sources is None or len(sources) == 0:
        raise ValueError("babble noise needs at least one other speaker's waveform")
    out = np.zeros(n)
    offsets = []
    for src in sources:
        src = np.asarray(src, dtype=np.float64)
        if src.size == 0 or not np.any(src):
            raise ValueError("babble source is empty or silent")
        src = np.resize(src, max(n, src.size))  # tile if short
        off = int(rng.integers(0, src.size))
        out += np.roll(src, -off)[:n] / np.sqrt(np.mean(src**2))
        offsets.append(off)
    return out, {"n_sources": len(sources), "offsets": offsets}


def nonstationary_noise(n: int, rng: np.random.Generator, sr: int = SAMPLE_RATE):
    """Pink noise times a slowly varying random envelope (random log-gain knots
    every ~0.25 s, interpolated) plus 2-6 short loud bursts -- a non-stationary
    stand-in for casino noise.  Returns ``(noise, record)``."""
    _check_rng(rng)
    base = pink_noise(n, rng)
    knot_dt = 0.25
    n_knots = max(2, int(math.ceil(n / sr / knot_dt)) + 1)
    log_gain = rng.normal(0.0, 0.6, n_knots)
    env = np.exp(np.interp(np.arange(n) / sr, np.arange(n_knots) * knot_dt, log_gain))
    n_bursts = int(rng.integers(2, 7))
    bursts = []
    for _ in range(n_bursts):
        dur = float(rng.uniform(0.03, 0.15))
        t0 = float(rng.uniform(0, max(n / sr - dur, 0)))
        gain = float(rng.uniform(3.0, 8.0))
        a, b = int(t0 * sr), min(n, int((t0 + dur) * sr))
        if b > a:
            env[a:b] *= gain * np.hanning(b - a) + 1.0
        bursts.append({"t0": t0, "dur": dur, "gain": gain})
    return base * env, {"knot_dt": knot_dt, "n_bursts": n_bursts, "bursts": bursts}


def frames_to_samples(frame: int, hop: int = HOP) -> int:
    return int(frame * hop)


def corrupt_audio(
    y: np.ndarray,
    rng: np.random.Generator,
    kind: str = "white",
    snr: float = 0.0,
    *,
    sr: int = SAMPLE_RATE,
    n_frames: int | None = None,
    babble_sources=None,
    seg_range=None,
):
    """Add ``kind`` noise to waveform ``y`` at exactly ``snr`` dB.

    The noise covers the whole clip, or with ``seg_range=(lo, hi)`` a random
    segment of lo..hi frames (the SNR is then measured over that segment).
    ``n_frames`` (default ``round(len(y)/hop)``) sets the indicator length;
    frame ``t`` spans samples ``[t*hop, (t+1)*hop)`` with ``hop = sr/25``.
    Returns ``(noisy float32, indicator (n_frames,) bool, record)``.
    """
    _check_rng(rng)
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind must be one of {NOISE_KINDS}, got {kind!r}")
    y = np.asarray(y, dtype=np.float64)
    hop = sr // FRAME_RATE
    if n_frames is None:
        n_frames = int(math.floor(len(y) / hop + 0.5))
    if seg_range is None:
        a, b = 0, len(y)
        f0, f1 = 0, n_frames
    else:
        f0, length = _segment(rng, n_frames, seg_range)
        f1 = f0 + length
        a, b = min(len(y), f0 * hop), min(len(y), f1 * hop)
    n = b - a
    rec = {
        "type": "audio_noise",
        "kind": kind,
        "snr_db": float(snr),
        "start_frame": f0,
        "n_frames": f1 - f0,
    }
    if kind == "white":
        noise = white_noise(n, rng)
    elif kind == "babble":
        noise, extra = babble_noise(babble_sources, n, rng)
        rec.update(extra)
    else:
        noise, extra = nonstationary_noise(n, rng, sr)
        rec.update(extra)
    mixed, scaled, g = add_noise_at_snr(y[a:b], noise, snr)
    out = y.copy()
    out[a:b] = mixed
    rec["gain"] = g
    rec["measured_snr_db"] = snr_db(y[a:b], scaled)
    ind = np.zeros(n_frames, dtype=bool)
    ind[f0:f1] = True
    return out.astype(np.float32), ind, rec
