"""nbdime's git drivers are registered by absolute path, so `git diff` on a notebook works in a shell
whose PATH lacks the virtualenv."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("diff.jupyternotebook.command", "merge.jupyternotebook.driver", "difftool.nbdime.cmd", "mergetool.nbdime.cmd")


def git_config(repo: Path, key: str) -> str:
    return subprocess.run(["git", "config", "--get", key], cwd=repo, capture_output=True, text=True).stdout.strip()


def assert_absolute(repo: Path):
    for key in KEYS:
        program = shlex.split(git_config(repo, key))[0]
        assert os.path.isabs(program), f"git config {key} runs {program!r}, found only on PATH: run `make setup`"
        assert os.access(program, os.X_OK), f"git config {key} runs {program}, which is not an executable"


def test_this_repositorys_notebook_drivers_are_absolute():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    if not git_config(ROOT, "diff.jupyternotebook.command"):
        pytest.skip("nbdime's git drivers are not configured in this repository (`make setup` does it)")
    assert_absolute(ROOT)


def test_make_git_drivers_registers_absolute_paths(tmp_path):
    """The Makefile target on a fresh repository, with this interpreter's bin folder as the venv's."""
    if shutil.which("git") is None or shutil.which("make") is None:
        pytest.skip("needs git and make")
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "nbdime").is_file():
        pytest.skip("nbdime is not installed beside this interpreter")
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["make", "-s", "-f", str(ROOT / "Makefile"), "git-drivers", f"BIN={bin_dir}", "STAMP="],
                   cwd=tmp_path, check=True, env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert_absolute(tmp_path)
    assert git_config(tmp_path, "diff.jupyternotebook.command") == f'"{bin_dir}/git-nbdiffdriver" diff'
    # and git diff runs it with a PATH that lacks the bin folder
    nb = tmp_path / "a.ipynb"
    nb.write_text('{"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.ipynb"], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "a"],
                   check=True)
    nb.write_text('{"cells": [{"cell_type": "markdown", "id": "x", "metadata": {}, "source": "# hello"}], '
                  '"metadata": {}, "nbformat": 4, "nbformat_minor": 5}')
    diff = subprocess.run(["git", "-C", str(tmp_path), "diff"], capture_output=True, text=True,
                          env={**os.environ, "PATH": "/usr/bin:/bin"})
    assert diff.returncode == 0, diff.stderr
    assert "hello" in diff.stdout
