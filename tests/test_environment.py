"""environment.yml (conda users) and pyproject.toml (pip, make setup) list the same packages."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _name(spec: str) -> str:
    return re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    listed = {s for s in pip if not s.startswith("-e")}
    assert {_name(s) for s in listed} == {_name(s) for s in wanted}, "package names differ"
    assert listed == wanted, f"version pins differ: {sorted(listed ^ wanted)}"


def test_makefile_installs_the_kernel_the_notebooks_name():
    make = (ROOT / "Makefile").read_text()
    assert "KERNEL := mousefacelift" in make and "ipykernel install" in make and "nbdime config-git --enable" in make
