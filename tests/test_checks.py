import pytest
import torch

from xai_feedback import DTypeError, RangeError, ShapeError, XAIFeedbackError
from xai_feedback._checks import (
    check_choice,
    check_finite,
    check_int,
    check_number,
    check_shape,
    check_unit_range,
)


def test_check_shape_binds_named_dims() -> None:
    assert check_shape(torch.zeros(2, 3, 4, 4), "B C H H", "x") == {"B": 2, "C": 3, "H": 4}


def test_check_shape_rank_message_names_argument_pattern_and_shape() -> None:
    with pytest.raises(
        ShapeError, match=r"`maps` must have shape \(B, H, W\).*got a 4-D.*\(2, 1, 3, 3\)"
    ):
        check_shape(torch.zeros(2, 1, 3, 3), "B H W", "maps")


def test_check_shape_literal_repeated_and_known_sizes() -> None:
    with pytest.raises(ShapeError, match=r"dimension 1 must be 1, got 3"):
        check_shape(torch.zeros(2, 3, 4, 4), "B 1 H W", "x")
    with pytest.raises(ShapeError, match=r"dimension 2 \(H\) must be 4, got 5"):
        check_shape(torch.zeros(2, 4, 5), "B H H", "x")
    with pytest.raises(ShapeError, match=r"dimension 0 \(B\) must be 3, got 2"):
        check_shape(torch.zeros(2, 4), "B K", "x", B=3)


def test_errors_are_builtin_subclasses() -> None:
    assert issubclass(ShapeError, ValueError) and issubclass(ShapeError, XAIFeedbackError)
    assert issubclass(DTypeError, TypeError)
    with pytest.raises(DTypeError, match=r"`x` must be a torch\.Tensor, got list"):
        check_shape([1, 2], "N", "x")


def test_value_checks() -> None:
    with pytest.raises(RangeError, match="1 NaN"):
        check_finite(torch.tensor([0.0, float("nan")]), "x")
    with pytest.raises(RangeError, match=r"\[0, 1\].*-0.5"):
        check_unit_range(torch.tensor([-0.5, 0.2]), "x")
    with pytest.raises(RangeError, match="`seed` must be >= 0, got -1"):
        check_int(-1, "seed", minimum=0)
    with pytest.raises(DTypeError):
        check_int(True, "seed")
    with pytest.raises(RangeError, match="> 0"):
        check_number(0.0, "sigma", minimum=0, strict_minimum=True)
    with pytest.raises(RangeError, match="finite"):
        check_number(float("inf"), "sigma")
    with pytest.raises(RangeError, match=r"one of \['a', 'b'\], got 'c'"):
        check_choice("c", "mode", ("a", "b"))
