"""Ideal-ratio-mask targets of the GRID preparation (``prepare_grid(targets=("irm",))``,
``--irm``), on a tiny generated corpus."""

import shutil

import numpy as np
import pytest

from mmpgm.features import missing_av_requirements

if missing_av_requirements():
    pytest.skip("needs " + "; ".join(missing_av_requirements()), allow_module_level=True)

from data_prep import grid, synth_grid  # noqa: E402
from mmpgm.features import audio as fa  # noqa: E402
from mmpgm.features import corrupt as fc  # noqa: E402
from mmpgm.features import video as fv  # noqa: E402

BABBLE = {"audio_noise": "babble", "snr_db": 0.0, "video_patch": True}
SEED = 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """2 speakers x 2 clips of 3 s, plus a third speaker with one 2.5 s clip (padding frames)."""
    base = tmp_path_factory.mktemp("irm")
    root = base / "corpus"
    synth_grid.make_synth_grid(root, num_speakers=2, num_utterances=2, seed=1)
    short = base / "short"
    synth_grid.make_synth_grid(short, num_speakers=1, num_utterances=1, seed=2, duration=2.5)
    shutil.copytree(short / "s1", root / "s3")
    shutil.copytree(short / "align" / "s1", root / "align" / "s3")
    return root


@pytest.fixture(scope="module")
def babble(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("irm_out") / "babble.npz"
    grid.prepare_grid(corpus, out, corruption=BABBLE, seed=SEED, progress=False, targets=("irm",))
    with np.load(out, allow_pickle=False) as f:
        return out, {k: f[k] for k in f.files}


def rebuild(root, uid, corruption, seed):
    """``(clean, noisy)`` 16 kHz waveforms of ``uid``, replaying the preparation's per-utterance
    random stream (video patch first, then the audio noise), as
    ``benchmarks/av_speech_activity.py::noisy_waveforms`` does."""
    cc = grid.CorruptionConfig.coerce(dict(corruption)).validate()
    utts = grid.discover(root)
    i = [u.uid for u in utts].index(uid)
    u = utts[i]
    rng = grid._utt_rng(seed, uid)
    clean = fa.load_audio(u.audio)
    T = fa.num_frames(len(clean))
    if cc.video_patch:
        frames, _ = fv.read_video(u.video)
        box = fv.detect_face(frames[0])
        fc.corrupt_video(
            frames,
            rng,
            side_range=cc.patch_side_range,
            seg_range=cc.patch_seg_range,
            region=box.as_tuple(),
        )
    if cc.audio_noise is None:
        return clean, clean
    sources = None
    if cc.audio_noise == "babble":
        sources = [fa.load_audio(p) for p in grid._babble_for(utts, i, seed, cc.n_babble)]
    noisy, _, _ = fc.corrupt_audio(
        clean,
        rng,
        cc.audio_noise,
        cc.snr_db,
        n_frames=T,
        babble_sources=sources,
        seg_range=cc.audio_seg_range,
    )
    return clean, noisy


def test_irm_shape_range_padding_and_roundtrip(babble, tmp_path):
    from mmpgm.data import MultimodalData

    out, d = babble
    irm, lengths = d["labels/irm"], d["lengths"]
    N = len(lengths)
    assert N == 5 and irm.shape == (N, 75, 513) and irm.dtype == np.float32
    assert lengths.tolist() == [75, 75, 75, 75, 63]
    inside = np.arange(75)[None, :] < lengths[:, None]
    assert np.isfinite(irm[inside]).all()
    assert (irm[inside] >= 0).all() and (irm[inside] <= 1).all()
    assert np.isnan(irm[~inside]).all()  # padding frames: NaN (unlabelled), as -1 for speech
    assert (d["labels/speech"][~inside] == -1).all()
    assert 0.1 < irm[inside].mean() < 0.9  # 0 dB babble: neither all speech nor all noise
    md = MultimodalData.load(out)
    assert tuple(md.labels["irm"].shape) == (N, 75, 513)
    from mmpgm.models.mixture import GatedMixture

    model = GatedMixture(
        {"audio": 513, "image": 32, "flow": 11}, head="ratio_mask", mask_dim=513, target="irm"
    )
    assert model.check_data(md).labels["irm"].shape == (N, 75, 513)  # a valid target
    md.save(tmp_path / "again.npz")
    with np.load(tmp_path / "again.npz") as f:
        np.testing.assert_array_equal(f["labels/irm"], irm)  # NaN == NaN here


def test_stored_irm_equals_irm_of_rebuilt_waveforms(corpus, babble):
    _, d = babble
    for n, uid in enumerate(d["meta/utterance_id"]):
        clean, noisy = rebuild(corpus, str(uid), BABBLE, SEED)
        L = int(d["lengths"][n])
        # the replay is the preparation's: the rebuilt noisy audio gives the stored features
        np.testing.assert_allclose(fa.audio_features(noisy), d["obs/audio"][n, :L], atol=1e-4)
        S = np.abs(fa.frame_signal_stft(clean))
        Nz = np.abs(fa.frame_signal_stft(noisy.astype(np.float64) - clean))
        expect = np.where(Nz == 0, 1.0, fa.ideal_ratio_mask(S, Nz))
        assert np.abs(d["labels/irm"][n, :L] - expect).max() < 1e-5, uid


def test_irm_recovers_clean_magnitude(corpus, babble):
    _, d = babble
    n = 0
    clean, noisy = rebuild(corpus, str(d["meta/utterance_id"][n]), BABBLE, SEED)
    S = fa.stft_magnitude(clean).astype(np.float64)
    Nz = fa.stft_magnitude(noisy.astype(np.float64) - clean).astype(np.float64)
    Y = np.exp(d["obs/audio"][n].astype(np.float64)) - fa.LOG_EPS  # stored noisy magnitude
    np.testing.assert_allclose(Y, fa.stft_magnitude(noisy), rtol=1e-3, atol=1e-5)
    irm = d["labels/irm"][n].astype(np.float64)
    # ~1 where the clean energy dominates (local SNR > 20 dB), ~0 where the noise does
    # (bins with energy above the eps guard of ideal_ratio_mask)
    audible = np.maximum(S, Nz) > 1e-3
    assert irm[audible & (S**2 > 100 * Nz**2)].min() > 0.99
    assert irm[audible & (Nz**2 > 100 * S**2)].max() < 0.11

    def log_mse(mag):
        return float(np.mean((np.log(mag + fa.LOG_EPS) - np.log(S + fa.LOG_EPS)) ** 2))

    noisy_err = log_mse(Y)
    assert log_mse(fa.apply_ratio_mask(irm, Y)) < 0.5 * noisy_err
    # the magnitude-ratio variant |S| / (|S| + |N|) from the same clean / noise spectra
    ratio = fa.waveform_ratio_mask(clean, noisy, power=1, spectral_power=1)
    np.testing.assert_allclose(ratio, np.where(Nz == 0, 1, S / np.maximum(S + Nz, 1e-8)), atol=1e-5)
    assert log_mse(fa.apply_ratio_mask(ratio, Y)) < noisy_err


def test_irm_is_one_without_noise_cli(corpus, tmp_path):
    out = tmp_path / "clean.npz"
    assert (
        grid.main(
            [str(corpus), str(out), "--video-patch", "--irm", "--shard", "0/2", "--no-progress"]
        )
        == 0
    )
    with np.load(out) as f:
        irm, lengths = f["labels/irm"], f["lengths"]
        inside = np.arange(irm.shape[1])[None, :] < lengths[:, None]
        assert (irm[inside] == 1).all()  # no noise: exactly 1, silent bins included
        assert np.isnan(irm[~inside]).all()
    # without the option there is no target
    grid.prepare_grid(corpus, tmp_path / "plain.npz", shard="0/2", progress=False)
    with np.load(tmp_path / "plain.npz") as f:
        assert "labels/irm" not in f.files


def test_irm_is_one_outside_a_noisy_segment(corpus, tmp_path):
    cfg = {"audio_noise": "nonstationary", "snr_db": -5.0, "audio_seg_range": (20, 30)}
    grid.prepare_grid(
        corpus,
        tmp_path / "seg.npz",
        corruption=cfg,
        seed=SEED,
        shard="1/2",
        progress=False,
        targets="irm",
    )
    with np.load(tmp_path / "seg.npz") as f:
        irm, ac = f["labels/irm"], f["labels/audio_corrupted"]
    for n in range(len(irm)):
        on = np.flatnonzero(ac[n] == 1)
        f0, f1 = on[0], on[-1] + 1
        # frame t's window spans samples [640 t - 192, 640 t + 832): clear of the noise for
        # t <= f0 - 2 and t >= f1 + 1
        assert (irm[n, : f0 - 1] == 1).all() and (irm[n, f1 + 1 : 75] == 1).all()
        assert irm[n, f0 + 1 : f1 - 1].mean() < 0.9


def test_unknown_target_is_rejected(corpus, tmp_path):
    with pytest.raises(ValueError, match="unknown target"):
        grid.prepare_grid(corpus, tmp_path / "x.npz", progress=False, targets=("ibm",))
    assert grid.check_targets(None) == () and grid.check_targets("irm") == ("irm",)
