"""`mfl infer` on tiny checkpoints: one image (FaceLift-style outputs) and a recording's frame range."""
import json
import re
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
    from mousefacelift.data import procedural

    rec = procedural.ensure_recording(tmp_path / "rec", procedural.ProceduralConfig(n_frames=3, resolution_scale=0.25))
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


# ----------------------------------------------------------------------------------------------
# Inputs are checked before any model is loaded
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading either model fails the test: the input checks must come first."""
    from mousefacelift.gslrm import model as gslrm_model
    from mousefacelift.mvdiffusion.pipeline import MVDiffusionPipeline

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(gslrm_model, "from_pretrained", refuse)
    monkeypatch.setattr(MVDiffusionPipeline, "from_pretrained", classmethod(refuse))


def test_16_bit_png_is_scaled_by_65535(tmp_path):
    eight = cv2.imread(str(write_rgba(tmp_path / "8.png")), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(tmp_path / "16.png"), eight.astype(np.uint16) * 257)  # the same image at 16 bits
    assert cv2.imread(str(tmp_path / "16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    a, b = infer.read_rgba(tmp_path / "8.png"), infer.read_rgba(tmp_path / "16.png")
    assert b.max() <= 1.0 and b[3].max() == 1.0
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


BAD_INPUTS = [
    ("missing image", r"nothere.png: image not found; give the RGBA PNG"),
    ("empty alpha", r"empty.png: the alpha channel is empty \(no pixel above 0.5\)"),
    ("rgb only", r"rgb.png: not an 8- or 16-bit RGBA PNG"),
    ("out is a file", r"--out .*taken is an existing file; give a folder"),
    ("missing gslrm", r"--gslrm .*nope not found; give notebook 06's gslrm/ folder"),
    ("gslrm folder without checkpoints", r"--gslrm .*empty_dir: no ckpt_\*.pt in this folder"),
    ("missing mvdiffusion", r"--mvdiffusion .*nope: no model_index.json there; give the pipeline folder"),
    ("zero steps", r"InferConfig.steps = 0 is out of range: must be >= 1"),
]


@pytest.mark.parametrize("case, match", BAD_INPUTS, ids=[case for case, _ in BAD_INPUTS])
def test_bad_inputs_are_named_before_any_model_loads(models, tmp_path, no_model_loading, capsys, case, match):
    image = write_rgba(tmp_path / "mouse.png")
    args = {"image": str(image), "--mvdiffusion": str(models / "mvd"), "--gslrm": str(models / "gslrm"),
            "--out": str(tmp_path / "out")}
    if case == "missing image":
        args["image"] = str(tmp_path / "nothere.png")
    elif case == "empty alpha":
        rgba = cv2.imread(str(image), cv2.IMREAD_UNCHANGED)
        rgba[..., 3] = 0
        cv2.imwrite(str(tmp_path / "empty.png"), rgba)
        args["image"] = str(tmp_path / "empty.png")
    elif case == "rgb only":
        cv2.imwrite(str(tmp_path / "rgb.png"), cv2.imread(str(image)))
        args["image"] = str(tmp_path / "rgb.png")
    elif case == "out is a file":
        (tmp_path / "taken").write_text("x")
        args["--out"] = str(tmp_path / "taken")
    elif case == "missing gslrm":
        args["--gslrm"] = str(tmp_path / "nope")
    elif case == "gslrm folder without checkpoints":
        (tmp_path / "empty_dir").mkdir()
        args["--gslrm"] = str(tmp_path / "empty_dir")
    elif case == "missing mvdiffusion":
        args["--mvdiffusion"] = str(tmp_path / "nope")
    elif case == "zero steps":
        args["--steps"] = "0"
    argv = ["infer", args.pop("image")] + [x for kv in args.items() for x in kv]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfl infer: ") and re.search(match, err), err
    assert not (tmp_path / "out").exists()


def test_recording_inputs_are_checked_before_the_model_loads(broken_copy, models, tmp_path, no_model_loading,
                                                             capsys):
    from mousefacelift.data.recording import CAMERA_FILE

    rec = broken_copy(lambda r: (r / CAMERA_FILE).unlink())
    argv = ["infer", "--recording", str(rec), "--frames", "0:2", "--gslrm", str(models / "gslrm"), "--out",
            str(tmp_path / "seq")]
    assert cli.main(argv) == 2
    assert "new_cam.pkl: camera file not found" in capsys.readouterr().err
    argv[2] = str(rec.parent / "missing")
    assert cli.main(argv) == 2
    assert "recording folder not found" in capsys.readouterr().err
    assert not (tmp_path / "seq").exists()
