"""Label alignment, ArviZ conversion, information criteria, CLI demo, CUDA placement."""

import math

import arviz as az
import numpy as np
import pytest
import torch

import mmpgm
from mmpgm.datasets import demo_hmm
from mmpgm.diagnostics import (
    align_params,
    information_criteria,
    permute_params,
    restarts_to_inference_data,
    state_accuracy,
)


def test_alignment_recovers_a_known_relabelling():
    truth = demo_hmm(seed=0)
    shared = np.array([2, 0, 1])
    private = {m: np.array([1, 0]) for m in truth.modalities}
    relabelled = mmpgm.MultimodalHMM.from_params(permute_params(truth.params, shared, private))
    data, _ = truth.sample(3, 10, seed=0)
    # relabelling states does not change the likelihood
    torch.testing.assert_close(relabelled.log_likelihood(data), truth.log_likelihood(data))
    sp, pp = align_params(truth.params, relabelled.params)
    back = permute_params(relabelled.params, sp, pp)
    torch.testing.assert_close(back.shared_transition_probs, truth.params.shared_transition_probs)
    for m in truth.modalities:
        torch.testing.assert_close(back.emissions[m]["loc"], truth.params.emissions[m]["loc"])


def test_state_accuracy_is_permutation_invariant():
    true = torch.tensor([[0, 0, 1, 1, 2, 2]])
    est = torch.tensor([[2, 2, 0, 0, 1, 1]])
    acc, perm = state_accuracy(true, est, 3)
    assert acc == 1.0 and list(perm) == [1, 2, 0]


def test_restarts_rhat_and_information_criteria():
    truth = demo_hmm(seed=0)
    data, _ = truth.sample(12, 30, seed=0)
    models = []
    for seed in range(2):
        m = mmpgm.MultimodalHMM(data.obs_dims, 3, 2).double()
        mmpgm.fit(m, data, method="em", num_steps=30, seed=seed, progress=False)
        models.append(m)
    idata = restarts_to_inference_data(models, data, num_param_samples=20, seed=0)
    assert idata.posterior["shared_transition_probs"].shape == (2, 20, 3, 3)
    rhat = az.rhat(idata)["shared_transition_probs"].values
    assert np.isfinite(rhat).all()
    ic = information_criteria(models[0], data)
    assert ic["num_parameters"] == models[0].num_free_parameters()
    assert ic["bic"] > ic["aic"]  # log(frames) > 2


def test_loo_runs_on_laplace_draws():
    truth = demo_hmm(seed=0)
    data, _ = truth.sample(20, 20, seed=0)
    post = mmpgm.infer(truth, data, num_param_samples=50, seed=0, map_path=False)
    assert post.pointwise_log_likelihood.shape == (50, 20)
    loo = az.loo(post.to_arviz())
    assert np.isfinite(loo.elpd_loo)


def test_cli_demo_smoke(tmp_path, capsys):
    from mmpgm.cli import main

    assert main(["demo", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "shared-state accuracy" in out
    assert (tmp_path / "hmm_demo.png").exists() and (tmp_path / "hmm_demo.json").exists()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_and_data_follow_the_parameters():
    truth = demo_hmm(seed=0)
    data, _ = truth.sample(4, 10, seed=0)
    cpu_ll = truth.log_likelihood(data)
    gpu = truth.cuda()
    ll = gpu.log_likelihood(data)
    assert ll.device.type == "cuda"
    torch.testing.assert_close(ll.cpu(), cpu_ll)
    post = mmpgm.infer(gpu, data, num_samples=3, seed=0)
    assert post.samples["shared"].device.type == "cuda"


def test_state_accuracy_takes_ragged_paths_padding_and_infers_num_states():
    from mmpgm.diagnostics import state_accuracy

    true = [np.array([0, 0, 1, 1, 2]), np.array([2, 2, 0])]
    est = [np.array([1, 1, 0, 0, 2]), np.array([2, 2, 0])]  # a relabelling, one frame wrong
    est[1][2] = 2
    acc, perm = state_accuracy(true, est)
    assert math.isclose(acc, 7 / 8) and list(perm) == [1, 0, 2]
    padded_true = torch.tensor([[0, 0, 1, 1, 2], [2, 2, 0, -1, -1]])
    padded_est = torch.tensor([[1, 1, 0, 0, 2], [2, 2, 2, 0, 0]])
    assert state_accuracy(padded_true, padded_est).accuracy == acc  # -1 = not scored
    assert state_accuracy(padded_true, padded_est, lengths=[5, 3]).accuracy == acc
    with pytest.raises(ValueError, match="num_states: expected an int >= 3"):
        state_accuracy(padded_true, padded_est, num_states=2)
    with pytest.raises(ValueError, match="estimated_states: expected as many frames"):
        state_accuracy(true, [np.array([0])])
