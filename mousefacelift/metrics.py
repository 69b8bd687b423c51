"""The evaluation protocol (DESIGN.md); every number in a report comes from here.

Protocol ``mousefacelift-eval`` v2 (v1 plus ST-LPIPS; the v1 metrics are unchanged):
* held-out frames (test split) and, for reconstruction, target views that were NOT inputs;
* PSNR_fg: MSE over pixels whose GT alpha > 0.5 (primary); PSNR_full: whole image on white;
* SSIM_fg: the SSIM map (11x11 Gaussian window, sigma 1.5) averaged over GT-foreground pixels;
* mask IoU: rendered alpha > 0.5 vs GT alpha > 0.5;
* ST-LPIPS (shift-tolerant LPIPS, AlexNet by default; :mod:`mousefacelift.perceptual`, weights shipped by
  the ``stlpips-pytorch`` package) over the union of GT and rendered silhouettes, both images white
  outside it (:func:`mousefacelift.perceptual.st_lpips_fg`); lower is better, 0 for identical images;
* LPIPS-VGG only when the VGG16 backbone weights exist locally, otherwise unavailable (None);
* procedural data: Chamfer distance (mm) between opacity-weighted Gaussian centres and samples of
  the true surface.
A metric that is undefined for an image (no GT foreground, empty union) is NaN and is left out of
means, which report how many views they cover.

Images are ``[..., 3, H, W]`` in [0, 1] (RGB composited on white) and alphas ``[..., 1, H, W]``;
metrics reduce over the last three dimensions and keep the leading ones.
"""
from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

PROTOCOL = {"name": "mousefacelift-eval", "version": 2,
            "primary": "psnr_fg", "fg_threshold": 0.5, "ssim_window": 11, "ssim_sigma": 1.5,
            "st_lpips": "union of GT and rendered alpha > 0.5, both white outside it, layer maps averaged over it"}


def _fg(gt_alpha: torch.Tensor) -> torch.Tensor:
    return (gt_alpha > PROTOCOL["fg_threshold"]).to(gt_alpha.dtype)


def psnr_fg(pred: torch.Tensor, gt: torch.Tensor, gt_alpha: torch.Tensor) -> torch.Tensor:
    """PSNR over GT-foreground pixels. pred, gt [..., 3, H, W]; gt_alpha [..., 1, H, W] -> [...]
    (NaN where the GT has no foreground). The background cannot move it."""
    m = _fg(gt_alpha)
    n = m.sum((-3, -2, -1)) * pred.shape[-3]
    se = (((pred - gt) ** 2) * m).sum((-3, -2, -1))
    mse = se / n
    out = -10.0 * torch.log10(mse.clamp_min(1e-12))
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


def psnr_full(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """PSNR over the whole image (both composited on white). pred, gt [..., 3, H, W] -> [...].
    Reads 10-13 dB higher than PSNR_fg on mostly-white images: never mix the two."""
    mse = ((pred - gt) ** 2).mean((-3, -2, -1))
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def _gaussian_window(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim_map(pred: torch.Tensor, gt: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM (Wang et al. 2004, C1 = 0.01^2, C2 = 0.03^2, edge-replicate padding so the map keeps
    the image size), averaged over channels. pred, gt [..., C, H, W] -> [..., 1, H, W]."""
    lead, (c, h, w) = pred.shape[:-3], pred.shape[-3:]
    x, y = pred.reshape(-1, c, h, w), gt.reshape(-1, c, h, w)
    k = _gaussian_window(window, sigma, x.dtype, x.device).expand(c, 1, window, window)
    pad = window // 2

    def blur(t):
        return F.conv2d(F.pad(t, (pad, pad, pad, pad), mode="replicate"), k, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(1, keepdim=True).reshape(*lead, 1, h, w)


def ssim_fg(pred: torch.Tensor, gt: torch.Tensor, gt_alpha: torch.Tensor) -> torch.Tensor:
    """SSIM averaged over GT-foreground pixels -> [...] (NaN without foreground)."""
    m = _fg(gt_alpha)
    n = m.sum((-3, -2, -1))
    out = (ssim_map(pred, gt, PROTOCOL["ssim_window"], PROTOCOL["ssim_sigma"]) * m).sum((-3, -2, -1)) / n.clamp_min(1)
    return torch.where(n > 0, out, torch.full_like(out, math.nan))


def mask_iou(pred_alpha: torch.Tensor, gt_alpha: torch.Tensor) -> torch.Tensor:
    """IoU of rendered alpha > 0.5 and GT alpha > 0.5. [..., 1, H, W] -> [...] (NaN if both empty)."""
    p, g = pred_alpha > 0.5, gt_alpha > 0.5
    inter = (p & g).sum((-3, -2, -1)).to(pred_alpha.dtype)
    union = (p | g).sum((-3, -2, -1)).to(pred_alpha.dtype)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(inter, math.nan))


def chamfer_mm(points: torch.Tensor, surface: torch.Tensor, weights: torch.Tensor | None = None,
               chunk: int = 4096) -> dict:
    """Chamfer distance between predicted points [N, 3] (e.g. Gaussian centres, in mm) weighted by
    ``weights`` [N] (e.g. opacities) and surface samples [M, 3] (mm).

    Returns {"accuracy_mm": weighted mean distance of points to the surface, "completeness_mm":
    mean distance of surface samples to the points, "chamfer_mm": their average}.
    """
    w = torch.ones(points.shape[0], dtype=points.dtype, device=points.device) if weights is None else weights

    def nearest(a, b):
        return torch.cat([torch.cdist(a[i:i + chunk], b).amin(1) for i in range(0, a.shape[0], chunk)])

    acc = (nearest(points, surface) * w).sum() / w.sum().clamp_min(1e-12)
    # completeness only counts points that are really there (opacity-weighted set: drop w < 0.5)
    solid = points[w >= 0.5] if (w >= 0.5).any() else points
    comp = nearest(surface, solid).mean()
    return {"accuracy_mm": acc.item(), "completeness_mm": comp.item(), "chamfer_mm": 0.5 * (acc + comp).item()}


def image_metrics(pred_rgb: torch.Tensor, pred_alpha: torch.Tensor, gt_rgb: torch.Tensor,
                  gt_alpha: torch.Tensor, st_lpips=None) -> dict[str, torch.Tensor]:
    """All per-view image metrics at once. pred_rgb/gt_rgb [..., 3, H, W] on white,
    alphas [..., 1, H, W] -> {"psnr_fg", "psnr_full", "ssim_fg", "mask_iou"}: each [...], and
    "st_lpips" (:func:`mousefacelift.perceptual.st_lpips_fg`) when an ST-LPIPS network is given."""
    m = {"psnr_fg": psnr_fg(pred_rgb, gt_rgb, gt_alpha), "psnr_full": psnr_full(pred_rgb, gt_rgb),
         "ssim_fg": ssim_fg(pred_rgb, gt_rgb, gt_alpha), "mask_iou": mask_iou(pred_alpha, gt_alpha)}
    if st_lpips is not None:
        from .perceptual import st_lpips_fg

        with torch.no_grad():
            m["st_lpips"] = st_lpips_fg(st_lpips, pred_rgb, gt_rgb, gt_alpha, pred_alpha, PROTOCOL["fg_threshold"])
    return m


# ----------------------------------------------------------------------------------------------
# The scale of the metrics: the ground truth against itself, degraded
# ----------------------------------------------------------------------------------------------
# PSNR_fg of a small dark mouse on white is dominated by its outline: every misplaced boundary pixel
# costs up to (1 - 0)^2. Scoring the GT against a copy of itself that is shifted by a pixel or blurred
# says what a reconstruction's number means (notebook 07, section 3).
DEGRADATIONS = ("shift_1px", "shift_2px", "blur_0.5px", "blur_1px", "blur_2px", "flat_colour")


def shift(images: torch.Tensor, dx: int, dy: int, fill: float) -> torch.Tensor:
    """images [..., C, H, W] moved by (dx, dy) whole pixels (+x right, +y down); uncovered pixels
    take ``fill`` (1 for RGB on white, 0 for alpha). Same shape."""
    h, w = images.shape[-2:]
    out = torch.full_like(images, fill)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[..., yd, xd] = images[..., ys, xs]
    return out


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """images [..., C, H, W] blurred by a separable Gaussian of ``sigma`` pixels (window 2*ceil(3 sigma)+1,
    edge-replicate padding, so the size is kept)."""
    r = max(1, math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=images.dtype, device=images.device)
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    lead, (c, h, w) = images.shape[:-3], images.shape[-3:]
    y = F.pad(images.reshape(-1, 1, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(F.conv2d(y, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))
    return y.reshape(*lead, c, h, w)


def degraded_copies(gt_rgb: torch.Tensor, gt_alpha: torch.Tensor, name: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One entry of :data:`DEGRADATIONS` applied to the GT: gt_rgb [..., 3, H, W] on white, gt_alpha
    [..., 1, H, W] -> a list of (rgb, alpha), same shapes. ``shift_Npx`` gives four copies, image and
    alpha moved together by N px along +x, -x, +y and -y (an elongated mouse loses more to a shift
    across its body); ``blur_Spx`` one copy with both blurred; ``flat_colour`` one copy that keeps
    the silhouette exactly and paints it with the mean GT foreground colour of each image."""
    kind, amount = _parse_degradation(name)
    if kind == "shift":
        n = int(amount)
        return [(shift(gt_rgb, dx, dy, 1.0), shift(gt_alpha, dx, dy, 0.0)) for dx, dy in ((n, 0), (-n, 0), (0, n), (0, -n))]
    if kind == "blur":
        return [(gaussian_blur(gt_rgb, amount), gaussian_blur(gt_alpha, amount))]
    fg = _fg(gt_alpha)  # flat_colour
    mean = (gt_rgb * fg).sum((-2, -1), keepdim=True) / fg.sum((-2, -1), keepdim=True).clamp_min(1)
    return [(gt_rgb * (1 - fg) + mean * fg, gt_alpha)]


def _parse_degradation(name: str) -> tuple[str, float]:
    """"shift_1px" -> ("shift", 1.0), "blur_0.5px" -> ("blur", 0.5), "flat_colour" -> ("flat_colour", 0)."""
    m = re.fullmatch(r"(shift)_(\d+)px|(blur)_(\d+(?:\.\d+)?)px|(flat_colour)", name)
    if m is None or (m[2] is not None and int(m[2]) == 0) or (m[4] is not None and float(m[4]) <= 0):
        raise ValueError(f"unknown degradation {name!r}; choose from {DEGRADATIONS} (shift_Npx with whole N >= 1, "
                         f"blur_Spx with S > 0)")
    if m[1]:
        return "shift", float(m[2])
    if m[3]:
        return "blur", float(m[4])
    return "flat_colour", 0.0


def degradation_metrics(gt_rgb: torch.Tensor, gt_alpha: torch.Tensor, name: str,
                        st_lpips=None) -> dict[str, torch.Tensor]:
    """:func:`image_metrics` of the degraded GT against the GT (with "st_lpips" when an ST-LPIPS
    network is given), averaged over the copies of :func:`degraded_copies` (the four directions of a
    shift). [...]-shaped."""
    runs = [image_metrics(rgb, alpha, gt_rgb, gt_alpha, st_lpips)
            for rgb, alpha in degraded_copies(gt_rgb, gt_alpha, name)]
    return {k: torch.stack([r[k] for r in runs]).mean(0) for k in runs[0]}


def blur_sigma_for_psnr(gt_rgb: torch.Tensor, gt_alpha: torch.Tensor, target_psnr: float, max_sigma: float = 16.0,
                        iters: int = 30) -> float:
    """The Gaussian blur (``blur_Spx``: image and alpha blurred by sigma px) of one GT view whose
    PSNR_fg against the GT is ``target_psnr`` dB, by bisection on sigma in (0, ``max_sigma``] (PSNR_fg
    falls as sigma grows). gt_rgb [3, H, W] on white, gt_alpha [1, H, W] -> sigma (px); ``max_sigma``
    when even that blur stays above the target, NaN without GT foreground."""
    def psnr_at(sigma):
        return psnr_fg(gaussian_blur(gt_rgb, sigma), gt_rgb, gt_alpha).item()

    if not math.isfinite(target_psnr) or math.isnan(psnr_at(max_sigma)):
        return math.nan
    lo, hi = 0.0, max_sigma
    if psnr_at(hi) >= target_psnr:
        return hi
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if psnr_at(mid) > target_psnr else (lo, mid)
    return 0.5 * (lo + hi)


def summarize(values: list[float] | torch.Tensor) -> dict:
    """Mean, 95% confidence interval (normal approximation, t is close enough for n >= 20; noted
    as such), and counts; NaN entries (undefined views) are left out and counted."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    ok = v[torch.isfinite(v)]
    n = int(ok.numel())
    if n == 0:
        return {"mean": None, "ci95": None, "n": 0, "n_undefined": int(v.numel())}
    std = ok.std(unbiased=True).item() if n > 1 else 0.0
    return {"mean": ok.mean().item(), "ci95": 1.96 * std / math.sqrt(n) if n > 1 else None, "n": n,
            "n_undefined": int(v.numel()) - n}


def bootstrap_ci(values: list[float] | torch.Tensor, clusters: list, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict:
    """Mean and percentile-bootstrap confidence interval clustered by ``clusters`` (e.g. the frame of
    each view): whole clusters are resampled with replacement, all their values together, so views
    of one frame, which are not independent, count once as a unit. values [n] (NaN entries left
    out and counted), clusters [n] hashable labels; the generator is keyed by ``seed``.

    -> {"mean", "lo", "hi", "ci95": (hi - lo) / 2, "n", "n_clusters", "n_undefined"} (None entries
    without values; a single cluster gives no interval)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    if v.numel() != len(clusters):
        raise ValueError(f"bootstrap_ci: {v.numel()} values but {len(clusters)} cluster labels")
    ok = torch.isfinite(v)
    labels = [c for c, k in zip(clusters, ok.tolist()) if k]
    v = v[ok]
    n = int(v.numel())
    out = {"mean": None, "lo": None, "hi": None, "ci95": None, "n": n, "n_clusters": len(set(labels)),
           "n_undefined": int(ok.numel()) - n}
    if n == 0:
        return out
    out["mean"] = v.mean().item()
    ids = {c: i for i, c in enumerate(dict.fromkeys(labels))}
    idx = torch.tensor([ids[c] for c in labels])
    C = len(ids)
    if C < 2:
        return out
    sums = torch.zeros(C, dtype=torch.float64).index_add_(0, idx, v)            # per cluster
    counts = torch.zeros(C, dtype=torch.float64).index_add_(0, idx, torch.ones_like(v))
    from .training import keyed_generator
    pick = torch.randint(C, (n_boot, C), generator=keyed_generator(seed, C, n))  # [n_boot, C]
    means = sums[pick].sum(1) / counts[pick].sum(1)
    q = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    out.update(lo=q[0].item(), hi=q[1].item(), ci95=((q[1] - q[0]) / 2).item())
    return out


# ----------------------------------------------------------------------------------------------
# LPIPS (VGG), only with local backbone weights
# ----------------------------------------------------------------------------------------------
VGG16_FILE = "vgg16-397923af.pth"  # torchvision's file name for the ImageNet VGG16 weights


def find_vgg16_weights(path: str = "") -> Path | None:
    """The local VGG16 weights: ``path`` if given, else torchvision's cache ($TORCH_HOME)."""
    if path:
        return Path(path) if Path(path).is_file() else None
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    p = home / "hub" / "checkpoints" / VGG16_FILE
    return p if p.is_file() else None


class LPIPSVGG:
    """LPIPS with the VGG backbone, built without any download: the linear heads ship inside the
    ``lpips`` package, the VGG16 backbone comes from a local file. Use :meth:`create`, which
    returns None with the reason logged when the weights are missing (reported as unavailable)."""

    def __init__(self, model):
        self.model = model

    @classmethod
    def create(cls, vgg16_path: str = "", device: str | torch.device = "cpu") -> tuple["LPIPSVGG | None", str]:
        weights = find_vgg16_weights(vgg16_path)
        if weights is None:
            why = (f"VGG16 weights not found ({vgg16_path or 'torchvision cache'}; put {VGG16_FILE} there or set "
                   "the path)")
            log.warning("LPIPS unavailable: %s", why)
            return None, why
        import lpips

        model = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        state = torch.load(weights, map_location="cpu", weights_only=True)
        features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        # lpips splits torchvision's vgg16.features into slice1..slice5 that keep the layer indices
        slices = {}
        for name, _ in model.net.named_parameters():
            idx = name.split(".", 1)[1]
            slices[name] = features[idx]
        model.net.load_state_dict(slices, strict=True)
        return cls(model.eval().to(device)), ""

    @torch.no_grad()
    def __call__(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """pred, gt [..., 3, H, W] in [0, 1] -> [...]."""
        lead = pred.shape[:-3]
        x = pred.reshape(-1, *pred.shape[-3:]) * 2 - 1
        y = gt.reshape(-1, *gt.shape[-3:]) * 2 - 1
        return self.model(x, y).reshape(lead)
