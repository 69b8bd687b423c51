"""Defaults are stated once: a notebook parameter that feeds a library dataclass field has that
field's default as its value in the parameters cell.

The pairs are found in the notebooks' code, not listed here: every call of a ``mousefacelift``
dataclass (``TrainConfig(steps=steps, ...)``, ``extract.ExtractConfig(...)``) whose keyword value is
a parameter of the notebook (bare, through ``tuple()`` / ``list()`` / ``float()`` / ``int()`` /
``str()`` / ``bool()``, or the branch of ``a if flag else b`` that the notebook's own defaults take)
is one pair. A config built as the keyword value of another (``val_sampler=SamplerConfig(steps=n)``)
is compared with the outer field's default (``TrainConfig().val_sampler.steps``). A new parameter
wired into a config is checked with no edit here.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib
import math
from pathlib import Path

import pytest

from mousefacelift.params import notebook_parameters, parameters_cell

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CONVERTERS = {"tuple", "list", "float", "int", "str", "bool"}


@dataclasses.dataclass(frozen=True)
class Pair:
    notebook: str
    parameter: str
    value: object  # the parameters cell's literal
    cls: type
    field: str
    default: object  # the library's default for this field (in the context the config is built in)

    @property
    def where(self) -> str:
        return f"{self.notebook}: parameter {self.parameter!r} -> {self.cls.__module__}.{self.cls.__qualname__}.{self.field}"


def code_cells(nb_path: Path) -> list[str]:
    """The code cells of a notebook except its parameters cell, without IPython magics."""
    import nbformat

    nb = nbformat.read(str(nb_path), as_version=4)
    index, _ = parameters_cell(nb_path)
    return ["\n".join(line for line in c.source.splitlines() if not line.lstrip().startswith(("%", "!")))
            for i, c in enumerate(nb.cells) if c.cell_type == "code" and i != index]


def _aliases(tree: ast.AST) -> dict[str, str]:
    """name -> dotted path of what the notebook imported under that name (mousefacelift only)."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mousefacelift"):
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("mousefacelift"):
                    out[a.asname or a.name.split(".")[0]] = a.asname and a.name or a.name.split(".")[0]
    return out


def _resolve(dotted: str):
    """The object at a dotted path (a module, or an attribute chain below one), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for p in parts[cut:]:
            obj = getattr(obj, p, None)
            if obj is None:
                return None
        return obj
    return None


def _callee(func: ast.expr, aliases: dict[str, str]):
    chain = []
    while isinstance(func, ast.Attribute):
        chain.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in aliases:
        return None
    return _resolve(".".join([aliases[func.id], *reversed(chain)]))


def _parameter_name(value: ast.expr, defaults: dict) -> str | None:
    if isinstance(value, ast.IfExp):  # the branch that the notebook's own defaults select
        try:
            test = eval(compile(ast.Expression(value.test), "<parameters>", "eval"), {"__builtins__": {}}, dict(defaults))
        except Exception:
            return None
        value = value.body if test else value.orelse
    if (isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id in CONVERTERS
            and len(value.args) == 1 and not value.keywords):
        value = value.args[0]
    return value.id if isinstance(value, ast.Name) else None


def discover_pairs(nb_path: Path) -> list[Pair]:
    """Every (parameter, dataclass field) pair that the notebook's code wires together."""
    params = notebook_parameters(nb_path)
    defaults = {name: p.default for name, p in params.items()}
    tree = ast.parse("\n".join(code_cells(nb_path)))
    aliases = _aliases(tree)
    pairs, nested = [], set()

    def visit(call: ast.Call, cls: type, instance) -> None:
        """One dataclass call; ``instance`` holds the defaults that apply (the class's own, or the outer
        field's default instance for a nested call)."""
        names = {f.name for f in dataclasses.fields(cls)}
        for kw in call.keywords:
            if kw.arg not in names:
                continue
            default = getattr(instance, kw.arg) if instance is not None else field_default(cls, kw.arg)
            inner = _callee(kw.value.func, aliases) if isinstance(kw.value, ast.Call) else None
            if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                nested.add(id(kw.value))
                visit(kw.value, inner, default if isinstance(default, inner) else None)
                continue
            p = _parameter_name(kw.value, defaults)
            if p in params:
                pairs.append(Pair(nb_path.stem, p, params[p].default, cls, kw.arg, default))

    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for node in calls:  # outer calls come first in ast.walk (breadth first)
        cls = _callee(node.func, aliases)
        if id(node) not in nested and isinstance(cls, type) and dataclasses.is_dataclass(cls):
            visit(node, cls, None)
    return pairs


def field_default(cls: type, name: str):
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def same(a, b) -> bool:
    """Equal as settings: lists and tuples alike, ints standing for floats, NaN equal to NaN."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def disagreements(pairs: list[Pair]) -> list[str]:
    out = []
    for p in pairs:
        d = p.default
        if d is dataclasses.MISSING or dataclasses.is_dataclass(d):
            continue  # a required field, or a nested config (its own fields are checked where it is built)
        if not same(p.value, d):
            out.append(f"{p.where}: the notebook says {p.value!r}, the dataclass default is {d!r}")
    return out


ALL_PAIRS = [p for nb in NOTEBOOKS for p in discover_pairs(nb)]


def test_the_notebooks_wire_parameters_into_library_configs():
    """The discovery finds the configs the stages are built from (so an empty list cannot pass)."""
    found = {(p.notebook, p.cls.__qualname__) for p in ALL_PAIRS}
    assert ("06_gslrm_finetune", "TrainConfig") in found and ("04_mvdiffusion_finetune", "TrainConfig") in found
    assert ("01_data_extraction", "ExtractConfig") in found
    assert len(ALL_PAIRS) >= 60, len(ALL_PAIRS)


def test_every_notebook_default_equals_the_library_default():
    bad = disagreements(ALL_PAIRS)
    assert not bad, ("a default is stated twice and the two disagree; make the parameters cell's value and the "
                     "dataclass field's default the same (DESIGN.md, section 6):\n" + "\n".join(bad))


def test_a_planted_disagreement_is_named(tmp_path):
    import nbformat

    src = NOTEBOOKS[0]
    nb = nbformat.read(str(src), as_version=4)
    index, _ = parameters_cell(src)
    nb.cells[index].source = nb.cells[index].source.replace("image_size = 512", "image_size = 384")
    planted = tmp_path / src.name
    nbformat.write(nb, str(planted))
    bad = disagreements(discover_pairs(planted))
    assert bad == [f"{src.stem}: parameter 'image_size' -> mousefacelift.data.extract.ExtractConfig.image_size: "
                   "the notebook says 384, the dataclass default is 512"]
