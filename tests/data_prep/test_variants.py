"""Corpus variants (synth-grid --variant, --babble-utterances) and the preparation's
augmentation and running normalization, on tiny corpora."""

import json
import wave

import numpy as np
import pytest
import torch

from mmpgm.features import missing_av_requirements

if missing_av_requirements():
    pytest.skip("needs " + "; ".join(missing_av_requirements()), allow_module_level=True)

from data_prep import grid, synth_grid  # noqa: E402
from mmpgm.data import MultimodalData  # noqa: E402
from mmpgm.features import corrupt as fc  # noqa: E402
from mmpgm.features.normalize import running_normalize  # noqa: E402


@pytest.fixture(scope="module")
def corpus_b(tmp_path_factory):
    root = tmp_path_factory.mktemp("variant") / "B"
    manifest = synth_grid.make_synth_grid(root, num_speakers=2, num_utterances=1, seed=3,
                                          variant="B", babble_utterances=1)
    return root, manifest


def test_voice_sets_are_disjoint():
    sets = {k: {v for v, _, _ in var["speakers"]} for k, var in synth_grid.VARIANTS.items()}
    babble = {v for v, _, _ in synth_grid.BABBLE_VOICES}
    names = list(sets)
    for i, a in enumerate(names):
        assert not sets[a] & babble
        for b in names[i + 1 :]:
            assert not sets[a] & sets[b], (a, b)


def test_variant_b_is_made_differently(corpus_b):
    root, manifest = corpus_b
    assert manifest["variant"] == "B"
    voices = [s["voice"] for s in manifest["speakers"].values()]
    assert voices == [v for v, _, _ in synth_grid.VARIANTS["B"]["speakers"][:2]]
    for spk in manifest["speakers"].values():
        assert spk["face"] == "grace_hopper" and spk["face_box"]["found"]
        for u in spk["utterances"]:
            assert 0.1 <= u["peak"] <= 0.5 and u["sample_rate"] == 16000
    wav = next(root.glob("s1/*.wav"))
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 16000 and abs(w.getnframes() / 16000 - 3.0) < 1e-3
    babble = sorted(p.name for p in (root / "babble").glob("*.wav"))
    assert len(babble) == len(synth_grid.BABBLE_VOICES)
    assert not any(p.name.startswith("s") and p.is_dir() for p in (root / "babble").iterdir())
    # the babble folder is not part of the corpus
    assert all(u.speaker in ("s1", "s2") for u in grid.discover(root))


def test_faces_differ_and_bad_names_are_refused():
    a = synth_grid.base_face_image(0, "astronaut")
    b = synth_grid.base_face_image(0, "grace_hopper")
    c = synth_grid.base_face_image(0, "astronaut_wide")
    assert a.shape == b.shape == c.shape == (288, 360, 3)
    assert np.abs(a.astype(float) - b).mean() > 20 and np.abs(a.astype(float) - c).mean() > 10
    # corpus D: another LFW person for every speaker, each found by the Haar cascade
    import mmpgm.features.video as fv

    lfw = [synth_grid.base_face_image(k, "lfw") for k in range(4)]
    assert all(f.shape == (288, 360, 3) and f.dtype == np.uint8 for f in lfw)
    assert all(fv.detect_face(f).found for f in lfw)
    for i in range(4):
        for j in range(i + 1, 4):
            assert np.abs(lfw[i].astype(float) - lfw[j]).mean() > 5
    assert np.array_equal(lfw[1], synth_grid.base_face_image(1, "lfw"))  # deterministic
    with pytest.raises(ValueError, match="face"):
        synth_grid.base_face_image(0, "cat")
    with pytest.raises(ValueError, match="variant"):
        synth_grid.make_synth_grid("/nonexistent", variant="Z")


def test_augmented_preparation_and_running_normalization(corpus_b, tmp_path):
    root, _ = corpus_b
    corr = {"video_patch": True, "noise_kinds": ("white", "babble"), "snr_range": (0.0, 10.0),
            "gain_db_range": (-12.0, 0.0), "patch_shapes": ("rect", "ellipse"),
            "babble_dir": str(root / "babble"), "n_babble": 2}
    plain, normed = tmp_path / "p.npz", tmp_path / "n.npz"
    grid.prepare_grid(root, plain, corruption=corr, seed=5, progress=False)
    grid.prepare_grid(root, normed, corruption=corr, seed=5, progress=False,
                      normalize="running", normalize_decay=0.9)
    a, b = MultimodalData.load(plain), MultimodalData.load(normed)
    for rec in a.meta["corruption"]:
        rec = {r["type"]: r for r in json.loads(str(rec))}
        assert rec["video_patch"]["shape"] in ("rect", "ellipse")
        assert rec["audio_noise"]["kind"] in ("white", "babble")
        assert 0.0 <= rec["audio_noise"]["snr_db"] <= 10.0
        assert -12.0 <= rec["gain"]["gain_db"] <= 0.0
        if rec["audio_noise"]["kind"] == "babble":
            assert all(f.startswith("babble/") for f in rec["audio_noise"]["babble_files"])
    for m in ("audio", "image", "flow"):
        ref = running_normalize(a.obs[m].double(), a.mask[m], decay=0.9)
        torch.testing.assert_close(b.obs[m].double(), ref, rtol=1e-5, atol=1e-5)
    assert json.loads(str(b.meta["config"]))["normalize"] == "running"
    # robust statistics on the video streams only (speech onsets are not corruptions)
    clipped = tmp_path / "c.npz"
    grid.prepare_grid(root, clipped, corruption=corr, seed=5, progress=False,
                      normalize="running", normalize_decay=0.9, normalize_clip=2.0)
    c = MultimodalData.load(clipped)
    torch.testing.assert_close(c.obs["audio"], b.obs["audio"], rtol=0, atol=0)
    for m in ("image", "flow"):
        ref = running_normalize(a.obs[m].double(), a.mask[m], decay=0.9, clip=2.0)
        torch.testing.assert_close(c.obs[m].double(), ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(c.obs["image"], b.obs["image"])
    assert json.loads(str(c.meta["config"]))["normalize_clip"] == 2.0


@pytest.mark.parametrize(
    "corr, match",
    [({"noise_kinds": ("white", "rain")}, "noise_kinds"), ({"snr_range": (5, 0)}, "snr_range"),
     ({"patch_shapes": ("star",)}, "patch_shapes"), ({"babble_dir": "/no/such/dir"}, "babble_dir"),
     ({"gain_db_range": (1,)}, "gain_db_range")],
)
def test_bad_corruption_settings(corr, match):
    with pytest.raises(ValueError, match=match):
        grid.CorruptionConfig.coerce(corr).validate()


def test_bad_normalize_option(corpus_b, tmp_path):
    root, _ = corpus_b
    with pytest.raises(ValueError, match="normalize"):
        grid.prepare_grid(root, tmp_path / "x.npz", normalize="cmvn", progress=False)
    with pytest.raises(ValueError, match="normalize_decay"):
        grid.prepare_grid(root, tmp_path / "x.npz", normalize="running", normalize_decay=0,
                          progress=False)
    for bad in (0.0, -1.0, True, "3"):
        with pytest.raises(ValueError, match="normalize_clip"):
            grid.prepare_grid(root, tmp_path / "x.npz", normalize="running",
                              normalize_clip=bad, progress=False)
    with pytest.raises(ValueError, match="normalize_clip: needs normalize='running'"):
        grid.prepare_grid(root, tmp_path / "x.npz", normalize_clip=3.0, progress=False)


@pytest.mark.parametrize("shape", ["rect", "ellipse"])
def test_patch_shapes(shape):
    frames = np.full((40, 100, 120, 3), 7, np.uint8)
    out, ind, rec = fc.corrupt_video(frames, np.random.default_rng(0), shape=shape,
                                     brightness_range=(200, 200))
    assert rec["shape"] == shape and ind.sum() == rec["n_frames"]
    changed = (out != frames).any(-1)
    w, h, x, y = rec["width"], rec["height"], rec["x"], rec["y"]
    inside = np.zeros(changed.shape[1:], bool)
    inside[y : y + h, x : x + w] = True
    assert not changed[:, ~inside].any() and not changed[~ind].any()
    area = changed[ind][0].sum()
    expect = w * h if shape == "rect" else np.pi * w * h / 4
    assert abs(area - expect) <= 0.05 * expect + 2 * (w + h)


def test_square_patch_consumes_the_stream_as_before():
    frames = np.zeros((30, 80, 90), np.uint8)
    r1, r2 = np.random.default_rng(4), np.random.default_rng(4)
    a = fc.corrupt_video(frames, r1)
    b = fc.corrupt_video(frames, r2, shape="square")
    assert np.array_equal(a[0], b[0]) and r1.integers(1 << 30) == r2.integers(1 << 30)
    with pytest.raises(ValueError, match="shape"):
        fc.corrupt_video(frames, np.random.default_rng(0), shape="star")


def test_apply_gain():
    y = np.linspace(-0.5, 0.5, 1000).astype(np.float32)
    out, rec = fc.apply_gain(y, np.random.default_rng(0), (-6.0, -6.0))
    np.testing.assert_allclose(out, y * 10 ** (-6 / 20), rtol=1e-6)
    loud, rec = fc.apply_gain(y, np.random.default_rng(0), (20.0, 20.0))
    assert abs(np.abs(loud).max() - 0.99) < 1e-6 and rec["anti_clip_rescale"] < 1
    with pytest.raises(ValueError, match="gain_db_range"):
        fc.apply_gain(y, np.random.default_rng(0), (3.0, -3.0))


def test_jitter_box_stays_inside_and_is_seeded():
    from mmpgm.features.video import FaceBox

    box = FaceBox(100, 60, 150, 150, True)
    for seed in range(50):
        b = grid.jitter_box(box, 360, 288, (0.08, 0.15), np.random.default_rng(seed))
        assert 0 <= b.x and b.x + b.w <= 360 and 0 <= b.y and b.y + b.h <= 288
        assert 0.85 * 150 - 1 <= b.w <= 1.15 * 150 + 1 and b.w == b.h
        assert abs(b.x + b.w / 2 - 175) <= 0.08 * 150 + 1
    same = [grid.jitter_box(box, 360, 288, (0.08, 0.15), np.random.default_rng(7))
            for _ in range(2)]
    assert same[0] == same[1]
    with pytest.raises(ValueError, match="box_jitter"):
        grid.CorruptionConfig.coerce({"box_jitter": (0.6, 0.1)}).validate()


def test_face_quality_stream_and_box_jitter_in_prep(corpus_b, tmp_path):
    root, _ = corpus_b
    out = tmp_path / "fq.npz"
    grid.prepare_grid(root, out, corruption={"box_jitter": (0.08, 0.15)}, seed=2,
                      progress=False, face_quality=True)
    d = MultimodalData.load(out)
    assert d.obs["face_quality"].shape[-1] == 17
    assert bool((d.mask["face_quality"] == d.mask["image"]).all())
    for info in d.meta["info"]:
        info = json.loads(str(info))
        assert info["feature_box"] == info["face_box"]  # the features were cut from it
    plain = tmp_path / "plain.npz"
    grid.prepare_grid(root, plain, seed=2, progress=False)
    p = MultimodalData.load(plain)
    assert "face_quality" not in p.obs
    assert not torch.equal(p.obs["image"], d.obs["image"])  # another framing
    torch.testing.assert_close(p.obs["audio"], d.obs["audio"], rtol=0, atol=0)
