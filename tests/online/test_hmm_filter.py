"""The streaming HMM filter equals the batch forward filter at every step."""

import math

import pytest
import torch

import mmpgm
from mmpgm.datasets import demo_hmm
from mmpgm.online import Filter

pytestmark = pytest.mark.usefixtures("float64")


def test_streaming_equals_batch_filter_with_missing_modalities():
    model = demo_hmm(seed=0)
    data, _ = model.sample(3, 12, seed=1)
    obs = {m: v.clone() for m, v in data.obs.items()}
    obs["video"][:, 4:7] = math.nan  # NaN rows are missing
    obs["audio"][1, 2] = math.nan
    obs["flow"][:, 5] = math.nan  # and at t=5 flow is simply not passed to step()
    data = mmpgm.MultimodalData(obs)
    batch = mmpgm.infer(model, data, causal=True, map_path=False)
    f = Filter(model, num_sequences=3)
    for t in range(12):
        frame = {m: data.obs[m][:, t] for m in model.modalities if not (m == "flow" and t == 5)}
        state = f.step(frame)
        assert state.step == t + 1
        for name in model.chain_names:
            torch.testing.assert_close(
                state.marginals[name], batch.marginals[name][:, t], rtol=1e-10, atol=1e-12
            )
    torch.testing.assert_close(state.log_likelihood, batch.log_likelihood, rtol=1e-10, atol=1e-10)
    # the one-step prediction is the transition applied to the filtered marginal
    A = model.shared_chain.transition_probs.detach()
    torch.testing.assert_close(
        state.predicted_marginals["shared"], state.marginals["shared"] @ A, rtol=1e-10, atol=1e-12
    )
    mean, cov = f.predict_observation("video")
    assert mean.shape == (3, 6) and cov.shape == (3, 6, 6)
    # the state carries the same one-step observation prediction for every modality
    for m in model.modalities:
        pm, pc = f.predict_observation(m)
        torch.testing.assert_close(state.predicted[m], pm, rtol=0, atol=0)
        torch.testing.assert_close(state.predicted_covariance[m], pc, rtol=0, atol=0)
    with pytest.raises(ValueError, match="unknown modalities"):
        f.step({"lidar": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match=r"frame\['audio'\]: expected shape \(3, 4\)"):
        f.step({"audio": torch.zeros(2, 4)})


def test_predict_observations_off_skips_the_moments_and_nothing_else():
    from mmpgm.online import HMMFilter

    model = demo_hmm(seed=0)
    data, _ = model.sample(2, 6, seed=1)
    full, lean = HMMFilter(model, 2), HMMFilter(model, 2, predict_observations=False)
    for t in range(data.num_timesteps):
        frame = {m: data.obs[m][:, t] for m in data.modalities}
        a, b = full.step(frame), lean.step(frame)
        assert b.predicted is None and b.predicted_covariance is None
        for name in a.marginals:
            torch.testing.assert_close(b.marginals[name], a.marginals[name], rtol=0, atol=0)
            torch.testing.assert_close(
                b.predicted_marginals[name], a.predicted_marginals[name], rtol=0, atol=0
            )
        torch.testing.assert_close(b.log_likelihood, a.log_likelihood, rtol=0, atol=0)
        # on demand they are still there, equal to the full filter's
        mean, cov = lean.predict_observation("audio")
        torch.testing.assert_close(mean, a.predicted["audio"], rtol=0, atol=0)
        torch.testing.assert_close(cov, a.predicted_covariance["audio"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="predict_observations"):
        HMMFilter(model, 1, predict_observations="no")
