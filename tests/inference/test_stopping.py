"""The plateau test (smoothing window, reset) and the staged SVI schedule (MVRNN KL annealing)."""

import pytest
import torch

import mmpgm
from mmpgm.inference.stopping import PlateauStopper
from mmpgm.models.mvrnn import MVRNN


def test_window_one_is_the_plain_plateau_test():
    stop = PlateauStopper(2, 0.1)
    assert [stop(v) for v in [5.0, 4.0, 3.95, 3.99]] == [False, False, False, True]


def test_a_window_judges_the_trend_not_one_lucky_step():
    # a noisy, still-falling objective: one lucky low step must not make later steps look flat
    values = [10.0, 2.0, 9.0, 8.0, 7.5, 7.0, 6.5, 6.0, 5.5, 5.0]
    plain = PlateauStopper(3, 0.01)
    assert any(plain(v) for v in values)  # the 2.0 fools the unsmoothed test
    smooth = PlateauStopper(3, 0.01, window=5)
    assert not any(smooth(v) for v in values)


def test_reset_starts_over():
    stop = PlateauStopper(1, 0.0)
    stop(1.0)
    stop.reset()
    assert stop.best == float("inf") and not stop(5.0)


def test_mvrnn_kl_annealing_stages_and_no_early_stop_before_the_last():
    model = MVRNN({"a": 2, "b": 2}, hidden_dim=4, shared_dim=1, private_dim=1)
    assert model.kl_annealing == (0.0, 0.3, 1.0)
    assert [model.svi_stage(s, 9) for s in (0, 2, 3, 6, 8)] == [
        (0, 3),
        (0, 3),
        (1, 3),
        (2, 3),
        (2, 3),
    ]
    assert model.kl_scale == 1.0
    assert model.default_svi_options() == {"lr": 1e-2}
    data = mmpgm.MultimodalData({"a": torch.randn(3, 5, 2), "b": torch.randn(3, 5, 2)})
    # patience 1 with a huge tol would stop at once without stages; it may only stop in the
    # last third (from step 100 of 150), each plateau test taking the smoothing window (a
    # stochastic objective) plus one step, once per learning-rate drop and once to stop
    from mmpgm.inference.stopping import LR_DROPS
    from mmpgm.inference.svi import SMOOTHING_WINDOW

    result = mmpgm.fit(model, data, num_steps=150, patience=1, tol=1e9, progress=False)
    expected = 100 + (LR_DROPS + 1) * (SMOOTHING_WINDOW + 1)
    assert result.converged and result.num_steps == expected, result.num_steps
    off = MVRNN({"a": 2, "b": 2}, hidden_dim=4, shared_dim=1, private_dim=1, kl_annealing=None)
    assert off.svi_stage(0, 10) == (0, 1) and off.default_svi_options() == {}


@pytest.mark.parametrize("bad", ["abc", [0.1, -1.0], [float("inf")], 3])
def test_bad_kl_annealing_is_named(bad):
    with pytest.raises((TypeError, ValueError), match="kl_annealing"):
        MVRNN({"a": 2}, hidden_dim=4, shared_dim=1, kl_annealing=bad)
