"""The IMU-like activity generator and its sensor-fault corruption: shapes, lengths, seeds,
the phase process, exact corruption labels, and the size of each fault."""

import math

import pytest
import torch

from mmpgm.datasets import corrupt, imu_activity_data
from mmpgm.datasets.imu import FAULT_KINDS, IMU_MODALITIES


def test_shapes_lengths_labels_and_padding():
    d = imu_activity_data(3, seed=0, num_classes=5, min_length=7, max_length=12)
    N, T = 15, 12
    assert d.modalities == IMU_MODALITIES
    for m in IMU_MODALITIES:
        assert d.obs[m].shape == (N, T, 3) and d.obs[m].dtype == torch.float64
    assert d.labels["activity"].tolist() == [c for c in range(5) for _ in range(3)]
    assert d.lengths.min() >= 7 and d.lengths.max() <= 12
    inside = torch.arange(T)[None] < d.lengths[:, None]
    for m in IMU_MODALITIES:
        assert torch.equal(d.mask[m], inside)
        assert torch.isnan(d.obs[m][~inside]).all() and torch.isfinite(d.obs[m][inside]).all()
    phase = d.labels["phase"]
    assert torch.equal(phase < 0, ~inside)
    assert phase[inside].min() >= 0 and phase[inside].max() < 4


def test_equal_lengths_and_dtype():
    d = imu_activity_data(2, seed=3, min_length=9, max_length=9, dtype=torch.float32)
    assert d.lengths.tolist() == [9] * 8 and d.obs["gyro"].dtype == torch.float32


def test_phase_advances_by_zero_or_one_step_around_the_cycle():
    d = imu_activity_data(4, seed=1, num_phases=5, min_length=40, max_length=40)
    step = (d.labels["phase"][:, 1:] - d.labels["phase"][:, :-1]) % 5
    assert set(step.unique().tolist()) == {0, 1}


def test_seeds_reproducible_and_distinct():
    a = imu_activity_data(2, seed=4)
    b = imu_activity_data(2, seed=4)
    c = imu_activity_data(2, seed=5)
    for m in IMU_MODALITIES:
        assert torch.equal(torch.nan_to_num(a.obs[m]), torch.nan_to_num(b.obs[m]))
        assert not torch.equal(torch.nan_to_num(a.obs[m]), torch.nan_to_num(c.obs[m]))
    assert torch.equal(a.lengths, b.lengths)


def _phase_means(d, m, C, K):
    x = d.obs[m]
    out = torch.full((C, K, 3), math.nan, dtype=torch.float64)
    for c in range(C):
        for k in range(K):
            sel = (d.labels["activity"][:, None] == c) & (d.labels["phase"] == k)
            out[c, k] = x[sel].mean(0)
    return out


def test_template_seed_shares_the_classes_between_splits():
    """Noise-free (sigma tiny, no gain spread): every frame equals its class/phase template, so
    two splits with one ``template_seed`` agree on the templates and another one differs."""
    kw = dict(noise_scale=1e-9, gain_sd=0.0, min_length=30, max_length=30)
    a = imu_activity_data(3, seed=1, template_seed=7, **kw)
    b = imu_activity_data(3, seed=2, template_seed=7, **kw)
    c = imu_activity_data(3, seed=1, template_seed=8, **kw)
    for m in IMU_MODALITIES:
        ta, tb, tc = (_phase_means(d, m, 4, 4) for d in (a, b, c))
        torch.testing.assert_close(ta, tb, rtol=0.0, atol=1e-6)
        assert (ta - tc).abs().max() > 0.1
    # gravity on the accelerometer's third axis
    assert abs(float(_phase_means(a, "accel", 4, 4)[..., 2].mean()) - 9.81) < 3.0


def test_each_sensor_confuses_other_class_pairs():
    """The accelerometer's class deviations are shared mostly within {0, 1} and {2, 3}, the
    gyroscope's within {0, 2} and {1, 3}: distances between noise-free templates say so."""
    d = imu_activity_data(3, seed=0, noise_scale=1e-9, gain_sd=0.0, min_length=40, max_length=40)
    for m, near, far in (("accel", (0, 1), (0, 2)), ("gyro", (0, 2), (0, 1))):
        t = _phase_means(d, m, 4, 4)
        assert (t[near[0]] - t[near[1]]).norm() < 0.6 * (t[far[0]] - t[far[1]]).norm()


def test_white_noise_scale():
    """``noise_ar=0``, no gain spread: residuals about the class/phase means have sd sigma
    (N*T*3 ~ 1.2e4 draws: the sd estimate's relative standard error is ~0.6%, margin 5%)."""
    d = imu_activity_data(
        10, seed=2, noise_scale=0.5, noise_ar=0.0, gain_sd=0.0, min_length=100, max_length=100
    )
    for m in IMU_MODALITIES:
        mu = _phase_means(d, m, 4, 4)
        resid = d.obs[m] - mu[d.labels["activity"][:, None], d.labels["phase"]]
        assert abs(float(resid.std()) - 0.5) < 0.025


@pytest.mark.parametrize("kind", FAULT_KINDS)
@pytest.mark.parametrize("num_segments", [1, 3])
def test_corruption_labels_exact(kind, num_segments):
    d = imu_activity_data(2, seed=0, min_length=5, max_length=21)
    c, faulty = corrupt(d, "gyro", kind, 0.5, num_segments=num_segments, seed=1)
    bad = faulty["gyro"]
    assert bad.shape == (8, 21) and bad.dtype == torch.bool
    assert not faulty["accel"].any()
    inside = torch.arange(21)[None] < d.lengths[:, None]
    assert not (bad & ~inside).any()
    expected = [int(round(0.5 * int(n))) for n in d.lengths]
    assert bad.sum(1).tolist() == expected
    for n in range(8):
        row = bad[n].int()
        runs = int(row[0]) + int(((row[1:] - row[:-1]) == 1).sum())
        assert 1 <= runs <= num_segments
    # untouched: the other sensor, the clean frames, lengths, masks and labels
    assert torch.equal(torch.nan_to_num(c.obs["accel"]), torch.nan_to_num(d.obs["accel"]))
    clean = inside & ~bad
    assert torch.equal(c.obs["gyro"][clean], d.obs["gyro"][clean])
    assert not torch.equal(c.obs["gyro"][bad], d.obs["gyro"][bad]) or kind == "stuck"
    assert torch.equal(c.lengths, d.lengths) and torch.equal(c.mask["gyro"], d.mask["gyro"])
    assert torch.equal(c.labels["phase"], d.labels["phase"])


def test_corruption_fraction_edges_and_seed():
    d = imu_activity_data(2, seed=0, min_length=6, max_length=10)
    _, f0 = corrupt(d, "accel", "noise", 0.0)
    assert not f0["accel"].any()
    _, f1 = corrupt(d, "accel", "noise", 1.0)
    assert torch.equal(f1["accel"], d.mask["accel"])
    a, fa = corrupt(d, "accel", "noise", 0.4, seed=3)
    b, fb = corrupt(d, "accel", "noise", 0.4, seed=3)
    assert torch.equal(fa["accel"], fb["accel"])
    assert torch.equal(torch.nan_to_num(a.obs["accel"]), torch.nan_to_num(b.obs["accel"]))


def test_stuck_holds_the_last_clean_reading():
    d = imu_activity_data(3, seed=1, min_length=20, max_length=30)
    c, f = corrupt(d, "accel", "stuck", 0.5, num_segments=2, seed=2)
    x, x0, bad = c.obs["accel"], d.obs["accel"], f["accel"]
    for n in range(x.shape[0]):
        for t in torch.nonzero(bad[n]).flatten().tolist():
            if t == 0 or not bad[n, t - 1]:  # segment start: the previous clean frame
                ref = x0[n, max(t - 1, 0)]
            assert torch.equal(x[n, t], ref)


def test_noise_and_drift_sizes_in_reference_sd():
    """Noise frames have mean ref mean + 3 sd and sd 1 sd (per coordinate; ~1000 draws each, so
    the means' standard error is ~0.03 sd: margin 0.25 sd); a drift ends ``drift_sd`` sd above
    the clean signal (last frames of each segment, noise sd 0.5: margin 1 sd)."""
    train = imu_activity_data(5, seed=0)
    test = imu_activity_data(5, seed=1)
    x = train.obs["gyro"][train.mask["gyro"]]
    mean, sd = x.mean(0), x.std(0)
    c, f = corrupt(test, "gyro", "noise", 0.5, reference=train, seed=0)
    z = (c.obs["gyro"][f["gyro"]] - mean) / sd
    assert ((z.mean(0) - 3.0).abs() < 0.25).all() and ((z.std(0) - 1.0).abs() < 0.25).all()
    c, f = corrupt(test, "gyro", "drift", 0.5, reference={"mean": mean, "sd": sd}, seed=0)
    bad = f["gyro"]
    last = bad & ~torch.cat([bad[:, 1:], torch.zeros_like(bad[:, :1])], 1)
    jump = (c.obs["gyro"] - test.obs["gyro"])[last] / sd
    assert ((jump.mean(0) - 6.0).abs() < 1.0).all()


def test_bad_arguments():
    d = imu_activity_data(1, seed=0, min_length=5, max_length=6)
    with pytest.raises(ValueError, match="modality"):
        corrupt(d, "mag", "noise")
    with pytest.raises(ValueError, match="kind"):
        corrupt(d, "gyro", "spikes")
    with pytest.raises(ValueError, match="fraction"):
        corrupt(d, "gyro", "noise", 1.5)
    with pytest.raises(TypeError, match="reference"):
        corrupt(d, "gyro", "noise", reference=[0.0])
    with pytest.raises(TypeError, match="data"):
        corrupt({"gyro": 1}, "gyro", "noise")
    with pytest.raises(ValueError, match="max_length"):
        imu_activity_data(1, min_length=10, max_length=5)
    with pytest.raises(ValueError, match="rate"):
        imu_activity_data(1, rate=1.5)
    with pytest.raises(ValueError, match="rate_spread"):
        imu_activity_data(1, rate=0.95, rate_spread=0.5)
    with pytest.raises(ValueError, match="noise_ar"):
        imu_activity_data(1, noise_ar=1.0)
    with pytest.raises(ValueError, match="num_classes"):
        imu_activity_data(1, num_classes=1)


@pytest.mark.slow
def test_each_sensor_alone_classifies_partly_both_together_well(float64, one_thread):
    """What the generator is for: per-class MultimodalHMMs (K_s = 4, EM) on one sensor classify
    the 4 activities only partly, on both nearly perfectly. Measured (template seed 1, 100 test
    sequences): accel 0.67, gyro 0.71, both 1.00; the binomial standard error is ~0.045, so the
    bounds [0.45, 0.95] for one sensor and >= 0.95 for both leave >= 4.5 standard errors."""
    import mmpgm

    kw = dict(template_seed=1, min_length=60, max_length=80)
    train, test = imu_activity_data(12, seed=3, **kw), imu_activity_data(25, seed=4, **kw)

    def accuracy(mods):
        def view(d):
            return mmpgm.MultimodalData({m: d.obs[m] for m in mods}, lengths=d.lengths)

        scores = []
        for c in range(4):
            model = mmpgm.MultimodalHMM({m: 3 for m in mods}, num_shared_states=4)
            rows = torch.nonzero(train.labels["activity"] == c).flatten()
            mmpgm.fit(model, view(train)[rows], method="em", num_steps=30, progress=False)
            with torch.no_grad():
                scores.append(model.log_likelihood(view(test)))
        pred = torch.stack(scores, -1).argmax(-1)
        return float((pred == test.labels["activity"]).double().mean())

    for mods in (("accel",), ("gyro",)):
        assert 0.45 <= accuracy(mods) <= 0.95, mods
    assert accuracy(IMU_MODALITIES) >= 0.95
