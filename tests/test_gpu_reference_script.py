"""scripts/gpu_reference.sh's orchestration, with a stand-in for the `mfl` CLI that records its
calls. The stages themselves are tested elsewhere."""
import os
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_reference.sh"

FAKE_MFL = """#!/usr/bin/env bash
# records "<args>"; fails when the call's --only list is $FAIL_ONLY, sleeps a second when "<--only>@<--name>" is $SLOW_ONLY
if [ "$1" = run ]; then
  name=""; only=""; prev=""
  for a in "$@"; do
    [ "$prev" = --name ] && name=$a
    [ "$prev" = --only ] && only=$a
    prev=$a
  done
  mkdir -p "runs/$name"
  [ -n "${SLOW_ONLY:-}" ] && [ "$only@$name" = "$SLOW_ONLY" ] && sleep 1
  echo "$*" >> "$CALLS"
  [ -n "${FAIL_ONLY:-}" ] && [ "$only" = "$FAIL_ONLY" ] && exit 1
else
  echo "$*" >> "$CALLS"
fi
exit 0
"""


def run_script(tmp_path, **env):
    fake = tmp_path / "fake_mfl"
    fake.write_text(FAKE_MFL)
    fake.chmod(0o755)
    (tmp_path / "params").mkdir(exist_ok=True)
    (tmp_path / "params" / "gpu.yaml").write_text("device: cuda\n")
    calls = tmp_path / "calls.txt"
    calls.write_text("")
    proc = subprocess.run(["bash", str(SCRIPT), "ref"], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "MFL": str(fake), "CALLS": str(calls), "STAGGER_S": "0", **env}, timeout=60)
    return proc, calls.read_text().splitlines()


def runs_of(calls):
    """The (--only, --name, params file) of each `run` call, in order."""
    out = []
    for c in calls:
        args = c.split()
        if args[0] == "run":
            out.append((args[args.index("--only") + 1], args[args.index("--name") + 1], Path(args[1]).name))
    return out


def evaluations(runs):
    return [r[2] for r in runs if r[0] == "07"]


def test_full_order_with_question_3_and_bench(tmp_path):
    proc, calls = run_script(tmp_path, SLOW_ONLY="06@ref")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    runs = runs_of(calls)
    assert runs[0] == ("01", "ref", "gpu.yaml")
    # 04 -> 05 finished before the (slow) 06 on real samples; 06 on the generated ones followed at once
    assert runs[1:4] == [("02,03", "ref", "gpu.yaml"), ("04,05", "ref", "gpu.yaml"),
                         ("06", "ref-synthetic", "gpu-synthetic.yaml")]
    assert runs[4] == ("06", "ref", "gpu.yaml")
    assert evaluations(runs) == ["07_without_question_3.yaml", "07_with_question_3.yaml"]
    assert calls[-2].startswith("bench --out runs/ref/bench") and calls[-1] == "list"
    first_07 = (tmp_path / "runs/ref/logs/07_without_question_3.yaml").read_text()
    assert 'gslrm_synthetic_dir: ""' in first_07 and "mvdiffusion_dir" not in first_07
    q3 = (tmp_path / "runs/ref/logs/07_with_question_3.yaml").read_text()
    assert "gslrm_synthetic_dir: ../ref-synthetic/gslrm" in q3  # this run's own, not params/gpu.yaml's
    assert q3.startswith("base: ../../../params/gpu.yaml\n")  # relative to the file: no machine path in the run
    assert (tmp_path / "runs/ref/logs" / q3.split()[1]).resolve() == tmp_path / "params/gpu.yaml"


def test_early_eval_off_evaluates_once_with_question_3(tmp_path):
    proc, calls = run_script(tmp_path, EARLY_EVAL="0", BENCH="0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert evaluations(runs_of(calls)) == ["07_with_question_3.yaml"]


@pytest.mark.parametrize("env", [{"SYNTHETIC": "0", "BENCH": "0", "SLOW_ONLY": "06@ref"},
                                 {"FAIL_ONLY": "04,05", "BENCH": "0"},
                                 {"SYNTHETIC": "0", "BENCH": "0", "EARLY_EVAL": "0"}],
                         ids=["SYNTHETIC=0", "04-05 failed", "SYNTHETIC=0 EARLY_EVAL=0"])
def test_without_generated_samples_07_runs_once_without_question_3(tmp_path, env):
    proc, calls = run_script(tmp_path, **env)
    runs = runs_of(calls)
    assert evaluations(runs) == ["07_without_question_3.yaml"]
    assert not any(r[1] == "ref-synthetic" for r in runs)
    assert not any(c.startswith("bench") for c in calls)
    first_07 = (tmp_path / "runs/ref/logs/07_without_question_3.yaml").read_text()
    assert ('mvdiffusion_dir: ""' in first_07) == ("FAIL_ONLY" in env)  # no pipeline: no question 2 either


def test_07_that_ran_before_mvdiffusion_was_ready_runs_again_with_question_2(tmp_path):
    proc, calls = run_script(tmp_path, SYNTHETIC="0", BENCH="0", SLOW_ONLY="04,05@ref")
    assert evaluations(runs_of(calls)) == ["07_without_question_3.yaml"] * 2
    assert "mvdiffusion_dir" not in (tmp_path / "runs/ref/logs/07_without_question_3.yaml").read_text()
    assert "07 exit" in proc.stdout


def test_no_gs_lrm_stops_before_07(tmp_path):
    proc, calls = run_script(tmp_path, FAIL_ONLY="06")
    assert proc.returncode == 1 and "no notebook 07" in proc.stdout
    assert not any(r[0] == "07" for r in runs_of(calls))
