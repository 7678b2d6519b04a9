"""The command line: `splitnet-kernels info`, `bench`, `experiment` and `offline`."""

# Every command lives here: its parser and what it does with the arguments. The modules doing the
# work (benchmark/, experiment/, _offline.py, distributed.py) are imported only when their command
# runs, so `info` loads neither the benchmarks nor the experiment (nor torch through it), and none
# of them imports this module.

from __future__ import annotations

import argparse
import json
import sys

from ._metric import KINDS


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


# The workloads of `splitnet-kernels bench` alone (benchmark.driver.DEFAULT_WORKLOADS), written out so
# that building the parser imports no benchmark; tests/test_cli.py checks that the two agree.
BENCH_DEFAULT = ("W1", "W2", "W4", "W7", "W8", "W9")


def _bench(args) -> int:
    from .benchmark import driver

    named = [w.strip() for chunk in args.workload for w in chunk.split(",") if w.strip()]
    try:
        driver.selection(named, args.full, args.plot)  # bad arguments: one line, before any timing
    except ValueError as error:
        print(f"splitnet-kernels bench: error: {error}", file=sys.stderr)
        return 2
    driver.run(named, full=args.full, quick=args.quick, json_path=args.json, plot_path=args.plot,
               show_progress=not args.no_progress)
    return 0


def _experiment(args) -> int:
    from .experiment import Settings, campaign, run_experiment

    data = campaign.load(args.data) if args.data else None
    settings = Settings.default(args.quick)
    overrides = {name: value for name, value in (("seeds", args.seeds), ("max_epochs", args.epochs),
                                                 ("weight_decay", args.weight_decay), ("workers", args.workers))
                 if value is not None}
    if args.ads_see_objective:
        overrides["ads_see_objective"] = True
    if args.no_sweeps:
        overrides.update(off_diagonal=(), data_sizes=())
    if args.outcomes:
        overrides["campaign"] = {**settings.campaign, "outcomes": args.outcomes}
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    run_experiment(data, variants=variants, settings=Settings.default(args.quick, **overrides),
                   show_progress=not args.no_progress, json_path=args.json, plot_path=args.plot)
    return 0


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(text)
    return value


def _offline_command(args) -> int:
    try:
        return _run_offline(args)
    except (ImportError, ValueError, TypeError, OSError) as error:  # bad input or a missing extra: one line
        print(f"splitnet-kernels offline: error: {error}", file=sys.stderr)
        return 2


def _run_offline(args) -> int:
    """Builds the job from the arguments (_add_offline_parser declares them), every check before
    any row is read, then runs it on the chosen engine: the local one (_offline.run_local) or Ray
    (distributed.run_ray)."""
    from . import _offline as engine  # pyarrow's absence is an ImportError naming the extra

    if args.engine == "local" and (args.address or args.concurrency):
        raise ValueError("--address and --concurrency are for --engine ray")
    metric = engine.load_metric(args.metric) if args.metric else None
    threads = args.threads if args.threads or args.engine == "local" else 1  # on Ray: one thread per actor
    batch_rows = args.batch_rows or engine.BATCH_ROWS
    job: engine.TopkBatch | engine.ScoreBatch
    if args.pairs:
        if args.candidates or args.k is not None or args.offsets:
            raise ValueError("--pairs scores the pairs as given: --candidates, --k and --offsets are for top-k")
        job = engine.ScoreBatch(metric, user_column=args.user_column or "user", ad_column=args.ad_column,
                                objective_column=args.objective_column, bid_column=args.bid_column,
                                output=args.output, threads=threads, keep_embeddings=False)
    else:
        if not args.candidates or args.k is None:
            raise ValueError("--candidates and --k are needed (or --pairs to score pairs)")
        job = engine.TopkBatch(args.candidates, args.k, metric, user_column=args.user_column or "embedding",
                               output=args.output, offsets=args.offsets, threads=threads, keep_embeddings=False)
    if args.engine == "ray":
        from .distributed import run_ray

        rows = run_ray(job, args.users, args.out, address=args.address, batch_size=batch_rows,
                       concurrency=args.concurrency)
    else:
        rows = engine.run_local(job, args.users, args.out, batch_rows=batch_rows, show_progress=not args.no_progress)
    print(f"{rows:,} rows -> {args.out}")
    return 0


def _add_offline_parser(commands):
    parser = commands.add_parser("offline", help="top-k (or pair scores) for a Parquet of users, locally or on Ray",
                                 description="Offline scoring: Parquet in, Parquet out (docs/offline.md).")
    parser.add_argument("--users", required=True, nargs="+", metavar="PATH", help="Parquet file(s) or folder")
    parser.add_argument("--candidates", nargs="+", metavar="PATH",
                        help="a saved candidate set (.skc) or live set (ids: its ad ids), or shards of either")
    parser.add_argument("--offsets", type=int, nargs="+", metavar="N",
                        help="each shard's first id (default: the rows of the shards before it; not for live sets)")
    parser.add_argument("--k", type=_positive, help="results per user")
    parser.add_argument("--metric", metavar="PATH", help="a Metric or ObjectiveMetrics .npz (default: dot)")
    parser.add_argument("--output", choices=("logit", "probability", "value"), help="the quantity ranked and written")
    parser.add_argument("--out", required=True, metavar="PATH", help="a .parquet file, or else a folder")
    parser.add_argument("--user-column", help="the embedding column (default embedding; user with --pairs)")
    parser.add_argument("--pairs", action="store_true", help="score the (user, ad) pairs of each row instead")
    parser.add_argument("--ad-column", default="ad", help="with --pairs: the ad embedding column (default ad)")
    parser.add_argument("--objective-column", help="with --pairs and ObjectiveMetrics: each pair's objective")
    parser.add_argument("--bid-column", help="with --pairs and ObjectiveMetrics: each pair's bid (default 1)")
    parser.add_argument("--engine", choices=("local", "ray"), default="local", help="default local: in-process")
    parser.add_argument("--address", help="with --engine ray: the cluster (host:port, ray://host:port, auto)")
    parser.add_argument("--concurrency", type=_positive, help="with --engine ray: actors (default one per CPU)")
    parser.add_argument("--threads", type=_positive, help="threads per process (default: all locally, 1 per actor)")
    parser.add_argument("--batch-rows", type=_positive, help="rows per batch (default 4096)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_offline_command)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(text)
    return value


EXPERIMENT_DESCRIPTION = """The blog's experiment end to end (`splitnet-kernels experiment`):
train two-tower models with every metric kind and normalisation on campaign data whose ground
truth is known, then report quality per objective, the light ranker's value captured from a
mixed pool, and that value under a per-request serving budget measured through the kernels.
docs/reproduction.md describes the setting and the protocol.
"""
# The names of splitnet_kernels.experiment.VARIANTS, the norms written out so that building the
# parser imports no experiment; tests/test_cli.py checks that the two agree.
EXPERIMENT_VARIANTS = tuple(f"{kind}:{norm}" for norm in ("unit", "free", "cosine") for kind in KINDS) + (
    "scaled:unit:shared", "diagonal:unit:shared")


def _add_experiment_parser(commands):
    parser = commands.add_parser("experiment", help="train every metric kind on campaign data: quality and cost",
                                 description=EXPERIMENT_DESCRIPTION)
    parser.add_argument("--seeds", type=_positive, help="seeds (data, split, init); default 5, or 2 with --quick")
    parser.add_argument("--quick", action="store_true", help="smaller data, two seeds, no learning-rate search "
                        "and no sweeps")
    parser.add_argument("--epochs", type=_positive, help="at most this many epochs (early stopping; default 20, "
                        "or 8 with --quick)")
    parser.add_argument("--variants", metavar="LIST",
                        help=f"comma-separated subset of: {', '.join(EXPERIMENT_VARIANTS)}")
    parser.add_argument("--outcomes", choices=("funnel", "own"), help="synthetic data: every outcome per "
                        "impression (funnel, the default) or only the ad's objective's (own)")
    parser.add_argument("--ads-see-objective", action="store_true",
                        help="the per-objective models' ad tower gets the objective one-hot")
    parser.add_argument("--weight-decay", type=_non_negative, help="AdamW weight decay (default 0)")
    parser.add_argument("--no-sweeps", action="store_true", help="skip the off-diagonal and data-size sweeps")
    parser.add_argument("--workers", type=_positive, help="worker processes (default: the cores this process "
                        "may use)")
    parser.add_argument("--data", metavar="PATH", help="your own data: .npz or .parquet directory "
                        "(fields in splitnet_kernels.experiment.CampaignData); default: synthetic, one set per seed")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write value captured against the serving budget as PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(run=_experiment)
    return parser


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="splitnet-kernels", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    info_parser = commands.add_parser("info", help="version, ISA, default threads and backends")
    info_parser.add_argument("--json", action="store_true", help="print JSON")
    info_parser.set_defaults(run=_info)
    bench_parser = commands.add_parser(
        "bench", help="workloads W1-W10 against the floors and the peers",
        description="Times our kernels beside the floors and the peers, every ratio round by round in turns. "
                    f"Without options: the headline tables {', '.join(BENCH_DEFAULT)} (about 3 minutes on 2 cores); "
                    "--full: every workload W1-W10.")
    bench_parser.add_argument("--workload", action="append", default=[], metavar="W",
                              help=f"W1..W10, repeatable or comma-separated (default: {', '.join(BENCH_DEFAULT)})")
    bench_parser.add_argument("--full", action="store_true", help="every workload, W1-W10, with more rounds")
    bench_parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    bench_parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    bench_parser.add_argument("--plot", metavar="PATH", help="write W7 as a log-log PNG")
    bench_parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    bench_parser.set_defaults(run=_bench)
    _add_experiment_parser(commands)
    _add_offline_parser(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
