"""Offline scoring without a cluster: the batch functions and the local engine (`splitnet-kernels
offline`), real Parquet files in and out, results identical to in-process sk.topk / sk.score."""

from __future__ import annotations

import os

import numpy as np
import pytest

import splitnet_kernels as sk
from splitnet_kernels import cli

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from splitnet_kernels import _offline  # noqa: E402  (needs pyarrow)

DIM = 24


def fixed_lists(values):
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def write_users(path, users, row_group_size=None, column="embedding"):
    table = pa.table({"user_id": np.arange(len(users)) * 10, "country": [f"c{i % 3}" for i in range(len(users))],
                      column: fixed_lists(users)})
    pq.write_table(table, path, row_group_size=row_group_size)
    return table


def read_results(path):
    table = pq.read_table(path)
    scores = np.array(table.column("topk_scores").to_pylist(), np.float32)
    ids = np.array(table.column("topk_ids").to_pylist(), np.int64)
    return table, scores, ids


@pytest.fixture
def data(tmp_path, rng):
    ads = rng.standard_normal((2000, DIM)).astype(np.float32)
    users = rng.standard_normal((300, DIM)).astype(np.float32)
    sk.Candidates(ads).save(tmp_path / "ads.skc")
    write_users(tmp_path / "users.parquet", users, row_group_size=64)
    metric = sk.Metric.diagonal(rng.standard_normal(DIM), bias=0.25)
    metric.save(tmp_path / "metric.npz")
    return ads, users, metric


def offline(tmp_path, *args) -> int:
    return cli.main(["offline", "--users", str(tmp_path / "users.parquet"), "--no-progress", *map(str, args)])


def test_cli_local_matches_topk_and_carries_every_column(tmp_path, data):
    ads, users, metric = data
    assert offline(tmp_path, "--candidates", tmp_path / "ads.skc", "--k", 17, "--metric", tmp_path / "metric.npz",
                   "--out", tmp_path / "top.parquet", "--batch-rows", 50) == 0
    table, scores, ids = read_results(tmp_path / "top.parquet")
    expected_scores, expected_ids = sk.topk(users, ads, 17, metric)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)
    source = pq.read_table(tmp_path / "users.parquet")
    for name in ("user_id", "country"):
        assert table.column(name).equals(source.column(name))
    assert table.column_names == ["user_id", "country", "topk_scores", "topk_ids"]  # every column but the embeddings


def test_cli_writes_a_folder(tmp_path, data):
    ads, users, metric = data
    assert offline(tmp_path, "--candidates", tmp_path / "ads.skc", "--k", 5, "--out", tmp_path / "top") == 0
    assert sorted(os.listdir(tmp_path / "top")) == ["part-00000.parquet"]
    _, scores, ids = read_results(tmp_path / "top")
    expected_scores, expected_ids = sk.topk(users, ads, 5)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


@pytest.mark.parametrize("rows", [1, 2, 7, 300])
def test_batch_boundaries_change_no_id_or_score(tmp_path, data, rows):
    ads, users, metric = data
    job = _offline.TopkBatch(tmp_path / "ads.skc", 20, metric)
    assert _offline.run_local(job, tmp_path / "users.parquet", tmp_path / "top.parquet", batch_rows=rows,
                              show_progress=False) == len(users)
    _, scores, ids = read_results(tmp_path / "top.parquet")
    expected_scores, expected_ids = sk.topk(users, ads, 20, metric)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)


@pytest.mark.parametrize("offsets", [None, [5000, 0, 9000]])
def test_shards_merge_into_the_unsharded_answer(tmp_path, data, offsets):
    ads, users, metric = data
    bounds = [0, 700, 1500, len(ads)]
    paths = []
    for i, (begin, end) in enumerate(zip(bounds, bounds[1:])):
        paths.append(tmp_path / f"shard{i}.skc")
        sk.Candidates(ads[begin:end]).save(paths[-1])
    job = _offline.TopkBatch(paths, 30, metric, offsets=offsets)
    scores, ids = job.topk(users)
    expected_scores, expected_ids = sk.topk(users, ads, 30, metric)
    if offsets is not None:  # the id of row r of shard i is offsets[i] + r
        global_ids = np.concatenate([np.arange(end - begin) + o for o, begin, end in zip(offsets, bounds, bounds[1:])])
        expected_ids = global_ids[expected_ids]
    np.testing.assert_array_equal(scores, expected_scores)
    np.testing.assert_array_equal(ids, expected_ids)


def test_objectives_by_value(tmp_path, rng, data):
    ads, users, _ = data
    objectives = rng.integers(0, 3, len(ads))
    bids = rng.lognormal(0, 1, len(ads)).astype(np.float32)
    cands = sk.Candidates(ads, objectives=objectives, bids=bids)
    cands.save(tmp_path / "objectives.skc")
    om = sk.ObjectiveMetrics([sk.Metric.diagonal(rng.standard_normal(DIM), bias=b) for b in (-1.0, 0.0, 1.0)])
    om.save(tmp_path / "om.npz")
    assert offline(tmp_path, "--candidates", tmp_path / "objectives.skc", "--k", 25, "--metric", tmp_path / "om.npz",
                   "--out", tmp_path / "top.parquet") == 0
    _, values, ids = read_results(tmp_path / "top.parquet")
    expected_values, expected_ids = cands.topk(users, 25, om)  # output="value", the default with objectives
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(values, expected_values)


def test_list_columns_as_pandas_writes_them(tmp_path, data):
    """Variable-length list columns (what pandas and most writers give) of one width are embeddings."""
    ads, users, metric = data
    table = pa.table({"id": np.arange(len(users)), "vector": pa.array(list(users.astype(np.float64)))})
    assert pa.types.is_list(table.schema.field("vector").type)
    result = _offline.TopkBatch(tmp_path / "ads.skc", 4, metric, user_column="vector")(table.to_pandas())
    expected_scores, expected_ids = sk.topk(users.astype(np.float64), ads, 4, metric)
    np.testing.assert_array_equal(np.array(result.column("topk_ids").to_pylist()), expected_ids)
    np.testing.assert_array_equal(np.array(result.column("topk_scores").to_pylist(), np.float32), expected_scores)


def test_pairs_mode(tmp_path, rng, data):
    ads, users, metric = data
    pairs = pa.table({"pair_id": np.arange(len(users)), "user": fixed_lists(users), "ad": fixed_lists(ads[:len(users)])})
    pq.write_table(pairs, tmp_path / "pairs.parquet", row_group_size=100)
    assert cli.main(["offline", "--pairs", "--users", str(tmp_path / "pairs.parquet"), "--metric",
                     str(tmp_path / "metric.npz"), "--output", "probability", "--out", str(tmp_path / "scores.parquet"),
                     "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "scores.parquet")
    assert table.column_names == ["pair_id", "score"]
    assert table.column("pair_id").equals(pairs.column("pair_id"))
    expected = sk.score(users, ads[:len(users)], metric, pairwise=True, sigmoid=True)
    np.testing.assert_array_equal(table.column("score").to_numpy(), expected)


def test_pairs_with_objectives_and_bids(rng):
    users, ads = (rng.standard_normal((50, DIM)).astype(np.float32) for _ in range(2))
    objectives, bids = rng.integers(0, 2, 50), rng.uniform(0, 3, 50).astype(np.float32)
    om = sk.ObjectiveMetrics([sk.Metric.diagonal(rng.standard_normal(DIM), bias=b) for b in (-1.0, 1.0)])
    job = _offline.ScoreBatch(om, objective_column="objective", bid_column="bid")
    result = job({"user": users, "ad": ads, "objective": objectives, "bid": bids})
    # value = bid * probability, each pair through its objective's metric
    expected = [sk.score(users[i:i + 1], ads[i:i + 1], om[int(objectives[i])], pairwise=True, sigmoid=True)[0] * bids[i]
                for i in range(50)]
    np.testing.assert_array_equal(result.column("score").to_numpy(), np.array(expected, np.float32))


def test_empty_input_writes_the_columns(tmp_path, data):
    write_users(tmp_path / "users.parquet", np.zeros((0, DIM), np.float32))
    assert offline(tmp_path, "--candidates", tmp_path / "ads.skc", "--k", 5, "--out", tmp_path / "top.parquet") == 0
    table, scores, ids = read_results(tmp_path / "top.parquet")
    assert table.num_rows == 0 and "topk_ids" in table.column_names


# ---- bad input: one clear error, before any work, and no output ------------------------------
def assert_refused(capsys, tmp_path, args, *words):
    assert offline(tmp_path, *args) == 2
    message = capsys.readouterr().err
    for word in words:
        assert word in message, message
    assert not os.path.exists(tmp_path / "top.parquet")
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".tmp")]


def test_missing_candidate_file(capsys, tmp_path, data):
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "nothing.skc", "--k", 5, "--out",
                                      tmp_path / "top.parquet"], "candidates", "nothing.skc")


def test_damaged_candidate_file(capsys, tmp_path, data):
    blob = bytearray((tmp_path / "ads.skc").read_bytes())
    blob[-100] ^= 0xFF
    (tmp_path / "ads.skc").write_bytes(bytes(blob))
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skc", "--k", 5, "--out", tmp_path / "top.parquet"],
                   "ads.skc", "checksum")


def test_user_column_of_another_dimension(capsys, tmp_path, rng, data):
    write_users(tmp_path / "users.parquet", rng.standard_normal((10, DIM + 1)).astype(np.float32))
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skc", "--k", 5, "--out", tmp_path / "top.parquet"],
                   "user_column", "embedding", str(DIM + 1), str(DIM))


def test_user_column_of_integers(capsys, tmp_path, data):
    write_users(tmp_path / "users.parquet", np.ones((10, DIM), np.int32))
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skc", "--k", 5, "--out", tmp_path / "top.parquet"],
                   "user_column", "int32")


def test_missing_user_column(capsys, tmp_path, data):
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skc", "--k", 5, "--user-column", "vec", "--out",
                                      tmp_path / "top.parquet"], "user_column", "'vec'", "user_id")


def test_metric_of_another_dimension(capsys, tmp_path, data):
    sk.Metric.dot(DIM + 3).save(tmp_path / "other.npz")
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skc", "--k", 5, "--metric", tmp_path / "other.npz",
                                      "--out", tmp_path / "top.parquet"], "metric", str(DIM + 3), str(DIM))


def test_a_ragged_batch_leaves_no_output(tmp_path, data):
    """Rows are checked batch by batch; a bad batch after good ones leaves no half-written file."""
    ads, users, metric = data
    vectors = list(users[:20]) + [users[20][:-1]]
    pq.write_table(pa.table({"embedding": pa.array(vectors, pa.list_(pa.float32()))}), tmp_path / "users.parquet")
    with pytest.raises(ValueError, match="a row has 23 values, expected 24"):
        _offline.run_local(_offline.TopkBatch(tmp_path / "ads.skc", 5), tmp_path / "users.parquet",
                           tmp_path / "top.parquet", batch_rows=10, show_progress=False)
    assert sorted(os.listdir(tmp_path)) == ["ads.skc", "metric.npz", "users.parquet"]


def test_overlapping_shard_offsets(tmp_path, data):
    with pytest.raises(ValueError, match="offsets"):
        _offline.TopkBatch([tmp_path / "ads.skc", tmp_path / "ads.skc"], 5, offsets=[0, 1000])


def test_address_is_for_the_ray_engine(capsys, tmp_path, data):
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skc", "--k", 5, "--address", "localhost:6379",
                                      "--out", tmp_path / "top.parquet"], "--engine ray")


def test_out_that_is_a_file_without_the_suffix(capsys, tmp_path, data):
    (tmp_path / "top.pq").write_bytes(b"keep me")
    assert offline(tmp_path, "--candidates", tmp_path / "ads.skc", "--k", 5, "--out", tmp_path / "top.pq") == 2
    assert "is a file without the .parquet suffix" in capsys.readouterr().err
    assert (tmp_path / "top.pq").read_bytes() == b"keep me"


# ---- bids: the one check Candidates makes, by the column's name (issue 22, class 3) -------------
BAD_BIDS = {  # bid_column values, each refused; the middle row is the bad one
    "negative": pa.array([1.0, -1.0, 2.0]),
    "nan": pa.array([1.0, np.nan, 2.0]),
    "inf": pa.array([1.0, np.inf, 2.0]),
    "null": pa.array([1.0, None, 2.0]),
    "bool": pa.array([True, False, True]),
    "text": pa.array(["1", "2", "3"]),
}


def pairs_with_bids(rng, bids):
    users, ads = (rng.standard_normal((len(bids), DIM)).astype(np.float32) for _ in range(2))
    return pa.table({"user": fixed_lists(users), "ad": fixed_lists(ads), "objective": np.zeros(len(bids), np.int64),
                     "bid": bids})


@pytest.mark.parametrize("case", sorted(BAD_BIDS))
def test_score_batch_refuses_the_bids_candidates_refuse(rng, case):
    bids = BAD_BIDS[case]
    om = sk.ObjectiveMetrics([sk.Metric.dot(DIM)])
    job = _offline.ScoreBatch(om, objective_column="objective", bid_column="bid", output="value")
    with pytest.raises(ValueError, match="bid_column: column 'bid'") as refused:
        job(pairs_with_bids(rng, bids))
    with pytest.raises(ValueError, match="bids") as by_candidates:
        sk.Candidates(np.zeros((3, DIM), np.float32), objectives=np.zeros(3, np.int64), bids=bids.to_numpy(False))
    if case != "null":  # the same check says the same thing (a null arrives as a null, not as a NaN)
        assert str(refused.value).split(": ", 2)[-1] == str(by_candidates.value).split(": ", 1)[-1]


@pytest.mark.parametrize("case", ["bool", "text"])
def test_bids_that_are_not_numbers_are_refused_before_any_row(rng, case):
    """The local engine runs the schema's empty table through the job first: no row is read."""
    job = _offline.ScoreBatch(sk.ObjectiveMetrics([sk.Metric.dot(DIM)]), objective_column="objective",
                              bid_column="bid")
    with pytest.raises(ValueError, match=f"bid_column: column 'bid': expected 0 numbers .* got (bool|object)"):
        job(pairs_with_bids(rng, BAD_BIDS[case]).schema.empty_table())


@pytest.mark.parametrize("case", sorted(BAD_BIDS))
def test_cli_pairs_refuses_bad_bids_and_writes_nothing(capsys, tmp_path, rng, case):
    pq.write_table(pairs_with_bids(rng, BAD_BIDS[case]), tmp_path / "pairs.parquet")
    sk.ObjectiveMetrics([sk.Metric.dot(DIM)]).save(tmp_path / "om.npz")
    assert cli.main(["offline", "--pairs", "--users", str(tmp_path / "pairs.parquet"), "--metric",
                     str(tmp_path / "om.npz"), "--objective-column", "objective", "--bid-column", "bid", "--out",
                     str(tmp_path / "scores.parquet"), "--no-progress"]) == 2
    message = capsys.readouterr().err
    assert "bid_column: column 'bid'" in message and message.count("\n") == 1, message
    assert sorted(os.listdir(tmp_path)) == ["om.npz", "pairs.parquet"]


def test_good_bids_of_any_number_type_score_as_float32(rng):
    om = sk.ObjectiveMetrics([sk.Metric.dot(DIM, bias=0.5)])
    job = _offline.ScoreBatch(om, objective_column="objective", bid_column="bid")
    table = pairs_with_bids(rng, pa.array([0, 3, 7], pa.int32()))
    users, ads = (np.array(table.column(c).to_pylist(), np.float32) for c in ("user", "ad"))
    expected = sk.score(users, ads, om[0], pairwise=True, sigmoid=True) * np.array([0, 3, 7], np.float32)
    np.testing.assert_array_equal(job(table).column("score").to_numpy(), expected)


# ---- shard offsets: ids past int64 are uint64, as merge_topk gives them (issue 22, class 4) ----
@pytest.fixture
def two_shards(tmp_path, rng):
    """2,000 candidates: shard 0 holds 1,990 of them, shard 1 the last 10."""
    ads = rng.standard_normal((2000, DIM)).astype(np.float32)
    paths = [tmp_path / "shard0.skc", tmp_path / "shard1.skc"]
    sk.Candidates(ads[:1990]).save(paths[0])
    sk.Candidates(ads[1990:]).save(paths[1])
    return ads, paths


def expected_global_ids(users, ads, k, offsets):
    """sk.topk's ids over all the ads, mapped to each shard's offset (Python ints: no wrap)."""
    _, rows = sk.topk(users, ads, k)
    global_ids = [offsets[0] + r for r in range(1990)] + [offsets[1] + r for r in range(10)]
    return np.array([[global_ids[r] for r in row] for row in rows.tolist()], np.uint64)


@pytest.mark.parametrize("offsets", [[0, 2**63 - 3], [2**63, 0], [0, 2**64 - 10]])
def test_shard_offsets_past_int64_give_uint64_ids(rng, two_shards, offsets):
    ads, paths = two_shards
    users = rng.standard_normal((40, DIM)).astype(np.float32)
    job = _offline.TopkBatch(paths, 20, offsets=offsets)
    scores, ids = job.topk(users)
    assert ids.dtype == np.uint64
    np.testing.assert_array_equal(ids, expected_global_ids(users, ads, 20, offsets))
    np.testing.assert_array_equal(scores, sk.topk(users, ads, 20)[0])
    for rows in (users[:1], users[:0]):  # every batch has the job's id type, whatever ids it holds
        assert job.topk(rows)[1].dtype == np.uint64
    assert job(pa.table({"embedding": fixed_lists(users[:0])})).schema.field("topk_ids").type.value_type == pa.uint64()


def test_shard_offsets_within_int64_keep_int64_ids(rng, two_shards):
    _, paths = two_shards
    job = _offline.TopkBatch(paths, 5, offsets=[0, 2**63 - 10])  # the largest id is 2**63 - 1
    assert job.topk(rng.standard_normal((3, DIM)).astype(np.float32))[1].dtype == np.int64


@pytest.mark.parametrize("offset", [2**64 - 9, 2**64, 2**70])
def test_shard_offsets_past_uint64_are_refused_by_value(two_shards, offset):
    _, paths = two_shards
    with pytest.raises(ValueError, match=f"offsets: the offset {offset} "):
        _offline.TopkBatch(paths, 5, offsets=[0, offset])


def test_cli_writes_uint64_ids_for_offsets_past_int64(tmp_path, rng, two_shards):
    """k=3 in batches of one user: most batches hold no id of shard 1, yet every one is uint64."""
    ads, paths = two_shards
    users = rng.standard_normal((60, DIM)).astype(np.float32)
    write_users(tmp_path / "users.parquet", users)
    offsets = [0, 2**63 - 3]
    assert offline(tmp_path, "--candidates", *paths, "--offsets", *offsets, "--k", 3, "--batch-rows", 1, "--out",
                   tmp_path / "top.parquet") == 0
    table = pq.read_table(tmp_path / "top.parquet")
    assert table.schema.field("topk_ids").type.value_type == pa.uint64()
    np.testing.assert_array_equal(np.array(table.column("topk_ids").to_pylist(), np.uint64),
                                  expected_global_ids(users, ads, 3, offsets))


def test_cli_refuses_offsets_past_uint64(capsys, tmp_path, data, two_shards):
    _, paths = two_shards
    assert_refused(capsys, tmp_path, ["--candidates", *paths, "--offsets", 0, 2**64, "--k", 5, "--out",
                                      tmp_path / "top.parquet"], "offsets", str(2**64))


# ---- saved live sets: their ids are the ad ids (issue 24, item 5) ------------------------------
def live_history(rng, count=600, objectives=False):
    """A history of batches over ad ids spread across int64 (0 and 2**63 - 1 among them): the
    first rows, then upserts (new ids and replaced rows), removals (present and absent ids) and,
    with objectives, bid changes. Each step is (method, keyword arguments)."""
    ids = np.union1d(rng.integers(1, 2**63 - 1, count - 2), [0, 2**63 - 1])
    ids = rng.permutation(ids)  # given in any order
    ads = rng.standard_normal((len(ids), DIM)).astype(np.float32)

    def rows(n):
        extra = dict(objectives=rng.integers(0, 3, n), bids=rng.lognormal(0, 1, n).astype(np.float32))
        return dict(ads=rng.standard_normal((n, DIM)).astype(np.float32), **(extra if objectives else {}))

    first = dict(ids=ids, **rows(len(ids)))
    first["ads"] = ads
    new_ids = np.setdiff1d(rng.integers(1, 2**63 - 1, 40), ids)
    steps = [("upsert", dict(ids=np.concatenate([new_ids, ids[:30]]), **rows(len(new_ids) + 30))),
             ("remove", dict(ids=np.concatenate([ids[30:60], new_ids[:5], [12345]]))),
             ("upsert", dict(ids=ids[100:110], **rows(len(ids[100:110]))))]
    if objectives:
        steps.append(("set_bids", dict(ids=ids[200:260], bids=rng.lognormal(0, 1, len(ids[200:260])).astype(np.float32))))
    steps.append(("remove", dict(ids=ids[300:310])))
    return first, steps


def live_set(history, dtype="float32", exact=False, keep=None):
    """The live set after the history, not compacted; keep(ids) -> mask: only those ids' rows."""
    first, steps = history
    objectives = "objectives" in first

    def kept(arguments):
        if keep is None:
            return arguments
        mask = keep(arguments["ids"])
        return {name: value[mask] for name, value in arguments.items()}

    first = kept(first)
    live = sk.LiveCandidates.from_arrays(first["ids"], first["ads"], dtype, exact=exact,
                                         objectives=first.get("objectives"), bids=first.get("bids"))
    assert live.objectives == objectives
    for method, arguments in steps:
        arguments = dict(kept(arguments))
        ids = arguments.pop("ids")
        if method == "upsert":
            live.upsert(ids, arguments.pop("ads"), **arguments)
        else:
            getattr(live, method)(ids, **arguments)
    return live


def same_topk(got, want):
    assert got[1].dtype == np.int64, got[1].dtype
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


LIVE_CASES = {  # dtype, exact, objectives
    "float32": ("float32", False, False),
    "int8-exact": ("int8", True, False),
    "bfloat16-by-value": ("bfloat16", False, True),
}


@pytest.mark.parametrize("case", sorted(LIVE_CASES))
def test_a_saved_live_set_scores_as_live_topk(tmp_path, rng, case):
    """A live set saved with changes pending answers offline (the batch function, the local
    engine, the command) exactly as live.topk: its ad ids, int64, the scores bit for bit."""
    dtype, exact, objectives = LIVE_CASES[case]
    live = live_set(live_history(rng, objectives=objectives), dtype, exact)
    assert live.version > 0  # batches applied, never compacted: the file holds their merge
    live.save(tmp_path / "ads.skl")
    users = rng.standard_normal((50, DIM)).astype(np.float32)
    write_users(tmp_path / "users.parquet", users, row_group_size=16)
    if objectives:
        metric = sk.ObjectiveMetrics([sk.Metric.diagonal(rng.standard_normal(DIM), bias=b) for b in (-1.0, 0.0, 1.0)])
    else:
        metric = sk.Metric.diagonal(rng.standard_normal(DIM), bias=0.25)
    metric.save(tmp_path / "metric.npz")
    expected = live.topk(users, 20, metric)  # by value with objectives, as a Candidates file's default
    job = _offline.TopkBatch(tmp_path / "ads.skl", 20, metric)
    same_topk(job.topk(users), expected)
    same_topk(job.topk(users[:1]), live.topk(users[:1], 20, metric))
    if objectives:  # the other outputs, as live.topk ranks them
        for output in ("logit", "probability"):
            same_topk(_offline.TopkBatch(tmp_path / "ads.skl", 20, metric, output=output).topk(users),
                      live.topk(users, 20, metric, output=output))
    assert offline(tmp_path, "--candidates", tmp_path / "ads.skl", "--k", 20, "--metric", tmp_path / "metric.npz",
                   "--batch-rows", 16, "--out", tmp_path / "top.parquet") == 0
    table, scores, ids = read_results(tmp_path / "top.parquet")
    assert table.schema.field("topk_ids").type.value_type == pa.int64()
    same_topk((scores, ids), expected)


def test_live_shards_merge_by_ad_id(tmp_path, rng):
    """Two live shards (the ids split by parity, each after the same history) score as the one
    live set that holds both: merged by ad id, by value, through the batch function and the
    command; an empty live shard changes nothing."""
    history = live_history(rng, objectives=True)
    whole = live_set(history)
    paths = [tmp_path / "even.skl", tmp_path / "odd.skl"]
    for parity, path in enumerate(paths):
        live_set(history, keep=lambda ids, parity=parity: ids % 2 == parity).save(path)
    sk.LiveCandidates(DIM, objectives=True).save(tmp_path / "empty.skl")
    om = sk.ObjectiveMetrics([sk.Metric.diagonal(rng.standard_normal(DIM), bias=b) for b in (-1.0, 0.0, 1.0)])
    om.save(tmp_path / "om.npz")
    users = rng.standard_normal((40, DIM)).astype(np.float32)
    write_users(tmp_path / "users.parquet", users)
    expected = whole.topk(users, 25, om)
    same_topk(_offline.TopkBatch(paths, 25, om).topk(users), expected)
    same_topk(_offline.TopkBatch([*paths, tmp_path / "empty.skl"], 25, om).topk(users), expected)
    assert offline(tmp_path, "--candidates", *paths, "--k", 25, "--metric", tmp_path / "om.npz", "--out",
                   tmp_path / "top.parquet") == 0
    same_topk(read_results(tmp_path / "top.parquet")[1:], expected)


def test_live_shards_are_refused_with_offsets_plain_shards_or_shared_ids(capsys, tmp_path, rng, data):
    history = live_history(rng, count=100)
    live_set(history).save(tmp_path / "ads.skl")
    live_set(history, keep=lambda ids: ids % 3 == 0).save(tmp_path / "third.skl")
    with pytest.raises(ValueError, match="offsets: a saved live set's ids are its own ad ids"):
        _offline.TopkBatch(tmp_path / "ads.skl", 5, offsets=[0])
    with pytest.raises(ValueError, match="ads.skl is a saved live set .*/ads.skc a Candidates file"):
        _offline.TopkBatch([tmp_path / "ads.skl", tmp_path / "ads.skc"], 5)
    with pytest.raises(ValueError, match="ad id .* is in two live shards .*ads.skl and .*third.skl"):
        _offline.TopkBatch([tmp_path / "ads.skl", tmp_path / "third.skl"], 5)
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skl", "--offsets", 0, "--k", 5, "--out",
                                      tmp_path / "top.parquet"], "offsets", "live set")
    assert_refused(capsys, tmp_path, ["--candidates", tmp_path / "ads.skc", tmp_path / "ads.skl", "--k", 5, "--out",
                                      tmp_path / "top.parquet"], "live set", "Candidates file")


def test_the_set_file_says_whether_it_is_a_live_set(tmp_path, rng, data):
    from splitnet_kernels import _set_file

    live_set(live_history(rng, count=50)).save(tmp_path / "ads.skl")
    assert _set_file.is_live(tmp_path / "ads.skl") and not _set_file.is_live(tmp_path / "ads.skc")
    assert isinstance(_offline.load_set(tmp_path / "ads.skl"), sk.LiveCandidates)
    assert isinstance(_offline.load_set(tmp_path / "ads.skc"), sk.Candidates)
    with pytest.raises(ValueError, match="not a splitnet_kernels candidate file"):
        _set_file.is_live(tmp_path / "metric.npz")


# ---- without pyarrow: one line naming the extra (issue 22, class 14) ---------------------------
WITHOUT_PYARROW = """
import sys
sys.modules["pyarrow"] = None  # import pyarrow now fails, as where it is not installed
from splitnet_kernels import cli
rc = cli.main(["offline", "--users", "u.parquet", "--candidates", "a.skc", "--k", "3", "--out", "o.parquet"])
try:
    import splitnet_kernels.distributed
except ImportError as error:
    print(error)
sys.exit(rc)
"""


def test_offline_without_pyarrow_names_the_extra(tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", WITHOUT_PYARROW], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("\n") == 1, done.stderr
    hint = 'pip install "splitnet-kernels[offline]"'
    assert done.stderr.startswith("splitnet-kernels offline: error: ") and hint in done.stderr
    assert hint in done.stdout  # importing splitnet_kernels.distributed says the same
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "pyproject.toml"), "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert any(need.startswith("pyarrow") for need in extras["offline"])
    assert "splitnet-kernels[offline]" in extras["ray"]


def test_ray_engine_without_ray_names_the_extra(tmp_path, data):
    import subprocess
    import sys

    code = ("import sys; sys.modules['ray'] = None; from splitnet_kernels import cli; "
            f"sys.exit(cli.main(['offline', '--engine', 'ray', '--users', 'users.parquet', '--candidates', 'ads.skc', "
            f"'--k', '3', '--out', 'top.parquet']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert 'pip install "splitnet-kernels[ray]"' in done.stderr
    assert not os.path.exists(tmp_path / "top.parquet")


# ---- the Ray engine writes the part files the local engine writes ------------------------------
@pytest.mark.ray
@pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")
def test_ray_engine_writes_part_files_and_uint64_ids(tmp_path, rng, two_shards):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()  # the command starts Ray and stops it
    ads, paths = two_shards
    users = rng.standard_normal((300, DIM)).astype(np.float32)
    write_users(tmp_path / "users.parquet", users)
    offsets = [0, 2**63]
    assert offline(tmp_path, "--engine", "ray", "--concurrency", 1, "--candidates", *paths, "--offsets", *offsets,
                   "--k", 3, "--batch-rows", 100, "--out", tmp_path / "top") == 0
    names = sorted(os.listdir(tmp_path / "top"))
    assert names == [f"part-{i:05d}.parquet" for i in range(len(names))] and names, names
    table = pq.read_table(tmp_path / "top").sort_by("user_id")
    assert table.schema.field("topk_ids").type.value_type == pa.uint64()
    np.testing.assert_array_equal(np.array(table.column("topk_ids").to_pylist(), np.uint64),
                                  expected_global_ids(users, ads, 3, offsets))
