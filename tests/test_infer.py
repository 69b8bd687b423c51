"""`mfl infer` on tiny checkpoints: one image (FaceLift-style outputs) and a recording's frame range."""
import json
from dataclasses import asdict

import cv2
import numpy as np
import pytest
import torch

from mousefacelift import cameras, cli, infer
from mousefacelift.data.samples import write_sample
from mousefacelift.gaussians import Gaussians
from mousefacelift.gslrm.model import GSLRM, GSLRMConfig, checkpoint_name

SIZE = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny GS-LRM checkpoint folder and a tiny MVDiffusion pipeline folder (reference view 1)."""
    from diffusers import DDPMScheduler
    from mousefacelift.mvdiffusion import MVDiffusionConfig, MVDiffusionModel, MVDiffusionPipeline
    from mousefacelift.mvdiffusion.pipeline import PixelCodec

    root = tmp_path_factory.mktemp("infer_models")
    torch.manual_seed(0)
    cfg = GSLRMConfig.tiny(image_size=SIZE, layers=1, width=32, heads=2)
    (root / "gslrm").mkdir()
    torch.save({"model": GSLRM(cfg).state_dict(), "config": asdict(cfg), "fwdbwd_pass_step": 1},
               root / "gslrm" / checkpoint_name(1))
    model = MVDiffusionModel.from_dataclass(MVDiffusionConfig.tiny(image_size=8, reference_view=1), seed=0)
    MVDiffusionPipeline(model, DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction"),
                        PixelCodec()).save_pretrained(root / "mvd")
    return root


def write_rgba(path, size=32):
    yy, xx = np.mgrid[:size, :size]
    a = ((xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 3) ** 2).astype(np.uint8) * 255
    rgba = np.stack([xx * 255 // size, yy * 255 // size, np.full_like(xx, 90), a], -1).astype(np.uint8)
    cv2.imwrite(str(path), rgba[..., [2, 1, 0, 3]])
    return path


def test_parse_frames_and_arrange():
    assert infer.parse_frames("3:7") == range(3, 7) and infer.parse_frames("0:10:5") == range(0, 10, 5)
    for bad in ("7:3", "a:b", "5", "1:2:0"):
        with pytest.raises(ValueError, match="A:B"):
            infer.parse_frames(bad)
    w2c, K = cameras.canonical_rig(image_size=8)
    w, k, order = infer.arrange(w2c, K, ref=4, position=1)
    assert order == [0, 4, 1, 2, 3, 5] and torch.equal(w[1], w2c[4]) and torch.equal(k, K[order])


def test_infer_image_writes_facelift_outputs(models, tmp_path):
    image = write_rgba(tmp_path / "mouse.png")
    out = tmp_path / "out"
    code = cli.main(["infer", str(image), "--mvdiffusion", str(models / "mvd"), "--gslrm", str(models / "gslrm"),
                     "--out", str(out), "--steps", "2", "--turntable-frames", "3", "--device", "cpu"])
    assert code == 0
    assert {"input.png", "multiview.png", "gaussians.ply"} <= {p.name for p in out.iterdir()}
    assert (out / "turntable.mp4").is_file() or (out / "turntable.gif").is_file()
    mv = cv2.imread(str(out / "multiview.png"))
    assert mv.shape == (8, 6 * 8, 3)  # six canonical views at the pipeline's 8 px
    inp = cv2.imread(str(out / "input.png"), cv2.IMREAD_UNCHANGED)
    assert inp.shape == (8, 8, 4) and inp[..., 3].max() == 255 and inp[0, 0, 3] == 0
    g = Gaussians.read_ply(out / "gaussians.ply")
    assert 0 < len(g) <= 2 + 6 * SIZE * SIZE and (g.opacities >= 0.005 - 1e-6).all()


def test_infer_image_with_a_sample_camera(models, tmp_path):
    w2c, K = cameras.canonical_rig(image_size=64)
    write_sample(tmp_path / "s", np.zeros((4, 64, 64, 4), np.uint8), w2c[:4], K[:4], [3, 5, 7, 9])
    image = write_rgba(tmp_path / "mouse.png")
    res = infer.infer_image(image, models / "mvd", models / "gslrm", tmp_path / "out", f"{tmp_path / 's'}:7",
                            infer.InferConfig(steps=2, turntable_frames=2))
    assert res["views"] == [0, 2, 1, 3]  # camera 7 (position 2) moved to the model's reference position 1
    assert cv2.imread(str(res["multiview"])).shape == (8, 4 * 8, 3)
    code = cli.main(["infer", str(image), "--mvdiffusion", str(models / "mvd"), "--gslrm", str(models / "gslrm"),
                     "--out", str(tmp_path / "o2"), "--camera", f"{tmp_path / 's'}:4"])
    assert code == 2  # camera 4 is not in the sample: a clear error, nothing run


def test_infer_recording_writes_one_ply_per_frame(models, tmp_path):
    from mousefacelift.data import synthetic

    rec = synthetic.ensure_recording(tmp_path / "rec", synthetic.SyntheticConfig(n_frames=3, resolution_scale=0.25))
    out = tmp_path / "seq"
    code = cli.main(["infer", "--recording", str(rec), "--frames", "0:2", "--gslrm", str(models / "gslrm"),
                     "--out", str(out), "--turntable-frames", "2"])
    assert code == 0
    info = json.loads((out / "frames.json").read_text())
    written = [f for f, v in info["frames"].items() if "ply" in v]
    assert sorted(info["frames"]) == ["0", "1"] and written
    assert sorted(p.name for p in out.glob("*.ply")) == [f"frame_{int(f):06d}.ply" for f in sorted(written)]
    assert (out / "sequence.mp4").is_file() or (out / "sequence.gif").is_file()
    # PLY centres are in world mm: the frame's normalization maps them onto the model's own output
    from mousefacelift.data.extract import ExtractConfig, process_frame
    from mousefacelift.data.recording import open_recording, read_frames
    from mousefacelift.gslrm.data import prepare_images
    from mousefacelift.gslrm.model import from_pretrained

    f0 = int(written[0])
    model = from_pretrained(models / "gslrm")
    r = open_recording(rec)
    pf = process_frame(next(read_frames(r, [f0], progress=False)), r, ExtractConfig(image_size=SIZE, progress=False))
    rgb, _, K = prepare_images(torch.from_numpy(pf.images).permute(0, 3, 1, 2).float() / 255, pf.K, SIZE)
    with torch.no_grad():
        o = model(rgb[None], cameras.invert_rigid(pf.w2c)[None].float(), K[None].float())
    keep = o.opacities[0] >= 0.005
    n = info["frames"][str(f0)]["normalization"]
    g = Gaussians.read_ply(out / f"frame_{f0:06d}.ply")
    back = cameras.Similarity(n["scale"], tuple(n["center_mm"])).apply_points(g.means.double()).float()
    torch.testing.assert_close(back, o.means[0][keep], atol=1e-3, rtol=0)
    torch.testing.assert_close(g.scales * n["scale"], o.scales[0][keep], atol=1e-5, rtol=1e-3)
