"""Benchmarks of the learned stages: MVDiffusion and GS-LRM inference, training steps, the trainers
and their scaling over the GPUs of a machine."""
from __future__ import annotations

import functools
import logging
import tempfile
import time
from pathlib import Path

import torch

from . import peak_tflops, row, timed

log = logging.getLogger(__name__)


def sd21_unet_config() -> dict:
    """The UNet of Stable Diffusion 2.1-unCLIP as FaceLift uses it (870 M parameters, 8 input
    channels: noisy + reference latents; image-embedding class label of 2048)."""
    return dict(sample_size=64, in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
                class_embed_type="projection", projection_class_embeddings_input_dim=2048, layers_per_block=2)


def bench_mvdiffusion(device: torch.device) -> list[dict]:
    """One denoising step with guidance (cond + uncond in one batch: 2 x 6 views) and the 50-step
    latency per object, eager vs torch.compile; SD2.1-sized UNet on CUDA, the demo UNet on CPU.
    Then the throughput of generating several objects per call (notebooks 04, 05 and 07 batch
    objects): per-object time of one step at 1, 4 and 16 objects (SD2.1 size) and at 1, 8 and 32
    objects for the 40.7 M pixel UNet that params/gpu.yaml trains (CPU: the demo UNet at 1 and 4)."""
    from diffusers import UNet2DConditionModel

    from ..mvdiffusion.model import MVDiffusionConfig, MVDiffusionModel

    V = 6

    def inputs(model, objects: int, size: int, C: int, label):
        """A guided step's inputs for ``objects`` objects: batch 2 x objects (cond + uncond)."""
        dtype = next(model.parameters()).dtype
        b = 2 * objects
        rays = (torch.randn(b, V, 6, size, size, device=device, dtype=dtype) if model.config.camera_channels
                else None)
        lab = None if label is None else label[:1].expand(b, -1)
        return (torch.randn(b, V, C, size, size, device=device, dtype=dtype), torch.full((b,), 500, device=device),
                torch.randn(b, C, size, size, device=device, dtype=dtype), rays, lab)

    def step_ms(model, objects: int, size: int, C: int, label, repeats: int, warmup: int = 2) -> float:
        args = inputs(model, objects, size, C, label)
        with torch.no_grad():
            return timed(lambda: model(*args), device, repeats=repeats, warmup=warmup)

    def batching_rows(model, what: str, counts: tuple[int, ...], size: int, C: int, label) -> list[dict]:
        times = {n: step_ms(model, n, size, C, label, repeats=5 if device.type == "cuda" else 2) for n in counts}
        rows = [row("mvdiffusion", f"{what}: 50 steps, {n} object(s) per call, per object", times[n] * 50 / n / 1e3,
                    "s", "eager; step time x 50 / objects") for n in counts]
        top = counts[-1]
        rows.append(row("mvdiffusion", f"{what}: throughput at {top} vs 1 object per call", times[1] * top / times[top],
                        "x", "same run, side by side"))
        return rows

    rows = []
    if device.type == "cuda":
        unet = UNet2DConditionModel(**sd21_unet_config())
        model = MVDiffusionModel.from_unet(unet, image_channels=4, camera_channels=0, num_views=V,
                                           context="prompt_embeds", context_tensor=torch.zeros(V, 77, 1024))
        model = model.to(device, torch.bfloat16).eval()
        size, C, label = 64, 4, torch.zeros(2, 2048, device=device, dtype=torch.bfloat16)
        what = "SD2.1-unCLIP UNet ({:.0f}M), 64x64 latents"
    else:
        cfg = MVDiffusionConfig()
        model = MVDiffusionModel.from_dataclass(cfg).to(device).eval()
        size, C, label = cfg.image_size, cfg.image_channels, None
        what = f"demo pixel UNet ({{:.1f}}M) {cfg.image_size}x{cfg.image_size}"
    what = what.format(sum(p.numel() for p in model.parameters()) / 1e6)
    eager = step_ms(model, 1, size, C, label, repeats=10 if device.type == "cuda" else 3, warmup=3)
    rows += [row("mvdiffusion", f"{what}: 1 step, 6 views + CFG, eager", eager, "ms"),
             row("mvdiffusion", f"{what}: 50 steps per object, eager", eager * 50 / 1e3, "s",
                 "step time x 50 (scheduler cost is negligible)")]
    if device.type == "cuda":
        compiled = torch.compile(model)
        comp = step_ms(compiled, 1, size, C, label, repeats=10, warmup=3)
        rows += [row("mvdiffusion", f"{what}: 1 step, 6 views + CFG, torch.compile", comp, "ms"),
                 row("mvdiffusion", f"{what}: 50 steps per object, torch.compile", comp * 50 / 1e3, "s",
                     "target <= 1.5 s"),
                 row("mvdiffusion", "compile speed-up", eager / comp, "x")]
        rows += batching_rows(model, what, (1, 4, 16), size, C, label)
        del model, compiled
        torch.cuda.empty_cache()
        cfg = MVDiffusionConfig()  # the embedded default that params/gpu.yaml trains from scratch
        pixel = MVDiffusionModel.from_dataclass(cfg).to(device, torch.bfloat16).eval()
        n_pixel = sum(p.numel() for p in pixel.parameters())
        rows += batching_rows(pixel, f"pixel UNet ({n_pixel / 1e6:.1f}M) {cfg.image_size}x{cfg.image_size}, bf16",
                              (1, 8, 32), cfg.image_size, cfg.image_channels, None)
        rows += sampler_precision_rows(cfg, device)
    else:
        rows += batching_rows(model, what, (1, 4), size, C, label)
    return rows


def sampler_precision_rows(cfg, device: torch.device, objects: int = 32, steps: int = 10) -> list[dict]:
    """The sampler as notebooks 04, 05 and 07 run it (fp32 weights, DPM-Solver, guidance 3, ``objects``
    per call) with the UNet in fp32 and under bf16 autocast (SamplerConfig.bf16), side by side:
    seconds per object and the ratio."""
    from .. import cameras
    from ..mvdiffusion.pipeline import SamplerConfig
    from ..mvdiffusion.train import TrainConfig, build_pipeline

    # the pipeline a from-scratch training starts from (its noise schedule: TrainConfig's defaults); nothing is written
    pipe = build_pipeline(TrainConfig(out_dir="unused", model=cfg)).to(device)
    pipe.model.eval()
    S, V = cfg.image_size, cfg.num_views
    w2c, K = cameras.canonical_rig(image_size=S)
    w2c, K = w2c[:V].expand(objects, V, 4, 4), K[:V].expand(objects, V, 3, 3)
    ref = torch.rand(objects, 4, S, S)
    ms = {}
    for bf16 in (False, True):
        sampling = SamplerConfig(sampler="dpm", steps=steps, bf16=bf16)
        with torch.no_grad():
            ms[bf16] = timed(lambda: pipe(ref, w2c[:, 0], w2c, K, sampling), device, repeats=3, warmup=1)
    what = f"pixel UNet sampler, DPM {steps} steps + guidance, {objects} objects per call"
    return [row("mvdiffusion", f"{what}, fp32: per object", ms[False] / objects / 1e3, "s"),
            row("mvdiffusion", f"{what}, bf16 autocast: per object", ms[True] / objects / 1e3, "s",
                "SamplerConfig.bf16, the default on CUDA"),
            row("mvdiffusion", f"{what}: bf16 autocast vs fp32", ms[False] / ms[True], "x", "same run, side by side")]


def bench_mvdiffusion_trainer(device: torch.device) -> list[dict]:
    """The MVDiffusion trainer itself (resident data, keyed randomness on the device, optimizer,
    EMA; no validation) on params/gpu.yaml's 40.7 M pixel UNet at 64 px, bf16, 64 objects per step
    per process, from 256 px samples: objects/s and the fraction of bf16 peak its UNet step reaches,
    eager with cuDNN's algorithm search off and on, and torch.compile, side by side; with several GPUs,
    eager under torchrun on all of them (weak scaling against the eager one-process rate of this call;
    compiling under DDP took more than 4 minutes per process on an H200 machine, too long for a benchmark).
    On a CPU the 32 px test UNet, 2 objects per step, eager (the mechanics, not a speed figure)."""
    from torch.utils.flop_counter import FlopCounterMode

    from ..mvdiffusion.model import MVDiffusionConfig, MVDiffusionModel
    from ..launch import launch
    from ..mvdiffusion.train import TrainConfig
    from ..tracking import TrackingConfig

    cuda = device.type == "cuda"
    model_cfg, batch, size, steps = (MVDiffusionConfig(), 64, 256, 60) if cuda else (MVDiffusionConfig.tiny(), 2, 32, 6)
    model = MVDiffusionModel.from_dataclass(model_cfg).to(device).train()
    what = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}M UNet @{model_cfg.image_size}"
    args = unet_step_inputs(model_cfg, batch, device)
    with FlopCounterMode(display=False) as counter:
        unet_step(model, args)
    flops = counter.get_total_flops()
    del model, args
    peak = peak_tflops(device)
    n_gpus = torch.cuda.device_count() if cuda else 0
    rows, base = [], None
    if cuda:  # where the eager UNet step's GPU time goes, in each memory layout
        for nhwc in (False, True):
            rows += profile_unet_step(model_cfg, batch, device, nhwc, flops)
    # (name, compiled, processes, cuDNN algorithm search, channels_last): the search off beside on
    # (RunConfig.cudnn_benchmark), NCHW beside NHWC (TrainConfig.channels_last)
    cases = ([("eager, cuDNN search off", False, 1, False, False)] if cuda else []) + \
        [("eager", False, 1, True, False), ("eager, channels_last", False, 1, True, True)] + \
        ([("torch.compile", True, 1, True, False), ("torch.compile, channels_last", True, 1, True, True)] if cuda else []) + \
        ([("eager", False, n_gpus, True, False)] if n_gpus >= 2 else [])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "samples"
        _random_samples(root, 2 * batch, size)
        for i, (name, compiled, n, search, nhwc) in enumerate(cases):
            cfg = TrainConfig(data_root=str(root), train_split=str(root / "train.txt"),
                              out_dir=str(Path(tmp) / f"case{i}"), model=model_cfg, steps=steps, batch_size=batch,
                              device=device.type, precision="bf16" if cuda else "fp32", compile=compiled, resume=False,
                              cudnn_benchmark=search, channels_last=nhwc,
                              checkpoint_every=10 ** 6, log_every=5, warmup_steps=1,
                              tracking=TrackingConfig(mode="disabled"))
            summary = launch(cfg, launcher="torchrun" if n > 1 else "inprocess", nproc_per_node=n)
            sec = summary["step_seconds_median"]
            log.info("%s x%d: %.4f s/step", name, n, sec)
            rate = n * batch / sec
            case = f"{what}, {batch} objects/step/process, {name}, {n} process{'es' if n > 1 else ''}"
            rows += [row("mvdiffusion_trainer", f"{case}: objects/s", rate, "objects/s",
                         "median s/step of 5-step spans after the first; before resident data: 95 objects/s at batch 64 (H200)")]
            if peak:
                rows.append(row("mvdiffusion_trainer", f"{case}: UNet step TFLOP/s", flops / sec / 1e12, "TFLOP/s",
                                f"{flops / 1e12:.1f} TFLOP per step (FlopCounterMode); {flops / sec / 1e12 / peak:.1%} of "
                                f"{peak:.0f} TFLOP/s bf16 peak"))
            if n == 1 and not compiled and search and not nhwc:
                base = rate
            elif n > 1 and base:
                rows.append(row("mvdiffusion_trainer", f"{case}: efficiency", rate / (n * base), "",
                                "objects/s / (N x objects/s of 1 eager process), same run"))
    return rows


def unet_step_inputs(model_cfg, batch: int, device: torch.device) -> tuple:
    """Random inputs of one MVDiffusion training step of ``batch`` objects: noisy views [B, V, 4, S, S],
    timesteps [B], reference [B, 4, S, S], ray maps [B, V, 6, S, S]."""
    V, S = model_cfg.num_views, model_cfg.image_size
    return (torch.randn(batch, V, 4, S, S, device=device), torch.randint(0, 1000, (batch,), device=device),
            torch.randn(batch, 4, S, S, device=device), torch.randn(batch, V, 6, S, S, device=device))


def unet_step(model, args: tuple) -> None:
    """One forward and backward of the UNet on ``args``, under bf16 autocast on CUDA (as the trainer)."""
    device = args[0].device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        model(*args).float().square().mean().backward()


def gslrm_step_flops(cfg, n_views: int, batch: int, train: bool = True) -> float:
    """Model FLOPs of GS-LRM on ``n_views`` views: per layer and token 24 d^2 (qkv 3, output 1,
    MLP 8 d^2 multiply-adds) plus 4 L d for attention (QK^T and AV), plus the patch embedding and
    the Gaussian head; a training step is 3 x the forward (backward = 2 x forward)."""
    p = cfg.patch
    L = n_views * (cfg.image_size // p) ** 2 + cfg.n_global
    d = cfg.width
    per_layer = 24 * d * d * L + 4 * L * L * d
    io = 2 * L * d * (p * p * cfg.in_channels) + 2 * L * d * (p * p * 14)
    return (3.0 if train else 1.0) * batch * (cfg.layers * per_layer + io)


def _random_samples(root: Path, n: int, size: int) -> None:
    """n random samples on FaceLift's canonical rig (enough for a step's data path)."""
    import numpy as np

    from .. import cameras
    from ..data import samples

    w2c, K = cameras.canonical_rig(image_size=size)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        img = rng.integers(0, 256, (6, size, size, 4), dtype=np.uint8)
        img[..., 3] = np.where(rng.random((6, size, size)) > 0.5, 255, 0)
        samples.write_sample(root / samples.sample_name(i), img, w2c, K, list(range(6)))
        names.append(samples.sample_name(i))
    samples.write_split(root / "train.txt", names)


def bench_gslrm(device: torch.device) -> list[dict]:
    """GS-LRM: a whole training step (model, render, losses, optimizer; 5 input + 1 target view)
    at 256 (batch 4) and 512 (batch 1), and inference latency for 6 views at 512, eager vs cuDNN
    attention vs torch.compile. Full 24 x 1024 config on CUDA; the tiny config on CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..gslrm.data import DataConfig, collate
    from ..gslrm.model import GSLRM, GSLRMConfig
    from ..gslrm.train import Trainer, TrainConfig
    from ..tracking import TrackingConfig

    rows = []
    cuda = device.type == "cuda"
    peak = peak_tflops(device)
    cases = [(256, 4), (512, 1)] if cuda else [(32, 2)]
    with tempfile.TemporaryDirectory() as tmp:
        for size, batch in cases:
            root = Path(tmp) / f"s{size}"
            _random_samples(root, batch, size)
            make = GSLRMConfig.full if cuda else GSLRMConfig.tiny
            model_cfg = make(image_size=size, attention="sdpa")  # the baseline; FA4 is timed beside it
            cfg = TrainConfig(out_dir=str(root / "out"), data_root=str(root), train_split="train.txt",
                              model=model_cfg, data=DataConfig(input_views=5, augment=False), steps=10 ** 6,
                              batch_size=batch, device=device.type, tracking=TrackingConfig(mode="disabled"),
                              resume=False, progress_bar=False, warmup_steps=1,
                              skip_factor=float("inf"))  # every step applies its update: equal work per step
            trainer = Trainer(cfg)
            t0 = time.perf_counter()
            items = [trainer.dataset[(i, 0)] for i in range(batch)]
            batch_data = collate(items)
            data_ms = (time.perf_counter() - t0) * 1e3
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            ms = timed(functools.partial(trainer.train_step, batch_data), device, repeats=5 if cuda else 2, warmup=2)
            flops = gslrm_step_flops(model_cfg, 5, batch)
            tflops = flops / (ms / 1e3) / 1e12
            what = f"train step @{size}, batch {batch}, 5+1 views ({'full' if cuda else 'tiny'})"
            rows += [row("gslrm", f"{what}: time", ms, "ms", f"data loading (PNG decode, {batch} samples) "
                         f"{data_ms:.0f} ms, overlapped by DataLoader workers in training"),
                     row("gslrm", f"{what}: samples/s", batch / (ms / 1e3), "samples/s"),
                     row("gslrm", f"{what}: model TFLOP/s", tflops, "TFLOP/s", "analytic model FLOPs / step time")]
            if peak:
                rows.append(row("gslrm", f"{what}: fraction of bf16 peak", tflops / peak, "",
                                f"peak {peak} TFLOP/s; target >= 0.40 at 512"))
            if cuda:
                rows.append(row("gslrm", f"{what}: peak memory", torch.cuda.max_memory_allocated(device) / 2 ** 30, "GiB"))
                rows += fa4_train_rows(trainer, batch_data, what, ms, flops, device)
            del trainer
        # inference: 6 views at 512 (CUDA) / 6 views at the tiny size (CPU), no grad
        size = 512 if cuda else 32
        cfg = (GSLRMConfig.full if cuda else GSLRMConfig.tiny)(image_size=size, attention="sdpa")
        model = GSLRM(cfg).to(device).eval()
        from .. import cameras
        w2c, K = cameras.canonical_rig(image_size=size, device=device)
        c2w = cameras.invert_rigid(w2c).float()[None]
        K = K.float()[None]
        images = torch.rand(1, 6, 3, size, size, device=device)

        @torch.no_grad()
        def infer(m):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                return m(images, c2w, K)

        eager = timed(lambda: infer(model), device, repeats=10 if cuda else 3)
        fl = gslrm_step_flops(cfg, 6, 1, train=False)
        rows.append(row("gslrm", f"inference 6 views @{size}: eager (SDPA default)", eager, "ms",
                        f"{fl / (eager / 1e3) / 1e12:.0f} TFLOP/s; target < 150 ms at 512"))
        if cuda:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                cudnn = timed(lambda: infer(model), device, repeats=10)
            rows.append(row("gslrm", "inference 6 views @512: eager, cuDNN attention", cudnn, "ms",
                            f"{fl / (cudnn / 1e3) / 1e12:.0f} TFLOP/s"))
            compiled = torch.compile(model)
            comp = timed(lambda: infer(compiled), device, repeats=10, warmup=3)
            rows.append(row("gslrm", "inference 6 views @512: torch.compile", comp, "ms",
                            f"{fl / (comp / 1e3) / 1e12:.0f} TFLOP/s"))
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                both = timed(lambda: infer(compiled), device, repeats=10, warmup=3)
            rows.append(row("gslrm", "inference 6 views @512: torch.compile + cuDNN attention", both, "ms",
                            f"{fl / (both / 1e3) / 1e12:.0f} TFLOP/s"))
            try:  # a profiler problem must not cost the timings above
                rows += profile_gslrm_inference(lambda: infer(model), cfg, 6, size)
            except Exception as e:
                log.warning("GS-LRM inference profile failed: %s", e)
                rows.append(row("gslrm", f"inference 6 views @{size} profile", float("nan"), "", f"failed: {e}"))
            for mode in ("fa4", "fp8"):  # the other kernels beside SDPA, same weights and inputs
                try:
                    rows += kernel_inference_rows(mode, model, infer, eager, fl, w2c, K, size, device)
                except Exception as e:
                    log.warning("%s attention failed: %s", mode, e)
                    rows.append(row("gslrm", f"inference 6 views @512: {KERNEL_NAMES[mode]}", float("nan"), "ms",
                                    f"failed: {e}"))
            try:
                rows += attention_rows(cfg, 6, size, device)
            except Exception as e:
                log.warning("attention rows failed: %s", e)
    return rows


KERNEL_NAMES = {"fa4": "FlashAttention-4", "fp8": "fp8 attention (Triton)"}


def fa4_train_rows(trainer, batch_data, what: str, sdpa_ms: float, flops: float, device) -> list[dict]:
    """The same training step with FlashAttention-4 (forward and backward) in place of SDPA, timed
    after the SDPA step of the same trainer (``sdpa_ms``): does the kernel pay in training too?"""
    from ..gslrm.attention import unavailable

    why = unavailable("fa4", device)
    if why:
        return [row("gslrm", f"{what}: FlashAttention-4 time", float("nan"), "ms", f"unavailable: {why}")]
    trainer.model.set_attention("fa4")
    try:
        ms = timed(functools.partial(trainer.train_step, batch_data), device, repeats=5, warmup=2)
    except Exception as e:
        log.warning("FlashAttention-4 training step failed: %s", e)
        return [row("gslrm", f"{what}: FlashAttention-4 time", float("nan"), "ms", f"failed: {type(e).__name__}: {e}")]
    finally:
        trainer.model.set_attention("sdpa")
    return [row("gslrm", f"{what}: FlashAttention-4 time", ms, "ms",
                f"{flops / (ms / 1e3) / 1e12:.0f} TFLOP/s; {sdpa_ms / ms:.3f}x SDPA's {sdpa_ms:.1f} ms in this call")]


def kernel_inference_rows(mode: str, model, infer, sdpa_ms: float, flops: float, w2c, K, size: int,
                          device) -> list[dict]:
    """GS-LRM inference with attention kernel ``mode`` ("fa4" or "fp8", :mod:`mousefacelift.gslrm.attention`)
    against SDPA (``sdpa_ms``, measured in the same call on the same model and inputs): time, TFLOP/s,
    and the accuracy cost: PSNR between the two models' renders at the 6 input cameras, and the
    relative RMS difference of the Gaussian centres."""
    from ..gslrm.attention import unavailable

    name = KERNEL_NAMES[mode]
    why = unavailable(mode, device)
    if why:
        return [row("gslrm", f"inference 6 views @512: {name}", float("nan"), "ms", f"unavailable: {why}")]
    ref = infer(model)
    model.set_attention(mode)
    try:
        ms = timed(lambda: infer(model), device, repeats=10)
        out = infer(model)
    finally:
        model.set_attention("sdpa")
    a = ref.render(w2c.float()[None], K, size, size).rgb.float()   # K [1, 6, 3, 3], as the model was given
    b = out.render(w2c.float()[None], K, size, size).rgb.float()
    psnr = float(-10 * torch.log10((a - b).square().mean().clamp_min(1e-12)))
    centres = float((out.means - ref.means).float().square().mean().sqrt() / ref.means.float().square().mean().sqrt())
    return [row("gslrm", f"inference 6 views @512: {name}", ms, "ms",
                f"{flops / (ms / 1e3) / 1e12:.0f} TFLOP/s; {sdpa_ms / ms:.3f}x SDPA's {sdpa_ms:.1f} ms in this call; "
                "target <= 150 ms"),
            row("gslrm", f"{name} vs SDPA: PSNR between the renders at the 6 input cameras", psnr, "dB",
                "same weights (random) and inputs"),
            row("gslrm", f"{name} vs SDPA: relative RMS difference of the Gaussian centres", centres, "")]


FP8_BLOCKS = ((128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 64, 4, 3), (128, 128, 8, 2), (256, 64, 8, 3))


def attention_rows(cfg, n_views: int, size: int, device: torch.device) -> list[dict]:
    """GS-LRM's attention alone at its inference shape (one sample: heads x L tokens x head dim,
    bf16 unit-Gaussian q, k, v): milliseconds and TFLOP/s (4 L^2 D per head) of SDPA's default and
    cuDNN backends and of the fp8 kernel at each (BLOCK_M, BLOCK_N, warps, stages) in FP8_BLOCKS,
    with each fp8 output's relative RMS difference from SDPA's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from ..gslrm.attention import fa4_attention, fp8_attention, unavailable

    H, D = cfg.heads, cfg.width // cfg.heads
    L = n_views * (size // cfg.patch) ** 2 + cfg.n_global
    q, k, v = (torch.randn(1, H, L, D, device=device, dtype=torch.bfloat16) for _ in range(3))
    flops = 4 * L * L * D * H
    what = f"attention alone, {H} heads x {L} tokens x {D}"
    rows = []

    def add(case, fn, note=""):
        ms = timed(fn, device, repeats=10, warmup=2)
        rows.append(row("gslrm", f"{what}: {case}", ms, "ms", f"{flops / (ms / 1e3) / 1e12:.0f} TFLOP/s" + note))

    with torch.no_grad():
        ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        add("SDPA default", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        try:
            with sdpa_kernel([SDPBackend.CUDNN_ATTENTION]):
                add("SDPA cuDNN", lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v))
        except RuntimeError as e:
            log.warning("cuDNN attention: %s", e)
        def kernel(case, fn):  # timed beside SDPA with its difference from it; a failure (e.g. an fp8 block
            try:               # configuration that does not fit in shared memory) is a row
                out = fn().float()
                rel = float((out - ref.float()).square().mean().sqrt() / ref.float().square().mean().sqrt())
                add(case, fn, f"; relative RMS vs SDPA {rel:.4f}")
            except Exception as e:
                log.warning("%s: %s", case, e)
                rows.append(row("gslrm", f"{what}: {case}", float("nan"), "ms", f"failed: {type(e).__name__}: {e}"))

        why = unavailable("fa4", device)
        if why:
            rows.append(row("gslrm", f"{what}: FlashAttention-4", float("nan"), "ms", f"unavailable: {why}"))
        else:
            kernel("FlashAttention-4", lambda: fa4_attention(q, k, v))
        if unavailable("fp8", device):
            return rows
        for bm, bn, warps, stages in FP8_BLOCKS:
            kernel(f"fp8 BLOCK_M {bm}, BLOCK_N {bn}, {warps} warps, {stages} stages",
                   functools.partial(fp8_attention, q, k, v, block_m=bm, block_n=bn, num_warps=warps,
                                     num_stages=stages))
    return rows


def bench_gslrm_4d(device: torch.device, n_frames: int | None = None) -> list[dict]:
    """The 4D path, ``mfl infer --recording R --frames A:B``: frames per second of reconstructing a
    frame range of a procedural recording (576x512, 6 cameras) from all its real views, end to end:
    decoding the videos, extracting each frame (rectified views at the GS-LRM's size), GS-LRM
    (bf16 on CUDA), writing one PLY per frame and the sequence video; loading the model once is
    included. CUDA: FaceLift's 24 x 1024 at 512 px (random weights: the speed is that of any weights),
    48 frames; CPU: the tiny model at 32 px, 4 frames (the mechanics, not a speed figure)."""
    import dataclasses

    from ..data import procedural
    from ..gslrm.model import GSLRM, GSLRMConfig
    from ..infer import InferConfig, infer_recording
    from .data import video_codec

    cuda = device.type == "cuda"
    n = n_frames or (48 if cuda else 4)
    model_cfg = GSLRMConfig.full(image_size=512) if cuda else GSLRMConfig.tiny(image_size=32)
    what = f"{model_cfg.layers} x {model_cfg.width} @{model_cfg.image_size}"
    with tempfile.TemporaryDirectory() as tmp:
        rec = procedural.generate_recording(Path(tmp) / "recording", procedural.ProceduralConfig(
            n_frames=n + 2, resolution_scale=0.5, device=device.type, video_codec=video_codec()))
        torch.manual_seed(0)
        ckpt = Path(tmp) / "gslrm.pt"
        torch.save({"model": GSLRM(model_cfg).state_dict(), "config": dataclasses.asdict(model_cfg)}, ckpt)
        cfg = InferConfig(device=device.type)
        infer_recording(rec, range(0, 2), ckpt, Path(tmp) / "warm-up", cfg)  # first kernels, rasterizer build
        t0 = time.perf_counter()
        out = infer_recording(rec, range(2, 2 + n), ckpt, Path(tmp) / "out", cfg)
        seconds = time.perf_counter() - t0
    done = len(out["plys"])
    from ..gslrm.attention import fa4_ready
    kernel = "FlashAttention-4" if cuda and fa4_ready(device) else "SDPA"  # what attention "auto" ran
    note = (f"{done} PLYs written, {len(out['skipped'])} frames skipped (mouse cut by the border); decoding, "
            f"extraction, GS-LRM ({kernel} attention), PLYs, video and model loading included")
    return [row("gslrm_4d", f"recording 576x512 -> GS-LRM {what}, {n} frames: reconstructed frames/s",
                done / seconds, "frames/s", note),
            row("gslrm_4d", f"recording 576x512 -> GS-LRM {what}, {n} frames: time per frame",
                seconds / max(1, n) * 1e3, "ms", "all frames of the range, skipped ones included")]


def adopted_gslrm() -> tuple[object, int, int]:
    """The GS-LRM that params/gpu.yaml trains (its notebook 06 section over the notebook's defaults)
    -> (GSLRMConfig, batch per process, target size in px; 0: the model's own)."""
    from .. import params, runner
    from ..gslrm.model import GSLRMConfig

    root = runner.repo_root()
    p = params.resolve(root / "params" / "gpu.yaml", runner.find_notebooks(root / "notebooks"))["06_gslrm_finetune"]
    cfg = GSLRMConfig(layers=p["layers"], width=p["width"], heads=p["heads"], image_size=p["image_size"],
                      render_global=p["render_global_gaussians"], color_from_input=p["color_from_input"],
                      qk_norm=p["qk_norm"], scale_bias=p["scale_bias"])
    return cfg, p["batch_size"], p.get("target_size", 0)


def bench_gslrm_scaling(device: torch.device, process_counts: tuple[int, ...] | None = None,
                        steps: int = 12) -> list[dict]:
    """GS-LRM data-parallel scaling: the same training step (batch per process fixed: weak scaling)
    under torchrun with 1, 2, 4, ... processes, one per GPU (NCCL). Reports samples/s and the
    efficiency against N x the one-process figure, all measured in this call. On CUDA params/gpu.yaml's
    GS-LRM (:func:`adopted_gslrm`: its size, batch and target size, the split resident on each GPU);
    on a CPU only when ``process_counts`` is given (tiny config at 32 px, batch 2, gloo: a check of the
    mechanics, not a speed figure)."""
    from ..gslrm.data import DataConfig
    from ..gslrm.model import GSLRMConfig
    from ..gslrm.train import TrainConfig
    from ..launch import launch
    from ..tracking import TrackingConfig

    cuda = device.type == "cuda"
    n_gpus = torch.cuda.device_count() if cuda else 0
    if process_counts is None:
        if n_gpus < 2:
            return [row("gslrm_scaling", "DDP scaling", float("nan"), "",
                        f"skipped: needs 2 or more GPUs, this machine has {n_gpus}")]
        process_counts = tuple(n for n in (1, 2, 4, 8, 16) if n <= n_gpus)
        if n_gpus not in process_counts:
            process_counts += (n_gpus,)
    process_counts = tuple(sorted({1, *process_counts}))  # efficiency is against the one-process rate
    model_cfg, batch, target = adopted_gslrm() if cuda else (GSLRMConfig.tiny(image_size=32), 2, 0)
    size = model_cfg.image_size
    rows, base = [], None
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "samples"
        _random_samples(root, batch * max(process_counts), max(size, target))
        for n in process_counts:
            cfg = TrainConfig(out_dir=str(Path(tmp) / f"ddp{n}"), data_root=str(root), train_split="train.txt",
                              model=model_cfg, data=DataConfig(input_views=5, augment=False, target_size=target),
                              steps=steps, batch_size=batch, device=device.type, tracking=TrackingConfig(mode="disabled"),
                              resume=False, progress_bar=False, warmup_steps=1, checkpoint_every=10 ** 6,
                              keep_last=1, num_workers=2, log_every=10 ** 6, resident_data=cuda,
                              skip_factor=float("inf"))  # every step applies its update: equal work per step
            summary = launch(cfg, launcher="torchrun", nproc_per_node=n)
            rate = n * batch / summary["step_seconds_median"]
            base = base or rate / n
            what = (f"{model_cfg.layers} x {model_cfg.width} train step @{size}" + (f" (targets @{target})" if target else "")
                    + f", batch {batch} per process, {n} process{'es' if n > 1 else ''}")
            rows += [row("gslrm_scaling", f"{what}: time", summary["step_seconds_median"] * 1e3, "ms",
                         f"median of {steps - 3} steps after 3 warm-up steps"),
                     row("gslrm_scaling", f"{what}: samples/s", rate, "samples/s"),
                     row("gslrm_scaling", f"{what}: efficiency", rate / (n * base), "",
                         "samples/s / (N x samples/s of 1 process), same run")]
    return rows


KERNEL_CLASSES = ("attention", "convolution", "matmul", "normalization", "layout", "other")


def kernel_category(name: str) -> str:
    """Coarse class of a CUDA kernel name (one of KERNEL_CLASSES): attention, convolution (cuDNN's
    forward, data- and weight-gradient kernels), matmul, normalization, layout (NCHW <-> NHWC
    conversions) or other (elementwise, reductions, copies)."""
    n = name.lower()
    if any(k in n for k in ("flash", "fmha", "attention", "sdpa", "attn")):
        return "attention"
    if any(k in n for k in ("nchwtonhwc", "nhwctonchw", "nchw2nhwc", "nhwc2nchw")):
        return "layout"
    if any(k in n for k in ("convolve", "conv2d", "fprop", "dgrad", "wgrad", "winograd")):
        return "convolution"
    if any(k in n for k in ("gemm", "cutlass", "nvjet", "cublas", "sm90_xmma", "matmul")):
        return "matmul"
    if any(k in n for k in ("norm", "rowwisemoments", "fusedparams")):  # the last two: PyTorch's GroupNorm
        return "normalization"
    return "other"


def kernel_times(fn) -> dict[str, float]:
    """CUDA kernel time in ms by :func:`kernel_category` class (torch.profiler) of one call of ``fn``,
    after two warm-up calls."""
    from torch.profiler import ProfilerActivity, profile

    fn(), fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    by_class: dict[str, float] = {}
    for evt in prof.key_averages():
        us = getattr(evt, "device_time_total", None) or getattr(evt, "cuda_time_total", 0.0)
        if us and evt.device_type == torch.autograd.DeviceType.CUDA:
            by_class[kernel_category(evt.key)] = by_class.get(kernel_category(evt.key), 0.0) + us / 1e3
    return by_class


def profile_unet_step(model_cfg, batch: int, device: torch.device, channels_last: bool, flops: float) -> list[dict]:
    """Where one eager bf16 forward+backward of the MVDiffusion UNet (``batch`` objects, random
    tensors) spends its GPU time: one row per kernel class, in NCHW or NHWC (``channels_last``).
    ``flops``: the step's FLOPs (FlopCounterMode), for the TFLOP/s of the whole step's kernel time."""
    from ..mvdiffusion.model import MVDiffusionModel

    model = MVDiffusionModel.from_dataclass(model_cfg).to(device).train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    args = unet_step_inputs(model_cfg, batch, device)

    def step():
        unet_step(model, args)
        model.zero_grad(set_to_none=True)
    try:  # a profiler problem must not cost the trainer's timings
        by_class = kernel_times(step)
    except Exception as e:
        log.warning("UNet step profile failed: %s", e)
        return [row("mvdiffusion_trainer", "UNet step profile", float("nan"), "", f"failed: {e}")]
    finally:
        del model, args
        torch.cuda.empty_cache()
    total = sum(by_class.values())
    layout = "NHWC (channels_last)" if channels_last else "NCHW"
    rows = [row("mvdiffusion_trainer", f"UNet step {batch} objects, eager, {layout}: kernel time", total, "ms",
                f"{flops / (total / 1e3) / 1e12:.0f} TFLOP/s over the kernels alone" if total else "")]
    rows += [row("mvdiffusion_trainer", f"UNet step {batch} objects, eager, {layout}: {cls} kernels", by_class[cls], "ms",
                 f"{by_class[cls] / total:.0%} of the kernel time") for cls in KERNEL_CLASSES if cls in by_class]
    return rows


def profile_gslrm_inference(fn, cfg, n_views: int, size: int) -> list[dict]:
    """Where the eager inference time goes: CUDA kernel time by class (:func:`kernel_times`, one call
    after warm-up), and the TFLOP/s each class reaches on its analytic FLOPs."""
    by_class = kernel_times(fn)
    total = sum(by_class.values())
    L, D, n = n_views * (size // cfg.patch) ** 2 + cfg.n_global, cfg.width, cfg.layers
    flops = {"attention": n * 4 * L * L * D, "matmul": n * 2 * L * (4 + 2 * cfg.mlp_ratio) * D * D}
    rows = []
    for cls in ("attention", "matmul", *(c for c in KERNEL_CLASSES if c not in ("attention", "matmul") and c in by_class)):
        ms = by_class.get(cls, 0.0)
        note = f"{ms / total:.0%} of {total:.1f} ms kernel time" if total else ""
        if cls in flops and ms:
            note += f"; {flops[cls] / (ms / 1e3) / 1e12:.0f} TFLOP/s on its {flops[cls] / 1e12:.1f} TFLOP"
        rows.append(row("gslrm", f"inference 6 views @{size} profile: {cls} kernels", ms, "ms", note))
    return rows
