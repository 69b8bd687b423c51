"""Dataclass configs from plain dicts (JSON, YAML, notebook parameters), checked.

One function serves every config of the library (``SyntheticConfig``, ``ExtractConfig``, both
``TrainConfig``s): it follows the field annotations, so nested configs, tuples and simple types
need no per-config code.

    cfg = from_dict(TrainConfig, json.loads(path.read_text()), where=str(path))

- an unknown key is a ``ValueError`` naming where it was, the closest valid key and all valid keys;
- a field annotated with a dataclass takes a mapping and is built recursively;
- a field annotated ``tuple[...]`` takes a list (nested lists become nested tuples);
- ``bool``, ``str``, ``int`` and ``float`` fields are type-checked (a ``TypeError`` naming the
  key); an int is accepted for a float and converted. Anything else passes through unchanged.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping


def from_dict(cls, data: Mapping, where: str | None = None):
    """Build dataclass ``cls`` from ``data``; see the module docstring for the rules."""
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"{where}: unknown key '{key}'{hint} (valid keys: {', '.join(names)})")
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
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


__all__ = ["from_dict"]
