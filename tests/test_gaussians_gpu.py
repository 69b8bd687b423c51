"""Parity of the torch rasterizer with gsplat on CUDA: images and gradients (run with `pytest -m gpu`)."""
import pytest
import torch

from mousefacelift import cameras
from mousefacelift.gaussians import random_gaussians, rasterize

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (gsplat)")]

NAMES = ("means", "quats", "scales", "opacities", "colors")


def scene(n: int, batch: int, views: int, size: int, seed: int):
    """batch random scenes of n in-view Gaussians (mixed sizes and opacities) and views cameras of
    FaceLift's rig (some at 20 degrees elevation), all on CUDA."""
    gen = torch.Generator().manual_seed(seed)
    # smaller splats when there are many, so that the image is not one opaque blob
    top = 0.08 if n <= 10_000 else 0.03
    gs = [random_gaussians(n, generator=gen, radius=0.7, scale_range=(0.004, top)) for _ in range(batch)]
    params = [torch.stack([getattr(g, k) for g in gs]).cuda() for k in ("means", "quats", "scales", "opacities", "sh0")]
    w2c, K = [], []
    for elev in (0.0, 20.0):
        w, k = cameras.canonical_rig(elevation_deg=elev, image_size=size)
        w2c.append(w), K.append(k)
    w2c, K = torch.cat(w2c)[:views].float().cuda(), torch.cat(K)[:views].float().cuda()
    return params, w2c.expand(batch, views, 4, 4), K.expand(batch, views, 3, 3)


def render_and_grads(backend, params, w2c, K, size, weights):
    leaves = [p.clone().requires_grad_(True) for p in params]
    r = rasterize(*leaves, w2c, K, size, size, backend=backend, return_depth=True)
    loss = (r.rgb * weights[0]).sum() + (r.alpha * weights[1]).sum()
    grads = torch.autograd.grad(loss, leaves)
    return r, grads


@pytest.mark.parametrize("n, batch, views, size", [(1_000, 2, 3, 128), (10_000, 1, 4, 256), (100_000, 1, 2, 512)])
def test_torch_backend_matches_gsplat(n, batch, views, size):
    params, w2c, K = scene(n, batch, views, size, seed=n)
    gen = torch.Generator().manual_seed(1)
    weights = (torch.randn(batch, views, size, size, 3, generator=gen).cuda(),
               torch.randn(batch, views, size, size, 1, generator=gen).cuda())
    ref, ref_grads = render_and_grads("gsplat", params, w2c, K, size, weights)
    out, grads = render_and_grads("torch", params, w2c, K, size, weights)
    assert 0.05 < ref.alpha.mean() < 0.95  # neither empty nor a wall
    rgb_mad = (out.rgb - ref.rgb).abs().mean().item()
    alpha_mad = (out.alpha - ref.alpha).abs().mean().item()
    hit = ref.alpha > 0.5
    depth_mad = (out.depth - ref.depth)[hit].abs().mean().item()
    print(f"N={n}: MAD rgb {rgb_mad:.2e} alpha {alpha_mad:.2e} depth(alpha>0.5) {depth_mad:.2e}")
    assert rgb_mad <= 2e-3 and alpha_mad <= 2e-3
    assert depth_mad <= 1e-2
    for name, a, b in zip(NAMES, grads, ref_grads):
        cos = torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()
        print(f"N={n}: grad {name} cosine {cos:.5f}")
        assert cos >= 0.99, (name, cos)


def test_gsplat_warm_up_builds_the_extension_the_renderer_then_uses():
    """The warm-up DDP ranks take one after another renders one Gaussian through gsplat: after it,
    gsplat's extension is loaded and a real render agrees with the torch reference."""
    from mousefacelift.gaussians import warm_up_gsplat

    warm_up_gsplat(torch.device("cuda"))
    params, w2c, K = scene(50, 1, 2, 32, seed=3)
    a = rasterize(*params, w2c, K, 32, 32, backend="gsplat")
    b = rasterize(*params, w2c, K, 32, 32, backend="torch")
    assert (a.rgb - b.rgb).abs().mean() <= 2e-3  # the tolerance of test_torch_backend_matches_gsplat
