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


def test_state_accuracy_takes_what_multimodal_data_takes():
    """Tensor, numpy, ragged lists (of arrays, of lists, of ``(T_i, 1)`` arrays), NaN or -1 as
    unscored, and a ragged truth against a padded estimate (``post.map`` of ragged data)."""
    from mmpgm.diagnostics import state_accuracy

    rng = np.random.default_rng(0)
    lengths = [7, 3, 5]
    true = [rng.integers(0, 3, n) for n in lengths]
    est = [(t + 1) % 3 for t in true]  # a relabelling ...
    est[0][2] = (est[0][2] + 1) % 3  # ... with two frames wrong
    est[2][4] = (est[2][4] + 1) % 3
    expected = 1 - 2 / sum(lengths)
    padded_true = np.full((3, 7), -1)
    padded_est = rng.integers(0, 3, (3, 7))  # padding frames hold anything (a MAP path)
    for n, L in enumerate(lengths):
        padded_true[n, :L], padded_est[n, :L] = true[n], est[n]
    as_nan = padded_true.astype(float)
    as_nan[padded_true < 0] = np.nan  # a ragged integer stream as MultimodalData pads it
    cases = {
        "ragged arrays": (true, est),
        "ragged lists": ([t.tolist() for t in true], [e.tolist() for e in est]),
        "ragged (T_i, 1)": ([t[:, None] for t in true], est),
        "numpy -1": (padded_true, padded_est),
        "tensor -1": (torch.as_tensor(padded_true), torch.as_tensor(padded_est)),
        "NaN (N, T, 1)": (as_nan[..., None], torch.as_tensor(padded_est)),
        "ragged truth, padded estimate": (true, torch.as_tensor(padded_est)),
        "padded truth, ragged estimate": (torch.as_tensor(padded_true), est),
        "ragged lists, padded estimate": ([t.tolist() for t in true], padded_est),
    }
    for name, (t, e) in cases.items():
        acc, perm = state_accuracy(t, e)
        assert math.isclose(acc, expected, rel_tol=0, abs_tol=1e-12), name
        assert list(perm) == [2, 0, 1], name
    # with lengths, padding frames of a padded truth need no -1
    filled = np.where(padded_true < 0, 0, padded_true)
    assert math.isclose(state_accuracy(filled, padded_est, lengths=lengths).accuracy, expected)
    assert state_accuracy(filled, padded_est).accuracy < expected  # scored without lengths
    # (N, 1): one frame per sequence stays (N, 1), not a (N,) squeeze of something else
    one = state_accuracy(np.array([[0], [1], [1]]), np.array([[1], [0], [0]]))
    assert one.accuracy == 1.0 and list(one.permutation) == [1, 0]
    with pytest.raises(ValueError, match=r"true_states: expected integer state labels"):
        state_accuracy(np.array([[0.5, 1.0]]), np.array([[0, 1]]))
    with pytest.raises(ValueError, match=r"estimated_states: expected at least 7 frames"):
        state_accuracy(true, torch.as_tensor(padded_est)[:, :5])
    with pytest.raises(ValueError, match=r"estimated_states: with lengths .* expected \(3, T\)"):
        state_accuracy(true, torch.as_tensor(padded_est)[:2])
    with pytest.raises(ValueError, match=r"true_states\[1\]: expected a \(T_i,\) path"):
        state_accuracy([np.zeros(3), np.zeros((3, 2))], est)
    with pytest.raises(ValueError, match=r"estimated_states: expected a state >= 0"):
        state_accuracy(true, np.where(padded_true < 0, 0, padded_est) * np.nan)
