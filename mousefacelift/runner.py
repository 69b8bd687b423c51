"""`mfl run`: execute the numbered notebooks with papermill into a run folder.

A run folder ``runs/<name>/`` holds the executed notebooks ``NN_*.ipynb``, every artifact the
stages wrote (the notebooks run with it as working directory), ``manifest.json`` (params, git
commit, package versions, device, per-notebook status and timing, recorded results) and
``report.html`` (each notebook's headline results, figure thumbnails and HTML exports, see
:mod:`mousefacelift.report`), and ``logs/NN_name.log``, each notebook's cell log.

Steps of a run:
 1. find the notebooks, select them (--only), validate every params key against their
    ``parameters`` cells, the selected notebooks' values against the ranges of the library config
    fields they set, and make their input paths absolute (relative to the directory `mfl run` is
    started from): nothing executes when validation fails;
 2. claim the run folder: create it, take the lock of every selected notebook (refused while
    another process holds one, --overwrite or not), refuse an existing folder unless --overwrite,
    and record the notebooks as pending in the manifest;
 3. execute the notebooks in order; stop at the first failure, keeping its executed copy with
    the traceback, and mark it failed in the manifest;
 4. export HTML and write report.html, also after a failure; release the locks.

Locks (``<run>/.locks/``, flock: the kernel drops them when their process dies, see
:mod:`mousefacelift.locks`): ``NN_name.lock`` is held by the `mfl run` process that executes that
notebook, from its claim to its end, so two runs of one notebook into one folder cannot happen,
while runs of different notebooks may share a folder (e.g. 04 beside 06 on a GPU machine).
``manifest.lock`` serialises claims and manifest updates. A notebook recorded as running or
pending whose lock nobody holds was left by a process that died: it is marked ``interrupted``
whenever the manifest is next written or listed.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from . import locks, runlog
from . import params as params_mod
from .report import export_html, write_report  # noqa: F401  (mfl report, tests)
from .runlog import headline
from .stage import RESULTS_DIR, headline_path

log = logging.getLogger(__name__)

KERNEL_NAME = "mousefacelift"
PACKAGES = ("mousefacelift", "torch", "torchvision", "numpy", "diffusers", "gsplat", "lpips", "papermill",
            "opencv-python", "matplotlib", "wandb", "stlpips-pytorch")


class RunError(RuntimeError):
    """A run that could not start or did not finish; the message names what to do."""


LOCKS_DIR = ".locks"
LIVE = ("running", "pending")  # statuses of a notebook whose process should hold its lock


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def find_notebooks(notebooks_dir: str | Path) -> dict[str, Path]:
    """{stem: path} of the numbered notebooks ``NN_name.ipynb``, in order."""
    notebooks_dir = Path(notebooks_dir)
    found = {p.stem: p for p in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))}
    if not found:
        raise RunError(f"no numbered notebooks (NN_name.ipynb) in {notebooks_dir}")
    return found


def select(notebooks: dict[str, Path], only: str | None) -> list[str]:
    """Stems chosen by ``--only 01,06`` (numbers or full stems); all when None."""
    if not only:
        return list(notebooks)
    chosen = []
    for token in [t.strip() for t in only.split(",") if t.strip()]:
        hits = [s for s in notebooks if s == token or s[:2] == token.zfill(2)]
        if not hits:
            raise RunError(f"--only {token!r} matches no notebook; have: {', '.join(notebooks)}")
        chosen += [h for h in hits if h not in chosen]
    return [s for s in notebooks if s in chosen]


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment_info() -> dict:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    device = {"platform": platform.platform(), "python": platform.python_version(), "cpu": platform.processor()}
    try:
        import torch
        device["cuda"] = torch.cuda.is_available()
        if device["cuda"]:
            device["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        device["cuda"] = False
    device["cpu_count"] = os.cpu_count()
    named = os.environ.get("MFL_GIT_COMMIT")
    commit = None if named else _git("rev-parse", "HEAD")
    if commit:
        source = {"git_commit": commit, "git_dirty": bool(_git("status", "--porcelain"))}
    else:  # the sender names its commit for a copy (e.g. sent to a GPU machine), whose .git - if it
        # has one - may be stale: the name wins, and whether the copy was dirty is unknown
        source = {"git_commit": named or None, "git_dirty": None}
    return {**source, "packages": versions, "device": device}


@dataclass
class RunPlan:
    params_file: Path
    run_dir: Path
    stems: list[str]
    notebooks: dict[str, Path]
    parameters: dict[str, dict]
    from_run: Path | None = None
    kernel: str | None = None
    overwrite: bool = False
    manifest: dict = field(default_factory=dict)
    held: list = field(default_factory=list)  # open lock files of the claimed notebooks (see claim)
    paths_as_given: dict[str, dict] = field(default_factory=dict)  # {stem: {key: relative path as written}}
    estimates: dict[str, float] = field(default_factory=dict)  # {stem: seconds its last run took}
    overrides: list[str] = field(default_factory=list)  # --set KEY=VALUE, applied over the params file


def plan_run(params_file: str | Path, *, only: str | None = None, from_run: str | Path | None = None,
             name: str | None = None, overwrite: bool = False, runs_root: str | Path = "runs",
             notebooks_dir: str | Path | None = None, kernel: str | None = None,
             overrides: list[str] | tuple[str, ...] = ()) -> RunPlan:
    """Step 1, without touching anything: validate params (the file with ``overrides``, ``--set``
    assignments, on top), decide the run folder (checked by :func:`claim`)."""
    params_file = Path(params_file)
    notebooks = find_notebooks(notebooks_dir or (Path("notebooks") if Path("notebooks").is_dir()
                                                 else repo_root() / "notebooks"))
    stems = select(notebooks, only)
    parameters = params_mod.resolve(params_file, notebooks, overrides)
    selected = {s: parameters[s] for s in stems}
    params_mod.check_parameter_ranges(params_file, selected)
    selected, paths_as_given = params_mod.resolve_paths(selected, params_path=params_file)
    parameters.update(selected)
    run_dir = run_folder(runs_root, name or params_file.stem)
    if from_run is not None:
        from_run = Path(from_run).resolve()
        if not (from_run / "manifest.json").is_file():
            raise RunError(f"--from-run {from_run}: not a run folder (no manifest.json)")
    return RunPlan(params_file, run_dir, stems, notebooks, parameters, from_run, kernel, overwrite,
                   paths_as_given=paths_as_given,
                   estimates=runlog.previous_durations(runs_root, params_file.name), overrides=list(overrides))


def run_folder(runs_root: str | Path, name: str) -> Path:
    """``<runs_root>/<name>``, for a name that is one plain folder name. A name with a path
    separator, ``.``/``..``, an absolute path, or one that resolves outside ``runs_root`` (a
    symbolic link) raises RunError."""
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or (os.altsep and os.altsep in name) or Path(name).is_absolute()):
        raise RunError(f"run name {name!r} is not a plain folder name: no path separators, no '.' or '..', "
                       f"not absolute. The run folder is always <runs>/<name> (--runs picks the folder holding "
                       f"the runs, here {runs_root})")
    root = Path(runs_root).resolve()
    target = (Path(runs_root) / name).resolve()
    if target.parent != root:
        raise RunError(f"run name {name!r} resolves to {target}, outside the runs folder {root} (a symbolic "
                       "link?); pick another --name")
    return Path(runs_root) / name


def _lock_path(run_dir: Path, stem: str) -> Path:
    return run_dir / LOCKS_DIR / f"{stem}.lock"


def claim(plan: RunPlan) -> None:
    """Step 2, atomically (under the folder's manifest lock): create the run folder, take the lock of
    every planned notebook and keep it (``plan.held``) until :func:`release`, refuse a folder with
    content (besides lock files) unless ``overwrite``, and record the notebooks as pending. A
    notebook that another live process runs here raises RunError naming that process, whatever
    ``overwrite`` says. Nothing is done when the plan is already claimed."""
    if plan.held:
        return
    environment = environment_info()  # outside the lock: it runs git and imports torch
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    with locks.exclusive(plan.run_dir / LOCKS_DIR / "manifest.lock"):
        try:
            for stem in plan.stems:
                plan.held.append(locks.acquire(_lock_path(plan.run_dir, stem), notebooks=plan.stems,
                                               params_file=str(plan.params_file)))
            if not plan.overwrite and any(p.name != LOCKS_DIR for p in plan.run_dir.iterdir()):
                raise RunError(f"run folder {plan.run_dir} exists; refusing to overwrite it. Pick another --name, "
                               "or pass --overwrite to re-execute the selected notebooks in it (their artifacts "
                               "are replaced, other stages' artifacts stay)")
            plan.manifest = {
                "name": plan.run_dir.name,
                "params_file": str(plan.params_file),
                "params_yaml": plan.params_file.read_text(),
                "overrides": plan.overrides,  # --set assignments over params_yaml, in order
                "params": {s: plan.parameters[s] for s in plan.stems},
                "params_paths_as_given": plan.paths_as_given,  # relative input paths, made absolute in params
                # relative to the run folder (usually ../NAME), so that the record names no machine's folders
                "from_run": os.path.relpath(plan.from_run, plan.run_dir) if plan.from_run else None,
                **environment,
                "status": "running",
                "started": dt.datetime.now().isoformat(timespec="seconds"),
                "notebooks": {s: {"status": "pending"} for s in plan.stems},
            }
            _merge_manifest(plan)
        except locks.LockHeld as e:
            release(plan)
            raise RunError(f"run folder {plan.run_dir} is in use: notebook {e.path.stem} is being run by "
                           f"{locks.describe(e.holder)} (notebooks {', '.join(e.holder.get('notebooks', []))}). "
                           "Wait for that run to end, or stop it, then run again (--overwrite does not take "
                           "over a live run)") from None
        except BaseException:
            release(plan)
            raise


def release(plan: RunPlan) -> None:
    """Give up the notebook locks taken by :func:`claim` (process exit does it too)."""
    for f in plan.held:
        f.close()
    plan.held = []


def _error_location(nb_path: Path) -> str:
    """'cell N (In [k])' of the first cell that has an error output in an executed notebook."""
    try:
        nb = json.loads(nb_path.read_text())
    except (OSError, ValueError):
        return "unknown cell"
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {i} (In [{cell.get('execution_count')}]): {out.get('ename')}: {out.get('evalue')}"
    return "unknown cell"


def _write_manifest(plan: RunPlan) -> None:
    """Merge this process's notebook entries into ``manifest.json`` under the folder's manifest
    lock, atomically (see :func:`_merge_manifest`)."""
    with locks.exclusive(plan.run_dir / LOCKS_DIR / "manifest.lock"):
        _merge_manifest(plan)


def _merge_manifest(plan: RunPlan) -> None:
    """The body of :func:`_write_manifest`, for a caller that holds the manifest lock.

    Two ``mfl run --overwrite --only`` processes may work on one run folder at once (notebooks 04
    and 06 only share notebook 01's samples); each keeps the other's records. Entries of other
    processes that are running or pending while nobody holds their notebook's lock become
    ``interrupted``. The run's status and span are derived from all entries (:func:`_derive`)."""
    path = plan.run_dir / "manifest.json"
    try:
        on_disk = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        on_disk = {}
    mine = {s: plan.manifest["notebooks"][s] for s in plan.stems}
    notebooks = dict(sorted({**on_disk.get("notebooks", {}), **mine}.items()))
    _mark_interrupted(plan.run_dir, notebooks, skip=set(plan.stems))
    merged = _derive({**plan.manifest, "notebooks": notebooks,
                      "params": {**on_disk.get("params", {}), **plan.manifest.get("params", {})},
                      "params_paths_as_given": {**on_disk.get("params_paths_as_given", {}),
                                                **plan.manifest.get("params_paths_as_given", {})}})
    _write_json(path, merged)
    plan.manifest = merged


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def _mark_interrupted(run_dir: Path, notebooks: dict, skip: frozenset | set = frozenset()) -> bool:
    """Mark entries that are running or pending while no process holds their notebook's lock as
    ``interrupted`` (in place). -> whether any changed. Call it holding the manifest lock, so
    that it cannot race a claim."""
    changed = False
    for stem, entry in notebooks.items():
        if (isinstance(entry, dict) and entry.get("status") in LIVE and stem not in skip
                and not locks.is_held(_lock_path(run_dir, stem))):
            entry.update(status="interrupted", error="its `mfl run` process ended before recording an outcome "
                                                     "(killed, crashed or the machine stopped)")
            changed = True
    return changed


def _derive(manifest: dict) -> dict:
    """The run-level fields from the notebook entries: status (running while any is running or
    pending, else failed if any failed, else interrupted if any was, else ok), compute seconds, and
    the span from the first start to the last end."""
    entries = [e for e in manifest["notebooks"].values() if isinstance(e, dict)]
    statuses = {e.get("status") for e in entries}
    merged = {**manifest,
              "status": "running" if statuses & set(LIVE) else "failed" if "failed" in statuses else
                        "interrupted" if "interrupted" in statuses else "ok",
              # compute time: notebooks that ran side by side (two `mfl run` at once) count twice
              "notebook_seconds": round(sum(e.get("duration_s", 0) for e in entries), 2)}
    # the run folder's span: from the first notebook's start to the last one's end, over every
    # `mfl run` that wrote here (ISO timestamps of one clock sort as strings)
    starts = [e["started"] for e in entries if e.get("started")]
    ends = [e["ended"] for e in entries if e.get("ended")]
    if starts:
        merged["started"] = min(starts)
    if merged["status"] == "running" or not ends:
        merged.pop("ended", None)
        merged.pop("duration_s", None)
    else:
        merged["ended"] = max(ends)
        merged["duration_s"] = (dt.datetime.fromisoformat(merged["ended"])
                                - dt.datetime.fromisoformat(merged["started"])).total_seconds()
    return merged


def _prefer_this_environment_kernels() -> None:
    """Kernels registered inside the running environment (`make setup` installs ours with
    --sys-prefix) come before per-user ones, so another clone's `mousefacelift` kernel never runs
    this checkout's notebooks with the wrong interpreter."""
    here = str(Path(sys.prefix) / "share" / "jupyter")
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if here not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([here, *paths])


def execute(plan: RunPlan, verbose: bool = False, console: runlog.Console | None = None) -> dict:
    """Steps 2-4: claim the run folder (unless the caller did), run the planned notebooks, release
    it; returns the manifest. Raises RunError on a failure after recording it (the executed
    notebook with its traceback stays in the run folder). ``console`` prints a status line per
    notebook (default: none); each notebook's cell log goes to ``logs/NN_name.log`` in the run
    folder, and also to the console when ``verbose``."""
    _prefer_this_environment_kernels()
    claim(plan)
    try:
        failure = _run_notebooks(plan, verbose, console)
    finally:
        release(plan)
    if failure:
        raise RunError(failure)
    return plan.manifest


def _run_notebooks(plan: RunPlan, verbose: bool = False, console: runlog.Console | None = None) -> str | None:
    """Steps 3-4 for a claimed plan. -> the failure message, or None."""
    import papermill as pm

    failure = None
    for stem in plan.stems:
        out = plan.run_dir / f"{stem}.ipynb"
        entry = plan.manifest["notebooks"][stem]
        entry.update(status="running", started=dt.datetime.now().isoformat(timespec="seconds"))
        _write_manifest(plan)
        nb_params = dict(plan.parameters[stem])
        if "from_run" in params_mod.notebook_parameters(plan.notebooks[stem]):
            nb_params["from_run"] = str(plan.from_run) if plan.from_run else ""
        if console:
            console.start(stem)
        cell_log = runlog.log_path(plan.run_dir, stem)
        t0 = time.perf_counter()
        try:
            with runlog.capture(cell_log, verbose):
                for attempt in range(2):
                    log.info("executing %s -> %s", plan.notebooks[stem].name, out)
                    try:
                        pm.execute_notebook(str(plan.notebooks[stem]), str(out), parameters=nb_params,
                                            cwd=str(plan.run_dir), kernel_name=plan.kernel, log_output=True,
                                            progress_bar=False,
                                            **runlog.execute_options(None if verbose else cell_log))
                        break
                    except pm.PapermillExecutionError:
                        raise
                    except Exception as e:
                        if attempt or not _crossed_kernel_channels(e):
                            raise
                        log.warning("%s: the Jupyter client read messages signed by another kernel (%s: %.60s): "
                                    "kernels started in the same second can draw the same ports. Running the "
                                    "notebook again from its start, once", stem, type(e).__name__, e)
                        entry["restarted"] = f"{type(e).__name__}: {e}"
            entry["status"] = "ok"
        except pm.PapermillExecutionError as e:
            entry.update(status="failed", error=f"{e.ename}: {e.evalue}", cell=e.cell_index)
            failure = f"notebook {stem} failed in {_error_location(out)}; traceback in {out}"
        except Exception as e:  # kernel missing, dead kernel, timeout: keep the record, then stop
            entry.update(status="failed", error=f"{type(e).__name__}: {e}")
            hint = (f" (register the kernel with `make setup` or `python -m ipykernel install --user --name "
                    f"{KERNEL_NAME}`)") if "kernel" in str(e).lower() else ""
            failure = f"notebook {stem} could not be executed: {type(e).__name__}: {e}{hint}"
        entry["ended"] = dt.datetime.now().isoformat(timespec="seconds")
        entry["duration_s"] = round(time.perf_counter() - t0, 2)
        results = plan.run_dir / RESULTS_DIR / f"{stem}.json"
        if results.is_file():
            entry["results"] = json.loads(results.read_text())
            if headline_path(results).is_file():  # declared by the notebook's record_results
                keys = json.loads(headline_path(results).read_text())
                entry["headline"] = {k: entry["results"][k] for k in keys if k in entry["results"]}
            else:
                entry["headline"] = headline(entry, plan.parameters[stem])
        entry["log"] = str(cell_log.relative_to(plan.run_dir))
        _write_manifest(plan)
        if console:
            console.end(stem, entry, cell_log)
        if failure:
            break
    for stem in plan.stems:  # after a failure, the later notebooks were never started
        if plan.manifest["notebooks"][stem].get("status") == "pending":
            plan.manifest["notebooks"][stem]["status"] = "not run"
    _write_manifest(plan)  # the run's started / ended / duration_s come from its notebooks' entries
    write_report(plan.run_dir)
    return failure


def _crossed_kernel_channels(error: BaseException) -> bool:
    """Whether executing a notebook failed because its client read another kernel's messages (jupyter_client's
    "Invalid Signature"), not because of the notebook: then running it again is safe and right."""
    return isinstance(error, ValueError) and str(error).startswith("Invalid Signature")


def run(params_file: str | Path, verbose: bool = False, console: runlog.Console | None = None, **kwargs) -> dict:
    """Plan (validate everything) and execute. See :func:`plan_run` for the keyword arguments."""
    return execute(plan_run(params_file, **kwargs), verbose, console)


def list_runs(runs_root: str | Path = "runs") -> list[dict]:
    """One dict per run folder with a manifest, the members of sweep folders included (named
    ``sweep/member``): name, status, start, duration, headline (text), params (as in the
    manifest), overrides (``--set``) and results ({notebook: headline results})."""
    rows = []
    root = Path(runs_root)
    try:  # the notebooks' parameter names: a run recorded before headlines were declared shows none of them
        declared = {stem: set(params_mod.notebook_parameters(path))
                    for stem, path in find_notebooks(repo_root() / "notebooks").items()}
    except (RunError, params_mod.ParamsError, OSError, ValueError):
        declared = {}
    for m in sorted([*root.glob("*/manifest.json"), *root.glob("*/*/manifest.json")]):
        name = m.parent.relative_to(root).as_posix()
        try:
            man = json.loads(m.read_text())
            if any(isinstance(e, dict) and e.get("status") in LIVE for e in man.get("notebooks", {}).values()):
                man = _reconcile(m.parent)
        except ValueError:
            rows.append({"name": name, "status": "unreadable manifest", "duration_s": None, "headline": ""})
            continue
        params = man.get("params", {})
        results = {s: headline(e, {**dict.fromkeys(declared.get(s, ())), **params.get(s, {})})
                   for s, e in man.get("notebooks", {}).items() if e.get("results")}
        heads = [f"{s[:2]}: {runlog.format_headline(h, 3)}" for s, h in results.items()]
        rows.append({"name": name, "status": man.get("status"), "started": man.get("started"),
                     "duration_s": man.get("duration_s"), "headline": "; ".join(heads), "params": params,
                     "overrides": man.get("overrides", []), "results": results})
    return rows


def _reconcile(run_dir: Path) -> dict:
    """The manifest of ``run_dir`` with notebooks whose process died marked ``interrupted``, and
    written back when anything changed (a read-only folder is only reported)."""
    path = run_dir / "manifest.json"
    try:
        with locks.exclusive(run_dir / LOCKS_DIR / "manifest.lock"):
            man = json.loads(path.read_text())
            if _mark_interrupted(run_dir, man.get("notebooks", {})):
                man = _derive(man)
                _write_json(path, man)
            return man
    except OSError:  # no write access: nothing can take its locks either
        man = json.loads(path.read_text())
        return _derive(man) if _mark_interrupted(run_dir, man.get("notebooks", {})) else man
