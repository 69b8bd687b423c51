"""GS-LRM: posed images -> pixel-aligned 3D Gaussians, compatible with FaceLift's released weights.

One file in the manner of nanoGPT. Module names and shapes follow the released checkpoint exactly
(its key list is committed as tests/data/gslrm_state_dict.json), so ``model.state_dict()`` of
:meth:`GSLRMConfig.full` has the same 151 keys and shapes.

Pipeline (numbers are the full config at 512 px):
1. per pixel features [rgb*2-1, ray_d, p0] (9 channels), rays through pixel centres (+0.5);
2. patchify 8x8 with flatten order (ph, pw, c) -> Linear(576 -> 1024): 4096 tokens per view;
3. prepend 2 learned global tokens, LayerNorm, 24 pre-norm transformer blocks;
4. heads: global tokens -> 1 Gaussian each; image tokens -> 64 Gaussians each (one per pixel),
   output index (ph*8 + pw)*14 + k;
5. activations (fp32): pixel-aligned centres on the pixel rays, scale exp(min(x-2.3, -1.2)),
   opacity sigmoid(x-2), colour = raw SH degree-0 coefficients, quaternion normalised.

Global Gaussians' centres (assumption, documented): FaceLift applies no activation to the xyz of
the two global Gaussians; their raw xyz output is used as world coordinates directly. We do
the same. Their other attributes use the same activations as the pixel-aligned ones.

Gaussian order in the outputs: the ``n_global`` global Gaussians first, then the pixel-aligned
ones in raster order [V, H, W] (view-major, then row, then column). Rendering does not depend on
the order; FaceLift itself stores the pixel-aligned ones patch by patch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .. import cameras
from ..configs import bounded, check_ranges, from_dict
from ..gaussians import SH_C0, Gaussians, rasterize  # SH_C0: colour = 0.5 + SH_C0 * sh0
from ..training import CKPT_GLOB, checkpoint_name, latest_checkpoint, load_checkpoint
from .attention import ATTENTION_MODES, attention

log = logging.getLogger(__name__)


@dataclass
class GSLRMConfig:
    layers: int = bounded(24, min=1)  # transformer blocks
    width: int = bounded(1024, min=1)  # token width d
    heads: int = bounded(16, min=1)   # attention heads (head dim = width / heads)
    patch: int = bounded(8, min=1)    # patch size in pixels
    image_size: int = bounded(512, min=8)  # input images are image_size x image_size
    in_channels: int = bounded(9, min=1)  # [rgb*2-1, ray_d, p0]
    n_global: int = bounded(2, min=0)  # learned global tokens (one Gaussian each)
    sh_degree: int = bounded(0, min=0)  # spherical-harmonics degree of the colour
    mlp_ratio: int = bounded(4, min=1)  # MLP hidden width = mlp_ratio * width
    grad_checkpointing: bool = False  # recompute each block in backward (training only)
    init_std: float = bounded(0.02, gt=0)  # std of the normal init of every Linear and the global tokens
    depth_range: float = bounded(1.8, gt=0)  # pixel Gaussians lie within +-depth_range of p0 along the ray
    scale_bias: float = -2.3          # scale = exp(min(x + scale_bias, scale_max_log))
    scale_max_log: float = -1.2
    opacity_bias: float = -2.0        # opacity = sigmoid(x + opacity_bias)
    render_global: bool = True        # False: the global Gaussians get opacity 0 (their tokens still attend).
    #                                   From scratch on object-centred data, two global Gaussians can
    #                                   learn a generic blob at the origin and starve the pixel-aligned ones
    color_from_input: bool = False    # True: a pixel-aligned Gaussian's colour = its input pixel's colour + the
    #                                   predicted residual. From scratch the trunk then need not learn to copy
    #                                   colours through 9-channel patches; False for FaceLift's weights
    qk_norm: bool = False             # True: parameter-free RMS norm of queries and keys per head (no new
    #                                   state-dict keys). Bounds attention logits so a from-scratch run takes a
    #                                   higher learning rate; False reproduces FaceLift's attention
    attention: str = "auto"           # kernel: "auto" (FlashAttention-4 where installed and checked, else SDPA), "sdpa",
    #                                   "fa4" or "fp8" (Triton fp8 forward: inference only; slower than SDPA on an H200);
    #                                   no kernel changes a weight (see gslrm.attention)

    def __post_init__(self):
        check_ranges(self)
        if self.width % self.heads:
            raise ValueError(f"GSLRMConfig: width {self.width} is not divisible by heads {self.heads}")
        if self.image_size % self.patch:
            raise ValueError(f"GSLRMConfig: image_size {self.image_size} is not a multiple of patch {self.patch}")
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"GSLRMConfig: attention {self.attention!r} is not one of {ATTENTION_MODES}")

    @property
    def sh_coeffs(self) -> int:
        """Number of SH coefficients per colour channel, (sh_degree + 1)^2."""
        return (self.sh_degree + 1) ** 2

    @property
    def gaussian_dim(self) -> int:
        """Raw values per Gaussian: xyz(3), SH(3 * coeffs), scale(3), quaternion(4), opacity(1)."""
        return 3 + 3 * self.sh_coeffs + 3 + 4 + 1

    @classmethod
    def full(cls, **overrides) -> "GSLRMConfig":
        """FaceLift's released model: 24 x 1024, 16 heads, patch 8, 512 px (303.6 M parameters)."""
        return replace(cls(), **overrides)

    @classmethod
    def tiny(cls, **overrides) -> "GSLRMConfig":
        """A CPU-sized model for tests and the demo: 2 x 128, 4 heads, patch 8, 64 px."""
        return replace(cls(layers=2, width=128, heads=4, patch=8, image_size=64), **overrides)


@dataclass
class GaussianOutput:
    """Activated Gaussians of a batch, N = n_global + V*H*W (global ones first, then [V, H, W]).

    means [B, N, 3] world; quats [B, N, 4] unit, wxyz; scales [B, N, 3] activated (world units);
    opacities [B, N] in [0, 1]; sh0 [B, N, 3] raw degree-0 SH coefficients (colour = 0.5 +
    0.28209479 * sh0); sh_rest [B, N, coeffs-1, 3] higher-degree coefficients (empty at degree 0).
    """
    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh0: torch.Tensor
    sh_rest: torch.Tensor
    n_global: int
    sh_degree: int

    def pixel_means(self, views: int, height: int, width: int) -> torch.Tensor:
        """Centres of the pixel-aligned Gaussians as an image, [B, V, H, W, 3]."""
        return self.means[:, self.n_global:].reshape(self.means.shape[0], views, height, width, 3)

    def scene(self, b: int = 0):
        """Batch item ``b`` as a :class:`mousefacelift.gaussians.Gaussians` (for PLY export and
        turntables), detached, fp32, on the same device. Degree-0 colour only."""
        if self.sh_degree != 0:
            raise ValueError(f"GaussianOutput.scene: sh_degree {self.sh_degree} > 0 is not supported by "
                             "Gaussians / write_ply (use sh_degree=0)")
        return Gaussians(*(t[b].detach().float() for t in (self.means, self.quats, self.scales, self.opacities,
                                                            self.sh0)))

    def render(self, w2c: torch.Tensor, K: torch.Tensor, height: int, width: int,
               background=(1.0, 1.0, 1.0), backend: str = "auto"):
        """Render with :func:`mousefacelift.gaussians.rasterize`.

        w2c [B, V, 4, 4] OpenCV; K [B, V, 3, 3] (pixel centres at +0.5) -> Render with
        .rgb [B, V, H, W, 3] and .alpha [B, V, H, W, 1]. Always rendered in fp32.
        """
        colors = self.sh0 if self.sh_degree == 0 else torch.cat([self.sh0[:, :, None], self.sh_rest], 2)
        with torch.autocast(device_type=self.means.device.type, enabled=False):
            return rasterize(self.means.float(), self.quats.float(), self.scales.float(),
                             self.opacities.float(), colors.float(), w2c.float(), K.float(), width, height,
                             background, sh_degree=self.sh_degree, backend=backend)


def ray_features(images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pixel network input and rays, in fp32.

    images [B, V, 3, H, W] in [0, 1]; c2w [B, V, 4, 4] OpenCV; K [B, V, 3, 3] ->
    features [B, V, 9, H, W] = [rgb*2-1, ray_d, p0], origins [B, V, H, W, 3],
    unit directions [B, V, H, W, 3]. p0 is the point of each ray closest to the world origin.
    """
    H, W = images.shape[-2:]
    o, d = cameras.pixel_rays(c2w.float(), K.float(), H, W)       # [B, V, H, W, 3] each
    p0 = cameras.closest_point_to_origin(o, d)                    # [B, V, H, W, 3]
    rays = torch.cat([d, p0], -1).permute(0, 1, 4, 2, 3)          # [B, V, 6, H, W]
    return torch.cat([images.float() * 2 - 1, rays], 2), o, d


class Patchify(nn.Module):
    """[B, V, C, H, W] -> [B*V, (H/p)*(W/p), p*p*C], each token flattened in (ph, pw, c) order."""

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, V, C, H, W = x.shape
        p = self.patch
        x = x.reshape(B * V, C, H // p, p, W // p, p)             # [BV, c, hh, ph, ww, pw]
        x = x.permute(0, 2, 4, 3, 5, 1)                           # [BV, hh, ww, ph, pw, c]
        return x.reshape(B * V, (H // p) * (W // p), p * p * C)


class SelfAttention(nn.Module):
    def __init__(self, cfg: GSLRMConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qk_norm = cfg.qk_norm
        self.mode = cfg.attention  # which kernel (GSLRM.set_attention changes it after loading weights)
        self.to_qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)  # rows: q | k | v
        self.fc = nn.Linear(cfg.width, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.to_qkv(x).split(D, dim=2)                  # [B, L, D] each
        q, k, v = (t.reshape(B, L, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        if self.qk_norm:  # unit-RMS rows: logits q.k / sqrt(dh) stay within +-sqrt(dh)
            q, k = F.rms_norm(q, q.shape[-1:]), F.rms_norm(k, k.shape[-1:])
        y = attention(q, k, v, self.mode)                         # [B, h, L, dh]
        return self.fc(y.transpose(1, 2).reshape(B, L, D))


class MLP(nn.Module):
    def __init__(self, cfg: GSLRMConfig):
        super().__init__()
        hidden = cfg.mlp_ratio * cfg.width
        self.mlp = nn.Sequential(nn.Linear(cfg.width, hidden, bias=False), nn.GELU(),  # exact GELU
                                 nn.Linear(hidden, cfg.width, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then + mlp(norm2(x))."""

    def __init__(self, cfg: GSLRMConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, bias=False)
        self.attn = SelfAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class GaussianUpsampler(nn.Module):
    """Global tokens [B, G, D] -> raw Gaussian parameters [B, G, gaussian_dim]."""

    def __init__(self, cfg: GSLRMConfig):
        super().__init__()
        self.layernorm = nn.LayerNorm(cfg.width, bias=False)
        self.linear = nn.Linear(cfg.width, cfg.gaussian_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.layernorm(x))


class GSLRM(nn.Module):
    def __init__(self, cfg: GSLRMConfig):
        super().__init__()
        self.cfg = cfg
        D, p = cfg.width, cfg.patch
        self.gaussian_position_embeddings = nn.Parameter(torch.empty(cfg.n_global, D))
        self.patch_embedder = nn.Sequential(Patchify(p), nn.Linear(p * p * cfg.in_channels, D, bias=False))
        self.input_layer_norm = nn.LayerNorm(D, bias=False)
        self.transformer_layers = nn.ModuleList([Block(cfg) for _ in range(cfg.layers)])
        self.gaussian_upsampler = GaussianUpsampler(cfg)
        self.pixel_gaussian_decoder = nn.Sequential(nn.LayerNorm(D, bias=False),
                                                    nn.Linear(D, p * p * cfg.gaussian_dim, bias=False))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for every Linear and the global tokens, ones for LayerNorms."""
        nn.init.normal_(self.gaussian_position_embeddings, std=self.cfg.init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=self.cfg.init_std)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)

    def forward(self, images: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor) -> GaussianOutput:
        """images [B, V, 3, H, W] in [0, 1] (RGB on white); c2w [B, V, 4, 4] OpenCV, normalized
        world (object at the origin, cameras at about 2.7); K [B, V, 3, 3] pixel centres at +0.5.
        -> GaussianOutput with N = n_global + V*H*W Gaussians."""
        cfg, p = self.cfg, self.cfg.patch
        B, V, C, H, W = images.shape
        if C != 3 or H % p or W % p:
            raise ValueError(f"GSLRM: images must be [B, V, 3, H, W] with H, W multiples of {p}, got "
                             f"{tuple(images.shape)}")
        hh, ww = H // p, W // p

        # 1. inputs and rays (fp32)
        feats, o, d = ray_features(images, c2w, K)                # [B, V, 9, H, W]
        # 2. tokens
        tokens = self.patch_embedder(feats.to(self.patch_embedder[1].weight.dtype))  # [BV, hh*ww, D]
        tokens = tokens.reshape(B, V * hh * ww, cfg.width)        # [B, V*P, D]
        glob = self.gaussian_position_embeddings.expand(B, -1, -1).to(tokens.dtype)  # [B, G, D]
        x = self.input_layer_norm(torch.cat([glob, tokens], 1))   # [B, G + V*P, D]
        # 3. transformer
        use_ckpt = cfg.grad_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.transformer_layers:
            x = checkpoint(block, x, use_reentrant=False) if use_ckpt else block(x)
        # 4. heads
        glob_raw = self.gaussian_upsampler(x[:, :cfg.n_global])   # [B, G, k]
        pix_raw = self.pixel_gaussian_decoder(x[:, cfg.n_global:])  # [B, V*P, p*p*k]
        k = cfg.gaussian_dim
        pix_raw = pix_raw.reshape(B, V, hh, ww, p, p, k).permute(0, 1, 2, 4, 3, 5, 6)  # [B,V,hh,ph,ww,pw,k]
        pix_raw = pix_raw.reshape(B, V, H, W, k)                  # [B, V, H, W, k] raster order
        # 5. activations (fp32)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return self._activate(glob_raw.float(), pix_raw.float(), o, d, images.float())

    def _activate(self, glob_raw: torch.Tensor, pix_raw: torch.Tensor, o: torch.Tensor, d: torch.Tensor,
                  images: torch.Tensor) -> GaussianOutput:
        """glob_raw [B, G, k]; pix_raw, o, d [B, V, H, W, k|3]; images [B, V, 3, H, W] -> GaussianOutput."""
        cfg = self.cfg
        B = pix_raw.shape[0]
        if cfg.color_from_input:  # residual on the SH0 coefficients that reproduce the input pixel's colour
            rgb = images.permute(0, 1, 3, 4, 2)                   # [B, V, H, W, 3]
            pix_raw = torch.cat([pix_raw[..., :3], pix_raw[..., 3:6] + (rgb - 0.5) / SH_C0, pix_raw[..., 6:]], -1)
        # pixel-aligned centres: t = t0 + range * (2 sigmoid(mean(xyz_raw)) - 1), xyz = o + t d
        t0 = -(o * d).sum(-1, keepdim=True)                       # [B, V, H, W, 1]
        t = t0 + cfg.depth_range * (2 * torch.sigmoid(pix_raw[..., :3].mean(-1, keepdim=True)) - 1)
        pix_xyz = o + t * d                                       # [B, V, H, W, 3]
        raw = torch.cat([glob_raw, pix_raw.reshape(B, -1, cfg.gaussian_dim)], 1)  # [B, N, k]
        xyz = torch.cat([glob_raw[..., :3], pix_xyz.reshape(B, -1, 3)], 1)        # [B, N, 3]
        n_sh = 3 * cfg.sh_coeffs
        sh, scale, quat, opacity = raw[..., 3:].split([n_sh, 3, 4, 1], -1)
        sh = sh.reshape(B, -1, cfg.sh_coeffs, 3)
        return GaussianOutput(
            means=xyz,
            quats=F.normalize(quat, dim=-1, eps=1e-8),
            scales=torch.exp((scale + cfg.scale_bias).clamp(max=cfg.scale_max_log)),
            opacities=self._opacities(opacity[..., 0]),
            sh0=sh[:, :, 0], sh_rest=sh[:, :, 1:], n_global=cfg.n_global, sh_degree=cfg.sh_degree)

    def _opacities(self, raw: torch.Tensor) -> torch.Tensor:
        """raw [B, N] -> opacities [B, N]; the first n_global are zeroed when render_global is off."""
        op = torch.sigmoid(raw + self.cfg.opacity_bias)
        if not self.cfg.render_global:
            keep = torch.ones(op.shape[1], dtype=op.dtype, device=op.device)
            keep[:self.cfg.n_global] = 0.0
            op = op * keep
        return op

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def set_attention(self, mode: str) -> "GSLRM":
        """Use attention kernel ``mode`` (:data:`~mousefacelift.gslrm.attention.ATTENTION_MODES`) from now
        on, e.g. "fp8" for inference with weights trained under "sdpa" (no weight changes)."""
        self.cfg = replace(self.cfg, attention=mode)  # validates the mode
        for block in self.transformer_layers:
            block.attn.mode = mode
        return self


# ----------------------------------------------------------------------------------------------
# Checkpoints: FaceLift's layout, ckpt_{step:016d}.pt = {model, optimizer, lr_scheduler,
# fwdbwd_pass_step, param_update_step}, plus our "config" (asdict(GSLRMConfig)) when we wrote it.
# ----------------------------------------------------------------------------------------------
IGNORED_PREFIXES = ("loss_calculator.",)  # frozen VGG of the original loss, not part of the model
# CKPT_GLOB, checkpoint_name and latest_checkpoint come from mousefacelift.training (both trainers' layout)


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """torch.load a GS-LRM checkpoint dict with weights_only=True (a file that needs full unpickling,
    which can run code, is refused: :func:`mousefacelift.training.load_checkpoint`). A ``.safetensors``
    file exported by :mod:`mousefacelift.pretrained` (bf16 weights, config in its metadata) reads as the
    same dict with fp32 weights. A wrong path -> FileNotFoundError; a dict without "model" -> ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GS-LRM checkpoint {path} does not exist; check the path in the params "
                                "(no fallback model is used)")
    if path.suffix == ".safetensors":
        from ..pretrained import read_gslrm
        return read_gslrm(path)
    ckpt = load_checkpoint(path, map_location)
    if "model" not in ckpt:
        raise ValueError(f"{path}: not a GS-LRM checkpoint (expected a dict with a 'model' state dict)")
    return ckpt


def load_model_state(model: GSLRM, state: dict, source: str = "state dict") -> None:
    """Strictly load ``state`` into ``model`` after dropping ``loss_calculator.*`` keys.
    Any other missing or unexpected key, or a shape mismatch, raises with the list."""
    dropped = [k for k in state if k.startswith(IGNORED_PREFIXES)]
    state = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
    if dropped:
        log.info("%s: dropped %d loss_calculator.* keys (frozen loss network)", source, len(dropped))
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad_shape = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                 for k in sorted(set(own) & set(state)) if state[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        raise KeyError(f"{source} does not match GSLRM({model.cfg}): missing {missing}, unexpected "
                       f"{unexpected}, shape mismatches {bad_shape}; pass the model config the "
                       "checkpoint was trained with")
    model.load_state_dict(state, strict=True)


def load_gslrm_checkpoint(path: str | os.PathLike, config: GSLRMConfig | None = None,
                          map_location="cpu") -> GSLRM:
    """Build a GSLRM and load ``ckpt['model']`` from ``path`` strictly.

    The config comes from ``config`` when given (needed for the released file, which carries
    none); otherwise from the checkpoint's ``"config"`` entry, written by our trainer.
    """
    ckpt = read_checkpoint(path, map_location)
    stored = ckpt.get("config")  # optional key: absent in the released FaceLift file
    if config is None:
        if stored is None:
            raise ValueError(f"{path} carries no model config (e.g. the released FaceLift file): pass "
                             "config=GSLRMConfig.full() or the config it was trained with")
        config = from_dict(GSLRMConfig, stored, f"{path}: stored config")
    elif stored is not None and from_dict(GSLRMConfig, stored, f"{path}: stored config") != config:
        log.warning("%s: the given config %s differs from the stored one %s; using the given one",
                    path, config, stored)
    model = GSLRM(config)
    load_model_state(model, ckpt["model"], source=str(path))
    log.info("loaded GS-LRM from %s (step %s)", path, ckpt.get("fwdbwd_pass_step"))
    return model


def from_pretrained(path: str | os.PathLike, config: GSLRMConfig | None = None, map_location="cpu") -> GSLRM:
    """Like :func:`load_gslrm_checkpoint`, but ``path`` may also be a folder: its latest
    ``ckpt_*.pt`` is loaded. Returns the model in eval mode."""
    path = Path(path)
    if path.is_dir():
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"no {CKPT_GLOB} in {path}; train first (notebook 06) or fix the path")
        path = found
    return load_gslrm_checkpoint(path, config, map_location).eval()


__all__ = ["GSLRMConfig", "GSLRM", "GaussianOutput", "ray_features", "Patchify", "load_gslrm_checkpoint", "from_pretrained",
           "load_model_state", "read_checkpoint", "latest_checkpoint", "checkpoint_name"]
