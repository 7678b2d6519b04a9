"""The command line: `splitnet-kernels info`, `bench` and `experiment`."""

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
    from . import benchmarks

    workloads = [w.strip() for chunk in args.workload for w in chunk.split(",") if w.strip()] or benchmarks.WORKLOADS
    benchmarks.run(workloads, quick=args.quick, json_path=args.json, plot_path=args.plot,
                   show_progress=not args.no_progress)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="splitnet-kernels", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    info_parser = commands.add_parser("info", help="version, ISA and backends")
    info_parser.add_argument("--json", action="store_true", help="print JSON")
    info_parser.set_defaults(run=_info)
    bench_parser = commands.add_parser("bench", help="workloads W1-W7 against the floors and the peers")
    bench_parser.add_argument("--workload", action="append", default=[], metavar="W",
                              help="W1..W7, repeatable or comma-separated (default: all)")
    bench_parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench_parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    bench_parser.add_argument("--plot", metavar="PATH", help="write W7 as a log-log PNG")
    bench_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench_parser.set_defaults(run=_bench)
    from . import experiment

    experiment.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
