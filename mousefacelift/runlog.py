"""What `mfl run` shows and what it keeps: one status line per notebook on the console, each
notebook's full cell log in ``runs/<name>/logs/NN_name.log``, and the headline of its results.

    [3/7] 04_mvdiffusion_finetune ... ok in 95.2 s, about 3 min left: test_psnr_fg=8.21, test_mask_iou=0.44

The time left is the sum of the last recorded durations of the notebooks still to run (the newest
ok run of each with a params file of the same name under the runs folder); when one of them has
never run, the line gives the time elapsed instead. ``-v`` (verbose) echoes the cell log on the
console as well. Progress bars inside the executed notebooks are collapsed by nbclient itself
(``coalesce_streams``, see :data:`EXECUTE_OPTIONS`).
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

LOGS_DIR = "logs"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def execute_options(kernel_log: Path | None = None) -> dict:
    """Keyword arguments for papermill's nbclient engine:

    - ``coalesce_streams``: at the end of each cell, nbclient merges its stdout pieces into one
      output and its stderr pieces into one, and applies carriage returns and backspaces the way a
      terminal shows them, so a tqdm bar keeps only its final line per bar instead of one line
      per refresh;
    - the kernel talks over local sockets (IPC) instead of TCP on the loopback interface, which is
      both private and the reason ipykernel stops warning that TCP traffic is unencrypted (TCP
      remains on systems without Unix sockets, or where Jupyter's runtime folder has too long a
      path for one);
    - with ``kernel_log``, the kernel process's own stdout and stderr (its infrastructure log, e.g.
      "KeyboardInterrupt caught in kernel" when jupyter_client interrupts it on shutdown, and
      anything written below Python) are appended to that file instead of the console. Cell
      outputs are not among them: they travel as messages into the notebook and the cell log."""
    from jupyter_core.paths import jupyter_runtime_dir
    from traitlets.config import Config

    options: dict = {"coalesce_streams": True}
    # the sockets are files beside the connection file: <runtime dir>/kernel-<uuid>-ipc-<n>, and a
    # socket path may have about 100 characters (104 on macOS, 108 on Linux)
    if os.name == "posix" and len(jupyter_runtime_dir()) + 50 < 100:
        options["config"] = Config({"KernelManager": {"transport": "ipc"}})
    if kernel_log is not None:
        # absolute: papermill changes the working directory to the run folder before the kernel starts
        options["kernel_manager_class"] = _kernel_manager_writing_to(Path(kernel_log).absolute())
    return options


def _kernel_manager_writing_to(path: Path):
    """nbclient's kernel manager class, starting the kernel with stdout and stderr appended to ``path``."""
    from jupyter_client.manager import AsyncKernelManager

    class KernelManagerWritingToLog(AsyncKernelManager):
        async def start_kernel(self, **kw):
            self._kernel_log = path.open("a", encoding="utf-8")  # open while the kernel may be (re)started
            return await super().start_kernel(**{"stdout": self._kernel_log, "stderr": self._kernel_log, **kw})

        async def cleanup_resources(self, restart: bool = False) -> None:
            await super().cleanup_resources(restart=restart)
            if not restart and getattr(self, "_kernel_log", None) is not None:
                self._kernel_log.close()

    return KernelManagerWritingToLog


def log_path(run_dir: Path, stem: str) -> Path:
    return Path(run_dir) / LOGS_DIR / f"{stem}.log"


@contextmanager
def capture(path: Path, verbose: bool = False):
    """Write papermill's cell log (every cell's start and end, its stdout as INFO, its stderr as
    WARNING) and this process's warnings to ``path`` while the block runs; the console sees the
    cell log only when ``verbose``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")  # then appended to, by this handler and by the kernel (execute_options)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root, pm_log = logging.getLogger(), logging.getLogger("papermill")
    saved = pm_log.level, pm_log.propagate
    pm_log.setLevel(logging.INFO)
    root.addHandler(handler)
    if not verbose:  # the cell log goes to the file alone
        pm_log.propagate = False
        pm_log.addHandler(handler)
    try:
        yield path
    finally:
        pm_log.removeHandler(handler)
        root.removeHandler(handler)
        pm_log.setLevel(saved[0])
        pm_log.propagate = saved[1]
        handler.close()


def previous_durations(runs_root: Path, params_name: str, skip: Path | None = None) -> dict[str, float]:
    """{notebook: seconds} of the newest successful execution of each notebook in the run folders
    under ``runs_root`` made with a params file named ``params_name`` (e.g. demo.yaml)."""
    found: dict[str, tuple[str, float]] = {}
    for manifest in Path(runs_root).glob("*/manifest.json"):
        try:
            man = json.loads(manifest.read_text())
        except (OSError, ValueError):
            continue
        if Path(str(man.get("params_file", ""))).name != params_name:
            continue
        for stem, entry in man.get("notebooks", {}).items():
            if isinstance(entry, dict) and entry.get("status") == "ok" and entry.get("duration_s"):
                ended = str(entry.get("ended", ""))
                if stem not in found or ended > found[stem][0]:
                    found[stem] = (ended, float(entry["duration_s"]))
    return {stem: seconds for stem, (_, seconds) in found.items()}


def format_seconds(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


HEADLINE_KEYS = ("psnr_fg", "ssim_fg", "mask_iou", "n_written", "reprojection_mean_px", "centre_within_5mm")


def headline(entry: dict, params: dict | None = None) -> dict:
    """{key: value} of a notebook's headline: the keys its ``record_results(..., headline=...)``
    declared. For runs recorded before notebooks declared one: the protocol's primary numbers
    among its results, else its other numbers, never one that is a parameter of the notebook
    (``params``, as in the manifest) or a baseline."""
    if "headline" in entry:
        return entry["headline"]
    params = params or {}
    nums = {k: v for k, v in entry.get("results", {}).items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k not in params and "baseline" not in k}
    primary = [k for k in nums if k in HEADLINE_KEYS or k.endswith(tuple("_" + h for h in HEADLINE_KEYS))]
    order = sorted(primary, key=lambda k: [h in k for h in HEADLINE_KEYS].index(True)) + \
        [k for k in nums if k not in primary]
    return {k: nums[k] for k in order[:4]}


def format_headline(headline: dict, limit: int = 4) -> str:
    """``key=value, ...`` of a notebook's declared headline results (numbers to 4 significant digits)."""
    parts = []
    for key, value in list(headline.items())[:limit]:
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, dict):  # e.g. {n_inputs: psnr}: the entries in order
            value = "/".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value.values())
        parts.append(f"{key}={value}")
    return ", ".join(parts)


class Console:
    """The status lines of one `mfl run`: ``[i/n] stem ... outcome`` per notebook."""

    def __init__(self, stems: list[str], estimates: dict[str, float] | None = None, verbose: bool = False,
                 stream: TextIO | None = None):
        self.stems, self.estimates, self.verbose = stems, estimates or {}, verbose
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()

    def _prefix(self, stem: str) -> str:
        return f"[{self.stems.index(stem) + 1}/{len(self.stems)}] {stem}"

    def start(self, stem: str) -> None:
        last = self.estimates.get(stem)
        text = f"{self._prefix(stem)}{f' (last time {format_seconds(last)})' if last else ''} ... "
        if self.verbose:  # the cell log follows: the outcome gets a line of its own
            print(text, file=self.stream, flush=True)
        else:
            print(text, end="", file=self.stream, flush=True)

    def left(self, stem: str) -> str:
        """'about X left' after ``stem`` from the recorded durations, or the time elapsed when a
        notebook still to run has none."""
        rest = self.stems[self.stems.index(stem) + 1:]
        if not rest:
            return f"{format_seconds(time.perf_counter() - self.t0)} in all"
        if all(s in self.estimates for s in rest):
            return f"about {format_seconds(sum(self.estimates[s] for s in rest))} left"
        return f"{format_seconds(time.perf_counter() - self.t0)} elapsed"

    def end(self, stem: str, entry: dict, log_file: Path) -> None:
        seconds = format_seconds(entry.get("duration_s", 0.0))
        lead = f"{self._prefix(stem)} " if self.verbose else ""
        if entry.get("status") == "ok":
            head = format_headline(entry.get("headline", {}))
            text = f"{lead}ok in {seconds}, {self.left(stem)}{': ' + head if head else ''}"
        else:
            text = f"{lead}FAILED after {seconds}: {entry.get('error', '')} (cell log: {log_file})"
        print(text, file=self.stream, flush=True)
