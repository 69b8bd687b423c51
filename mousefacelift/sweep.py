"""Sweeps: one experiment run several times with one thing varied, into one folder of runs; and
the table that compares runs (`mfl list --csv` / `--json`).

    mfl run params/demo.yaml --only 06 --from-run runs/demo --sweep 06_gslrm_finetune.lr=1e-4,3e-4
        -> runs/demo-sweep/lr=1e-4/, runs/demo-sweep/lr=3e-4/
    mfl run params/a.yaml params/b.yaml --name ab                  -> runs/ab/a/, runs/ab/b/
    mfl list --runs runs/demo-sweep --csv                         -> one row per run

Several ``--sweep`` options make the product of their values; several params files combine with
them too. Each member is an ordinary run (its own manifest, notebooks, logs) whose ``--set``
assignments are the sweep's values, validated like the params file before any member runs.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

from .params import ParamsError, parse_assignment


@dataclass
class Member:
    name: str                      # its folder name inside the sweep folder
    params_file: Path
    overrides: list[str] = field(default_factory=list)  # --set assignments, the sweep's values last


def split_values(text: str) -> list[str]:
    """``"1e-4,3e-4"`` -> ``["1e-4", "3e-4"]``; commas inside brackets stay (``"[1,3],[5]"`` -> two)."""
    values, depth, current = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += ch
    values.append(current.strip())
    return values


def _folder_name(text: str) -> str:
    return "".join("_" if ch in "/\\\0 " else ch for ch in text).strip(".") or "run"


def expand(params_files: list[str | Path], sweeps: list[str] = (), sets: list[str] = ()) -> list[Member]:
    """The members of a sweep: every params file times every combination of the ``--sweep KEY=V1,V2``
    values, each with ``sets`` (``--set``) first. Names are ``key=value`` joined by ``_`` (the
    file's stem first when there are several files); a key that two sweeps share (``lr`` of 04 and
    of 06) keeps its notebook's number."""
    axes = []
    for text in sweeps:
        section, name, values = parse_assignment(text, "--sweep")
        key = f"{section}.{name}" if section else name
        vals = split_values(values)
        if len(vals) < 2 or "" in vals:
            raise ParamsError(f"--sweep {text!r}: give two or more comma-separated values, e.g. "
                              f"--sweep {key}=1e-4,3e-4 (for one value use --set)")
        axes.append((key, name, vals))
    short = [name for _, name, _ in axes]
    labels = [name if short.count(name) == 1 else f"{key[:2]}.{name}" for key, name, _ in axes]
    files = [Path(p) for p in params_files]
    members = []
    for f in files:
        for combo in itertools.product(*[vals for _, _, vals in axes]):
            parts = ([f.stem] if len(files) > 1 else []) + [f"{lab}={v}" for lab, v in zip(labels, combo)]
            members.append(Member(_folder_name("_".join(parts)), f,
                                  [*sets, *[f"{key}={v}" for (key, _, _), v in zip(axes, combo)]]))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise ParamsError(f"the sweep's runs would share folder names ({', '.join(names)}): give each params "
                          "file a distinct name and each --sweep value once")
    return members


def runs_table(rows: list[dict], params: str = "varied") -> tuple[list[str], list[dict]]:
    """(columns, records) comparing runs, from :func:`mousefacelift.runner.list_runs` rows: the run,
    its status, duration and start, the parameters (``NN_notebook.key``; ``params="varied"``: those
    that differ between the runs or that ``--set``/``--sweep`` set, ``"all"``: every one set), then
    each notebook's headline results (``NN_notebook.key``)."""
    flat_params = [{f"{stem}.{k}": v for stem, values in (r.get("params") or {}).items() for k, v in values.items()}
                   for r in rows]
    overridden = set()
    for r in rows:
        for text in r.get("overrides") or []:
            section, name, _ = parse_assignment(text)
            overridden |= {c for fp in flat_params for c in fp if c == f"{section}.{name}"
                           or (section is None and c.endswith(f".{name}"))}
    keys = list(dict.fromkeys(k for fp in flat_params for k in fp))
    if params != "all":
        keys = [k for k in keys if k in overridden or len({json.dumps(fp.get(k), sort_keys=True, default=str)
                                                           for fp in flat_params}) > 1]
    results = [{f"{stem}.{k}": v for stem, head in (r.get("results") or {}).items() for k, v in head.items()}
               for r in rows]
    result_keys = list(dict.fromkeys(k for res in results for k in res))
    columns = ["run", "status", "duration_s", "started", *keys, *result_keys]
    records = [{"run": r["name"], "status": r.get("status"), "duration_s": r.get("duration_s"),
                "started": r.get("started"), **{k: fp.get(k) for k in keys}, **{k: res.get(k) for k in result_keys}}
               for r, fp, res in zip(rows, flat_params, results)]
    return columns, records


def write_csv(columns: list[str], records: list[dict], stream) -> None:
    """The table as CSV; lists and mappings as JSON text, None as an empty cell."""
    import csv

    writer = csv.writer(stream)
    writer.writerow(columns)
    for rec in records:
        writer.writerow(["" if rec[c] is None else json.dumps(rec[c]) if isinstance(rec[c], (list, dict))
                         else rec[c] for c in columns])
