"""Issue 15: the default `mmpgm.fit` of a MultimodalHMM finds the global basin on data whose
state noise levels differ 30-fold, with ragged lengths and 10% of one stream missing.

The reference is the EM fixed point reached from the true parameters: the default fit must
come within 0.01 nats/frame of it (or beat it) and decode the shared state with accuracy >= 0.95
from every seed. Margin: at the true basin the default and the reference differ only by EM's
tolerance (1e-6 per frame); a wrong basin costs nats per frame (before the mixture start, seed
0 ended 4.8 nats/frame worse at accuracy 0.65), so 0.01 separates the two cleanly. The states
are 3-way separable far above 0.95 at the true parameters (accuracy there is ~0.999).
"""

import itertools

import numpy as np
import pytest
import torch

import mmpgm
from mmpgm import HMMParams, MultimodalData, MultimodalHMM

pytestmark = pytest.mark.usefixtures("float64")

K = 3


def _corpus(seed, num_sequences=16):
    rng = np.random.default_rng(seed)
    sds = (np.geomspace(1, 30, K) * 0.1)[rng.permutation(K)]
    means = {m: rng.normal(0, 1.0, (K, 3)) for m in ("accel", "gyro")}
    A = np.full((K, K), 0.05 / (K - 1))
    np.fill_diagonal(A, 0.95)
    lengths = rng.integers(40, 121, num_sequences)
    T = int(lengths.max())
    obs = {m: np.full((num_sequences, T, 3), np.nan) for m in means}
    states = np.full((num_sequences, T), -1)
    for n in range(num_sequences):
        s = rng.integers(K)
        for t in range(lengths[n]):
            if t:
                s = rng.choice(K, p=A[s])
            states[n, t] = s
            for m in means:
                obs[m][n, t] = means[m][s] + sds[s] * rng.normal(size=3)
    obs["gyro"][rng.random((num_sequences, T)) < 0.1] = np.nan
    data = MultimodalData({m: torch.tensor(v) for m, v in obs.items()}, lengths=lengths.tolist())
    truth = HMMParams(
        shared_initial_probs=torch.full((K,), 1.0 / K),
        shared_transition_probs=torch.tensor(A),
        private_initial_probs={m: torch.ones(1) for m in means},
        private_transition_probs={m: torch.ones(1, 1) for m in means},
        emissions={
            m: {
                "loc": torch.tensor(means[m])[:, None, :],
                "scale": torch.tensor(sds)[:, None, None].expand(K, 1, 3).clone(),
            }
            for m in means
        },
    )
    return data, states, truth


def _accuracy(true, pred):
    inside = true >= 0
    return max(
        float((np.array(perm)[pred[inside]] == true[inside]).mean())
        for perm in itertools.permutations(range(K))
    )


def _per_frame(model, data):
    return float(model.log_likelihood(data).detach().sum()) / int(data.time_mask.sum())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["em", "svi"])
@pytest.mark.parametrize("num_private_states", [1, 2])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_default_fit_reaches_the_true_basin(seed, num_private_states, method):
    # SVI: Adam at its default rate hovers ~0.02 nats/frame from the optimum on these data; the
    # fit's rate drops on a plateau (mmpgm.inference.stopping.LR_DROPS) settle it within 1e-3
    data, states, truth = _corpus(seed)
    reference = MultimodalHMM.from_params(truth)
    mmpgm.fit(reference, data, method="em", init="none", progress=False)
    model = MultimodalHMM({"accel": 3, "gyro": 3}, K, num_private_states)
    mmpgm.fit(model, data, method=method, seed=seed, progress=False)
    gap = _per_frame(reference, data) - _per_frame(model, data)
    acc = _accuracy(states, mmpgm.infer(model, data).map["shared"].numpy())
    assert gap < 0.01 and acc >= 0.95, (gap, acc)
