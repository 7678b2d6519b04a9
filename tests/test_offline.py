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
