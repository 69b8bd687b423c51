#!/usr/bin/env bash
# The GPU reference run (issue 10): params/gpu.yaml end to end on one GPU.
#
#   scripts/gpu_reference.sh [NAME] [PARAMS] [SYNTHETIC_PARAMS]
#
# 1. notebooks 01-03 (data, cameras, preprocessing);
# 2. 04 MVDiffusion -> 05 generation beside 06 GS-LRM on the real samples (they only share notebook
#    01's samples; `mfl run` merges their records in runs/NAME/manifest.json);
# 3. notebook 07 without question 3 at once, beside 06 GS-LRM on the generated samples
#    (runs/NAME-synthetic); then 07 again with question 3; 4. `mfl bench` into runs/NAME/bench.
# Each step is an ordinary `mfl run`, so a step that failed can be re-run by hand with --overwrite.
# Measured on one H200 (runs/h200-reference/README.md): 01-03 5.4 min; 06 (real, 2000 steps) 17 min
# beside 04 (13 min) and 05 (8 min); 06 (synthetic) about 10 min more; bench 1.7 min. SYNTHETIC=0 skips
# 06 on generated samples (07 then runs without question 3): with BENCH=0, 31.5 min on one H200
# (01-03 5.8 min, 06 beside 04 -> 05 17 min, 07 6.9 min).
# Do not set MPLBACKEND=Agg for this: the notebooks switch back to inline figures, with a warning.
# Logs: runs/NAME/logs/. Set MFL="..." to choose the CLI (default: python3 -m mousefacelift.cli) and
# MFL_RUN_ARGS (e.g. "--kernel python3") for options passed to every `mfl run`; BENCH=0 skips step 4.
# MFL_GIT_COMMIT names the commit for the manifests of a copy (it wins over a .git there, which may be stale).
set -uo pipefail
name=${1:-h200-reference}
params=${2:-params/gpu.yaml}
synthetic=${3:-params/gpu-synthetic.yaml}
mfl=${MFL:-python3 -m mousefacelift.cli}
args=${MFL_RUN_ARGS:-}
run=runs/$name
say() { echo "[$(date +%H:%M:%S)] $*"; }

say "01-03 -> $run"
$mfl run "$params" --only 01,02,03 --name "$name" $args || { say "01-03 failed"; exit 1; }
mkdir -p "$run/logs"

say "06 (real) beside 04 -> 05; logs in $run/logs"
$mfl run "$params" --only 06 --name "$name" --overwrite $args > "$run/logs/06_real.log" 2>&1 &
real=$!
$mfl run "$params" --only 04,05 --name "$name" --overwrite $args > "$run/logs/04_05.log" 2>&1 &
generated=$!
wait $real; real_rc=$?
say "06 (real) exit $real_rc"
wait $generated; generated_rc=$?
say "04 -> 05 exit $generated_rc"
[ "$real_rc" -eq 0 ] || { say "no GS-LRM: no notebook 07"; exit 1; }

# 07 at once without question 3, so the run has its evaluation even if time runs out later;
# beside it, 06 on the generated samples; then 07 again with question 3.
without_q3=$run/logs/07_without_question_3.yaml
printf 'base: %s\n07_evaluation:\n  gslrm_synthetic_dir: ""\n' "$(realpath "$params")" > "$without_q3"
if [ "$generated_rc" -ne 0 ]; then  # no MVDiffusion pipeline: question 2 is skipped too
  printf '  mvdiffusion_dir: ""\n' >> "$without_q3"
fi
synth="" synthetic_rc=1
if [ "$generated_rc" -eq 0 ] && [ "${SYNTHETIC:-1}" != 0 ]; then
  say "06 (synthetic) beside 07 (without question 3)"
  $mfl run "$synthetic" --only 06 --from-run "$run" --name "$name-synthetic" $args > "$run/logs/06_synthetic.log" 2>&1 &
  synth=$!
fi
say "07 ($without_q3)"
$mfl run "$without_q3" --only 07 --name "$name" --overwrite $args > "$run/logs/07.log" 2>&1
say "07 exit $?"
if [ -n "$synth" ]; then
  wait $synth; synthetic_rc=$?
  say "06 (synthetic) exit $synthetic_rc"
fi
if [ "$synthetic_rc" -eq 0 ]; then
  say "07 with question 3 ($params)"
  $mfl run "$params" --only 07 --name "$name" --overwrite $args > "$run/logs/07_with_question_3.log" 2>&1
  say "07 exit $?"
fi
if [ "${BENCH:-1}" != 0 ]; then
  say "bench"
  $mfl bench --out "$run/bench" > "$run/logs/bench.log" 2>&1
  say "bench exit $?"
fi
$mfl list
