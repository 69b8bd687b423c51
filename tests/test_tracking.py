"""W&B runs are named and grouped after the `mfl run` they belong to (with a stand-in wandb module)."""
import json
import sys
import types

import pytest

from mousefacelift.tracking import Tracker, TrackingConfig


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []

    class Run:
        def __init__(self, **kw):
            self.name, self.logged = kw["name"], []

        def log(self, scalars, step):
            self.logged.append((step, scalars))

        def finish(self):
            pass

    def init(**kw):
        calls.append(kw)
        return Run(**kw)

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the test session turns W&B off; this fake is offline
    return calls


def test_the_wandb_run_is_named_and_grouped_after_the_mfl_run(tmp_path, fake_wandb):
    run = tmp_path / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text(json.dumps({"name": "demo"}))
    tracker = Tracker.create(TrackingConfig(mode="offline"), run / "gslrm", name="gslrm", params={"lr": 1e-3})
    tracker.log({"loss": 0.5}, step=3)
    tracker.finish()
    (kw,) = fake_wandb
    assert kw["name"] == "demo/gslrm" and kw["group"] == "demo" and kw["job_type"] == "gslrm"
    assert kw["mode"] == "offline" and kw["dir"] == str(run / "gslrm") and kw["config"] == {"lr": 1e-3}
    assert json.loads((run / "gslrm" / "metrics.jsonl").read_text()) == {"step": 3, "loss": 0.5}


def test_outside_a_run_folder_the_name_is_the_trainers(tmp_path, fake_wandb):
    Tracker.create(TrackingConfig(mode="offline"), tmp_path / "out", name="gslrm")
    assert fake_wandb[0]["name"] == "gslrm" and fake_wandb[0]["group"] is None
    assert Tracker.mfl_run_name(tmp_path) is None
