"""What both trainers share: keyed randomness that makes a resumed run exact."""
from __future__ import annotations

import torch


def keyed_generator(*keys: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded from integer keys, e.g. (seed, step, rank, stream): the
    random numbers of one step of one process depend on nothing else, so a run resumed at any
    step draws exactly what the uninterrupted run drew. Keys are mixed so that nearby keys differ."""
    seed = 0
    for k in keys:
        seed = (seed * 1_000_003 + int(k) + 0x9E3779B9) % (2 ** 63 - 1)
    return torch.Generator(device=device).manual_seed(seed)


__all__ = ["keyed_generator"]
