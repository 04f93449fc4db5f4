"""Video features: Haar face box, mouth DCT, Farneback flow, padding, read errors."""

import numpy as np
import pytest

cv2 = pytest.importorskip(
    "cv2", reason="OpenCV not installed (pip install 'opencv-python-headless<5')"
)
if not hasattr(cv2, "CascadeClassifier"):
    pytest.skip(
        "this OpenCV build has no CascadeClassifier (need opencv<5)", allow_module_level=True
    )
pytest.importorskip("skimage", reason="scikit-image not installed")

from data_prep.synth_grid import base_face_image, render_video  # noqa: E402
from mmpgm.features import video as fv  # noqa: E402


@pytest.fixture(scope="module")
def base():
    return base_face_image(0)


def test_haar_finds_face_on_synthetic_frames(base):
    box = fv.detect_face(base)
    assert box.found
    H, W = base.shape[:2]
    assert 0.25 * W < box.w < 0.8 * W and 0 <= box.x and box.x + box.w <= W
    rng = np.random.default_rng(0)
    frames = render_video(base, box.as_tuple(), np.linspace(0, 1, 5), rng)
    for fr in frames:  # open mouth + head jitter
        assert fv.detect_face(fr).found
    for k in (1, 2, 3):  # other speakers' variants
        assert fv.detect_face(base_face_image(k)).found


def test_fallback_box_is_flagged():
    blank = np.full((288, 360, 3), 127, np.uint8)
    box = fv.detect_face(blank)
    assert not box.found
    assert box.w == box.h == 144 and box.x == (360 - 144) // 2


def test_flow_nonzero_when_mouth_moves_and_zero_when_static(base):
    box = fv.detect_face(base)
    rng = np.random.default_rng(0)
    T = 20
    moving = render_video(
        base, box.as_tuple(), 0.5 + 0.5 * np.sin(np.arange(T) * 1.3), rng, head_motion=False
    )
    static = render_video(base, box.as_tuple(), np.zeros(T), rng, head_motion=False)
    fm = fv.flow_features(fv.mouth_crops(moving, box))
    fs = fv.flow_features(fv.mouth_crops(static, box))
    assert fm.shape == fs.shape == (T, fv.FLOW_DIM) == (T, 11)
    assert np.all(fm[0] == 0) and np.all(fs[0] == 0)
    assert fm[1:, 0].mean() > 0.2 and np.all(fm[1:, 0] > 0.02)
    assert np.abs(fs).max() < 1e-3
    # angle histogram sums to the mean magnitude
    assert np.allclose(fm[:, 3:].sum(1), fm[:, 0], rtol=1e-4, atol=1e-6)
    # vertical motion dominates: a jaw opening and closing
    assert np.abs(fm[1:, 2]).mean() > np.abs(fm[1:, 1]).mean()
    # appearance features track the opening
    dm = fv.dct_features(fv.mouth_crops(moving, box))
    ds = fv.dct_features(fv.mouth_crops(static, box))
    assert dm.shape == (T, 32) and np.ptp(ds, axis=0).max() < 1e-6
    assert np.ptp(dm, axis=0).max() > 0.1


def test_zigzag_and_dct():
    r, c = fv.zigzag_indices(8, 8, 10)
    expected = [(0, 0), (0, 1), (1, 0), (2, 0), (1, 1), (0, 2), (0, 3), (1, 2), (2, 1), (3, 0)]
    assert list(zip(r.tolist(), c.tolist(), strict=True)) == expected
    const = np.full((3, 24, 48), 0.5, np.float32)
    d = fv.dct_features(const, 32)
    assert d.shape == (3, 32)
    assert np.allclose(d[:, 0], 0.5 * np.sqrt(24 * 48)) and np.allclose(d[:, 1:], 0, atol=1e-5)
    with pytest.raises(ValueError):
        fv.zigzag_indices(2, 2, 5)


def test_video_features_pad_and_trim_to_audio_frames(base):
    box = fv.detect_face(base)
    frames = render_video(base, box.as_tuple(), np.linspace(0, 1, 12), np.random.default_rng(1))
    feats, info = fv.video_features(frames, n_frames=15)
    assert feats["image"].shape == (15, 32) and feats["flow"].shape == (15, 11)
    assert feats["face"].shape == (15, 64, 64) and feats["face"].dtype == np.uint8
    assert info["align"] == {"n_in": 12, "n_out": 15, "padded": 3, "trimmed": 0}
    assert info["face_found"]
    assert np.all(feats["flow"][12:] == 0) and np.array_equal(
        feats["image"][12:], np.repeat(feats["image"][11:12], 3, 0)
    )
    feats, info = fv.video_features(frames, box, n_frames=10)
    assert feats["image"].shape == (10, 32) and info["align"]["trimmed"] == 2


def test_read_video_roundtrip_and_errors(tmp_path, base):
    p = tmp_path / "clip.avi"
    vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 25, (360, 288))
    for _ in range(7):
        vw.write(base)
    vw.release()
    frames, fps = fv.read_video(p)
    assert frames.shape == (7, 288, 360, 3) and fps == 25
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"not a video" * 100)
    with pytest.raises(fv.VideoReadError, match="bad.avi"):
        fv.read_video(bad)
    with pytest.raises(fv.VideoReadError, match="missing.avi"):
        fv.read_video(tmp_path / "missing.avi")
