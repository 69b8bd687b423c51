"""GS-LRM's attention: PyTorch's SDPA (the default), or an FP8 flash-attention forward for inference.

FP8 path (:func:`fp8_attention`, a Triton kernel written for this project; forward only):

1. q, k and v are quantised to float8 e4m3 with one scale per (batch, head): ``amax / 448``;
2. S = q k^T on fp8 tensor cores with fp32 accumulation, scaled back and by ``log2(e) / sqrt(d)``;
3. an online softmax in fp32 (running max and sum, ``exp2``), as in FlashAttention;
4. P (in [0, 1] after the max is subtracted) is quantised to e4m3 for P v, accumulated in fp32;
5. the output is divided by the running sum, scaled by v's scale and cast to the input dtype.

v is stored transposed (``[B*H, D, L]``), so both fp8 products read their second operand along the
reduction axis, the layout Hopper's fp8 matrix instructions take. e4m3 keeps 3 mantissa bits: the
accuracy cost is measured against SDPA on the same inputs (tests; ``mfl bench --only gslrm`` on a
GPU). Without autograd support it refuses to run where gradients are wanted.

``mode`` "auto" picks "fp8" only where :func:`fp8_unavailable` finds nothing missing and no gradient
is being recorded; otherwise SDPA.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import torch.nn.functional as F

ATTENTION_MODES = ("sdpa", "fp8", "auto")
E4M3_MAX = 448.0  # largest finite float8 e4m3 (fn) value


@functools.lru_cache(maxsize=None)
def _kernel():
    """The Triton kernel, built on first use (Triton is needed only for this path)."""
    import triton
    import triton.language as tl

    @triton.jit
    def fp8_attention_fwd(Q, K, Vt, O, SQ, SK, SV, L, qk_factor,
                          stride_q, stride_k, stride_v, stride_o,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
        """One BLOCK_M tile of queries of one (batch, head): Q, K [BH, L, D] fp8 (rows of D contiguous),
        Vt [BH, D, L] fp8, O [BH, L, D]; SQ, SK, SV [BH] fp32 scales; qk_factor = log2(e) / sqrt(D)."""
        m_block, bh = tl.program_id(0), tl.program_id(1)
        offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + bh * stride_q + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < L, other=0.0)
        s_scale = tl.load(SQ + bh) * tl.load(SK + bh) * qk_factor
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(0, L, BLOCK_N):
            n = start + offs_n
            kt = tl.load(K + bh * stride_k + n[None, :] * D + offs_d[:, None], mask=n[None, :] < L, other=0.0)
            s = tl.dot(q, kt) * s_scale                                   # [BLOCK_M, BLOCK_N], log2 units
            s = tl.where(n[None, :] < L, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(Vt + bh * stride_v + offs_d[None, :] * L + n[:, None], mask=n[:, None] < L, other=0.0)
            acc = tl.dot(p.to(tl.float8e4nv), v, acc * alpha[:, None])   # [BLOCK_M, D]
            m_i = m_new
        out = acc * (tl.load(SV + bh) / l_i)[:, None]
        tl.store(O + bh * stride_o + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < L)

    return triton, fp8_attention_fwd


def _quantise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [N, L, D] -> (float8 e4m3 [N, L, D], fp32 scale [N]) with x ~ q * scale, one scale per row block."""
    scale = x.abs().amax(dim=(1, 2)).float().clamp_min(1e-12) / E4M3_MAX
    return (x.float() / scale[:, None, None]).to(torch.float8_e4m3fn), scale


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
def fp8_unavailable(device: torch.device) -> str | None:
    """Why the fp8 kernel cannot run on ``device`` (None: it can): it needs CUDA, fp8 tensor cores
    (compute capability 8.9 or newer) and Triton."""
    if device.type != "cuda":
        return f"fp8 attention needs a CUDA device, not {device.type}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"fp8 attention needs compute capability 8.9+ (fp8 tensor cores), this GPU has {major}.{minor}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "fp8 attention needs Triton (pip install triton)"
    return None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mode: str = "sdpa") -> torch.Tensor:
    """Self-attention q, k, v [B, H, L, D] -> [B, H, L, D] by ``mode`` ("sdpa", "fp8" or "auto")."""
    if mode == "sdpa":
        return F.scaled_dot_product_attention(q, k, v)
    if mode == "auto":
        grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        mode = "sdpa" if grads or fp8_unavailable(q.device) else "fp8"
        return attention(q, k, v, mode)
    if mode == "fp8":
        interpreted = q.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"  # tests on a CPU
        why = None if interpreted else fp8_unavailable(q.device)
        if why:
            raise RuntimeError(why)
        return fp8_attention(q, k, v)
    raise ValueError(f"attention mode {mode!r} is not one of {ATTENTION_MODES}")


__all__ = ["ATTENTION_MODES", "attention", "fp8_attention", "fp8_unavailable"]
