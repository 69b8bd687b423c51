"""Small pretrained weights that a run fine-tunes from, the way FaceLift's users start from its
released checkpoints: exported from a GPU run folder into a compact bf16 folder with its provenance,
and checked before use.

Layout of an exported folder (the repository ships ``weights/demo``)::

    mvdiffusion/        the pipeline folder that ``MVDiffusionPipeline.from_pretrained`` reads
                        (model_index.json, unet/config.json + bf16 safetensors, scheduler/)
    gslrm.safetensors   GS-LRM's state dict in bf16; its metadata holds "config" (json of
                        GSLRMConfig) and "step": ``gslrm.model.read_checkpoint`` reads it like a .pt
    provenance.json     commit, params, recording (procedural config and hash), training summary
                        (steps, objects seen, final validation), sha256 and size of every file

Weights are stored in bf16 (half the bytes of fp32) and loaded back as fp32 for training, so a
fine-tune on the CPU starts from the stored values exactly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import torch

log = logging.getLogger(__name__)

PROVENANCE = "provenance.json"
GSLRM_FILE = "gslrm.safetensors"
MVDIFFUSION_DIR = "mvdiffusion"
FORMAT = "mousefacelift-pretrained-1"


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_gslrm(state: dict[str, torch.Tensor], config: dict, path: str | os.PathLike, step: int,
               dtype: torch.dtype = torch.bfloat16) -> Path:
    """A GS-LRM state dict -> one safetensors file (floating tensors cast to ``dtype``), its config
    and step in the metadata. ``loss_calculator.*`` keys (a frozen loss network) are left out."""
    from safetensors.torch import save_file

    from .gslrm.model import IGNORED_PREFIXES

    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu()
               for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": FORMAT, "config": json.dumps(config, sort_keys=True),
                                            "step": str(step)})
    return path


def read_gslrm(path: str | os.PathLike) -> dict:
    """A file written by :func:`save_gslrm` -> a checkpoint dict like the trainer's: {"model": fp32
    state, "config": dict, "fwdbwd_pass_step": int}."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(f"{path}: not a GS-LRM weights file of this project (metadata {sorted(meta)}; expected "
                         f"format {FORMAT!r} with a config): export one with `mfl weights export`")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    return {"model": state, "config": json.loads(meta["config"]), "fwdbwd_pass_step": int(meta.get("step", 0))}


def save_mvdiffusion(pipeline_dir: str | os.PathLike, dest: str | os.PathLike,
                     dtype: torch.dtype = torch.bfloat16) -> Path:
    """Copy notebook 04's pipeline folder with its UNet weights cast to ``dtype`` (a pixel-space
    pipeline: the UNet is all its weights)."""
    from .mvdiffusion.pipeline import MVDiffusionPipeline

    pipe = MVDiffusionPipeline.from_pretrained(pipeline_dir)
    if pipe.codec.kind != "pixel":
        raise ValueError(f"{pipeline_dir}: a latent-space pipeline (with a VAE) is too large to ship; export the "
                         "pixel-space pipeline of a small run")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    pipe.model.to(dtype)
    pipe.save_pretrained(dest)
    return dest


def export(run_dir: str | os.PathLike, dest: str | os.PathLike, gslrm_run: str | os.PathLike | None = None,
           mvdiffusion_run: str | os.PathLike | None = None) -> dict:
    """A run folder that ran notebooks 04 and 06 (on notebook 01's samples, its own or those of its
    ``--from-run``) -> ``dest`` in the layout above; returns the provenance written. ``gslrm_run`` /
    ``mvdiffusion_run`` take that model from another run folder (e.g. a variant trained beside it).
    Missing parts raise naming the file and the notebook that writes it."""
    from .gslrm.model import read_checkpoint
    from .training import latest_checkpoint

    runs = {"gslrm": Path(gslrm_run or run_dir), "mvdiffusion": Path(mvdiffusion_run or run_dir)}
    need = {runs["mvdiffusion"] / "mvdiffusion" / "pipeline" / "model_index.json": "notebook 04 (run to its last step)",
            runs["mvdiffusion"] / "mvdiffusion" / "summary.json": "notebook 04",
            runs["gslrm"] / "gslrm" / "summary.json": "notebook 06"}
    need.update({r / "manifest.json": "mfl run" for r in runs.values()})
    missing = [f"{p} ({who})" for p, who in need.items() if not p.is_file()]
    ckpt_path = latest_checkpoint(runs["gslrm"] / "gslrm")
    if ckpt_path is None:
        missing.append(f"{runs['gslrm'] / 'gslrm'}/ckpt_*.pt (notebook 06)")
    if missing:
        raise FileNotFoundError(f"cannot export weights; missing: {', '.join(missing)}")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for stale in (dest / GSLRM_FILE, dest / PROVENANCE):
        stale.unlink(missing_ok=True)
    ckpt = read_checkpoint(ckpt_path)
    save_gslrm(ckpt["model"], ckpt["config"], dest / GSLRM_FILE, int(ckpt.get("fwdbwd_pass_step", 0)))
    save_mvdiffusion(runs["mvdiffusion"] / "mvdiffusion" / "pipeline", dest / MVDIFFUSION_DIR)
    provenance = {"format": FORMAT, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    for part, folder in runs.items():
        provenance[part] = {**_run_record(folder), **_training_summary(folder / part)}
    provenance["gslrm"]["model_config"] = ckpt["config"]
    provenance = portable(provenance)
    provenance["files"] = {str(p.relative_to(dest)): {"sha256": sha256(p), "bytes": p.stat().st_size}
                           for p in sorted(dest.rglob("*")) if p.is_file() and p.name != PROVENANCE}
    (dest / PROVENANCE).write_text(json.dumps(provenance, indent=1, default=str) + "\n")
    log.info("exported -> %s (%.1f MB)", dest, total_bytes(dest) / 1e6)
    return provenance


def portable(obj):
    """``obj`` (JSON types) with every absolute path string replaced by its file name: a provenance
    file travels with the weights, the machine's folders do not."""
    if isinstance(obj, dict):
        return {k: portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable(v) for v in obj]
    if isinstance(obj, str) and obj.startswith("/") and "\n" not in obj:
        return Path(obj).name
    return obj


def _run_record(run_dir: Path) -> dict:
    """Where a model came from: the run (commit, params, machine) and its training data (notebook
    01's extraction record, in the run or in the run it read its inputs from)."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    extraction_path = run_dir / "data" / "extraction.json"
    if not extraction_path.is_file() and manifest.get("from_run"):
        extraction_path = run_dir / manifest["from_run"] / "data" / "extraction.json"  # relative (older runs: absolute)
    if not extraction_path.is_file():
        raise FileNotFoundError(f"{extraction_path} not found: the training data of {run_dir} is unknown (run "
                                "notebook 01 in it, or pass the run folder that did)")
    summary = json.loads(extraction_path.read_text())["summary"]
    recording = Path(summary["recording"])
    rec_params = recording / "ground_truth" / "params.json"
    rec = json.loads(rec_params.read_text()) if rec_params.is_file() else {}
    return {"run": run_dir.name, "git_commit": manifest.get("git_commit"), "git_dirty": manifest.get("git_dirty"),
            "params_file": Path(manifest.get("params_file") or "").name, "params": manifest.get("params"),
            "device": manifest.get("device"),
            "recording": {"name": recording.name, "config_hash": rec.get("config_hash"), "config": rec.get("config")},
            "data": {k: summary.get(k) for k in ("n_written", "split_sizes")}}


def _training_summary(folder: Path) -> dict:
    """What provenance keeps of a trainer's summary.json and train_config.json."""
    summary = json.loads((folder / "summary.json").read_text())
    cfg_path = folder / "train_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
    keep = {k: summary.get(k) for k in ("step", "seconds", "applied_step_ratio", "step_seconds_median")
            if k in summary}
    val = summary.get("val")
    if isinstance(val, list):  # MVDiffusion: one entry per validation
        val = val[-1] if val else None
    if isinstance(val, dict):
        keep["val"] = {k: v for k, v in val.items() if isinstance(v, (int, float))}
    batch, world = cfg.get("batch_size"), summary.get("world_size", 1)
    if batch and keep.get("step"):
        keep["objects_seen"] = int(keep["step"]) * int(batch) * int(world or 1)
    keep["train_config"] = {k: cfg.get(k) for k in ("steps", "batch_size", "lr", "warmup_steps", "precision", "seed")
                            if k in cfg}
    return keep


def total_bytes(folder: str | os.PathLike) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def check(folder: str | os.PathLike) -> dict:
    """Read ``folder/provenance.json`` and verify every file it lists (present, same sha256) and that
    nothing else sits beside them -> the provenance. A mismatch raises naming the file."""
    folder = Path(folder)
    prov_path = folder / PROVENANCE
    if not prov_path.is_file():
        raise FileNotFoundError(f"{prov_path} not found: {folder} is not an exported weights folder "
                                "(`mfl weights export RUN DEST` writes one)")
    prov = json.loads(prov_path.read_text())
    if prov.get("format") != FORMAT:
        raise ValueError(f"{prov_path}: format {prov.get('format')!r}, expected {FORMAT!r}")
    listed = prov.get("files", {})
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != PROVENANCE}
    problems = [f"{name}: missing" for name in sorted(set(listed) - present)]
    problems += [f"{name}: not listed in {PROVENANCE}" for name in sorted(present - set(listed))]
    problems += [f"{name}: sha256 differs from {PROVENANCE} (changed after export?)" for name in sorted(set(listed) & present)
                 if sha256(folder / name) != listed[name]["sha256"]]
    if problems:
        raise ValueError(f"{folder}: weights do not match their provenance: " + "; ".join(problems))
    return prov


def describe(folder: str | os.PathLike) -> str:
    """One paragraph for a notebook or the console: what these weights are and how they were made."""
    prov = check(folder)
    g, m = prov["gslrm"], prov["mvdiffusion"]
    gv, mv = g.get("val", {}), m.get("val", {})
    gc = g.get("model_config", {})
    return (f"{folder}: {total_bytes(folder) / 1e6:.1f} MB, trained on recording {g['recording'].get('name')} "
            f"(commit {str(g.get('git_commit'))[:10]}, {g.get('params_file')}). "
            f"GS-LRM {gc.get('layers')} x {gc.get('width')} at {gc.get('image_size')} px, {g.get('step')} steps "
            f"({g.get('objects_seen')} objects): val PSNR_fg {gv.get('psnr_fg', float('nan')):.2f} dB, IoU "
            f"{gv.get('mask_iou', float('nan')):.3f}. MVDiffusion {m.get('step')} steps ({m.get('objects_seen')} objects): "
            f"val PSNR_fg {mv.get('psnr_fg', float('nan')):.2f} dB, IoU {mv.get('mask_iou', float('nan')):.3f}.")


__all__ = ["export", "check", "describe", "save_gslrm", "read_gslrm", "save_mvdiffusion", "sha256", "total_bytes",
           "PROVENANCE", "GSLRM_FILE", "MVDIFFUSION_DIR"]
