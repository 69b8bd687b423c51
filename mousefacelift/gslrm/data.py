"""GS-LRM training data: sample folders -> (input views, held-out target views) batches.

Randomness is stateless: the view split and the augmentation of sample ``i`` at training step
``s`` come from a generator seeded with ``(seed, s, i)``, the number of input views of step ``s``
(when it varies, :attr:`DataConfig.min_input_views`) from one seeded with ``(seed, s)``, and the
sample order of step ``s`` from
a per-epoch permutation seeded with ``(seed, epoch)``. So a resumed run sees exactly the batches an
uninterrupted run would, with no data-loader state to save, and each DDP rank takes its own
slice of the same global batch.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import cameras
from ..configs import bounded, check_ranges
from ..data.samples import read_sample, read_split, resize_views
from ..training import keyed_generator

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    input_views: int = bounded(5, min=1)   # views given to the model (in fixed view order); the most when varied
    min_input_views: int = bounded(0, min=0)  # > 0: each step draws its number of input views uniformly from
    #                                          min_input_views..input_views (one model for N = 1..5); 0: fixed
    fixed_targets: list[int] = field(default_factory=list)  # held-out views; [] = random per step
    targets_include_inputs: bool = False   # also supervise the input views
    augment: bool = True                   # brightness/contrast jitter, same for all views of a sample
    brightness: float = bounded(0.1, min=0)  # additive offset drawn from [-b, b]
    contrast: float = bounded(0.1, min=0, max=1)  # gain drawn from [1 - c, 1 + c] about 0.5
    target_size: int = bounded(0, min=0)   # side (px) of the supervised target views (0: the model's size); larger:
    #                                        the Gaussians are rendered and compared at that finer size

    def __post_init__(self):
        check_ranges(self)
        if self.min_input_views > self.input_views:
            raise ValueError(f"DataConfig.min_input_views={self.min_input_views} exceeds "
                             f"input_views={self.input_views}: "
                             "set min_input_views <= input_views (or 0 for a fixed number)")


INPUT_COUNT_STREAM = 11  # key of the generator that draws a step's number of input views


def step_input_views(cfg: DataConfig, seed: int, step: int) -> int:
    """The number of input views of training step ``step``: ``cfg.input_views``, or, when
    ``cfg.min_input_views`` > 0, a uniform draw from min_input_views..input_views keyed by (seed, step)
    only, so every sample of the step's batch (on every DDP rank) has the same count and stacks,
    and a resumed run draws the same."""
    if not cfg.min_input_views:
        return cfg.input_views
    g = keyed_generator(seed, step, INPUT_COUNT_STREAM)
    return cfg.min_input_views + int(torch.randint(cfg.input_views - cfg.min_input_views + 1, (), generator=g))


def choose_views(n_views: int, cfg: DataConfig, gen: torch.Generator,
                 n_inputs: int | None = None) -> tuple[list[int], list[int]]:
    """-> (input view indices, target view indices), each sorted (fixed view order).

    ``n_inputs`` inputs (None: ``cfg.input_views``); targets are the held-out views (fixed or drawn
    with ``gen``), followed, when ``targets_include_inputs``, by the inputs."""
    n_in = cfg.input_views if n_inputs is None else n_inputs
    if not 0 < n_in <= n_views:
        raise ValueError(f"{n_in} input views (DataConfig.input_views={cfg.input_views}) must be in 1..{n_views}")
    if cfg.fixed_targets:
        held = sorted(cfg.fixed_targets)
        if any(not 0 <= v < n_views for v in held):
            raise ValueError(f"DataConfig.fixed_targets={held} outside 0..{n_views - 1}")
        inputs = [v for v in range(n_views) if v not in held][:n_in]
        if len(inputs) < n_in:
            raise ValueError(f"{n_in} input views + fixed_targets {held} exceed {n_views} views")
    else:
        perm = torch.randperm(n_views, generator=gen).tolist()
        inputs = sorted(perm[:n_in])
        held = sorted(perm[n_in:])
    targets = held + (inputs if cfg.targets_include_inputs else [])
    if not targets:
        raise ValueError("no target views: all views are inputs; set targets_include_inputs=True or use "
                         "fewer input_views")
    return inputs, targets


def prepare_images(images: torch.Tensor, K: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RGBA images [V, 4, H, W] in [0, 1], K [V, 3, 3] -> rgb on white [V, 3, S, S], alpha
    [V, 1, S, S], K scaled to S x S (:func:`mousefacelift.data.samples.resize_views`). Composites
    before resizing."""
    alpha = images[:, 3:4]
    on_white = torch.cat([images[:, :3] * alpha + (1 - alpha), alpha], 1)
    rgba, K = resize_views(on_white, K, size)
    rgba = rgba.clamp(0, 1)
    return rgba[:, :3], rgba[:, 3:4], K


def prepare_rgba(images: torch.Tensor, K: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`prepare_images` as one RGBA tensor [V, 4, S, S] (rgb on white ; alpha) and K: what
    :class:`~mousefacelift.data.resident.ResidentSplit` keeps for GS-LRM."""
    rgb, alpha, K = prepare_images(images, K, size)
    return torch.cat([rgb, alpha], 1), K


def color_jitter(cfg: DataConfig, gen: torch.Generator) -> tuple[float, float]:
    """One sample's contrast gain c in [1 - contrast, 1 + contrast] and brightness offset b in
    [-brightness, brightness], drawn from ``gen`` (c first)."""
    c = 1 + cfg.contrast * (2 * torch.rand((), generator=gen).item() - 1)
    b = cfg.brightness * (2 * torch.rand((), generator=gen).item() - 1)
    return c, b


def apply_color_jitter(rgb: torch.Tensor, alpha: torch.Tensor, c, b) -> torch.Tensor:
    """The foreground colour f becomes clamp((f - 0.5) * c + 0.5 + b); the white background stays
    white. rgb [..., 3, H, W] on white, alpha [..., 1, H, W]; c, b floats or tensors broadcasting
    against rgb (one per sample: the same for all its views)."""
    fg = ((rgb - (1 - alpha)) / alpha.clamp(min=1e-6)).clamp(0, 1)  # un-composite
    fg = ((fg - 0.5) * c + 0.5 + b).clamp(0, 1)
    return fg * alpha + (1 - alpha)


class GSLRMDataset(torch.utils.data.Dataset):
    """Samples of a split file as GS-LRM items. Indexed by ``(sample index, step)`` pairs (see
    :class:`StepBatchSampler`); an int index means step 0.

    An item: input_images [Vi, 3, S, S] on white, input_c2w [Vi, 4, 4], input_K [Vi, 3, 3];
    target_images [Vt, 3, T, T], target_alpha [Vt, 1, T, T], target_w2c / target_c2w, target_K (for T x T;
    T = ``cfg.target_size`` or S); target_is_input [Vt] bool; input_views [Vi], target_views [Vt] (positions in the sample);
    index (the sample index). Cameras float32, OpenCV, normalized world.
    """

    def __init__(self, root: str | os.PathLike, split_file: str | os.PathLike, image_size: int,
                 cfg: DataConfig, seed: int = 0, limit: int = 0):
        self.root = Path(root)
        self.names = read_split(split_file)
        if limit:
            self.names = self.names[:limit]
        if not self.names:
            raise ValueError(f"split file {split_file} lists no samples")
        self.image_size, self.cfg, self.seed = image_size, cfg, seed

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key) -> dict:
        i, step = key if isinstance(key, tuple) else (key, 0)
        s = read_sample(self.root / self.names[i])
        gen = keyed_generator(self.seed, step, i)
        inputs, targets = choose_views(s.images.shape[0], self.cfg, gen, step_input_views(self.cfg, self.seed, step))
        rgb, alpha, K = prepare_images(s.images, s.K, self.image_size)
        T = self.cfg.target_size or self.image_size
        t_rgb, t_alpha, t_K = (rgb, alpha, K) if T == self.image_size else prepare_images(s.images, s.K, T)
        if self.cfg.augment:
            c, b = color_jitter(self.cfg, gen)
            rgb, t_rgb = apply_color_jitter(rgb, alpha, c, b), apply_color_jitter(t_rgb, t_alpha, c, b)
        w2c, c2w, K, t_K = s.w2c.float(), s.c2w.float(), K.float(), t_K.float()
        ti, tt = torch.tensor(inputs), torch.tensor(targets)
        return {"input_images": rgb[ti], "input_c2w": c2w[ti], "input_K": K[ti],
                "target_images": t_rgb[tt], "target_alpha": t_alpha[tt], "target_w2c": w2c[tt],
                "target_c2w": c2w[tt], "target_K": t_K[tt],
                "target_is_input": torch.tensor([t in inputs for t in targets]),
                "input_views": ti, "target_views": tt, "index": i}


def resident_batch(split, cfg: DataConfig, seed: int, step: int, indices: list[int], targets=None) -> dict:
    """The batch that :class:`GSLRMDataset` + :func:`collate` make for ``(indices, step)``, built on
    the device from a :class:`~mousefacelift.data.resident.ResidentSplit` loaded with
    :func:`prepare_rgba` at the model's size (``targets``: the same split at ``cfg.target_size``, where
    that differs): the same keyed draws (views, then colour jitter, per sample), applied to the whole
    batch at once. Tensors on ``split.device``; cameras float32."""
    V = split.images.shape[1]
    n_in = step_input_views(cfg, seed, step)
    plans, jitter = [], []
    for i in indices:
        gen = keyed_generator(seed, step, i)
        plans.append(choose_views(V, cfg, gen, n_in))
        jitter.append(color_jitter(cfg, gen) if cfg.augment else (1.0, 0.0))
    dev = split.device
    idx = torch.tensor(indices, device=dev)
    ti = torch.tensor([p[0] for p in plans], device=dev)                    # [B, Vi]
    tt = torch.tensor([p[1] for p in plans], device=dev)                    # [B, Vt]
    rows = torch.arange(len(indices), device=dev)[:, None]
    cb = torch.tensor(jitter, dtype=split.images.dtype, device=dev).view(-1, 2, 1, 1, 1, 1)

    def views(s, which):  # s.images [N, V, 4, S, S] -> rgb [B, v, 3, S, S] (jittered), alpha [B, v, 1, S, S]
        rgba = s.images[idx[:, None], which]
        rgb, alpha = rgba[:, :, :3], rgba[:, :, 3:]
        return (apply_color_jitter(rgb, alpha, cb[:, 0], cb[:, 1]) if cfg.augment else rgb), alpha

    targets = split if targets is None else targets
    in_rgb, _ = views(split, ti)
    t_rgb, t_alpha = views(targets, tt)
    w2c = split.w2c[idx]
    c2w, w2c = cameras.invert_rigid(w2c).float(), w2c.float()
    K, t_K = split.K[idx].float(), targets.K[idx].float()
    return {"input_images": in_rgb, "input_c2w": c2w[rows, ti], "input_K": K[rows, ti],
            "target_images": t_rgb, "target_alpha": t_alpha, "target_w2c": w2c[rows, tt],
            "target_c2w": c2w[rows, tt], "target_K": t_K[rows, tt],
            "target_is_input": (tt[:, :, None] == ti[:, None, :]).any(-1),
            "input_views": ti, "target_views": tt, "index": idx}


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields, for steps start_step, start_step+1, ..., the list of ``(sample index, step)`` pairs of
    this rank's share of the global batch. Sample order: a fresh seeded permutation each epoch."""

    def __init__(self, n_samples: int, batch_size: int, seed: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle: bool = True):
        self.n, self.batch, self.seed = n_samples, batch_size, seed
        self.start, self.rank, self.world, self.shuffle = start_step, rank, world_size, shuffle

    def _order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        return torch.randperm(self.n, generator=keyed_generator(self.seed, epoch, 7)).tolist()

    def indices(self, step: int) -> list[int]:
        """Sample indices of this rank at ``step`` (global batch = batch_size * world_size)."""
        g = self.batch * self.world
        pos = [step * g + self.rank * self.batch + j for j in range(self.batch)]
        return [self._order(p // self.n)[p % self.n] for p in pos]

    def __iter__(self):
        step = self.start
        while True:
            yield [(i, step) for i in self.indices(step)]
            step += 1

    def __len__(self) -> int:  # infinite stream; DataLoader only needs it for len(loader)
        return 2 ** 62


def collate(items: list[dict]) -> dict:
    """Stack items into a batch (every tensor gains a leading B; index becomes a tensor [B])."""
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "index"}
    out["index"] = torch.tensor([it["index"] for it in items])
    return out
