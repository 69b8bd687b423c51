"""What both trainers share: the run settings (:class:`RunConfig`, one name per setting, which both
trainers' ``TrainConfig`` extend), checkpoints written atomically and read back safely, RNG states,
and keyed randomness that makes a resumed run exact. The launcher is :mod:`mousefacelift.launch`.

Checkpoint layout (both trainers): ``<folder>/ckpt_{step:016d}.pt`` with ``folder =
cfg.checkpoint_dir``: GS-LRM's is its ``out_dir`` (FaceLift's layout); MVDiffusion's is
``<out_dir>/checkpoints``.

Every checkpoint is read with ``torch.load(weights_only=True)``: only tensors, plain containers
and numbers come out, so a crafted file in a run folder cannot run code. Saved states hold only
such types (hence :func:`rng_state`). Resuming takes the newest checkpoint that loads; a newer one
that is truncated or empty is set aside as ``<name>.corrupt`` with a warning naming it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import pickle
import random
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .configs import bounded, check_ranges, from_dict
from .tracking import TrackingConfig

log = logging.getLogger(__name__)

CKPT_GLOB = "ckpt_*.pt"
CORRUPT_SUFFIX = ".corrupt"
_STEP = re.compile(r"ckpt_(\d+)\.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


class CorruptCheckpointError(CheckpointError):
    """Truncated, empty or otherwise unreadable (e.g. a copy cut short or a disk that filled)."""


class UnsafeCheckpointError(CheckpointError):
    """Holds objects that only full unpickling builds, i.e. that could run code on load."""


# ----------------------------------------------------------------------------------------------
# The settings both trainers share
# ----------------------------------------------------------------------------------------------
PRECISIONS = ("bf16", "fp32")

# Names that earlier run folders' train_config.json (and hand-written configs) used: old -> new,
# with the translation of the value. Read configs are mapped with a warning naming the file.
OLD_NAMES = {
    "output_dir": ("out_dir", lambda v: v),                    # GS-LRM
    "init_checkpoint": ("init_from", lambda v: v),             # GS-LRM
    "bf16": ("precision", lambda v: "bf16" if v else "fp32"),  # GS-LRM (a bool)
    "keep_checkpoints": ("keep_last", lambda v: v),            # MVDiffusion
    "mixed_precision": ("precision", lambda v: {"no": "fp32"}.get(v, v)),  # MVDiffusion ("no" | "bf16")
}


@dataclass(kw_only=True)
class RunConfig:
    """The settings of a training run that GS-LRM's and MVDiffusion's ``TrainConfig`` share, one
    name each (keyword-only, so a trainer's own fields may be required). A trainer redeclares a
    field to give it its own default. ``type(cfg).__module__`` is the trainer's module: it defines
    ``train(cfg) -> summary dict`` and is what :func:`mousefacelift.launch.launch` runs under torchrun."""
    out_dir: str = ""                       # run folder: checkpoints, metrics.jsonl, train_config.json, summary.json
    init_from: str = ""                     # weights to start from (GS-LRM: a checkpoint file, MVDiffusion: a
    #                                         pipeline folder); "" = from scratch. Ignored when resuming
    steps: int = bounded(1000, min=1)       # length of the schedule (optimizer steps / forward-backward passes)
    stop_at_step: int = bounded(0, min=0)   # stop early (with a checkpoint) at this step; 0 = run to `steps`
    time_limit_s: float = bounded(0.0, min=0)  # stop cleanly (checkpoint, validation, export) once this many seconds
    #                                         of training have passed; the schedule stays that of `steps`. 0 = none
    seed: int = 0                           # seeds weights, data order, noise, augmentation
    device: str = "auto"                    # auto (cuda when present) | cpu | cuda | cuda:N (torchrun: the local rank's GPU)
    precision: str = "fp32"                 # bf16 (autocast on CUDA; the CPU always runs fp32) | fp32
    checkpoint_every: int = bounded(500, min=1)  # steps between checkpoints (one is also written at the end)
    keep_last: int = bounded(3, min=0)      # newest checkpoints kept (0 = all)
    resume: bool = True                     # continue from the newest checkpoint; False deletes an earlier run's
    log_every: int = bounded(10, min=1)     # steps between logged scalars
    cudnn_benchmark: bool = True            # CUDA: cuDNN times its convolution algorithms once per new shape and keeps
    #                                         the fastest (a training's shapes are fixed, so it pays from the next step)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self):
        check_ranges(self)
        if self.precision not in PRECISIONS:
            raise ValueError(f"{type(self).__name__}.precision {self.precision!r} is not one of {PRECISIONS}")
        if not self.out_dir:
            raise ValueError(f"{type(self).__module__}.{type(self).__name__}.out_dir is empty: set it to the run "
                             "folder of this training")

    @property
    def checkpoint_dir(self) -> Path:
        """Where this trainer's checkpoints go (GS-LRM: ``out_dir``, FaceLift's layout)."""
        return Path(self.out_dir)

    def autocast_bf16(self, device: torch.device) -> bool:
        """Whether to autocast to bf16 on ``device``: precision "bf16" on CUDA only."""
        return self.precision == "bf16" and device.type == "cuda"

    @classmethod
    def from_dict(cls, d: dict, where: str | None = None):
        """Nested dict (JSON/YAML) -> config, checked (:func:`mousefacelift.configs.from_dict`); the
        names of :data:`OLD_NAMES` are mapped to today's with a warning."""
        where = where or cls.__name__
        return from_dict(cls, upgrade_names(d, where), where)

    @classmethod
    def from_json(cls, path: str | os.PathLike):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} not found (the launcher writes it into the run folder)")
        return cls.from_dict(json.loads(path.read_text()), str(path))

    def to_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=1))
        return path


def upgrade_names(d: dict, where: str) -> dict:
    """``d`` with the settings of :data:`OLD_NAMES` under today's names (a warning per name).
    An old name given together with its new one is an error naming both."""
    out = dict(d)
    for old, (new, convert) in OLD_NAMES.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(f"{where}: both '{old}' (the old name) and '{new}' are set; keep only '{new}'")
        value = convert(out.pop(old))
        out[new] = value
        log.warning("%s: '%s' is now called '%s' (read as %s = %r)", where, old, new, new, value)
    return out


def resolve_device(knob: str, local_rank: int | None = None) -> torch.device:
    """The device of ``RunConfig.device``: "auto" = cuda when present, else cpu; under torchrun
    (``local_rank`` given) a CUDA device is the local rank's GPU."""
    if knob == "auto":
        knob = "cuda" if torch.cuda.is_available() else "cpu"
    if local_rank is not None and knob.startswith("cuda"):
        return torch.device("cuda", local_rank)
    return torch.device(knob)


def configure_backends(cfg: RunConfig, device: torch.device) -> None:
    """The process-wide backend settings a run asks for, on ``device``: on CUDA, cuDNN's algorithm
    search (``cfg.cudnn_benchmark``). Called by each trainer once its device is known."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark


# ----------------------------------------------------------------------------------------------
# Time budget
# ----------------------------------------------------------------------------------------------
def time_is_up(start: float, limit_s: float, distributed: bool = False) -> bool:
    """Whether ``limit_s`` seconds (0: no limit) have passed since ``start`` (``time.time()``). Under
    DDP every rank must call it at the same step: rank 0's clock decides for all (a broadcast)."""
    if not limit_s:
        return False
    up = time.time() - start > limit_s
    if distributed:
        import torch.distributed as dist

        flag = torch.tensor([float(up)], device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.broadcast(flag, src=0)
        up = bool(flag.item())
    return up


# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------
def checkpoint_name(step: int) -> str:
    return f"ckpt_{step:016d}.pt"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """``ckpt_<step>.pt`` files in ``folder``, oldest step first ([] when none or no folder)."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob(CKPT_GLOB) if (m := _STEP.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (None if there is none)."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: str | os.PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (0 keeps all)."""
    for old in list_checkpoints(folder)[:-keep_last] if keep_last > 0 else []:
        old.unlink()
        log.info("removed old checkpoint %s", old.name)


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save into ``<path>.tmp``, flushed to disk, then os.replace: a killed run or a full disk
    never leaves a half-written checkpoint under the final name.

    Any failure removes the temp file. One caused by an OSError (ENOSPC: disk full), which torch
    may wrap in a RuntimeError, is raised as an OSError with that errno whose message names the
    path and the free space left."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:  # a file object: torch's own writer hides the OSError of a full disk
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the new name points at it
        os.replace(tmp, path)
    except Exception as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        cause = _os_error_in(e)
        if cause is None:
            raise
        raise OSError(cause.errno, _save_failure(path, cause)) from e


def _os_error_in(e: BaseException | None) -> OSError | None:
    """The first OSError in ``e`` and its causes/contexts (torch reports a write that failed with
    ENOSPC as a RuntimeError raised while handling it)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _save_failure(path: Path, e: OSError) -> str:
    try:
        n = shutil.disk_usage(path.parent).free
        free = f"{n / 1e9:.1f} GB free there" if n >= 1e9 else f"{n / 1e6:.1f} MB free there"
    except OSError:
        free = "free space unknown"
    msg = f"could not write checkpoint {path} ({e.strerror or e}; {free}); no partial file was left"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        msg += (": the disk is full. Free space, keep fewer checkpoints (keep_last) or "
                "put the run folder on a larger disk, then run again: it resumes from the last checkpoint")
    return msg


def save_checkpoint(folder: str | os.PathLike, step: int, state: dict, keep_last: int) -> Path:
    """Write ``state`` atomically as ``<folder>/ckpt_<step>.pt`` and keep the newest ``keep_last``
    (0 = all). -> the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / checkpoint_name(step)
    atomic_save(state, path)
    prune_checkpoints(folder, keep_last)
    log.info("saved checkpoint %s", path)
    return path


def clear_checkpoints(folder: str | os.PathLike) -> None:
    """Delete the checkpoints of an earlier run in ``folder`` (``resume=False``: a fresh start must
    not keep stale higher-step checkpoints, which would outrank the new ones and be resumed from)."""
    old = list_checkpoints(folder)
    if old:
        log.warning("resume=False: deleting %d checkpoints of an earlier run in %s", len(old), folder)
    for p in old:
        p.unlink()


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """torch.load(weights_only=True) of a checkpoint dict. -> the dict.

    Raises FileNotFoundError for a missing file, UnsafeCheckpointError for a file holding objects
    that could run code, CorruptCheckpointError for a truncated/empty/garbled one, CheckpointError
    for a file that is not a dict."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; check the path")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            what = next((line.strip().split(". ")[0].rstrip(".") for line in str(e).splitlines()
                         if "GLOBAL" in line), "")  # torch's line naming the refused global
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it holds objects that only full unpickling builds, which can run "
                f"code ({what}). The project's trainers never write such files. If you trust its source, "
                "re-save its tensors as plain dicts elsewhere; otherwise delete it") from e
        raise CorruptCheckpointError(f"{path} is not a readable checkpoint (UnpicklingError: {e})") from e
    except OSError:
        raise
    except Exception as e:  # EOFError (empty), RuntimeError (zip cut short), KeyError (garbage), ...
        reason = str(e).split(". ")[0] or "no data"
        raise CorruptCheckpointError(f"{path} is truncated or corrupt ({type(e).__name__}: {reason}; "
                                     f"{path.stat().st_size} bytes)") from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint dict")
    return ckpt


def load_latest_checkpoint(folder: str | os.PathLike, map_location="cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint in ``folder`` that loads: -> (path, state), or None when there is none.

    A newer one that is truncated, empty or garbled is renamed ``<name>.corrupt`` (so that it is
    neither resumed from nor counted by pruning) with a warning naming it. An unsafe one raises
    UnsafeCheckpointError: the run folder holds a file that the trainers did not write. When every
    checkpoint is corrupt, CheckpointError names the folder."""
    folder = Path(folder)
    found = list_checkpoints(folder)
    bad = []
    for path in reversed(found):
        try:
            state = load_checkpoint(path, map_location)
        except FileNotFoundError:  # set aside meanwhile by another rank of this run
            continue
        except CorruptCheckpointError as e:
            bad.append(path)
            aside = path.with_name(path.name + CORRUPT_SUFFIX)
            try:
                os.replace(path, aside)
                where = f"set aside as {aside.name}"
            except FileNotFoundError:
                where = "already set aside"
            except OSError as err:
                where = f"could not be set aside ({err})"
            log.warning("skipping checkpoint %s; %s, looking for an older one", e, where)
            continue
        if bad:
            log.warning("resuming from %s instead of the newer corrupt %s", path, ", ".join(p.name for p in bad))
        return path, state
    if bad:
        raise CheckpointError(f"no readable checkpoint in {folder}: {', '.join(p.name for p in bad)} are all "
                              f"truncated or corrupt (set aside as *{CORRUPT_SUFFIX}); start over with resume off "
                              "or restore a checkpoint into that folder")
    return None


# ----------------------------------------------------------------------------------------------
# RNG states
# ----------------------------------------------------------------------------------------------
def rng_state() -> dict:
    """torch / numpy / python (/ cuda) RNG states as tensors and plain types (weights_only-loadable)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Keyed randomness
# ----------------------------------------------------------------------------------------------
def keyed_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from integer keys, e.g. (seed, step, rank, stream): the
    random numbers of one step of one process depend on nothing else, so a run resumed at any
    step draws exactly what the uninterrupted run drew. Keys are mixed so that nearby keys differ."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2 ** 63 - 1)
    return torch.Generator(device=device).manual_seed(seed)
