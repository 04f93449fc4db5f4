"""Video features at 25 frames/s (paper section 7.2; DESIGN.md section 6).

Pipeline for one clip:

1. :func:`read_video` decodes all frames with ``cv2.VideoCapture``.
2. :func:`detect_face` runs OpenCV's frontal-face Haar cascade (shipped with
   ``opencv-python<5`` under ``cv2.data.haarcascades``; no download) on the
   *first* frame.  The largest detection is used for the whole clip (the GRID
   speakers sit still), so the crop is fixed.  If no face is found a centred
   box is used and ``FaceBox.found`` is ``False`` -- callers record it.
3. :func:`crop_faces` cuts that box from every frame and resizes it to a
   ``face_size`` x ``face_size`` grey image (default 64).
4. The mouth region is the lower third of the face box, central
   ``MOUTH_WIDTH_FRAC`` of its width (:func:`mouth_crops`).
5. Appearance features (:func:`dct_features`): the first ``k`` (default 32)
   coefficients, in zig-zag order, of the 2-D DCT of each mouth crop.
   Why DCT: low-frequency DCT coefficients of the mouth region are the
   classic appearance features of audio-visual speech recognition (Potamianos
   et al.); they need no training and no downloaded weights (a PCA would
   have to be fitted per corpus, changing features between runs/shards),
   they are computed per frame independently, they compactly describe the
   mouth's coarse shape (opening height/width dominate the low frequencies)
   and are robust to pixel noise and small misalignments.
6. Motion features (:func:`flow_features`): Farneback dense optical flow
   between consecutive mouth crops, summarised per frame by the mean
   magnitude, mean dx, mean dy and a magnitude-weighted histogram of flow
   angles (``n_bins`` = 8) -> 11 dims.  Frame 0 has no predecessor; its flow
   is zero.
7. :func:`align_frames` (re-exported from :mod:`mmpgm.features.audio`) pads
   or trims to the audio frame count, reporting how many frames it changed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .audio import AlignInfo, align_frames  # noqa: F401  (re-exported)

FACE_SIZE = 64
MOUTH_SIZE = (48, 24)  # (width, height) of the resized mouth crop
MOUTH_WIDTH_FRAC = 0.6
N_DCT = 32
N_FLOW_BINS = 8
FLOW_DIM = 3 + N_FLOW_BINS
FACE_GRID = 4
FACE_QUALITY_DIM = FACE_GRID * FACE_GRID + 1
CASCADE_FILE = "haarcascade_frontalface_default.xml"

__all__ = [
    "VideoReadError",
    "FaceBox",
    "read_video",
    "detect_face",
    "crop_faces",
    "mouth_crops",
    "dct_features",
    "zigzag_indices",
    "flow_features",
    "face_quality_features",
    "FACE_QUALITY_DIM",
    "video_features",
    "mouth_box",
    "align_frames",
    "FACE_SIZE",
    "N_DCT",
    "FLOW_DIM",
]


class VideoReadError(RuntimeError):
    """A video file is missing, unreadable, corrupt or has no frames."""


@dataclass(frozen=True)
class FaceBox:
    """Face box ``(x, y, w, h)`` in pixels of the first frame; ``found`` is False
    when the Haar cascade found nothing and a centred fallback box is used."""

    x: int
    y: int
    w: int
    h: int
    found: bool

    def as_tuple(self):
        return (self.x, self.y, self.w, self.h)

    def as_dict(self) -> dict:
        return {"x": self.x, "y": self.y, "w": self.w, "h": self.h, "found": self.found}


def _cv2():
    import cv2

    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise ImportError(
            "this OpenCV build lacks CascadeClassifier / cv2.data; "
            "install 'opencv-python-headless<5'"
        )
    return cv2


def read_video(path, max_frames: int | None = None):
    """Decode a video into ``(frames, fps)``: frames uint8 (T, H, W, 3) BGR.

    Raises :class:`VideoReadError` naming the file if it cannot be opened or
    yields no frame.
    """
    cv2 = _cv2()
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise VideoReadError(f"cannot open video {path}")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        frames = []
        while max_frames is None or len(frames) < max_frames:
            ok, fr = cap.read()
            if not ok or fr is None:
                break
            if fr.ndim == 2:
                fr = cv2.cvtColor(fr, cv2.COLOR_GRAY2BGR)
            frames.append(fr)
    finally:
        cap.release()
    if not frames:
        raise VideoReadError(f"no frame could be decoded from {path} (corrupt or truncated?)")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(f"video {path} has frames of differing shapes {sorted(shapes)}")
    return np.stack(frames), fps


_CASCADE = None


def _cascade():
    global _CASCADE
    if _CASCADE is None:
        cv2 = _cv2()
        c = cv2.CascadeClassifier(cv2.data.haarcascades + CASCADE_FILE)
        if c.empty():
            raise ImportError(f"cannot load {cv2.data.haarcascades + CASCADE_FILE}")
        _CASCADE = c
    return _CASCADE


def detect_face(frame: np.ndarray, min_size_frac: float = 0.15) -> FaceBox:
    """Largest frontal face in ``frame`` (BGR or grey) via the Haar cascade.

    Falls back to a centred square of side ``0.5 * min(H, W)`` with
    ``found=False`` when nothing is detected.
    """
    cv2 = _cv2()
    gray = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
    H, W = gray.shape
    ms = max(16, int(min_size_frac * min(H, W)))
    faces = _cascade().detectMultiScale(
        cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5, minSize=(ms, ms)
    )
    if len(faces):
        x, y, w, h = max((tuple(int(v) for v in f) for f in faces), key=lambda b: b[2] * b[3])
        return FaceBox(x, y, w, h, True)
    s = int(0.5 * min(H, W))
    return FaceBox((W - s) // 2, (H - s) // 2, s, s, False)


def _clip_box(box, W, H):
    x, y, w, h = box
    x0, y0 = max(0, int(x)), max(0, int(y))
    x1, y1 = min(W, int(x + w)), min(H, int(y + h))
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"box {box} lies outside the {W}x{H} frame")
    return x0, y0, x1, y1


def _gray(frames):
    cv2 = _cv2()
    frames = np.asarray(frames)
    if frames.ndim == 3:
        return frames
    return np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])


def crop_faces(frames: np.ndarray, box: FaceBox, size: int = FACE_SIZE) -> np.ndarray:
    """Grey face crops (T, size, size) uint8 from the fixed ``box``."""
    cv2 = _cv2()
    g = _gray(frames)
    x0, y0, x1, y1 = _clip_box(box.as_tuple(), g.shape[2], g.shape[1])
    return np.stack(
        [cv2.resize(f[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA) for f in g]
    )


def mouth_box(box: FaceBox, width_frac: float = MOUTH_WIDTH_FRAC):
    """Mouth region ``(x, y, w, h)``: the lower third of the face box, central
    ``width_frac`` of its width."""
    mw = int(round(box.w * width_frac))
    mh = int(round(box.h / 3))
    return (box.x + (box.w - mw) // 2, box.y + box.h - mh, mw, mh)


def mouth_crops(frames: np.ndarray, box: FaceBox, size=MOUTH_SIZE) -> np.ndarray:
    """Grey mouth crops (T, size[1], size[0]) float32 in [0, 1] from the full-resolution frames."""
    cv2 = _cv2()
    g = _gray(frames)
    x0, y0, x1, y1 = _clip_box(mouth_box(box), g.shape[2], g.shape[1])
    return (
        np.stack(
            [cv2.resize(f[y0:y1, x0:x1], tuple(size), interpolation=cv2.INTER_AREA) for f in g]
        ).astype(np.float32)
        / 255.0
    )


def zigzag_indices(h: int, w: int, k: int):
    """Row/column indices of the first ``k`` entries of an (h, w) array in JPEG zig-zag order."""
    order = sorted(
        ((i, j) for i in range(h) for j in range(w)),
        key=lambda ij: (ij[0] + ij[1], ij[0] if (ij[0] + ij[1]) % 2 else ij[1]),
    )
    if k > len(order):
        raise ValueError(f"k={k} exceeds the {h}x{w} coefficients")
    rows, cols = zip(*order[:k], strict=True)
    return np.array(rows), np.array(cols)


def dct_features(crops: np.ndarray, k: int = N_DCT) -> np.ndarray:
    """First ``k`` zig-zag 2-D DCT-II (orthonormal) coefficients of each crop, (T, k) float32."""
    import scipy.fft

    crops = np.asarray(crops, dtype=np.float32)
    C = scipy.fft.dctn(crops, type=2, norm="ortho", axes=(1, 2))
    r, c = zigzag_indices(crops.shape[1], crops.shape[2], k)
    return np.ascontiguousarray(C[:, r, c], dtype=np.float32)


def flow_features(crops: np.ndarray, n_bins: int = N_FLOW_BINS) -> np.ndarray:
    """Farneback optical-flow summaries between consecutive crops, (T, 3 + n_bins) float32.

    Columns: mean magnitude, mean dx, mean dy (pixels of the resized crop per
    frame), then the histogram of flow angles over ``n_bins`` equal sectors,
    each pixel weighted by its magnitude and divided by the pixel count (so
    the bins sum to the mean magnitude).  Row 0 is zero (no previous frame), and so
    is every row whose crop is identical to the previous one.
    """
    cv2 = _cv2()
    crops = np.asarray(crops)
    if crops.dtype != np.uint8:
        crops = np.clip(np.rint(crops * 255.0), 0, 255).astype(np.uint8)
    T = crops.shape[0]
    out = np.zeros((T, 3 + n_bins), dtype=np.float32)
    npx = crops.shape[1] * crops.shape[2]
    for t in range(1, T):
        if np.array_equal(crops[t - 1], crops[t]):
            continue  # identical frames: no motion (Farneback leaves ~0.01 px of numerical noise)
        flow = cv2.calcOpticalFlowFarneback(
            crops[t - 1],
            crops[t],
            None,
            pyr_scale=0.5,
            levels=2,
            winsize=9,
            iterations=3,
            poly_n=5,
            poly_sigma=1.1,
            flags=0,
        )
        dx, dy = flow[..., 0], flow[..., 1]
        mag, ang = cv2.cartToPolar(dx, dy)
        bins = np.minimum((ang * (n_bins / (2 * math.pi))).astype(np.int64), n_bins - 1)
        out[t, 0] = mag.mean()
        out[t, 1] = dx.mean()
        out[t, 2] = dy.mean()
        out[t, 3:] = np.bincount(bins.ravel(), weights=mag.ravel(), minlength=n_bins) / npx
    return out


def face_quality_features(faces: np.ndarray, grid: int = FACE_GRID,
                          flat_threshold: float = 1.0) -> np.ndarray:
    """Per-frame evidence of occlusion over the *whole* face crop, ``(T, grid*grid + 1)``
    float32: the log texture energy ``log(1 + std)`` of each cell of a ``grid x grid``
    partition of the grey face crop (``faces (T, S, S)`` uint8, e.g. ``video_features``'
    ``"face"``), and the fraction of pixels whose Sobel gradient magnitude is below
    ``flat_threshold`` grey levels (a uniform patch is flat; a face rarely is).

    The mouth features (DCT, flow) only see the mouth box; a patch elsewhere on the face
    leaves them intact but still tells that the camera image is corrupted. These summaries
    depend on the face only through its texture, so after per-utterance normalization
    (:func:`mmpgm.features.normalize.running_normalize`) a patch shows as a sudden drop of
    texture in some cells and a jump of the flat fraction, on any face."""
    cv2 = _cv2()
    faces = np.asarray(faces)
    if faces.ndim != 3:
        raise ValueError(f"faces: expected (T, S, S) grey crops, got shape {faces.shape}")
    T, H, W = faces.shape
    out = np.zeros((T, grid * grid + 1), dtype=np.float32)
    ys = np.linspace(0, H, grid + 1).round().astype(int)
    xs = np.linspace(0, W, grid + 1).round().astype(int)
    for t in range(T):
        f = faces[t].astype(np.float32)
        k = 0
        for i in range(grid):
            for j in range(grid):
                out[t, k] = np.log1p(f[ys[i] : ys[i + 1], xs[j] : xs[j + 1]].std())
                k += 1
        gx = cv2.Sobel(f, cv2.CV_32F, 1, 0, ksize=3) / 8.0
        gy = cv2.Sobel(f, cv2.CV_32F, 0, 1, ksize=3) / 8.0
        out[t, -1] = float((np.hypot(gx, gy) < flat_threshold).mean())
    return out


def video_features(
    frames: np.ndarray, box: FaceBox | None = None, n_frames: int | None = None, k: int = N_DCT
):
    """All video features of one clip.

    Returns ``(feats, info)`` with ``feats = {"image": (T, k), "flow": (T, 11),
    "face": (T, 64, 64) uint8}`` and ``info`` a dict with the face box, whether
    it was detected, and the padding/trimming applied to reach ``n_frames``
    (``None`` keeps the clip's own length).  Padding repeats the last frame's
    features (``info["align"]["padded"]`` frames, which callers should mask).
    """
    if box is None:
        box = detect_face(frames[0])
    mouths = mouth_crops(frames, box)
    feats = {
        "image": dct_features(mouths, k),
        "flow": flow_features(mouths),
        "face": crop_faces(frames, box),
    }
    info = {"face_box": box.as_dict(), "face_found": box.found, "n_video_frames": len(frames)}
    if n_frames is not None:
        al = None
        for key in feats:
            feats[key], al = align_frames(feats[key], n_frames, mode="edge")
        if al.padded:
            # motion in padded (repeated) frames is zero, not a copy of the last motion
            feats["flow"][n_frames - al.padded :] = 0.0
        info["align"] = al.as_dict()
    return feats, info
