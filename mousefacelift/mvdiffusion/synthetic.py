"""Synthetic samples (notebook 05): every view of a sample generated from its reference view.

Layout, mirroring notebook 01's ``data/`` so that a consumer only swaps the data root:
```
data/synthetic/                      out_root (a data root)
  samples/sample_XXXXXX/             the sample format (mousefacelift.data.samples), at the
                                     model resolution, with provenance
  splits/train.txt                   the samples written, relative to data/synthetic/
```
A synthetic sample keeps the source's relative path (``samples/sample_000123``), its w2c exactly,
and its K scaled to the model resolution: the cameras the model was conditioned on.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..configs import bounded, check_ranges
from ..data import samples as samples_io
from .pipeline import MVDiffusionPipeline, SamplerConfig, composite, resize_views
from .quality import WHITE, generated_rows, rows_summary

log = logging.getLogger(__name__)


@dataclass
class SyntheticConfig:
    batch_size: int = bounded(8, min=1)     # objects per pipeline call
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    seed: int = 0                           # the object at line i of the split uses seed + i
    keep_reference: bool = True             # write the real (resized) reference image for the reference view
    device: str = "cpu"                     # where the model runs
    overwrite: bool = False                 # regenerate samples that are already complete
    max_samples: int = bounded(0, min=0)    # first N samples of the split; 0 = all

    def __post_init__(self):
        check_ranges(self)


def generate_synthetic(checkpoint_dir: str | os.PathLike, data_root: str | os.PathLike,
                       split_file: str | os.PathLike, out_root: str | os.PathLike, config: SyntheticConfig) -> dict:
    """For every sample of the split (paths relative to ``data_root``), generate all its views from
    its reference view and write them to ``out_root / <same relative path>`` with
    ``samples.write_sample`` at the model resolution, with exactly the cameras the model was
    conditioned on (the sample's w2c; K scaled to the model resolution) and provenance; then write
    ``out_root/splits/<split file name>``. Resumable: complete output samples are skipped.
    -> {"written", "skipped", "names", "out_root", "split_file", "image_size", "reference_view", "seconds"}."""
    from tqdm.auto import tqdm

    t0 = time.time()
    pipe = MVDiffusionPipeline.from_pretrained(checkpoint_dir).to(torch.device(config.device))
    pipe.model.eval()
    S, ref_v = pipe.image_size, pipe.model.config.reference_view
    names = samples_io.read_split(split_file)
    if config.max_samples > 0:
        names = names[:config.max_samples]
    data_root, out_root = Path(data_root), Path(out_root)
    todo = [(i, n) for i, n in enumerate(names) if config.overwrite or not samples_io.is_complete(out_root / n)]
    cfg = config.sampler
    # 1. generate in batches of objects; 2. write each sample atomically (a killed run resumes)
    for start in tqdm(range(0, len(todo), config.batch_size), desc="synthetic samples", unit="batch"):
        batch = todo[start:start + config.batch_size]
        src = [samples_io.read_sample(data_root / n) for _, n in batch]
        if len({s.images.shape for s in src}) != 1:
            raise ValueError(f"samples {[n for _, n in batch]} differ in view count or size; use batch_size 1")
        imgs, K = resize_views(torch.stack([s.images for s in src]), torch.stack([s.K for s in src]), S)
        w2c = torch.stack([s.w2c for s in src])
        gens = [torch.Generator().manual_seed(config.seed + i) for i, _ in batch]
        views = pipe(imgs[:, ref_v], w2c[:, ref_v], w2c, K, cfg, generator=gens).cpu()
        if config.keep_reference:
            views[:, ref_v] = composite(imgs[:, ref_v], cfg.background)
        for j, ((i, name), s) in enumerate(zip(batch, src)):
            prov = {"generator": "mvdiffusion", "source_sample": str(data_root / name), "source_split": str(split_file),
                    "source_provenance": s.provenance, "checkpoint": str(checkpoint_dir),
                    "seed": config.seed + i, "sampler": cfg.sampler, "steps": cfg.steps, "eta": cfg.eta,
                    "guidance_scale": cfg.guidance_scale, "bf16": cfg.bf16, "background": list(cfg.background),
                    "reference_view": ref_v, "keep_reference": config.keep_reference, "image_size": S}
            rgba = (views[j].permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype("uint8")
            samples_io.write_sample(out_root / name, rgba, w2c[j], K[j], s.view_ids, prov)
    # 3. the split of the synthetic data root
    split_out = out_root / "splits" / Path(split_file).name
    samples_io.write_split(split_out, names)
    log.info("synthetic: wrote %d samples, skipped %d complete ones, into %s (split %s)", len(todo),
             len(names) - len(todo), out_root, split_out)
    return {"written": len(todo), "skipped": len(names) - len(todo), "names": names, "out_root": str(out_root),
            "split_file": str(split_out), "image_size": S, "reference_view": ref_v, "seconds": time.time() - t0}


def compare_synthetic(data_root: str | os.PathLike, synthetic_root: str | os.PathLike, names: list[str],
                      n_grids: int = 0, read_threads: int = 8) -> dict:
    """Synthetic samples vs their sources: protocol metrics of the generated (non-reference) views
    against the real views resized to the synthetic resolution, and how far the cameras are from
    the source's (w2c exactly; K scaled to the synthetic resolution).

    -> {"psnr_fg", "mask_iou", "ssim_fg", "psnr_full": means over generated views, "n_samples",
    "n_views", "per_view": one dict per (sample, view), "w2c_max_abs_diff", "K_max_abs_diff",
    "grids": for the first ``n_grids`` samples (reference [4, S, S], synthetic [V, 4, S, S],
    real [V, 4, S, S]) on white}. ``read_threads`` threads read the samples ahead, in order."""
    data_root, synthetic_root = Path(data_root), Path(synthetic_root)
    rows, grids, w2c_diff, K_diff = [], [], 0.0, 0.0

    def read(name: str):
        return samples_io.read_sample(synthetic_root / name), samples_io.read_sample(data_root / name)

    threads = max(1, read_threads)
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PNG decoding releases the GIL
        ahead = deque(pool.submit(read, n) for n in names[:2 * threads])  # at most 2 x threads samples in memory
        for i, name in enumerate(names):
            syn, src = ahead.popleft().result()
            if i + 2 * threads < len(names):
                ahead.append(pool.submit(read, names[i + 2 * threads]))
            sample_rows, grid, w2c_d, K_d = _compare_one(name, syn, src, synthetic_root, len(grids) < n_grids)
            rows += sample_rows
            grids += grid
            w2c_diff, K_diff = max(w2c_diff, w2c_d), max(K_diff, K_d)
    return {**rows_summary(rows), "n_samples": len(names), "n_views": len(rows), "per_view": rows,
            "w2c_max_abs_diff": w2c_diff, "K_max_abs_diff": K_diff, "grids": grids}


def _compare_one(name: str, syn, src, synthetic_root: Path, grid: bool) -> tuple[list[dict], list, float, float]:
    """One synthetic sample against its source: (its rows, [its grid] when ``grid``, max |w2c difference|,
    max |K difference|)."""
    if syn.view_ids != src.view_ids:
        raise ValueError(f"{synthetic_root / name}: views {syn.view_ids} differ from the source's {src.view_ids}; "
                         "regenerate it (notebook 05 with overwrite = True)")
    S = syn.images.shape[-1]
    real, K = resize_views(src.images, src.K, S)
    background = tuple(syn.provenance.get("background", WHITE))
    if background != WHITE:
        log.warning("%s was generated on background %s; PSNR_full assumes white", name, background)
    real = composite(real, WHITE)
    ref_v = int(syn.provenance.get("reference_view", 0))
    rows = [{**r, "view": r["target_view"]} for r in generated_rows(
        syn.images, real, ref_v, name, list(syn.view_ids), "synthetic", syn.provenance.get("frame_index", -1))]
    return (rows, [(real[ref_v], syn.images, real)] if grid else [], (syn.w2c - src.w2c).abs().max().item(),
            (syn.K - K).abs().max().item())


__all__ = ["SyntheticConfig", "generate_synthetic", "compare_synthetic"]
