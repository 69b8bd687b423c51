"""The sample format shared by every stage (FaceLift's layout, plus provenance).

```
sample_XXXXXX/
  images/cam_000.png ... cam_005.png   RGBA uint8, alpha = mouse mask
  opencv_cameras.json                  {"id", "frames": [{"w","h","fx","fy","cx","cy","w2c",
                                        "file_path","view_id"}, ...], "provenance": {...}}
```
``w2c`` is row-major 4x4, OpenCV, normalized world units (mouse at the origin, cameras at mean
distance 2.7, Z-up). Intrinsics use pixel centres at +0.5 (``cx = cy = 256`` at 512 px), as FaceLift.
``provenance`` records where the sample came from (recording, frame, normalization, original
cameras in mm) so that any later stage can map results back to the recording.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import cameras

CAMERAS_FILE = "opencv_cameras.json"


@dataclass
class Sample:
    """One multi-view sample in memory.

    images [V, 4, H, W] float in [0, 1] (RGBA, alpha = mask); w2c [V, 4, 4] and K [V, 3, 3]
    float64 (OpenCV, normalized world); view_ids [V] the camera index of each view.
    """
    sample_id: str
    images: torch.Tensor
    w2c: torch.Tensor
    K: torch.Tensor
    view_ids: list[int]
    provenance: dict = field(default_factory=dict)

    @property
    def c2w(self) -> torch.Tensor:
        return cameras.invert_rigid(self.w2c)


def sample_name(index: int) -> str:
    return f"sample_{index:06d}"


def write_sample(sample_dir: str | os.PathLike, images: np.ndarray, w2c: torch.Tensor, K: torch.Tensor,
                 view_ids: list[int], provenance: dict | None = None) -> None:
    """Write one sample atomically (into a temp folder, then rename), so a killed run never leaves
    a half-written sample that a re-run would take as finished.

    images [V, H, W, 4] uint8 RGBA; w2c [V, 4, 4]; K [V, 3, 3]."""
    import cv2

    sample_dir = Path(sample_dir)
    cameras.check_rotation(w2c[:, :3, :3].double(), what=f"{sample_dir.name} cameras")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 4:
        raise ValueError(f"write_sample: images must be [V, H, W, 4] uint8, got {images.shape} {images.dtype}")
    tmp = sample_dir.with_name(sample_dir.name + ".tmp")
    if tmp.exists():
        import shutil
        shutil.rmtree(tmp)
    (tmp / "images").mkdir(parents=True)
    frames = []
    for i, v in enumerate(view_ids):
        rel = f"images/cam_{v:03d}.png"
        bgra = images[i][..., [2, 1, 0, 3]]
        if not cv2.imwrite(str(tmp / rel), bgra):
            raise OSError(f"could not write {tmp / rel}")
        k = K[i].tolist()
        frames.append({"w": int(images.shape[2]), "h": int(images.shape[1]),
                       "fx": k[0][0], "fy": k[1][1], "cx": k[0][2], "cy": k[1][2],
                       "w2c": w2c[i].tolist(), "file_path": rel, "view_id": int(v)})
    meta = {"id": sample_dir.name, "frames": frames, "provenance": provenance or {}}
    (tmp / CAMERAS_FILE).write_text(json.dumps(meta, indent=1))
    if sample_dir.exists():
        import shutil
        shutil.rmtree(sample_dir)
    tmp.rename(sample_dir)


def read_cameras(sample_dir: str | os.PathLike) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """-> (json dict, w2c [V, 4, 4] float64, K [V, 3, 3] float64), det(R) checked."""
    path = Path(sample_dir) / CAMERAS_FILE
    try:
        meta = json.loads(path.read_text())
        frames = meta["frames"]
        w2c = torch.tensor([f["w2c"] for f in frames], dtype=torch.float64)
        K = torch.stack([cameras.intrinsics(f["fx"], f["fy"], f["cx"], f["cy"]) for f in frames])
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"{path}: not a valid FaceLift camera file ({e}); re-run notebook 01 for this sample") from e
    if w2c.shape[1:] != (4, 4):
        raise ValueError(f"{path}: w2c must be 4x4 per frame, got {tuple(w2c.shape)}")
    cameras.check_rotation(w2c[:, :3, :3], what=str(path))
    return meta, w2c, K


def read_sample(sample_dir: str | os.PathLike, views: list[int] | None = None) -> Sample:
    """Read a sample; ``views`` selects and orders views by their position in the json."""
    import cv2

    sample_dir = Path(sample_dir)
    meta, w2c, K = read_cameras(sample_dir)
    idx = list(range(len(meta["frames"]))) if views is None else list(views)
    imgs = []
    for i in idx:
        f = meta["frames"][i]
        p = sample_dir / f["file_path"]
        im = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if im is None or im.ndim != 3 or im.shape[2] != 4:
            raise ValueError(f"{p}: missing or not an RGBA PNG; re-run notebook 01 for this sample")
        imgs.append(torch.from_numpy(im[..., [2, 1, 0, 3]].copy()))
    images = torch.stack(imgs).permute(0, 3, 1, 2).float() / 255.0
    return Sample(sample_id=meta.get("id", sample_dir.name), images=images, w2c=w2c[idx], K=K[idx],
                  view_ids=[int(meta["frames"][i].get("view_id", i)) for i in idx],
                  provenance=meta.get("provenance", {}))


def is_complete(sample_dir: str | os.PathLike) -> bool:
    """True when the sample folder holds its camera file and every image it names."""
    sample_dir = Path(sample_dir)
    try:
        meta = json.loads((sample_dir / CAMERAS_FILE).read_text())
        return all((sample_dir / f["file_path"]).is_file() for f in meta["frames"])
    except (OSError, ValueError, KeyError):
        return False


def write_split(path: str | os.PathLike, sample_dirs: list[str]) -> None:
    """A split list: one sample directory per line (relative to the split file's data root)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("".join(f"{s}\n" for s in sample_dirs))


def read_split(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found; run notebook 01 (data extraction) first")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


class SampleDataset(torch.utils.data.Dataset):
    """Samples listed in a split file, as dicts of tensors: images [V, 4, H, W], w2c [V, 4, 4],
    c2w [V, 4, 4], K [V, 3, 3] (float32). Paths in the split are relative to ``root``."""

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike, views: list[int] | None = None):
        self.root = Path(root)
        self.names = read_split(split_file)
        self.views = views

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        s = read_sample(self.root / self.names[i], self.views)
        return {"images": s.images, "w2c": s.w2c.float(), "c2w": s.c2w.float(), "K": s.K.float(),
                "index": i}


def resize_views(images: torch.Tensor, K: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize square views and their intrinsics together.

    images [..., C, H, W]; K [..., 3, 3] (for H x W) -> images [..., C, size, size], K for size x size."""
    H, W = images.shape[-2:]
    if (H, W) == (size, size):
        return images, K
    lead = images.shape[:-3]
    out = F.interpolate(images.reshape(-1, *images.shape[-3:]), size=(size, size), mode="bilinear",
                        antialias=True, align_corners=False).reshape(*lead, -1, size, size)
    return out, cameras.scale_intrinsics(K, size / W, size / H)
