"""The papermill runner on small notebooks made here (the real ones are run by test_notebooks.py)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest

from mousefacelift import cli, locks, runner
from nbtools import make_notebook


@pytest.fixture
def project(tmp_path):
    nbdir = tmp_path / "notebooks"
    make_notebook(nbdir / "01_make.ipynb", "seed = 0  # seed\nn = 3  # how many\nfrom_run = ''",
                  "from pathlib import Path\nfrom mousefacelift.stage import record_results\n"
                  "Path('data').mkdir(exist_ok=True)\nPath('data/numbers.txt').write_text(str(list(range(n))))\n"
                  "record_results('01_make', {'n': n, 'seed': seed})")
    make_notebook(nbdir / "02_use.ipynb", "seed = 0\nfail = False  # raise on purpose\nfrom_run = ''",
                  "from mousefacelift.stage import find_input, record_results\n"
                  "numbers = eval(find_input('data/numbers.txt', from_run, '01_make').read_text())",
                  "if fail:\n    raise ValueError('boom on purpose')",
                  "record_results('02_use', {'total': sum(numbers)})")
    make_notebook(nbdir / "03_last.ipynb", "x = 1.0", "print('last ran')")
    (tmp_path / "p.yaml").write_text("seed: 1\n01_make:\n  n: 5\n")
    return tmp_path


def run_cli(project, *args):
    return cli.main(["run", str(project / "p.yaml"), "--runs", str(project / "runs"),
                     "--notebooks", str(project / "notebooks"), *args])


def test_full_run_writes_a_complete_run_folder(project):
    assert run_cli(project, "--name", "a") == 0
    run = project / "runs" / "a"
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "ok" and set(man["notebooks"]) == {"01_make", "02_use", "03_last"}
    assert man["params"]["01_make"] == {"seed": 1, "n": 5}
    assert man["notebooks"]["02_use"]["results"] == {"total": 10}
    assert all(e["status"] == "ok" and e["duration_s"] > 0 for e in man["notebooks"].values())
    assert "torch" in man["packages"] and "git_commit" in man and "git_dirty" in man and "device" in man
    assert (run / "data" / "numbers.txt").is_file()  # the notebook's cwd is the run folder
    report = (run / "report.html").read_text()
    for stem in ("01_make", "02_use", "03_last"):
        assert f'href="html/{stem}.html"' in report and (run / "html" / f"{stem}.html").stat().st_size > 1000
    # the executed notebook carries the injected parameters
    nb = nbformat.read(str(run / "01_make.ipynb"), as_version=4)
    assert any("injected-parameters" in c.metadata.get("tags", []) for c in nb.cells)
    assert cli.main(["list", "--runs", str(project / "runs")]) == 0


def test_second_run_with_same_name_refuses(project, capsys):
    assert run_cli(project, "--name", "a", "--only", "01") == 0
    before = (project / "runs" / "a" / "manifest.json").read_text()
    assert run_cli(project, "--name", "a", "--only", "01") == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (project / "runs" / "a" / "manifest.json").read_text() == before
    assert run_cli(project, "--name", "a", "--only", "02", "--overwrite") == 0
    man = json.loads((project / "runs" / "a" / "manifest.json").read_text())
    assert man["notebooks"]["01_make"]["status"] == "ok" and man["notebooks"]["02_use"]["status"] == "ok"


def test_misspelled_key_fails_before_execution(project, capsys):
    (project / "p.yaml").write_text("01_make:\n  nn: 5\n")
    assert run_cli(project, "--name", "typo") == 2
    err = capsys.readouterr().err
    assert "'nn'" in err and "Did you mean 'n'" in err and "Nothing was executed" in err
    assert not (project / "runs" / "typo").exists()


def test_failing_notebook_keeps_traceback_and_stops(project, capsys):
    (project / "p.yaml").write_text("02_use:\n  fail: true\n")
    assert run_cli(project, "--name", "bad") == 1
    err = capsys.readouterr().err
    assert "02_use" in err and "cell" in err and "boom on purpose" in err
    run = project / "runs" / "bad"
    man = json.loads((run / "manifest.json").read_text())
    assert man["status"] == "failed"
    assert man["notebooks"]["02_use"]["status"] == "failed"
    assert man["notebooks"]["03_last"]["status"] == "not run" and not (run / "03_last.ipynb").exists()
    executed = nbformat.read(str(run / "02_use.ipynb"), as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert errors and errors[0].evalue == "boom on purpose"
    assert "failed" in (run / "report.html").read_text()


def test_crossed_kernel_channels_restart_the_notebook_once(project, monkeypatch):
    """Kernels started side by side in the same second can share ports; the client then fails with
    "Invalid Signature" (runs/h200-session-1). The runner runs that notebook again once, and records it;
    a second such failure, or any other error, fails the run as before."""
    import papermill
    real, calls = papermill.execute_notebook, []

    def crossed_once(nb, out, **kw):
        calls.append(Path(nb).stem)
        if Path(nb).stem == "02_use" and calls.count("02_use") <= failures:
            raise ValueError("Invalid Signature: b'3d8de0a9'")
        return real(nb, out, **kw)

    monkeypatch.setattr(papermill, "execute_notebook", crossed_once)
    failures = 1
    assert run_cli(project, "--name", "crossed") == 0
    man = json.loads((project / "runs" / "crossed" / "manifest.json").read_text())
    assert man["status"] == "ok" and calls == ["01_make", "02_use", "02_use", "03_last"]
    assert man["notebooks"]["02_use"]["restarted"].startswith("ValueError: Invalid Signature")
    assert man["notebooks"]["02_use"]["results"] == {"total": 10} and "restarted" not in man["notebooks"]["01_make"]
    failures, calls[:] = 2, []
    assert run_cli(project, "--name", "crossed-twice") == 1
    man = json.loads((project / "runs" / "crossed-twice" / "manifest.json").read_text())
    assert calls == ["01_make", "02_use", "02_use"] and man["notebooks"]["02_use"]["status"] == "failed"
    assert "Invalid Signature" in man["notebooks"]["02_use"]["error"]


def test_only_and_from_run(project):
    assert run_cli(project, "--name", "first", "--only", "01") == 0
    assert run_cli(project, "--name", "second", "--only", "02,03", "--from-run", str(project / "runs" / "first")) == 0
    man = json.loads((project / "runs" / "second" / "manifest.json").read_text())
    assert set(man["notebooks"]) == {"02_use", "03_last"} and man["notebooks"]["02_use"]["results"] == {"total": 10}
    assert man["from_run"] == "../first"  # relative to the run folder: the record names no machine's folders
    # without --from-run the input is missing: a clear error naming the producing notebook
    assert run_cli(project, "--name", "third", "--only", "02") == 1


def test_only_rejects_unknown_notebook(project):
    with pytest.raises(runner.RunError, match="matches no notebook"):
        runner.plan_run(project / "p.yaml", only="09", notebooks_dir=project / "notebooks", runs_root=project / "runs")


def test_two_processes_on_one_run_folder_keep_each_others_records(project):
    """`mfl run --overwrite --only 02` and `--only 03` at once (as 04 and 06 on a GPU): the manifest
    merges their entries whatever the order of their writes, and the status waits for both."""
    assert run_cli(project, "--name", "par", "--only", "01") == 0
    run = project / "runs" / "par"
    plan_a = runner.plan_run(project / "p.yaml", only="02", name="par", overwrite=True,
                             runs_root=project / "runs", notebooks_dir=project / "notebooks")
    plan_b = runner.plan_run(project / "p.yaml", only="03", name="par", overwrite=True,
                             runs_root=project / "runs", notebooks_dir=project / "notebooks")
    runner.claim(plan_a)  # different notebooks: both may run in the folder at once
    runner.claim(plan_b)
    for plan, stem in ((plan_a, "02_use"), (plan_b, "03_last")):  # both started, from stale copies
        plan.manifest = {"name": "par", "notebooks": {stem: {"status": "running"}}, "params": {}}
        runner._write_manifest(plan)
    plan_a.manifest["notebooks"]["02_use"].update(status="ok", duration_s=1.5)
    runner._write_manifest(plan_a)
    man = json.loads((run / "manifest.json").read_text())
    assert man["notebooks"]["01_make"]["status"] == "ok"          # the earlier run's record survives
    assert man["notebooks"]["02_use"]["status"] == "ok"
    assert man["notebooks"]["03_last"]["status"] == "running"     # b's record survives a's later write
    assert man["status"] == "running"
    plan_b.manifest["notebooks"]["03_last"].update(status="failed", duration_s=0.5)
    runner._write_manifest(plan_b)
    man = json.loads((run / "manifest.json").read_text())
    assert man["notebooks"]["02_use"]["status"] == "ok" and man["status"] == "failed"
    assert man["notebook_seconds"] == pytest.approx(1.5 + 0.5 + man["notebooks"]["01_make"]["duration_s"])
    runner.release(plan_a)
    runner.release(plan_b)


def test_the_run_span_is_wall_time_not_the_sum_of_side_by_side_notebooks(project):
    """Two notebooks that ran at once over 10 minutes span 10 minutes, though they took 20 of compute."""
    plan = runner.plan_run(project / "p.yaml", only="01,02,03", name="span",
                           runs_root=project / "runs", notebooks_dir=project / "notebooks")
    plan.run_dir.mkdir(parents=True)
    t = "2026-11-21T12:{:02d}:00"
    plan.manifest = {"name": "span", "params": {}, "notebooks": {
        "01_make": {"status": "ok", "started": t.format(0), "ended": t.format(5), "duration_s": 300.0},
        "02_use": {"status": "ok", "started": t.format(5), "ended": t.format(15), "duration_s": 600.0},
        "03_last": {"status": "ok", "started": t.format(5), "ended": t.format(15), "duration_s": 600.0}}}
    runner._write_manifest(plan)
    man = json.loads((project / "runs" / "span" / "manifest.json").read_text())
    assert man["started"] == t.format(0) and man["ended"] == t.format(15)
    assert man["duration_s"] == 900.0 and man["notebook_seconds"] == 1500.0


def test_a_named_commit_wins_over_a_copys_stale_git(monkeypatch):
    monkeypatch.setenv("MFL_GIT_COMMIT", "124b7ee")
    info = runner.environment_info()
    assert info["git_commit"] == "124b7ee" and info["git_dirty"] is None


def test_figures_are_kept_when_the_environment_says_agg(tmp_path, monkeypatch):
    """MPLBACKEND=Agg (headless GPU machines) must not strip the figures from the executed notebooks."""
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbdir = tmp_path / "notebooks"
    make_notebook(nbdir / "01_plot.ipynb", "seed = 0",
                  "import matplotlib.pyplot as plt\nfrom mousefacelift.stage import setup_notebook_logging\n"
                  "setup_notebook_logging()",
                  "plt.plot([0, 1], [1, 0])\nplt.show()")
    (tmp_path / "p.yaml").write_text("seed: 1\n")
    assert cli.main(["run", str(tmp_path / "p.yaml"), "--runs", str(tmp_path / "runs"),
                     "--notebooks", str(nbdir), "--name", "agg"]) == 0
    executed = nbformat.read(str(tmp_path / "runs" / "agg" / "01_plot.ipynb"), as_version=4)
    images = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 1
    # report.html: a thumbnail of the figure, the export without code cells and the one with them
    run = tmp_path / "runs" / "agg"
    report = (run / "report.html").read_text()
    assert '<img src="html/thumbs/01_plot_0.png"' in report and 'href="html/01_plot.code.html"' in report
    from PIL import Image
    assert max(Image.open(run / "html" / "thumbs" / "01_plot_0.png").size) == 220
    editor = 'jp-InputArea-editor"'  # the class of a code cell's source in nbconvert's HTML
    assert editor not in (run / "html" / "01_plot.html").read_text()
    code_cells = [c for c in executed.cells if c.cell_type == "code"]
    assert (run / "html" / "01_plot.code.html").read_text().count(editor) == len(code_cells) == 4


def test_report_rewrites_the_html_of_a_run_folder(project, capsys):
    assert run_cli(project, "--name", "rep", "--only", "01") == 0
    run = project / "runs" / "rep"
    (run / "report.html").unlink()
    shutil.rmtree(run / "html")
    assert cli.main(["report", str(run)]) == 0
    assert "01_make" in (run / "report.html").read_text() and (run / "html" / "01_make.html").is_file()
    assert cli.main(["report", str(project / "runs")]) == 2
    assert "not a run folder" in capsys.readouterr().err


# -- one run per notebook and folder, safe names, dead runs ---------------------------------------------
HOLDER = textwrap.dedent("""
    import sys
    from mousefacelift import runner
    params, only, name, runs, notebooks = sys.argv[1:]
    plan = runner.plan_run(params, only=only, name=name, overwrite=True, runs_root=runs, notebooks_dir=notebooks)
    runner.claim(plan)
    plan.manifest["notebooks"][plan.stems[0]]["status"] = "running"
    runner._write_manifest(plan)
    print("claimed", flush=True)
    sys.stdin.read()  # hold the run until the test closes stdin or kills this process
""")


@pytest.fixture
def holder(project):
    """Another process that claimed notebooks 01 and 02 of runs/busy and runs 01, as `mfl run` does."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(project / "p.yaml"), "01,02", "busy",
                             str(project / "runs"), str(project / "notebooks")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(runner.__file__).parents[1])})
    assert proc.stdout.readline().strip() == "claimed"
    yield proc
    proc.kill()
    proc.wait()


def test_a_second_run_of_a_live_runs_notebooks_is_refused_naming_the_holder(project, holder, capsys):
    for extra in ([], ["--overwrite"], ["--only", "02", "--overwrite"]):
        assert run_cli(project, "--name", "busy", *extra) == 2
        err = capsys.readouterr().err
        assert f"run folder {project / 'runs' / 'busy'} is in use" in err, err
        assert f"PID {holder.pid} on host {socket.gethostname()} since 20" in err and "Nothing was executed" in err
    man = json.loads((project / "runs" / "busy" / "manifest.json").read_text())
    assert man["notebooks"]["01_make"]["status"] == "running" and man["status"] == "running"
    assert not (project / "runs" / "busy" / "01_make.ipynb").exists()
    # a notebook the holder does not run may still run beside it (as 04 beside 06)
    other = runner.plan_run(project / "p.yaml", only="03", name="busy", overwrite=True,
                            runs_root=project / "runs", notebooks_dir=project / "notebooks")
    runner.claim(other)
    runner.release(other)
    assert [r["status"] for r in runner.list_runs(project / "runs")] == ["running"]


def test_a_killed_run_is_listed_as_interrupted_and_can_be_run_again(project, holder, capsys):
    holder.kill()
    holder.wait()
    assert cli.main(["list", "--runs", str(project / "runs")]) == 0
    assert "busy  interrupted" in capsys.readouterr().out
    man = json.loads((project / "runs" / "busy" / "manifest.json").read_text())  # written back
    assert man["status"] == "interrupted"
    assert man["notebooks"]["01_make"]["status"] == man["notebooks"]["02_use"]["status"] == "interrupted"
    assert run_cli(project, "--name", "busy", "--only", "01", "--overwrite") == 0
    man = json.loads((project / "runs" / "busy" / "manifest.json").read_text())
    assert man["notebooks"]["01_make"]["status"] == "ok" and man["status"] == "interrupted"  # 02 never finished


def test_flock_conflicts_within_one_process_too(tmp_path):
    """What the design relies on: the lock belongs to an open file, not to a process."""
    first = locks.acquire(tmp_path / "x.lock", notebooks=["01"])
    with pytest.raises(locks.LockHeld) as err:
        locks.acquire(tmp_path / "x.lock")
    assert err.value.holder["pid"] == os.getpid() and err.value.holder["notebooks"] == ["01"]
    assert locks.is_held(tmp_path / "x.lock")
    first.close()
    assert not locks.is_held(tmp_path / "x.lock") and not locks.is_held(tmp_path / "never.lock")
    locks.acquire(tmp_path / "x.lock").close()


def test_creating_a_run_folder_is_atomic(project):
    """Two first runs (no --overwrite) that both found no folder: the second to claim it is refused,
    even for other notebooks."""
    plans = [runner.plan_run(project / "p.yaml", only=only, name="new", runs_root=project / "runs",
                             notebooks_dir=project / "notebooks") for only in ("01", "02")]
    runner.claim(plans[0])
    with pytest.raises(runner.RunError, match="exists; refusing to overwrite"):
        runner.claim(plans[1])
    assert plans[1].held == [] and not locks.is_held(project / "runs" / "new" / ".locks" / "02_use.lock")
    runner.release(plans[0])


@pytest.mark.parametrize("name", ["../../x", "..", ".", "a/b", "/abs", "a\\b"])
def test_run_names_that_leave_the_runs_folder_are_refused(project, capsys, name):
    before = sorted(p.name for p in project.iterdir())
    assert run_cli(project, "--name", name, "--overwrite") == 2
    assert f"run name {name!r} is not a plain folder name" in capsys.readouterr().err
    with pytest.raises(runner.RunError, match="not a plain folder name"):
        runner.run_folder(project / "runs", name)
    assert sorted(p.name for p in project.iterdir()) == before  # nothing written beside runs/
    assert not (project / "manifest.json").exists() and not Path("/abs/manifest.json").exists()


def test_a_run_name_resolving_outside_the_runs_folder_is_refused(project, tmp_path_factory, capsys):
    outside = tmp_path_factory.mktemp("elsewhere")
    (project / "runs").mkdir()
    (project / "runs" / "link").symlink_to(outside, target_is_directory=True)
    assert run_cli(project, "--name", "link", "--overwrite") == 2
    assert f"resolves to {outside}" in capsys.readouterr().err and list(outside.iterdir()) == []


# -- the console: one line per notebook, the cell log in a file -------------------------------------------
def test_the_console_has_one_line_per_notebook_and_the_cell_log_goes_to_a_file(project, capfd, caplog):
    (project / "notebooks" / "01_make.ipynb").unlink()  # 01 again, declaring its headline
    make_notebook(project / "notebooks" / "01_make.ipynb", "seed = 0  # seed\nn = 3  # how many\nfrom_run = ''",
                  "from pathlib import Path\nfrom mousefacelift.stage import record_results\n"
                  "Path('data').mkdir(exist_ok=True)\nPath('data/numbers.txt').write_text(str(list(range(n))))\n"
                  "print('a line of the cell log')\n"
                  "record_results('01_make', {'n': n, 'seed': seed, 'score': 0.25}, headline=['score'])")
    assert run_cli(project, "--name", "quiet") == 0
    out = capfd.readouterr()
    lines = (out.out + out.err).splitlines()
    assert len(lines) == 2 + 3, lines  # the run, three notebooks, the report
    assert lines[1].startswith("[1/3] 01_make ... ok in ") and lines[1].endswith(": score=0.25")
    assert "elapsed" in lines[1]  # nothing recorded yet for 02 and 03: no estimate of the time left
    assert lines[2].startswith("[2/3] 02_use ... ok in ") and lines[2].endswith(": total=10")  # an old-style notebook
    run = project / "runs" / "quiet"
    assert "a line of the cell log" in (run / "logs" / "01_make.log").read_text()
    man = json.loads((run / "manifest.json").read_text())
    assert man["notebooks"]["01_make"]["headline"] == {"score": 0.25}  # declared: never the parameters n, seed
    assert man["notebooks"]["01_make"]["log"] == "logs/01_make.log"
    # a second run of the same params file knows how long each notebook took
    assert run_cli(project, "--name", "again") == 0
    lines = capfd.readouterr().out.splitlines()
    assert "(last time " in lines[1] and " left: score=0.25" in lines[1]
    # the cell log reaches the console's logging handlers only with -v
    logged = lambda: any("a line of the cell log" in r.getMessage() for r in caplog.records)  # noqa: E731
    assert not logged()
    assert run_cli(project, "--name", "loud", "--only", "01", "-v") == 0
    assert logged()


def test_a_failure_names_the_cell_log(project, capfd):
    (project / "p.yaml").write_text("02_use:\n  fail: true\n")
    assert run_cli(project, "--name", "bad") == 1
    out = capfd.readouterr().out.splitlines()
    assert out[2].startswith("[2/3] 02_use ... FAILED after ") and "ValueError: boom on purpose" in out[2]
    assert str(project / "runs" / "bad" / "logs" / "02_use.log") in out[2]


def test_progress_bars_keep_their_final_line(project):
    make_notebook(project / "notebooks" / "03_last.ipynb", "x = 1.0",
                  "import mousefacelift  # as every notebook does first: no IProgress warning\n"
                  "from tqdm.auto import tqdm\nimport logging, sys, time\n"
                  "logging.basicConfig(level=logging.INFO, stream=sys.stdout, force=True)\n"
                  "for i in tqdm(range(40), desc='first', mininterval=0):\n"
                  "    time.sleep(0.01)\n"
                  "    if i == 20:\n        logging.getLogger('x').info('halfway')\n"
                  "for i in tqdm(range(30), desc='second', mininterval=0):\n    time.sleep(0.01)")
    assert run_cli(project, "--name", "bars", "--only", "03") == 0
    nb = nbformat.read(str(project / "runs" / "bars" / "03_last.ipynb"), as_version=4)
    streams = {o.name: o.text for o in nb.cells[-1].outputs if o.output_type == "stream"}
    assert len([o for o in nb.cells[-1].outputs if o.output_type == "stream"]) == 2  # one stdout, one stderr
    bars = streams["stderr"].splitlines()
    assert [b.split(":")[0] for b in bars] == ["first", "second"] and "\r" not in streams["stderr"]
    assert "40/40" in bars[0] and "30/30" in bars[1]
    assert "IProgress" not in streams["stderr"] and streams["stdout"] == "INFO:x:halfway\n"


# -- overrides, sweeps, the table of runs -----------------------------------------------------------------
def test_set_overrides_a_parameter_and_is_recorded(project):
    assert run_cli(project, "--name", "s", "--only", "01", "--set", "01_make.n=7", "--set", "seed=4") == 0
    run = project / "runs" / "s"
    assert (run / "data" / "numbers.txt").read_text() == str(list(range(7)))
    man = json.loads((run / "manifest.json").read_text())
    assert man["params"]["01_make"] == {"seed": 4, "n": 7} and man["overrides"] == ["01_make.n=7", "seed=4"]


@pytest.mark.parametrize("assignment, yaml_text", [
    ("01_make.nn=5", "01_make:\n  nn: 5\n"),          # a misspelled key
    ("sed=1", "sed: 1\n"),                          # a misspelled shared key
    ("01_mak.n=5", "01_mak:\n  n: 5\n"),              # a misspelled section
    ("03_last.x=abc", "03_last:\n  x: abc\n"),        # a wrong type (x is a float)
])
def test_set_is_refused_with_the_message_the_yaml_gets(project, capsys, assignment, yaml_text):
    (project / "p.yaml").write_text(yaml_text)
    assert run_cli(project, "--name", "y") == 2
    from_yaml = capsys.readouterr().err
    (project / "p.yaml").write_text("")
    assert run_cli(project, "--name", "y", "--set", assignment) == 2
    assert capsys.readouterr().err == from_yaml and "Nothing was executed" in from_yaml
    assert not (project / "runs" / "y").exists()


def test_set_values_are_read_as_yaml(project):
    from mousefacelift.params import apply_overrides

    data = apply_overrides({"01_make": {"n": 1}}, ["03_last.x=1e-4", "01_make.seed=3", "flag=true", "l=[1, 3]", "e="])
    assert data == {"01_make": {"n": 1, "seed": 3}, "03_last": {"x": 1e-4}, "flag": True, "l": [1, 3], "e": ""}
    assert isinstance(data["03_last"]["x"], float)
    with pytest.raises(Exception, match="expected KEY=VALUE"):
        apply_overrides({}, ["steps500"])


def test_a_sweep_runs_each_value_into_one_folder_and_list_compares_them(project, capsys):
    assert run_cli(project, "--name", "sw", "--only", "01,02", "--sweep", "01_make.n=2,4") == 0
    out = capsys.readouterr().out
    assert "a sweep of 2 runs" in out and out.count("[2/2] 02_use ") == 2
    assert "[2/2] 02_use (last time " in out.split("mfl run 2/2")[1]  # the first run's durations
    for n, total in ((2, 1), (4, 6)):
        man = json.loads((project / "runs" / "sw" / f"n={n}" / "manifest.json").read_text())
        assert man["params"]["01_make"]["n"] == n and man["notebooks"]["02_use"]["results"] == {"total": total}
    assert cli.main(["list", "--runs", str(project / "runs" / "sw"), "--csv"]) == 0
    import csv
    import io
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [(r["run"], r["01_make.n"], r["02_use.total"], r["status"]) for r in rows] == [
        ("n=2", "2", "1", "ok"), ("n=4", "4", "6", "ok")]
    assert "01_make.seed" not in rows[0]  # the same in every run: not a column unless --params all
    assert cli.main(["list", "--runs", str(project / "runs" / "sw"), "--json", "--params", "all"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["01_make.seed"] for r in records] == [1, 1] and [r["02_use.total"] for r in records] == [1, 6]
    assert cli.main(["list", "--runs", str(project / "runs")]) == 0  # sweeps' members show in the plain list
    assert "sw/n=4" in capsys.readouterr().out


def test_a_sweep_over_params_files_and_a_bad_value_run_nothing(project, capsys):
    (project / "q.yaml").write_text("01_make:\n  n: 2\n")
    assert cli.main(["run", str(project / "p.yaml"), str(project / "q.yaml"), "--runs", str(project / "runs"),
                     "--notebooks", str(project / "notebooks"), "--only", "01", "--sweep", "seed=1,2"]) == 0
    assert sorted(p.name for p in (project / "runs" / "p-q-sweep").iterdir()) == [
        "p_seed=1", "p_seed=2", "q_seed=1", "q_seed=2"]
    # one bad value among the sweep's: refused before any run
    assert run_cli(project, "--name", "bad", "--sweep", "03_last.x=1.0,abc") == 2
    assert "wrong type" in capsys.readouterr().err and not (project / "runs" / "bad").exists()


def test_sweep_names():
    from mousefacelift import sweep

    members = sweep.expand(["p.yaml"], ["04_m.lr=1e-4,3e-4", "06_g.lr=1,2", "06_g.n_inputs=[1,3],[5]"])
    assert [m.name for m in members][:2] == ["04.lr=1e-4_06.lr=1_n_inputs=[1,3]", "04.lr=1e-4_06.lr=1_n_inputs=[5]"]
    assert members[0].overrides == ["04_m.lr=1e-4", "06_g.lr=1", "06_g.n_inputs=[1,3]"]
    with pytest.raises(ValueError, match="two or more"):
        sweep.expand(["p.yaml"], ["06_g.lr=1e-4"])


def test_a_headline_is_the_declared_one_else_never_a_parameter_or_a_baseline():
    from mousefacelift.runlog import headline

    results = {"steps": 100, "baseline_psnr_fg": 8.2, "test_psnr_fg": 7.6, "n_frames": 20, "loss_last": 0.1}
    assert headline({"results": results}, {"steps": 100, "n_frames": None}) == {"test_psnr_fg": 7.6, "loss_last": 0.1}
    assert headline({"results": results, "headline": {"loss_last": 0.1}}) == {"loss_last": 0.1}


def test_the_kernels_own_output_goes_to_the_cell_log(project, capfd):
    """What the kernel process writes outside cell outputs (its infrastructure log, C-level output)
    lands in the cell log, not on the console."""
    make_notebook(project / "notebooks" / "03_last.ipynb", "x = 1.0",
                  "import os\nos.write(2, b'below python on stderr\\n')\nos.write(1, b'below python on stdout\\n')")
    assert run_cli(project, "--name", "k", "--only", "03") == 0
    out = capfd.readouterr()
    assert "below python" not in out.out + out.err and len(out.out.splitlines()) == 3
    log = (project / "runs" / "k" / "logs" / "03_last.log").read_text()
    assert "below python on stderr" in log and "below python on stdout" in log and "Executing Cell 1" in log


def test_recorded_results_name_no_machine_folders(tmp_path, monkeypatch):
    """record_results writes an absolute path inside the run folder relative to it, one under the home
    folder with ~, and leaves relative paths and other strings alone (the records of runs/h200-session-1
    had held the GPU machine's folders)."""
    import json as _json

    from mousefacelift.stage import portable_path, record_results
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    monkeypatch.chdir(run)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    elsewhere = str(tmp_path.parent / "data" / "rec")  # outside the run folder and the home folder: kept
    path = record_results("06_x", {"checkpoint": str(run / "gslrm" / "ckpt_1.pt"), "n": 3,
                                   "recording": str(home / ".cache" / "rec"), "ply": "gslrm/a.ply",
                                   "note": "a /slash inside", "elsewhere": elsewhere,
                                   "nested": {"dirs": [str(run / "mvdiffusion" / "pipeline")]}})
    rec = _json.loads(path.read_text())
    assert rec["checkpoint"] == "gslrm/ckpt_1.pt" and rec["recording"] == "~/.cache/rec"
    assert rec["nested"]["dirs"] == ["mvdiffusion/pipeline"] and rec["ply"] == "gslrm/a.ply"
    assert rec["note"] == "a /slash inside" and rec["elsewhere"] == elsewhere and rec["n"] == 3
    assert portable_path(str(run), run) == "."
