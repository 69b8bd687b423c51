"""The `mfl` command.

    mfl run PARAMS.yaml [--only 01,06] [--from-run DIR] [--name NAME] [--overwrite]
    mfl list [--runs DIR]
    mfl bench [--only NAME,...] [--out DIR]
"""
from __future__ import annotations

import argparse
import logging
import sys


def _cmd_run(args) -> int:
    from . import runner
    from .params import ParamsError

    try:
        plan = runner.plan_run(args.params, only=args.only, from_run=args.from_run, name=args.name,
                               overwrite=args.overwrite, runs_root=args.runs, notebooks_dir=args.notebooks,
                               kernel=args.kernel)
    except (ParamsError, runner.RunError) as e:
        print(f"mfl run: {e}\nNothing was executed.", file=sys.stderr)
        return 2
    print(f"mfl run: {', '.join(plan.stems)} -> {plan.run_dir}")
    try:
        manifest = runner.execute(plan)
    except runner.RunError as e:
        print(f"mfl run: {e}\nReport: {plan.run_dir / 'report.html'}", file=sys.stderr)
        return 1
    print(f"mfl run: ok in {manifest['duration_s']:.1f} s. Report: {plan.run_dir / 'report.html'}")
    return 0


def _cmd_list(args) -> int:
    from .runner import list_runs

    rows = list_runs(args.runs)
    if not rows:
        print(f"no runs under {args.runs}/")
        return 0
    w = max(len(r["name"]) for r in rows)
    print(f"{'run':<{w}}  {'status':<8} {'seconds':>8}  headline")
    for r in rows:
        dur = f"{r['duration_s']:.0f}" if isinstance(r.get("duration_s"), (int, float)) else "-"
        print(f"{r['name']:<{w}}  {str(r['status']):<8} {dur:>8}  {r['headline']}")
    return 0


def _cmd_bench(args) -> int:
    from . import bench

    bench.main(only=args.only, out_dir=args.out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mfl", description="mouse-facelift: run the notebooks, list runs, benchmark")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="execute the numbered notebooks with a params YAML into runs/<name>/")
    p.add_argument("params", help="params YAML (e.g. params/demo.yaml)")
    p.add_argument("--only", help="comma-separated notebook numbers or names, e.g. 01,06")
    p.add_argument("--from-run", dest="from_run", help="earlier run folder to read missing inputs from")
    p.add_argument("--name", help="run folder name under runs/ (default: the params file's name)")
    p.add_argument("--overwrite", action="store_true", help="re-execute the selected notebooks in an existing run folder")
    p.add_argument("--runs", default="runs", help="folder holding the run folders (default: runs)")
    p.add_argument("--notebooks", default=None, help="folder of numbered notebooks (default: ./notebooks)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel to use (default: the one each notebook names)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("list", help="runs with their status, duration and headline results")
    p.add_argument("--runs", default="runs")
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("bench", help="benchmarks of every stage on this machine -> bench.json + bench.md")
    p.add_argument("--only", help="comma-separated benchmark names (see `mfl bench --only help`)")
    p.add_argument("--out", default="bench", help="output folder (default: bench/)")
    p.set_defaults(func=_cmd_bench)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
