"""Benchmark mechanics on CPU (the figures themselves come from `mfl bench` on a GPU)."""
import math

import pytest
import torch

from mousefacelift import bench


@pytest.mark.slow
def test_gslrm_scaling_runs_torchrun_with_each_process_count():
    """Two gloo processes on a CPU: the DDP path of the scaling benchmark end to end (about 30 s)."""
    rows = bench.bench_gslrm_scaling(torch.device("cpu"), process_counts=(1, 2), steps=5)
    by_case = {r["case"]: r for r in rows}
    case = "2 x 128 train step @32, batch 2 per process, {}: {}"  # the tiny config
    one = by_case[case.format("1 process", "samples/s")]["value"]
    two = by_case[case.format("2 processes", "samples/s")]["value"]
    assert one > 0 and two > 0
    assert by_case[case.format("1 process", "efficiency")]["value"] == 1.0
    assert math.isclose(by_case[case.format("2 processes", "efficiency")]["value"],
                        two / (2 * one), rel_tol=1e-3)  # rows keep 4 significant digits


def test_scaling_measures_the_gslrm_that_params_gpu_yaml_trains():
    import yaml

    from mousefacelift.runner import repo_root
    cfg, batch, target = bench.adopted_gslrm()
    section = yaml.safe_load((repo_root() / "params" / "gpu.yaml").read_text())["06_gslrm_finetune"]
    assert (cfg.layers, cfg.width, cfg.heads, cfg.image_size) == tuple(section[k] for k in ("layers", "width", "heads",
                                                                                              "image_size"))
    assert (batch, target, cfg.qk_norm) == (section["batch_size"], section.get("target_size", 0), section["qk_norm"])


def test_gslrm_scaling_is_skipped_with_one_device():
    (skip,) = bench.bench_gslrm_scaling(torch.device("cpu"))
    assert math.isnan(skip["value"]) and "needs 2 or more GPUs" in skip["note"]


def test_kernel_categories():
    assert bench.kernel_category("void flash_fwd_kernel<Flash_fwd_kernel_traits<64>>") == "attention"
    assert bench.kernel_category("sm90_xmma_gemm_bf16bf16_bf16f32") == "matmul"
    assert bench.kernel_category("nvjet_tst_256x128_64x4_2x1_v_bz_coopA_NTN") == "matmul"
    assert bench.kernel_category("vectorized_elementwise_kernel<4, GeluFunctor>") == "other"
    # the UNet's classes: cuDNN's convolutions (whose names also say gemm), its layout conversions, GroupNorm
    assert bench.kernel_category("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc") == "convolution"
    assert bench.kernel_category("sm90_xmma_wgrad_implicit_gemm_indexed_bf16bf16") == "convolution"
    assert bench.kernel_category("void cudnn::engines_precompiled::nchwToNhwcKernel<__nv_bfloat16>") == "layout"
    assert bench.kernel_category("void at::native::RowwiseMomentsCUDAKernel<c10::BFloat16>") == "normalization"
    assert bench.kernel_category("void at::native::vectorized_layer_norm_kernel<float>") == "normalization"
    assert bench.kernel_category("void at::native::unrolled_elementwise_kernel<copy_kernel, convert>") == "other"
    assert set(bench.KERNEL_CLASSES) >= {"attention", "convolution", "matmul", "normalization", "layout", "other"}


def test_video_codec_falls_back_to_mp4v_without_imageio_ffmpeg(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # `import imageio_ffmpeg` now raises ImportError
    assert bench.video_codec() == "mp4v"


@pytest.mark.slow
def test_mvdiffusion_bench_reports_per_object_time_when_batching(monkeypatch):
    """On CPU the demo UNet (shrunk to the tiny config here): the step, 50 steps per object, and the
    per-object time at 1 and 4 objects per call with their ratio, all measured in this one call."""
    import torch

    from mousefacelift import bench
    from mousefacelift.mvdiffusion import model as mv

    tiny = mv.MVDiffusionConfig.tiny(image_size=8)
    monkeypatch.setattr(mv, "MVDiffusionConfig", lambda: tiny)
    rows = {r["case"]: r for r in bench.bench_mvdiffusion(torch.device("cpu"))}
    per_object = [c for c in rows if "object(s) per call, per object" in c]
    assert len(per_object) == 2 and all(rows[c]["unit"] == "s" and rows[c]["value"] > 0 for c in per_object)
    ratio = next(r for c, r in rows.items() if "throughput at 4 vs 1" in c)
    assert ratio["unit"] == "x" and ratio["value"] > 0


@pytest.mark.slow
def test_4d_bench_reconstructs_a_frame_range_end_to_end():
    """bench_gslrm_4d runs `mfl infer --recording`'s path on a fresh procedural recording and reports
    reconstructed frames per second with the PLY count (tiny model on the CPU)."""
    rows = bench.bench_gslrm_4d(torch.device("cpu"), n_frames=3)
    fps, ms = rows
    assert fps["unit"] == "frames/s" and fps["value"] > 0 and "PLYs written" in fps["note"]
    assert ms["unit"] == "ms" and ms["value"] > 0
    written = int(fps["note"].split()[0])
    assert 1 <= written <= 3 and fps["value"] == pytest.approx(written / (3 * ms["value"] / 1e3), rel=0.01)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.profiler's CUDA kernels)")
@pytest.mark.parametrize("channels_last", [False, True])
def test_unet_step_profile_splits_the_kernel_time_by_class(channels_last):
    from mousefacelift.mvdiffusion.model import MVDiffusionConfig

    rows = bench.profile_unet_step(MVDiffusionConfig.tiny(), 2, torch.device("cuda"), channels_last, flops=1e9)
    total, *parts = rows
    assert total["unit"] == "ms" and total["value"] > 0 and "kernel time" in total["case"]
    by_class = {r["case"].rsplit(": ", 1)[1].removesuffix(" kernels"): r["value"] for r in parts}
    assert "convolution" in by_class and set(by_class) <= set(bench.KERNEL_CLASSES)
    assert abs(sum(by_class.values()) - total["value"]) < 1e-2 * total["value"] + 1e-3
