"""A training split resident on the device: the same tensors the per-step path (SampleDataset,
then resize_views) gave, batches by index, and keyed batch draws that depend on (seed, step, rank)."""
from __future__ import annotations

import pytest
import torch

from mousefacelift.data import samples
from mousefacelift.data.resident import ResidentSplit
from mousefacelift.mvdiffusion.train import batch_indices
from test_mvdiffusion import make_samples


@pytest.fixture
def split(tmp_path):
    names = make_samples(tmp_path / "s", 3, size=32)
    samples.write_split(tmp_path / "train.txt", names)
    return tmp_path


@pytest.mark.parametrize("size", [32, 16])
def test_resident_split_matches_the_per_sample_path(split, size):
    data = ResidentSplit.load(split / "s", split / "train.txt", size=size, views=[2, 0, 1], workers=2)
    ds = samples.SampleDataset(split / "s", split / "train.txt", [2, 0, 1])
    assert data.images.shape == (3, 3, 4, size, size) and len(data) == 3
    for i in range(3):
        item = ds[i]
        images, K = samples.resize_views(item["images"], item["K"].double(), size)
        assert torch.equal(data.images[i], images)
        assert torch.equal(data.K[i], K) and torch.equal(data.w2c[i], item["w2c"].double())
    batch = data.batch(torch.tensor([2, 0, 2]))
    assert torch.equal(batch["images"][0], data.images[2]) and torch.equal(batch["images"][2], data.images[2])
    assert batch["K"].shape == (3, 3, 3, 3) and batch["index"].tolist() == [2, 0, 2]


def test_empty_split_is_an_error_naming_the_file(tmp_path):
    (tmp_path / "train.txt").write_text("")
    with pytest.raises(ValueError, match="train.txt: the split is empty"):
        ResidentSplit.load(tmp_path, tmp_path / "train.txt", size=16)


def test_batch_indices_depend_on_seed_step_and_rank_only():
    cpu = torch.device("cpu")
    a = batch_indices(100, 8, seed=1, step=5, rank=0, device=cpu)
    assert torch.equal(a, batch_indices(100, 8, seed=1, step=5, rank=0, device=cpu))
    assert a.shape == (8,) and a.dtype == torch.long and int(a.min()) >= 0 and int(a.max()) < 100
    others = [batch_indices(100, 8, 1, 6, 0, cpu), batch_indices(100, 8, 1, 5, 1, cpu), batch_indices(100, 8, 2, 5, 0, cpu)]
    assert all(not torch.equal(a, b) for b in others)
