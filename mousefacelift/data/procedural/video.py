"""Writing and reading the recording's files: byte-stable npz, one encoder thread per video."""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez without timestamps (fixed zip dates), so equal arrays give equal bytes."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, buf.getvalue())


class VideoSet:
    """V writers for one folder: H.264 through imageio-ffmpeg (the default, like camera recordings:
    a keyframe every ``gop`` frames, so sequential decoding beats seeking), or OpenCV's mp4v.
    Each writer encodes on its own thread (both encoders release the GIL), frames in order.

    Frames arrive in the encoder's own layout (``bgr``: OpenCV wants BGR, FFmpeg RGB; three
    channels, C-contiguous), so the encoder threads run no Python-side pixel work: a numpy copy
    there holds the GIL, and 12 threads doing it slowed the renderer's own thread about 5x."""

    def __init__(self, folder: Path, n: int, size: tuple[int, int], fps: float, codec: str = "h264",
                 gop: int = 250, crf: int = 18):
        from concurrent.futures import ThreadPoolExecutor

        folder.mkdir(parents=True, exist_ok=True)
        self.codec = codec
        self.bgr = codec == "mp4v"
        paths = [folder / f"{v}.mp4" for v in range(n)]
        if codec == "h264":
            try:
                import imageio_ffmpeg
            except ImportError as e:
                raise OSError("the h264 video codec needs imageio-ffmpeg (pip install imageio-ffmpeg), or set "
                              "video_codec: mp4v") from e
            # one encoder thread and fixed settings: same frames in -> same bytes out
            self.writers = [imageio_ffmpeg.write_frames(
                str(p), size, fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
                quality=None, macro_block_size=2, ffmpeg_log_level="error",
                output_params=["-crf", str(crf), "-g", str(gop), "-preset", "fast", "-threads", "1"])
                for p in paths]
            for wr in self.writers:
                wr.send(None)
        elif codec == "mp4v":
            import cv2

            self.writers = [cv2.VideoWriter(str(p), cv2.VideoWriter_fourcc(*"mp4v"), fps, size) for p in paths]
            if not all(wr.isOpened() for wr in self.writers):
                raise OSError(f"{folder}: OpenCV cannot open an mp4v VideoWriter; reinstall opencv-python "
                              "(the pip wheel bundles FFmpeg)")
        else:
            raise ValueError(f"video_codec {codec!r}: use 'h264' or 'mp4v'")
        self.threads = [ThreadPoolExecutor(max_workers=1) for _ in self.writers]
        self.pending: list = []

    def _write_one(self, v: int, frame: np.ndarray) -> None:
        if self.codec == "h264":
            self.writers[v].send(frame)
        else:
            self.writers[v].write(frame)

    def write(self, frames: np.ndarray, max_pending: int = 4) -> None:
        """frames [V, H, W, 3] uint8, BGR when ``self.bgr`` else RGB, each C-contiguous and not
        modified afterwards (see :func:`encoder_layout`). Returns once at most ``max_pending``
        earlier frames are still being encoded; raises an encoder's error."""
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not frames[0].flags.c_contiguous:
            raise ValueError(f"VideoSet.write takes [V, H, W, 3] C-contiguous uint8 frames in the encoder's channel "
                             f"order, got {frames.shape} {frames.dtype} (prepare them with encoder_layout)")
        self.pending.append([t.submit(self._write_one, v, f) for v, (t, f) in enumerate(zip(self.threads, frames))])
        while len(self.pending) > max_pending:
            for fut in self.pending.pop(0):
                fut.result()

    def close(self) -> None:
        try:
            for futs in self.pending:
                for fut in futs:
                    fut.result()
        finally:
            for t in self.threads:
                t.shutdown(wait=True)
            for wr in self.writers:
                wr.close() if self.codec == "h264" else wr.release()






def encoder_layout(images, bgr: bool):
    """Images [..., H, W, 3] RGB or [..., H, W] gray (uint8 tensors, any device) -> contiguous
    [..., H, W, 3] in an encoder's channel order: gray repeated to three channels, RGB reversed
    to BGR when ``bgr``. Done where the images are (the GPU for a rendered batch), not per frame
    on the encoder threads."""
    if images.ndim >= 3 and images.shape[-1] == 3:
        return (images.flip(-1) if bgr else images).contiguous()
    return images.unsqueeze(-1).expand(*images.shape, 3).contiguous()


def read_frame(path: Path, frame: int) -> np.ndarray:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        for _ in range(frame):
            if not cap.grab():
                break
        ok, img = cap.read()
    finally:
        cap.release()
    if not ok:
        raise ValueError(f"{path}: cannot decode frame {frame}")
    return img[..., ::-1]
