"""The calibration doctor (mousefacelift.data.calibration_check, `mfl doctor`) on procedural recordings.

Broken copies share the videos of a small procedural recording (symlinked) and carry a rewritten
new_cam.pkl of plain numpy arrays. Every usual mix-up must fail with its name and a fix that,
applied to the broken file, makes the check pass again; correct recordings must pass without a
warning; extraction refuses a failing recording unless overridden.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mousefacelift import cameras, cli
from mousefacelift.data import calibration_check as cc
from mousefacelift.data import extract as ex
from mousefacelift.data import recording as rd
from mousefacelift.data import procedural as syn

SMALL = dict(n_frames=12, resolution_scale=0.25)  # 288x256, the size tests/test_extract.py uses too


@pytest.fixture(scope="module")
def procedural(request):
    """seed -> a small procedural recording, cached between test runs."""
    def make(seed: int) -> Path:
        return syn.ensure_recording(request.config.cache.mkdir("mfl_synthetic"), syn.ProceduralConfig(seed=seed, **SMALL))
    return make


def broken_copy(src: Path, dst: Path, edit, keypoints: bool = True) -> Path:
    """A copy of recording ``src`` at ``dst``: videos, masks and keypoints symlinked, new_cam.pkl
    rewritten as edit(list of {"K", "R", "T"} numpy dicts)."""
    dst.mkdir(parents=True)
    for sub in (rd.VIDEO_DIR, rd.MASK_DIR) + ((rd.KEYPOINT_DIR,) if keypoints else ()):
        os.symlink((src / sub).resolve(), dst / sub)
    cams = [{k: np.asarray(v, dtype=np.float64) for k, v in c.items()} for c in rd.load_pickle_restricted(src / rd.CAMERA_FILE)]
    with open(dst / rd.CAMERA_FILE, "wb") as fh:
        pickle.dump(edit(cams), fh)
    return dst


def to_camera_to_world(cams):
    return [{**c, "R": c["R"].T, "T": -c["R"].T @ c["T"].reshape(3)} for c in cams]


W_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])  # X' = W X: +Z becomes +Y

# name -> (edit of the camera list, words the failure must contain, whether a script can fix it)
MIXUPS = {
    "camera-to-world": (to_camera_to_world, ["looks like camera-to-world", "R' = R.T, T' = -R.T @ T"], True),
    "R transposed": (lambda cams: [{**c, "R": c["R"].T} for c in cams],
                     ["looks like R transposed", "R' = R.T, T' = T"], True),
    "metres": (lambda cams: [{**c, "T": c["T"] / 1000.0} for c in cams], ["looks like metres", "T' = 1000 * T"], True),
    "shifted, 6 cameras": (lambda cams: cams[1:] + cams[:1],
                           ["shifted by +1: entry j of new_cam.pkl is the camera of video j + 1 (modulo 6)",
                            "cams = [cams[i] for i in (5, 0, 1, 2, 3, 4)]"], True),
    "shifted, 5 cameras": (lambda cams: cams[1:], ["5 cameras for 6 videos", "entries 0-4 are the cameras of videos 1-5",
                                                   "video 0 has no calibration", "add the calibration of video 0"], False),
    "last camera missing": (lambda cams: cams[:5], ["5 cameras for 6 videos", "video 5 has no calibration",
                                                    "add the calibration of video 5"], False),
    "two swapped": (lambda cams: [cams[i] for i in (0, 1, 2, 4, 3, 5)], ["cameras 3 and 4 are swapped",
                                                                        "cams = [cams[i] for i in (0, 1, 2, 4, 3, 5)]"], True),
    "Y-up world": (lambda cams: [{**c, "R": c["R"] @ W_Y_UP.T} for c in cams], ["the world looks Y-up", "R' = R @ W.T"], True),
}


# ----------------------------------------------------------------------------------------------
# Correct recordings: no false alarm
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_correct_procedural_recordings_pass(procedural, seed):
    rep = cc.check_calibration(procedural(seed))
    assert rep.ok and rep.findings == [], rep.text()
    assert (rep.n_videos, rep.n_masks, rep.n_cameras) == (6, 6, 6) and len(rep.frames) == 10
    # measured (the module docstring): worst camera 1.5-1.9 % of its distance, keypoints exact
    assert rep.relative_residual < 0.5 * cc.MAX_RELATIVE_RESIDUAL
    assert 1.0 < rep.residual_mm < 6.0 and rep.keypoint_residual_mm < 1e-9
    assert all(r["in_front"] == 1.0 for r in rep.per_camera)
    assert 280 < rep.distance_mm < 360 and rep.up_angle_deg < 2.0


def test_the_batched_residuals_are_the_extraction_triangulation(procedural):
    """The check's per-ray residuals come from the same triangulation extraction uses."""
    rec = rd.open_recording(procedural(3))
    frames, uv, valid = cc._observe(rec, 4, ex.ExtractConfig())
    assert valid.all()
    out = cc._evaluate(uv, valid, rec.K, rec.w2c, torch.tensor([list(range(6))]))
    res = torch.stack([ex.triangulate_center(uv[i], rec.w2c, rec.K)[1] for i in range(len(frames))])  # [F, 6]
    torch.testing.assert_close(out["residual_mm"][0], res.median(dim=0).values)
    torch.testing.assert_close(out["all_residual_mm"][0], res.flatten().median())


# ----------------------------------------------------------------------------------------------
# Each mix-up: named, with the numbers, and a fix that works
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(MIXUPS))
def test_each_mixup_fails_names_itself_and_its_fix_works(procedural, tmp_path, name):
    edit, words, fixable = MIXUPS[name]
    root = broken_copy(procedural(3), tmp_path / "rec", edit)
    rep = cc.check_calibration(root)
    assert not rep.ok
    failures = [f.message for f in rep.findings if f.level == "fail"]
    assert len(failures) == 1, rep.text()
    for w in words:
        assert w in failures[0], (w, failures[0])
    if name not in ("metres", "Y-up world"):  # these keep every residual (scale-free / rotation): no 'after'
        assert "as stored" in failures[0] and " mm (" in failures[0]
    text = rep.text()
    assert failures[0] in text and "FAILED" in text
    if fixable:
        exec(rep.fix, {})  # the printed script, as a user would run it
        assert (root / (rd.CAMERA_FILE + ".orig")).is_file()
        fixed = cc.check_calibration(root)
        assert fixed.ok and fixed.findings == [], fixed.text()
    else:
        assert rep.fix == ""


def test_without_keypoints_the_up_axis_names_a_transposed_r(procedural, tmp_path):
    """On this short clip R transposed leaves the centroids' residual under the limit (3.3 %): the
    up axis it tilts by 66 deg (a rotated world changes no residual) still singles it out."""
    root = broken_copy(procedural(3), tmp_path / "rec", MIXUPS["R transposed"][0], keypoints=False)
    rep = cc.check_calibration(root)
    assert rep.keypoint_residual_mm is None and rep.relative_residual < cc.MAX_RELATIVE_RESIDUAL
    assert rep.up_angle_deg > cc.UP_FAIL_DEG and not rep.ok
    assert "looks like R transposed" in rep.findings[0].message and "up axis 66 deg from +Z" in rep.findings[0].message


def test_stored_residuals_of_the_mixups_are_far_above_the_limit(procedural, tmp_path):
    """The figures the thresholds rest on (module docstring), on the seed-3 recording."""
    rel = {}
    for name in ("camera-to-world", "shifted, 6 cameras", "two swapped"):
        rep = cc.check_calibration(broken_copy(procedural(3), tmp_path / name.replace(" ", "_"), MIXUPS[name][0]))
        rel[name] = rep.relative_residual
    assert min(rel.values()) > 2 * cc.MAX_RELATIVE_RESIDUAL, rel


@pytest.mark.slow
def test_a_much_better_pairing_fails_a_stored_one_under_the_limit(procedural, tmp_path, monkeypatch):
    """With a limit too lenient to catch a swap, the pairing that fits much better still names it."""
    root = broken_copy(procedural(3), tmp_path / "rec", MIXUPS["two swapped"][0])
    monkeypatch.setattr(cc, "MAX_RELATIVE_RESIDUAL", 0.5)
    rep = cc.check_calibration(root)
    assert rep.relative_residual < 0.5 and not rep.ok
    assert "cameras 3 and 4 are swapped" in rep.findings[0].message


def test_a_calibration_no_mixup_explains_fails_without_a_fix(procedural, tmp_path):
    g = torch.Generator().manual_seed(0)

    def perturb(cams):  # turn every camera about its own centre by 10 degrees, a random axis each
        out = []
        for c in cams:
            axis = torch.randn(3, generator=g, dtype=torch.float64)
            z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
            W = cameras.rotation_between(z, z + 0.176 * axis / axis.norm()).numpy()
            out.append({**c, "R": W @ c["R"], "T": W @ c["T"].reshape(3)})
        return out

    rep = cc.check_calibration(broken_copy(procedural(3), tmp_path / "rec", perturb))
    assert not rep.ok and rep.fix == "" and rep.relative_residual > cc.MAX_RELATIVE_RESIDUAL
    assert "does not fit the videos" in rep.findings[0].message and "no usual mix-up fits" in rep.findings[0].message


@pytest.mark.slow
def test_extra_camera_and_missing_mask_video(procedural, tmp_path):
    rep = cc.check_calibration(broken_copy(procedural(3), tmp_path / "extra", lambda cams: cams + [cams[2]]))
    assert not rep.ok and "7 cameras for 6 videos" in rep.findings[0].message
    assert "fits no video" in rep.findings[0].message
    src = procedural(3)
    root = tmp_path / "nomask"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("ground_truth"))
    (root / rd.MASK_DIR / "4.mp4").unlink()
    rep = cc.check_calibration(root)
    assert not rep.ok and f"every camera v needs {rd.VIDEO_DIR}/v.mp4 and {rd.MASK_DIR}/v.mp4" in rep.findings[0].message


def test_a_camera_that_never_sees_the_mouse_is_reported_not_skipped_silently(procedural, tmp_path):
    import cv2

    src = procedural(3)
    root = tmp_path / "rec"
    shutil.copytree(src, root, ignore=shutil.ignore_patterns("ground_truth"))
    info = rd.probe_video(src / rd.MASK_DIR / "2.mp4")
    vw = cv2.VideoWriter(str(root / rd.MASK_DIR / "2.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 100.0,
                         (info.width, info.height))
    for _ in range(info.n_frames):
        vw.write(np.zeros((info.height, info.width, 3), np.uint8))  # an empty mask in every frame
    vw.release()
    rep = cc.check_calibration(root)
    assert rep.ok and [f.level for f in rep.findings] == ["warn"], rep.text()
    assert "video 2 shows the whole mouse in none of the frames used" in rep.findings[0].message


def test_tilted_world_warns_with_the_rotation(procedural, tmp_path):
    W = cameras.rotation_between(torch.tensor([0.0, 0.35, 1.0], dtype=torch.float64),
                                 torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).numpy()  # ~19 deg
    rep = cc.check_calibration(broken_copy(procedural(3), tmp_path / "rec", lambda cams: [{**c, "R": c["R"] @ W} for c in cams]))
    assert rep.ok and [f.level for f in rep.findings] == ["warn"], rep.text()
    assert "the world looks tilted" in rep.findings[0].message and 15 < rep.up_angle_deg < 25


# ----------------------------------------------------------------------------------------------
# Extraction refuses, unless overridden; `mfl doctor`
# ----------------------------------------------------------------------------------------------
def test_extraction_refuses_a_failing_recording_and_logs_the_override(procedural, tmp_path):
    root = broken_copy(procedural(3), tmp_path / "rec", MIXUPS["shifted, 6 cameras"][0])
    cfg = dict(selection=rd.FrameSelection(count=4, skip_edges=0.0, cut_frames=()), image_size=64, split_gap=0,
               progress=False)
    with pytest.raises(rd.RecordingError) as e:
        ex.extract(root, tmp_path / "run", ex.ExtractConfig(**cfg))
    msg = str(e.value)
    assert str(root / rd.CAMERA_FILE) in msg and "shifted by +1" in msg and "cams = [cams[i] for i in" in msg
    assert "allow_calibration_failure" in msg and not (tmp_path / "run" / "data").exists()
    summary = ex.extract(root, tmp_path / "run", ex.ExtractConfig(**cfg, allow_calibration_failure=True))
    assert summary["n_written"] >= 1 and summary["calibration_ok"] is False
    log = json.loads((tmp_path / "run" / "data" / "extraction.json").read_text())
    check = log["calibration_check"]
    assert check["allow_calibration_failure"] is True and check["ok"] is False
    assert "shifted by +1" in check["findings"][0]["message"] and "FAILED" in check["report"]


def test_extraction_logs_a_passing_check(procedural, tmp_path):
    cfg = ex.ExtractConfig(selection=rd.FrameSelection(count=2, skip_edges=0.0, cut_frames=()), image_size=64,
                           split_gap=0, progress=False)
    summary = ex.extract(procedural(3), tmp_path / "run", cfg)
    log = json.loads((tmp_path / "run" / "data" / "extraction.json").read_text())
    assert summary["calibration_ok"] is True and log["calibration_check"]["ok"] is True
    assert log["calibration_check"]["allow_calibration_failure"] is False and log["calibration_check"]["fix"] == ""


def test_mfl_doctor_exit_codes_and_report(procedural, tmp_path, capsys):
    assert cli.main(["doctor", str(procedural(3))]) == 0
    out = capsys.readouterr().out
    assert "OK: the calibration fits the videos" in out and "worst camera" in out
    root = broken_copy(procedural(3), tmp_path / "rec", to_camera_to_world)
    assert cli.main(["doctor", str(root)]) == 1
    out = capsys.readouterr().out
    assert "looks like camera-to-world" in out and "c['R'], c['T'] = R.T, -R.T @ T" in out
    assert cli.main(["doctor", str(tmp_path / "nowhere")]) == 2
    assert "new_cam.pkl" in capsys.readouterr().err


def test_override_is_a_checked_parameter_of_notebook_01(tmp_path):
    from mousefacelift.params import ParamsError, resolve
    from mousefacelift.runner import find_notebooks

    notebooks = find_notebooks(Path(__file__).resolve().parent.parent / "notebooks")
    (tmp_path / "ok.yaml").write_text("01_data_extraction:\n  allow_calibration_failure: true\n")
    assert resolve(tmp_path / "ok.yaml", notebooks)["01_data_extraction"]["allow_calibration_failure"] is True
    (tmp_path / "typo.yaml").write_text("01_data_extraction:\n  allow_calibration_failures: true\n")
    with pytest.raises(ParamsError, match="allow_calibration_failure"):
        resolve(tmp_path / "typo.yaml", notebooks)
    assert ex.ExtractConfig.from_dict({"allow_calibration_failure": True}).allow_calibration_failure is True
    assert "allow_calibration_failure" not in ex.ExtractConfig().output_dict()  # the samples do not depend on it
