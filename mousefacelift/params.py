"""Parameter YAMLs: load, merge shared + per-notebook sections, validate against notebooks.

A params YAML holds only deltas from the defaults in each notebook's ``parameters`` cell:

```yaml
seed: 0                      # shared: goes to every notebook that declares `seed`
device: cpu
01_data_extraction:          # a section: goes to notebook 01 only
  n_frames: 40
```
A variant may start from another file with ``base: gpu.yaml`` and list only what differs.
Every key is checked before anything runs. papermill only warns about unknown keys, which lets a
typo silently run the default; here an unknown key is an error that names the YAML file, the key,
the closest valid name and the valid list, and a value of the wrong type is an error too.
"""
from __future__ import annotations

import ast
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

NOTEBOOK_RE = re.compile(r"^(\d\d)_[a-z0-9_]+$")
RUNNER_KEYS = ("from_run",)  # set by `mfl run` itself, never from a YAML


class ParamsError(ValueError):
    """A params file that does not fit the notebooks; the message says what to change."""


@dataclass(frozen=True)
class Parameter:
    name: str
    default: object
    comment: str


def parameters_cell(nb_path: str | Path) -> tuple[int, str]:
    """(index, source) of the single cell tagged ``parameters`` in a notebook."""
    nb = json.loads(Path(nb_path).read_text())
    hits = [(i, c) for i, c in enumerate(nb["cells"]) if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(hits) != 1:
        raise ParamsError(f"{nb_path}: expected exactly one cell tagged 'parameters', found {len(hits)}")
    i, cell = hits[0]
    src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    return i, src


def notebook_parameters(nb_path: str | Path) -> dict[str, Parameter]:
    """The parameters a notebook declares: ``name = <literal>  # comment`` lines of its parameters
    cell, in order. Defaults must be Python literals so they can be checked without running code."""
    _, src = parameters_cell(nb_path)
    lines = src.splitlines()
    params: dict[str, Parameter] = {}
    for node in ast.parse(src).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            name, value = node.target.id, node.value
        else:
            raise ParamsError(f"{nb_path}: the parameters cell may only hold `name = literal` lines "
                              f"(line {node.lineno}: {ast.unparse(node)!r})")
        try:
            default = ast.literal_eval(value)
        except ValueError as e:
            raise ParamsError(f"{nb_path}: default of {name!r} is not a literal ({ast.unparse(value)!r})") from e
        line = lines[node.end_lineno - 1]
        comment = line.split("#", 1)[1].strip() if "#" in line[value.end_col_offset:] else ""
        params[name] = Parameter(name, default, comment)
    return params


def _type_error(value, default) -> str | None:
    """Why ``value`` cannot replace ``default`` (None if it can). ints may stand for floats."""
    if default is None:
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    return None if ok else f"expected {type(default).__name__} (default {default!r}), got {type(value).__name__} {value!r}"


def _unknown_key(where: str, key: str, valid: list[str]) -> ParamsError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ParamsError(f"{where}: unknown key {key!r}.{hint} Valid keys: {', '.join(sorted(valid))}")


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a params YAML. A top-level ``base: other.yaml`` (relative to this file) is read first
    and this file's keys override it: shared keys replace, sections merge key by key."""
    path = Path(path)
    if not path.is_file():
        where = f" (base of {_chain[-1]})" if _chain else ""
        raise ParamsError(f"params file {path}{where} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    if "base" not in data:
        return data
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ParamsError(f"{path}: base must be the path of another params file, got {base!r}")
    base_path = (path.parent / base).resolve()
    if base_path in _chain or base_path == path.resolve():
        raise ParamsError(f"{path}: base {base!r} makes a cycle ({' -> '.join(map(str, (*_chain, path)))})")
    merged = load_yaml(base_path, (*_chain, path.resolve()))
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def resolve(params_path: str | Path, notebooks: dict[str, Path]) -> dict[str, dict]:
    """Validate a params YAML against notebooks {stem: path} and return {stem: parameters to pass}.

    Shared (top-level, non-section) keys go to every notebook that declares them and must be
    declared by at least one; section keys go to their notebook and must be declared by it.
    """
    data = load_yaml(params_path)
    declared = {stem: notebook_parameters(p) for stem, p in notebooks.items()}
    all_names = sorted({n for d in declared.values() for n in d} - set(RUNNER_KEYS))
    shared, sections = {}, {}
    for key, value in data.items():
        key = str(key)
        if key in notebooks:
            if not isinstance(value, dict):
                raise ParamsError(f"{params_path}: section {key!r} must be a mapping, got {value!r}")
            sections[key] = value
        elif NOTEBOOK_RE.match(key) or isinstance(value, dict) and key not in all_names:
            raise _unknown_key(f"{params_path}: section", key, list(notebooks))
        elif key in RUNNER_KEYS:
            raise ParamsError(f"{params_path}: {key!r} is set by `mfl run` (use --from-run), not in a params file")
        elif key not in all_names:
            raise _unknown_key(f"{params_path}: shared", key, all_names)
        else:
            shared[key] = value

    resolved = {}
    for stem, decl in declared.items():
        merged = {k: v for k, v in shared.items() if k in decl}
        for key, value in sections.get(stem, {}).items():
            if key not in decl or key in RUNNER_KEYS:
                raise _unknown_key(f"{params_path}: section {stem}", str(key),
                                   [k for k in decl if k not in RUNNER_KEYS])
            merged[key] = value
        for key, value in merged.items():
            why = _type_error(value, decl[key].default)
            if why:
                raise ParamsError(f"{params_path}: {stem}.{key}: wrong type: {why}")
        resolved[stem] = merged
    return resolved
