"""simulate_expert_failures (mmpgm.inference.cross_fit): the copies keep their sequence's
inputs and labels, one expert gives another sequence's out-of-fold outputs and is rescored
against the copy's labels, everything else is untouched, and the arguments are validated."""

import pytest
import torch

from mmpgm.datasets import unreliable_stream_data
from mmpgm.inference.cross_fit import out_of_fold_scores, simulate_expert_failures
from mmpgm.models.mixture import GatedMixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _setup():
    data, _ = unreliable_stream_data(8, 12, 0, num_groups=4)
    torch.manual_seed(0)
    model = GatedMixture({"steady": 3, "sharp": 3}, hidden_dim=8, gate_hidden_dim=8,
                         gate_inputs=("features", "disagreement"))
    scores, evidence, groups, outputs = out_of_fold_scores(
        model, data, "group", expert_steps=2, return_outputs=True
    )
    return model, data, scores, evidence, outputs


def test_copies_swap_one_expert_and_rescore_it():
    model, data, scores, evidence, outputs = _setup()
    N = data.num_sequences
    aug, sc, ev, out, failed = simulate_expert_failures(
        model, data, scores, evidence, outputs, fraction=0.5, seed=1
    )
    K = 4
    assert aug.num_sequences == N + K and sc.shape[0] == ev.shape[0] == out.shape[0] == N + K
    assert failed.shape == (K,)
    torch.testing.assert_close(sc[:N], scores)
    torch.testing.assert_close(out[:N], outputs)
    y, _ = model.targets(aug)
    for k in range(K):
        n = N + k
        # the copy's inputs and labels are those of one original sequence ...
        src = [i for i in range(N) if torch.equal(aug.obs["steady"][n], data.obs["steady"][i])
               and torch.equal(aug.labels["speech"][n], data.labels["speech"][i])]
        assert src, "a copy is not a copy of a training sequence"
        i, m = src[0], int(failed[k])
        keep = [j for j in range(2) if j != m]
        torch.testing.assert_close(out[n][:, keep], outputs[i][:, keep])
        torch.testing.assert_close(sc[n][:, keep], scores[i][:, keep])
        assert torch.equal(ev[n], evidence[i])
        # ... and the failed expert gives another sequence's outputs, scored on these labels
        donors = [j for j in range(N) if j != i and torch.equal(out[n][:, m], outputs[j][:, m])]
        assert donors
        lc = model.component_log_prob(out[n : n + 1], y[n : n + 1])[0]
        torch.testing.assert_close(sc[n][:, m], lc[:, m])


def test_argument_errors():
    model, data, scores, evidence, outputs = _setup()
    with pytest.raises(ValueError, match="fraction"):
        simulate_expert_failures(model, data, scores, evidence, outputs, fraction=0.0)
    with pytest.raises(ValueError, match="expert_outputs"):
        simulate_expert_failures(model, data, scores, evidence, outputs[:, :5])
