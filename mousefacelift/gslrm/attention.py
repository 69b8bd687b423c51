"""GS-LRM's attention kernels: "auto" (the default: FlashAttention-4 where it is installed and passes a
check on this GPU, else SDPA), PyTorch's SDPA ("sdpa"), FlashAttention-4's Hopper/Blackwell kernels
("fa4", training and inference), or an FP8 flash-attention forward for inference ("fp8").

FA4 path (:func:`fa4_attention`): ``flash_attn.cute.flash_attn_func`` on the tokens-major layout the
model makes q, k and v in ([B, L, H, D]: no copy), bf16 or fp16, with its own backward. It needs a GPU
of compute capability 9.x or 10.x and the package with NVIDIA's CUTLASS DSL. Measured on an H200
(runs/h200-fa4) with flash-attn-4 4.0.0b19 and nvidia-cutlass-dsl[cu13] 4.5.3:

* attention alone, 16 heads x 24578 tokens x 64: 4.70 ms (527 TFLOP/s) against SDPA's 6.06 ms (409);
* the 24 x 1024 GS-LRM, 6 views at 512 px: 144.9 ms against 179.3 ms (1.24x), renders 56.9 dB from SDPA's;
* a training step of that model: 1.12x (256 px, batch 4) and 1.21x (512 px, batch 1) SDPA's speed.

"auto" (:func:`resolve`) takes FA4 only for bf16/fp16 inputs on a device where :func:`fa4_ready` holds:
the package imports and, once per device, its output on a small random input matches SDPA's
(relative RMS < 0.01). Anything else (a CPU, fp32, a missing or broken install) runs SDPA, with the
reason logged once.

FP8 path (:func:`fp8_attention`; its Triton kernel, written for this project, is :mod:`.fp8_kernel`; forward only):

1. q, k and v are quantised to float8 e4m3 with one scale per (batch, head): ``amax / 448``;
2. S = q k^T on fp8 tensor cores with fp32 accumulation, scaled back and by ``log2(e) / sqrt(d)``;
3. an online softmax in fp32 (running max and sum, ``exp2``), as in FlashAttention;
4. P (in [0, 1] after the max is subtracted) is quantised to e4m3 for P v, accumulated in fp32;
5. the output is divided by the running sum, scaled by v's scale and cast to the input dtype.

v is stored transposed (``[B*H, D, L]``), so both fp8 products read their second operand along the
reduction axis, the layout Hopper's fp8 matrix instructions take. e4m3 keeps 3 mantissa bits: the
accuracy cost is measured against SDPA on the same inputs (tests; ``mfl bench --only gslrm`` on a
GPU). Without autograd support it refuses to run where gradients are wanted.

Measured on an H200 (runs/h200-gslrm-targets): correct (relative RMS 0.056 against SDPA at GS-LRM's
inference shape) but slower than SDPA's flash kernel: 7.6 vs 5.7 ms for 16 heads x 24578 tokens, 222 vs
182 ms for the whole 24 x 1024 model at 512 px. So fp8 is only ever chosen by name.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os

import torch
import torch.nn.functional as F

ATTENTION_MODES = ("auto", "sdpa", "fa4", "fp8")
E4M3_MAX = 448.0  # largest finite float8 e4m3 (fn) value
FA4_CHECK_REL_RMS = 0.01  # "auto" uses FA4 only when it matches SDPA this closely on the device (bf16: ~0.003)

log = logging.getLogger(__name__)


def _kernel():
    """(triton, the kernel), imported on first use: Triton is needed only for this path."""
    import triton

    from .fp8_kernel import fp8_attention_fwd
    return triton, fp8_attention_fwd


def _quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, L, D] -> (float8 e4m3 [N, L, D], fp32 scale [N]) with x ~ q * scale, one scale per head (index of N).
    The multiplier is rounded to x's dtype first, so x is read once with no fp32 copy; the largest
    value then lands within a bf16 rounding of 448 (below 464, where e4m3 would overflow)."""
    inv = (E4M3_MAX / x.abs().amax(dim=(1, 2)).float().clamp_min(1e-12)).to(x.dtype)
    return (x * inv[:, None, None]).to(torch.float8_e4m3fn), 1.0 / inv.float()


def fp8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_m: int = 128, block_n: int = 64,
                  num_warps: int = 8, num_stages: int = 3) -> torch.Tensor:
    """Softmax(q k^T / sqrt(D)) v with the fp8 kernel (module docstring). q, k, v [B, H, L, D] (the
    same L: self-attention; D a power of two >= 16) -> [B, H, L, D] in q's dtype. Forward only."""
    if q.requires_grad or k.requires_grad or v.requires_grad:
        raise RuntimeError("fp8 attention is forward-only (inference): run under torch.no_grad(), or use "
                           "attention mode 'sdpa' for training")
    B, H, L, D = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"fp8 attention is self-attention: q, k, v must have one shape, got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    if D < 16 or D & (D - 1):
        raise ValueError(f"fp8 attention needs a head dimension that is a power of two >= 16, got {D}")
    triton, kernel = _kernel()
    q8, sq = _quantise(q.reshape(B * H, L, D))
    k8, sk = _quantise(k.reshape(B * H, L, D))
    v8, sv = _quantise(v.reshape(B * H, L, D))
    vt = v8.transpose(1, 2).contiguous()                                  # [BH, D, L]
    out = torch.empty(B * H, L, D, dtype=q.dtype, device=q.device)
    grid = (triton.cdiv(L, block_m), B * H)
    kernel[grid](q8, k8, vt, out, sq, sk, sv, L, math.log2(math.e) / math.sqrt(D),
                 q8.stride(0), k8.stride(0), vt.stride(0), out.stride(0),
                 BLOCK_M=block_m, BLOCK_N=block_n, D=D, num_warps=num_warps, num_stages=num_stages)
    return out.view(B, H, L, D)


@functools.lru_cache(maxsize=None)
def fa4_unavailable(device: torch.device) -> str | None:
    """Why FlashAttention-4 cannot run on ``device`` (None: it can): it needs CUDA, a Hopper or
    Blackwell GPU (compute capability 9.x or 10.x) and the flash-attn-4 package."""
    if device.type != "cuda":
        return f"FlashAttention-4 needs a CUDA device, not {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if major not in (9, 10):
        return f"FlashAttention-4 needs compute capability 9.x or 10.x (Hopper, Blackwell), this GPU has {major}.{minor}"
    try:
        found = importlib.util.find_spec("flash_attn.cute") is not None
    except ModuleNotFoundError:  # no flash_attn package at all
        found = False
    if not found:
        return ("FlashAttention-4 is not installed (pip install flash-attn-4; measured here: flash-attn-4==4.0.0b19 "
                "'nvidia-cutlass-dsl[cu13]==4.5.3' quack-kernels==0.5.0)")
    return None


def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax(q k^T / sqrt(D)) v by FlashAttention-4. q, k, v [B, H, L, D] bf16/fp16 (typically
    transposed views of [B, L, H, D] tensors, which the kernel reads as they are) -> [B, H, L, D]
    (a transposed view of the kernel's [B, L, H, D] output). Differentiable."""
    from flash_attn.cute import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    out = out[0] if isinstance(out, tuple) else out                       # (out, lse)
    return out.transpose(1, 2)


@functools.lru_cache(maxsize=None)
def fp8_unavailable(device: torch.device) -> str | None:
    """Why the fp8 kernel cannot run on ``device`` (None: it can): it needs CUDA, fp8 tensor cores
    (compute capability 8.9 or newer) and Triton."""
    if device.type != "cuda":
        return f"fp8 attention needs a CUDA device, not {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8 attention needs compute capability 8.9+ (fp8 tensor cores), this GPU has {major}.{minor}"
    if importlib.util.find_spec("triton") is None:
        return "fp8 attention needs Triton (pip install triton)"
    return None


def unavailable(mode: str, device: torch.device) -> str | None:
    """Why kernel ``mode`` cannot run on ``device`` (None: it can; SDPA, and so "auto", always can)."""
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode {mode!r} is not one of {ATTENTION_MODES}")
    return {"auto": lambda d: None, "sdpa": lambda d: None, "fa4": fa4_unavailable,
            "fp8": fp8_unavailable}[mode](device)


_FA4_READY: dict[torch.device, bool] = {}  # fa4_ready's answers, per device


def fa4_ready(device: torch.device) -> bool:
    """Whether "auto" may use FlashAttention-4 on ``device``: it can run there (:func:`fa4_unavailable`)
    and, checked once per device, its output for random bf16 q, k, v [1, 2, 256, 64] matches SDPA's
    within FA4_CHECK_REL_RMS. A failure (e.g. a broken install) is logged with its reason."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if device in _FA4_READY:
        return _FA4_READY[device]
    why = fa4_unavailable(device)
    if why is None:
        try:
            gen = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(1, 256, 2, 64, device=device, generator=gen, dtype=torch.bfloat16).transpose(1, 2)
                       for _ in range(3))
            with torch.no_grad():
                got, ref = fa4_attention(q, k, v).float(), F.scaled_dot_product_attention(q, k, v).float()
            rel = float((got - ref).square().mean().sqrt() / ref.square().mean().sqrt())
            if not rel < FA4_CHECK_REL_RMS:
                why = f"its output differs from SDPA's by a relative RMS of {rel:.3g} on a random input"
        except Exception as e:  # an install that imports but cannot build or run its kernels
            why = f"its check failed: {type(e).__name__}: {e}"
    if why is None:
        log.info("attention 'auto' uses FlashAttention-4 on %s", device)
    else:
        log.info("attention 'auto' uses SDPA on %s: %s", device, why)
    _FA4_READY[device] = why is None
    return why is None


def resolve(mode: str, q: torch.Tensor) -> str:
    """The kernel that runs for ``mode`` on inputs like q [B, H, L, D]: "auto" -> "fa4" for bf16/fp16 q
    with a head dimension FA4 takes (8-256, a multiple of 8) on a device where :func:`fa4_ready` holds,
    else "sdpa"; any other mode is itself."""
    if mode != "auto":
        return mode
    head_dim = q.shape[-1]
    fits = q.dtype in (torch.bfloat16, torch.float16) and 8 <= head_dim <= 256 and head_dim % 8 == 0
    if not fits or q.device.type != "cuda":
        return "sdpa"
    if torch.compiler.is_compiling():  # never run the check inside a traced graph: use its earlier answer
        return "fa4" if _FA4_READY.get(q.device, False) else "sdpa"
    return "fa4" if fa4_ready(q.device) else "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "auto") -> torch.Tensor:
    """Self-attention q, k, v [B, H, L, D] -> [B, H, L, D] by ``mode`` ("auto", "sdpa", "fa4" or "fp8")."""
    mode = resolve(mode, q)
    if mode == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    interpreted = mode == "fp8" and q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"  # CPU tests
    why = None if interpreted else unavailable(mode, q.device)  # an unknown mode: ValueError
    if why:
        raise RuntimeError(why)
    return fa4_attention(q, k, v) if mode == "fa4" else fp8_attention(q, k, v)


__all__ = ["ATTENTION_MODES", "attention", "fa4_attention", "fa4_ready", "fa4_unavailable", "fp8_attention",
           "fp8_unavailable", "resolve", "unavailable"]
