"""Turn a GRID-layout audio-visual corpus into one ``MultimodalData`` ``.npz``.

Layout read (the GRID corpus, or the one :mod:`data_prep.synth_grid` writes)::

    <root>/s<k>/<utt>.(mpg|avi|mp4)   video, 25 fps
    <root>/s<k>/<utt>.wav             audio (any rate; resampled to 16 kHz)
    <root>/align/s<k>/<utt>.align     "start end word" lines, 1/25000 s units

Per utterance (paper sections 7.2-7.4, DESIGN.md section 6):

* audio: log-magnitude STFT (or log-mel / MFCC), 25 frames/s, T = round(duration*25);
* video: Haar face box on the first frame, mouth DCT appearance features
  (``obs/image``, 32 dims) and Farneback flow summaries (``obs/flow``, 11 dims),
  padded (last frame repeated, *masked*) or trimmed to the audio's T;
* labels: ``labels/speech`` 1 where the frame centre ``t*1000+500`` falls in a
  word other than ``sil``/``sp``, 0 otherwise, -1 past the clip's length;
  ``labels/speaker``; ``labels/video_corrupted`` / ``labels/audio_corrupted``;
* optional enhancement targets (``targets=("irm",)``, CLI ``--irm``): ``labels/irm``,
  the ideal ratio mask (paper section 4.6) between the STFT magnitudes of the clean
  waveform and of the added noise (noisy - clean), on the frames and bins of ``obs/audio``
  (:func:`mmpgm.features.audio.waveform_ratio_mask`); 1 where no noise was added;
* optional seeded corruptions (:mod:`mmpgm.features.corrupt`), one random
  stream per utterance derived from ``(seed, utterance id)`` so results do not
  depend on sharding or worker count; every record is saved in ``meta/corruption``.

Nothing is dropped silently: a file that fails is reported with its name and
reason and the run raises :class:`PrepError` unless ``skip_bad``, in which case
it is listed in ``meta/skipped``.

Output keys: ``obs/audio`` (N, T, 513) float32, ``obs/image`` (N, T, 32),
``obs/flow`` (N, T, 11), ``mask/audio|image|flow`` bool (N, T), ``lengths``
int64 (N,), ``labels/speech|video_corrupted|audio_corrupted`` int64 (N, T),
``labels/speaker`` int64 (N,), with ``targets=("irm",)`` ``labels/irm`` float32
(N, T, 513) (NaN past the clip's length), string arrays ``meta/utterance_id``,
``meta/speaker_id``, ``meta/skipped``, ``meta/corruption`` (JSON per
utterance), ``meta/info`` (JSON per utterance: face box, padding, ...),
``meta/speakers`` (speaker names indexed by ``labels/speaker``), and
``meta/config`` (JSON of the run settings).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

VIDEO_EXTS = (".mpg", ".avi", ".mp4")
NON_SPEECH = ("sil", "sp")
UNITS_PER_FRAME = 1000  # GRID: 25000 units/s, 25 frames/s
TARGETS = ("irm",)  # optional per-frame targets: labels/<name>

__all__ = ["PrepError", "CorruptionConfig", "Utterance", "TARGETS", "discover", "parse_shard",
           "speech_labels", "check_targets", "process_utterance", "prepare_grid", "main"]


class PrepError(RuntimeError):
    """One or more utterances failed; the message lists each file and reason."""

    def __init__(self, failures):
        self.failures = list(failures)
        lines = "\n".join(f"  {uid}: {reason}" for uid, reason in self.failures)
        super().__init__(f"{len(self.failures)} utterance(s) failed (use skip_bad / --skip-bad "
                         f"to skip and list them):\n{lines}")


@dataclass
class CorruptionConfig:
    """Which corruptions to apply. ``audio_noise``: None | "white" | "babble" |
    "nonstationary"; ``snr_db``: target SNR; ``video_patch``: random-brightness
    square patch over a 20-30 frame segment; ``n_babble``: other speakers
    summed for babble; ``audio_seg_range``: None (noise over the whole clip)
    or (lo, hi) frames for a random noisy segment."""

    audio_noise: str | None = None
    snr_db: float = 0.0
    video_patch: bool = False
    n_babble: int = 4
    audio_seg_range: tuple | None = None
    patch_side_range: tuple = (50, 150)
    patch_seg_range: tuple = (20, 30)
    # training-time augmentation (issue 12): drawn per utterance from a second random stream
    # of (seed, utterance id), so the defaults leave every earlier corpus unchanged
    noise_kinds: tuple | None = None  # one kind per utterance from these (overrides audio_noise)
    snr_range: tuple | None = None  # SNR (dB) uniform in [lo, hi] per utterance (overrides snr_db)
    gain_db_range: tuple | None = None  # random gain of the (noisy) waveform, anti-clip rescaled
    patch_shapes: tuple = ("square",)  # one shape per utterance (mmpgm.features.corrupt)
    patch_brightness_range: tuple = (0, 255)
    babble_dir: str | None = None  # babble from the .wav files here (voices not in the corpus)
    # (shift, scale): the face box the features are cut from moved by up to shift * its size
    # and rescaled by up to 1 +- scale (the patch still uses the detected box): another framing
    box_jitter: tuple | None = None

    @classmethod
    def coerce(cls, c):
        if c is None:
            return cls()
        if isinstance(c, cls):
            return c
        if isinstance(c, dict):
            return cls(**c)
        raise TypeError(f"corruption must be None, a dict or CorruptionConfig, got {type(c)}")

    def validate(self):
        from mmpgm.features.corrupt import NOISE_KINDS

        if self.audio_noise in ("none", ""):
            self.audio_noise = None
        if self.audio_noise is not None and self.audio_noise not in NOISE_KINDS:
            raise ValueError(f"audio_noise must be None or one of {NOISE_KINDS}, "
                             f"got {self.audio_noise!r}")
        from mmpgm.features.corrupt import PATCH_SHAPES

        if self.noise_kinds is not None:
            self.noise_kinds = tuple(self.noise_kinds)
            bad = [k for k in self.noise_kinds if k not in NOISE_KINDS]
            if not self.noise_kinds or bad:
                raise ValueError(f"noise_kinds: expected a non-empty list from {NOISE_KINDS}, "
                                 f"got {self.noise_kinds!r}")
        self.patch_shapes = ((self.patch_shapes,) if isinstance(self.patch_shapes, str)
                             else tuple(self.patch_shapes))
        bad = [k for k in self.patch_shapes if k not in PATCH_SHAPES]
        if not self.patch_shapes or bad:
            raise ValueError(f"patch_shapes: expected a non-empty list from {PATCH_SHAPES}, "
                             f"got {self.patch_shapes!r}")
        if self.box_jitter is not None and (
                len(self.box_jitter) != 2 or not all(0 <= float(v) < 0.5 for v in self.box_jitter)):
            raise ValueError(f"box_jitter: expected (shift, scale) in [0, 0.5), got "
                             f"{self.box_jitter!r}")
        for name in ("snr_range", "gain_db_range", "patch_brightness_range"):
            v = getattr(self, name)
            if v is not None and (len(v) != 2 or not float(v[0]) <= float(v[1])):
                raise ValueError(f"{name}: expected (lo, hi) with lo <= hi, got {v!r}")
        if self.babble_dir is not None and not Path(self.babble_dir).is_dir():
            raise ValueError(f"babble_dir: expected a directory of .wav files, "
                             f"got {self.babble_dir!r}")
        return self

    def draw(self, rng):
        """The per-utterance choices ``(noise kind or None, snr_db, patch shape)`` from ``rng``
        (the augmentation stream; nothing is drawn for fixed settings)."""
        kind = self.audio_noise
        if self.noise_kinds is not None:
            kind = self.noise_kinds[int(rng.integers(len(self.noise_kinds)))]
        snr = self.snr_db
        if self.snr_range is not None:
            snr = float(rng.uniform(float(self.snr_range[0]), float(self.snr_range[1])))
        shape = self.patch_shapes[0]
        if len(self.patch_shapes) > 1:
            shape = self.patch_shapes[int(rng.integers(len(self.patch_shapes)))]
        return kind, snr, shape


@dataclass
class Utterance:
    uid: str  # "s1/bbaf2n"
    speaker: str
    name: str
    audio: str | None
    video: str | None
    align: str | None
    problems: list = field(default_factory=list)


def _natural_key(s):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def discover(root):
    """All utterances under ``root``, sorted by speaker (natural order) then name.

    Every stem seen in any speaker folder (audio or video) or in the
    alignments is returned; missing companions are listed in ``problems``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"GRID root {root} is not a directory")
    speakers = set()
    for d in root.iterdir():
        if d.is_dir() and re.fullmatch(r"s\d+", d.name):
            speakers.add(d.name)
    align_root = root / "align"
    if align_root.is_dir():
        for d in align_root.iterdir():
            if d.is_dir() and re.fullmatch(r"s\d+", d.name):
                speakers.add(d.name)
    utts = []
    for spk in sorted(speakers, key=_natural_key):
        stems = {}
        sdir = root / spk
        if sdir.is_dir():
            for f in sdir.iterdir():
                if f.suffix.lower() in VIDEO_EXTS + (".wav",):
                    stems.setdefault(f.stem, []).append(f)
        adir = align_root / spk
        if adir.is_dir():
            for f in adir.glob("*.align"):
                stems.setdefault(f.stem, [])
        for stem in sorted(stems, key=_natural_key):
            files = stems[stem]
            audio = next((str(f) for f in files if f.suffix.lower() == ".wav"), None)
            videos = sorted((f for f in files if f.suffix.lower() in VIDEO_EXTS),
                            key=lambda f: VIDEO_EXTS.index(f.suffix.lower()))
            align = adir / f"{stem}.align"
            u = Utterance(f"{spk}/{stem}", spk, stem, audio,
                          str(videos[0]) if videos else None,
                          str(align) if align.is_file() else None)
            if audio is None:
                u.problems.append(f"missing audio file {sdir / (stem + '.wav')}")
            if not videos:
                u.problems.append(f"missing video file {sdir / stem}.(mpg|avi|mp4)")
            if u.align is None:
                u.problems.append(f"missing alignment file {align}")
            utts.append(u)
    return utts


def parse_shard(shard):
    """``"i/n"`` -> ``(i, n)`` with ``0 <= i < n``; None -> ``(0, 1)``."""
    if shard is None:
        return 0, 1
    if isinstance(shard, (tuple, list)):
        i, n = int(shard[0]), int(shard[1])
    else:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
        if not m:
            raise ValueError(f"shard must look like 'i/n', got {shard!r}")
        i, n = int(m.group(1)), int(m.group(2))
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: need 0 <= i < n")
    return i, n


def speech_labels(align, n_frames: int) -> np.ndarray:
    """Per-frame speech activity (int64, 0/1): frame ``t`` is speech when its
    centre ``t*1000 + 500`` (GRID units) lies in ``[start, end)`` of a word
    other than ``sil``/``sp``.  Frames not covered by the alignment are 0."""
    lab = np.zeros(n_frames, dtype=np.int64)
    centres = np.arange(n_frames) * UNITS_PER_FRAME + UNITS_PER_FRAME // 2
    for a, b, w in align:
        if w.lower() in NON_SPEECH:
            continue
        lab[(centres >= a) & (centres < b)] = 1
    return lab


def check_targets(targets) -> tuple:
    """``targets`` as a tuple of names from :data:`TARGETS` (None or ``()`` = none; a single
    name is accepted as a str). Raises ValueError naming an unknown target."""
    if targets is None:
        return ()
    if isinstance(targets, str):
        targets = (targets,)
    try:
        out = tuple(dict.fromkeys(str(t) for t in targets))
    except TypeError:
        raise TypeError(f"targets: expected a sequence of names from {TARGETS}, "
                        f"got {targets!r}") from None
    bad = [t for t in out if t not in TARGETS]
    if bad:
        raise ValueError(f"targets: unknown target(s) {bad}; available: {list(TARGETS)}")
    return out


def _utt_rng(seed, uid):
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(uid.encode())]))


def corrupt_clip(y, frames, box, cc, rng, aug_rng, T, babble=(), root="."):
    """The corruptions of one clip, in the order of the preparation: the video patch (from
    ``rng``), the audio noise (``rng``), the gain (``aug_rng``); the per-utterance choices of
    the augmentation (noise kind, SNR, patch shape: :meth:`CorruptionConfig.draw`) come from
    ``aug_rng`` first. ``babble``: paths of the babble sources. Returns ``(y, frames,
    video_indicator, audio_indicator, records)``; also used to rebuild the noisy waveforms
    (``benchmarks/av_speech_activity.py``)."""
    from mmpgm.features import audio as fa
    from mmpgm.features import corrupt as fc

    kind, snr, shape = cc.draw(aug_rng)
    records = []
    vind = np.zeros(len(frames), dtype=bool)
    if cc.video_patch:
        frames, vind, rec = fc.corrupt_video(frames, rng, side_range=cc.patch_side_range,
                                             seg_range=cc.patch_seg_range, region=box.as_tuple(),
                                             brightness_range=cc.patch_brightness_range,
                                             shape=shape)
        records.append(rec)
    aind = np.zeros(T, dtype=bool)
    if kind is not None:
        sources = None
        if kind == "babble":
            sources = [fa.load_audio(p) for p in babble]
            if not sources:
                raise ValueError("babble noise needs utterances of other speakers in the corpus "
                                 "(or babble_dir)")
        y, aind, rec = fc.corrupt_audio(y, rng, kind, snr, n_frames=T,
                                        babble_sources=sources, seg_range=cc.audio_seg_range)
        if kind == "babble":
            rec["babble_files"] = [os.path.relpath(p, root) for p in babble]
        records.append(rec)
    if cc.gain_db_range is not None:
        y, rec = fc.apply_gain(y, aug_rng, cc.gain_db_range)
        records.append(rec)
    return y, frames, vind, aind, records


def jitter_box(box, W, H, jitter, rng):
    """``box`` (a :class:`mmpgm.features.video.FaceBox`) shifted by up to ``jitter[0]`` times
    its size in x and y and rescaled by a factor in ``1 +- jitter[1]`` (uniform draws from
    ``rng``), kept inside the ``W x H`` frame: training-time augmentation of the framing."""
    from mmpgm.features.video import FaceBox

    shift, scale = float(jitter[0]), float(jitter[1])
    f = float(rng.uniform(1 - scale, 1 + scale))
    w, h = max(8, int(round(box.w * f))), max(8, int(round(box.h * f)))
    cx = box.x + box.w / 2 + float(rng.uniform(-shift, shift)) * box.w
    cy = box.y + box.h / 2 + float(rng.uniform(-shift, shift)) * box.h
    w, h = min(w, W), min(h, H)
    x = int(min(max(round(cx - w / 2), 0), W - w))
    y = int(min(max(round(cy - h / 2), 0), H - h))
    return FaceBox(x, y, w, h, box.found)


def process_utterance(task):
    """Features, labels and records for one utterance (runs in a worker).

    ``task`` = dict(utt=Utterance as dict, seed, corruption=dict, babble=[paths],
    audio_kind, max_video_pad, targets=tuple of names from TARGETS).  Returns
    ``("ok", uid, result)`` or ``("error", uid, reason)``; never raises for a bad file.
    """
    uid = task["utt"]["uid"]
    try:
        return ("ok", uid, _process(task))
    except Exception as exc:  # reported by name and reason, never dropped silently
        return ("error", uid, f"{type(exc).__name__}: {exc}")


def _process(task):
    from data_prep.synth_grid import parse_align
    from mmpgm.features import audio as fa
    from mmpgm.features import video as fv

    u = Utterance(**task["utt"])
    if u.problems:
        raise FileNotFoundError("; ".join(u.problems))
    cc = CorruptionConfig.coerce(task["corruption"]).validate()
    rng = _utt_rng(task["seed"], u.uid)
    info = {}
    records = []

    try:
        align = parse_align(u.align)
    except (OSError, ValueError) as exc:
        raise ValueError(f"bad alignment {u.align}: {exc}") from exc
    y = fa.load_audio(u.audio)
    clean = y
    T = fa.num_frames(len(y))
    align_end_frame = int(round(max(b for _, b, _ in align) / UNITS_PER_FRAME))
    if align_end_frame > T + 2:
        raise fa.AudioReadError(
            f"audio {u.audio} has {T} frames but its alignment runs to frame {align_end_frame} "
            "(truncated audio?)")
    frames, fps = fv.read_video(u.video)
    if fps and abs(fps - 25.0) > 0.5:
        raise fv.VideoReadError(f"video {u.video} runs at {fps} fps, expected 25")
    if len(frames) < T - task["max_video_pad"]:
        raise fv.VideoReadError(
            f"video {u.video} has {len(frames)} frames but the audio has {T}; more than "
            f"max_video_pad={task['max_video_pad']} frames missing (truncated video?)")
    box = fv.detect_face(frames[0])

    y, frames, vind, aind, records = corrupt_clip(y, frames, box, cc, rng,
                                                  _utt_rng(task["seed"] + 104729, u.uid), T,
                                                  task["babble"], task["root"])

    audio = fa.audio_features(y, fa.SAMPLE_RATE, kind=task["audio_kind"])
    assert audio.shape[0] == T
    targets = {}
    if "irm" in task.get("targets", ()):
        # noise = noisy - clean: exactly 0 (mask 1) where no noise was added
        targets["irm"] = fa.waveform_ratio_mask(clean, y, fa.SAMPLE_RATE)
        assert targets["irm"].shape == (T, fa.N_BINS)
    feat_box = box
    if cc.box_jitter is not None:
        feat_box = jitter_box(box, frames.shape[2], frames.shape[1], cc.box_jitter,
                              _utt_rng(task["seed"] + 15485863, u.uid))
        info["feature_box"] = feat_box.as_dict()
    vfeats, vinfo = fv.video_features(frames, feat_box, n_frames=T)
    vind, _ = fv.align_frames(vind, T, mode="zero")
    padded = vinfo["align"]["padded"]
    vmask = np.ones(T, dtype=bool)
    if padded:
        vmask[T - padded:] = False
    feats = {"audio": audio, "image": vfeats["image"], "flow": vfeats["flow"]}
    if task.get("face_quality"):
        feats["face_quality"] = fv.face_quality_features(vfeats["face"])
    if task.get("normalize", "none") == "running":
        from mmpgm.features.normalize import running_normalize

        decay = float(task.get("normalize_decay", 0.98))
        clip = task.get("normalize_clip")
        for key in feats:
            mk = None if key == "audio" else vmask
            feats[key] = running_normalize(feats[key].astype(np.float64), mk, decay=decay,
                                           clip=None if key == "audio" else clip
                                           ).astype(np.float32)
    info.update(vinfo)
    info["n_audio_frames"] = T
    info["align_end_frame"] = align_end_frame
    if not box.found:
        info["warning"] = "no face detected in the first frame; centred box used"
    return {
        "audio": feats["audio"], "image": feats["image"], "flow": feats["flow"],
        "face_quality": feats.get("face_quality"), "video_mask": vmask,
        "speech": speech_labels(align, T),
        "video_corrupted": vind.astype(np.int64), "audio_corrupted": aind.astype(np.int64),
        "length": T, "info": info, "records": records, "targets": targets,
    }


_WORKER_READY = False


def _start_method(requested=None):
    method = requested or os.environ.get("MMPGM_PREP_MP")
    if method:
        return method
    if sys.platform.startswith("linux") and "cv2" not in sys.modules:
        return "fork"
    return "spawn"


def _worker_init():
    global _WORKER_READY
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:
        pass
    _WORKER_READY = True


def _babble_for(utts, i, rng_seed, n):
    """Paths of ``n`` utterances by speakers other than utterance ``i``'s (deterministic)."""
    others = [k for k, u in enumerate(utts) if u.speaker != utts[i].speaker and u.audio
              and not u.problems]
    if not others:
        return []
    r = _utt_rng(rng_seed + 7919, utts[i].uid)
    pick = r.choice(len(others), size=min(n, len(others)), replace=False)
    return [utts[others[int(k)]].audio for k in sorted(pick)]


def babble_paths(cc, utts, i, seed):
    """Babble sources of utterance ``i``: ``cc.n_babble`` files of ``cc.babble_dir`` (voices
    outside the corpus) when set, else utterances of the corpus's other speakers; [] when the
    corruption never uses babble."""
    kinds = cc.noise_kinds if cc.noise_kinds is not None else (cc.audio_noise,)
    if "babble" not in kinds:
        return []
    if cc.babble_dir is None:
        return _babble_for(utts, i, seed, cc.n_babble)
    files = sorted(str(p) for p in Path(cc.babble_dir).glob("*.wav"))
    if not files:
        raise ValueError(f"babble_dir {cc.babble_dir}: no .wav file")
    r = _utt_rng(seed + 7919, utts[i].uid)
    pick = r.choice(len(files), size=min(cc.n_babble, len(files)), replace=False)
    return [files[int(k)] for k in sorted(pick)]


def prepare_grid(root, out_path, workers: int = 1, shard=None, skip_bad: bool = False,
                 corruption=None, seed: int = 0, progress: bool = True, audio_kind: str = "stft",
                 max_video_pad: int = 25, mp_context: str | None = None, targets=(),
                 normalize: str = "none", normalize_decay: float = 0.98,
                 normalize_clip: float | None = None, face_quality: bool = False):
    """Prepare the GRID-layout corpus at ``root`` into ``out_path`` (``.npz``).

    ``workers`` processes (1 = in this process); ``shard`` ``"i/n"`` takes every
    n-th utterance of the sorted list starting at i; ``corruption`` a dict /
    :class:`CorruptionConfig`; ``max_video_pad`` is the largest number of
    missing video frames that is padded (and masked) rather than an error.
    ``mp_context`` is the multiprocessing start method for ``workers > 1``
    (default: ``$MMPGM_PREP_MP``, else ``"fork"`` on Linux when OpenCV has not
    been imported in this process -- workers then start instantly -- and
    ``"spawn"`` otherwise: a fork after OpenCV has run parallel code (e.g.
    ``cv2.remap``) deadlocks the workers).
    ``targets``: extra per-frame targets, names from :data:`TARGETS`:
    ``"irm"`` stores ``labels/irm`` (N, T, 513) float32, the ideal ratio mask (Wang's,
    ``sqrt(|S|^2 / (|S|^2 + |N|^2))``) of the clean waveform ``S`` against the added noise
    ``N = noisy - clean``, on the frames and bins of ``obs/audio``
    (:func:`mmpgm.features.audio.waveform_ratio_mask`): 1 where no noise was added (no
    ``audio_noise``, or frames the ``audio_seg_range`` segment does not reach), NaN past the
    clip's length (as -1 for the integer labels); the target of
    ``GatedMixture(head="ratio_mask")``.
    ``normalize``: ``"none"`` (default) or ``"running"``: every stream of every clip goes through
    :func:`mmpgm.features.normalize.running_normalize` (causal per-utterance running mean and
    variance, ``normalize_decay`` = its ``decay``; video padding frames excluded), which makes
    the log-spectral audio features gain-invariant and removes each recording's own levels.
    ``normalize_clip``: with ``"running"``, the robust statistics of the video streams (the
    ``clip`` of :func:`~mmpgm.features.normalize.running_normalize`; not the audio, whose speech
    onsets are large jumps by nature), so a patch over the camera stays visible in the
    normalized features for as long as it lasts instead of being absorbed.
    ``face_quality``: also store ``obs/face_quality`` (N, T, 17) with ``mask/face_quality``
    (the video mask): occlusion evidence over the whole face crop
    (:func:`mmpgm.features.video.face_quality_features`; a 4th stream, off by default).
    Raises :class:`PrepError` listing failed files unless ``skip_bad``.
    Returns a summary dict.
    """
    from mmpgm.features.audio import FEATURE_KINDS
    from mmpgm.features.normalize import NORMALIZATIONS

    if audio_kind not in FEATURE_KINDS:
        raise ValueError(f"audio_kind must be one of {FEATURE_KINDS}, got {audio_kind!r}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize: expected one of {NORMALIZATIONS}, got {normalize!r}")
    if (isinstance(normalize_decay, bool) or not isinstance(normalize_decay, (int, float))
            or not 0 < normalize_decay <= 1):
        raise ValueError(f"normalize_decay: expected a number in (0, 1], got {normalize_decay!r}")
    if normalize_clip is not None:
        if normalize != "running":
            raise ValueError(f"normalize_clip: needs normalize='running', got {normalize!r}")
        if (isinstance(normalize_clip, bool) or not isinstance(normalize_clip, (int, float))
                or not normalize_clip > 0):
            raise ValueError(f"normalize_clip: expected a positive number or None, "
                             f"got {normalize_clip!r}")
        normalize_clip = float(normalize_clip)
    t0 = time.time()
    cc = CorruptionConfig.coerce(corruption).validate()
    targets = check_targets(targets)
    si, sn = parse_shard(shard)
    all_utts = discover(root)
    if not all_utts:
        raise FileNotFoundError(f"no GRID utterances found under {root}")
    speakers = sorted({u.speaker for u in all_utts}, key=_natural_key)
    idx = list(range(si, len(all_utts), sn))
    tasks = []
    for i in idx:
        u = all_utts[i]
        babble = babble_paths(cc, all_utts, i, seed)
        tasks.append({"utt": asdict(u), "seed": seed, "corruption": asdict(cc), "babble": babble,
                      "audio_kind": audio_kind, "max_video_pad": int(max_video_pad),
                      "root": str(root), "targets": targets, "normalize": normalize,
                      "face_quality": bool(face_quality),
                      "normalize_decay": float(normalize_decay),
                      "normalize_clip": normalize_clip})

    from tqdm.auto import tqdm

    results = {}
    bar = tqdm(total=len(tasks), desc=f"prep grid {si}/{sn}", unit="clip", disable=not progress)
    if workers <= 1 or len(tasks) <= 1:
        for t in tasks:
            status, uid, res = process_utterance(t)
            results[uid] = (status, res)
            bar.update(1)
    else:
        import multiprocessing as mp
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context(_start_method(mp_context))
        with ProcessPoolExecutor(max_workers=int(workers), mp_context=ctx,
                                 initializer=_worker_init) as ex:
            futs = {ex.submit(process_utterance, t): t["utt"]["uid"] for t in tasks}
            for f in as_completed(futs):
                uid = futs[f]
                try:
                    status, _, res = f.result()
                except BrokenProcessPool as exc:
                    status, res = "error", f"worker process died: {exc}"
                except Exception as exc:
                    status, res = "error", f"{type(exc).__name__}: {exc}"
                results[uid] = (status, res)
                bar.update(1)
    bar.close()

    order = [all_utts[i].uid for i in idx]
    failures = [(uid, results[uid][1]) for uid in order if results[uid][0] != "ok"]
    if failures and not skip_bad:
        raise PrepError(failures)
    for uid, reason in failures:
        print(f"skipping {uid}: {reason}", file=sys.stderr)
    ok = [uid for uid in order if results[uid][0] == "ok"]
    if not ok:
        raise PrepError(failures or [("<all>", "no utterance in this shard")])
    by_uid = {u.uid: u for u in all_utts}
    N = len(ok)
    T = max(results[uid][1]["length"] for uid in ok)
    r0 = results[ok[0]][1]
    arr = {
        "obs/audio": np.zeros((N, T, r0["audio"].shape[1]), np.float32),
        "obs/image": np.zeros((N, T, r0["image"].shape[1]), np.float32),
        "obs/flow": np.zeros((N, T, r0["flow"].shape[1]), np.float32),
        "mask/audio": np.zeros((N, T), bool),
        "mask/image": np.zeros((N, T), bool),
        "mask/flow": np.zeros((N, T), bool),
        "lengths": np.zeros(N, np.int64),
        "labels/speech": np.full((N, T), -1, np.int64),
        "labels/speaker": np.zeros(N, np.int64),
        "labels/video_corrupted": np.full((N, T), -1, np.int64),
        "labels/audio_corrupted": np.full((N, T), -1, np.int64),
    }
    if face_quality:
        arr["obs/face_quality"] = np.zeros((N, T, r0["face_quality"].shape[1]), np.float32)
        arr["mask/face_quality"] = np.zeros((N, T), bool)
    for name in targets:  # float per-frame targets: NaN past the clip's length
        arr[f"labels/{name}"] = np.full((N, T) + r0["targets"][name].shape[1:], np.nan,
                                        np.float32)
    infos, recs = [], []
    for n, uid in enumerate(ok):
        r = results[uid][1]
        L = r["length"]
        arr["obs/audio"][n, :L] = r["audio"]
        arr["obs/image"][n, :L] = r["image"]
        arr["obs/flow"][n, :L] = r["flow"]
        arr["mask/audio"][n, :L] = True
        arr["mask/image"][n, :L] = r["video_mask"]
        arr["mask/flow"][n, :L] = r["video_mask"]
        if face_quality:
            arr["obs/face_quality"][n, :L] = r["face_quality"]
            arr["mask/face_quality"][n, :L] = r["video_mask"]
        arr["lengths"][n] = L
        arr["labels/speech"][n, :L] = r["speech"]
        arr["labels/speaker"][n] = speakers.index(by_uid[uid].speaker)
        arr["labels/video_corrupted"][n, :L] = r["video_corrupted"]
        arr["labels/audio_corrupted"][n, :L] = r["audio_corrupted"]
        for name in targets:
            arr[f"labels/{name}"][n, :L] = r["targets"][name]
        infos.append(json.dumps(r["info"], sort_keys=True))
        recs.append(json.dumps(r["records"], sort_keys=True))
    config = {"root": str(root), "shard": f"{si}/{sn}", "seed": seed,
              "corruption": asdict(cc), "audio_kind": audio_kind,
              "max_video_pad": max_video_pad, "n_total_in_corpus": len(all_utts),
              "targets": list(targets), "normalize": normalize,
              "normalize_decay": float(normalize_decay), "normalize_clip": normalize_clip,
              "face_quality": bool(face_quality),
              "frame_rate": 25, "audio_sample_rate": 16000, "stft_window": 1024, "stft_hop": 640}
    arr["meta/utterance_id"] = np.array(ok, dtype=str)
    arr["meta/speaker_id"] = np.array([by_uid[u].speaker for u in ok], dtype=str)
    arr["meta/speakers"] = np.array(speakers, dtype=str)
    arr["meta/skipped"] = np.array([f"{uid}: {reason}" for uid, reason in failures], dtype=str)
    arr["meta/corruption"] = np.array(recs, dtype=str)
    arr["meta/info"] = np.array(infos, dtype=str)
    arr["meta/config"] = np.array(json.dumps(config, sort_keys=True))

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arr)
    os.replace(tmp, out_path)
    secs = time.time() - t0
    return {"out_path": str(out_path), "n_ok": N, "n_skipped": len(failures),
            "skipped": failures, "seconds": secs, "clips_per_second": N / secs if secs else None,
            "shard": (si, sn), "max_length": T}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mmpgm prep grid",
                                description="Prepare a GRID-layout audio-visual corpus into a "
                                            "MultimodalData .npz.")
    p.add_argument("root", help="corpus root holding s<k>/ and align/s<k>/")
    p.add_argument("out", help="output .npz path")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard", default=None, help="i/n: every n-th utterance starting at i")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip failing files (listed in meta/skipped) instead of failing")
    p.add_argument("--audio-noise", default="none",
                   choices=["none", "white", "babble", "nonstationary"])
    p.add_argument("--snr", type=float, default=0.0, help="SNR in dB of the added audio noise")
    p.add_argument("--video-patch", action="store_true",
                   help="random-brightness square patch over a random 20-30 frame segment")
    p.add_argument("--audio-kind", default="stft", choices=["stft", "logmel", "mfcc"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-video-pad", type=int, default=25)
    p.add_argument("--irm", action="store_true",
                   help="also store labels/irm (N, T, 513): the ideal ratio mask of the clean "
                        "audio against the added noise, the speech-enhancement target")
    p.add_argument("--normalize", default="none", choices=["none", "running"],
                   help="causal per-utterance running mean/variance normalization of every "
                        "stream (mmpgm.features.normalize.running_normalize)")
    p.add_argument("--normalize-decay", type=float, default=0.98,
                   help="decay of the running statistics (time constant 1/(1-decay) frames)")
    p.add_argument("--normalize-clip", type=float, default=None,
                   help="robust running statistics of the video streams: innovations beyond "
                        "this many running SDs are clipped before they update them (e.g. 3)")
    p.add_argument("--noise-kinds", default=None,
                   help="augmentation: comma-separated noise kinds, one drawn per utterance "
                        "(overrides --audio-noise)")
    p.add_argument("--snr-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="augmentation: SNR uniform in [LO, HI] dB per utterance")
    p.add_argument("--gain-db-range", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="augmentation: random waveform gain in dB (rescaled against clipping)")
    p.add_argument("--patch-shapes", default="square",
                   help="comma-separated patch shapes (square, rect, ellipse), one per utterance")
    p.add_argument("--babble-dir", default=None,
                   help="babble from the .wav files of this folder (voices not in the corpus)")
    p.add_argument("--face-quality", action="store_true",
                   help="also store obs/face_quality (N, T, 17): occlusion evidence over the "
                        "whole face crop (4x4 cell texture energies, flat-pixel fraction)")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    corruption = {"audio_noise": None if a.audio_noise == "none" else a.audio_noise,
                  "snr_db": a.snr, "video_patch": a.video_patch,
                  "noise_kinds": None if a.noise_kinds is None else tuple(
                      k.strip() for k in a.noise_kinds.split(",") if k.strip()),
                  "snr_range": None if a.snr_range is None else tuple(a.snr_range),
                  "gain_db_range": None if a.gain_db_range is None else tuple(a.gain_db_range),
                  "patch_shapes": tuple(k.strip() for k in a.patch_shapes.split(",")
                                        if k.strip()),
                  "babble_dir": a.babble_dir}
    try:
        s = prepare_grid(a.root, a.out, workers=a.workers, shard=a.shard, skip_bad=a.skip_bad,
                         corruption=corruption, seed=a.seed, progress=not a.no_progress,
                         audio_kind=a.audio_kind, max_video_pad=a.max_video_pad,
                         targets=("irm",) if a.irm else (), normalize=a.normalize,
                         normalize_decay=a.normalize_decay, normalize_clip=a.normalize_clip,
                         face_quality=a.face_quality)
    except (PrepError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {s['n_ok']} utterances (T={s['max_length']}) to {s['out_path']}; "
          f"skipped {s['n_skipped']}; {s['seconds']:.1f} s ({s['clips_per_second']:.2f} clips/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
