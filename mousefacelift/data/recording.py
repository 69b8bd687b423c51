"""Reader for MAMMAL-format multi-camera recordings (real or procedural), validated before any work.

```
<recording>/
  videos_undist/{v}.mp4                     RGB video of camera v
  simpleclick_undist/{v}.mp4                mask video of camera v (white = mouse, gray > MASK_THRESHOLD)
  new_cam.pkl                               list of per-camera dicts: K (3,3), R (3,3), T (3,) or (3,1), mm
  keypoints2d_undist/result_view_{v}.pkl    optional: (frames, 22, 3) = x_px, y_px, confidence
```
:func:`open_recording` checks everything (each video opens and decodes its first and last frame,
frame counts agree, cameras are finite, right-handed rotations, upper-triangular K) and raises a
:class:`RecordingError` naming the file, the camera and the fix. ``new_cam.pkl`` is read with a
restricted unpickler: only numpy arrays/scalars and builtin containers can come out of it.

Decoding: :func:`read_frames` reads each video sequentially (``grab()`` skips, ``retrieve()`` only
the wanted frames), one thread per video, in chunks of frames so that memory stays bounded.
:func:`read_frames_seek` is the naive per-frame-seek baseline that ``mfl bench --only decoding`` compares to.
"""
from __future__ import annotations

import logging
import os
import pickle
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .. import cameras
from ..configs import bounded, check_ranges
from ..constants import MASK_THRESHOLD  # a mask pixel is foreground when gray > MASK_THRESHOLD (lossy mp4)

log = logging.getLogger(__name__)

VIDEO_DIR = "videos_undist"
MASK_DIR = "simpleclick_undist"
CAMERA_FILE = "new_cam.pkl"
KEYPOINT_DIR = "keypoints2d_undist"


class RecordingError(ValueError):
    """A recording on disk is missing, corrupt or inconsistent; the message names the file and the fix."""


# ----------------------------------------------------------------------------------------------
# Restricted unpickling
# ----------------------------------------------------------------------------------------------
_ALLOWED_GLOBALS = {
    # numpy array / dtype / scalar reconstruction (numpy 1.x and 2.x module names)
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),  # protocol 5
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # protocol-2 pickles store the raw bytes of an array as latin1 text re-encoded by this helper
    ("_codecs", "encode"),
    # builtin containers and scalars
    *(("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float",
                                "complex", "str", "bytes", "bytearray", "bool")),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that only admits numpy array/scalar helpers and builtin containers."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global '{module}.{name}' is not allowed")
        return super().find_class(module, name)


def load_pickle_restricted(path: str | os.PathLike):
    """Load a pickle that may contain only numpy arrays/scalars and builtin containers.

    Anything else (e.g. a pickle that calls ``os.system``) raises :class:`RecordingError` naming
    the class it tried to load. Python 2 pickles are read with ``encoding='latin1'``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise RecordingError(f"{path}: refused to unpickle ({e}); this file may only hold numpy arrays "
                             "and lists/dicts: re-export it with plain numpy arrays") from e
    except (OSError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise RecordingError(f"{path}: cannot read pickle ({type(e).__name__}: {e}); re-export the file") from e


# ----------------------------------------------------------------------------------------------
# Cameras
# ----------------------------------------------------------------------------------------------
def load_cameras(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """Read and validate ``new_cam.pkl`` -> K [V, 3, 3] (project convention: pixel centres at +0.5,
    converted with :func:`cameras.K_from_opencv`), w2c [V, 4, 4] float64 in mm (OpenCV)."""
    path = Path(path)
    if not path.is_file():
        raise RecordingError(f"{path}: camera file not found; the recording needs {CAMERA_FILE} "
                             "(a list of per-camera dicts with K, R, T)")
    data = load_pickle_restricted(path)
    if not isinstance(data, (list, tuple)) or not data:
        raise RecordingError(f"{path}: expected a non-empty list of per-camera dicts, got {type(data).__name__}")
    Ks, w2cs = [], []
    for v, cam in enumerate(data):
        where = f"{path}, camera {v}"
        if not isinstance(cam, dict):
            raise RecordingError(f"{where}: expected a dict with keys K, R, T, got {type(cam).__name__}")
        missing = [k for k in ("K", "R", "T") if k not in cam]
        if missing:
            raise RecordingError(f"{where}: missing key(s) {missing}; each camera needs K (3,3), R (3,3), T (3,)")
        try:
            K = np.asarray(cam["K"], dtype=np.float64)
            R = np.asarray(cam["R"], dtype=np.float64)
            T = np.asarray(cam["T"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise RecordingError(f"{where}: K, R, T must be numeric arrays ({e})") from e
        if K.shape != (3, 3) or R.shape != (3, 3) or T.shape not in ((3,), (3, 1), (1, 3)):
            raise RecordingError(f"{where}: shapes K {K.shape}, R {R.shape}, T {T.shape}; "
                                 "expected K (3,3), R (3,3), T (3,) or (3,1)")
        for name, arr in (("K", K), ("R", R), ("T", T)):
            if not np.isfinite(arr).all():
                raise RecordingError(f"{where}: {name} has non-finite entries (NaN/inf): {arr.tolist()}; "
                                     "fix the calibration")
        if abs(K[1, 0]) > 1e-9 or abs(K[2, 0]) > 1e-9 or abs(K[2, 1]) > 1e-9 or abs(K[2, 2] - 1.0) > 1e-9:
            raise RecordingError(f"{where}: K must be upper-triangular with K[2,2] = 1, got {K.tolist()}")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise RecordingError(f"{where}: focal lengths must be positive, got fx={K[0, 0]}, fy={K[1, 1]}")
        try:
            cameras.check_rotation(torch.from_numpy(R), what=where)
        except ValueError as e:
            raise RecordingError(str(e)) from e
        Ks.append(torch.from_numpy(K))
        w2cs.append(cameras.w2c_from_RT(torch.from_numpy(R), torch.from_numpy(T.reshape(3))))
    return cameras.K_from_opencv(torch.stack(Ks)), torch.stack(w2cs)


# ----------------------------------------------------------------------------------------------
# Videos
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found: frame count, size (pixels) and frame rate."""
    path: Path
    n_frames: int
    width: int
    height: int
    fps: float


def _open_capture(path: Path):
    import cv2

    if not path.is_file():
        raise RecordingError(f"{path}: video not found; every camera needs {VIDEO_DIR}/{{v}}.mp4 and "
                             f"{MASK_DIR}/{{v}}.mp4")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise RecordingError(f"{path}: cannot open the video (truncated or not an mp4 readable by "
                             "OpenCV/FFmpeg); re-copy or re-encode it")
    return cap


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Open a video, read its frame count and size, and decode its first and last frame."""
    import cv2

    path = Path(path)
    cap = _open_capture(path)
    try:
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        if n <= 0 or w <= 0 or h <= 0:
            raise RecordingError(f"{path}: reports {n} frames of {w}x{h}; the file is empty or corrupt, re-encode it")
        ok, first = cap.read()
        if not ok or first is None or first.shape[:2] != (h, w):
            raise RecordingError(f"{path}: cannot decode the first frame; the file is corrupt, re-encode it")
        if n > 1:
            cap.set(cv2.CAP_PROP_POS_FRAMES, n - 1)
            ok, last = cap.read()
            if not ok or last is None:
                raise RecordingError(f"{path}: the container says {n} frames but frame {n - 1} cannot be "
                                     "decoded (truncated file?); re-copy or re-encode it")
            # a truncated file whose index (moov atom) sits at the start ("faststart") still reports
            # every frame, and the seek may land on the last frame that survived: check where it landed
            landed = int(round(cap.get(cv2.CAP_PROP_POS_FRAMES))) - 1
            if landed != n - 1:
                raise RecordingError(f"{path}: the container says {n} frames but seeking to frame {n - 1} "
                                     f"decoded frame {landed}: the file is truncated; re-copy or re-encode it")
    finally:
        cap.release()
    return VideoInfo(path=path, n_frames=n, width=w, height=h, fps=fps)


# ----------------------------------------------------------------------------------------------
# The recording
# ----------------------------------------------------------------------------------------------
@dataclass
class Recording:
    """A validated recording. K [V, 3, 3] (project convention, pixel centres at +0.5) and w2c
    [V, 4, 4] (OpenCV, world Z-up, mm) are float64; keypoints2d, when present, is a numpy array
    [V, n_frames, J, 3] = (x_px, y_px, confidence) in the OpenCV pixel convention of the files."""
    path: Path
    n_cameras: int
    n_frames: int
    width: int
    height: int
    fps: float
    K: torch.Tensor
    w2c: torch.Tensor
    keypoints2d: np.ndarray | None = None

    def video_path(self, v: int) -> Path:
        return self.path / VIDEO_DIR / f"{v}.mp4"

    def mask_path(self, v: int) -> Path:
        return self.path / MASK_DIR / f"{v}.mp4"


def _load_keypoints(root: Path, n_cameras: int, n_frames: int) -> np.ndarray | None:
    kdir = root / KEYPOINT_DIR
    if not kdir.is_dir():
        return None
    arrays = []
    for v in range(n_cameras):
        p = kdir / f"result_view_{v}.pkl"
        if not p.is_file():
            raise RecordingError(f"{p}: missing while {kdir} exists; provide all {n_cameras} views or remove "
                                 "the folder")
        a = np.asarray(load_pickle_restricted(p), dtype=np.float64)
        if a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < n_frames:
            raise RecordingError(f"{p}: expected an array (frames >= {n_frames}, joints, 3), got {a.shape}")
        arrays.append(a[:n_frames])
    if len({a.shape for a in arrays}) != 1:
        raise RecordingError(f"{kdir}: views have different keypoint shapes {[a.shape for a in arrays]}")
    return np.stack(arrays)


def open_recording(path: str | os.PathLike) -> Recording:
    """Validate a recording folder (cameras, every video and mask, optional keypoints) and return it.

    Frame counts that disagree across videos are not an error: the common range is used and the
    difference is logged as a warning."""
    root = Path(path)
    if not root.is_dir():
        raise RecordingError(f"{root}: recording folder not found; set the recording path in the params")
    K, w2c = load_cameras(root / CAMERA_FILE)
    V = K.shape[0]
    infos = []
    for v in range(V):
        for sub in (VIDEO_DIR, MASK_DIR):
            infos.append(probe_video(root / sub / f"{v}.mp4"))
    if len({round(i.fps, 3) for i in infos}) > 1:
        detail = ", ".join(f"{i.path.relative_to(root)}: {i.fps:g} fps" for i in infos)
        log.warning("%s: the videos have different frame rates (%s); frames are matched by index, so the "
                    "cameras drift apart in time unless the files' rates are wrong", root, detail)
    sizes = {(i.width, i.height) for i in infos}
    if len(sizes) != 1:
        detail = ", ".join(f"{i.path.relative_to(root)}: {i.width}x{i.height}" for i in infos)
        raise RecordingError(f"{root}: videos and masks must all have one size; got {detail}")
    (width, height), = sizes
    counts = [i.n_frames for i in infos]
    n_frames = min(counts)
    if max(counts) != n_frames:
        detail = ", ".join(f"{i.path.relative_to(root)}={i.n_frames}" for i in infos)
        log.warning("%s: frame counts differ (%s); using the common range 0..%d", root, detail, n_frames - 1)
    rec = Recording(path=root, n_cameras=V, n_frames=n_frames, width=width, height=height, fps=infos[0].fps,
                    K=K, w2c=w2c, keypoints2d=_load_keypoints(root, V, n_frames))
    log.info("%s: %d cameras, %d frames of %dx%d at %.1f fps", root, V, n_frames, width, height, rec.fps)
    return rec


# ----------------------------------------------------------------------------------------------
# Frame selection
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameSelection:
    """Which frames to extract: ``count`` frames spread evenly, or every ``stride``-th frame (set
    exactly one), inside the range left after dropping ``skip_edges`` of the recording at each end,
    and never within ``cut_margin`` frames of a cut where recording segments were joined."""
    count: int | None = bounded(2000, min=1)  # number of frames, evenly spaced (None: use stride)
    stride: int | None = bounded(None, min=1)  # every stride-th frame (None: use count)
    skip_edges: float = bounded(0.05, min=0, lt=0.5)  # fraction of the recording dropped at each end
    cut_frames: tuple[int, ...] = bounded((5900, 11800, 17700), min=0)  # segment joins in the MAMMAL recording
    cut_margin: int = bounded(10, min=0)  # frames excluded on each side of a cut

    def __post_init__(self):
        check_ranges(self)


def select_frames(n_frames: int, sel: FrameSelection) -> list[int]:
    """Frame indices (sorted, unique) chosen by ``sel`` from a recording of ``n_frames`` frames."""
    if (sel.count is None) == (sel.stride is None):
        raise ValueError(f"FrameSelection: set exactly one of count / stride, got count={sel.count}, "
                         f"stride={sel.stride}")
    lo = int(np.ceil(n_frames * sel.skip_edges))
    hi = n_frames - 1 - lo
    ok = np.ones(n_frames, dtype=bool)
    ok[:lo] = False
    ok[hi + 1:] = False
    for c in sel.cut_frames:
        ok[max(0, c - sel.cut_margin):max(0, c + sel.cut_margin + 1)] = False
    candidates = np.flatnonzero(ok)
    if candidates.size == 0:
        return []
    if sel.stride is not None:
        chosen = candidates[(candidates - lo) % sel.stride == 0]
    else:
        pos = np.round(np.linspace(0, candidates.size - 1, min(sel.count, candidates.size))).astype(int)
        chosen = candidates[pos]
    return sorted(set(int(f) for f in chosen))


# ----------------------------------------------------------------------------------------------
# Decoding
# ----------------------------------------------------------------------------------------------
@dataclass
class Frame:
    """One decoded multi-view frame: rgb [V, H, W, 3] uint8 (RGB order), mask [V, H, W] bool
    (gray > MASK_THRESHOLD); views in the order of ``cameras``."""
    index: int
    cameras: list[int]
    rgb: np.ndarray
    mask: np.ndarray


SEEK_LOOKBACK = 16  # OpenCV's FFmpeg seek restarts decoding at the keyframe before (target - 16)


def keyframe_indices(path: Path) -> list[int] | None:
    """Indices of the keyframes of a video, read from its packets without decoding (cheap), or
    None when this OpenCV build cannot tell (the reader then never seeks)."""
    import cv2

    if not hasattr(cv2, "CAP_PROP_LRF_HAS_KEY_FRAME"):
        return None
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG, [cv2.CAP_PROP_FORMAT, -1])
    try:
        if not cap.isOpened():
            return None
        keys, i = [], 0
        while cap.grab():
            if cap.get(cv2.CAP_PROP_LRF_HAS_KEY_FRAME):
                keys.append(i)
            i += 1
        return keys or None
    finally:
        cap.release()


class _SequentialReader:
    """Reads one video forward only: grab() through unwanted frames, retrieve() the wanted ones.

    With ``keyframes`` known it jumps ahead (one seek) only when a keyframe lies far enough past the
    current position that decoding from it is cheaper than grabbing through: it never reads back."""

    def __init__(self, path: Path, gray: bool, keyframes: list[int] | None = None):
        self.path, self.gray = path, gray
        self.cap = _open_capture(path)
        self.pos = 0  # index of the next frame grab() returns
        self.keyframes = np.asarray(keyframes if keyframes else [], dtype=np.int64)
        self.n_seeks = 0

    def _restart_point(self, f: int) -> int:
        """First frame an OpenCV seek to ``f`` decodes (the keyframe before f - SEEK_LOOKBACK), or -1."""
        i = np.searchsorted(self.keyframes, f - SEEK_LOOKBACK, side="right") - 1
        return int(self.keyframes[i]) if i >= 0 else -1

    def read(self, frames: Sequence[int]) -> list[np.ndarray]:
        import cv2

        out = []
        for f in frames:
            if f < self.pos:
                raise ValueError(f"{self.path}: frames must be increasing (asked {f} after {self.pos - 1})")
            if self._restart_point(f) > self.pos:  # skipping ahead over a whole keyframe interval
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, f)
                self.n_seeks += 1
                self.pos = f
            while self.pos <= f:
                if not self.cap.grab():
                    raise RecordingError(f"{self.path}: cannot decode frame {self.pos} (file truncated?)")
                self.pos += 1
            ok, img = self.cap.retrieve()
            if not ok:
                raise RecordingError(f"{self.path}: cannot decode frame {f}")
            out.append(_convert(img, self.gray, cv2))
        return out

    def close(self) -> None:
        self.cap.release()


def _convert(img: np.ndarray, gray: bool, cv2) -> np.ndarray:
    if gray:
        g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
        return g > MASK_THRESHOLD
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _check_frames(rec: Recording, frame_indices: Sequence[int], cams: Sequence[int]) -> list[int]:
    frames = sorted(set(int(f) for f in frame_indices))
    if frames and (frames[0] < 0 or frames[-1] >= rec.n_frames):
        raise ValueError(f"{rec.path}: frame indices must be in [0, {rec.n_frames}), got {frames[0]}..{frames[-1]}")
    bad = [c for c in cams if not 0 <= c < rec.n_cameras]
    if bad:
        raise ValueError(f"{rec.path}: cameras {bad} out of range 0..{rec.n_cameras - 1}")
    return frames


def read_frames(rec: Recording, frame_indices: Sequence[int], cameras: Sequence[int] | None = None,
                *, chunk_size: int = 8, workers: int | None = None, progress: bool = True,
                allow_keyframe_jumps: bool = True) -> Iterator[Frame]:
    """Yield the requested frames (sorted, unique) as :class:`Frame` objects.

    Each video is read sequentially, one thread per video: a camera's RGB and mask videos decode side by
    side (cv2 releases the GIL while decoding), ``chunk_size`` frames at a time, so memory holds at most
    ``chunk_size`` multi-view frames.
    With ``allow_keyframe_jumps`` a reader facing a long gap jumps forward to the last keyframe
    before the next wanted frame instead of decoding the whole gap (never backwards, never per frame)."""
    from tqdm.auto import tqdm

    cams = list(range(rec.n_cameras)) if cameras is None else list(cameras)
    frames = _check_frames(rec, frame_indices, cams)
    # keyframes are only worth scanning when some gap is long enough for a seek to pay off
    jumps = bool(frames) and max(np.diff([0] + frames)) > SEEK_LOOKBACK and allow_keyframe_jumps

    def reader(path: Path, gray: bool) -> _SequentialReader:
        return _SequentialReader(path, gray, keyframe_indices(path) if jumps else None)

    n = len(cams)
    readers = [reader(rec.video_path(c), False) for c in cams] + [reader(rec.mask_path(c), True) for c in cams]

    try:
        with ThreadPoolExecutor(max_workers=workers or len(readers)) as pool, \
                tqdm(total=len(frames), desc="decoding", unit="frame", disable=not progress) as bar:
            for s in range(0, len(frames), chunk_size):
                chunk = frames[s:s + chunk_size]
                decoded = list(pool.map(lambda r: r.read(chunk), readers))  # [2 n videos][chunk frames]
                for j, f in enumerate(chunk):
                    yield Frame(index=f, cameras=cams, rgb=np.stack([d[j] for d in decoded[:n]]),
                                mask=np.stack([d[j] for d in decoded[n:]]))
                    bar.update(1)
    finally:
        for r in readers:
            r.close()


def read_frames_seek(rec: Recording, frame_indices: Sequence[int], cameras: Sequence[int] | None = None
                     ) -> Iterator[Frame]:
    """Naive baseline: one thread, ``CAP_PROP_POS_FRAMES`` seek before every frame of every video.
    Same output as :func:`read_frames`; kept only to benchmark it against."""
    import cv2

    cams = list(range(rec.n_cameras)) if cameras is None else list(cameras)
    frames = _check_frames(rec, frame_indices, cams)
    caps = [(_open_capture(rec.video_path(c)), _open_capture(rec.mask_path(c))) for c in cams]
    try:
        for f in frames:
            rgb, mask = [], []
            for cap_rgb, cap_mask in caps:
                for cap, gray, out in ((cap_rgb, False, rgb), (cap_mask, True, mask)):
                    cap.set(cv2.CAP_PROP_POS_FRAMES, f)
                    ok, img = cap.read()
                    if not ok:
                        raise RecordingError(f"{rec.path}: cannot decode frame {f}")
                    out.append(_convert(img, gray, cv2))
            yield Frame(index=f, cameras=cams, rgb=np.stack(rgb), mask=np.stack(mask))
    finally:
        for a, b in caps:
            a.release()
            b.release()
