"""mousefacelift.configs.from_dict: the one checked dict -> dataclass path of every config."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from mousefacelift.configs import from_dict


@dataclass
class Inner:
    size: int = 3
    colour: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass
class Outer:
    name: str = "a"
    lr: float = 1e-4
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    grid: tuple[tuple[int, int], ...] = ((0, 0),)
    anything: dict | None = None


def test_nested_tuples_numbers_and_pass_through():
    cfg = from_dict(Outer, {"lr": 1, "inner": {"size": 5, "colour": [0, 0.5, 1]}, "grid": [[1, 2], [3, 4]],
                            "anything": {"k": [1]}})
    assert cfg == Outer(lr=1.0, inner=Inner(5, (0, 0.5, 1)), grid=((1, 2), (3, 4)), anything={"k": [1]})
    assert isinstance(cfg.lr, float)
    assert from_dict(Outer, {"inner": Inner(7)}).inner.size == 7  # an instance is kept


@pytest.mark.parametrize("data, error, match", [
    ({"nme": "b"}, ValueError, r"Outer: unknown key 'nme'; did you mean 'name'\? \(valid keys: name, lr"),
    ({"inner": {"sise": 1}}, ValueError, r"Outer.inner: unknown key 'sise'; did you mean 'size'"),
    ({"inner": {"size": 2.5}}, TypeError, r"Outer.inner.size: expected an integer"),
    ({"flag": 1}, TypeError, r"Outer.flag: expected bool"),
    ({"lr": "fast"}, TypeError, r"Outer.lr: expected a number"),
    ({"lr": True}, TypeError, r"Outer.lr: expected a number"),
    ({"grid": 3}, TypeError, r"Outer.grid: expected a list"),
    ({"inner": 3}, TypeError, r"Outer.inner: expected a mapping"),
])
def test_errors_name_the_key_and_the_fix(data, error, match):
    with pytest.raises(error, match=match):
        from_dict(Outer, data)
