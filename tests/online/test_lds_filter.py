"""The streaming LDS filter equals the batch Kalman filter at every step, with missing
modalities."""

import math

import pytest
import torch

import mmpgm
from mmpgm.models.lds import MultimodalLDS
from mmpgm.online import LDSFilter

pytestmark = pytest.mark.usefixtures("float64")


def make_model():
    model = MultimodalLDS(
        {"pos": 3, "imu": 2}, shared_dim=2, private_dim={"pos": 1, "imu": 2}, noise="full"
    )
    data, _ = MultimodalLDS({"pos": 3, "imu": 2}, 2, {"pos": 1, "imu": 2}).sample(3, 40, seed=0)
    model.init_from_data(data)
    for _ in range(3):
        model.em_step(data)
    return model


def test_streaming_equals_batch_filter_with_missing_modalities():
    model = make_model()
    data, _ = model.sample(3, 15, seed=1)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["pos"][:, 4:8] = math.nan  # position dropout for everyone
    obs["imu"][1, 2] = math.nan  # one stream misses one IMU frame
    obs["imu"][:, 10] = math.nan
    obs["pos"][:, 10] = math.nan  # frame 10: nothing observed (pure prediction)
    data = mmpgm.MultimodalData(obs)
    batch = mmpgm.infer(model, data, causal=True, map_path=False)
    f = LDSFilter(model, num_sequences=3)
    mean0, cov0 = f.predict_observation("pos")
    torch.testing.assert_close(
        mean0[0],
        model.emission_matrix("pos").detach() @ model.linear_gaussian_params().initial_mean.detach()
        + model.emissions["pos"].offset.detach(),
    )
    tol = dict(rtol=1e-10, atol=1e-12)
    for t in range(15):
        frame = {m: data.obs[m][:, t] for m in model.modalities if not (m == "pos" and t in (5, 6))}
        state = f.step(frame)
        assert state.step == t + 1
        torch.testing.assert_close(state.state_mean, batch.state_mean[:, t], **tol)
        torch.testing.assert_close(state.state_covariance, batch.state_covariance[:, t], **tol)
        for b in model.block_names:
            torch.testing.assert_close(state.mean[b], batch.mean[b][:, t], **tol)
            torch.testing.assert_close(state.covariance[b], batch.covariance[b][:, t], **tol)
        A = model.linear_gaussian_params().transition_matrix.detach()
        torch.testing.assert_close(state.predicted_state_mean, state.state_mean @ A.mT, **tol)
        pm, pc = state.predicted["imu"], state.predicted_covariance["imu"]
        assert pm.shape == (3, 2) and pc.shape == (3, 2, 2)
        C, d = model.emission_matrix("imu").detach(), model.emissions["imu"].offset.detach()
        torch.testing.assert_close(pm, state.predicted_state_mean @ C.mT + d, **tol)
        R = model.linear_gaussian_params().emission_covs["imu"].detach()
        P = state.predicted_state_covariance
        torch.testing.assert_close(pc, C @ P @ C.mT + R, **tol)
    torch.testing.assert_close(state.log_likelihood, batch.log_likelihood, rtol=1e-10, atol=1e-10)
    # the one-step observation prediction equals the batch filter's prediction for the next frame
    ext = mmpgm.MultimodalData(
        {m: torch.cat([obs[m], torch.full_like(obs[m][:, :1], math.nan)], 1) for m in obs}
    )
    nxt = mmpgm.infer(model, ext, causal=True, map_path=False)
    C = model.emission_matrix("imu").detach()
    torch.testing.assert_close(
        f.predict_observation("imu")[0],
        nxt.state_mean[:, 15] @ C.mT + model.emissions["imu"].offset.detach(),
        **tol,
    )
    # constant memory: the filter keeps only the current prediction
    assert f._pred_m.shape == (3, model.state_dim)


def test_streaming_filter_errors_and_reset():
    model = make_model()
    f = LDSFilter(model, num_sequences=2)
    with pytest.raises(ValueError, match="unknown modalities"):
        f.step({"lidar": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match=r"frame\['pos'\]: expected shape \(2, 3\)"):
        f.step({"pos": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="num_sequences"):
        LDSFilter(model, num_sequences=0)
    with pytest.raises(TypeError, match="MultimodalLDS"):
        LDSFilter(object())
    s1 = f.step({"pos": torch.ones(2, 3)})
    f.reset()
    s2 = f.step({"pos": torch.ones(2, 3)})
    assert s2.step == 1
    torch.testing.assert_close(s1.state_mean, s2.state_mean)
    single = LDSFilter(model)  # N = 1 accepts a bare (D,) frame
    assert single.step({"imu": torch.zeros(2)}).state_mean.shape == (1, model.state_dim)
