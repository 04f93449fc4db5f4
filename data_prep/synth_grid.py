"""Generate a small corpus in exactly the GRID layout from real components, no downloads.

Layout written (as the GRID corpus, Cooke et al. 2006)::

    <out>/s<k>/<utt>.wav            speech, 22050 Hz mono 16-bit (espeak-ng's rate)
    <out>/s<k>/<utt>.avi            25 fps MJPG video, 360x288
    <out>/align/s<k>/<utt>.align    lines "start end word", 1/25000 s units
    <out>/synth_manifest.json       sentences, voices and settings used

* Speech: the ``espeak-ng`` synthesizer (Debian package ``espeak-ng``) speaks
  GRID-grammar sentences (command colour preposition letter digit adverb).
  Speakers are espeak-ng voices / variants with different pitch and rate.
  Each word is synthesised separately, trimmed of silence and concatenated
  with short gaps after a leading silence, so the word alignments are exact;
  gaps are labelled ``sp`` and the leading/trailing silence ``sil``; the clip
  is padded to ``duration`` seconds (3 s = 75000 units = 75 video frames).
* Video: the astronaut photograph shipped with scikit-image
  (``skimage.data.astronaut()``, a real face), cropped to the face, resized
  to 360x288 and varied per speaker (mirror, colour gain).  The mouth is
  located relative to OpenCV's Haar face box and animated by the speech RMS
  envelope: the jaw/lower lip is displaced downwards and a dark oral cavity
  is blended in.  Small smooth head motion (sub-pixel translation and
  rotation) is applied to every frame, and a small non-speech mouth movement
  occurs shortly before speech onset (as the paper observes in GRID).

Use :func:`make_synth_grid` or ``python -m data_prep.synth_grid OUT_DIR``
(``mmpgm prep synth-grid OUT_DIR``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COMMANDS = ["bin", "lay", "place", "set"]
COLOURS = ["blue", "green", "red", "white"]
PREPOSITIONS = ["at", "by", "in", "with"]
LETTERS = [c for c in "abcdefghijklmnopqrstuvxyz"]  # GRID omits 'w'
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
ADVERBS = ["again", "now", "please", "soon"]
GRAMMAR = (COMMANDS, COLOURS, PREPOSITIONS, LETTERS, DIGITS, ADVERBS)

FPS = 25
UNITS_PER_SECOND = 25000  # GRID alignment time unit; 1000 units = 1 video frame
FRAME_SIZE = (360, 288)  # (width, height)

# (espeak-ng voice, pitch 0-99, words per minute)
VOICES = [
    ("en-us", 50, 175),
    ("en+f3", 65, 165),
    ("en-gb+m3", 35, 180),
    ("en-us+f4", 75, 170),
    ("en-gb-scotland", 45, 180),
    ("en+m7", 40, 165),
    ("en-029", 55, 175),
    ("en+f2", 70, 175),
]

# Corpus variants (issue 12): every experiment can be trained on one corpus and scored on one
# made differently. Voice lists are disjoint across variants and from BABBLE_VOICES["A"].
#   speakers: (espeak-ng voice[+variant], pitch, words per minute)
#   face: "astronaut" (scikit-image), "grace_hopper" (matplotlib's sample photograph),
#         "astronaut_wide" (the astronaut photo, wider crop, darker and tinted) or "lfw" (a
#         different Labeled-Faces-in-the-Wild face of scikit-image per speaker)
#   peak: waveform peak range (uniform per clip); sample_rate of the .wav files written;
#   gaps: word gap range (s); mouth / motion: scale of the mouth opening / head motion
VARIANTS = {
    "A": dict(speakers=VOICES, face="astronaut", peak=(0.7, 0.7), sample_rate=None,
              gaps=(0.03, 0.09), mouth=1.0, motion=1.0),
    "B": dict(speakers=[("en-gb-x-rp+paul", 45, 150), ("en-us-nyc+Annie", 62, 195),
                        ("en-gb-x-gbclan", 30, 160), ("en-gb-x-gbcwmd+belinda", 72, 185),
                        ("en-us+Gene", 40, 200), ("en+travis", 55, 140),
                        ("en+shelby", 68, 170), ("en-gb-x-rp+quincy", 35, 180)],
              face="grace_hopper", peak=(0.1, 0.5), sample_rate=16000, gaps=(0.05, 0.15),
              mouth=0.75, motion=1.5),
    "C": dict(speakers=[("en+Alex", 50, 165), ("en+Michael", 38, 185), ("en-us+ed", 60, 150),
                        ("en+grandpa", 30, 145), ("en+max", 58, 190), ("en+john", 44, 175),
                        ("en+norbert", 52, 160), ("en+Storm", 66, 180)],
              face="astronaut_wide", peak=(0.2, 0.9), sample_rate=22050, gaps=(0.02, 0.06),
              mouth=1.2, motion=1.25),
    # a second training corpus: A's settings, yet other voices, another (LFW) face per speaker
    "D": dict(speakers=[("en+m1", 45, 170), ("en+f1", 68, 175), ("en-us+m4", 38, 160),
                        ("en+f5", 72, 180), ("en-gb+m6", 42, 185), ("en+anika", 60, 165),
                        ("en-us+adam", 48, 175), ("en+aunty", 64, 170)],
              face="lfw", peak=(0.7, 0.7), sample_rate=None, gaps=(0.03, 0.09), mouth=1.0,
              motion=1.0),
}
#: Voices of the babble-only utterances written with ``babble_utterances`` (not speakers of any
#: variant): babble "of voices not in the training set" for training-time augmentation.
BABBLE_VOICES = [("en+Andy", 50, 170), ("en+linda", 65, 175), ("en-us+Mike", 40, 180),
                 ("en+robert", 35, 160), ("en+steph", 70, 170), ("en+david", 45, 185)]

__all__ = ["make_synth_grid", "VARIANTS", "BABBLE_VOICES", "FACES", "sentence_to_id",
           "random_sentence", "synth_sentence", "render_video", "base_face_image", "parse_align",
           "write_align", "main",
           "GRAMMAR", "VOICES", "UNITS_PER_SECOND"]


class SynthError(RuntimeError):
    pass


# --------------------------------------------------------------------------- text

def sentence_to_id(words) -> str:
    """GRID utterance id: initials of command/colour/preposition, the letter,
    the digit (``z`` for zero, else its numeral) and the adverb initial, e.g. ``bbaf2n``."""
    c, col, p, let, dig, adv = words
    d = "z" if dig == "zero" else str(DIGITS.index(dig))
    return f"{c[0]}{col[0]}{p[0]}{let}{d}{adv[0]}"


def random_sentence(rng: np.random.Generator):
    return [str(opts[int(rng.integers(len(opts)))]) for opts in GRAMMAR]


# --------------------------------------------------------------------------- audio

def _espeak_bin():
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SynthError("the 'espeak-ng' binary is not on PATH; install it "
                         "(Debian/Ubuntu: apt-get install -y espeak-ng, or run .ci/av_deps.sh)")
    return exe


def _espeak_word(word, voice, pitch, speed, tmpdir):
    import soundfile as sf

    tag = f"{os.getpid()}_{word}_{voice.replace('+', '_')}_{pitch}_{speed}"
    path = os.path.join(tmpdir, f"w_{tag}.wav")
    cmd = [_espeak_bin(), "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", path, word]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if res.returncode != 0 or not os.path.exists(path):
        raise SynthError(f"espeak-ng failed ({' '.join(cmd)}): {res.stderr.strip()}")
    y, sr = sf.read(path, dtype="float32", always_2d=False)
    os.unlink(path)
    if y.ndim > 1:
        y = y.mean(axis=1)
    return y, sr


def _trim(y, sr, rel_db=-35.0, margin_s=0.005):
    win = max(1, int(0.005 * sr))
    n = len(y) // win
    if n == 0:
        return y
    rms = np.sqrt(np.mean(y[: n * win].reshape(n, win) ** 2, axis=1))
    thr = rms.max() * 10 ** (rel_db / 20)
    idx = np.nonzero(rms > thr)[0]
    if idx.size == 0:
        return y[:0]
    m = int(margin_s * sr)
    a = max(0, idx[0] * win - m)
    b = min(len(y), (idx[-1] + 1) * win + m)
    return y[a:b]


def synth_sentence(words, voice, pitch, speed, rng, duration=3.0, tmpdir=None, cache=None,
                   gaps=(0.03, 0.09), peak=0.7):
    """Synthesise ``words`` word by word and lay them out in a ``duration``-second clip.

    Returns ``(waveform float32, sr, alignment)`` with alignment a list of
    ``(start_unit, end_unit, word)`` covering ``[0, duration*25000]`` exactly.
    Word boundaries are sample-exact and rounded to alignment units.
    """
    cache = {} if cache is None else cache
    tmpdir = tmpdir or tempfile.gettempdir()
    for attempt in range(6):
        sp = speed + 30 * attempt
        segs = []
        sr = None
        for w in words:
            key = (w, voice, pitch, sp)
            if key not in cache:
                y, r = _espeak_word(w, voice, pitch, sp, tmpdir)
                cache[key] = (_trim(y, r), r)
            seg, r = cache[key]
            if seg.size == 0:
                raise SynthError(f"espeak-ng produced silence for {w!r} (voice {voice})")
            sr = r if sr is None else sr
            if r != sr:
                raise SynthError("espeak-ng sample rate changed between words")
            segs.append(seg)
        total = int(round(duration * sr))
        gaps_n = [int(rng.uniform(*gaps) * sr) for _ in range(len(words) - 1)]
        speech = sum(len(s) for s in segs) + sum(gaps_n)
        min_lead, min_tail = int(0.2 * sr), int(0.2 * sr)
        if speech + min_lead + min_tail <= total:
            break
    else:
        raise SynthError(f"sentence {' '.join(words)} does not fit in {duration} s")
    spare = total - speech - min_lead - min_tail
    lead = min_lead + int(rng.uniform(0.1, 0.6) * spare)
    out = np.zeros(total, dtype=np.float32)
    u = lambda n: int(round(n * UNITS_PER_SECOND / sr))  # noqa: E731
    align = [(0, u(lead), "sil")]
    pos = lead
    for i, (w, seg) in enumerate(zip(words, segs, strict=True)):
        out[pos:pos + len(seg)] = seg
        align.append((u(pos), u(pos + len(seg)), w))
        pos += len(seg)
        if i < len(gaps_n):
            align.append((u(pos), u(pos + gaps_n[i]), "sp"))
            pos += gaps_n[i]
    align.append((u(pos), u(total), "sil"))
    top = np.abs(out).max()
    if top > 0:
        out *= peak / top
    return out, sr, align


def write_align(path, align):
    with open(path, "w") as f:
        for a, b, w in align:
            f.write(f"{a} {b} {w}\n")


def parse_align(path):
    """Parse a GRID ``.align`` file into a list of ``(start, end, word)`` (ints in 1/25000 s)."""
    out = []
    with open(path) as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3:
                raise ValueError(f"{path}:{ln}: expected 'start end word', got {line.strip()!r}")
            a, b = int(parts[0]), int(parts[1])
            if b < a:
                raise ValueError(f"{path}:{ln}: end {b} before start {a}")
            out.append((a, b, parts[2]))
    if not out:
        raise ValueError(f"{path}: empty alignment")
    return out


# --------------------------------------------------------------------------- video

FACES = ("astronaut", "grace_hopper", "astronaut_wide", "lfw")


def base_face_image(speaker_index: int = 0, face: str = "astronaut"):
    """A real face photograph that a Python package ships, cropped to the face, 360x288 BGR
    uint8, varied per speaker (mirrored for odd indices, colour gains).

    ``face``: ``"astronaut"`` (scikit-image's ``data.astronaut()``, corpus A),
    ``"grace_hopper"`` (matplotlib's ``sample_data/grace_hopper.jpg``, corpus B; another
    person, another camera, a black-and-white-era portrait) or ``"astronaut_wide"`` (the
    astronaut, a wider crop so the face is smaller, darker, with a cold tint; corpus C) or
    ``"lfw"`` (one of the 25x25 grey faces of Labeled Faces in the Wild in scikit-image's
    ``data.lfw_subset()``, another person for every speaker, upscaled, on a grey backdrop,
    tinted per speaker; corpus D: many identities to train on). Nothing is downloaded."""
    import cv2

    if face not in FACES:
        raise ValueError(f"face: expected one of {FACES}, got {face!r}")
    if face == "lfw":
        return _lfw_face(speaker_index)
    if face == "grace_hopper":
        import matplotlib.cbook as cbook

        img = cv2.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
        if img is None:
            raise SynthError("matplotlib's sample_data/grace_hopper.jpg could not be read")
        crop = img[50:370, 64:464]  # 400x320 around the face (Haar box 149,100,231,231)
    else:
        from skimage import data as skdata

        img = cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2BGR)
        if face == "astronaut":
            crop = img[20:212, 105:345]  # 240x192 around the face, aspect 5:4
        else:
            crop = img[0:240, 75:375]  # 300x240: the face smaller in the frame
    base = cv2.resize(crop, FRAME_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32)
    if face == "astronaut_wide":
        base = np.clip(base * np.array([1.1, 0.9, 0.75]) * 0.8, 0, 255)
    if speaker_index % 2 == 1:
        base = base[:, ::-1]
    r = np.random.default_rng(1000 + speaker_index + 97 * FACES.index(face))
    gains = 1.0 + (r.uniform(-0.12, 0.12, 3) if speaker_index else np.zeros(3))
    base = np.clip(base * gains, 0, 255)
    return np.ascontiguousarray(base.astype(np.uint8))


def _lfw_face(speaker_index: int):
    """Speaker ``k``'s face for ``face="lfw"``: LFW face ``7 k mod 100`` of
    ``skimage.data.lfw_subset()`` (its first 100 images are faces), cubic-upscaled to 200 px
    high on a mid-grey 360x288 backdrop with a per-speaker colour tint; a face the corpus's own
    detector (:func:`mmpgm.features.video.detect_face`, 92 of the 100) misses is skipped for the
    next one."""
    import cv2
    from skimage import data as skdata

    import mmpgm.features.video as fv

    faces = skdata.lfw_subset()[:100]
    tint = 1.0 + np.random.default_rng(5000 + speaker_index).uniform(-0.15, 0.15, 3)
    top, left = (FRAME_SIZE[1] - 200) // 2 - 14, (FRAME_SIZE[0] - 200) // 2
    for step in range(100):
        grey = (faces[(7 * speaker_index + step) % 100] * 255).astype(np.uint8)
        canvas = np.full((FRAME_SIZE[1], FRAME_SIZE[0]), 118, np.uint8)
        canvas[top : top + 200, left : left + 200] = cv2.resize(
            grey, (200, 200), interpolation=cv2.INTER_CUBIC
        )
        base = cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR).astype(np.float32) * tint
        base = np.ascontiguousarray(np.clip(base, 0, 255).astype(np.uint8))
        if fv.detect_face(base).found:
            break
    return base


def _smooth_path(rng, T, knots_every, scale):
    n = T // knots_every + 2
    k = rng.normal(0, scale, n)
    return np.interp(np.arange(T), np.arange(n) * knots_every, k)


def render_video(base, face_box, openness, rng, head_motion=True, mouth_scale=1.0,
                 motion_scale=1.0):
    """Frames (T, H, W, 3) uint8: ``base`` with the mouth opened by ``openness``
    (T,) in [0, 1] and smooth head jitter.  ``face_box`` is the Haar box (x, y, w, h);
    ``mouth_scale`` / ``motion_scale`` scale the largest jaw drop and the head motion."""
    import cv2

    H, W = base.shape[:2]
    x, y, w, h = face_box
    cx, cy = x + 0.49 * w, y + 0.80 * h  # mouth centre relative to the Haar box
    max_drop = 0.09 * w * float(mouth_scale)
    # local ROI for the mouth/jaw deformation
    rx0, rx1 = int(max(0, cx - 0.4 * w)), int(min(W, cx + 0.4 * w))
    ry0, ry1 = int(max(0, cy - 0.2 * h)), int(min(H, cy + 0.45 * h))
    gx, gy = np.meshgrid(np.arange(rx0, rx1, dtype=np.float32),
                         np.arange(ry0, ry1, dtype=np.float32))
    wx = np.exp(-((gx - cx) / (0.2 * w)) ** 2)
    below = np.clip(1.0 - (gy - cy - 0.22 * w) / (0.2 * w), 0, 1) * (gy >= cy)
    above = -0.25 * np.clip(1.0 - (cy - gy) / (0.12 * w), 0, 1) * (gy < cy)
    wy = (below + above).astype(np.float32)
    T = len(openness)
    if head_motion:
        tx = _smooth_path(rng, T, 12, 0.8) * motion_scale
        ty = _smooth_path(rng, T, 12, 0.6) * motion_scale
        rot = _smooth_path(rng, T, 15, 0.5) * motion_scale
    cavity = np.array([45, 30, 50], dtype=np.float32)
    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    for t in range(T):
        fr = base.copy()
        o = float(np.clip(openness[t], 0, 1))
        if o > 1e-3:
            d = o * max_drop
            roi = cv2.remap(base, gx, gy - d * wx * wy, interpolation=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
            mask = np.zeros((ry1 - ry0, rx1 - rx0), dtype=np.float32)
            axes = (max(1, int(0.15 * w * (0.75 + 0.25 * o))), max(1, int(0.55 * d)))
            cv2.ellipse(mask, (int(round(cx - rx0)), int(round(cy - ry0 + 0.45 * d))), axes,
                        0, 0, 360, 1.0, -1, lineType=cv2.LINE_AA)
            mask = cv2.GaussianBlur(mask, (5, 5), 1.0)[..., None] * 0.9
            roi = roi.astype(np.float32) * (1 - mask) + cavity * mask
            fr[ry0:ry1, rx0:rx1] = np.clip(roi, 0, 255).astype(np.uint8)
        if head_motion:
            M = cv2.getRotationMatrix2D((float(cx), float(y + h / 2)), float(rot[t]), 1.0)
            M[0, 2] += tx[t]
            M[1, 2] += ty[t]
            fr = cv2.warpAffine(fr, M, (W, H), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_REFLECT)
        frames[t] = fr
    return frames


def _openness(y, sr, align, rng, n_frames):
    """Mouth opening per video frame from the speech RMS envelope, plus a small
    non-speech movement 2-6 frames before speech onset."""
    hop = sr / FPS
    rms = np.array([np.sqrt(np.mean(y[int(t * hop):int((t + 1) * hop)] ** 2) + 0.0)
                    for t in range(n_frames)])
    env = (rms / (rms.max() + 1e-12)) ** 0.6
    env = np.convolve(np.pad(env, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    env[env < 0.08] = 0.0
    onset = next(a for a, b, w in align if w not in ("sil", "sp")) // 1000
    pre_end = onset - int(rng.integers(2, 7))
    pre_len = int(rng.integers(3, 6))
    amp = float(rng.uniform(0.25, 0.4))
    pre = {"start_frame": None, "n_frames": 0, "amplitude": amp}
    if pre_end - pre_len >= 1:
        s = pre_end - pre_len
        env[s:pre_end] = np.maximum(env[s:pre_end], amp * np.hanning(pre_len + 2)[1:-1])
        pre = {"start_frame": int(s), "n_frames": pre_len, "amplitude": amp}
    return env, pre


# --------------------------------------------------------------------------- corpus

def _voice(k, voices=VOICES):
    v, p, s = voices[(k - 1) % len(voices)]
    cycle = (k - 1) // len(voices)
    return v, int(np.clip(p + 11 * cycle, 0, 99)), s


def _write_wav(path, y, sr, target_sr):
    import soundfile as sf

    if target_sr is not None and target_sr != sr:
        from mmpgm.features.audio import resample

        y, sr = resample(y, sr, target_sr), target_sr
    sf.write(str(path), np.clip(y, -1.0, 1.0), sr, subtype="PCM_16")
    return sr


def make_synth_grid(out_dir, num_speakers: int = 3, num_utterances: int = 4, seed: int = 0,
                    duration: float = 3.0, head_motion: bool = True, drop_video_frames: int = 0,
                    progress: bool = False, variant: str = "A", babble_utterances: int = 0):
    """Write a GRID-layout corpus of ``num_speakers`` x ``num_utterances`` clips to ``out_dir``.

    ``duration`` is the clip length in seconds (GRID: 3 s); ``drop_video_frames``
    removes that many frames from the end of every video (simulating the
    shorter-video issue the paper met).  ``variant`` (:data:`VARIANTS`): ``"A"`` (the default
    corpus), ``"B"`` or ``"C"``: other espeak-ng voices, rates and pitches, another face
    photograph, other recording levels (random peak per clip) and sample rate, other word
    gaps, mouth opening and head motion; every experiment can train on one and score on
    another. ``babble_utterances``: also write that many utterances of each of
    :data:`BABBLE_VOICES` (voices of no variant) to ``<out>/babble/`` for babble augmentation
    (``prepare_grid(corruption={"babble_dir": ...})``); outside ``s<k>/``, so not part of the
    corpus. Deterministic given ``seed`` and ``variant``.
    Returns the manifest dict (also written to ``<out>/synth_manifest.json``).
    """
    import cv2

    _espeak_bin()
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
    var = VARIANTS[variant]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_frames = int(math.floor(duration * FPS + 0.5))  # same rounding as the audio frames
    rng_master = np.random.default_rng(seed if variant == "A" else [seed, ord(variant)])
    manifest = {"seed": seed, "duration": duration, "fps": FPS, "frame_size": list(FRAME_SIZE),
                "units_per_second": UNITS_PER_SECOND, "variant": variant,
                "variant_settings": {k: v for k, v in var.items() if k != "speakers"},
                "speakers": {}}
    t_start = time.time()
    with tempfile.TemporaryDirectory(prefix="synthgrid_") as tmp:
        for k in range(1, num_speakers + 1):
            spk = f"s{k}"
            voice, pitch, speed = _voice(k, var["speakers"])
            (out / spk).mkdir(exist_ok=True)
            (out / "align" / spk).mkdir(parents=True, exist_ok=True)
            base = base_face_image(k - 1, var["face"])
            import mmpgm.features.video as fv

            box = fv.detect_face(base)
            if not box.found:
                raise SynthError(f"Haar cascade found no face in the base image of {spk}")
            rng = np.random.default_rng(rng_master.integers(2 ** 63))
            cache = {}
            used = set()
            utts = []
            for _ in range(num_utterances):
                for _try in range(100):
                    words = random_sentence(rng)
                    uid = sentence_to_id(words)
                    if uid not in used:
                        break
                used.add(uid)
                peak = var["peak"][0]
                if var["peak"][1] != var["peak"][0]:
                    peak = float(rng.uniform(*var["peak"]))
                y, sr, align = synth_sentence(words, voice, pitch, speed, rng, duration, tmp, cache,
                                              gaps=var["gaps"], peak=peak)
                written_sr = _write_wav(out / spk / f"{uid}.wav", y, sr, var["sample_rate"])
                write_align(out / "align" / spk / f"{uid}.align", align)
                env, pre = _openness(y, sr, align, rng, n_frames)
                frames = render_video(base, box.as_tuple(), env, rng, head_motion=head_motion,
                                      mouth_scale=var["mouth"], motion_scale=var["motion"])
                if drop_video_frames:
                    frames = frames[: max(1, n_frames - drop_video_frames)]
                vw = cv2.VideoWriter(str(out / spk / f"{uid}.avi"),
                                     cv2.VideoWriter_fourcc(*"MJPG"), FPS, FRAME_SIZE)
                if not vw.isOpened():
                    raise SynthError("cv2.VideoWriter cannot open an MJPG .avi for writing")
                for fr in frames:
                    vw.write(fr)
                vw.release()
                utts.append({"id": uid, "words": words, "pre_speech_motion": pre,
                             "sample_rate": written_sr, "peak": peak,
                             "n_video_frames": len(frames)})
                if progress:
                    print(f"{spk}/{uid}: {' '.join(words)}", file=sys.stderr)
            manifest["speakers"][spk] = {"voice": voice, "pitch": pitch, "speed": speed,
                                         "face": var["face"], "face_box": box.as_dict(),
                                         "utterances": utts}
        if babble_utterances:
            (out / "babble").mkdir(exist_ok=True)
            rng = np.random.default_rng([seed, 4242])
            files = []
            for voice, pitch, speed in BABBLE_VOICES:
                cache = {}
                for i in range(int(babble_utterances)):
                    words = random_sentence(rng)
                    y, sr, _ = synth_sentence(words, voice, pitch, speed, rng, duration, tmp,
                                              cache)
                    name = f"{voice.replace('+', '_')}_{i}.wav"
                    _write_wav(out / "babble" / name, y, sr, None)
                    files.append(name)
            manifest["babble"] = {"voices": [v for v, _, _ in BABBLE_VOICES], "files": files}
    manifest["seconds"] = round(time.time() - t_start, 3)
    with open(out / "synth_manifest.json", "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mmpgm prep synth-grid",
                                description="Generate a small GRID-layout corpus (espeak-ng "
                                            "speech, animated scikit-image astronaut face).")
    p.add_argument("out_dir")
    p.add_argument("--speakers", type=int, default=3)
    p.add_argument("--utterances", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--drop-video-frames", type=int, default=0)
    p.add_argument("--variant", default="A", choices=sorted(VARIANTS),
                   help="A: the default corpus; B, C: other voices, rates, pitches, face photo, "
                        "levels, sample rate, mouth and head motion (train on one, score on "
                        "another)")
    p.add_argument("--babble-utterances", type=int, default=0,
                   help="also write this many utterances per babble voice (voices of no "
                        "variant) to OUT_DIR/babble/ for babble augmentation")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    try:
        m = make_synth_grid(a.out_dir, a.speakers, a.utterances, a.seed, duration=a.duration,
                            drop_video_frames=a.drop_video_frames, progress=not a.quiet,
                            variant=a.variant, babble_utterances=a.babble_utterances)
    except SynthError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    n = sum(len(s["utterances"]) for s in m["speakers"].values())
    print(f"wrote {n} utterances of {len(m['speakers'])} speakers to {a.out_dir} "
          f"in {m['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
