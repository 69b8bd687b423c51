"""mousefacelift.configs.from_dict: the one checked dict -> dataclass path of every config."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from mousefacelift.configs import Range, bounded, check_ranges, field_range, from_dict


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


# ----------------------------------------------------------------------------------------------
# Ranges declared with bounded(): checked by from_dict (naming where) and by direct construction
# ----------------------------------------------------------------------------------------------
@dataclass
class Knobs:
    steps: int = bounded(10, min=1)
    lr: float = bounded(1e-3, gt=0)
    fraction: float = bounded(0.5, min=0, max=1)
    edge: float = bounded(0.1, min=0, lt=0.5)
    workers: int | None = bounded(None, min=1)
    split: tuple[float, ...] = bounded((0.8, 0.2), min=0, max=1)
    free: int = -3

    def __post_init__(self):
        check_ranges(self)


def test_range_text():
    assert [str(r) for r in (Range(min=1), Range(gt=0), Range(min=0, max=1), Range(min=0, lt=0.5),
                             Range(max=3), Range(lt=2), Range())] == \
        [">= 1", "> 0", "in [0, 1]", "in [0, 0.5)", "<= 3", "< 2", "a number"]


@pytest.mark.parametrize("data, match", [
    ({"steps": 0}, r"^cfg.yaml.steps = 0 is out of range: must be >= 1$"),
    ({"lr": 0.0}, r"^cfg.yaml.lr = 0.0 is out of range: must be > 0$"),
    ({"lr": float("nan")}, r"lr = nan is out of range: must be > 0"),
    ({"fraction": float("inf")}, r"fraction = inf is out of range: must be in \[0, 1\]"),
    ({"fraction": 1.5}, r"fraction = 1.5 is out of range: must be in \[0, 1\]"),
    ({"edge": 0.5}, r"edge = 0.5 is out of range: must be in \[0, 0.5\)"),
    ({"workers": 0}, r"workers = 0 is out of range: must be >= 1"),
    ({"split": [0.9, -0.1]}, r"split\[1\] = -0.1 is out of range: must be in \[0, 1\]"),
])
def test_from_dict_names_where_the_key_the_value_and_the_range(data, match):
    with pytest.raises(ValueError, match=match):
        from_dict(Knobs, data, "cfg.yaml")
    with pytest.raises(ValueError, match=match.replace("^cfg.yaml", "^Knobs")):
        Knobs(**data)  # the same check on direct construction (a notebook building the config)


def test_in_range_values_none_and_unbounded_fields_pass():
    cfg = from_dict(Knobs, {"steps": 1, "lr": 1e-9, "fraction": 1, "edge": 0, "workers": None, "split": [0, 1],
                            "free": -100})
    assert (cfg.steps, cfg.fraction, cfg.workers, cfg.split, cfg.free) == (1, 1.0, None, (0, 1), -100)
    assert Knobs(lr=float("inf")).lr == float("inf")  # no upper bound: e.g. skip_factor=inf, never skip
    assert field_range(Knobs, "steps") == Range(min=1) and field_range(Knobs, "free") is None


def test_nested_range_error_names_the_path():
    @dataclass
    class Outer2:
        knobs: Knobs = field(default_factory=Knobs)

    with pytest.raises(ValueError, match=r"^run.json.knobs.steps = -1 is out of range: must be >= 1$"):
        from_dict(Outer2, {"knobs": {"steps": -1}}, "run.json")


def _library_configs():
    from mousefacelift.data.extract import ExtractConfig
    from mousefacelift.data.procedural import ProceduralConfig
    from mousefacelift.gslrm.train import TrainConfig as GSTrain
    from mousefacelift.mvdiffusion.synthetic import SyntheticConfig as MVSynthetic
    from mousefacelift.mvdiffusion.train import TrainConfig as MVTrain

    required = {GSTrain: {"out_dir": "o", "data_root": "d", "train_split": "s"}, MVTrain: {"out_dir": "o"}}
    return [(cls, required.get(cls, {})) for cls in (ExtractConfig, ProceduralConfig, GSTrain, MVTrain, MVSynthetic)]


def _outside(rng: Range, default):
    """A value just outside ``rng``, of the default's type (int fields get ints)."""
    if rng.min is not None:
        x = rng.min - 1
    elif rng.gt is not None:
        x = rng.gt
    elif rng.max is not None:
        x = rng.max + 1
    else:
        x = rng.lt
    return [x] * len(default) if isinstance(default, tuple) else x


def test_every_bounded_library_field_rejects_a_value_outside_its_range():
    """The configs of the extraction, the procedural recording and both trainers (nested ones
    included): every declared range holds its default, and the value just outside is refused by
    from_dict with the field's path in the message."""
    import dataclasses
    import typing

    checked = 0
    for cls, required in _library_configs():
        from_dict(cls, required)  # defaults are in range
        queue = [(cls, [])]
        while queue:
            c, path = queue.pop()
            hints = typing.get_type_hints(c)
            for f in dataclasses.fields(c):
                if dataclasses.is_dataclass(hints[f.name]):
                    queue.append((hints[f.name], path + [f.name]))
                    continue
                rng = f.metadata.get("mousefacelift.range")
                if rng is None:
                    continue
                default = f.default
                bad = _outside(rng, default if default is not None else 1)
                data = dict(required)
                node = data
                for p in path:
                    node = node.setdefault(p, {})
                node[f.name] = bad
                name = ".".join([cls.__name__, *path, f.name])
                with pytest.raises(ValueError, match=rf"^{re.escape(name)}(\[0\])? = .* is out of range: must be "):
                    from_dict(cls, data)
                checked += 1
    assert checked > 100, checked  # about 130 bounded fields across the five configs
