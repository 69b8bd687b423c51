"""`mfl bench`: speed of every stage on this machine, each beside its baseline in the same run.

Writes ``<out>/bench.json`` (machine, rows) and ``<out>/bench.md`` (a table). Benchmarks are not
tests: nothing here asserts; the numbers are for READMEs and closing notes. Each benchmark is a
function returning rows ``{"benchmark", "case", "value", "unit", "note"}``; ratios are computed
from two measurements of the same run, never against remembered figures.

Modules: :mod:`.data` (the procedural recording, video decoding, the rasterizer) and :mod:`.models`
(MVDiffusion and GS-LRM: inference, training steps, trainers, scaling over GPUs).
"""
from __future__ import annotations

import json
import logging
import platform
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# dense bf16 peaks (TFLOP/s) used for "fraction of peak"
BF16_PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 312.0}


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 5, warmup: int = 2) -> float:
    """Median wall time of fn() in milliseconds (after warmup calls), synchronising CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)


def row(benchmark: str, case: str, value: float, unit: str, note: str = "") -> dict:
    return {"benchmark": benchmark, "case": case, "value": round(float(value), 4), "unit": unit, "note": note}


from .data import bench_baselines, bench_decoding, bench_rasterizer, bench_synthetic, time_decoding, time_rasterizer, video_codec  # noqa: E402
from .models import (adopted_gslrm, bench_gslrm, bench_gslrm_4d, bench_gslrm_scaling, bench_mvdiffusion,  # noqa: E402
                     bench_mvdiffusion_trainer, gslrm_step_flops, KERNEL_CLASSES, kernel_category, kernel_times,
                     profile_gslrm_inference, profile_unet_step)

BENCHMARKS = {"synthetic": bench_synthetic, "decoding": bench_decoding, "rasterizer": bench_rasterizer,
              "baselines": bench_baselines,
              "gslrm": bench_gslrm, "gslrm_4d": bench_gslrm_4d, "gslrm_scaling": bench_gslrm_scaling,
              "mvdiffusion": bench_mvdiffusion, "mvdiffusion_trainer": bench_mvdiffusion_trainer}


def machine() -> dict:
    d = _device()
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "device": d.type, "cpu_threads": torch.get_num_threads()}
    if d.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(d)
        info["gpus"] = torch.cuda.device_count()
        info["bf16_peak_tflops"] = peak_tflops(d)
    return info


def to_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"# mfl bench: {m.get('gpu', m['platform'])}", "", "| benchmark | case | value | unit | note |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['benchmark']} | {r['case']} | {r['value']:.4g} | {r['unit']} | {r['note']} |" for r in result["rows"]]
    lines += [f"| {e['benchmark']} | failed | | | {e['error']} |" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def main(only: str | None = None, out_dir: str | Path = "bench") -> dict:
    """Run the chosen benchmarks (all by default); a failing one is reported, the others still run."""
    names = list(BENCHMARKS) if not only else [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"mfl bench: unknown benchmark(s) {unknown}; available: {', '.join(BENCHMARKS)}")
    device = _device()
    result = {"machine": machine(), "rows": [], "errors": []}
    for name in names:
        log.info("bench %s on %s", name, device)
        try:
            result["rows"] += BENCHMARKS[name](device)
        except Exception as e:  # one broken benchmark must not hide the others' numbers
            log.exception("benchmark %s failed", name)
            result["errors"].append({"benchmark": name, "error": f"{type(e).__name__}: {e}"})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(result, indent=1))
    (out / "bench.md").write_text(to_markdown(result))
    print(to_markdown(result))
    return result


__all__ = ["BENCHMARKS", "BF16_PEAK_TFLOPS", "main", "machine", "to_markdown", "row", "timed", "peak_tflops",
           "bench_synthetic", "bench_decoding", "bench_rasterizer", "bench_baselines", "time_decoding", "time_rasterizer", "video_codec",
           "bench_gslrm", "bench_gslrm_4d", "bench_gslrm_scaling", "bench_mvdiffusion", "bench_mvdiffusion_trainer", "gslrm_step_flops",
           "KERNEL_CLASSES", "kernel_category", "kernel_times", "profile_gslrm_inference",
           "profile_unet_step"]
