"""ST-LPIPS, the shift-tolerant LPIPS (Ghildyal and Liu, "Shift-tolerant Perceptual Similarity
Metric", ECCV 2022), as a metric and a frozen loss network that need no download.

The networks are built here from the published architecture and take their weights from the files
that the PyPI wheel ``stlpips-pytorch==0.0.2`` (BSD-2-Clause) ships: backbone and linear heads
together, read with ``torch.load(..., weights_only=True)``. The package's own code is never
imported: its ``stlpips`` module imports ``torchsummary``, which the wheel does not declare, and its
loader unpickles without ``weights_only``.

Files needed (e.g. to carry to a machine without the package):
    alex  ``stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth``  9.9 MB, 2.47 M parameters
    vgg   ``stlpips_pytorch/weights/vST0.0/vgg_shift_tolerant.pth``  58.9 MB, 14.7 M parameters
(The vgg file holds CUDA tensors; both are read with ``map_location="cpu"``.) Only the weights file of the
chosen net: copy it anywhere and pass its path as ``weights``
(``st_lpips_weights`` in notebooks 06 and 07); nothing else of the package is read.

What the networks are (facts of the paper and of the released weights):
1. LPIPS v0.1 on top: images in [-1, 1] -> a fixed per-channel shift and scale -> five feature
   layers -> each unit-normalized over channels -> squared difference -> a learned 1x1 linear
   head per layer (no bias) -> spatial mean -> summed over the layers.
2. Shift tolerance: every stride-2 reduction becomes a stride-1 operation followed by a blur-pool:
   reflection padding of 2 on each side, a binomial [1, 2, 1] x [1, 2, 1] / 16 filter per channel,
   stride 2. AlexNet's first conv runs at stride 1 (blur-pool after it, before its ReLU); its max
   pools (3x3) and VGG16's (2x2) run at stride 1, each followed by a blur-pool.

Images are ``[..., 3, H, W]`` in [0, 1]; the leading dimensions are kept. The smallest side the
networks take is :data:`MIN_SIZE` (AlexNet: 29 px; VGG: 22 px).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)

NETS = ("alex", "vgg")
PACKAGE = "stlpips-pytorch==0.0.2"
WEIGHTS_FILE = {"alex": "alex_shift_tolerant.pth", "vgg": "vgg_shift_tolerant.pth"}
MIN_SIZE = {"alex": 29, "vgg": 22}  # smallest H and W the blur-pools' reflection padding allows

# The layer lists, numbered as in the released state dicts ("net.slice<k>.<index>.<param>"):
# ("conv", in, out, kernel, padding), ("blur", channels), ("max", kernel), ("relu",). Each slice ends
# at one of the five compared feature layers.
_ALEX = (
    (("conv", 3, 64, 11, 2), ("blur", 64), ("relu",)),
    (("max", 3), ("blur", 64), ("conv", 64, 192, 5, 2), ("relu",)),
    (("max", 3), ("blur", 192), ("conv", 192, 384, 3, 1), ("relu",)),
    (("conv", 384, 256, 3, 1), ("relu",)),
    (("conv", 256, 256, 3, 1), ("relu",)),
)


def _vgg_block(cin: int, cout: int, n: int, pool: bool) -> tuple:
    head = (("max", 2), ("blur", cin)) if pool else ()
    convs = sum(((("conv", cin if i == 0 else cout, cout, 3, 1), ("relu",)) for i in range(n)), ())
    return head + convs


_VGG = (_vgg_block(3, 64, 2, False), _vgg_block(64, 128, 2, True), _vgg_block(128, 256, 3, True),
        _vgg_block(256, 512, 3, True), _vgg_block(512, 512, 3, True))
_LAYERS = {"alex": _ALEX, "vgg": _VGG}


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflection pad 2, per-channel [1, 2, 1]^2 / 16 filter,
    stride 2. x [N, C, H, W] -> [N, C, floor((H + 1) / 2) + 1, ...]."""

    def __init__(self, channels: int):
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("filt", (a[:, None] * a[None, :] / 16).expand(channels, 1, 3, 3).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def _module(spec: tuple) -> nn.Module:
    kind = spec[0]
    if kind == "conv":
        return nn.Conv2d(spec[1], spec[2], spec[3], padding=spec[4])
    if kind == "blur":
        return BlurPool(spec[1])
    if kind == "max":
        return nn.MaxPool2d(spec[1], stride=1)
    return nn.ReLU()


class STLPIPS(nn.Module):
    """The ST-LPIPS network of one backbone ("alex" or "vgg"), frozen and in eval mode.

    Build it with :func:`load` (cached per device) or :func:`create` (None and a reason when the
    weights are missing); the constructor alone gives random weights."""

    def __init__(self, net: str = "alex"):
        super().__init__()
        if net not in NETS:
            raise ValueError(f"ST-LPIPS net {net!r}: choose one of {NETS}")
        self.net_name = net
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        self.slices = nn.ModuleList()
        index = 0
        for specs in _LAYERS[net]:
            s = nn.Sequential()
            for spec in specs:
                s.add_module(str(index), _module(spec))
                index += 1
            self.slices.append(s)
        channels = [next(sp[2] for sp in reversed(specs) if sp[0] == "conv") for specs in _LAYERS[net]]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.requires_grad_(False).eval()

    def load_released(self, state: dict[str, torch.Tensor], where: str) -> None:
        """Load a released state dict (keys ``scaling_layer.*``, ``net.slice<k>.<i>.*``,
        ``lin<k>.model.1.weight``), strictly: a missing or extra key is an error naming ``where``."""
        ours = {}
        for key, value in state.items():
            if key.startswith("scaling_layer."):
                ours[key.removeprefix("scaling_layer.")] = value
            elif key.startswith("net.slice"):
                k, rest = key.removeprefix("net.slice").split(".", 1)
                ours[f"slices.{int(k) - 1}.{rest}"] = value
            elif key.startswith("lin") and key.endswith(".model.1.weight"):
                ours[f"heads.{int(key[3:].split('.')[0])}.weight"] = value
            else:
                ours[key] = value
        try:
            self.load_state_dict(ours, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{where} is not an ST-LPIPS {self.net_name} state dict of {PACKAGE} "
                             f"(set st_lpips_weights to its {WEIGHTS_FILE[self.net_name]}): {e}") from e

    def train(self, mode: bool = True) -> "STLPIPS":
        return super().train(False)  # always eval: the heads were trained with dropout, never used here

    def layer_distances(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer distance maps. x, y [N, 3, H, W] in [0, 1] -> five maps [N, 1, h_l, w_l], fp32."""
        h = (torch.cat([x, y]).float() * 2 - 1 - self.shift) / self.scale
        out = []
        for s, head in zip(self.slices, self.heads):
            h = s(h)
            f = h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fx, fy = f.chunk(2)
            out.append(head((fx - fy) ** 2))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """ST-LPIPS distance of x and y [..., 3, H, W] in [0, 1] -> [...] (0 for identical images),
        computed in fp32 with autocast off, so it runs the same inside a bf16 autocast region.

        weight [..., 1, H, W] in [0, 1] (None: uniform): each layer's distance map is averaged with
        this weight resized to the layer's grid (area average) instead of uniformly, so a weight of
        ones gives the published ST-LPIPS exactly. Gradients flow to x and y, never to the weights."""
        lead, (c, H, W) = x.shape[:-3], x.shape[-3:]
        if min(H, W) < MIN_SIZE[self.net_name]:
            raise ValueError(f"ST-LPIPS {self.net_name} needs images of at least {MIN_SIZE[self.net_name]} px "
                             f"per side, got {H}x{W}")
        with torch.autocast(x.device.type, enabled=False):
            x4, y4 = x.reshape(-1, c, H, W).float(), y.reshape(-1, c, H, W).float()
            w = None if weight is None else weight.reshape(-1, 1, H, W).float()
            total = torch.zeros(x4.shape[0], device=x.device)
            for d in self.layer_distances(x4, y4):
                if w is None:
                    total = total + d.mean((1, 2, 3))
                else:
                    wl = F.interpolate(w, size=d.shape[-2:], mode="area")
                    total = total + (d * wl).sum((1, 2, 3)) / wl.sum((1, 2, 3))
        return total.reshape(lead)


# ----------------------------------------------------------------------------------------------
# Weights and loading
# ----------------------------------------------------------------------------------------------
def find_weights(net: str = "alex", path: str | os.PathLike = "") -> Path | None:
    """The weights file of ``net``: ``path`` if given (None when it is not a file), else the one
    inside the installed ``stlpips_pytorch`` package (found without importing it), else None."""
    if net not in NETS:
        raise ValueError(f"ST-LPIPS net {net!r}: choose one of {NETS}")
    if path:
        return Path(path) if Path(path).is_file() else None
    spec = importlib.util.find_spec("stlpips_pytorch")
    for root in (spec.submodule_search_locations or []) if spec else []:
        p = Path(root) / "weights" / "vST0.0" / WEIGHTS_FILE[net]
        if p.is_file():
            return p
    return None


def describe_weights(net: str = "alex", path: str | os.PathLike = "") -> str:
    """Where ``net``'s weights come from, without machine paths (for logs and metrics.json): the
    path as given, or the file inside the installed stlpips-pytorch package and its version."""
    if path:
        return str(path)
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"stlpips-pytorch {version('stlpips-pytorch')}: weights/vST0.0/{WEIGHTS_FILE[net]}"
    except PackageNotFoundError:
        return f"weights/vST0.0/{WEIGHTS_FILE[net]} of an stlpips_pytorch folder on the path"


@functools.lru_cache(maxsize=8)
def _cached(net: str, path: str, device: str) -> STLPIPS:
    model = STLPIPS(net)
    model.load_released(torch.load(path, map_location="cpu", weights_only=True), path)
    log.info("ST-LPIPS %s loaded on %s", net, device)
    return model.to(device)


def load(net: str = "alex", weights: str | os.PathLike = "", device: str | torch.device = "cpu") -> STLPIPS:
    """The frozen ST-LPIPS network of ``net`` on ``device``, one instance per (net, file, device).
    ``weights``: the weights file ("" = the installed package's). A missing file is an error that
    says how to get it.

    On a machine without the package (e.g. a GPU machine with a small upload), carry the one file
    the Alex metric needs, ``alex_shift_tolerant.pth`` (9.9 MB; ``python -c "from mousefacelift import
    perceptual; print(perceptual.find_weights('alex'))"`` prints where it is here), and pass its path
    as ``weights`` (``st_lpips_weights: <file>`` in a params YAML sets it for notebooks 06 and 07)."""
    p = find_weights(net, weights)
    if p is None:
        where = f"{weights} is not a file" if weights else f"the {PACKAGE} package is not installed"
        raise FileNotFoundError(f"ST-LPIPS {net} weights not found ({where}): `pip install {PACKAGE}`, or copy its "
                                f"stlpips_pytorch/weights/vST0.0/{WEIGHTS_FILE[net]} and set st_lpips_weights "
                                "to that file")
    return _cached(net, str(p.resolve()), str(torch.device(device)))


def create(net: str = "alex", weights: str | os.PathLike = "",
           device: str | torch.device = "cpu") -> tuple[STLPIPS | None, str]:
    """:func:`load`, or (None, the reason) when ``net`` is "" (off) or the weights are missing, so a
    report can say "unavailable" and why."""
    if not net:
        return None, "st_lpips_net is empty (off)"
    try:
        return load(net, weights, device), ""
    except FileNotFoundError as e:
        _warn_once(f"ST-LPIPS unavailable: {e}")
        return None, str(e)


# ----------------------------------------------------------------------------------------------
# The masked metric
# ----------------------------------------------------------------------------------------------
def st_lpips_fg(model: STLPIPS, pred: torch.Tensor, gt: torch.Tensor, gt_alpha: torch.Tensor,
                pred_alpha: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """ST-LPIPS restricted to the union of the two silhouettes. pred, gt [..., 3, H, W] in [0, 1]
    on white; gt_alpha, pred_alpha [..., 1, H, W] -> [...] (NaN where the union is empty or the
    image is smaller than :data:`MIN_SIZE`).

    Which pixels count, and how: let U = (GT alpha > threshold) OR (rendered alpha > threshold).
    1. Both images are set to the same white outside U, so a pixel outside U can never change the
       score, and the network sees identical context there on both sides.
    2. Each layer's distance map is averaged over U (U area-resized to the layer's grid) instead of
       over the whole image, so the number does not depend on how much white surrounds the mouse,
       as PSNR_fg's mean over foreground pixels does not.
    Why U and not PSNR_fg's GT mask alone: PSNR_fg is a per-pixel mean and simply leaves the
    background out; a conv metric compares structure, and blanking the render outside the GT
    silhouette would erase exactly the misplaced outline it should see (a render that spills over
    or misses part of the mouse differs inside U). The layer grids are not pixel-aligned with the
    image (valid 11x11 first conv, blur-pools), so the area weights are exact for the union's
    extent but approximate at its border by a few pixels; distances that the receptive fields carry
    just outside U are not counted."""
    H, W = pred.shape[-2:]
    if min(H, W) < MIN_SIZE[model.net_name]:
        _warn_too_small(model.net_name, H, W)
        return torch.full(pred.shape[:-3], math.nan, device=pred.device)
    u = ((gt_alpha > threshold) | (pred_alpha > threshold)).to(pred.dtype)    # [..., 1, H, W]
    white = torch.ones((), dtype=pred.dtype, device=pred.device)
    p, g = torch.where(u > 0, pred, white), torch.where(u > 0, gt.to(pred), white)
    empty = u.sum((-3, -2, -1)) == 0
    d = model(p, g, weight=torch.where(empty[..., None, None, None], torch.ones_like(u), u))
    return torch.where(empty, torch.full_like(d, math.nan), d)


def _warn_too_small(net: str, H: int, W: int) -> None:
    _warn_once(f"ST-LPIPS {net} is undefined (NaN) for {H}x{W} images: its blur-pools need at least "
               f"{MIN_SIZE[net]} px per side")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning(message)
