"""What both trainers share: checkpoints (atomic writes, a full disk leaves no partial file;
weights_only reads, a crafted file cannot run code; resuming past a truncated or empty newest
checkpoint), the run settings of RunConfig (one name each, old names mapped) and the one launcher
(both trainers through it; no process of a stopped run left behind)."""
import dataclasses
import errno
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

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
    with pytest.raises(UnsafeCheckpointError):  # a user-given GS-LRM file (init_from, 07, mfl infer)
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
        gslrm_train.Trainer(gslrm_cfg(blobs, tmp_path / "other", init_from=str(tmp_path / "out" /
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


# -- the shared run settings (RunConfig) ------------------------------------------------------------
def test_both_trainers_share_one_name_per_run_setting():
    shared = {f.name for f in dataclasses.fields(training.RunConfig)}
    for cls in (gslrm_train.TrainConfig, mvd_train.TrainConfig):
        assert issubclass(cls, training.RunConfig)
        names = {f.name for f in dataclasses.fields(cls)}
        assert shared <= names and not names & set(training.OLD_NAMES)
    # each trainer keeps its own defaults where they differ
    gs = gslrm_train.TrainConfig(out_dir="o", data_root="d", train_split="s")
    mv = mvd_train.TrainConfig(out_dir="o")
    assert (gs.precision, gs.keep_last, gs.steps, gs.device) == ("bf16", 3, 10000, "auto")
    assert (mv.precision, mv.keep_last, mv.steps, mv.device) == ("fp32", 2, 3000, "auto")
    assert gs.checkpoint_dir.as_posix() == "o" and mv.checkpoint_dir.as_posix() == "o/checkpoints"


@pytest.mark.parametrize("make", [lambda **kw: gslrm_train.TrainConfig(data_root="d", train_split="s", **kw),
                                  lambda **kw: mvd_train.TrainConfig(**kw)], ids=["gslrm", "mvdiffusion"])
def test_run_settings_are_checked_alike(make):
    with pytest.raises(ValueError, match=r"TrainConfig.precision 'fp16' is not one of \('bf16', 'fp32'\)"):
        make(out_dir="o", precision="fp16")
    with pytest.raises(ValueError, match=r"train.TrainConfig.out_dir is empty"):
        make(out_dir="")
    with pytest.raises(ValueError, match="keep_last = -1 is out of range"):
        make(out_dir="o", keep_last=-1)


def test_old_names_of_an_earlier_run_folder_are_read_with_a_warning(tmp_path, caplog):
    """A train_config.json written before the names were unified still loads (each old name mapped,
    with a warning naming the file); an old name next to its new one is an error naming both."""
    old_gs = {"output_dir": str(tmp_path / "g"), "data_root": "d", "train_split": "s", "init_checkpoint": "w.pt",
              "bf16": False, "keep_last": 1}
    (tmp_path / "gs.json").write_text(json.dumps(old_gs))
    with caplog.at_level(logging.WARNING, logger="mousefacelift.training"):
        gs = gslrm_train.TrainConfig.from_json(tmp_path / "gs.json")
    assert (gs.out_dir, gs.init_from, gs.precision, gs.keep_last) == (str(tmp_path / "g"), "w.pt", "fp32", 1)
    assert "gs.json: 'output_dir' is now called 'out_dir'" in caplog.text
    assert "'bf16' is now called 'precision' (read as precision = 'fp32')" in caplog.text
    mv = mvd_train.config_from_dict({"out_dir": "m", "keep_checkpoints": 5, "mixed_precision": "no"})
    assert (mv.keep_last, mv.precision) == (5, "fp32")
    assert mvd_train.config_from_dict({"out_dir": "m", "mixed_precision": "bf16"}).precision == "bf16"
    with pytest.raises(ValueError, match="both 'output_dir' \\(the old name\\) and 'out_dir' are set"):
        gslrm_train.TrainConfig.from_dict({**old_gs, "out_dir": "x"})


def test_resolve_device_and_process_count(monkeypatch):
    from mousefacelift import launch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training.resolve_device("auto") == torch.device("cpu")
    assert training.resolve_device("cuda", local_rank=3) == torch.device("cuda", 3)  # torchrun: the local GPU
    assert training.resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert launch.resolve_nproc(0) == launch.resolve_nproc("all") == 4 and launch.resolve_nproc(2) == 2
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert launch.resolve_nproc(0) == 1  # no GPU: one process
    for bad in (-1, "two", 1.5):
        with pytest.raises(ValueError, match="nproc_per_node"):
            launch.resolve_nproc(bad)
    assert launch.command("mousefacelift.gslrm.train", "c.json", "torchrun", 4)[1:6] == [
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m"]


# -- the one launcher: no process of a run outlives it --------------------------------------------------
TREE = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # like a torchrun worker
print("pids", os.getpid(), child.pid, flush=True)
if sys.argv[1] == "die":
    os._exit(3)  # the parent dies, its worker keeps the output pipe open
time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has ended


def _gone(pids, within_s=10.0) -> bool:
    end = time.monotonic() + within_s
    while any(_alive(p) for p in pids) and time.monotonic() < end:
        time.sleep(0.1)
    return not any(_alive(p) for p in pids)


@pytest.mark.parametrize("how", ["interrupt", "exception", "parent_dies"])
def test_a_stopped_or_failed_launch_leaves_no_process_behind(tmp_path, monkeypatch, how):
    """The subprocess and the worker it started: both end when the notebook is interrupted while
    streaming, when streaming raises, and when the subprocess dies leaving its worker behind."""
    from mousefacelift import launch

    monkeypatch.setattr(launch, "TERMINATE_GRACE_S", 1.0)
    pids = []
    real_info = launch.log.info

    def watch(msg, *args):
        real_info(msg, *args)
        if msg == "[train] %s" and args[0].startswith("pids "):  # a line of the subprocess
            pids.extend(int(p) for p in args[0].split()[1:])
            assert _alive(pids[0]) or how == "parent_dies"
            assert _alive(pids[1])
            if how == "interrupt":
                raise KeyboardInterrupt
            if how == "exception":
                raise RuntimeError("the notebook's cell failed")

    monkeypatch.setattr(launch.log, "info", watch)
    cmd = [sys.executable, "-c", TREE, "die" if how == "parent_dies" else "wait"]
    expected = {"interrupt": KeyboardInterrupt, "exception": RuntimeError, "parent_dies": RuntimeError}[how]
    t0 = time.monotonic()
    with pytest.raises(expected) as err:
        launch._run_subprocess(cmd, tmp_path / "c.json", tmp_path / "train.log", 10.0, 5)
    assert len(pids) == 2 and _gone(pids), [p for p in pids if _alive(p)]
    assert time.monotonic() - t0 < 30
    if how == "parent_dies":
        assert "exit 3" in str(err.value) and "pids" in str(err.value)  # the log tail
    assert "pids" in (tmp_path / "train.log").read_text()


# -- both trainers through the one skeleton ---------------------------------------------------------
@pytest.mark.slow
def test_both_trainers_launch_in_process_through_one_skeleton(blobs, mvd_data, tmp_path):
    """launch(cfg, "inprocess") for each trainer: the resolved config round-trips from
    train_config.json, the log file gets the trainer's records, the summary is read back."""
    from mousefacelift.launch import CONFIG_FILE, LOG_FILE, launch

    for cfg in (gslrm_cfg(blobs, tmp_path / "gslrm", steps=1, device="cpu", keep_last=1, checkpoint_every=1),
                mvd_cfg(mvd_data, "mvd", steps=1, device="auto", keep_last=1)):
        summary = launch(cfg, "inprocess", nproc_per_node=0)  # 0 = every GPU: one process without a GPU
        out = Path(cfg.out_dir)
        assert summary["step"] == 1 and len(summary["losses"]) == 1
        assert type(cfg).from_json(out / CONFIG_FILE) == cfg
        assert "saved checkpoint" in (out / LOG_FILE).read_text()
        assert [p.name for p in list_checkpoints(cfg.checkpoint_dir)] == [checkpoint_name(1)]


@pytest.mark.slow
def test_resume_off_starts_over_in_both_trainers(blobs, mvd_data, tmp_path):
    """resume=False deletes an earlier run's checkpoints (a stale higher step would outrank the new
    ones at the next resume), after the weights to start from were read."""
    gs = gslrm_cfg(blobs, tmp_path / "gslrm", steps=2, checkpoint_every=1, keep_last=0)
    gslrm_train.train(gs)
    init = tmp_path / "gslrm" / checkpoint_name(2)
    again = gslrm_train.train(dataclasses.replace(gs, steps=1, resume=False, init_from=str(init)))
    assert again["step"] == 1 and [p.name for p in list_checkpoints(gs.checkpoint_dir)] == [checkpoint_name(1)]
    mv = mvd_cfg(mvd_data, "mvd", steps=2, checkpoint_every=1, keep_last=0)
    mvd_train.train(mv)
    mvd_train.train(dataclasses.replace(mv, steps=1, resume=False))
    assert [p.name for p in list_checkpoints(mv.checkpoint_dir)] == [checkpoint_name(1)]


@pytest.mark.parametrize("trainer", [gslrm_train, mvd_train])
def test_cudnn_search_is_a_run_setting_applied_on_cuda_only(monkeypatch, tmp_path, trainer):
    """Both trainers' configs carry ``cudnn_benchmark`` (one default, in RunConfig); configure_backends
    sets cuDNN's search from it on a CUDA device and leaves the process alone on a CPU."""
    extra = {"data_root": "unused", "train_split": "unused"} if trainer is gslrm_train else {}
    cfg = trainer.TrainConfig(out_dir=str(tmp_path), **extra)
    assert cfg.cudnn_benchmark is True
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    training.configure_backends(cfg, torch.device("cpu"))
    assert torch.backends.cudnn.benchmark is False
    training.configure_backends(cfg, torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is True
    training.configure_backends(dataclasses.replace(cfg, cudnn_benchmark=False), torch.device("cuda"))
    assert torch.backends.cudnn.benchmark is False
