"""The recording reader: validation (each corrupt input gives its clear error), decoding, frame selection.

Recordings here are tiny (160x128, a few frames) and written by the tests themselves with
cv2.VideoWriter + pickle, so the tests do not depend on the procedural generator.
"""
from __future__ import annotations

import logging
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mousefacelift import cameras
from mousefacelift.data import recording as rd

# The real rig's camera centres (mm, markerless_mouse_1_nerf's new_cam.pkl); cameras look at a point
# on the arena's vertical axis.
RIG_CENTERS = [(-199.5, -129.3, 63.4), (321.6, 216.8, 145.9), (24.0, 355.8, 71.2),
               (327.6, -65.3, 63.3), (-230.4, 167.4, 142.2), (114.6, -236.3, 156.5)]
ARENA_FOCUS = (55.0, 55.0, 45.0)


def tiny_rig(width: int = 160, height: int = 128, focal: float = 230.0):
    """-> K_opencv [6, 3, 3] (integer pixel centres, as in new_cam.pkl), w2c [6, 4, 4] mm."""
    C = torch.tensor(RIG_CENTERS, dtype=torch.float64)
    w2c = cameras.look_at_w2c(C, torch.tensor(ARENA_FOCUS, dtype=torch.float64).expand_as(C))
    K = torch.stack([cameras.intrinsics(focal * (1 + 0.01 * v), focal * (1 + 0.012 * v),
                                        width / 2 - 0.5 + v, height / 2 - 0.5 - v) for v in range(6)])
    return K, w2c


def default_track(n_frames: int) -> np.ndarray:
    """A 3D point (mm) moving near the arena centre, [F, 3]."""
    t = np.arange(n_frames)
    return np.stack([55 + 20 * np.cos(t / 3), 55 + 20 * np.sin(t / 3), 15 + 2 * np.sin(t)], -1)


def write_tiny_recording(root: Path, n_frames: int = 10, width: int = 160, height: int = 128,
                         track: np.ndarray | None = None, radius_px: float = 7.0, keypoints: bool = True,
                         focal: float = 230.0) -> dict:
    """Write a MAMMAL-format recording: a dark disc (the 'mouse') at the projection of track[f] on a
    light background; its mask in the mask video. Returns the ground truth used."""
    import cv2

    K_cv, w2c = tiny_rig(width, height, focal)
    K = cameras.K_from_opencv(K_cv)
    track = default_track(n_frames) if track is None else track
    uv, _ = cameras.project(torch.as_tensor(track, dtype=torch.float64)[None], w2c, K)  # [V, F, 2]
    for sub in (rd.VIDEO_DIR, rd.MASK_DIR):
        (root / sub).mkdir(parents=True, exist_ok=True)
    fourcc = cv2.VideoWriter_fourcc(*"mp4v")
    yy, xx = np.mgrid[0:height, 0:width]
    for v in range(6):
        vw = cv2.VideoWriter(str(root / rd.VIDEO_DIR / f"{v}.mp4"), fourcc, 100.0, (width, height))
        mw = cv2.VideoWriter(str(root / rd.MASK_DIR / f"{v}.mp4"), fourcc, 100.0, (width, height))
        for f in range(n_frames):
            u, w_ = uv[v, f].tolist()
            disc = (xx + 0.5 - u) ** 2 + (yy + 0.5 - w_) ** 2 <= radius_px ** 2
            bgr = np.full((height, width, 3), (170, 190, 210), np.uint8)
            bgr[..., 0] = (170 + f * 3 + v * 5) % 256  # frames differ, so mixing them up shows
            bgr[disc] = (40, 30, 20)
            vw.write(bgr)
            mw.write(np.repeat(disc[..., None].astype(np.uint8) * 255, 3, -1))
        vw.release()
        mw.release()
    cams = []
    for v in range(6):
        T = w2c[v, :3, 3].numpy()
        cams.append({"K": K_cv[v].numpy(), "R": w2c[v, :3, :3].numpy(),
                     "T": T.reshape(3, 1) if v % 2 else T})  # both T layouts occur in the wild
    with open(root / rd.CAMERA_FILE, "wb") as fh:
        pickle.dump(cams, fh)
    if keypoints:
        (root / rd.KEYPOINT_DIR).mkdir(exist_ok=True)
        for v in range(6):
            kp = np.zeros((n_frames, 22, 3))
            kp[:, 4, :2] = uv[v].numpy() - 0.5  # body_middle, OpenCV pixel convention
            kp[:, 4, 2] = 1.0
            with open(root / rd.KEYPOINT_DIR / f"result_view_{v}.pkl", "wb") as fh:
                pickle.dump(kp, fh)
    return {"K": K, "w2c": w2c, "track": track, "uv": uv}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rec") / "tiny"
    gt = write_tiny_recording(root)
    return root, gt


@pytest.fixture
def copy_of(tiny, tmp_path):
    def make():
        dst = tmp_path / "rec"
        shutil.copytree(tiny[0], dst)
        return dst
    return make


def _rewrite_cams(root: Path, edit) -> None:
    with open(root / rd.CAMERA_FILE, "rb") as fh:
        cams = pickle.load(fh)
    edit(cams)
    with open(root / rd.CAMERA_FILE, "wb") as fh:
        pickle.dump(cams, fh)


# ----------------------------------------------------------------------------------------------
# A valid recording
# ----------------------------------------------------------------------------------------------
def test_open_valid_recording(tiny):
    root, gt = tiny
    rec = rd.open_recording(root)
    assert (rec.n_cameras, rec.n_frames, rec.width, rec.height) == (6, 10, 160, 128)
    assert rec.fps == pytest.approx(100.0)
    torch.testing.assert_close(rec.K, gt["K"])  # converted to the +0.5 pixel-centre convention
    assert rec.K[0, 0, 2].item() == pytest.approx(80.0)  # 79.5 in the file
    torch.testing.assert_close(rec.w2c, gt["w2c"])
    assert rec.w2c.dtype == torch.float64
    assert rec.keypoints2d.shape == (6, 10, 22, 3)
    np.testing.assert_allclose(rec.keypoints2d[:, :, 4, :2] + 0.5, gt["uv"].numpy())


def test_read_frames_matches_seek_and_ground_truth(tiny):
    rec = rd.open_recording(tiny[0])
    wanted = [7, 2, 3, 9, 3, 0]  # unsorted, duplicated: read once each, in order
    seq = list(rd.read_frames(rec, wanted, chunk_size=2, progress=False))
    seek = list(rd.read_frames_seek(rec, wanted))
    assert [f.index for f in seq] == [0, 2, 3, 7, 9] == [f.index for f in seek]
    for a, b in zip(seq, seek):
        assert a.rgb.shape == (6, 128, 160, 3) and a.rgb.dtype == np.uint8
        assert a.mask.shape == (6, 128, 160) and a.mask.dtype == bool
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.mask, b.mask)
        # the disc is where the ground truth put it (mask centroid within 0.3 px)
        for v in range(6):
            ii, jj = np.nonzero(a.mask[v])
            uv = tiny[1]["uv"][v, a.index].numpy()
            assert abs(jj.mean() + 0.5 - uv[0]) < 0.3 and abs(ii.mean() + 0.5 - uv[1]) < 0.3
    # camera subset keeps the requested order
    sub = next(rd.read_frames(rec, [5], cameras=[3, 1], progress=False))
    np.testing.assert_array_equal(sub.rgb, next(rd.read_frames_seek(rec, [5], cameras=[3, 1])).rgb)
    with pytest.raises(ValueError, match="frame indices"):
        list(rd.read_frames(rec, [10], progress=False))


def test_bench_decoding_reports_both(tiny):
    from mousefacelift.bench import time_decoding

    out = time_decoding(rd.open_recording(tiny[0]), n_frames=3, stride=3)
    assert out["n_frames"] == 3 and out["identical"]
    assert out["sequential_fps"] > 0 and out["seek_fps"] > 0
    assert out["ratio"] == pytest.approx(out["seek_s"] / out["sequential_s"])


def test_frame_count_mismatch_uses_common_range(tmp_path, caplog):
    root = tmp_path / "rec"
    write_tiny_recording(root, n_frames=8, keypoints=False)
    longer = tmp_path / "longer"
    write_tiny_recording(longer, n_frames=11, keypoints=False)
    shutil.copy(longer / rd.VIDEO_DIR / "2.mp4", root / rd.VIDEO_DIR / "2.mp4")
    with caplog.at_level(logging.WARNING, logger=rd.__name__):
        rec = rd.open_recording(root)
    assert rec.n_frames == 8
    assert "frame counts differ" in caplog.text and "2.mp4=11" in caplog.text


# ----------------------------------------------------------------------------------------------
# Corrupt inputs: each gives a RecordingError that names the file (and camera) and the fix
# ----------------------------------------------------------------------------------------------
def test_truncated_video(copy_of):
    root = copy_of()
    p = root / rd.VIDEO_DIR / "3.mp4"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(rd.RecordingError, match=r"videos_undist/3\.mp4.*cannot open.*re-encode"):
        rd.open_recording(root)


def test_missing_mask_video(copy_of):
    root = copy_of()
    (root / rd.MASK_DIR / "4.mp4").unlink()
    with pytest.raises(rd.RecordingError, match=r"simpleclick_undist/4\.mp4: video not found"):
        rd.open_recording(root)


def test_nan_in_camera_file(copy_of):
    root = copy_of()
    _rewrite_cams(root, lambda cams: cams[2]["T"].__setitem__(1, np.nan))
    with pytest.raises(rd.RecordingError, match=r"new_cam\.pkl, camera 2: T has non-finite"):
        rd.open_recording(root)


def test_mirrored_rotation(copy_of):
    root = copy_of()

    def mirror(cams):
        cams[5]["R"] = cams[5]["R"] * np.array([[1.0], [-1.0], [1.0]])  # flip the y row: det -1
    _rewrite_cams(root, mirror)
    with pytest.raises(rd.RecordingError, match=r"new_cam\.pkl, camera 5: det\(R\) = \[-1\.0"):
        rd.open_recording(root)


def test_bad_intrinsics_and_shapes(copy_of):
    root = copy_of()
    _rewrite_cams(root, lambda cams: cams[1]["K"].__setitem__((1, 0), 3.0))
    with pytest.raises(rd.RecordingError, match="camera 1: K must be upper-triangular"):
        rd.load_cameras(root / rd.CAMERA_FILE)
    _rewrite_cams(root, lambda cams: (cams[1]["K"].__setitem__((1, 0), 0.0), cams[1]["K"].__setitem__((0, 0), -5.0)))
    with pytest.raises(rd.RecordingError, match="camera 1: focal lengths must be positive"):
        rd.load_cameras(root / rd.CAMERA_FILE)
    _rewrite_cams(root, lambda cams: (cams[1]["K"].__setitem__((0, 0), 200.0), cams[0].__setitem__("T", np.zeros(4))))
    with pytest.raises(rd.RecordingError, match=r"camera 0: shapes .*T \(4,\)"):
        rd.load_cameras(root / rd.CAMERA_FILE)
    _rewrite_cams(root, lambda cams: cams[0].pop("T"))
    with pytest.raises(rd.RecordingError, match=r"camera 0: missing key\(s\) \['T'\]"):
        rd.load_cameras(root / rd.CAMERA_FILE)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_cannot_execute_code(copy_of, tmp_path):
    root = copy_of()
    marker = tmp_path / "pwned"
    with open(root / rd.CAMERA_FILE, "wb") as fh:
        pickle.dump([{"K": np.eye(3), "R": np.eye(3), "T": _Evil(marker)}], fh)
    with pytest.raises(rd.RecordingError, match=r"new_cam\.pkl: refused to unpickle .*(posix|os)\.system"):
        rd.open_recording(root)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_restricted_unpickler_reads_numpy(tmp_path, protocol):
    data = [{"K": np.eye(3), "T": np.arange(3.0).reshape(3, 1), "s": np.float64(2.5), "n": 3,
             "f32": np.ones((2, 2), np.float32), "t": (1, "a")}]
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(data, protocol=protocol))
    out = rd.load_pickle_restricted(p)
    np.testing.assert_array_equal(out[0]["T"], data[0]["T"])
    assert out[0]["f32"].dtype == np.float32 and out[0]["s"] == 2.5 and out[0]["t"] == (1, "a")


# ----------------------------------------------------------------------------------------------
# Frame selection
# ----------------------------------------------------------------------------------------------
def test_select_frames_count_stride_edges_cuts():
    sel = rd.FrameSelection(count=2000, skip_edges=0.05, cut_margin=10)
    frames = rd.select_frames(18000, sel)
    assert len(frames) == 2000 and frames == sorted(set(frames))
    assert frames[0] == 900 and frames[-1] == 17099
    assert all(abs(f - c) > 10 for f in frames for c in sel.cut_frames)
    strided = rd.select_frames(18000, rd.FrameSelection(count=None, stride=100, skip_edges=0.0, cut_margin=3))
    assert strided[:3] == [0, 100, 200] and 5900 not in strided and 11800 not in strided
    assert len(strided) == 180 - 3
    assert rd.select_frames(50, rd.FrameSelection(count=100, skip_edges=0.1)) == list(range(5, 45))
    with pytest.raises(ValueError, match="exactly one of count / stride"):
        rd.select_frames(100, rd.FrameSelection(count=10, stride=2))


def test_keyframe_jumps_read_the_same_frames(tmp_path):
    root = tmp_path / "long"
    write_tiny_recording(root, n_frames=90, keypoints=False)
    rec = rd.open_recording(root)
    path = rec.video_path(1)
    keys = rd.keyframe_indices(path)
    assert keys is not None and keys[0] == 0 and keys == sorted(keys) and max(keys) < 90
    wanted = [0, 1, 45, 46, 88]
    reader = rd._SequentialReader(path, gray=False, keyframes=keys)
    try:
        jumped = reader.read(wanted)
    finally:
        reader.close()
    assert reader.n_seeks >= 1  # jumped over the gaps instead of decoding them
    plain = next(iter([f.rgb[0] for f in rd.read_frames(rec, [45], cameras=[1], progress=False,
                                                        allow_keyframe_jumps=False)]))
    np.testing.assert_array_equal(jumped[2], plain)
    frames = list(rd.read_frames(rec, wanted, progress=False))
    for a, b in zip(frames, rd.read_frames_seek(rec, wanted)):
        assert a.index == b.index
        np.testing.assert_array_equal(a.rgb, b.rgb)
        np.testing.assert_array_equal(a.mask, b.mask)


# ----------------------------------------------------------------------------------------------
# Broken copies of a procedural recording (fixtures in conftest.py)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kept", [0.97, 0.9, 0.75])
def test_truncated_faststart_video_is_caught(broken_copy, kept):
    """With the index (moov atom) at the start, a truncated file still reports every frame and
    decodes its first one, and a seek to the last frame 'succeeds' by landing on an earlier one."""
    import cv2
    from conftest import rewrite_video

    def truncate(root):
        p = root / rd.VIDEO_DIR / "2.mp4"
        rewrite_video(p, faststart=True)
        data = p.read_bytes()
        assert data.find(b"moov") < data.find(b"mdat")  # faststart: the index comes first
        p.write_bytes(data[:int(len(data) * kept)])

    root = broken_copy(truncate)
    cap = cv2.VideoCapture(str(root / rd.VIDEO_DIR / "2.mp4"))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    assert n == 12 and cap.read()[0]  # the trap: full frame count, first frame fine
    cap.set(cv2.CAP_PROP_POS_FRAMES, n - 1)
    ok, _ = cap.read()
    landed = int(cap.get(cv2.CAP_PROP_POS_FRAMES)) - 1
    cap.release()
    assert ok and landed < n - 1  # the seek "succeeded" somewhere else
    with pytest.raises(rd.RecordingError, match=rf"videos_undist/2\.mp4: the container says 12 frames but seeking "
                                                rf"to frame 11 decoded frame {landed}: the file is truncated"):
        rd.open_recording(root)


def test_intact_faststart_video_passes(broken_copy):
    from conftest import rewrite_video

    root = broken_copy(lambda r: rewrite_video(r / rd.VIDEO_DIR / "2.mp4", faststart=True))
    assert rd.open_recording(root).n_frames == 12


def test_cameras_with_different_frame_rates_warn(broken_copy, caplog):
    from conftest import rewrite_video

    root = broken_copy(lambda r: rewrite_video(r / rd.VIDEO_DIR / "4.mp4", fps=50))
    with caplog.at_level(logging.WARNING, logger=rd.__name__):
        rec = rd.open_recording(root)
    assert rec.n_frames == 12
    assert "different frame rates" in caplog.text
    assert "videos_undist/4.mp4: 50 fps" in caplog.text and "videos_undist/3.mp4: 100 fps" in caplog.text


def test_same_frame_rates_do_not_warn(procedural_recording, caplog):
    with caplog.at_level(logging.WARNING, logger=rd.__name__):
        rd.open_recording(procedural_recording)
    assert "frame rates" not in caplog.text


def test_frame_selection_ranges():
    with pytest.raises(ValueError, match=r"FrameSelection.skip_edges = 0.5 is out of range: must be in \[0, 0.5\)"):
        rd.FrameSelection(skip_edges=0.5)
    with pytest.raises(ValueError, match=r"FrameSelection.stride = 0 is out of range: must be >= 1"):
        rd.FrameSelection(count=None, stride=0)
    with pytest.raises(ValueError, match=r"FrameSelection.count = 0 is out of range"):
        rd.FrameSelection(count=0)
