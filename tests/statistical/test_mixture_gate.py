"""Seeded check: the gate learns to stop trusting a stream on the segments where it is noise.

Truth: a sticky latent bit ``b_t`` (the target, ``y_t = b_t``) seen by two streams:
``steady`` (3-d, ``2 b_t - 1 + N(0, 2^2)``, usable everywhere) and ``sharp``
(3-d, ``2 b_t - 1 + N(0, 0.5^2)``, better) except on known segments (15 frames of every
sequence at a random start; :func:`mmpgm.datasets.unreliable_stream_data`) where ``sharp``
is replaced by pure noise ``N(0, 3^2)`` (its magnitude tells the gate). Trained with
:func:`mmpgm.fit` on 32 sequences, evaluated on 64 new ones.
"""

import pytest
import torch

import mmpgm
from mmpgm.datasets import unreliable_stream_data
from mmpgm.diagnostics import gate_report
from mmpgm.models.mixture import GatedMixture

pytestmark = pytest.mark.usefixtures("one_thread")


def _synthetic(N, T, seed):
    return unreliable_stream_data(N, T, seed)


def _fit_and_measure(gate, program=None, num_steps=200):
    train, _ = _synthetic(32, 40, seed=0)
    test, bad = _synthetic(64, 50, seed=1)
    torch.manual_seed(0)
    model = GatedMixture({"steady": 3, "sharp": 3}, gate=gate, hidden_dim=16, gate_hidden_dim=16)
    mmpgm.fit(
        model,
        train,
        num_steps=num_steps,
        lr=0.03,
        seed=0,
        patience=0,
        program=program,
    )
    r = gate_report(mmpgm.infer(model, test), test, bad)
    return r["inside"], r["outside"], r["accuracy"], r["expert_accuracy"]


def test_conditional_gate_drops_noisy_stream():
    inside, outside, acc_mix, acc_experts = _fit_and_measure("conditional")
    # Measured (torch 2.13 CPU, seed 0): mean gate weight on "sharp" 0.37 inside vs 0.92 outside
    # the noise segments (margin 0.55); accuracy mixture 0.912, experts steady 0.802 / sharp 0.849.
    # Asserted margin 0.4 (about 3/4 of the measured one) leaves room for platform differences
    # while failing for a gate that ignores its inputs (margin ~0); inside < 0.5: the noisy
    # stream gets less than an equal share on its noise segments.
    print(inside, outside, acc_mix, acc_experts)
    assert outside - inside > 0.4
    assert inside < 0.5
    assert acc_mix >= max(acc_experts) - 0.01


@pytest.mark.slow
@pytest.mark.parametrize("gate", ["markov", "recurrent"])
def test_markov_and_recurrent_gates_drop_noisy_stream(gate):
    # Measured (seed 0): markov 0.35 inside vs 0.95 outside, accuracy 0.911 vs experts 0.787 /
    # 0.857; recurrent 0.41 vs 0.91, accuracy 0.910 vs 0.796 / 0.855.
    inside, outside, acc_mix, acc_experts = _fit_and_measure(gate, program="collapsed")
    print(gate, inside, outside, acc_mix, acc_experts)
    assert outside - inside > 0.3
    assert acc_mix >= max(acc_experts) - 0.01
