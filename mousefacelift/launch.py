"""Start a training run from a notebook, for either trainer: in this process, or as a subprocess
(under torchrun: DDP over several GPUs) whose log is streamed.

    summary = launch(cfg, launcher="torchrun", nproc_per_node=0)   # every GPU present

``cfg`` is a :class:`mousefacelift.training.RunConfig` (GS-LRM's or MVDiffusion's ``TrainConfig``).
What is model-specific is the trainer's module, ``type(cfg).__module__``: it defines
``train(cfg) -> summary dict`` and ``main(argv)`` (= :func:`main` with its config class), and the
config class reads and writes itself (``from_json`` / ``to_json``).

launchers:
- ``"inprocess"``: ``train(cfg)`` in this process (one device);
- ``"python"``: ``python -m <trainer module> --config <json>`` as one subprocess;
- ``"torchrun"``: ``python -m torch.distributed.run --standalone --nproc_per_node N -m <trainer
  module> --config <json>``: DDP over N processes, one per GPU (gloo on the CPU). N = 0 (or "all")
  is every GPU present (1 process on a machine without one).

Every launcher writes the resolved config to ``<out_dir>/train_config.json`` (provenance, and what
the subprocess reads), the log to ``<out_dir>/train.log`` (or ``log_path``) and returns the run's
``<out_dir>/summary.json`` (JSON types: lists, str keys). A subprocess's lines go to this module's
logger and to the log file as they come; its progress bar (carriage-return updates) at most every
``progress_every_s`` seconds. A failed subprocess raises with the tail of its log; an interrupted
launch (KeyboardInterrupt, or any exception while streaming) terminates the subprocess's whole
process group (torchrun and its workers), then kills it if it has not ended within a grace time.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

from .training import RunConfig

log = logging.getLogger(__name__)

LAUNCHERS = ("inprocess", "python", "torchrun")
CONFIG_FILE = "train_config.json"
LOG_FILE = "train.log"
SUMMARY_FILE = "summary.json"
TERMINATE_GRACE_S = 10.0  # seconds a terminated subprocess group gets before it is killed


def resolve_nproc(nproc_per_node: int | str) -> int:
    """Processes per node: 0 or "all" = every GPU present (1 without a GPU); else the number (>= 1)."""
    if nproc_per_node in (0, "all"):
        import torch

        return max(1, torch.cuda.device_count())
    if isinstance(nproc_per_node, bool) or not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ValueError(f"nproc_per_node={nproc_per_node!r}: give a number of processes >= 1, or 0 / 'all' for "
                         "every GPU present")
    return nproc_per_node


def command(module: str, config_path: str | os.PathLike, launcher: str, nproc_per_node: int = 1) -> list[str]:
    """The subprocess command line of ``launcher`` ("python" or "torchrun") running trainer ``module``."""
    run = ["-m", module, "--config", str(config_path)]
    if launcher == "python":
        return [sys.executable, *run]
    if launcher == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
                *run]
    raise ValueError(f"launcher {launcher!r} has no command; subprocess launchers are 'python' and 'torchrun'")


def split_stream(stream: io.TextIOBase):
    """Yield ``(text, is_progress)`` for each piece of ``stream`` (opened with ``newline=""``): a piece
    ended by a newline is a log line; one ended by a bare carriage return is a progress-bar update."""
    for piece in stream:
        if piece.endswith("\n"):
            yield piece.rstrip("\r\n"), False
        else:
            yield piece.rstrip("\r"), True


def write_summary(cfg: RunConfig, summary: dict) -> Path:
    """``<out_dir>/summary.json`` of a run (JSON types; ``losses`` keys become strings)."""
    path = Path(cfg.out_dir) / SUMMARY_FILE
    path.write_text(json.dumps(summary, indent=1))
    return path


def launch(cfg: RunConfig, launcher: str = "inprocess", nproc_per_node: int | str = 1, log_path: str = "",
           progress_every_s: float = 10.0, tail_lines: int = 40) -> dict:
    """Train (or resume) per ``cfg`` with ``launcher`` (see the module docstring) -> the summary dict
    that the trainer's ``train`` returned, as read back from ``<out_dir>/summary.json``.
    ``log_path`` "" = ``<out_dir>/train.log`` (appended to)."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r} is not one of {LAUNCHERS}")
    nproc = resolve_nproc(nproc_per_node)
    if nproc > 1 and launcher != "torchrun":
        raise ValueError(f"nproc_per_node={nproc_per_node} needs launcher='torchrun' (got {launcher!r})")
    module = type(cfg).__module__
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_path = cfg.to_json(out / CONFIG_FILE)
    summary_path = out / SUMMARY_FILE
    summary_path.unlink(missing_ok=True)  # a stale summary must not pass for this run's
    log_file = Path(log_path) if log_path else out / LOG_FILE
    log_file.parent.mkdir(parents=True, exist_ok=True)
    if launcher == "inprocess":
        _run_inprocess(cfg, importlib.import_module(module).train, log_file)
    else:
        _run_subprocess(command(module, config_path, launcher, nproc), config_path, log_file, progress_every_s,
                        tail_lines)
    if not summary_path.is_file():
        raise RuntimeError(f"training ended without writing {summary_path}; see the log {log_file}")
    return json.loads(summary_path.read_text())


def _run_inprocess(cfg: RunConfig, train, log_file: Path) -> None:
    """train(cfg) here and its summary written, with the package's log records also in ``log_file``."""
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
    """Run ``cmd`` in its own process group, forwarding its merged stdout/stderr to the logger and
    ``log_file`` line by line. Whatever ends the run, nothing of the group is left running: on an
    interruption the group is stopped (:func:`stop_group`); when ``cmd`` has exited but processes it
    started still hold its output open after ``TERMINATE_GRACE_S`` (a torchrun killed with its
    workers left behind), they are stopped; after a normal end any leftover is killed."""
    log.info("launching: %s", " ".join(cmd))
    tail: deque[str] = deque(maxlen=tail_lines)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    last_progress = 0.0
    pieces: queue.Queue = queue.Queue()
    with log_file.open("a") as sink, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                                      start_new_session=True) as proc:
        stream = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="")

        def pump():  # a thread, so that a child that exits while its own children hold the pipe is noticed
            try:
                for piece in split_stream(stream):
                    pieces.put(piece)
            except (OSError, ValueError):  # the pipe closed under us (stop_group)
                pass
            finally:
                pieces.put(None)
        threading.Thread(target=pump, daemon=True).start()
        exited_at = None
        try:
            while True:
                try:
                    piece = pieces.get(timeout=0.2)
                except queue.Empty:
                    if proc.poll() is not None:
                        exited_at = exited_at or time.monotonic()
                        if time.monotonic() - exited_at > TERMINATE_GRACE_S:
                            log.warning("the training subprocess exited (code %d) but processes it started still "
                                        "run: stopping them", proc.returncode)
                            stop_group(proc)
                            break
                    continue
                if piece is None:
                    break
                text, is_progress = piece
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
            proc.wait()
        finally:
            if proc.poll() is None:  # interrupted (e.g. the notebook was stopped): stop the run too
                log.warning("stopping the training subprocess (pid %d) and its workers", proc.pid)
                stop_group(proc)
            _kill_group(proc.pid, signal.SIGKILL)  # anything of the run still left (normally nothing)
    if proc.returncode != 0:
        raise RuntimeError(f"training failed (exit {proc.returncode}): {' '.join(cmd)}\nconfig {config_path}, "
                           f"full log {log_file}; last lines:\n" + "\n".join(tail))


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # no process of the group left
        pass


def stop_group(proc: subprocess.Popen, grace_s: float = TERMINATE_GRACE_S) -> None:
    """SIGTERM to ``proc``'s process group (it was started as a session leader: torchrun and every
    worker it spawned), SIGKILL to the group if ``proc`` has not ended after ``grace_s`` seconds."""
    _kill_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _kill_group(proc.pid, signal.SIGKILL)  # workers that outlived their parent, or a parent that ignored SIGTERM
    proc.wait()


def _short(summary: dict) -> dict:
    """The summary without its long lists (per-step losses, per-view rows), for the log."""
    def cut(d):
        return {k: v for k, v in d.items() if k not in ("losses", "per_view")}
    return {k: cut(v) if isinstance(v, dict) else v for k, v in cut(summary).items()}


def main(config_cls: type[RunConfig], train, argv: list[str] | None = None) -> int:
    """The subprocess entry of a trainer module (``python -m <module> --config <json>``, alone or
    under torchrun): read the config, ``train(cfg)``, write the summary on rank 0, tear the process
    group down together."""
    parser = argparse.ArgumentParser(description=f"Train per a {config_cls.__module__}.{config_cls.__name__} JSON")
    parser.add_argument("--config", required=True, help=f"JSON file with the fields of {config_cls.__name__}")
    args = parser.parse_args(argv)
    rank = int(os.environ.get("RANK", 0))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s")
    cfg = config_cls.from_json(args.config)
    summary = train(cfg)
    if rank == 0:
        write_summary(cfg, summary)
        log.info("done: %s", json.dumps(_short(summary), default=str))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()  # tear down together: a rank leaving while rank 0 still writes can abort in gloo
        dist.destroy_process_group()
    return 0


__all__ = ["LAUNCHERS", "CONFIG_FILE", "LOG_FILE", "SUMMARY_FILE", "resolve_nproc", "command", "split_stream",
           "write_summary", "launch", "stop_group", "main"]
