"""Dataclass configs from plain dicts (JSON, YAML, notebook parameters), checked.

One function serves every config of the library (``ProceduralConfig``, ``ExtractConfig``, both
``TrainConfig``s): it follows the field annotations, so nested configs, tuples and simple types
need no per-config code.

    cfg = from_dict(TrainConfig, json.loads(path.read_text()), where=str(path))

- an unknown key is a ``ValueError`` naming where it was, the closest valid key and all valid keys;
- a field annotated with a dataclass takes a mapping and is built recursively;
- a field annotated ``tuple[...]`` takes a list (nested lists become nested tuples);
- ``bool``, ``str``, ``int`` and ``float`` fields are type-checked (a ``TypeError`` naming the
  key); an int is accepted for a float and converted. Anything else passes through unchanged;
- a field declared with :func:`bounded` is range-checked (a ``ValueError`` naming where, the key,
  the value and the allowed range).

Ranges are declared once, beside the default, and hold however a config is built:

    @dataclass
    class TrainConfig:
        steps: int = bounded(1000, min=1)          # optimizer steps
        lr: float = bounded(1e-4, gt=0)            # peak learning rate

        def __post_init__(self):
            check_ranges(self)                     # direct construction is checked too
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Mapping

RANGE = "mousefacelift.range"  # the dataclass field metadata key of a declared range


@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed values of a number: ``min <= x <= max``, ``gt < x < lt`` (any bound may be None; NaN
    is never allowed)."""
    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None

    def contains(self, x: float) -> bool:
        return (not math.isnan(x) and (self.min is None or x >= self.min) and (self.max is None or x <= self.max)
                and (self.gt is None or x > self.gt) and (self.lt is None or x < self.lt))

    def __str__(self) -> str:
        lo = (f"[{self.min:g}" if self.min is not None else f"({self.gt:g}" if self.gt is not None else None)
        hi = (f"{self.max:g}]" if self.max is not None else f"{self.lt:g})" if self.lt is not None else None)
        if lo and hi:
            return f"in {lo}, {hi}"
        if lo:
            return f">= {self.min:g}" if self.min is not None else f"> {self.gt:g}"
        if hi:
            return f"<= {self.max:g}" if self.max is not None else f"< {self.lt:g}"
        return "a number"


def bounded(default, *, min: float | None = None, max: float | None = None, gt: float | None = None,
            lt: float | None = None):
    """A dataclass field with ``default`` whose value (or each number of a tuple value) must lie in
    the range: ``min``/``max`` inclusive, ``gt``/``lt`` exclusive. None always passes (a field
    typed ``int | None`` may mean "unset"); NaN never does; infinity does where no bound excludes
    it (``skip_factor=inf``: never skip)."""
    return dataclasses.field(default=default, metadata={RANGE: Range(min, max, gt, lt)})


def field_range(cls, name: str) -> Range | None:
    """The range declared for field ``name`` of dataclass ``cls`` (None if it has none)."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get(RANGE)
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def range_error(rng: Range, value, where: str) -> str | None:
    """Why ``value`` (a number or a nested sequence of numbers) is outside ``rng``, or None.
    Non-numbers are left to the type checks."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            why = range_error(rng, v, f"{where}[{i}]")
            if why:
                return why
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if rng.contains(value) else f"{where} = {value!r} is out of range: must be {rng}"


def check_ranges(obj, where: str | None = None) -> None:
    """Raise ``ValueError`` for the first field of dataclass instance ``obj`` outside its declared
    range (see :func:`bounded`). Call it from ``__post_init__``."""
    where = where or type(obj).__name__
    for f in dataclasses.fields(obj):
        rng = f.metadata.get(RANGE)
        why = rng and range_error(rng, getattr(obj, f.name), f"{where}.{f.name}")
        if why:
            raise ValueError(why)


def from_dict(cls, data: Mapping, where: str | None = None):
    """Build dataclass ``cls`` from ``data``; see the module docstring for the rules."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{where}: unknown key '{key}'{hint} (valid keys: {', '.join(fields)})")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
        rng = fields[key].metadata.get(RANGE)
        why = rng and range_error(rng, kwargs[key], f"{where}.{key}")
        if why:
            raise ValueError(why)
    return cls(**kwargs)


def _convert(hint, value, where: str):
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return value if isinstance(value, hint) else from_dict(hint, value, where)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{where}: expected a list, got {value!r}")
        return _tuplify(value)
    if hint is bool or hint is str:
        if type(value) is not hint:
            raise TypeError(f"{where}: expected {hint.__name__}, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{where}: expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{where}: expected a number, got {value!r}")
        return float(value)
    return value


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


__all__ = ["from_dict", "bounded", "check_ranges", "field_range", "range_error", "Range"]
