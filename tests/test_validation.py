"""The shared argument checks of mmpgm._validation."""

import math

import pytest
import torch

from mmpgm._validation import check_choice, check_float, check_int, check_probabilities


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "3", None])
def test_check_int_refuses(value):
    with pytest.raises(ValueError, match=r"^num_steps: expected a positive int, got "):
        check_int("num_steps", value)


def test_check_int_minimum_and_none():
    assert check_int("k", 0, minimum=0) == 0
    assert check_int("k", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"k: expected an int >= 2, got 1"):
        check_int("k", 1, minimum=2)
    with pytest.raises(ValueError, match=r"k: expected a non-negative int, got -1"):
        check_int("k", -1, minimum=0)


@pytest.mark.parametrize("value", [0.0, -1e-3, math.inf, math.nan, True, "0.1"])
def test_check_float_positive_refuses(value):
    with pytest.raises(ValueError, match=r"^lr: expected a finite positive float, got "):
        check_float("lr", value, positive=True)


def test_check_choice():
    assert check_choice("method", "em", ("svi", "em")) == "em"
    with pytest.raises(ValueError, match=r"method: expected one of \['svi', 'em'\], got 'x'"):
        check_choice("method", "x", ("svi", "em"))


def test_check_probabilities_names_the_worst_row():
    p = torch.tensor([[0.5, 0.5], [0.2, 0.7], [1.0, 0.0]], dtype=torch.float64)
    with pytest.raises(
        ValueError, match=r"transition_probs: expected rows summing to 1 .* row \(1,\)"
    ):
        check_probabilities("transition_probs", p)
    with pytest.raises(
        ValueError, match=r"finite probabilities in \[0, 1\], got 2 entries outside"
    ):
        check_probabilities("p", torch.tensor([1.5, -0.5]))
    ok = torch.tensor([[0.25, 0.75]], dtype=torch.float32)
    assert check_probabilities("p", ok) is ok
    with pytest.raises(TypeError, match="floating-point"):
        check_probabilities("p", torch.tensor([0, 1]))
