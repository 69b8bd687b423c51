"""Shared test setup: GPU tests are skipped without CUDA; W&B never syncs from tests; a cached
procedural recording and broken copies of it."""
import os
import shutil

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "disabled")


# fixtures that execute notebooks end to end: every test that uses one is marked slow (`make test-fast` skips it)
SLOW_FIXTURES = {"tiny_run"}


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (run `pytest -m gpu` on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------------------------
# A procedural recording, and broken copies of it for the tests of clear errors
# ----------------------------------------------------------------------------------------------
PROCEDURAL = dict(n_frames=12, resolution_scale=0.25, seed=3)  # 12 frames of 288x256 from six cameras


@pytest.fixture(scope="session")
def procedural_recording(pytestconfig):
    """A small procedural recording (mousefacelift.data.procedural), generated once and cached between
    test runs in pytest's cache folder."""
    from mousefacelift.data import procedural

    return procedural.ensure_recording(pytestconfig.cache.mkdir("mfl_synthetic"), procedural.ProceduralConfig(**PROCEDURAL))


@pytest.fixture
def broken_copy(procedural_recording, tmp_path):
    """broken_copy(edit) -> a copy of the procedural recording in tmp_path after ``edit(root)``."""
    def make(edit=None):
        root = tmp_path / "recording"
        shutil.copytree(procedural_recording, root)
        if edit is not None:
            edit(root)
        return root
    return make


def read_video(path):
    """All frames of a video, uint8 RGB [F, H, W, 3], and its frame rate."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[..., ::-1])
    cap.release()
    return np.stack(frames), fps


def rewrite_video(path, edit=lambda frames: frames, fps=None, faststart=False):
    """Re-encode the video at ``path`` in place (H.264 through imageio-ffmpeg) with its frames passed
    through ``edit`` ([F, H, W, 3] uint8 RGB -> same), at ``fps`` (default: its own), with the index
    (moov atom) at the start of the file when ``faststart``."""
    import imageio_ffmpeg

    frames, own_fps = read_video(path)
    frames = np.ascontiguousarray(edit(frames).astype(np.uint8))
    extra = ["-movflags", "+faststart"] if faststart else []
    writer = imageio_ffmpeg.write_frames(str(path), (frames.shape[2], frames.shape[1]), fps=fps or own_fps,
                                         codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=None,
                                         macro_block_size=2, ffmpeg_log_level="error",
                                         output_params=["-crf", "18", "-g", "250", "-threads", "1", *extra])
    writer.send(None)
    for f in frames:
        writer.send(f)
    writer.close()
