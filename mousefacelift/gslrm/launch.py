"""Start GS-LRM training from a notebook: in this process, or as a subprocess whose log is streamed.

    summary = launch(cfg, launcher="torchrun", nproc_per_node=4)

launchers:
- ``"inprocess"``: :func:`mousefacelift.gslrm.train.train` in this process (one device);
- ``"python"``: ``python -m mousefacelift.gslrm.train --config <json>`` as a subprocess;
- ``"torchrun"``: ``python -m torch.distributed.run --standalone --nproc_per_node N -m
  mousefacelift.gslrm.train --config <json>`` (DDP over N processes, one per GPU; gloo on CPU).

Every launcher writes the resolved config to ``<output_dir>/train_config.json`` (provenance, and
what the subprocess reads), the log to ``<output_dir>/train.log`` (or ``log_path``) and returns the
run's ``summary.json``. A subprocess's lines are forwarded to this module's logger as they come;
its progress bar (carriage-return updates) is forwarded at most every ``progress_every_s`` seconds.
A failed subprocess raises with the tail of its log.
"""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import asdict
from pathlib import Path

from .train import SUMMARY_FILE, TrainConfig, train, write_summary

log = logging.getLogger(__name__)

LAUNCHERS = ("inprocess", "python", "torchrun")
CONFIG_FILE = "train_config.json"
LOG_FILE = "train.log"


def command(config_path: str | os.PathLike, launcher: str, nproc_per_node: int = 1) -> list[str]:
    """The subprocess command line of ``launcher`` ("python" or "torchrun"), with this interpreter."""
    module = ["-m", "mousefacelift.gslrm.train", "--config", str(config_path)]
    if launcher == "python":
        return [sys.executable, *module]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
                *module]
    raise ValueError(f"launcher {launcher!r} has no command; subprocess launchers are 'python' and 'torchrun'")


def split_stream(stream: io.TextIOBase):
    """Yield ``(text, is_progress)`` for each piece of ``stream`` (opened with ``newline=""``): a piece
    ended by a newline is a log line; one ended by a bare carriage return is a progress-bar update."""
    for piece in stream:
        if piece.endswith("\n"):
            yield piece.rstrip("\r\n"), False
        else:
            yield piece.rstrip("\r"), True


def launch(cfg: TrainConfig, launcher: str = "inprocess", nproc_per_node: int = 1, log_path: str = "",
           progress_every_s: float = 10.0, tail_lines: int = 40) -> dict:
    """Train (or resume) per ``cfg`` with ``launcher`` (see the module docstring) -> the summary dict
    of :func:`mousefacelift.gslrm.train.train` as written to ``<output_dir>/summary.json`` (JSON
    types: lists, str keys). ``log_path`` "" = ``<output_dir>/train.log`` (appended to)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} is not one of {LAUNCHERS}")
    if nproc_per_node < 1 or (nproc_per_node > 1 and launcher != "torchrun"):
        raise ValueError(f"nproc_per_node={nproc_per_node} needs launcher='torchrun' (got {launcher!r}) and must be >= 1")
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / CONFIG_FILE
    config_path.write_text(json.dumps(asdict(cfg), indent=1))
    summary_path = out / SUMMARY_FILE
    summary_path.unlink(missing_ok=True)  # a stale summary must not pass for this run's
    log_file = Path(log_path) if log_path else out / LOG_FILE
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if launcher == "inprocess":
        _run_inprocess(cfg, log_file)
    else:
        _run_subprocess(command(config_path, launcher, nproc_per_node), config_path, log_file, progress_every_s,
                        tail_lines)
    if not summary_path.is_file():
        raise RuntimeError(f"training ended without writing {summary_path}; see the log {log_file}")
    return json.loads(summary_path.read_text())


def _run_inprocess(cfg: TrainConfig, log_file: Path) -> None:
    """train(cfg) here, with the package's log records also written to ``log_file``."""
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package = logging.getLogger("mousefacelift")
    level = package.level
    if package.getEffectiveLevel() > logging.INFO:  # the log file gets INFO records whatever the caller set
        package.setLevel(logging.INFO)
    package.addHandler(handler)
    try:
        write_summary(cfg, train(cfg))
    except Exception:
        package.exception("training failed")
        raise
    finally:
        package.removeHandler(handler)
        package.setLevel(level)
        handler.close()


def _run_subprocess(cmd: list[str], config_path: Path, log_file: Path, progress_every_s: float,
                    tail_lines: int) -> None:
    """Run ``cmd``, forwarding its merged stdout/stderr to the logger and ``log_file``."""
    log.info("launching: %s", " ".join(cmd))
    tail: deque[str] = deque(maxlen=tail_lines)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    last_progress = 0.0
    with log_file.open("a") as sink, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      env=env) as proc:
        try:
            stream = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="")
            for text, is_progress in split_stream(stream):
                if not text.strip():
                    continue
                if is_progress:  # a progress-bar update: forward the latest one now and then
                    if time.monotonic() - last_progress < progress_every_s:
                        continue
                    last_progress = time.monotonic()
                tail.append(text)
                sink.write(text + "\n")
                sink.flush()
                log.info("[train] %s", text)
        finally:
            if proc.poll() is None:  # interrupted (e.g. the notebook was stopped): stop the run too
                proc.terminate()
            proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"GS-LRM training failed (exit {proc.returncode}): {' '.join(cmd)}\nconfig {config_path}, "
                           f"full log {log_file}; last lines:\n" + "\n".join(tail))


__all__ = ["LAUNCHERS", "CONFIG_FILE", "LOG_FILE", "command", "split_stream", "launch"]
