"""The shared integer check: one wording, numpy ints accepted, bools and floats refused."""

from __future__ import annotations

import numpy as np
import pytest

from evo.checks import check_int, check_memory
from evo.errors import ConfigError, EvoError


class _Custom(EvoError):
    pass


def test_accepts_ints_and_numpy_ints() -> None:
    assert check_int("n", 3) == 3
    got = check_int("n", np.int64(5), 0, 6)
    assert got == 5 and type(got) is int


@pytest.mark.parametrize("value", [0, -1, 1.0, True, "2", None, 10])
def test_refuses_with_the_name_the_bounds_and_the_value(value: object) -> None:
    with pytest.raises(ConfigError, match=rf"^n must be an integer >= 1 and < 10; got {value!r}$"):
        check_int("n", value, 1, 10)


def test_error_class_is_the_callers() -> None:
    with pytest.raises(_Custom, match="k must be an integer >= 3"):
        check_int("k", 2, 3, error=_Custom)


def test_memory_names_its_unit() -> None:
    assert check_memory(200) == 200
    with pytest.raises(ConfigError, match=r"memory \(exemplar images\) must be an integer >= 1; got 0"):
        check_memory(0)
