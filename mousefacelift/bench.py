"""`mfl bench`: speed of every stage on this machine, each beside its baseline in the same run.

Writes ``<out>/bench.json`` (machine, rows) and ``<out>/bench.md`` (a table). Benchmarks are not
tests: nothing here asserts; the numbers are for READMEs and closing notes. Each benchmark is a
function returning rows ``{"benchmark", "case", "value", "unit", "note"}``; ratios are computed
from two measurements of the same run, never against remembered figures.
"""
from __future__ import annotations

import json
import logging
import platform
import tempfile
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)

BF16_PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # dense bf16 tensor-core peaks


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


# ----------------------------------------------------------------------------------------------
# The benchmarks
# ----------------------------------------------------------------------------------------------
def bench_synthetic(device: torch.device) -> list[dict]:
    """Procedural recording: the demo size (6 cameras x 120 frames at 576x512) end to end, and
    frames/s at full 1152x1024 (a short recording, setup included)."""
    from .data import synthetic

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = synthetic.demo_config(device=device.type)
        t0 = time.perf_counter()
        synthetic.generate_recording(Path(tmp) / "demo", cfg)
        rows.append(row("synthetic", "demo 6 cams x 120 frames @576x512", time.perf_counter() - t0, "s",
                        "target <= 60 s on a 2-core CPU"))
        n = 30 if device.type == "cuda" else 10
        cfg = synthetic.SyntheticConfig(n_frames=n, device=device.type)
        t0 = time.perf_counter()
        synthetic.generate_recording(Path(tmp) / "full", cfg)
        rows.append(row("synthetic", f"full 1152x1024, {n} frames x 6 cams", n / (time.perf_counter() - t0),
                        "frames/s", "6-camera frames incl. setup and H.264 encoding"))
    return rows


def bench_decoding(device: torch.device) -> list[dict]:
    """Sequential parallel decoding vs a seek-per-frame reader, same frames, same run: 15 frames at
    stride 9 (the real extraction takes 2000 of 18000 frames) of a full-size procedural recording."""
    from .data import recording, synthetic
    from .stage import default_cache_dir

    cfg = synthetic.SyntheticConfig(n_frames=150, device=device.type)
    rec = recording.open_recording(synthetic.ensure_recording(default_cache_dir() / "recordings", cfg))
    r = recording.bench_decoding(rec, n_frames=15, stride=9)
    return [row("decoding", "sequential + parallel (1152x1024, 6 cams)", r["sequential_fps"], "frames/s"),
            row("decoding", "seek per frame (baseline)", r["seek_fps"], "frames/s"),
            row("decoding", "speed-up", r["ratio"], "x", f"identical frames: {r['identical']}; target >= 3x")]


def bench_rasterizer(device: torch.device) -> list[dict]:
    """gsplat (CUDA) at 6 views x 512 with 1.5 M Gaussians, and the torch renderer at 128x128."""
    from .gaussians import bench_rasterizer as bench

    rows = []
    if device.type == "cuda":
        r = bench(device, n_gaussians=1_500_000, n_views=6, image_size=512, backend="gsplat")
        rows += [row("rasterizer", "gsplat 6 views @512, 1.5M Gaussians, forward", r["forward_ms"], "ms"),
                 row("rasterizer", "gsplat 6 views @512, 1.5M Gaussians, fwd+bwd", r["forward_backward_ms"], "ms")]
    r = bench(device, n_gaussians=10_000, n_views=1, image_size=128, backend="torch")
    rows += [row("rasterizer", f"torch renderer 1 view @128, 10k Gaussians, forward ({device.type})",
                 r["forward_ms"], "ms"),
             row("rasterizer", f"torch renderer 1 view @128, 10k Gaussians, fwd+bwd ({device.type})",
                 r["forward_backward_ms"], "ms")]
    return rows


def sd21_unet_config() -> dict:
    """The UNet of Stable Diffusion 2.1-unCLIP as FaceLift uses it (870 M parameters, 8 input
    channels: noisy + reference latents; image-embedding class label of 2048)."""
    return dict(sample_size=64, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
                class_embed_type="projection", projection_class_embeddings_input_dim=2048, layers_per_block=2)


def bench_mvdiffusion(device: torch.device) -> list[dict]:
    """One denoising step with guidance (cond + uncond in one batch: 2 x 6 views) and the 50-step
    latency per object, eager vs torch.compile; SD2.1-sized UNet on CUDA, the demo UNet on CPU."""
    from diffusers import UNet2DConditionModel

    from .mvdiffusion.model import MVDiffusionConfig, MVDiffusionModel

    rows = []
    V = 6
    if device.type == "cuda":
        unet = UNet2DConditionModel(**sd21_unet_config())
        model = MVDiffusionModel.from_unet(unet, image_channels=4, camera_channels=0, num_views=V,
                                           context="prompt_embeds", context_tensor=torch.zeros(V, 77, 1024))
        model = model.to(device, torch.bfloat16).eval()
        size, C, label = 64, 4, torch.zeros(2, 2048, device=device, dtype=torch.bfloat16)
        what = "SD2.1-unCLIP UNet (870M), 64x64 latents"
    else:
        cfg = MVDiffusionConfig()
        model = MVDiffusionModel.from_dataclass(cfg).to(device).eval()
        size, C, label = cfg.image_size, cfg.image_channels, None
        what = f"demo pixel UNet {cfg.image_size}x{cfg.image_size}"
    dtype = next(model.parameters()).dtype
    noisy = torch.randn(2, V, C, size, size, device=device, dtype=dtype)
    ref = torch.randn(2, C, size, size, device=device, dtype=dtype)
    rays = None
    if model.config.camera_channels:
        rays = torch.randn(2, V, 6, size, size, device=device, dtype=dtype)
    t = torch.full((2,), 500, device=device)
    n_params = sum(p.numel() for p in model.parameters())

    @torch.no_grad()
    def step(m):
        return m(noisy, t, ref, rays, label)

    eager = timed(lambda: step(model), device, repeats=10 if device.type == "cuda" else 3)
    rows += [row("mvdiffusion", f"{what} ({n_params / 1e6:.0f}M): 1 step, 6 views + CFG, eager", eager, "ms"),
             row("mvdiffusion", f"{what}: 50 steps per object, eager", eager * 50 / 1e3, "s",
                 "step time x 50 (scheduler cost is negligible)")]
    if device.type == "cuda":
        compiled = torch.compile(model, mode="max-autotune-no-cudagraphs")
        comp = timed(lambda: step(compiled), device, repeats=10, warmup=3)
        rows += [row("mvdiffusion", f"{what}: 1 step, 6 views + CFG, torch.compile", comp, "ms"),
                 row("mvdiffusion", f"{what}: 50 steps per object, torch.compile", comp * 50 / 1e3, "s",
                     "target <= 1.5 s"),
                 row("mvdiffusion", "compile speed-up", eager / comp, "x")]
    return rows


BENCHMARKS = {"synthetic": bench_synthetic, "decoding": bench_decoding, "rasterizer": bench_rasterizer,
              "mvdiffusion": bench_mvdiffusion}


def register(name: str):
    """Decorator for benchmarks defined in other modules (e.g. the GS-LRM ones)."""
    def deco(fn):
        BENCHMARKS[name] = fn
        return fn
    return deco


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
    from . import gslrm  # noqa: F401  (registers the GS-LRM benchmarks)

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
