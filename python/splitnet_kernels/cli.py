"""The command line: `splitnet-kernels info`, `bench` and `experiment`."""

# Every command's parser is declared here and its module is imported only when that command
# runs, so `info` loads neither the benchmarks nor the experiment (nor torch through it).

from __future__ import annotations

import argparse
import json
import sys


def _info(args) -> int:
    from . import info

    report = info()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"splitnet_kernels {report['version']}")
    print(f"ISA: detected {report['isa_detected']}, active {report['isa_active']}, "
          f"supported {', '.join(report['isa_supported']) or 'none'}")
    if report["isa_error"]:
        print(f"ISA error: {report['isa_error']}")
    print(f"default threads: {report['default_threads']}")
    print("backends:")
    for name, state in report["backends"].items():
        print(f"  {name:6s} {'available' if state['available'] else 'UNAVAILABLE':11s} {state['reason']}")
    return 0


def _bench(args) -> int:
    from .bench import driver

    workloads = [w.strip() for chunk in args.workload for w in chunk.split(",") if w.strip()] or driver.WORKLOADS
    driver.run(workloads, quick=args.quick, json_path=args.json, plot_path=args.plot,
               show_progress=not args.no_progress)
    return 0


def _experiment(args) -> int:
    from .experiment import Settings, campaign, run_experiment

    data = campaign.load(args.data) if args.data else None
    overrides = {"epochs": args.epochs} if args.epochs else {}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    run_experiment(data, seeds=args.seeds, quick=args.quick, variants=variants,
                   settings=Settings.default(args.quick, **overrides), show_progress=not args.no_progress,
                   json_path=args.json, plot_path=args.plot)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


EXPERIMENT_DESCRIPTION = """The blog's experiment end to end (`splitnet-kernels experiment`):
train a SplitNet with every metric kind on the same campaign data, then report quality per
objective and serving cost per kind.

Quality is measured through the serving path: the learned embeddings scored by sk.score / sk.topk
with each head's exported sk.Metric. Torch is imported only when the experiment runs.
"""
# The names of splitnet_kernels.experiment.VARIANTS, written out so that building the parser
# imports no experiment; tests/test_cli.py checks that the two agree.
EXPERIMENT_VARIANTS = ("dot", "scaled", "diagonal", "low_rank", "full", "scaled+obj", "diagonal+obj", "low_rank+obj",
                       "full+obj")


def _add_experiment_parser(commands):
    parser = commands.add_parser("experiment", help="train every metric kind on campaign data: quality and cost",
                                 description=EXPERIMENT_DESCRIPTION)
    parser.add_argument("--seeds", type=_positive, default=1, help="seeds (data, split, init); mean ± std when > 1")
    parser.add_argument("--quick", action="store_true", help="smaller data, fewer epochs")
    parser.add_argument("--epochs", type=_positive, help="training epochs (default 5, or 2 with --quick)")
    parser.add_argument("--variants", metavar="LIST",
                        help=f"comma-separated subset of: {', '.join(EXPERIMENT_VARIANTS)}")
    parser.add_argument("--data", metavar="PATH", help="your own data: .npz or .parquet directory "
                        "(fields in splitnet_kernels.experiment.CampaignData); default: synthetic, one set per seed")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write AUC (low-base-rate objective) against cost as PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_experiment)
    return parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="splitnet-kernels", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    info_parser = commands.add_parser("info", help="version, ISA and backends")
    info_parser.add_argument("--json", action="store_true", help="print JSON")
    info_parser.set_defaults(run=_info)
    bench_parser = commands.add_parser("bench", help="workloads W1-W8 against the floors and the peers")
    bench_parser.add_argument("--workload", action="append", default=[], metavar="W",
                              help="W1..W8, repeatable or comma-separated (default: all)")
    bench_parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench_parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    bench_parser.add_argument("--plot", metavar="PATH", help="write W7 as a log-log PNG")
    bench_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench_parser.set_defaults(run=_bench)
    _add_experiment_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
