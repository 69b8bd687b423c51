"""3D Gaussians: a container with standard 3DGS PLY I/O and one ``rasterize()`` with two backends
(the pure-torch one lives in :mod:`mousefacelift.rasterizer_torch`; turntables in
:mod:`mousefacelift.turntable`).

Conventions (shared with :mod:`mousefacelift.cameras`, which does all camera math):

* Cameras are OpenCV: ``w2c [B, V, 4, 4]`` (x right, y down, z forward) and ``K [B, V, 3, 3]``
  with pixel centres at +0.5 (gsplat's and FaceLift's convention). The world is Z-up.
* Gaussians: ``means [..., N, 3]`` world, ``quats [..., N, 4]`` wxyz (normalised inside),
  ``scales [..., N, 3]`` activated (world units, not log), ``opacities [..., N]`` in [0, 1] and
  colours either degree-0 SH coefficients (``colour = max(0, 0.5 + C0 * f)``) or plain RGB.
* Backends: ``gsplat`` (CUDA, gsplat 1.5.3's ``rasterization``) and ``torch`` (the differentiable
  CPU reference and fallback, written to reproduce gsplat's "classic" EWA splatting: same
  projection, low-pass, culling, depth order, alpha rule and early stop). Rendering is fp32.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mousefacelift.rasterizer_torch import (ALPHA_MAX, ALPHA_MIN, T_MIN, Projection, RasterSettings,  # noqa: F401
                                            Render, project_gaussians, quat_to_rotmat, rasterize_torch)
from mousefacelift.turntable import render_turntable, turntable_cameras  # noqa: F401

logger = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814  # degree-0 real spherical harmonic, 1 / (2 sqrt(pi))
PLY_SH_REST = 45  # f_rest_* properties of a degree-3 3DGS PLY (zeros here)


# ----------------------------------------------------------------------------------------------
# Public entry
# ----------------------------------------------------------------------------------------------
def rasterize(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
              colors: torch.Tensor, w2c: torch.Tensor, K: torch.Tensor, width: int, height: int,
              background=(1.0, 1.0, 1.0), *, sh_degree: int | None = 0, backend: str = "auto",
              return_depth: bool = False, near: float = 0.01,
              settings: RasterSettings = RasterSettings()) -> Render:
    """Render B scenes of N Gaussians into V views each.

    means [B, N, 3] world; quats [B, N, 4] wxyz (any norm); scales [B, N, 3] activated world units;
    opacities [B, N] in [0, 1]; colors [B, N, 3]: degree-0 SH coefficients when ``sh_degree=0``
    (colour = max(0, 0.5 + 0.28209479 f)) or RGB when ``sh_degree=None``; w2c [B, V, 4, 4] OpenCV;
    K [B, V, 3, 3] (pixel centres at +0.5); background: 3 floats, a tensor [3] or [B, V, 3].
    ``backend``: "auto" (gsplat when the tensors are on CUDA, torch otherwise), "gsplat" or "torch".
    Inputs are cast to float32; outputs are float32 on the inputs' device (see :class:`Render`).
    """
    B, N = means.shape[:2]
    V = w2c.shape[1]
    _check_shape("means", means, (B, N, 3))
    _check_shape("quats", quats, (B, N, 4))
    _check_shape("scales", scales, (B, N, 3))
    _check_shape("opacities", opacities, (B, N))
    _check_shape("colors", colors, (B, N, 3))
    _check_shape("w2c", w2c, (B, V, 4, 4))
    _check_shape("K", K, (B, V, 3, 3))
    if sh_degree not in (0, None):
        raise ValueError(f"sh_degree={sh_degree!r}: only 0 (degree-0 SH coefficients) or None (RGB) are supported")
    if backend == "auto":
        backend = "gsplat" if means.is_cuda else "torch"
    f32 = dict(dtype=torch.float32, device=means.device)
    means, quats, scales, opacities, colors, w2c, K = (
        t.to(**f32) for t in (means, quats, scales, opacities, colors, w2c, K))
    bg = torch.as_tensor(background, **f32)
    bg = bg.expand(B, V, 3) if bg.dim() == 1 else bg
    _check_shape("background", bg, (B, V, 3))
    if backend == "gsplat":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, w2c, K, width, height, bg,
                                 sh_degree, return_depth, near, settings)
    if backend == "torch":
        rgb = colors if sh_degree is None else sh0_to_rgb(colors)
        return rasterize_torch(means, quats, scales, opacities, rgb, w2c, K, width, height, bg,
                               return_depth=return_depth, near=near, settings=settings)
    raise ValueError(f"backend={backend!r}: use 'auto', 'gsplat' or 'torch'")


def sh0_to_rgb(sh0: torch.Tensor) -> torch.Tensor:
    """Degree-0 SH coefficients [..., 3] -> RGB [..., 3], clamped at 0 like gsplat / graphdeco."""
    return (0.5 + SH_C0 * sh0).clamp_min(0.0)


def _check_shape(name: str, t: torch.Tensor, shape: tuple) -> None:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"rasterize: {name} has shape {tuple(t.shape)}, expected {tuple(shape)} "
                         "(see the shapes in rasterize's docstring)")


# ----------------------------------------------------------------------------------------------
# gsplat backend
# ----------------------------------------------------------------------------------------------
_FIRST_CALLS_DONE: set[str] = set()


def machine_exclusive_first_call(key: str, fn):
    """``fn()``; the first call for ``key`` in this process holds an exclusive lock file shared by
    every process of the machine (``<tmp>/mousefacelift-<key>.lock``), so first calls that build
    something into a shared cache run one at a time. gsplat compiles its CUDA extension on first
    use (about a minute on a fresh machine) into one cache folder: two processes compiling at once
    (e.g. notebooks 04 and 06 side by side, or DDP ranks) break each other's build."""
    if key in _FIRST_CALLS_DONE:
        return fn()
    import fcntl
    import tempfile

    with open(Path(tempfile.gettempdir()) / f"mousefacelift-{key}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            out = fn()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _FIRST_CALLS_DONE.add(key)
    return out


def warm_up_gsplat(device: torch.device) -> None:
    """Build (or load) gsplat's CUDA extension by rasterizing one Gaussian into an 8 x 8 view on
    ``device`` (the first gsplat call of a process is serialised machine-wide:
    :func:`machine_exclusive_first_call`)."""
    z = torch.zeros(1, 1, 3, device=device)
    w2c = torch.eye(4, device=device).expand(1, 1, 4, 4).clone()
    w2c[..., 2, 3] = 2.0
    K = torch.tensor([[8.0, 0, 4], [0, 8.0, 4], [0, 0, 1]], device=device).expand(1, 1, 3, 3)
    rasterize(z, torch.tensor([[[1.0, 0, 0, 0]]], device=device), z + 0.1, torch.ones(1, 1, device=device), z,
              w2c, K, 8, 8, backend="gsplat")


def _rasterize_gsplat(means, quats, scales, opacities, colors, w2c, K, width, height, bg, sh_degree,
                      return_depth, near, settings) -> Render:
    try:
        from gsplat import rasterization
    except ImportError as err:
        raise RuntimeError("backend='gsplat' needs the gsplat package (pip install gsplat==1.5.3, "
                           "a CUDA machine); use backend='torch' on CPU") from err
    if not means.is_cuda:
        raise RuntimeError("backend='gsplat' needs CUDA tensors; move them with .cuda() or use backend='torch'")
    out, alpha, _ = machine_exclusive_first_call("gsplat-build", lambda: rasterization(
        means, quats, scales, opacities, colors if sh_degree is None else colors[..., None, :],
        w2c, K, width, height, near_plane=near, far_plane=settings.far, eps2d=settings.eps2d,
        sh_degree=sh_degree, packed=False, backgrounds=bg,
        render_mode="RGB+ED" if return_depth else "RGB", rasterize_mode="classic"))
    return Render(rgb=out[..., :3], alpha=alpha, depth=out[..., 3:4] if return_depth else None)


# ----------------------------------------------------------------------------------------------
# Container and PLY
# ----------------------------------------------------------------------------------------------
@dataclass
class Gaussians:
    """One scene: means [N, 3] world, quats [N, 4] wxyz, scales [N, 3] activated (world units),
    opacities [N] in [0, 1], sh0 [N, 3] degree-0 SH coefficients (colour = 0.5 + C0 * sh0)."""
    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh0: torch.Tensor

    def __post_init__(self):
        n = self.means.shape[0]
        for name, tail in (("means", (3,)), ("quats", (4,)), ("scales", (3,)), ("opacities", ()), ("sh0", (3,))):
            t = getattr(self, name)
            if tuple(t.shape) != (n, *tail):
                raise ValueError(f"Gaussians.{name} has shape {tuple(t.shape)}, expected {(n, *tail)}")

    def __len__(self) -> int:
        return self.means.shape[0]

    def _select(self, keep: torch.Tensor) -> "Gaussians":
        return Gaussians(self.means[keep], self.quats[keep], self.scales[keep], self.opacities[keep], self.sh0[keep])

    def to(self, device=None, dtype=None) -> "Gaussians":
        """A copy with every tensor moved / cast."""
        return Gaussians(*(t.to(device=device, dtype=dtype) for t in
                           (self.means, self.quats, self.scales, self.opacities, self.sh0)))

    def prune_opacity(self, threshold: float) -> "Gaussians":
        """Keep the Gaussians with opacity >= threshold."""
        return self._select(self.opacities >= threshold)

    def crop_box(self, lo, hi) -> "Gaussians":
        """Keep the Gaussians whose centre lies in the axis-aligned box [lo, hi] (3 values each)."""
        lo = torch.as_tensor(lo, dtype=self.means.dtype, device=self.means.device)
        hi = torch.as_tensor(hi, dtype=self.means.dtype, device=self.means.device)
        return self._select(((self.means >= lo) & (self.means <= hi)).all(-1))

    def render(self, w2c: torch.Tensor, K: torch.Tensor, width: int, height: int, **kw) -> Render:
        """Render into V views: w2c [V, 4, 4], K [V, 3, 3] -> Render with B = 1 (see :func:`rasterize`)."""
        dev = self.means.device
        return rasterize(self.means[None], self.quats[None], self.scales[None], self.opacities[None],
                         self.sh0[None], w2c.to(dev)[None], K.to(dev)[None], width, height, **kw)

    def write_ply(self, path) -> Path:
        """Standard 3DGS PLY (binary little-endian float32): x y z, nx ny nz (0), f_dc_0..2,
        f_rest_0..44 (0), opacity (logit), scale_0..2 (log), rot_0..3 (wxyz)."""
        from plyfile import PlyData, PlyElement
        path = Path(path)
        n = len(self)
        d = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        op = d(self.opacities).clamp(1e-12, 1 - 1e-7)
        cols = {**dict(zip("xyz", d(self.means).T)), **{f"n{a}": torch.zeros(n, dtype=torch.float64) for a in "xyz"},
                **{f"f_dc_{i}": v for i, v in enumerate(d(self.sh0).T)},
                **{f"f_rest_{i}": torch.zeros(n, dtype=torch.float64) for i in range(PLY_SH_REST)},
                "opacity": torch.log(op) - torch.log1p(-op),
                **{f"scale_{i}": v for i, v in enumerate(torch.log(d(self.scales).clamp_min(1e-30)).T)},
                **{f"rot_{i}": v for i, v in enumerate(d(self.quats).T)}}
        data = np.empty(n, dtype=[(k, "<f4") for k in cols])
        for k, v in cols.items():
            data[k] = v.numpy().astype(np.float32)
        path.parent.mkdir(parents=True, exist_ok=True)
        PlyData([PlyElement.describe(data, "vertex")], byte_order="<").write(str(path))
        logger.info("wrote %d Gaussians to %s", n, path)
        return path

    @classmethod
    def read_ply(cls, path) -> "Gaussians":
        """Read a 3DGS PLY written by :meth:`write_ply` (or any 3DGS PLY: f_rest_* are ignored)."""
        from plyfile import PlyData
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Gaussians.read_ply: no file at {path}")
        v = PlyData.read(str(path))["vertex"]
        names = set(v.data.dtype.names)
        needed = ["x", "y", "z", "opacity"] + [f"{p}_{i}" for p, k in (("f_dc", 3), ("scale", 3), ("rot", 4))
                                                for i in range(k)]
        missing = [k for k in needed if k not in names]
        if missing:
            raise ValueError(f"{path}: not a 3DGS PLY, vertex properties {missing} are missing")
        col = lambda *ks: torch.from_numpy(np.stack([np.asarray(v[k], np.float64) for k in ks], -1))  # noqa: E731
        f32 = lambda t: t.to(torch.float32)  # noqa: E731
        return cls(means=f32(col("x", "y", "z")), quats=f32(col(*[f"rot_{i}" for i in range(4)])),
                   scales=f32(torch.exp(col(*[f"scale_{i}" for i in range(3)]))),
                   opacities=f32(torch.sigmoid(col("opacity")[:, 0])),
                   sh0=f32(col(*[f"f_dc_{i}" for i in range(3)])))


def random_gaussians(n: int, *, generator: torch.Generator, radius: float = 0.6,
                     scale_range: tuple[float, float] = (0.005, 0.08), device=None) -> Gaussians:
    """A random scene for tests and benchmarks: n Gaussians in a ball of ``radius`` about the
    origin, log-uniform scales in ``scale_range``, random rotations, opacities in (0.05, 1),
    SH colours in (-1.5, 1.5). Drawn on the CPU from ``generator`` and moved to ``device``."""
    g = generator
    u = torch.rand(n, 1, generator=g) ** (1 / 3)
    d = torch.randn(n, 3, generator=g)
    means = radius * u * d / d.norm(dim=-1, keepdim=True)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    opac = 0.05 + 0.95 * torch.rand(n, generator=g)
    sh0 = 3.0 * torch.rand(n, 3, generator=g) - 1.5
    return Gaussians(means, quats, scales, opac, sh0).to(device)
