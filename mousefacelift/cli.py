"""The `mfl` command.

    mfl run PARAMS.yaml [--only 01,06] [--from-run DIR] [--name NAME] [--overwrite] [-v] [--set KEY=VALUE]
    mfl run PARAMS.yaml --sweep NN_notebook.KEY=V1,V2 [--name SWEEP]     (or several PARAMS.yaml)
    mfl list [--runs DIR] [--csv | --json]
    mfl bench [--only NAME,...] [--out DIR]
    mfl infer IMAGE --mvdiffusion DIR --gslrm CKPT --out DIR [--camera SAMPLE_DIR:VIEW]
    mfl infer --recording DIR --frames A:B --gslrm CKPT --out DIR
    mfl doctor RECORDING [--frames N]
    mfl weights export RUN DEST [--gslrm-run RUN] [--mvdiffusion-run RUN]  |  mfl weights check DEST
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _cmd_run(args) -> int:
    from . import runlog, runner, sweep
    from .params import ParamsError

    swept = len(args.params) > 1 or bool(args.sweep)
    plans = []
    try:  # every run is validated and its folder claimed before any notebook runs
        if swept:
            folder = args.name or ("-".join(Path(p).stem for p in args.params) + ("-sweep" if args.sweep else ""))
            runs_root = runner.run_folder(args.runs, folder)
            members = sweep.expand(args.params, args.sweep, args.set)
        else:
            runs_root, members = args.runs, [sweep.Member(args.name, Path(args.params[0]), args.set)]
        for m in members:
            plans.append(runner.plan_run(m.params_file, only=args.only, from_run=args.from_run, name=m.name,
                                         overwrite=args.overwrite, runs_root=runs_root,
                                         notebooks_dir=args.notebooks, kernel=args.kernel, overrides=m.overrides))
        for plan in plans:
            runner.claim(plan)  # the run folder and its notebooks' locks, held until the run ends
    except (ParamsError, runner.RunError) as e:
        for plan in plans:
            runner.release(plan)
        print(f"mfl run: {e}\nNothing was executed.", file=sys.stderr)
        return 2
    if swept:
        print(f"mfl run: a sweep of {len(plans)} runs -> {runs_root}/ (compare: mfl list --runs {runs_root} --csv)")
    failed = 0
    for i, plan in enumerate(plans):
        n = len(plan.stems)
        if swept:  # how long the notebooks took in the sweep's earlier runs, else beside the sweep's folder
            plan.estimates = (runlog.previous_durations(runs_root, plan.params_file.name)
                              or runlog.previous_durations(args.runs, plan.params_file.name))
        print(f"mfl run{f' {i + 1}/{len(plans)}' if swept else ''}: {n} notebook{'s' * (n != 1)} -> {plan.run_dir} "
              f"(cell logs in {plan.run_dir / 'logs'})")
        try:
            manifest = runner.execute(plan, args.verbose, runlog.Console(plan.stems, plan.estimates, args.verbose))
        except runner.RunError as e:
            print(f"mfl run: {e}\nReport: {plan.run_dir / 'report.html'}", file=sys.stderr)
            failed += 1
            continue
        seconds = sum(manifest["notebooks"][s].get("duration_s", 0) for s in plan.stems)
        print(f"mfl run: ok in {runlog.format_seconds(seconds)}. Report: {plan.run_dir / 'report.html'}")
    if swept and failed:
        print(f"mfl run: {failed} of {len(plans)} runs failed", file=sys.stderr)
    return 1 if failed else 0


def _cmd_report(args) -> int:
    from .runner import write_report

    run_dir = Path(args.run)
    if (run_dir / "manifest.json").is_file():
        print(f"mfl report: {write_report(run_dir)}")
        return 0
    print(f"mfl report: {run_dir} is not a run folder (no manifest.json)", file=sys.stderr)
    return 2


def _cmd_list(args) -> int:
    from .runner import list_runs

    rows = list_runs(args.runs)
    if args.csv or args.json:
        import json

        from .sweep import runs_table, write_csv

        columns, records = runs_table(rows, args.params)
        if args.json:
            print(json.dumps(records, indent=1, default=str))
        else:
            write_csv(columns, records, sys.stdout)
        return 0
    if not rows:
        print(f"no runs under {args.runs}/")
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'run':<{w}}  {'status':<11} {'seconds':>8}  headline")
    for r in rows:
        dur = f"{r['duration_s']:.0f}" if isinstance(r.get("duration_s"), (int, float)) else "-"
        print(f"{r['name']:<{w}}  {str(r['status']):<11} {dur:>8}  {r['headline']}")
    return 0


def _cmd_bench(args) -> int:
    from . import bench

    bench.main(only=args.only, out_dir=args.out)
    return 0


def _cmd_infer(args) -> int:
    from . import infer
    from .stage import resolve_device

    try:
        cfg = infer.InferConfig(device=resolve_device(args.device), seed=args.seed, sampler=args.sampler,
                                steps=args.steps, guidance_scale=args.guidance_scale,
                                turntable_frames=args.turntable_frames, render_size=args.render_size, fps=args.fps,
                                attention=args.attention)
        if args.recording:
            if args.image or not args.frames:
                raise ValueError("--recording takes --frames A:B and no IMAGE")
            res = infer.infer_recording(args.recording, infer.parse_frames(args.frames), args.gslrm, args.out, cfg)
            print(f"mfl infer: {len(res['plys'])} frames -> {args.out} ({len(res['skipped'])} skipped; video "
                  f"{res['video']})")
            return 0 if res["plys"] else 1
        if not args.image or not args.mvdiffusion:
            raise ValueError("give IMAGE and --mvdiffusion DIR (or --recording DIR --frames A:B)")
        res = infer.infer_image(args.image, args.mvdiffusion, args.gslrm, args.out, args.camera, cfg)
    except (FileNotFoundError, ValueError) as e:
        print(f"mfl infer: {e}", file=sys.stderr)
        return 2
    print(f"mfl infer: {res['n_gaussians']} Gaussians -> {res['ply']}, video {res['video']}")
    return 0


def _cmd_doctor(args) -> int:
    import json

    from .data.calibration_check import check_calibration
    from .data.recording import RecordingError

    path = Path(args.recording)
    extraction = path / "data" / "extraction.json"
    if extraction.is_file():  # a run folder: check the recording it was extracted from
        path = Path(json.loads(extraction.read_text())["summary"]["recording"])
    try:
        report = check_calibration(path, n_frames=args.frames)
    except RecordingError as e:
        print(f"mfl doctor: {e}", file=sys.stderr)
        return 2
    print(report.text())
    return 0 if report.ok else 1


def _cmd_weights(args) -> int:
    from . import pretrained

    try:
        if args.action == "export":
            pretrained.export(args.run, args.dest, args.gslrm_run, args.mvdiffusion_run)
        print(pretrained.describe(args.dest))
    except (FileNotFoundError, ValueError) as e:
        print(f"mfl weights {args.action}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mfl", description="mouse-facelift: run the notebooks, list runs, benchmark")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the numbered notebooks with a params YAML into runs/<name>/")
    p.add_argument("params", nargs="+", help="params YAML (e.g. params/demo.yaml); several: a sweep over them")
    p.add_argument("--only", help="comma-separated notebook numbers or names, e.g. 01,06")
    p.add_argument("--from-run", dest="from_run", help="earlier run folder to read missing inputs from")
    p.add_argument("--name", help="run folder name under runs/ (default: the params file's name)")
    p.add_argument("--overwrite", action="store_true", help="re-execute the selected notebooks in an existing run folder")
    p.add_argument("--runs", default="runs", help="folder holding the run folders (default: runs)")
    p.add_argument("--notebooks", default=None, help="folder of numbered notebooks (default: ./notebooks)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel to use (default: the one each notebook names)")
    p.add_argument("--set", action="append", default=[], metavar="[NN_notebook.]KEY=VALUE",
                   help="override one parameter (repeatable; VALUE read as YAML; checked like the params file), "
                        "e.g. --set 06_gslrm_finetune.steps=500")
    p.add_argument("--sweep", action="append", default=[], metavar="[NN_notebook.]KEY=V1,V2,...",
                   help="one run per value (repeatable: every combination) into runs/<name>/<key=value>/, "
                        "e.g. --sweep 06_gslrm_finetune.lr=1e-4,3e-4 (--name: the sweep's folder)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show every cell's log on the console too (it always goes to runs/<name>/logs/)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("list", help="runs with their status, duration and headline results")
    p.add_argument("--runs", default="runs")
    p.add_argument("--csv", action="store_true", help="a table: one row per run, parameters and headline results "
                                                       "as columns (NN_notebook.key)")
    p.add_argument("--json", action="store_true", help="the same table as JSON records")
    p.add_argument("--params", default="varied", choices=["varied", "all"],
                   help="parameter columns of --csv/--json: those that differ between the runs or were set "
                        "with --set/--sweep (default), or every parameter the params files set")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("report", help="(re)write a run folder's report.html and the HTML export of each notebook")
    p.add_argument("run", help="run folder, e.g. runs/h200-reference (committed runs keep only the notebooks)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("bench", help="benchmarks of every stage on this machine -> bench.json + bench.md")
    p.add_argument("--only", help="comma-separated benchmark names (see `mfl bench --only help`)")
    p.add_argument("--out", default="bench", help="output folder (default: bench/)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("infer", help="one RGBA image -> multi-view -> Gaussians (like FaceLift), or a recording's "
                                     "frame range -> one PLY per frame")
    p.add_argument("image", nargs="?", help="RGBA PNG of the reference view (alpha = mask)")
    p.add_argument("--mvdiffusion", help="MVDiffusion pipeline folder (notebook 04: runs/<run>/mvdiffusion/pipeline)")
    p.add_argument("--gslrm", required=True, help="GS-LRM checkpoint file or folder (latest ckpt_*.pt)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--camera", default="", help="SAMPLE_DIR:VIEW camera of the image and the rig to generate "
                                                "(default: FaceLift's canonical front camera and 6-view rig)")
    p.add_argument("--recording", help="MAMMAL-format recording folder: reconstruct --frames from all real views")
    p.add_argument("--frames", help="frame range A:B (frames A..B-1) or A:B:STEP, with --recording")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    p.add_argument("--seed", type=int, default=0, help="MVDiffusion noise seed")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "dpm"])
    p.add_argument("--steps", type=int, default=50, help="denoising steps")
    p.add_argument("--guidance-scale", dest="guidance_scale", type=float, default=3.0)
    p.add_argument("--turntable-frames", dest="turntable_frames", type=int, default=120)
    p.add_argument("--render-size", dest="render_size", type=int, default=0, help="video size (0 = GS-LRM size)")
    p.add_argument("--fps", type=int, default=30)
    p.add_argument("--attention", default="auto", choices=["auto", "sdpa", "fa4", "fp8"],
                   help="GS-LRM attention kernel (auto: FlashAttention-4 where installed and checked, else sdpa; "
                        "fp8: the Triton fp8 forward, measured slower than sdpa on an H200)")
    p.set_defaults(func=_cmd_infer)

    p = sub.add_parser("doctor", help="check that a recording's new_cam.pkl fits its videos (units, conventions, "
                                      "camera order, Z-up); exits 1 on a failure, naming the fix")
    p.add_argument("recording", help="recording folder (videos_undist/, simpleclick_undist/, new_cam.pkl), or a run "
                                     "folder: the recording its data/extraction.json names")
    p.add_argument("--frames", type=int, default=12, help="frames decoded, spread over the recording (default 12)")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("weights", help="export a run's GS-LRM and MVDiffusion as small bf16 weights with provenance "
                                       "(what params/demo.yaml fine-tunes from), or check such a folder")
    p.add_argument("action", choices=["export", "check"])
    p.add_argument("run", nargs="?", help="export: the run folder that ran notebooks 04 and 06")
    p.add_argument("dest", help="the weights folder, e.g. weights/demo")
    p.add_argument("--gslrm-run", dest="gslrm_run", help="export: take GS-LRM from this run folder instead")
    p.add_argument("--mvdiffusion-run", dest="mvdiffusion_run", help="export: take MVDiffusion from this run folder instead")
    p.set_defaults(func=_cmd_weights)

    args = parser.parse_args(argv)
    if args.command == "weights" and args.action == "export" and not args.run:
        parser.error("mfl weights export needs RUN and DEST")
    quiet = args.command == "run" and not args.verbose  # `mfl run` shows one line per notebook
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
