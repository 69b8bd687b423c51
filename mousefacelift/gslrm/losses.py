"""GS-LRM training losses: global L2, masked L2, masked SSIM, background, optional perceptual
terms (ST-LPIPS, LPIPS-VGG).

Every term is returned in a dict (for logging) next to the weighted total ``"loss"``.
Images are [B, V, 3, H, W] in [0, 1] composited on white; alphas [B, V, 1, H, W] in [0, 1].
"Foreground" means GT alpha > ``mask_threshold``.

ST-LPIPS (:mod:`mousefacelift.perceptual`, shift-tolerant LPIPS) needs no download: its weights ship
with the ``stlpips-pytorch`` package (or a copied file, ``st_lpips_weights``); a missing file is an
error when its weight is > 0. It compares each rendered target view with its target over the whole
image (both on white), as FaceLift's perceptual term does; the network is frozen, in eval mode, and
runs in fp32 with autocast off.

LPIPS needs the torchvision VGG16 backbone weights (``vgg16-397923af.pth``); our machines cannot
download them, so the term is on only when ``lpips_vgg_path`` names an existing file (and
lpips is installed), and off - with a logged reason - otherwise. It is also off for the first
``perceptual_warmup_steps`` steps (out-of-domain perceptual losses exploded gradients in the
earlier attempt). Both perceptual terms share that warm-up: FaceLift's recipe switches its
perceptual loss (VGG19, weight 0.5) on after the first 500 steps, the default here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .. import metrics, perceptual
from ..configs import bounded, check_ranges

log = logging.getLogger(__name__)


@dataclass
class LossConfig:
    l2: float = bounded(1.0, min=0)     # weight of the L2 over the whole image (on white; FaceLift's L2)
    masked_l2: float = bounded(1.0, min=0)  # weight of the L2 over foreground pixels
    masked_ssim: float = bounded(0.2, min=0)  # weight of 1 - SSIM over foreground pixels
    background: float = bounded(1.0, min=0)  # weight of mean(alpha_render * (1 - alpha_gt))
    lpips: float = bounded(0.0, min=0)  # weight of LPIPS-VGG (needs lpips_vgg_path)
    lpips_vgg_path: str = ""            # torchvision vgg16 weights file; "" or missing = LPIPS off
    st_lpips: float = bounded(0.0, min=0)  # weight of ST-LPIPS on the rendered targets (0: off)
    st_lpips_net: str = "alex"          # ST-LPIPS backbone: "alex" or "vgg"
    st_lpips_weights: str = ""          # ST-LPIPS weights file ("": the installed stlpips-pytorch package's)
    perceptual_warmup_steps: int = bounded(500, min=0)  # ST-LPIPS and LPIPS off for steps < this (FaceLift: 500)
    mask_threshold: float = bounded(0.5, min=0, max=1)  # GT alpha above this is foreground
    ssim_window: int = bounded(11, min=1)  # Gaussian window size of SSIM
    ssim_sigma: float = bounded(1.5, gt=0)  # Gaussian window sigma of SSIM

    def __post_init__(self):
        check_ranges(self)
        if self.st_lpips_net not in perceptual.NETS:
            raise ValueError(f"LossConfig.st_lpips_net={self.st_lpips_net!r}: choose one of {perceptual.NETS}")


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of values [..., C, H, W] over pixels where mask [..., 1, H, W] is true (and all C);
    0 when the mask is empty."""
    m = mask.to(values.dtype).expand_as(values)
    return (values * m).sum() / m.sum().clamp(min=1.0)


def masked_ssim(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, window: int = 11,
                sigma: float = 1.5) -> torch.Tensor:
    """SSIM of x, y [..., 3, H, W] (the map of :func:`mousefacelift.metrics.ssim_map`, clamped to
    [0, 1]) averaged over pixels where mask [..., 1, H, W] is true. Scalar, differentiable."""
    return masked_mean(metrics.ssim_map(x, y, window, sigma).clamp(0, 1), mask)


def load_lpips(cfg: LossConfig) -> nn.Module | None:
    """The frozen LPIPS-VGG network (from :class:`mousefacelift.metrics.LPIPSVGG`, no download)
    or None, with the reason logged, when the term is off or its weights are missing."""
    if cfg.lpips <= 0:
        return None
    if not cfg.lpips_vgg_path or not Path(cfg.lpips_vgg_path).is_file():
        log.warning("LPIPS loss off: VGG16 backbone weights %r not found (put vgg16-397923af.pth "
                    "there and set loss.lpips_vgg_path)", cfg.lpips_vgg_path)
        return None
    lp, why = metrics.LPIPSVGG.create(cfg.lpips_vgg_path)
    if lp is None:
        log.warning("LPIPS loss off: %s", why)
        return None
    log.info("LPIPS loss on (weight %g, from step %d), backbone %s", cfg.lpips, cfg.perceptual_warmup_steps,
             cfg.lpips_vgg_path)
    return lp.model.eval().requires_grad_(False)


class GSLRMLoss(nn.Module):
    """Weighted sum of the terms of :class:`LossConfig`; forward returns a dict of scalars."""

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        self.lpips = load_lpips(cfg)
        # ST-LPIPS: (net, weights file) when on; the network itself is fetched per device at each call
        # (one frozen instance per device, shared with the metric) and is no submodule of this loss
        self.st_lpips: tuple[str, str] | None = None
        if cfg.st_lpips > 0:
            perceptual.load(cfg.st_lpips_net, cfg.st_lpips_weights)  # a missing file fails here, not at step 500
            self.st_lpips = (cfg.st_lpips_net, str(perceptual.find_weights(cfg.st_lpips_net, cfg.st_lpips_weights)))
            log.info("ST-LPIPS loss on (weight %g, %s, from step %d), weights %s", cfg.st_lpips, cfg.st_lpips_net,
                     cfg.perceptual_warmup_steps, self.st_lpips[1])

    def forward(self, rgb: torch.Tensor, alpha: torch.Tensor, gt_rgb: torch.Tensor, gt_alpha: torch.Tensor,
                step: int) -> dict[str, torch.Tensor]:
        """rgb, gt_rgb [B, V, 3, H, W] on white; alpha, gt_alpha [B, V, 1, H, W]; step = the
        training step (for the perceptual warm-up). -> {"loss", "l2", "masked_l2",
        "masked_ssim", "background", "st_lpips", "lpips", "psnr_fg"}; "masked_ssim" is 1 - SSIM_fg."""
        cfg = self.cfg
        rgb, alpha = rgb.float(), alpha.float()
        fg = gt_alpha > cfg.mask_threshold                                    # [B, V, 1, H, W]
        sq = (rgb - gt_rgb) ** 2
        terms = {
            "l2": sq.mean(),
            "masked_l2": masked_mean(sq, fg),
            "masked_ssim": 1 - masked_ssim(rgb, gt_rgb, fg, cfg.ssim_window, cfg.ssim_sigma),
            "background": (alpha * (1 - gt_alpha)).mean(),
        }
        terms["st_lpips"] = torch.zeros((), device=rgb.device)
        if self.st_lpips is not None and step >= cfg.perceptual_warmup_steps:
            terms["st_lpips"] = perceptual.load(*self.st_lpips, device=rgb.device)(rgb, gt_rgb).mean()
        terms["lpips"] = torch.zeros((), device=rgb.device)
        if self.lpips is not None and step >= cfg.perceptual_warmup_steps:
            self.lpips.to(rgb.device)
            flat = lambda t: t.reshape(-1, *t.shape[-3:]) * 2 - 1  # noqa: E731
            terms["lpips"] = self.lpips(flat(rgb), flat(gt_rgb)).mean()
        weights = {"l2": cfg.l2, "masked_l2": cfg.masked_l2, "masked_ssim": cfg.masked_ssim,
                   "background": cfg.background, "st_lpips": cfg.st_lpips, "lpips": cfg.lpips}
        terms["loss"] = sum((w * terms[k] for k, w in weights.items() if w > 0), torch.zeros((), device=rgb.device))
        with torch.no_grad():
            terms["psnr_fg"] = -10 * torch.log10(terms["masked_l2"].detach().clamp(min=1e-10))
        return terms
