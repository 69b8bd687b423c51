"""Each metric pinned to hand-computed values."""
import math

import pytest
import torch

from mousefacelift import metrics


def test_psnr_fg_hand_computed():
    gt = torch.zeros(3, 4, 4)
    alpha = torch.zeros(1, 4, 4)
    alpha[:, :2, :2] = 1.0  # 4 foreground pixels
    pred = gt.clone()
    pred[:, 0, 0] = 0.1  # error 0.1 on one fg pixel, all 3 channels
    # MSE over fg = (3 * 0.01) / (4 * 3) = 0.0025 -> PSNR = -10 log10(0.0025) = 26.0206
    assert metrics.psnr_fg(pred, gt, alpha).item() == pytest.approx(26.0206, abs=1e-3)


def test_psnr_fg_ignores_background_changes():
    gt = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    alpha = torch.zeros(2, 1, 8, 8)
    alpha[..., 2:6, 2:6] = 1
    pred = gt + 0.05 * (alpha > 0.5)
    base = metrics.psnr_fg(pred, gt, alpha)
    pred_bg = pred.clone()
    pred_bg[(alpha <= 0.5).expand_as(pred)] = 0.0  # only the background differs
    assert torch.allclose(metrics.psnr_fg(pred_bg, gt, alpha), base)
    assert metrics.psnr_full(pred_bg, gt).mean() < metrics.psnr_full(pred, gt).mean()


def test_no_foreground_is_undefined_not_infinite():
    gt, pred = torch.ones(3, 4, 4), torch.zeros(3, 4, 4)
    alpha = torch.zeros(1, 4, 4)
    assert math.isnan(metrics.psnr_fg(pred, gt, alpha).item())
    assert math.isnan(metrics.ssim_fg(pred, gt, alpha).item())
    assert math.isnan(metrics.mask_iou(alpha, alpha).item())
    s = metrics.summarize([20.0, float("nan"), 22.0])
    assert s["mean"] == 21.0 and s["n"] == 2 and s["n_undefined"] == 1


def test_psnr_full_hand_computed():
    gt = torch.ones(3, 2, 2)
    pred = gt.clone()
    pred[0, 0, 0] = 0.0  # one channel-pixel off by 1 -> MSE 1/12
    assert metrics.psnr_full(pred, gt).item() == pytest.approx(10 * math.log10(12), abs=1e-4)


def test_mask_iou_hand_computed():
    a = torch.zeros(1, 4, 4)
    b = torch.zeros(1, 4, 4)
    a[:, 0, :3] = 0.9  # 3 px
    b[:, 0, 1:4] = 0.8  # 3 px, overlap 2
    assert metrics.mask_iou(a, b).item() == pytest.approx(2 / 4)


def test_ssim_identical_is_one_and_drops_with_noise():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 32, generator=g)
    alpha = torch.ones(1, 1, 32, 32)
    assert metrics.ssim_fg(x, x, alpha).item() == pytest.approx(1.0, abs=1e-6)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert metrics.ssim_fg(noisy, x, alpha).item() < 0.9


def test_ssim_constant_images_hand_computed():
    # constant images a, b: variances 0, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b = 0.3, 0.5
    x, y = torch.full((3, 16, 16), a, dtype=torch.float64), torch.full((3, 16, 16), b, dtype=torch.float64)
    c1 = 0.01 ** 2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim_fg(x, y, torch.ones(1, 16, 16, dtype=torch.float64)).item() == pytest.approx(want, abs=1e-9)


def test_chamfer_hand_computed():
    surface = torch.tensor([[0.0, 0, 0], [10.0, 0, 0]])
    pts = torch.tensor([[0.0, 1, 0], [10.0, 0, 2], [50.0, 0, 0]])
    w = torch.tensor([1.0, 1.0, 0.0])  # the far point is transparent: weight 0
    out = metrics.chamfer_mm(pts, surface, w)
    assert out["accuracy_mm"] == pytest.approx(1.5)
    assert out["completeness_mm"] == pytest.approx(1.5)
    assert out["chamfer_mm"] == pytest.approx(1.5)


def test_lpips_unavailable_without_weights(tmp_path):
    model, why = metrics.LPIPSVGG.create(str(tmp_path / "missing.pth"))
    assert model is None and "not found" in why


def test_lpips_loads_local_backbone(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    path = tmp_path / metrics.VGG16_FILE
    torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)  # same layout, random weights
    model, why = metrics.LPIPSVGG.create(str(path))
    assert why == "" and model is not None
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    d_same = model(x, x)
    d_diff = model(x, x.flip(-1))
    assert d_same.shape == (2,) and torch.allclose(d_same, torch.zeros(2), atol=1e-6)
    assert (d_diff > d_same).all()


def black_square(size: int = 32, side: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """A black side x side square centred on white: rgb [3, S, S], alpha [1, S, S]."""
    alpha = torch.zeros(1, size, size)
    lo = (size - side) // 2
    alpha[:, lo:lo + side, lo:lo + side] = 1.0
    return 1.0 - alpha.expand(3, -1, -1), alpha


def test_shift_moves_pixels_and_fills_the_uncovered_edge():
    x = torch.arange(12.0).reshape(1, 3, 4)
    right = metrics.shift(x, 1, 0, fill=-1.0)
    assert right[0, :, 0].eq(-1).all() and torch.equal(right[0, :, 1:], x[0, :, :-1])
    up = metrics.shift(x, 0, -1, fill=-1.0)
    assert up[0, -1].eq(-1).all() and torch.equal(up[0, :-1], x[0, 1:])
    assert torch.equal(metrics.shift(x, 0, 0, 0.0), x)


def test_gaussian_blur_keeps_constants_and_mass_and_spreads_an_impulse():
    assert torch.allclose(metrics.gaussian_blur(torch.full((2, 3, 9, 9), 0.7), 1.0), torch.full((2, 3, 9, 9), 0.7))
    impulse = torch.zeros(1, 21, 21)
    impulse[0, 10, 10] = 1.0
    b = metrics.gaussian_blur(impulse, 1.0)
    assert b.sum().item() == pytest.approx(1.0, abs=1e-6)
    # the variance of the blurred impulse along x is sigma^2 (the window of 3 sigma keeps ~99.7%)
    xs = torch.arange(21.0) - 10
    assert (b[0].sum(0) * xs ** 2).sum().item() == pytest.approx(1.0, abs=0.03)


def test_shifting_a_square_by_one_pixel_costs_what_its_outline_says():
    # side k: a 1-px shift turns one column (or row) of k fg pixels white, error 1 in every channel:
    # MSE_fg = k / k^2 -> PSNR_fg = 10 log10(k); IoU = k(k-1) / (k(k+1)) in every direction
    rgb, alpha = black_square(32, 16)
    m = metrics.degradation_metrics(rgb, alpha, "shift_1px")
    assert m["psnr_fg"].item() == pytest.approx(10 * math.log10(16), abs=1e-4)
    assert m["mask_iou"].item() == pytest.approx(15 / 17, abs=1e-6)
    two = metrics.degradation_metrics(rgb, alpha, "shift_2px")
    assert two["psnr_fg"].item() == pytest.approx(10 * math.log10(8), abs=1e-4)


def test_blur_and_flat_colour_degradations():
    rgb, alpha = black_square(32, 16)
    psnr = {d: metrics.degradation_metrics(rgb, alpha, d)["psnr_fg"].item() for d in ("blur_0.5px", "blur_1px", "blur_2px")}
    assert psnr["blur_0.5px"] > psnr["blur_1px"] > psnr["blur_2px"] > 0
    # a uniformly black square is its own flat colour; a two-tone one loses exactly its contrast
    assert metrics.degradation_metrics(rgb, alpha, "flat_colour")["psnr_fg"].item() > 100
    two_tone = rgb.clone()
    two_tone[:, 8:16, 8:24] = 0.2  # the top half of the square grey 0.2, the bottom half black: mean 0.1
    m = metrics.degradation_metrics(two_tone, alpha, "flat_colour")
    assert m["psnr_fg"].item() == pytest.approx(20.0, abs=1e-4)  # every fg pixel off by 0.1
    assert m["mask_iou"].item() == 1.0
    with pytest.raises(ValueError, match="unknown degradation"):
        metrics.degraded_copies(rgb, alpha, "shift_sideways")


def _clustered(n_frames: int, views: int, frame_sd: float, view_sd: float, g: torch.Generator):
    """Values of ``views`` views for each of ``n_frames`` frames: a shared frame effect plus view noise."""
    frame = torch.randn(n_frames, 1, generator=g, dtype=torch.float64) * frame_sd
    v = (frame + torch.randn(n_frames, views, generator=g, dtype=torch.float64) * view_sd).flatten()
    return v, [f for f in range(n_frames) for _ in range(views)]


def test_bootstrap_ci_covers_the_true_mean_and_widens_with_correlated_views():
    """Frames with a shared effect (views of a frame correlated): the clustered interval covers the
    true mean (0) about 95% of the time and is much wider than the naive per-view interval, which
    treats 6 views of a frame as 6 independent draws; with independent views both agree."""
    g = torch.Generator().manual_seed(0)
    covered, ratios = 0, []
    for rep in range(120):
        v, c = _clustered(30, 6, 1.0, 0.3, g)
        ci = metrics.bootstrap_ci(v, c, n_boot=400, seed=rep)
        covered += ci["lo"] <= 0.0 <= ci["hi"]
        ratios.append(ci["ci95"] / metrics.summarize(v)["ci95"])
    assert 0.88 <= covered / 120 <= 0.995, covered
    assert sum(ratios) / len(ratios) > 2.0  # design effect 1 + 5 * 1 / 1.09: sqrt = 2.36 (measured 2.32)
    v, c = _clustered(30, 6, 0.0, 1.0, g)
    ratio = metrics.bootstrap_ci(v, c, n_boot=2000)["ci95"] / metrics.summarize(v)["ci95"]
    assert 0.8 < ratio < 1.2, ratio


def test_bootstrap_ci_counts_clusters_and_undefined_values_and_is_keyed():
    vals = [1.0, 2.0, float("nan"), 4.0, 5.0, 6.0]
    ci = metrics.bootstrap_ci(vals, ["a", "a", "a", "b", "b", "c"], n_boot=300, seed=4)
    assert ci["n"] == 5 and ci["n_undefined"] == 1 and ci["n_clusters"] == 3 and ci["mean"] == pytest.approx(3.6)
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci == metrics.bootstrap_ci(vals, ["a", "a", "a", "b", "b", "c"],
                                                                            n_boot=300, seed=4)
    one = metrics.bootstrap_ci([1.0, 2.0], ["a", "a"])
    assert one["mean"] == 1.5 and one["ci95"] is None
    with pytest.raises(ValueError, match="3 values but 2 cluster labels"):
        metrics.bootstrap_ci([1.0, 2.0, 3.0], ["a", "b"])
