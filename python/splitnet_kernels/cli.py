"""The command line: `splitnet-kernels info` and `splitnet-kernels bench`."""

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="splitnet-kernels", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    info_parser = commands.add_parser("info", help="version, ISA and backends")
    info_parser.add_argument("--json", action="store_true", help="print JSON")
    info_parser.set_defaults(run=_info)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
