"""GRID-layout corpus generator and preparation, end to end on a tiny synthetic corpus."""

import json
import shutil
import time
import wave

import numpy as np
import pytest

from mmpgm.features import missing_av_requirements

if missing_av_requirements():
    pytest.skip("needs " + "; ".join(missing_av_requirements()), allow_module_level=True)

import cv2  # noqa: E402

from data_prep import grid, synth_grid  # noqa: E402
from data_prep.synth_grid import parse_align  # noqa: E402

TIMINGS = {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid") / "corpus"
    t = time.time()
    manifest = synth_grid.make_synth_grid(root, num_speakers=2, num_utterances=2, seed=1)
    TIMINGS["synth_2x2"] = time.time() - t
    return root, manifest


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("out") / "grid.npz"
    t = time.time()
    summary = grid.prepare_grid(root, out, progress=False)
    TIMINGS["prep_2x2"] = time.time() - t
    with np.load(out, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    return out, data, summary


def _utts(root):
    return sorted((p.parent.name, p.stem) for p in root.glob("s*/*.wav"))


def test_synth_layout_and_alignments(corpus):
    root, manifest = corpus
    utts = _utts(root)
    assert len(utts) == 4 and {s for s, _ in utts} == {"s1", "s2"}
    assert json.loads((root / "synth_manifest.json").read_text())["seed"] == 1
    for spk, u in utts:
        with wave.open(str(root / spk / f"{u}.wav")) as w:
            assert w.getframerate() >= 16000 and w.getnchannels() == 1
            assert abs(w.getnframes() / w.getframerate() - 3.0) < 1e-3
        cap = cv2.VideoCapture(str(root / spk / f"{u}.avi"))
        assert cap.get(cv2.CAP_PROP_FPS) == 25
        assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 75
        assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (360, 288)
        cap.release()
        al = parse_align(root / "align" / spk / f"{u}.align")
        assert al[0][0] == 0 and al[-1][1] == 75000
        assert al[0][2] == "sil" and al[-1][2] == "sil"
        assert all(a[1] == b[0] for a, b in zip(al, al[1:], strict=False))  # contiguous
        words = [w for _, _, w in al if w not in ("sil", "sp")]
        assert len(words) == 6 and synth_grid.sentence_to_id(words) == u
        for opts, w in zip(synth_grid.GRAMMAR, words, strict=True):
            assert w in opts
        assert al[0][1] >= 5000  # leading silence of at least 0.2 s
    # deterministic
    spk = manifest["speakers"]["s1"]
    assert spk["voice"] != manifest["speakers"]["s2"]["voice"]


def test_synth_is_fast_and_deterministic(tmp_path):
    t = time.time()
    m1 = synth_grid.make_synth_grid(tmp_path / "a", 1, 2, seed=5)
    assert time.time() - t < 10
    m2 = synth_grid.make_synth_grid(tmp_path / "b", 1, 2, seed=5)
    ids = [u["id"] for u in m1["speakers"]["s1"]["utterances"]]
    assert ids == [u["id"] for u in m2["speakers"]["s1"]["utterances"]]
    for u in ids:
        assert (tmp_path / "a/align/s1" / f"{u}.align").read_text() == (
            tmp_path / "b/align/s1" / f"{u}.align"
        ).read_text()


def test_prepare_shapes_and_labels(corpus, prepared):
    root, _ = corpus
    out, d, summary = prepared
    N = 4
    assert summary["n_ok"] == N and summary["n_skipped"] == 0
    assert d["obs/audio"].shape == (N, 75, 513) and d["obs/audio"].dtype == np.float32
    assert d["obs/image"].shape == (N, 75, 32) and d["obs/flow"].shape == (N, 75, 11)
    assert d["lengths"].dtype == np.int64 and d["lengths"].tolist() == [75] * N
    for m in ("audio", "image", "flow"):
        assert d[f"mask/{m}"].dtype == bool and d[f"mask/{m}"].all()
    assert d["meta/utterance_id"].tolist() == [f"{s}/{u}" for s, u in _utts(root)]
    assert d["meta/speaker_id"].tolist() == ["s1", "s1", "s2", "s2"]
    assert d["labels/speaker"].tolist() == [0, 0, 1, 1]
    assert d["meta/skipped"].shape == (0,)
    assert (d["labels/video_corrupted"] == 0).all() and (d["labels/audio_corrupted"] == 0).all()
    # speech labels match the alignments frame by frame (frame t spans units [1000t, 1000t+1000))
    for n, uid in enumerate(d["meta/utterance_id"]):
        spk, u = uid.split("/")
        al = parse_align(root / "align" / spk / f"{u}.align")
        expect = np.zeros(75, int)
        for a, b, w in al:
            if w not in ("sil", "sp"):
                for t in range(75):
                    overlap = min(b, 1000 * t + 1000) - max(a, 1000 * t)
                    if overlap >= 500:
                        expect[t] = 1
        got = d["labels/speech"][n]
        # centre rule vs majority-overlap rule may differ only at frames split 50/50
        assert (got != expect).sum() <= 1, (uid, got, expect)
        assert 0.4 < got.mean() < 0.9
    # the Haar cascade found the face in every clip
    infos = [json.loads(s) for s in d["meta/info"]]
    assert all(i["face_found"] for i in infos)
    assert json.loads(str(d["meta/config"]))["shard"] == "0/1"


def test_features_carry_the_speech_signal(prepared):
    _, d, _ = prepared
    y = d["labels/speech"].ravel()
    for key in ("obs/audio", "obs/flow"):
        x = d[key].reshape(-1, d[key].shape[-1])
        score = x.mean(1) if key == "obs/audio" else x[:, 0]
        # mean log-magnitude / flow magnitude is higher in speech frames
        assert score[y == 1].mean() > score[y == 0].mean()


def test_roundtrip_through_multimodaldata(prepared):
    try:
        from mmpgm.data import MultimodalData
    except ImportError as exc:
        pytest.skip(f"mmpgm.data.MultimodalData not importable: {exc}")
    out, d, _ = prepared
    md = MultimodalData.load(out)
    assert md.obs["audio"].shape == (4, 75, 513)
    assert set(md.obs) == {"audio", "image", "flow"}
    assert md.labels["speech"].shape == (4, 75)


def test_shards_partition_the_set(corpus, prepared, tmp_path):
    root, _ = corpus
    _, full, _ = prepared
    seen = []
    for i in range(3):
        grid.prepare_grid(root, tmp_path / f"sh{i}.npz", shard=f"{i}/3", progress=False)
        with np.load(tmp_path / f"sh{i}.npz") as f:
            ids = f["meta/utterance_id"].tolist()
            assert ids == full["meta/utterance_id"].tolist()[i::3]
            for n, uid in enumerate(ids):
                k = full["meta/utterance_id"].tolist().index(uid)
                assert np.array_equal(f["obs/audio"][n], full["obs/audio"][k])
                assert f["labels/speaker"][n] == full["labels/speaker"][k]
        seen += ids
    assert sorted(seen) == sorted(full["meta/utterance_id"].tolist())
    with pytest.raises(ValueError):
        grid.parse_shard("3/3")
    assert grid.parse_shard("1/4") == (1, 4)


def _copy(root, dst):
    shutil.copytree(root, dst)
    return dst


def test_corrupt_file_fails_loudly_and_skip_bad_lists_it(corpus, tmp_path):
    root = _copy(corpus[0], tmp_path / "c")
    (spk, u_vid), (spk2, u_wav) = _utts(root)[1], _utts(root)[2]
    (root / spk / f"{u_vid}.avi").write_bytes(b"\x00garbage" * 64)
    wav = root / spk2 / f"{u_wav}.wav"
    wav.write_bytes(wav.read_bytes()[:20000])  # truncated audio
    with pytest.raises(grid.PrepError) as ei:
        grid.prepare_grid(root, tmp_path / "x.npz", progress=False)
    msg = str(ei.value)
    assert f"{spk}/{u_vid}" in msg and "VideoReadError" in msg and f"{u_vid}.avi" in msg
    assert f"{spk2}/{u_wav}" in msg and "AudioReadError" in msg
    assert not (tmp_path / "x.npz").exists()
    assert grid.main([str(root), str(tmp_path / "x.npz"), "--no-progress"]) == 1
    s = grid.prepare_grid(root, tmp_path / "y.npz", skip_bad=True, progress=False)
    assert s["n_ok"] == 2 and s["n_skipped"] == 2
    with np.load(tmp_path / "y.npz") as f:
        skipped = f["meta/skipped"].tolist()
        assert len(skipped) == 2
        assert skipped[0].startswith(f"{spk}/{u_vid}:") and "VideoReadError" in skipped[0]
        assert skipped[1].startswith(f"{spk2}/{u_wav}:") and "AudioReadError" in skipped[1]
        assert f["obs/audio"].shape[0] == 2


def test_missing_companion_file_is_reported(corpus, tmp_path):
    root = _copy(corpus[0], tmp_path / "m")
    spk, u = _utts(root)[0]
    (root / "align" / spk / f"{u}.align").unlink()
    with pytest.raises(grid.PrepError, match="missing alignment"):
        grid.prepare_grid(root, tmp_path / "x.npz", progress=False)


def test_short_video_is_padded_and_masked(corpus, tmp_path):
    root = _copy(corpus[0], tmp_path / "v")
    spk, u = _utts(root)[0]
    p = root / spk / f"{u}.avi"
    cap = cv2.VideoCapture(str(p))
    frames = []
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        frames.append(fr)
    cap.release()
    vw = cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"MJPG"), 25, (360, 288))
    for fr in frames[:70]:
        vw.write(fr)
    vw.release()
    grid.prepare_grid(root, tmp_path / "x.npz", shard="0/4", progress=False)
    with np.load(tmp_path / "x.npz") as f:
        assert f["obs/image"].shape == (1, 75, 32) and f["lengths"].tolist() == [75]
        assert f["mask/audio"].all()
        assert f["mask/image"][0, :70].all() and not f["mask/image"][0, 70:].any()
        assert not f["mask/flow"][0, 70:].any()
        info = json.loads(f["meta/info"][0])
        assert info["align"]["padded"] == 5 and info["n_video_frames"] == 70
    with pytest.raises(grid.PrepError, match="max_video_pad"):
        grid.prepare_grid(root, tmp_path / "y.npz", shard="0/4", progress=False, max_video_pad=2)


def test_clip_of_another_length(tmp_path):
    root = tmp_path / "short"
    synth_grid.make_synth_grid(root, 1, 1, seed=3, duration=2.5)
    grid.prepare_grid(root, tmp_path / "x.npz", progress=False)
    with np.load(tmp_path / "x.npz") as f:
        assert f["obs/audio"].shape == (1, 63, 513)  # 2.5 s * 25 = 62.5 -> 63 (half up)
        assert f["lengths"].tolist() == [63]
        info = json.loads(f["meta/info"][0])
        assert info["n_video_frames"] == 63 and info["align"]["padded"] == 0
        assert f["mask/image"][0].all()
        assert (f["labels/speech"][0] >= 0).all()


def test_corruptions_recorded_and_parallel_equals_serial(corpus, tmp_path):
    root, _ = corpus
    cfg = {"audio_noise": "babble", "snr_db": 5.0, "video_patch": True}
    grid.prepare_grid(root, tmp_path / "a.npz", corruption=cfg, seed=7, progress=False)
    rc = grid.main(
        [
            str(root),
            str(tmp_path / "b.npz"),
            "--workers",
            "2",
            "--audio-noise",
            "babble",
            "--snr",
            "5",
            "--video-patch",
            "--seed",
            "7",
            "--no-progress",
        ]
    )
    assert rc == 0
    # OpenCV has run in this process (synthesis), so workers must be spawned, not forked
    assert grid._start_method() == "spawn"
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        for k in a.files:
            if k != "meta/config":
                assert np.array_equal(a[k], b[k]), k
        vc = a["labels/video_corrupted"]
        assert ((vc.sum(1) >= 20) & (vc.sum(1) <= 30)).all()
        assert (a["labels/audio_corrupted"] == 1).all()
        for n, s in enumerate(a["meta/corruption"]):
            recs = {r["type"]: r for r in json.loads(s)}
            v, au = recs["video_patch"], recs["audio_noise"]
            assert vc[n, v["start_frame"] : v["start_frame"] + v["n_frames"]].all()
            assert abs(au["measured_snr_db"] - 5.0) < 0.1 and au["kind"] == "babble"
            # babble comes from the other speaker
            spk = a["meta/speaker_id"][n]
            assert all(not f.startswith(spk + "/") for f in au["babble_files"])


def test_synth_main_cli(tmp_path):
    assert (
        synth_grid.main([str(tmp_path / "c"), "--speakers", "1", "--utterances", "1", "--quiet"])
        == 0
    )
    assert len(list((tmp_path / "c").glob("s1/*.avi"))) == 1


def test_report_timings():
    print("timings:", {k: round(v, 2) for k, v in TIMINGS.items()})


def _logreg_accuracy(Xtr, ytr, Xte, yte, l2=1.0):
    """L2-regularised logistic regression (scipy L-BFGS) on standardised features."""
    from scipy.optimize import minimize

    mu, sd = Xtr.mean(0), Xtr.std(0) + 1e-6
    A = np.hstack([(Xtr - mu) / sd, np.ones((len(Xtr), 1))])
    B = np.hstack([(Xte - mu) / sd, np.ones((len(Xte), 1))])

    def f(w):
        z = A @ w
        loss = np.sum(np.logaddexp(0, z) - ytr * z) + 0.5 * l2 * w[:-1] @ w[:-1]
        g = A.T @ (1 / (1 + np.exp(-z)) - ytr)
        g[:-1] += l2 * w[:-1]
        return loss, g

    w = minimize(f, np.zeros(A.shape[1]), jac=True, method="L-BFGS-B", options={"maxiter": 300}).x
    return float(((B @ w > 0).astype(int) == yte).mean())


@pytest.mark.slow
def test_each_modality_predicts_speech_on_held_out_clips(tmp_path):
    """Statistical sanity check that the features carry the signal.

    3 speakers x 4 generated clips; train on clips 0-2 of every speaker, test
    on each speaker's held-out clip 3 (225 frames).  Per modality a logistic
    regression on the frame's features (video: with +-1 frame of context) must beat
    the majority-class rate by at least 0.10.  Why 0.10: the majority rate is
    ~0.65-0.7; a binomial standard error over 225 frames is ~0.03, so 0.10 is
    > 3 SE even with modest frame correlation, while the observed margins are
    ~0.15-0.3 (audio ~0.95, image ~0.93, flow ~0.9 accuracy).
    """
    root = tmp_path / "stat"
    synth_grid.make_synth_grid(root, 3, 4, seed=11)
    grid.prepare_grid(root, tmp_path / "s.npz", progress=False)
    with np.load(tmp_path / "s.npz") as d:
        y = d["labels/speech"]
        obs = {k: d[f"obs/{k}"] for k in ("audio", "image", "flow")}
        names = d["meta/utterance_id"].tolist()
    N, T = y.shape
    assert N == 12 and (y >= 0).all()
    test = np.array([i % 4 == 3 for i in range(N)])
    assert len({n.split("/")[0] for n in np.array(names)[test]}) == 3
    majority = max(y[test].mean(), 1 - y[test].mean())
    for k, x in obs.items():
        xc = x
        if k != "audio":  # the 513-bin spectrum needs no context (and would be slow with it)
            p = np.pad(x, ((0, 0), (1, 1), (0, 0)), mode="edge")
            xc = np.concatenate([p[:, :-2], x, p[:, 2:]], -1)
        acc = _logreg_accuracy(
            xc[~test].reshape(-1, xc.shape[-1]),
            y[~test].ravel(),
            xc[test].reshape(-1, xc.shape[-1]),
            y[test].ravel(),
        )
        assert acc >= majority + 0.10, (k, acc, majority)
