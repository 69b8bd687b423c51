"""The fp8 attention forward in Triton (see :mod:`mousefacelift.gslrm.attention`, which quantises the
inputs and launches it). Imported only when that path runs, so Triton stays optional."""
import triton
import triton.language as tl


@triton.jit
def key_block(acc, l_i, m_i, q, K, Vt, start, L, s_scale, offs_n, offs_d, D: tl.constexpr,
              MASKED: tl.constexpr):
    """One BLOCK_N block of keys for a tile of queries (K, Vt: this head's rows): the online
    softmax update. MASKED: the last, partial block (keys past L are -inf)."""
    n = start + offs_n
    if MASKED:
        kt = tl.load(K + n[None, :] * D + offs_d[:, None], mask=n[None, :] < L, other=0.0)
    else:
        kt = tl.load(K + n[None, :] * D + offs_d[:, None])
    s = tl.dot(q, kt) * s_scale                                       # [BLOCK_M, BLOCK_N], log2 units
    if MASKED:
        s = tl.where(n[None, :] < L, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    if MASKED:
        v = tl.load(Vt + offs_d[None, :] * L + n[:, None], mask=n[:, None] < L, other=0.0)
    else:
        v = tl.load(Vt + offs_d[None, :] * L + n[:, None])
    acc = tl.dot(p.to(tl.float8e4nv), v, acc * alpha[:, None])       # [BLOCK_M, D]
    return acc, l_i, m_new


@triton.jit
def fp8_attention_fwd(Q, K, Vt, O, SQ, SK, SV, L, qk_factor,
                      stride_q, stride_k, stride_v, stride_o,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
    """One BLOCK_M tile of queries of one (batch, head): Q, K [BH, L, D] fp8 (rows of D contiguous),
    Vt [BH, D, L] fp8, O [BH, L, D]; SQ, SK, SV [BH] fp32 scales; qk_factor = log2(e) / sqrt(D).
    Whole key blocks run unmasked; a partial last block, masked."""
    m_block, bh = tl.program_id(0), tl.program_id(1)
    offs_m = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + bh * stride_q + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < L, other=0.0)
    s_scale = tl.load(SQ + bh) * tl.load(SK + bh) * qk_factor
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    K_h, Vt_h = K + bh * stride_k, Vt + bh * stride_v
    whole = (L // BLOCK_N) * BLOCK_N
    for start in range(0, whole, BLOCK_N):
        acc, l_i, m_i = key_block(acc, l_i, m_i, q, K_h, Vt_h, start, L, s_scale, offs_n, offs_d, D, False)
    if whole < L:
        acc, l_i, m_i = key_block(acc, l_i, m_i, q, K_h, Vt_h, whole, L, s_scale, offs_n, offs_d, D, True)
    out = acc * (tl.load(SV + bh) / l_i)[:, None]
    tl.store(O + bh * stride_o + offs_m[:, None] * D + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=offs_m[:, None] < L)
