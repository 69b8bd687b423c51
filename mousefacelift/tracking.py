"""Experiment tracking: a thin wrapper over Weights & Biases.

W&B is optional at every level: it is imported only when a tracker is created with mode
"offline" or "online", never at import time (the GPU image has no wandb), and mode "disabled"
(the test default) does nothing at all. Every tracker also appends its scalars to a local
``metrics.jsonl`` so curves survive without W&B and notebooks can plot them.

Inside a run folder of `mfl run` (the nearest folder above ``run_dir`` with a ``manifest.json``),
the W&B run is named ``<mfl run name>/<name>`` (e.g. ``demo/gslrm``) and grouped by the mfl run
name, so the trainings of one `mfl run` sit together in W&B. Offline runs are written to
``<run_dir>/wandb/offline-run-*`` (e.g. ``runs/demo/gslrm/wandb/``); ``wandb sync`` uploads them.

    tracker = Tracker.create(TrackingConfig(mode="offline"), run_dir="gslrm", name="06", config=params)
    tracker.log({"loss": 0.1}, step=10)
    tracker.finish()
"""
from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MODES = ("disabled", "offline", "online")


@dataclass
class TrackingConfig:
    mode: str = "offline"            # disabled | offline | online (online syncs to wandb.ai)
    project: str = "mouse-facelift"  # W&B project name
    entity: str = ""                 # W&B entity (team); empty = your default

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"tracking mode {self.mode!r} is not one of {MODES}")


class Tracker:
    """Logs scalars to ``<run_dir>/metrics.jsonl`` and, unless disabled, to W&B."""

    def __init__(self, run_dir: str | os.PathLike, wandb_run=None, enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._wandb_run = wandb_run
        self._jsonl = self.run_dir / "metrics.jsonl"

    @staticmethod
    def mfl_run_name(run_dir: str | os.PathLike) -> str | None:
        """The name of the `mfl run` folder holding ``run_dir`` (the nearest folder at or above it
        with a manifest.json; its recorded name, else the folder's), or None outside run folders."""
        here = Path(run_dir).resolve()
        for folder in (here, *here.parents):
            manifest = folder / "manifest.json"
            if manifest.is_file():
                try:
                    return json.loads(manifest.read_text()).get("name") or folder.name
                except (OSError, ValueError):
                    return folder.name
        return None

    @classmethod
    def create(cls, config: TrackingConfig, run_dir: str | os.PathLike, name: str, params: dict | None = None,
               rank: int = 0) -> "Tracker":
        """A tracker for one training run; only rank 0 logs (other ranks get a silent one)."""
        run_dir = Path(run_dir)
        if rank != 0:
            return cls(run_dir, enabled=False)
        run_dir.mkdir(parents=True, exist_ok=True)
        wandb_run = None
        if config.mode != "disabled" and os.environ.get("WANDB_MODE") != "disabled":  # wandb's own off switch
            try:
                import wandb
            except ImportError:
                log.warning("wandb is not installed: logging to %s only", run_dir / "metrics.jsonl")
            else:
                group = cls.mfl_run_name(run_dir)
                wandb_run = wandb.init(project=config.project, entity=config.entity or None,
                                       name=f"{group}/{name}" if group else name, group=group, job_type=name,
                                       mode=config.mode, dir=str(run_dir), config=params or {},
                                       reinit="finish_previous")
                if config.mode == "offline":
                    log.info("W&B run %s is offline in %s; upload it with `wandb sync %s`",
                             wandb_run.name, run_dir / "wandb", run_dir / "wandb" / "offline-run-*")
        return cls(run_dir, wandb_run=wandb_run, enabled=True)

    def log(self, scalars: dict, step: int) -> None:
        if not self.enabled:
            return
        row = {"step": int(step)}
        for k, v in scalars.items():
            v = float(v)
            row[k] = v if math.isfinite(v) else str(v)
        with self._jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._wandb_run is not None:
            self._wandb_run.log(scalars, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop logged rows past ``step`` (call on resume, so a killed run's tail is not doubled)."""
        if self.enabled and self._jsonl.is_file():
            rows = [r for r in read_metrics(self._jsonl) if r["step"] <= step]
            self._jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def finish(self) -> None:
        if self._wandb_run is not None:
            self._wandb_run.finish()
            self._wandb_run = None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """Rows of a ``metrics.jsonl`` written by :class:`Tracker` (for plotting in notebooks)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
