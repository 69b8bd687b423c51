#!/usr/bin/env bash
# The demo's pretrained weights (weights/demo) on one GPU: params/pretrain-demo.yaml's notebook 01, then
# 04 (MVDiffusion) and 06 (GS-LRM) side by side, then `mfl weights export` into DEST.
#
#   scripts/pretrain_demo.sh [NAME] [DEST]        # default: pretrain-demo weights/demo
#
# Extra arguments for every `mfl run` go in MFL_RUN_ARGS (e.g. "--set 06_gslrm_finetune.time_limit_s=200");
# MFL chooses the CLI (default: python3 -m mousefacelift.cli). Logs: runs/NAME/logs/. Each step is an
# ordinary `mfl run`, so a failed one can be re-run by hand with --overwrite; the export reads the
# finished run folder, so it can be repeated on its own.
set -uo pipefail
name=${1:-pretrain-demo}
dest=${2:-weights/demo}
params=${PARAMS:-params/pretrain-demo.yaml}
mfl=${MFL:-python3 -m mousefacelift.cli}
args=${MFL_RUN_ARGS:-}
run=runs/$name
say() { echo "[$(date +%H:%M:%S)] $*"; }

say "01 -> $run"
$mfl run "$params" --only 01 --name "$name" $args || { say "01 failed"; exit 1; }
mkdir -p "$run/logs"
say "04 and 06 side by side; logs in $run/logs"
$mfl run "$params" --only 04 --name "$name" --overwrite $args > "$run/logs/04.log" 2>&1 &
mvd=$!
$mfl run "$params" --only 06 --name "$name" --overwrite $args > "$run/logs/06.log" 2>&1 &
lrm=$!
wait $mvd; mvd_rc=$?
wait $lrm; lrm_rc=$?
say "04 exit $mvd_rc, 06 exit $lrm_rc"
[ "$mvd_rc" -eq 0 ] && [ "$lrm_rc" -eq 0 ] || exit 1
$mfl weights export "$run" "$dest"
