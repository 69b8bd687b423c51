"""The pure-torch rasterizer of 3D Gaussians: the differentiable CPU reference and fallback of
:func:`mousefacelift.gaussians.rasterize`, written to reproduce gsplat 1.5.3's "classic" EWA
splatting (same projection, low-pass, culling, depth order, alpha rule and early stop).

Steps: 1. project every Gaussian (EWA) to a 2D mean and conic; 2. bin them into tiles in depth
order; 3. composite each tile front to back, block by block, with a hand-written backward that
recomputes the alphas instead of keeping per-pair tensors.

Shapes and camera conventions are those of :func:`mousefacelift.gaussians.rasterize`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

ALPHA_MIN = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD: fainter splats are skipped
ALPHA_MAX = 0.999  # gsplat 1.5.3 clamps a splat's alpha to this (RasterizeToPixels3DGSFwd.cu)
T_MIN = 1e-4  # a pixel stops once its transmittance would fall to this (exclusive)


@dataclass(frozen=True)
class RasterSettings:
    """Options of :func:`mousefacelift.gaussians.rasterize` beyond its tensors. Defaults match FaceLift / gsplat."""
    far: float = 100.0  # far plane: Gaussians with camera depth > far are culled
    eps2d: float = 0.3  # low-pass filter added to the diagonal of every 2D covariance (pixels^2)
    tile_size: int = 8  # torch backend: pixels per tile side (Gaussians are binned per tile)
    chunk_pairs: int = 1 << 21  # torch backend: pixel x Gaussian pairs evaluated at once (memory bound)
    block_gaussians: int = 256  # torch backend: Gaussians per tile per step; pixels stop early between steps


@dataclass
class Render:
    """Output of :func:`rasterize`: rgb [B, V, H, W, 3] (background composited), alpha [B, V, H, W, 1]
    (accumulated opacity, 1 - final transmittance) and depth [B, V, H, W, 1] or None (expected
    camera z, sum(w_i z_i) / alpha, 0 where alpha is 0; gsplat's "ED")."""
    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor | None = None


# ----------------------------------------------------------------------------------------------
# torch backend: 1. project (EWA), 2. bin into tiles, 3. composite front to back
# ----------------------------------------------------------------------------------------------
def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """Quaternions [..., 4] wxyz (any non-zero norm) -> rotation matrices [..., 3, 3]."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1).unflatten(-1, (3, 3))


@dataclass
class Projection:
    """Gaussians projected into I = B*V images (flattened): means2d [I, N, 2] pixels, conics
    [I, N, 3] (a, b, c) of the inverse 2D covariance [[a, b], [b, c]] (low-pass included),
    depths [I, N] camera z, radii [I, N, 2] integer bounding-box half sizes (pixels, no grad) and
    valid [I, N] (False = culled: outside [near, far], off screen, degenerate or too faint)."""
    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    valid: torch.Tensor


def project_gaussians(means, quats, scales, opacities, w2c, K, width: int, height: int, near: float,
                      settings: RasterSettings) -> Projection:
    """EWA projection as gsplat's ``persp_proj``: means [B, N, 3], quats [B, N, 4], scales [B, N, 3],
    opacities [B, N], w2c [B, V, 4, 4], K [B, V, 3, 3] -> :class:`Projection` over I = B*V images."""
    # 1. world -> camera: mean_c = R m + t, Sigma_c = R (Rq S S Rq^T) R^T
    R, t = w2c[..., :3, :3], w2c[..., :3, 3]
    mean_c = torch.einsum("bvij,bnj->bvni", R, means) + t[:, :, None]
    M = quat_to_rotmat(quats) * scales[..., None, :]
    RM = torch.einsum("bvij,bnjk->bvnik", R, M)
    cov_c = RM @ RM.transpose(-1, -2)  # [B, V, N, 3, 3]
    x, y, z = mean_c.unbind(-1)
    # 2. Jacobian of the perspective projection, x/z and y/z clamped to 1.3x the field of view
    fx, fy, cx, cy = (K[..., i, j][..., None] for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    in_depth = (z >= near) & (z <= settings.far)
    zs = torch.where(in_depth, z, torch.ones_like(z))  # culled ones get a harmless depth
    lim_x, lim_y = 0.3 * 0.5 * width / fx, 0.3 * 0.5 * height / fy
    tx = zs * torch.minimum(torch.maximum(x / zs, -(cx / fx + lim_x)), (width - cx) / fx + lim_x)
    ty = zs * torch.minimum(torch.maximum(y / zs, -(cy / fy + lim_y)), (height - cy) / fy + lim_y)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / zs ** 2, zero, fy / zs, -fy * ty / zs ** 2], -1).unflatten(-1, (2, 3))
    cov2d = J @ cov_c @ J.transpose(-1, -2)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    # 3. low-pass filter, inverse (conic)
    a, b, c = cov2d[..., 0, 0] + settings.eps2d, cov2d[..., 0, 1], cov2d[..., 1, 1] + settings.eps2d
    det = a * c - b * b
    ok = in_depth & (det > 0)
    det_s = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([c / det_s, -b / det_s, a / det_s], -1)
    # 4. opacity-aware bounding box (no grad) and culling, as gsplat
    with torch.no_grad():
        op = opacities[:, None, :].expand_as(z)
        extend = torch.sqrt(2.0 * torch.log((op / ALPHA_MIN).clamp_min(1.0))).clamp(max=3.33)
        radii = torch.stack([torch.ceil(extend * a.clamp_min(0).sqrt()),
                             torch.ceil(extend * c.clamp_min(0).sqrt())], -1)
        mx, my = means2d.detach().unbind(-1)
        on_screen = ((mx + radii[..., 0] > 0) & (mx - radii[..., 0] < width)
                     & (my + radii[..., 1] > 0) & (my - radii[..., 1] < height))
        ok = ok & (op >= ALPHA_MIN) & on_screen & ((radii > 0).any(-1))
    flat = lambda v: v.flatten(0, 1)  # noqa: E731  [B, V, ...] -> [I, ...]
    return Projection(flat(means2d), flat(conics), flat(zs), flat(radii.long()), flat(ok))


@dataclass
class _TilePlan:
    """Which Gaussians each pixel tile sees, in depth order, grouped into chunks of tiles.

    tiles: per chunk, global tile ids [t] (tile id = image * tiles_per_image + row * tiles_x + col);
    tables: per chunk, flat Gaussian ids [t, G] (pad = the index of a transparent dummy row);
    blocks: per chunk, how many Gaussians (along G) are evaluated at once."""
    tile_size: int
    tiles_x: int
    tiles_y: int
    n_images: int
    tiles: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    blocks: list = field(default_factory=list)


def _plan_tiles(proj: Projection, width: int, height: int, settings: RasterSettings) -> _TilePlan:
    """Bin every valid (image, Gaussian) into the tiles its bounding box touches (gsplat's
    isect_tiles), sort each tile's list front to back and group tiles into memory-bounded chunks."""
    ts = settings.tile_size
    I, N = proj.depths.shape
    plan = _TilePlan(ts, math.ceil(width / ts), math.ceil(height / ts), I)
    per_image = plan.tiles_x * plan.tiles_y
    pad = I * N  # index of the dummy row appended by the compositor
    dev = proj.depths.device
    # 1. valid flat ids, sorted by depth (front to back)
    ids = proj.valid.flatten().nonzero().squeeze(1)
    ids = ids[torch.sort(proj.depths.detach().flatten()[ids], stable=True).indices]
    if ids.numel() == 0:
        return plan
    img = ids // N
    m2d, rad = proj.means2d.detach().reshape(-1, 2)[ids], proj.radii.reshape(-1, 2)[ids]
    # 2. tile ranges [lo, hi) per Gaussian
    lo = torch.floor((m2d - rad) / ts).long()
    hi = torch.ceil((m2d + rad) / ts).long()
    lim = torch.tensor([plan.tiles_x, plan.tiles_y], device=dev)
    lo, hi = torch.minimum(lo.clamp_min(0), lim), torch.minimum(hi.clamp_min(0), lim)
    span = hi - lo
    n_tiles = span[:, 0] * span[:, 1]
    # 3. expand to (tile, Gaussian) pairs; a stable sort by tile keeps the depth order within a tile
    rank = torch.repeat_interleave(torch.arange(ids.numel(), device=dev), n_tiles)
    k = torch.arange(rank.numel(), device=dev) - (torch.cumsum(n_tiles, 0) - n_tiles)[rank]
    col = lo[rank, 0] + k % span[rank, 0]
    row = lo[rank, 1] + k // span[rank, 0]
    tile = img[rank] * per_image + row * plan.tiles_x + col
    tile, order = torch.sort(tile, stable=True)
    gid = ids[rank[order]]
    # 4. busiest tiles first; chunks of similar tiles so that padding wastes little
    uniq, counts = torch.unique_consecutive(tile, return_counts=True)
    by_count = torch.argsort(counts, descending=True, stable=True)
    starts = (torch.cumsum(counts, 0) - counts)
    P = ts * ts
    counts_l, starts_l, uniq_l = counts[by_count].tolist(), starts[by_count], uniq[by_count]
    i = 0
    while i < len(counts_l):
        block = max(1, min(counts_l[i], settings.block_gaussians, settings.chunk_pairs // P))
        j, j_max = i + 1, min(i + max(1, settings.chunk_pairs // (P * block)), len(counts_l))
        while j < j_max and 4 * counts_l[j] > 3 * counts_l[i]:  # at most 25% padding per tile
            j += 1
        sel = slice(i, j)
        cnt = counts[by_count[sel]]
        g_max = int(cnt[0])
        table = torch.full((cnt.numel(), g_max), pad, dtype=torch.long, device=dev)
        slot = torch.arange(g_max, device=dev)
        mask = slot[None, :] < cnt[:, None]
        src = (starts_l[sel][:, None] + slot[None, :])[mask]
        table[mask] = gid[src]
        plan.tiles.append(uniq_l[sel])
        plan.tables.append(table)
        plan.blocks.append(block)
        i = sel.stop
    return plan


def _tile_origins(plan: _TilePlan, tiles: torch.Tensor, dtype) -> torch.Tensor:
    """Top-left pixel corners (x, y) [t, 2] of the given global tile ids [t]."""
    local = tiles % (plan.tiles_x * plan.tiles_y)
    return torch.stack([local % plan.tiles_x, local // plan.tiles_x], -1).to(dtype) * plan.tile_size


def _local_pixels(tile_size: int, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of a tile relative to its corner, row-major: px, py [P]."""
    k = torch.arange(tile_size * tile_size, device=device)
    return (k % tile_size).to(dtype) + 0.5, (k // tile_size).to(dtype) + 0.5


def _splat_alpha(m2d, con, log_opa, px, py):
    """Alphas of gathered splats at one tile's pixels -> alpha [t, P, g] (0 where skipped) and
    raw = opacity * exp(-sigma) before the 0.999 clamp [t, P, g].

    m2d [t, g, 2] means relative to the tile corner, con [t, g, 3] conics (a, b, c), log_opa [t, g],
    px, py [P] local pixel centres. sigma = 0.5 (a dx^2 + c dy^2) + b dx dy with d = mean - pixel.
    gsplat also skips sigma < 0, which positive-definite conics only give through rounding."""
    dx = m2d[:, None, :, 0] - px[None, :, None]
    dy = m2d[:, None, :, 1] - py[None, :, None]
    s = dx * (-0.5 * con[:, None, :, 0])
    s.addcmul_(dy, -con[:, None, :, 1]).mul_(dx).add_(log_opa[:, None, :])
    s.addcmul_(dy.mul_(dy), -0.5 * con[:, None, :, 2])
    raw = s.exp_()  # log(opacity) - sigma -> opacity * exp(-sigma)
    alpha = raw.clamp(max=ALPHA_MAX)
    alpha.masked_fill_(raw < ALPHA_MIN, 0.0)
    return alpha, raw


def _composite_block(alpha, T):
    """Front-to-back compositing of one block of depth-sorted splats. alpha [t, P, g] (zeroed in
    place after the early stop), T [t, P] transmittance carried in -> weights w [t, P, g],
    transmittance before each splat T_excl [t, P, g], transmittance after the block [t, P]."""
    one_minus = 1.0 - alpha
    T_incl = torch.cumprod(one_minus, -1).mul_(T[..., None])
    stop = T_incl <= T_MIN  # gsplat stops before the splat that would take T to <= 1e-4
    alpha.masked_fill_(stop, 0.0)
    T_excl = torch.cat([T[..., None], T_incl[..., :-1]], -1)
    T_next = T * one_minus.masked_fill_(stop, 1.0).prod(-1)
    return alpha * T_excl, T_excl, T_next


class _Composite(torch.autograd.Function):
    """Tile compositing with a hand-written backward that recomputes alphas chunk by chunk, so
    memory stays O(chunk_pairs) floats in both passes (plus O(pixels + Gaussians))."""

    @staticmethod
    def forward(ctx, means2d, conics, opac, feats, bgs, plan: _TilePlan):
        # means2d [M+1, 2], conics [M+1, 3], opac [M+1], feats [M+1, D], bgs [I, D] -> per tile
        # feats [I * tiles, P, D] (background included), T [I * tiles, P]
        dt, dev = feats.dtype, feats.device
        P, D = plan.tile_size ** 2, feats.shape[1]
        n_tiles = plan.n_images * plan.tiles_x * plan.tiles_y
        out = bgs.repeat_interleave(plan.tiles_x * plan.tiles_y, 0)[:, None, :].repeat(1, P, 1)
        T_out = torch.ones(n_tiles, P, dtype=dt, device=dev)
        px, py = _local_pixels(plan.tile_size, dt, dev)
        log_opac = opac.log()  # the transparent dummy row gets -inf: alpha 0
        for tiles, table, block in zip(plan.tiles, plan.tables, plan.blocks):
            origin = _tile_origins(plan, tiles, dt)[:, None, :]
            acc = torch.zeros(tiles.numel(), P, D, dtype=dt, device=dev)
            T = torch.ones(tiles.numel(), P, dtype=dt, device=dev)
            for g0 in range(0, table.shape[1], block):
                if not (T > T_MIN).any():
                    break
                ids = table[:, g0:g0 + block]
                alpha, _ = _splat_alpha(means2d[ids] - origin, conics[ids], log_opac[ids], px, py)
                w, _, T = _composite_block(alpha, T)
                acc.baddbmm_(w, feats[ids])
            out[tiles] = acc.addcmul_(T[..., None], out[tiles])
            T_out[tiles] = T
        ctx.plan = plan
        ctx.save_for_backward(means2d, conics, opac, feats, bgs, out, T_out)
        return out, T_out

    @staticmethod
    def backward(ctx, g_out, g_T):
        means2d, conics, opac, feats, bgs, out, T_out = ctx.saved_tensors
        plan = ctx.plan
        dt, dev = feats.dtype, feats.device
        v_m2d, v_con, v_opa, v_feat = (torch.zeros_like(x) for x in (means2d, conics, opac, feats))
        per_image = plan.tiles_x * plan.tiles_y
        bg_tiles = bgs.repeat_interleave(per_image, 0)  # [I * tiles, D]
        # background: out = sum_i w_i c_i + T_final * bg
        v_bgs = (g_out * T_out[..., None]).sum(1).unflatten(0, (plan.n_images, per_image)).sum(1)
        px, py = _local_pixels(plan.tile_size, dt, dev)
        basis = torch.stack([torch.ones_like(px), px, py, px * px, px * py, py * py], -1)  # [P, 6]
        log_opac = opac.log()
        for tiles, table, block in zip(plan.tiles, plan.tables, plan.blocks):
            origin = _tile_origins(plan, tiles, dt)[:, None, :]
            g, Tf, bg = g_out[tiles], T_out[tiles], bg_tiles[tiles][:, None, :]  # [t, P, D], [t, P], [t, 1, D]
            # 1. d out / d alpha_i = T_i c_i - (sum_{j>i} w_j c_j + T_f bg) / (1 - alpha_i) and
            #    d T_f / d alpha_i = -T_f / (1 - alpha_i); contracted with the incoming gradients,
            #    with sum_{j>i} w_j (g . c_j) = total - prefix_i:
            rest = ((g * bg).sum(-1) + g_T[tiles]) * Tf  # [t, P]
            total = (g * (out[tiles] - Tf[..., None] * bg)).sum(-1)  # sum_j w_j (g . c_j), [t, P]
            T, prefix = torch.ones_like(Tf), torch.zeros_like(Tf)
            for g0 in range(0, table.shape[1], block):
                if not (T > T_MIN).any():
                    break
                ids = table[:, g0:g0 + block]
                m, con = means2d[ids] - origin, conics[ids]  # [t, g, 2], [t, g, 3]
                alpha, raw = _splat_alpha(m, con, log_opac[ids], px, py)
                w, T_excl, T = _composite_block(alpha, T)
                q = torch.bmm(g, feats[ids].transpose(1, 2))  # g . c_j, [t, P, g]
                prefix_incl = torch.cumsum(w * q, -1).add_(prefix[..., None])
                prefix = prefix_incl[..., -1].clone()
                v = prefix_incl.neg_().add_((total + rest)[..., None]).div_(1.0 - alpha)
                v = torch.addcmul(v.neg_(), T_excl, q)  # d loss / d alpha
                # 2. alpha = min(0.999, raw), raw = opacity exp(-sigma): d loss / d sigma
                v_sigma = v.mul_(raw).neg_().mul_((alpha > 0) & (raw <= ALPHA_MAX))
                # 3. sums over pixels of v_sigma * {1, dx, dy, dx^2, dx dy, dy^2} from pixel moments
                M0, Mx, My, Mxx, Mxy, Myy = torch.matmul(v_sigma.transpose(1, 2), basis).unbind(-1)
                mx, my = m.unbind(-1)
                Sx, Sy = mx * M0 - Mx, my * M0 - My
                Sxx = mx * mx * M0 - 2 * mx * Mx + Mxx
                Sxy = mx * my * M0 - mx * My - my * Mx + Mxy
                Syy = my * my * M0 - 2 * my * My + Myy
                a, b, c = con.unbind(-1)
                op = opac[ids]
                flat = ids.flatten()
                v_m2d.index_add_(0, flat, torch.stack([a * Sx + b * Sy, b * Sx + c * Sy], -1).flatten(0, 1))
                v_con.index_add_(0, flat, torch.stack([0.5 * Sxx, Sxy, 0.5 * Syy], -1).flatten(0, 1))
                v_op = torch.where(op > 0, -M0 / op.clamp_min(1e-30), torch.zeros_like(op))  # d raw/d op = raw/op
                v_opa.index_add_(0, flat, v_op.flatten())
                v_feat.index_add_(0, flat, torch.bmm(w.transpose(1, 2), g).flatten(0, 1))
        return v_m2d, v_con, v_opa, v_feat, v_bgs, None


def rasterize_torch(means, quats, scales, opacities, rgb, w2c, K, width: int, height: int,
                    background: torch.Tensor, *, return_depth: bool = False, near: float = 0.01,
                    settings: RasterSettings = RasterSettings()) -> Render:
    """The pure-torch backend (CPU reference and fallback), in the inputs' dtype.

    Shapes as :func:`rasterize`, but rgb [B, N, 3] are final colours and background is [B, V, 3].
    Differentiable w.r.t. means, quats, scales, opacities, rgb and background (not cameras).
    Memory: O(settings.chunk_pairs) floats of working space per pass (a chunk of tiles x a block of
    their depth-sorted Gaussians, transmittance carried from block to block; about 10 such arrays
    live at once), plus O(B V N + B V H W) for the projection and the images and O(tile-Gaussian
    overlaps) integers for the binning. Autograd keeps no per-pair tensors: the hand-written
    backward recomputes the alphas chunk by chunk.
    """
    B, N = means.shape[:2]
    V = w2c.shape[1]
    proj = project_gaussians(means, quats, scales, opacities, w2c, K, width, height, near, settings)
    plan = _plan_tiles(proj, width, height, settings)
    feats = rgb[:, None].expand(B, V, N, 3)
    if return_depth:
        feats = torch.cat([feats, proj.depths.view(B, V, N, 1)], -1)
    bgs = background.reshape(B * V, 3)
    if return_depth:
        bgs = torch.cat([bgs, torch.zeros_like(bgs[:, :1])], -1)
    D = feats.shape[-1]

    def flat_pad(x, width_):  # [I, N, k] -> [I*N + 1, k] with a transparent dummy last row
        return torch.cat([x.reshape(-1, width_), torch.zeros_like(x.reshape(-1, width_)[:1])], 0)

    opac = opacities[:, None].expand(B, V, N).reshape(-1)
    out, T = _Composite.apply(flat_pad(proj.means2d, 2), flat_pad(proj.conics, 3),
                              torch.cat([opac, opac.new_zeros(1)]), flat_pad(feats, D), bgs, plan)
    # tiles [I * ty * tx, ts * ts, ...] -> images [B, V, H, W, ...]
    ts = settings.tile_size

    def untile(x):
        x = x.reshape(B, V, plan.tiles_y, plan.tiles_x, ts, ts, -1).permute(0, 1, 2, 4, 3, 5, 6)
        return x.reshape(B, V, plan.tiles_y * ts, plan.tiles_x * ts, -1)[:, :, :height, :width]

    img, alpha = untile(out), 1.0 - untile(T)
    depth = img[..., 3:4] / alpha.clamp_min(1e-10) if return_depth else None
    return Render(rgb=img[..., :3], alpha=alpha, depth=depth)
