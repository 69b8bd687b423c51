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
the closest valid name and the valid list, and a value of the wrong type is an error too. So are
a key written twice in one mapping (YAML would keep the last silently) and a value outside the
range its library config field declares (:func:`check_parameter_ranges`). Numbers such as ``1e-4`` are
floats (PyYAML's YAML 1.1 rules would read them as strings).

Relative paths to inputs from outside the run (:data:`INPUT_PATHS`) are relative to the directory
``mfl run`` is started from; :func:`resolve_paths` makes them absolute before the notebooks run
with the run folder as working directory.
"""
from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib
import json
import os
import re
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .configs import RANGE, Range, range_error

NOTEBOOK_RE = re.compile(r"^(\d\d)_[a-z0-9_]+$")
RUNNER_KEYS = ("from_run",)  # set by `mfl run` itself, never from a YAML

# Parameters naming files or folders outside the run: relative ones are resolved against the
# directory `mfl run` is started from (see resolve_paths); True: it must exist (False: a missing
# file is allowed: LPIPS is then off or reported unavailable, ST-LPIPS reported unavailable in 07 and
# an error in 06 when its loss weight is > 0). A parameter not listed here is passed
# as given; the artifact paths of notebook 07 (RUN_PATHS) name what earlier stages wrote and stay
# relative to the run folder (then --from-run), as their parameters cell says.
INPUT_PATHS = {"recording_path": True, "init_from": True, "prompt_embeds_path": True, "init_checkpoint": True,
               "lpips_vgg_path": False, "st_lpips_weights": False}
RUN_PATHS = ("gslrm_dir", "gslrm_synthetic_dir", "mvdiffusion_dir")

# The library configs that notebook parameters feed, for range checks before anything runs: a
# parameter is checked against the bounded field of the same name in the notebook's configs
# (nested configs included, breadth first, the first config first), or against the field that
# RENAMED names ("Config.path.to.field"; None: the notebook translates it, e.g. 0 -> None, and
# the config checks what it receives when the notebook builds it).
NOTEBOOK_CONFIGS = {
    "01_data_extraction": ("mousefacelift.data.extract:ExtractConfig", "mousefacelift.data.procedural:ProceduralConfig"),
    "04_mvdiffusion_finetune": ("mousefacelift.mvdiffusion.train:TrainConfig",),
    "05_synthetic_generation": ("mousefacelift.mvdiffusion.synthetic:SyntheticConfig",),
    "06_gslrm_finetune": ("mousefacelift.gslrm.train:TrainConfig",),
}
RENAMED = {
    "01_data_extraction": {"synthetic_frames": "ProceduralConfig.n_frames",
                           "synthetic_scale": "ProceduralConfig.resolution_scale",
                           "n_samples": None, "stride": None, "workers": None},
    "04_mvdiffusion_finetune": {"finetune_lr": "TrainConfig.lr", "cond_dropout": "TrainConfig.drop_reference",
                                "norm_groups": "TrainConfig.model.norm_num_groups",
                                "val_sampler_steps": "TrainConfig.val_sampler.steps",
                                "sampler_steps": "TrainConfig.val_sampler.steps"},
    "05_synthetic_generation": {"sampler_steps": "SyntheticConfig.sampler.steps"},
    "06_gslrm_finetune": {"loss_l2": "TrainConfig.loss.l2", "loss_masked_l2": "TrainConfig.loss.masked_l2",
                          "loss_masked_ssim": "TrainConfig.loss.masked_ssim",
                          "loss_background": "TrainConfig.loss.background", "loss_lpips": "TrainConfig.loss.lpips",
                          "loss_st_lpips": "TrainConfig.loss.st_lpips",
                          "overfit": "TrainConfig.overfit_samples", "init_checkpoint": "TrainConfig.init_from"},
}

# Parameters renamed since: an old params YAML that sets one gets an error naming the new name.
RETIRED = {
    "04_mvdiffusion_finetune": {"mixed_precision": 'precision ("no" -> "fp32"; "bf16" stays "bf16")'},
    "06_gslrm_finetune": {"bf16": 'precision (true -> "bf16", false -> "fp32")'},
}


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


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key, line: int, first_line: int):
        super().__init__(key, line, first_line)
        self.key, self.line, self.first_line = key, line, first_line


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader with two changes for params files: ``1e-4``, ``1E+5``, ``2.5e3`` are
    floats (YAML 1.1 wants a dot and a signed exponent, so PyYAML reads them as strings), and a
    key written twice in one mapping is an error (YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[object, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise _DuplicateKey(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep)


ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    """Read a params YAML. A top-level ``base: other.yaml`` (relative to this file) is read first
    and this file's keys override it: shared keys replace, sections merge key by key."""
    path = Path(path)
    if not path.is_file():
        where = f" (base of {_chain[-1]})" if _chain else ""
        raise ParamsError(f"params file {path}{where} not found")
    try:
        data = yaml.load(path.read_text(), Loader=ParamsLoader) or {}
    except _DuplicateKey as e:
        raise ParamsError(f"{path}, line {e.line}: key {e.key!r} is written twice in one mapping (first on line "
                          f"{e.first_line}); YAML would keep only the last one: delete one of them") from None
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


def parse_assignment(text: str, option: str = "--set") -> tuple[str | None, str, str]:
    """``"06_gslrm_finetune.steps=500"`` -> ``("06_gslrm_finetune", "steps", "500")``; a key without a
    section (``"seed=3"``) is shared: ``(None, "seed", "3")``. The value stays text (see
    :func:`yaml_value`). A text without ``=`` or with an empty key raises ParamsError."""
    key, eq, value = text.partition("=")
    section, _, name = key.strip().rpartition(".")
    if not eq or not name:
        raise ParamsError(f"{option} {text!r}: expected KEY=VALUE or NN_notebook.KEY=VALUE, e.g. "
                          f"{option} 06_gslrm_finetune.steps=500")
    return section or None, name, value.strip()


def yaml_value(text: str, option: str = "--set"):
    """A command-line value read as YAML reads it in a params file (``1e-4`` a float, ``true`` a bool,
    ``[1, 3]`` a list, ``''`` an empty string)."""
    try:
        return yaml.load(text, Loader=ParamsLoader) if text else ""
    except yaml.YAMLError as e:
        raise ParamsError(f"{option}: value {text!r} is not a YAML value: {e}") from None


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """The params ``data`` (as :func:`load_yaml` returns them) with ``--set`` assignments applied
    on top, like one more ``base:`` layer: shared keys replace, section keys merge. Nothing is
    validated here: :func:`resolve` checks the result exactly as it checks a file."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for text in overrides:
        section, name, value = parse_assignment(text)
        if section is None:
            data[name] = yaml_value(value)
        else:
            if not isinstance(data.get(section, {}), dict):
                raise ParamsError(f"--set {text!r}: {section!r} is a shared key, not a notebook section")
            data.setdefault(section, {})[name] = yaml_value(value)
    return data


def resolve(params_path: str | Path, notebooks: dict[str, Path], overrides: list[str] | tuple[str, ...] = ()
            ) -> dict[str, dict]:
    """Validate a params YAML (with command-line ``overrides``, see :func:`apply_overrides`) against
    notebooks {stem: path} and return {stem: parameters to pass}.

    Shared (top-level, non-section) keys go to every notebook that declares them and must be
    declared by at least one; section keys go to their notebook and must be declared by it.
    """
    data = apply_overrides(load_yaml(params_path), overrides)
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
            if key in RETIRED.get(stem, {}) and key not in decl:
                raise ParamsError(f"{params_path}: {stem}.{key} was renamed: write {RETIRED[stem][key]}")
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


def _bounded_fields(cls) -> dict[str, tuple[str, Range]]:
    """{field name: (dotted path from cls, range)} of every bounded field in the dataclass tree of
    ``cls``, breadth first (a name met again deeper keeps its first, shallower field)."""
    found: dict[str, tuple[str, Range]] = {}
    queue = [(cls, cls.__name__)]
    while queue:
        c, prefix = queue.pop(0)
        hints = typing.get_type_hints(c)
        for f in dataclasses.fields(c):
            if dataclasses.is_dataclass(hints[f.name]):
                queue.append((hints[f.name], f"{prefix}.{f.name}"))
            elif RANGE in f.metadata:
                found.setdefault(f.name, (f"{prefix}.{f.name}", f.metadata[RANGE]))
    return found


def _field_at(cls, path: str) -> Range | None:
    """The range of the field at dotted ``path`` ("Config.sub.field") of dataclass ``cls``."""
    for name in path.split(".")[1:-1]:
        cls = typing.get_type_hints(cls)[name]
    f = {f.name: f for f in dataclasses.fields(cls)}[path.split(".")[-1]]
    return f.metadata.get(RANGE)


def parameter_ranges(stem: str, names) -> dict[str, tuple[str, Range]]:
    """{parameter: (config field path, range)} for those of ``names`` (parameters of notebook
    ``stem``) that go into a bounded library config field (:data:`NOTEBOOK_CONFIGS`)."""
    if stem not in NOTEBOOK_CONFIGS:
        return {}
    roots = {}
    for spec in NOTEBOOK_CONFIGS[stem]:
        module, _, name = spec.partition(":")
        roots[name] = getattr(importlib.import_module(module), name)
    by_name: dict[str, tuple[str, Range]] = {}
    for cls in roots.values():
        for k, v in _bounded_fields(cls).items():
            by_name.setdefault(k, v)
    renamed = RENAMED.get(stem, {})
    out = {}
    for name in names:
        if name in renamed:
            path = renamed[name]
            rng = path and _field_at(roots[path.split(".")[0]], path)
            if rng:
                out[name] = (path, rng)
        elif name in by_name:
            out[name] = by_name[name]
    return out


def check_parameter_ranges(params_path: str | Path, parameters: dict[str, dict]) -> None:
    """Check resolved parameters {notebook: {name: value}} against the ranges their library config
    fields declare (``mousefacelift.configs.bounded``), before any notebook runs. Imports the
    config modules of the notebooks that have parameters set."""
    for stem, values in parameters.items():
        if not values:
            continue
        for name, (path, rng) in parameter_ranges(stem, list(values)).items():
            why = range_error(rng, values[name], f"{params_path}: {stem}.{name}")
            if why:
                raise ParamsError(f"{why} (it sets {path})")


def resolve_paths(parameters: dict[str, dict], base: str | Path | None = None,
                  params_path: str | Path = "params") -> tuple[dict[str, dict], dict[str, dict]]:
    """The one place where path parameters are made absolute: every non-empty relative value of
    an :data:`INPUT_PATHS` parameter is taken relative to ``base`` (default: the current
    directory, where `mfl run` was started), ``~`` expanded. A required path that does not exist
    is an error naming the key, the value and where it was looked for.

    -> (parameters with absolute paths, {notebook: {name: value as given}} of the changed ones)."""
    base = Path(base or os.getcwd())
    resolved, given = {}, {}
    for stem, values in parameters.items():
        resolved[stem] = dict(values)
        for name, required in INPUT_PATHS.items():
            value = values.get(name)
            if not isinstance(value, str) or not value:
                continue
            path = Path(os.path.normpath(base / Path(value).expanduser()))  # an absolute value stays
            if required and not path.exists():
                raise ParamsError(f"{params_path}: {stem}.{name} = {value!r}: {path} does not exist (relative paths "
                                  f"are relative to the directory mfl runs in, {base}); fix the path")
            if str(path) != value:
                resolved[stem][name] = str(path)
                given.setdefault(stem, {})[name] = value
    return resolved, given
