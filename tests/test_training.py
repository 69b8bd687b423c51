"""Checkpoints of both trainers: atomic writes (a full disk leaves no partial file), weights_only
reads (a crafted file cannot run code), and resuming past a truncated or empty newest checkpoint."""
import errno
import logging
import os
import random

import numpy as np
import pytest
import torch

from mousefacelift import training
from mousefacelift.gslrm import train as gslrm_train
from mousefacelift.gslrm.model import read_checkpoint
from mousefacelift.mvdiffusion import train as mvd_train
from mousefacelift.training import (CheckpointError, CorruptCheckpointError, UnsafeCheckpointError, atomic_save,
                                    checkpoint_name, list_checkpoints, load_checkpoint, load_latest_checkpoint)
from test_gslrm_train import _cfg as gslrm_cfg
from test_gslrm_train import make_blob_samples
from test_mvdiffusion import make_samples
from test_mvdiffusion_train import tiny_config as mvd_cfg


class RunsCode:
    """Unpickling this calls exec(), i.e. a checkpoint holding it runs code when fully unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def crafted(path, marker):
    """A checkpoint-looking dict with a pickled callable inside; loading it fully creates ``marker``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": {}, "step": 99, "payload": RunsCode(marker)}, path)
    torch.load(path, weights_only=False)  # the trap works: full unpickling runs it
    assert marker.is_file()
    marker.unlink()
    return path


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return make_blob_samples(tmp_path_factory.mktemp("blobs"), 2, 32)


@pytest.fixture
def mvd_data(tmp_path):
    from mousefacelift.data import samples

    samples.write_split(tmp_path / "train.txt", make_samples(tmp_path / "s", 2, size=32))
    return tmp_path


# -- names and the newest good checkpoint -----------------------------------------------------------
def test_checkpoints_sort_by_step_and_ignore_temp_and_set_aside_files(tmp_path):
    for name in ("ckpt_10.pt", "ckpt_9.pt", checkpoint_name(11) + ".tmp", "ckpt_12.pt.corrupt", "ckpt_x.pt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["ckpt_9.pt", "ckpt_10.pt"]
    assert training.latest_checkpoint(tmp_path / "missing") is None


def test_truncated_and_empty_newest_fall_back_with_a_warning_naming_them(tmp_path, caplog):
    for step in (1, 2, 3):
        atomic_save({"step": step}, tmp_path / checkpoint_name(step))
    truncate(tmp_path / checkpoint_name(3))
    (tmp_path / checkpoint_name(2)).write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="mousefacelift.training"):
        path, state = load_latest_checkpoint(tmp_path)
    assert path.name == checkpoint_name(1) and state == {"step": 1}
    text = caplog.text
    assert checkpoint_name(3) in text and checkpoint_name(2) in text and "truncated or corrupt" in text
    # set aside: no longer resumed from, nor counted by keep-last pruning
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint_name(1), checkpoint_name(2) + ".corrupt",
                                                          checkpoint_name(3) + ".corrupt"]


def test_no_good_checkpoint_names_the_folder_and_none_at_all_is_none(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    (tmp_path / checkpoint_name(5)).write_bytes(b"")
    with pytest.raises(CheckpointError, match=f"no readable checkpoint in {tmp_path}"):
        load_latest_checkpoint(tmp_path)


def test_a_crafted_checkpoint_is_refused_and_its_code_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = crafted(tmp_path / checkpoint_name(2), marker)
    atomic_save({"step": 1}, tmp_path / checkpoint_name(1))
    with pytest.raises(UnsafeCheckpointError, match=f"refusing to load {path}"):
        load_checkpoint(path)
    with pytest.raises(UnsafeCheckpointError):  # no silent fall-back past a foreign file
        load_latest_checkpoint(tmp_path)
    with pytest.raises(UnsafeCheckpointError):  # a user-given GS-LRM file (init_checkpoint, 07, mfl infer)
        read_checkpoint(path)
    assert not marker.exists() and path.is_file()


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1)
    np.random.seed(2)
    random.seed(3)
    atomic_save({"rng": training.rng_state()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    training.set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0]) and np.array_equal(expected[1], again[1]) and expected[2] == again[2]


# -- a full disk ------------------------------------------------------------------------------------
@pytest.mark.parametrize("torch_wraps_it", [False, True])
def test_a_full_disk_is_named_and_leaves_no_temp_file(tmp_path, monkeypatch, torch_wraps_it):
    """torch.save into a file object on a full disk: the write raises OSError(ENOSPC), which torch
    (2.x) then hides behind a RuntimeError from closing its zip writer; both are reported alike."""
    path = tmp_path / checkpoint_name(2)
    atomic_save({"step": 1}, path)  # an earlier checkpoint under the same name stays intact
    real_save = torch.save

    def save_then_fill_the_disk(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)  # a checkpoint's worth of bytes went out before the disk filled up
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        finally:
            if torch_wraps_it:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", save_then_fill_the_disk)
    with pytest.raises(OSError) as err:
        atomic_save({"step": 2, "w": torch.zeros(1000)}, path)
    assert err.value.errno == errno.ENOSPC
    msg = str(err.value)
    assert str(path) in msg and "B free there" in msg and "disk is full" in msg and "no partial file" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert load_checkpoint(path) == {"step": 1}


def test_other_save_errors_pass_through_and_leave_no_temp_file(tmp_path, monkeypatch):
    def unpicklable(obj, f, *a, **kw):
        f.write(b"partial")
        raise TypeError("cannot pickle 'generator' object")

    monkeypatch.setattr(torch, "save", unpicklable)
    with pytest.raises(TypeError, match="generator"):
        atomic_save({"x": 1}, tmp_path / checkpoint_name(1))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rename_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / checkpoint_name(1)

    def refuse(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match=f"could not write checkpoint {path}.*Input/output error") as err:
        atomic_save({"step": 1}, path)
    assert err.value.errno == errno.EIO and "disk is full" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


# -- both trainers' resume paths ----------------------------------------------------------------------
def test_gslrm_resume_refuses_a_crafted_checkpoint(blobs, tmp_path):
    marker = tmp_path / "ran"
    crafted(tmp_path / "out" / checkpoint_name(7), marker)
    with pytest.raises(UnsafeCheckpointError, match=checkpoint_name(7)):
        gslrm_train.Trainer(gslrm_cfg(blobs, tmp_path / "out"))
    with pytest.raises(UnsafeCheckpointError):  # the weights to start from are read the same way
        gslrm_train.Trainer(gslrm_cfg(blobs, tmp_path / "other", init_checkpoint=str(tmp_path / "out" /
                                                                                    checkpoint_name(7))))
    assert not marker.exists()


def test_mvdiffusion_resume_refuses_a_crafted_checkpoint(mvd_data, tmp_path):
    marker = tmp_path / "ran"
    crafted(tmp_path / "out" / "checkpoints" / checkpoint_name(7), marker)
    with pytest.raises(UnsafeCheckpointError, match=checkpoint_name(7)):
        mvd_train.train(mvd_cfg(mvd_data, "out", steps=8))
    assert not marker.exists()


@pytest.mark.slow
def test_gslrm_resumes_past_a_truncated_newest_checkpoint_exactly(blobs, tmp_path, caplog):
    whole = gslrm_train.train(gslrm_cfg(blobs, tmp_path / "a", steps=3))
    gslrm_train.train(gslrm_cfg(blobs, tmp_path / "b", steps=3, stop_at_step=2, checkpoint_every=1))
    truncate(tmp_path / "b" / checkpoint_name(2))
    with caplog.at_level(logging.WARNING, logger="mousefacelift.training"):
        rest = gslrm_train.train(gslrm_cfg(blobs, tmp_path / "b", steps=3, checkpoint_every=1))
    assert checkpoint_name(2) in caplog.text and "truncated or corrupt" in caplog.text
    assert len(rest["losses"]) == 2  # steps 2 and 3 again, from step 1
    assert torch.allclose(torch.tensor(rest["losses"]), torch.tensor(whole["losses"][1:]), atol=1e-6, rtol=0)
    assert read_checkpoint(tmp_path / "b" / checkpoint_name(3))["fwdbwd_pass_step"] == 3


@pytest.mark.slow
def test_mvdiffusion_resumes_past_an_empty_newest_checkpoint(mvd_data, caplog):
    """(That a resume reproduces the uninterrupted run is test_mvdiffusion_train's; here: which one.)"""
    mvd_train.train(mvd_cfg(mvd_data, "b", steps=3, stop_at_step=2, checkpoint_every=1))
    (mvd_data / "b" / "checkpoints" / checkpoint_name(2)).write_bytes(b"")  # e.g. the power failed
    with caplog.at_level(logging.WARNING, logger="mousefacelift.training"):
        rest = mvd_train.train(mvd_cfg(mvd_data, "b", steps=3))
    assert checkpoint_name(2) in caplog.text and sorted(rest["losses"]) == [2, 3]
    state = load_checkpoint(mvd_data / "b" / "checkpoints" / checkpoint_name(3))  # weights_only loads it
    assert state["step"] == 3 and state["model"]  # every random draw is keyed by step: no global RNG state
