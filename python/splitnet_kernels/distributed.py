"""Offline scoring on Ray Data (extra [ray]): topk_dataset and score_dataset run the package's batch
functions (TopkBatch, ScoreBatch) on a pool of actors, each mapping the candidate files once.

    from splitnet_kernels import distributed as skd
    out = skd.topk_dataset(users_ds, "ads.skc", k=100, metric=m, user_column="embedding")

Ray is imported when a dataset is built, so TopkBatch and ScoreBatch serve Spark and Dask without it.
The Ray engine of `splitnet-kernels offline` (run_ray) is here too; the command is cli.py's.
"""

from __future__ import annotations

import os
import socket

from ._offline import BATCH_ROWS, Output, ScoreBatch, TopkBatch, check_out, parquet_options, users_dataset

import pyarrow as pa  # after _offline, whose error without pyarrow names the extra to install

__all__ = ["ScoreBatch", "TopkBatch", "connect", "map_job", "score_dataset", "topk_dataset"]

# CPUs one actor reserves. Fractional on purpose: with one CPU each, as many actors as CPUs hold
# every CPU and the read tasks feeding them never run (a deadlock seen on a 2-CPU machine).
ACTOR_CPUS = 0.5


def _ray():
    """The ray module, or an ImportError that names the extra to install."""
    try:
        import ray
    except ImportError as missing:
        raise ImportError(f'the Ray engine needs Ray Data ({missing}): pip install "splitnet-kernels[ray]"') \
            from missing
    return ray


class _Worker:
    """The actor: its job arrives pickled as the arguments it was built from, so the candidate
    files are mapped here, once per actor, and actors on one node share the page cache."""

    def __init__(self, job):
        self.job = job

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.job(batch)


def map_job(dataset, job, *, batch_size: int = BATCH_ROWS, concurrency=None, num_cpus: float = ACTOR_CPUS):
    """The dataset with job (a TopkBatch or ScoreBatch) applied on an actor pool, in blocks of
    batch_size rows. concurrency: actors (default one per CPU of the cluster); num_cpus: CPUs each
    reserves; the job's threads= is what each one computes with. A killed actor is restarted and
    its batch retried (Ray Data's default for actor pools)."""
    ray = _ray()

    schema = dataset.schema()  # from the files' metadata for read_parquet: nothing is scored yet
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        job.check_schema(base)
    if concurrency is None:
        concurrency = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Files often arrive as fewer blocks than actors (eight files came back as one block): blocks
    # of one batch spread the work over the pool.
    return dataset.repartition(target_num_rows_per_block=batch_size).map_batches(
        _Worker, fn_constructor_args=(job,), batch_size=batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=concurrency), num_cpus=num_cpus)


def topk_dataset(users_ds, candidates, k, metric=None, *, user_column="embedding", output=None, offsets=None,
                 threads=1, batch_size: int = BATCH_ROWS, concurrency=None, num_cpus: float = ACTOR_CPUS):
    """users_ds plus "topk_scores" and "topk_ids": the best k candidates of each user (sk.topk's
    order and ranking; output as in Candidates.topk). candidates: a file saved by Candidates.save,
    or a list of shard files (ids offset by the rows of the shards before, or by offsets=), merged
    exactly with merge_topk; or a file saved by LiveCandidates.save, or a list of them holding
    disjoint ad ids, whose ids are the ad ids (no offsets). Every check (files, metric, column)
    runs here, before any work."""
    job = TopkBatch(candidates, k, metric, user_column=user_column, output=output, offsets=offsets, threads=threads)
    return map_job(users_ds, job, batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus)


def score_dataset(pairs_ds, metric=None, *, user_column="user", ad_column="ad", objective_column=None,
                  bid_column=None, output=None, threads=1, batch_size: int = BATCH_ROWS, concurrency=None,
                  num_cpus: float = ACTOR_CPUS):
    """pairs_ds plus "score": sk.score(user, ad, metric, pairwise=True) of each row's pair. With an
    ObjectiveMetrics, objective_column names each pair's objective and bid_column its bid."""
    job = ScoreBatch(metric, user_column=user_column, ad_column=ad_column, objective_column=objective_column,
                     bid_column=bid_column, output=output, threads=threads)
    return map_job(pairs_ds, job, batch_size=batch_size, concurrency=concurrency, num_cpus=num_cpus)


def check_reachable(address, timeout: float = 5.0) -> None:
    """Refuses, within `timeout` seconds, a host:port (or ray://host:port) that takes no
    connection; "auto" and "local" are Ray's own words and are left to it."""
    if address in (None, "auto", "local"):
        return
    host, _, port = str(address).removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address: expected host:port or ray://host:port, got {address!r}")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(f"address: cannot reach a Ray cluster at {address!r} within {timeout:g} s "
                              f"({error})") from None


def connect(address=None) -> bool:
    """Joins the cluster at address (host:port, ray://host:port or "auto"), or starts a local one
    when address is None; an unreachable address is an error within seconds, not a hang. Returns
    whether this call started Ray (and so should shut it down). A running Ray is used as it is."""
    ray = _ray()

    check_reachable(address)
    if ray.is_initialized():
        return False
    if address is None:
        ray.init(include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return True


def name_parts(folder) -> None:
    """Renames the Parquet files Ray Data wrote in folder (named by its own uuids) to the local
    engine's part-00000.parquet, part-00001.parquet, ... in the order of Ray's names."""
    names = sorted(name for name in os.listdir(folder) if name.endswith(".parquet"))
    for i, name in enumerate(names):
        os.rename(os.path.join(folder, name), os.path.join(folder, f"part-{i:05d}.parquet"))


def run_ray(job, users, out, *, address=None, batch_size: int = BATCH_ROWS, concurrency=None) -> int:
    """The local engine's job on Ray: users' Parquet in, `out` written. A folder is written by the
    workers (it must be where every node can write); a file is written here, streamed from them."""
    ray = _ray()

    local = users_dataset(users)
    job.check_schema(local.schema)  # before connecting: bad input costs no cluster
    check_out(out)
    started = connect(address)
    try:
        paths = [users] if isinstance(users, (str, os.PathLike)) else list(users)
        result = map_job(ray.data.read_parquet([os.fspath(p) for p in paths]), job, batch_size=batch_size,
                         concurrency=concurrency)
        rows = 0
        empty = job(local.schema.empty_table())
        with Output(out, empty) as output:
            if output.folder:  # renamed into place once every part is written, as locally
                result.write_parquet(output.temp, **parquet_options(empty.schema))
                name_parts(output.temp)
                return local.count_rows()
            for table in result.iter_batches(batch_size=None, batch_format="pyarrow"):
                output.write(table)
                rows += table.num_rows
        return rows
    finally:
        if started:
            ray.shutdown()
