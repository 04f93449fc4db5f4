"""Seeded recovery test of MultimodalLDS: EM and SVI both reach the truth's held-out likelihood and
recover the shared subspace.

Truth: modalities a (D=5) and b (D=4), a 2-D shared block rotating at 0.3 rad/step with radius
0.95, 1-D private blocks (AR coefficients 0.9 and 0.7), unit stationary variances, standard-normal
loadings and offsets, noise sd 0.5. Training: 16 sequences x 250 frames (4,000 frames, 36,000
scalars); held out: another 16 x 250.

Measured (this seed, float64): held-out log-likelihood per frame, fitted minus truth:
EM (30 steps) -0.0065 nats, SVI (60 Adam steps, lr 0.05, from the same data-driven start, no EM
warm start) -0.0071 nats; principal angles between the true and fitted column spaces of
[C^a_s; C^b_s]: EM 0.6 / 1.2 degrees, SVI 0.5 / 1.5 degrees (the data-driven start alone:
-0.67 nats, 1.6 / 4.2 degrees). Time to within 0.02 nats of the truth (one thread, busy 2-core
machine): EM 6 steps / 0.3 s, SVI 20 steps / 6.7 s.

Tolerances. Likelihood: the required 0.02 nats per frame; the expected overfitting gap of a
MAP fit is about (number of parameters) / (2 x frames) = 85 / 8,000 ~ 0.011 nats (here a
held-out set, so the sign is negative), and both fits are ~3x inside the bound. Subspace: the
angles are bounded by 3 degrees. A 2-D subspace estimated from n frames has angular error of
order sigma_noise / (sigma_signal sqrt(n)) per direction, inflated for the weaker shared
direction by its overlap with the private loadings (the measured 1.2-1.5 degrees; SVI's value
wanders within 1.4-1.7 degrees over its last 40 steps). 3 degrees is 2x the worst measured value
and below the 4.2 degrees of the data-driven start, so the check needs the fit; a wrong split (a
private direction taken as shared) gives angles above 30 degrees, and random 2-D subspaces of R^9
typically above 40 degrees.
"""

import math

import pytest
import torch

import mmpgm
from mmpgm.models.lds import LDSParams, MultimodalLDS

pytestmark = pytest.mark.slow

MAX_GAP_NATS = 0.02
MAX_ANGLE_DEG = 3.0


def truth():
    model = MultimodalLDS({"a": 5, "b": 4}, shared_dim=2, private_dim=1).double()
    g = torch.Generator().manual_seed(0)
    th = 0.3
    rot = torch.tensor(
        [[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64
    )
    eye = torch.eye

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    params = LDSParams(
        transition_matrices={
            "shared": 0.95 * rot,
            "a": torch.tensor([[0.9]]),
            "b": torch.tensor([[0.7]]),
        },
        transition_covs={
            "shared": (1 - 0.95**2) * eye(2),
            "a": torch.tensor([[0.19]]),
            "b": torch.tensor([[0.51]]),
        },
        initial_means={"shared": torch.zeros(2), "a": torch.zeros(1), "b": torch.zeros(1)},
        initial_covs={"shared": eye(2), "a": eye(1), "b": eye(1)},
        shared_emission_matrices={"a": r(5, 2), "b": r(4, 2)},
        private_emission_matrices={"a": r(5, 1), "b": r(4, 1)},
        emission_offsets={"a": r(5), "b": r(4)},
        emission_covs={"a": 0.25 * eye(5), "b": 0.25 * eye(4)},
    )
    return model.set_params(params)


def held_out_per_frame(model, data):
    with torch.no_grad():
        return float(model.log_likelihood(data).sum()) / int(data.time_mask.sum())


def principal_angles_deg(true_model, model):
    def basis(m):
        C = torch.cat(
            [m.params.shared_emission_matrices["a"], m.params.shared_emission_matrices["b"]]
        )
        return torch.linalg.qr(C.double())[0]

    cos = torch.linalg.svdvals(basis(true_model).mT @ basis(model)).clamp(max=1.0)
    return torch.rad2deg(torch.acos(cos))


@pytest.fixture(scope="module")
def setup():
    tm = truth()
    train, _ = tm.sample(16, 250, seed=1)
    test, _ = tm.sample(16, 250, seed=2)
    return tm, train, test, held_out_per_frame(tm, test)


@pytest.mark.parametrize(
    "method, kwargs", [("em", dict(num_steps=30)), ("svi", dict(num_steps=60, lr=0.05, patience=0))]
)
def test_em_and_svi_recover_the_truth(setup, one_thread, method, kwargs):
    tm, train, test, ref = setup
    model = MultimodalLDS({"a": 5, "b": 4}, shared_dim=2, private_dim=1).double()
    mmpgm.fit(model, train, method=method, seed=0, **kwargs)
    gap = held_out_per_frame(model, test) - ref
    angles = principal_angles_deg(tm, model)
    print(f"{method}: held-out gap {gap:+.4f} nats/frame, principal angles {angles.tolist()}")
    assert abs(gap) < MAX_GAP_NATS
    assert float(angles.max()) < MAX_ANGLE_DEG
