#!/usr/bin/env bash
# The GPU reference run (issues 9, 10): params/gpu.yaml end to end on one GPU.
#
#   scripts/gpu_reference.sh [NAME] [PARAMS] [SYNTHETIC_PARAMS]
#
# The steps start as soon as their inputs exist; the longest chain is 01 -> 04 -> 05 -> 06 (generated) -> 07:
# 1. notebook 01 (data); then, side by side, 02-03 (cameras, preprocessing), 06 GS-LRM on the real samples,
#    and 04 MVDiffusion -> 05 generation -> 06 GS-LRM on the generated samples (runs/NAME-synthetic).
#    The processes share only notebook 01's samples; `mfl run` merges their records in runs/NAME/manifest.json;
# 2. once 06 (real) is done and EARLY_EVAL=1 (the default), notebook 07 without question 3, so the run
#    has its evaluation even if time runs out later (it slows 06 on the generated samples);
# 3. notebook 07 with question 3 (trained on real vs on generated samples); 4. `mfl bench` into runs/NAME/bench.
# Each step is an ordinary `mfl run`, so a step that failed can be re-run by hand with --overwrite.
# Measured on one H200 (runs/h200-reference/README.md): 01 5.3-7 min; 06 (real, 2000 steps) 17 min beside
# 04 -> 05; 06 on the generated samples (7 min alone at 1000 steps, runs/h200-question3) and 07 about 15 min
# more; bench 1.7 min.
# SYNTHETIC=0 skips 05's GS-LRM and question 3. Do not set MPLBACKEND=Agg: the notebooks switch back to
# inline figures, with a warning. Logs: runs/NAME/logs/. MFL="..." chooses the CLI (default:
# python3 -m mousefacelift.cli); MFL_RUN_ARGS (e.g. "--kernel python3") is passed to every `mfl run`;
# BENCH=0 skips step 4. MFL_GIT_COMMIT names the commit for the manifests of a copy (it wins over a
# stale .git there). STAGGER_S (default 10) seconds pass between the side-by-side starts: Jupyter kernels
# started in the same second can draw the same free ports, and a notebook then reads another kernel's
# messages and fails with "Invalid Signature" (06 did, 22 s after starting beside 02-03 and 04; `mfl run` now
# runs such a notebook again once, and the stagger makes it rare).
set -uo pipefail
name=${1:-h200-reference}
params=${2:-params/gpu.yaml}
synthetic=${3:-params/gpu-synthetic.yaml}
mfl=${MFL:-python3 -m mousefacelift.cli}
args=${MFL_RUN_ARGS:-}
run=runs/$name
stagger=${STAGGER_S:-10}
say() { echo "[$(date +%H:%M:%S)] $*"; }

say "01 -> $run"
$mfl run "$params" --only 01 --name "$name" $args || { say "01 failed"; exit 1; }
mkdir -p "$run/logs"

# Side by side, each process's CPU threads get a share of the cores (a process's torch uses them all by default;
# in runs/h200-session-1 notebook 05's CPU comparison stalled for over 10 minutes beside 06's scoring and 07).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( ($(nproc) + 3) / 4 ))}
say "02-03, 06 (real) and 04 -> 05 -> 06 (generated) side by side, $OMP_NUM_THREADS CPU threads each; logs in $run/logs"
$mfl run "$params" --only 02,03 --name "$name" --overwrite $args > "$run/logs/02_03.log" 2>&1 &
cameras=$!
sleep "$stagger"
$mfl run "$params" --only 06 --name "$name" --overwrite $args > "$run/logs/06_real.log" 2>&1 &
real=$!
sleep "$stagger"
pipeline_done=$run/logs/04_05.done  # written once 05 has its samples: 07 may then answer question 2
rm -f "$pipeline_done"
generated_chain() {  # exit 0: done; 1: 04 or 05 failed; 2: 06 on the generated samples failed
  $mfl run "$params" --only 04,05 --name "$name" --overwrite $args > "$run/logs/04_05.log" 2>&1 || return 1
  touch "$pipeline_done"
  say "04 -> 05 done"
  [ "${SYNTHETIC:-1}" != 0 ] || return 0
  say "06 (generated samples) -> runs/$name-synthetic"
  $mfl run "$synthetic" --only 06 --from-run "$run" --name "$name-synthetic" $args \
    > "$run/logs/06_synthetic.log" 2>&1 || return 2
  say "06 (generated samples) done"
}
generated_chain &
generated=$!
wait $cameras; say "02-03 exit $?"
wait $real; real_rc=$?
say "06 (real) exit $real_rc"
[ "$real_rc" -eq 0 ] || { say "no GS-LRM: no notebook 07"; wait $generated; exit 1; }

# 07's parameters on top of $params. Without question 3, question 2 only once 04 -> 05 is done;
# with it, the synthetic GS-LRM is this run's own, whatever NAME is.
without_q3=$run/logs/07_without_question_3.yaml
with_q3=$run/logs/07_with_question_3.yaml
base=$(realpath --relative-to="$run/logs" "$params")  # relative to the params file, so the run folder names no machine path
printf 'base: %s\n07_evaluation:\n  gslrm_synthetic_dir: ../%s-synthetic/gslrm\n' "$base" "$name" > "$with_q3"
evaluated_with_q2=""  # "": 07 has not run; "yes" / "no": it ran with / without question 2
evaluate_without_q3() {
  printf 'base: %s\n07_evaluation:\n  gslrm_synthetic_dir: ""\n' "$base" > "$without_q3"
  if [ -f "$pipeline_done" ]; then evaluated_with_q2=yes
  else evaluated_with_q2=no; printf '  mvdiffusion_dir: ""\n' >> "$without_q3"; fi
  say "07 without question 3 ($without_q3)"
  $mfl run "$without_q3" --only 07 --name "$name" --overwrite $args > "$run/logs/07.log" 2>&1
  say "07 exit $?"
}
[ "${EARLY_EVAL:-1}" = 0 ] || evaluate_without_q3
wait $generated; generated_rc=$?
say "04 -> 05 -> 06 (generated) exit $generated_rc"
if [ "$generated_rc" -eq 0 ] && [ "${SYNTHETIC:-1}" != 0 ]; then
  say "07 with question 3 ($with_q3)"
  $mfl run "$with_q3" --only 07 --name "$name" --overwrite $args > "$run/logs/07_with_question_3.log" 2>&1
  say "07 exit $?"
elif [ -z "$evaluated_with_q2" ] || { [ "$evaluated_with_q2" = no ] && [ -f "$pipeline_done" ]; }; then
  evaluate_without_q3  # 07 has not run, or ran before MVDiffusion was ready
fi
if [ "${BENCH:-1}" != 0 ]; then
  say "bench"
  $mfl bench --out "$run/bench" > "$run/logs/bench.log" 2>&1
  say "bench exit $?"
fi
$mfl list
