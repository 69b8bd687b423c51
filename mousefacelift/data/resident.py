"""A training split decoded once, at the model's resolution, and kept on the training device.

A trainer at 64 px reads the same few hundred samples thousands of times; decoding full-size PNGs
and resizing them every step (a DataLoader with workers) starves a GPU. :class:`ResidentSplit`
decodes each sample once (threads), resizes its views together with their intrinsics
(:func:`~mousefacelift.data.samples.resize_views`, the same call the per-step path made), and
keeps the result as one tensor on the device; a batch is then an index, with no host round trip:

    data = ResidentSplit.load(root, "splits/train.txt", size=64, device=device)
    batch = data.batch(idx)          # idx [B] long on data.device
    batch["images"]  # [B, V, 4, 64, 64] float32 in [0, 1]

Memory: N x V x 4 x S^2 x 4 bytes (1300 samples x 6 views at 64 px: 511 MB).
"""
from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from .samples import read_sample, read_split, resize_views

log = logging.getLogger(__name__)


@dataclass
class ResidentSplit:
    """images [N, V, C, S, S] float32 in [0, 1]; w2c [N, V, 4, 4] (OpenCV) and K [N, V, 3, 3]
    (for S x S, project convention) float64; ``names`` the sample folders of the split, in order."""
    images: torch.Tensor
    w2c: torch.Tensor
    K: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def device(self) -> torch.device:
        return self.images.device

    @classmethod
    def load(cls, root: str | os.PathLike, split_file: str | os.PathLike, size: int, views: list[int] | None = None,
             device: str | torch.device = "cpu", workers: int = 8, prepare=resize_views) -> "ResidentSplit":
        """Decode every sample of ``split_file`` (paths relative to ``root``), each made ``size`` px by
        ``prepare(images [V, 4, H, W], K [V, 3, 3] float64, size) -> (images, K)`` (default: resized
        with its intrinsics; GS-LRM composites on white first: :func:`mousefacelift.gslrm.data.prepare_rgba`)."""
        root = Path(root)
        names = read_split(split_file)
        if not names:
            raise ValueError(f"{split_file}: the split is empty; re-run notebook 01 or choose another split")

        def one(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            s = read_sample(root / name, views)
            # cameras as the per-step path saw them: stored float32, camera math in float64
            images, K = prepare(s.images, s.K.float().double(), size)
            return images, s.w2c.float().double(), K

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            parts = list(pool.map(one, names))
        shapes = {tuple(p[0].shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"{split_file}: samples have different view counts or channels {sorted(shapes)}; "
                             "every sample of a split needs the same views")
        dev = torch.device(device)
        out = cls(images=torch.stack([p[0] for p in parts]).to(dev), w2c=torch.stack([p[1] for p in parts]).to(dev),
                  K=torch.stack([p[2] for p in parts]).to(dev), names=names)
        log.info("%s: %d samples x %d views at %d px resident on %s (%.0f MB)", split_file, len(names),
                 out.images.shape[1], size, dev, out.images.numel() * out.images.element_size() / 2**20)
        return out

    def batch(self, idx: torch.Tensor) -> dict:
        """idx [B] long (on any device) -> {"images" [B, V, C, S, S], "w2c" [B, V, 4, 4], "K" [B, V, 3, 3],
        "index" [B]}, all on :attr:`device`."""
        idx = idx.to(self.device)
        return {"images": self.images[idx], "w2c": self.w2c[idx], "K": self.K[idx], "index": idx}


__all__ = ["ResidentSplit"]
