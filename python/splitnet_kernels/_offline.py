"""Offline scoring without a scheduler: the engine-agnostic batch functions (a table of users or
pairs in, the same table plus results out) and the local engine that streams Parquet through them.

Ray Data (splitnet_kernels.distributed), Spark and Dask call the same batch functions; docs/offline.md
has the recipes. Everything is checked when a batch function is built, before any row is read.
The command (`splitnet-kernels offline`) is cli.py's; this module imports neither it nor an engine.
"""

from __future__ import annotations

import os
import shutil
import uuid

import numpy as np

try:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq
except ImportError as missing:  # the extras [offline] and [ray] bring it
    raise ImportError(f'offline scoring needs pyarrow ({missing}): pip install "splitnet-kernels[offline]"') \
        from missing

from . import _api, _set_file
from ._candidates import Candidates
from ._live import LiveCandidates
from ._metric import Metric
from ._objectives import ObjectiveMetrics, check_bids, check_output, quantity
from ._progress import Progress

BATCH_ROWS = 4096  # users per batch: the candidate set is read once per batch, the results stay small
ROWS_PER_FILE = 1 << 20  # a folder written by the local engine gets a new part file after this many rows
RESULT_COLUMNS = ("topk_scores", "topk_ids")
SCORE_COLUMN = "score"


# ---- columns ---------------------------------------------------------------------------------
def as_table(batch) -> pa.Table:
    """A pyarrow Table from what an engine hands over: a Table, a RecordBatch, a pandas DataFrame
    or a mapping of column names to arrays."""
    if isinstance(batch, pa.Table):
        return batch
    if isinstance(batch, pa.RecordBatch):
        return pa.Table.from_batches([batch])
    if type(batch).__name__ == "DataFrame":  # pandas, without importing it
        return pa.Table.from_pandas(batch, preserve_index=False)
    if isinstance(batch, dict):
        return pa.table({name: _arrow_column(values) for name, values in batch.items()})
    raise TypeError(f"batch: expected a pyarrow Table or RecordBatch, a pandas DataFrame or a dict of columns, got "
                    f"{type(batch).__name__}")


def _arrow_column(values):
    values = np.asarray(values) if not isinstance(values, (pa.Array, pa.ChunkedArray)) else values
    if isinstance(values, np.ndarray) and values.ndim == 2:  # embeddings (rows, n)
        return fixed_size_lists(values)
    return values


def fixed_size_lists(values: np.ndarray) -> pa.FixedSizeListArray:
    """(rows, width) as a Parquet-friendly fixed-size-list column."""
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(values).ravel()), values.shape[1])


def _element_type(arrow_type):
    """(value type, fixed width or None) of an embedding column's type, or None if it is not one:
    a fixed-size list (Parquet), a list or large list, or a Ray tensor column (an extension type
    whose storage is a list and whose shape is one dimension)."""
    if isinstance(arrow_type, pa.ExtensionType):
        shape = getattr(arrow_type, "shape", None)
        inner = _element_type(arrow_type.storage_type)
        if inner is None or shape is None or len(shape) != 1:
            return None
        return inner[0], shape[0] if shape[0] is not None and shape[0] > 0 else inner[1]
    if pa.types.is_fixed_size_list(arrow_type):
        return arrow_type.value_type, arrow_type.list_size
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return arrow_type.value_type, None
    return None


def check_column(schema: pa.Schema, column: str, dim: int | None, what: str) -> None:
    """Refuses, from the schema alone, a missing column or one that cannot hold float embeddings of
    dimension dim (None: any). A list column's width is checked per batch, before it is scored."""
    if column not in schema.names:
        raise ValueError(f"{what}: no column {column!r} in the input (columns: {', '.join(schema.names)})")
    element = _element_type(schema.field(column).type)
    if element is None:
        raise TypeError(f"{what}: column {column!r} has type {schema.field(column).type}; expected embeddings as a "
                        f"fixed-size list, a list or a tensor column of floats")
    value_type, width = element
    if not pa.types.is_floating(value_type):
        raise TypeError(f"{what}: column {column!r} holds {value_type}; expected float16, float32 or float64 "
                        f"embeddings")
    if width is not None and dim is not None and width != dim:
        raise ValueError(f"{what}: column {column!r} holds embeddings of dimension {width}, the candidates (or "
                         f"metric) have dimension {dim}")


def embeddings(table: pa.Table, column: str, dim: int | None, what: str) -> np.ndarray:
    """The column as a (rows, dim) float array (dim None: the rows' common width), a view where the
    column allows it."""
    check_column(table.schema, column, dim, what)
    array = table.column(column).combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if array.null_count:
        raise ValueError(f"{what}: column {column!r} has {array.null_count} null rows")
    if pa.types.is_fixed_size_list(array.type):
        width = array.type.list_size
    else:
        lengths = array.value_lengths().to_numpy(zero_copy_only=False)
        width = dim if dim is not None or not len(lengths) else int(lengths[0])
        if not np.all(lengths == width):
            bad = int(np.flatnonzero(lengths != width)[0])
            raise ValueError(f"{what}: column {column!r}: a row has {lengths[bad]} values, expected {width}")
    values = array.flatten()
    if values.null_count:
        raise ValueError(f"{what}: column {column!r} has {values.null_count} null values")
    return values.to_numpy(zero_copy_only=False).reshape(len(array), width or 0)


def _check_new_columns(schema: pa.Schema, names) -> None:
    clash = [name for name in names if name in schema.names]
    if clash:
        raise ValueError(f"users: the input already has column(s) {', '.join(clash)}, which the results would "
                         f"replace; rename or drop them first")


# ---- the batch functions ---------------------------------------------------------------------
def shard_paths(candidates) -> list:
    """Absolute paths of a candidate file or a list of shard files."""
    paths = [candidates] if isinstance(candidates, (str, os.PathLike)) else list(candidates)
    if not paths or not all(isinstance(p, (str, os.PathLike)) for p in paths):
        raise TypeError(f"candidates: expected a path or a non-empty list of paths, got {candidates!r}")
    return [os.path.abspath(p) for p in paths]


def load_set(path):
    """The set saved at `path`, mapped (mmap=True): a Candidates, or a LiveCandidates where the
    file is a saved live set (LiveCandidates.save), whose ids are its ad ids."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"candidates: no candidate file at {path!r}")
    if _set_file.is_live(path):
        return LiveCandidates.load(path, mmap=True)
    return Candidates.load(path, mmap=True)


def load_shards(paths: list, offsets=None) -> list:
    """[(set mapped with mmap=True, id offset)] for shard paths. A Candidates shard's ids start at
    its offset: by default the rows of the shards before it, as if the files were one; explicit
    offsets must keep the shards' id ranges apart and every id within uint64 (see id_dtype).
    Saved live sets answer with their own ad ids (offset None): shards that are live sets must
    all be, take no offsets and hold disjoint ad ids."""
    shards = [load_set(path) for path in paths]
    if len({c.dim for c in shards}) > 1:
        raise ValueError(f"candidates: the shards differ in dimension ({', '.join(str(c.dim) for c in shards)})")
    live = [isinstance(c, LiveCandidates) for c in shards]
    if any(live):
        return _live_shards(paths, shards, live, offsets)
    if offsets is None:
        offsets = np.cumsum([0] + [len(c) for c in shards[:-1]]).tolist()
    offsets = list(offsets)
    if len(offsets) != len(shards) or not all(isinstance(o, (int, np.integer)) and o >= 0 for o in offsets):
        raise ValueError(f"offsets: expected {len(shards)} integers >= 0 (one per shard), got {offsets!r}")
    for o, c in zip(offsets, shards):
        if int(o) + len(c) > _UINT64_END:
            raise ValueError(f"offsets: the offset {int(o)} puts the ids of a shard of {len(c)} rows past 2**64 - 1, "
                             f"the largest id there is (ids are int64, or uint64 beyond that, as in merge_topk)")
    ranges = sorted((int(o), int(o) + len(c)) for o, c in zip(offsets, shards))
    if any(end > begin for (_, end), (begin, _) in zip(ranges, ranges[1:])):
        raise ValueError(f"offsets: the shards' id ranges overlap ({ranges})")
    return [(c, int(o)) for c, o in zip(shards, offsets)]


def _live_shards(paths: list, shards: list, live: list, offsets) -> list:
    """[(LiveCandidates, None)]: live shards answer with their ad ids, already global, so they
    take no offsets, cannot be mixed with Candidates shards (whose ids are row numbers) and must
    not share an ad id (it would come back twice)."""
    if not all(live):
        raise ValueError(f"candidates: {paths[live.index(True)]} is a saved live set (its ids are ad ids) and "
                         f"{paths[live.index(False)]} a Candidates file (its ids are row numbers plus an offset); "
                         f"the shards must be all one or all the other")
    if offsets is not None:
        raise ValueError("offsets: a saved live set's ids are its own ad ids, global already; offsets are for "
                         "Candidates shards")
    ids = [c.ids() for c in shards]
    for i in range(len(shards)):
        for j in range(i + 1, len(shards)):
            a, b = ids[i], ids[j]
            if not len(a) or not len(b) or a[-1] < b[0] or b[-1] < a[0]:
                continue
            at = np.minimum(np.searchsorted(b, a), len(b) - 1)
            common = a[b[at] == a]
            if len(common):
                raise ValueError(f"candidates: ad id {common[0]} is in two live shards ({paths[i]} and {paths[j]}); "
                                 f"shards must hold disjoint ad ids")
    return [(c, None) for c in shards]


_UINT64_END = 1 << 64  # one past the largest id


def id_dtype(shards: list) -> np.dtype:
    """The ids' type for shards [(set, offset)]: int64, or uint64 when an offset puts some id
    past the int64 range (sk.merge_topk's rule), fixed by the shards so every batch agrees. Live
    shards' ad ids (offset None) are int64."""
    if any(offset is None for _, offset in shards):
        return np.dtype(np.int64)
    end = max(offset + len(c) for c, offset in shards)
    return np.dtype(np.int64 if end <= np.iinfo(np.int64).max + 1 else np.uint64)


def load_metric(path):
    """A Metric or ObjectiveMetrics from the .npz that its save() wrote."""
    try:
        return Metric.load(path)
    except ValueError as as_metric:
        try:
            return ObjectiveMetrics.load(path)
        except ValueError:
            raise ValueError(f"metric: {as_metric}") from None


def _rebuild(cls, arguments):
    return cls(**arguments)


class _Job:
    """A batch function is sent to a worker as the arguments it was built from (pickle, Ray,
    Spark and Dask alike): the worker maps the candidate files itself instead of receiving a copy."""

    arguments: dict
    embedding_columns: tuple
    keep_embeddings: bool

    def __reduce__(self):
        return _rebuild, (type(self), self.arguments)

    def _finish(self, table: pa.Table) -> pa.Table:
        return table if self.keep_embeddings else table.drop_columns(list(self.embedding_columns))


class TopkBatch(_Job):
    """The top-k batch function: called with a table of users (any columns, the embeddings in
    user_column), returns it with topk_scores and topk_ids added (fixed-size lists, best first;
    ids index the candidates as saved, plus each shard's offset: int64, or uint64 in every batch
    when an offset puts ids past the int64 range, as sk.merge_topk gives them; for saved live sets
    (LiveCandidates.save), the ad ids, int64, as live.topk gives them); keep_embeddings=False
    leaves the embedding column out. topk(users) does the same on a (rows, n) array. Built once per
    worker: it maps the candidate files (mmap=True), so workers on one machine share the page cache."""

    def __init__(self, candidates, k, metric=None, *, user_column="embedding", output=None, offsets=None,
                 threads=None, keep_embeddings=True):
        paths = shard_paths(candidates)
        self.shards = load_shards(paths, offsets)
        self.arguments = dict(candidates=paths, k=k, metric=metric, user_column=user_column, output=output,
                              offsets=None if self.shards[0][1] is None else [o for _, o in self.shards],
                              threads=threads, keep_embeddings=keep_embeddings)
        self.k, self.metric, self.output, self.threads = _api.check_k(k), metric, output, threads
        self.user_column, self.dim, self.id_dtype = user_column, self.shards[0][0].dim, id_dtype(self.shards)
        self.embedding_columns, self.keep_embeddings = (user_column,), keep_embeddings
        self.topk(np.zeros((0, self.dim), np.float32))  # every check of metric, output and threads, now

    def check_schema(self, schema: pa.Schema) -> None:
        check_column(schema, self.user_column, self.dim, "user_column")
        _check_new_columns(schema, RESULT_COLUMNS)

    def topk(self, users: np.ndarray):
        """(scores, ids) of shape (rows, min(k, candidates)), merged over the shards exactly."""
        parts = []
        for cands, offset in self.shards:
            scores, ids = cands.topk(users, self.k, self.metric, output=self.output, threads=self.threads)
            if offset is not None:  # a live set's ids are its ad ids already
                ids = ids.astype(self.id_dtype, copy=False) + self.id_dtype.type(offset)
            parts.append((scores, ids))
        if len(parts) == 1:
            return parts[0]
        scores, ids = _api.merge_topk(parts, self.k)  # int64 when this batch's ids all fit: the job's type
        return scores, ids.astype(self.id_dtype, copy=False)

    def __call__(self, batch) -> pa.Table:
        table = as_table(batch)
        scores, ids = self.topk(embeddings(table, self.user_column, self.dim, "user_column"))
        return self._finish(table.append_column(RESULT_COLUMNS[0], fixed_size_lists(scores))
                            .append_column(RESULT_COLUMNS[1], fixed_size_lists(ids)))


class ScoreBatch(_Job):
    """The pairs batch function: a table of (user, ad) embedding pairs in, the table plus `score`
    out (float32). With an ObjectiveMetrics, objective_column gives each pair's objective and
    bid_column its bid (default 1.0; checked as Candidates checks bids: numbers, finite, >= 0);
    output as in sk.score. metric None is the dot metric of the embeddings' dimension;
    keep_embeddings=False leaves the two embedding columns out."""

    def __init__(self, metric=None, *, user_column="user", ad_column="ad", objective_column=None, bid_column=None,
                 output=None, threads=None, keep_embeddings=True):
        if metric is not None and not isinstance(metric, (Metric, ObjectiveMetrics)):
            raise TypeError(f"metric: expected a splitnet_kernels.Metric, ObjectiveMetrics or None, got "
                            f"{type(metric).__name__}")
        objectives = isinstance(metric, ObjectiveMetrics)
        if objectives and objective_column is None:
            raise ValueError("objective_column: needed with an ObjectiveMetrics (each pair's objective)")
        if not objectives and objective_column is not None:
            raise ValueError("objective_column: needs an ObjectiveMetrics metric")
        self.metric, self.dim = metric, None if metric is None else metric.dim
        self.output = check_output(output, objectives, False)
        self.user_column, self.ad_column = user_column, ad_column
        self.objective_column, self.bid_column = objective_column, bid_column
        self.threads = _api.check_threads(threads)
        self.embedding_columns, self.keep_embeddings = (user_column, ad_column), keep_embeddings
        self.arguments = dict(metric=metric, user_column=user_column, ad_column=ad_column,
                              objective_column=objective_column, bid_column=bid_column, output=output, threads=threads,
                              keep_embeddings=keep_embeddings)

    def check_schema(self, schema: pa.Schema) -> None:
        check_column(schema, self.user_column, self.dim, "user_column")
        check_column(schema, self.ad_column, self.dim, "ad_column")
        for column, what in ((self.objective_column, "objective_column"), (self.bid_column, "bid_column")):
            if column is not None and column not in schema.names:
                raise ValueError(f"{what}: no column {column!r} in the input (columns: {', '.join(schema.names)})")
        _check_new_columns(schema, (SCORE_COLUMN,))

    def score(self, users: np.ndarray, ads: np.ndarray, objectives=None, bids=None) -> np.ndarray:
        """The (rows,) float32 quantity of pairs (users[i], ads[i])."""
        if bids is None:
            bids = np.float32(1.0)
        else:  # first, so that an empty batch (the schema's) already refuses bids that are not numbers
            bids = check_bids(bids, len(users), "bids" if self.bid_column is None else
                              f"bid_column: column {self.bid_column!r}")
        if not len(users):
            return np.empty(0, np.float32)
        if not isinstance(self.metric, ObjectiveMetrics):
            logits = _api.score(users, ads, self.metric, pairwise=True, threads=self.threads)
            return quantity(logits, bids, self.output)
        objectives = np.asarray(objectives)
        if objectives.dtype.kind not in "iu":
            raise TypeError(f"objective_column: expected integers, got {objectives.dtype}")
        if objectives.min() < 0 or objectives.max() >= len(self.metric):
            raise ValueError(f"objective_column: expected objectives in [0, {len(self.metric)}), got "
                             f"{objectives.min()}..{objectives.max()}")
        result = np.empty(len(users), np.float32)
        for t in np.unique(objectives):
            rows = objectives == t
            logits = _api.score(users[rows], ads[rows], self.metric[int(t)], pairwise=True, threads=self.threads)
            result[rows] = quantity(logits, bids if bids.ndim == 0 else bids[rows], self.output)
        return result

    def __call__(self, batch) -> pa.Table:
        table = as_table(batch)
        users = embeddings(table, self.user_column, self.dim, "user_column")
        ads = embeddings(table, self.ad_column, self.dim, "ad_column")
        objectives = None if self.objective_column is None else \
            _flat(table, self.objective_column, "objective_column")
        bids = None if self.bid_column is None else _flat(table, self.bid_column, "bid_column")
        return self._finish(table.append_column(SCORE_COLUMN, pa.array(self.score(users, ads, objectives, bids))))


def _flat(table: pa.Table, column: str, what: str) -> np.ndarray:
    """A column of one value per row as a NumPy array; null rows refused by the column's name."""
    array = table.column(column)
    if array.null_count:
        raise ValueError(f"{what}: column {column!r} has {array.null_count} null rows")
    return array.to_numpy()


# ---- output ----------------------------------------------------------------------------------
def parquet_options(schema: pa.Schema) -> dict:
    """How results are written: dictionary encoding for flat columns only (lists of scores, ids or
    embeddings never repeat, and trying costs 3x the rest of the write)."""
    return {"use_dictionary": [f.name for f in schema if not pa.types.is_nested(f.type)
                               and not isinstance(f.type, pa.ExtensionType)]}


def is_folder(out) -> bool:
    """--out names a folder unless it ends in .parquet (an existing folder is always one)."""
    return os.path.isdir(out) or not os.fspath(out).endswith(".parquet")


def check_out(out) -> None:
    """Refuses an output that would overwrite a folder's files or has no parent folder."""
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"out: no folder {parent!r} to write {os.fspath(out)!r} in")
    if os.path.isdir(out) and os.listdir(out):
        raise ValueError(f"out: the folder {os.fspath(out)!r} is not empty")
    if os.path.isfile(out) and is_folder(out):
        raise ValueError(f"out: {os.fspath(out)!r} is a file without the .parquet suffix (a folder is written "
                         f"unless the name ends in .parquet)")


class Output:
    """Writes tables to --out (a file, or part files in a folder) under a temporary name beside it,
    renamed into place on success and removed on failure, so that no half-written result is ever
    at `out`. `empty` (the output of no rows) is what a file holds when no table came."""

    def __init__(self, out, empty: pa.Table) -> None:
        check_out(out)
        self.empty = empty
        self.out, self.folder = os.fspath(out), is_folder(out)
        self.temp = f"{os.path.abspath(out).rstrip(os.sep)}.{uuid.uuid4().hex[:8]}.tmp"
        if self.folder:
            os.mkdir(self.temp)
        self.writer: pq.ParquetWriter | None = None
        self.parts = self.rows_in_part = 0

    def write(self, table: pa.Table) -> None:
        if self.writer is not None and self.folder and self.rows_in_part >= ROWS_PER_FILE:
            self.writer.close()
            self.writer, self.rows_in_part = None, 0
        if self.writer is None:
            path = os.path.join(self.temp, f"part-{self.parts:05d}.parquet") if self.folder else self.temp
            self.writer, self.parts = pq.ParquetWriter(path, table.schema, **parquet_options(table.schema)), \
                self.parts + 1
        self.writer.write_table(table)
        self.rows_in_part += table.num_rows

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, kind, error, trace) -> None:
        if error is None and not self.folder and self.writer is None:
            self.write(self.empty)  # no rows came: still a file with the output's columns
        if self.writer is not None:
            self.writer.close()
        if error is not None:
            if self.folder:
                shutil.rmtree(self.temp)
            elif os.path.exists(self.temp):
                os.unlink(self.temp)
            return
        if self.folder and os.path.isdir(self.out):
            os.rmdir(self.out)  # empty: check_out made sure
        os.replace(self.temp, self.out)


# ---- the local engine ------------------------------------------------------------------------
def users_dataset(users) -> pads.Dataset:
    """The input Parquet (a file, a folder or a list of files) as a pyarrow dataset."""
    paths = [users] if isinstance(users, (str, os.PathLike)) else list(users)
    for path in paths:
        if not os.path.exists(path):
            raise FileNotFoundError(f"users: no Parquet file or folder at {os.fspath(path)!r}")
    try:
        return pads.dataset([os.fspath(p) for p in paths] if len(paths) > 1 else os.fspath(paths[0]), format="parquet")
    except (pa.ArrowInvalid, OSError) as error:
        raise ValueError(f"users: cannot be read as Parquet ({error})") from None


def batches(dataset: pads.Dataset, rows: int):
    """The dataset as tables of exactly `rows` rows (the last one fewer), across the files' row
    groups, reading a few batches ahead at most."""
    pending: list = []
    held = 0
    for batch in dataset.to_batches(batch_size=rows, batch_readahead=1, fragment_readahead=1):
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending, dataset.schema)
            yield table.slice(0, rows)
            pending, held = table.slice(rows).to_batches(), held - rows
    if held:
        yield pa.Table.from_batches(pending, dataset.schema)


def run_local(job, users, out, *, batch_rows: int = BATCH_ROWS, show_progress: bool = True) -> int:
    """Streams the users' Parquet through the batch function `job` into `out`, batch_rows rows at
    a time (memory bounded by a few batches, whatever the number of users). Returns the rows."""
    dataset = users_dataset(users)
    job.check_schema(dataset.schema)
    progress = Progress(dataset.count_rows(), show_progress, unit="rows")
    with Output(out, job(dataset.schema.empty_table())) as output:
        for table in batches(dataset, batch_rows):
            output.write(job(table))
            progress.add(table.num_rows)
    return progress.done
