"""The tracked tree itself: no text file names a path of the machine it was written on.

A path such as ``<root>/<user>/project/runs/x`` in code, docs, a notebook or a committed run's
provenance breaks on every other clone; paths are relative to the run folder, the repository or a
data root given in params.
"""
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# an absolute path under a machine's home, scratch or temporary folders (POSIX, macOS, Windows)
MACHINE_PATH = re.compile(r"(?<![\w.~$/-])(/(?:work|home|tmp|root|Users|mnt|scratch|data|opt|srv|var/folders)/[\w.]"
                          r"|[A-Za-z]:\\\\?(?:Users|home)\\)")


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout (a source archive): no tracked files to check")
    return [ROOT / p for p in out.decode().split("\0") if p]


def machine_paths(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line of ``text`` that holds an absolute machine path."""
    return [(i, line.strip()[:160]) for i, line in enumerate(text.splitlines(), 1) if MACHINE_PATH.search(line)]


def test_the_pattern_finds_machine_paths_and_spares_relative_ones():
    hits = ["see /ho" "me/ana/mouse/runs/a", "base: /wo" "rk/main/params/gpu.yaml", '"/tm' 'p/cache/rec"',
            "C:\\Us" "ers\\ana\\x", "/Us" "ers/ana/x", "\t/ro" "ot/.local/share/jupyter", "/op" "t/torch/.venv/lib"]
    misses = ["runs/h200-reference/data", "../../params/gpu.yaml", "~/.cache/mousefacelift", "$MFL_CACHE_DIR/recordings",
              "https://example.org/home/x", "a/tmp/b", "/abs"]
    assert [bool(machine_paths(t)) for t in hits] == [True] * len(hits)
    assert [bool(machine_paths(t)) for t in misses] == [False] * len(misses)


def test_no_tracked_text_file_holds_an_absolute_machine_path():
    found = []
    for path in tracked_files():
        if not path.is_file():
            continue  # deleted in the working tree, not yet committed
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        found += [f"{path.relative_to(ROOT)}:{i}: {line}" for i, line in machine_paths(text)]
    assert not found, ("absolute machine paths in tracked files (make them relative to the run folder, the "
                       "repository or a params data root):\n" + "\n".join(found[:40]))


def test_the_tracked_tree_stays_small_enough_to_travel():
    """The whole checkout (the demo's weights included) goes with a GPU job, beside the packages it
    carries: at most 20 MB, of which committed runs at most 8 MB (figures as PNG, no videos)."""
    sizes = {p: p.stat().st_size for p in tracked_files() if p.is_file()}
    total = sum(sizes.values())
    runs = sum(s for p, s in sizes.items() if p.relative_to(ROOT).parts[0] == "runs")
    biggest = sorted(sizes, key=sizes.get)[-5:]
    assert total <= 20e6 and runs <= 8e6, (f"tracked tree {total / 1e6:.1f} MB (runs/ {runs / 1e6:.1f} MB); the "
                                           "largest: " + ", ".join(f"{p.relative_to(ROOT)} {sizes[p] / 1e6:.1f} MB"
                                                                   for p in biggest))
