"""What a notebook stage needs from its surroundings: where its inputs are, where its results go.

`mfl run` executes every notebook with the run folder as working directory, so a stage writes
relative paths (``data/samples``, ``gslrm/``) and reads what earlier stages wrote there, or, with
``--from-run DIR``, in that earlier run's folder. Nothing reads a hard-coded path.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
from pathlib import Path

RESULTS_DIR = "results"


def find_input(rel_path: str, from_run: str = "", produced_by: str = "an earlier notebook") -> Path:
    """The path of an artifact written by an earlier stage: in this run folder if present,
    otherwise in ``from_run``. Raises FileNotFoundError naming both places and the producing stage."""
    here = Path(rel_path)
    if here.exists():
        return here
    if from_run:
        there = Path(from_run) / rel_path
        if there.exists():
            return there
    where = f"{Path.cwd() / rel_path}" + (f" or {Path(from_run) / rel_path}" if from_run else "")
    raise FileNotFoundError(f"{rel_path} not found (looked in {where}); run {produced_by} first, "
                            "or pass --from-run with a run folder that has it")


def default_cache_dir() -> Path:
    """Where generated recordings are cached between runs: $MFL_CACHE_DIR or ~/.cache/mousefacelift."""
    return Path(os.environ.get("MFL_CACHE_DIR", Path.home() / ".cache" / "mousefacelift"))


def _plain(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _plain(value.item())
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return portable_path(value)
    return value


def portable_path(value: str, root: Path | None = None) -> str:
    """An absolute path as a record should hold it: relative to ``root`` (default: the current
    directory, which is the run folder inside a notebook) when it lies inside it, else with the home
    folder written ``~``, so that a record names no machine's folders. Other strings pass unchanged."""
    if not os.path.isabs(value):
        return value
    path, root = Path(value), Path.cwd() if root is None else root
    for base, shown in ((root, None), (Path.home(), "~")):
        try:
            rel = path.relative_to(base)
        except ValueError:
            continue
        return rel.as_posix() if shown is None else f"{shown}/{rel.as_posix()}"
    return value


def record_results(stage: str, results: dict, headline: tuple[str, ...] | list[str] = ()) -> Path:
    """The last cell of every notebook: write its results to ``results/<stage>.json`` in the run
    folder; `mfl run` copies them into manifest.json. ``headline`` names the keys of ``results``
    that summarise the notebook (its own measurements, never a parameter or a baseline), in the
    order `mfl run`, `mfl list` and report.html show them; they go to
    ``results/<stage>.headline.json``. A headline key missing from ``results`` is a KeyError.
    Absolute paths among the values are recorded as :func:`portable_path` writes them."""
    missing = [k for k in headline if k not in results]
    if missing:
        raise KeyError(f"record_results({stage!r}): headline keys {missing} are not in the results "
                       f"(have: {', '.join(results)})")
    path = Path(RESULTS_DIR) / f"{stage}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_plain(results), indent=1, sort_keys=True))
    if headline:
        headline_path(path).write_text(json.dumps(list(headline)))
    return path


def headline_path(results_path: Path) -> Path:
    """``results/<stage>.headline.json`` beside ``results/<stage>.json``: the headline keys, in order."""
    return results_path.with_name(results_path.stem + ".headline.json")


def warn_schedule_change(checkpoint: Path, step: int, saved: dict, current: dict, keys: tuple[str, ...],
                         logger: logging.Logger) -> dict[str, tuple]:
    """On resume, the schedule settings in ``keys`` whose value in the checkpoint's config (``saved``)
    differs from ``current``, as {key: (saved, current)}, logged as one warning.

    A resumed LambdaLR keeps its step and its base learning rate from the checkpoint, but takes its
    shape (length, warm-up) from the current config: a changed ``steps`` splices two schedules at the
    resume step, and a changed ``lr`` has no effect. Either is legitimate (e.g. cutting a run short),
    so this warns rather than refuses; ``resume=False`` starts over with one schedule."""
    changed = {k: (saved[k], current[k]) for k in keys if k in saved and k in current and saved[k] != current[k]}
    if changed:
        logger.warning("resuming %s at step %d with %s: the learning-rate schedule follows the new length and "
                       "warm-up from step %d on, and keeps the checkpoint's peak lr (resume=False starts over)",
                       checkpoint, step, ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()), step)
    return changed


def setup_notebook_logging(level: int = logging.INFO) -> None:
    """Library logs (progress, skips, warnings) show up in the executed notebook's output, and so
    do figures (see :func:`ensure_inline_figures`)."""
    logging.basicConfig(level=level, stream=sys.stdout, format="%(levelname)s %(name)s: %(message)s", force=True)
    ensure_inline_figures()


def ensure_inline_figures() -> bool:
    """In a Jupyter kernel, put matplotlib back on the inline backend if the environment chose
    ``Agg`` (``MPLBACKEND=Agg`` is common on headless GPU machines): with Agg an executed notebook
    keeps no figures, and the notebook is the report. Returns True when it switched."""
    if "ipykernel" not in sys.modules:
        return False
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        return False
    from IPython import get_ipython

    shell = get_ipython()
    if shell is None:
        return False
    shell.run_line_magic("matplotlib", "inline")  # the backend and IPython's PNG formatter for figures
    logging.getLogger(__name__).warning("matplotlib backend was Agg (MPLBACKEND=%s): switched to inline so "
                                        "the executed notebook keeps its figures", os.environ.get("MPLBACKEND"))
    return True


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is present, else "cpu"; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


INTERACTIVE_RUN = "interactive"         # runs/interactive/: where notebooks opened by hand write
INTERACTIVE_PARAMS = "params/demo.yaml"  # their settings: the demo's, which a laptop runs in minutes


def interactive_session(namespace: dict, stage: str, params_file: str | None = INTERACTIVE_PARAMS,
                        run: str = INTERACTIVE_RUN) -> Path | None:
    """The cell after the parameters cell. In a notebook opened by hand from the source folder (the
    working directory is a ``notebooks/`` folder holding the numbered notebooks, as in `make lab`), it

    1. sets this notebook's parameters in ``namespace`` (the notebook's ``globals()``) to the values
       ``params_file`` gives them (relative to the repository; None keeps the parameters cell's),
       checked as `mfl run` checks them, and prints what it changed;
    2. changes the working directory to ``runs/<run>/`` of the repository, so the notebook writes
       its artifacts there and reads what earlier notebooks wrote there, never into ``notebooks/``.

    Anywhere else it does nothing and returns None: under `mfl run` (a run folder) and under plain
    papermill, whose injected parameters and working directory are the caller's choice.

    -> the run folder it moved to."""
    from . import params as params_mod

    here = Path.cwd()
    if here.name != "notebooks" or (here / "manifest.json").is_file() or not any(here.glob("[0-9][0-9]_*.ipynb")):
        return None
    root = here.parent
    changed = {}
    if params_file:
        notebooks = {p.stem: p for p in sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))}
        values = params_mod.resolve(root / params_file, notebooks)[stage]
        params_mod.check_parameter_ranges(root / params_file, {stage: values})
        values = params_mod.resolve_paths({stage: values}, base=root, params_path=root / params_file)[0][stage]
        changed = {k: v for k, v in values.items() if namespace.get(k) != v}
        namespace.update(values)
    target = root / "runs" / run
    target.mkdir(parents=True, exist_ok=True)
    os.chdir(target)
    print(f"Interactive session: working in {target}"
          + (f"; {params_file} sets " + ", ".join(f"{k}={v!r}" for k, v in changed.items()) if changed else ""))
    return target
