"""splitnet_kernels.distributed on a real local Ray cluster (two CPUs, started once for the module):
real Parquet files, results identical to in-process sk.topk / sk.score, a worker killed mid-job."""

from __future__ import annotations

import os
import signal
import socket

import numpy as np
import pytest

import splitnet_kernels as sk
from splitnet_kernels import cli

ray = pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
from splitnet_kernels import distributed as skd  # noqa: E402  (needs pyarrow)

pytestmark = [pytest.mark.ray,
              # Ray's DataContext sets deprecated fields of its own when it is first made
              pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")]

DIM = 24
# Each dataset starts its own actors, seconds each on a busy 2-core machine: the tests that do not
# need two take one.


@pytest.fixture(scope="module")
def cluster():
    """One Ray cluster for every test here: starting one takes seconds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


def fixed_lists(values):
    return pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), values.shape[1])


def results(dataset, key="user_id"):
    """The dataset's rows as one table, in key order."""
    return pa.concat_tables(ray.get(dataset.to_arrow_refs())).sort_by(key)


def column(table, name, dtype):
    return np.array(table.column(name).to_pylist(), dtype)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """1,200 users in 8 Parquet files, 3,000 candidates saved, a low-rank metric."""
    rng = np.random.default_rng(15)
    folder = tmp_path_factory.mktemp("offline")
    ads = rng.standard_normal((3000, DIM)).astype(np.float32)
    users = rng.standard_normal((1200, DIM)).astype(np.float32)
    sk.Candidates(ads).save(folder / "ads.skc")
    (folder / "users").mkdir()
    for i in range(8):
        rows = slice(150 * i, 150 * (i + 1))
        pq.write_table(pa.table({"user_id": np.arange(1200)[rows], "embedding": fixed_lists(users[rows])}),
                       folder / "users" / f"part-{i}.parquet")
    metric = sk.Metric.low_rank(rng.standard_normal((DIM, 3)), rng.standard_normal((DIM, 3)),
                                d=rng.standard_normal(DIM), bias=-0.5)
    metric.save(folder / "metric.npz")
    return folder, ads, users, metric


def test_topk_dataset_over_parquet_files(cluster, data):
    folder, ads, users, metric = data
    files = sorted(str(p) for p in (folder / "users").iterdir())
    out = skd.topk_dataset(ray.data.read_parquet(files), str(folder / "ads.skc"), k=40, metric=metric,
                           batch_size=100)
    table = results(out)
    expected_scores, expected_ids = sk.topk(users, ads, 40, metric)
    np.testing.assert_array_equal(table.column("user_id").to_numpy(), np.arange(1200))
    np.testing.assert_array_equal(column(table, "topk_ids", np.int64), expected_ids)
    np.testing.assert_array_equal(column(table, "topk_scores", np.float32), expected_scores)


def test_tensor_column_sharded_objectives_by_value(cluster, data, tmp_path):
    """A Ray tensor column, two shard files with objectives and bids, ranked by value."""
    folder, ads, users, _ = data
    rng = np.random.default_rng(0)
    objectives, bids = rng.integers(0, 2, len(ads)), rng.lognormal(0, 1, len(ads)).astype(np.float32)
    om = sk.ObjectiveMetrics([sk.Metric.diagonal(rng.standard_normal(DIM), bias=b) for b in (-1.0, 1.0)])
    shards = [tmp_path / "shard0.skc", tmp_path / "shard1.skc"]
    sk.Candidates(ads[:1800], objectives=objectives[:1800], bids=bids[:1800]).save(shards[0])
    sk.Candidates(ads[1800:], objectives=objectives[1800:], bids=bids[1800:]).save(shards[1])
    dataset = ray.data.from_items([{"user_id": i, "embedding": users[i]} for i in range(300)])
    assert "Tensor" in str(dataset.schema())
    table = results(skd.topk_dataset(dataset, shards, k=30, metric=om, batch_size=64, concurrency=1))
    expected_values, expected_ids = sk.Candidates(ads, objectives=objectives, bids=bids).topk(users[:300], 30, om)
    np.testing.assert_array_equal(column(table, "topk_ids", np.int64), expected_ids)
    np.testing.assert_array_equal(column(table, "topk_scores", np.float32), expected_values)
    # the tensor column as Ray writes it to Parquet, read by the local engine
    dataset.write_parquet(str(tmp_path / "ray_users"))
    om.save(tmp_path / "om.npz")
    assert cli.main(["offline", "--users", str(tmp_path / "ray_users"), "--candidates", *map(str, shards), "--k", "30",
                     "--metric", str(tmp_path / "om.npz"), "--out", str(tmp_path / "top.parquet"), "--no-progress"]) == 0
    table = pq.read_table(tmp_path / "top.parquet").sort_by("user_id")
    np.testing.assert_array_equal(column(table, "topk_ids", np.int64), expected_ids)
    np.testing.assert_array_equal(column(table, "topk_scores", np.float32), expected_values)


def test_topk_dataset_over_live_shards(cluster, data, tmp_path):
    """Two saved live sets (changed, not compacted; by value) as shards: the ids are the ad ids,
    merged exactly as the one live set holding both answers."""
    folder, ads, users, _ = data
    rng = np.random.default_rng(2)
    ids = rng.permutation(np.union1d(rng.integers(0, 2**63 - 1, len(ads) - 1), [2**63 - 1]))
    objectives, bids = rng.integers(0, 2, len(ads)), rng.lognormal(0, 1, len(ads)).astype(np.float32)
    whole = sk.LiveCandidates.from_arrays(ids, ads, "int8", exact=True, objectives=objectives, bids=bids)
    odd = ids % 2 == 1
    shards = [sk.LiveCandidates.from_arrays(ids[m], ads[m], "int8", exact=True, objectives=objectives[m], bids=bids[m])
              for m in (odd, ~odd)]
    rows, new_bids = rng.standard_normal((100, DIM)).astype(np.float32), rng.lognormal(0, 1, 300).astype(np.float32)
    for live in (whole, *shards):  # each applies the changes to the ids it holds
        mine = live.contains(ids[:300])
        replaced = mine[:100]
        live.upsert(ids[:100][replaced], rows[replaced], objectives=np.ones(replaced.sum(), np.int64),
                    bids=new_bids[:100][replaced])
        live.set_bids(ids[100:300][mine[100:]], new_bids[100:][mine[100:]])
        live.remove(ids[300:400])
    paths = [str(tmp_path / "odd.skl"), str(tmp_path / "even.skl")]
    for live, path in zip(shards, paths):
        live.save(path)
    om = sk.ObjectiveMetrics([sk.Metric.diagonal(rng.standard_normal(DIM), bias=b) for b in (-1.0, 1.0)])
    dataset = ray.data.from_arrow(pa.table({"user_id": np.arange(200), "embedding": fixed_lists(users[:200])}))
    table = results(skd.topk_dataset(dataset, paths, k=30, metric=om, batch_size=64, concurrency=1))
    assert table.schema.field("topk_ids").type.value_type == pa.int64()
    expected_values, expected_ids = whole.topk(users[:200], 30, om)
    np.testing.assert_array_equal(column(table, "topk_ids", np.int64), expected_ids)
    np.testing.assert_array_equal(column(table, "topk_scores", np.float32), expected_values)


def test_score_dataset(cluster, data):
    folder, ads, users, metric = data
    pairs = pa.table({"user_id": np.arange(1000), "user": fixed_lists(users[:1000]), "ad": fixed_lists(ads[:1000])})
    table = results(skd.score_dataset(ray.data.from_arrow(pairs), metric=metric, batch_size=128, concurrency=1))
    np.testing.assert_array_equal(table.column("score").to_numpy(),
                                  sk.score(users[:1000], ads[:1000], metric, pairwise=True))


def parent(pid) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def map_workers() -> list:
    """Process ids of this cluster's Ray Data actors: named so by their process title, and children
    of the raylet that this process started (another Ray cluster on the machine may run actors too)."""
    pids = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::MapWorker") and parent(parent(entry)) == os.getpid():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def test_a_worker_killed_mid_job(cluster, tmp_path):
    """SIGKILL one actor after the first results arrive: Ray restarts it and retries its batch, and
    every row comes back once, with the results of an undisturbed run."""
    rng = np.random.default_rng(1)
    ads = rng.standard_normal((40_000, 256)).astype(np.float32)
    users = rng.standard_normal((3000, 256)).astype(np.float32)
    sk.Candidates(ads).save(tmp_path / "ads.skc")
    dataset = ray.data.from_arrow(pa.table({"user_id": np.arange(3000), "embedding": fixed_lists(users)}))
    batches = skd.topk_dataset(dataset, str(tmp_path / "ads.skc"), k=10, batch_size=100).iter_batches(
        batch_size=None, batch_format="pyarrow")
    batches = iter(batches)
    received = [next(batches)]
    victim = map_workers()[0]
    os.kill(victim, signal.SIGKILL)
    received += list(batches)
    assert len(received) > 2  # results kept coming after the kill: it was mid-job
    table = pa.concat_tables(received).sort_by("user_id")
    np.testing.assert_array_equal(table.column("user_id").to_numpy(), np.arange(3000))  # none lost, none twice
    expected_scores, expected_ids = sk.topk(users, ads, 10)
    np.testing.assert_array_equal(column(table, "topk_ids", np.int64), expected_ids)
    np.testing.assert_array_equal(column(table, "topk_scores", np.float32), expected_scores)
    assert victim not in map_workers()


@pytest.mark.parametrize("out", ["top.parquet", "top"])
def test_cli_ray_engine(cluster, data, tmp_path, out):
    folder, ads, users, metric = data
    assert cli.main(["offline", "--engine", "ray", "--users", str(folder / "users"), "--candidates",
                     str(folder / "ads.skc"), "--k", "12", "--metric", str(folder / "metric.npz"), "--out",
                     str(tmp_path / out), "--batch-rows", "200", "--concurrency", "1"]) == 0
    table = pq.read_table(tmp_path / out).sort_by("user_id")
    expected_scores, expected_ids = sk.topk(users, ads, 12, metric)
    np.testing.assert_array_equal(column(table, "topk_ids", np.int64), expected_ids)
    np.testing.assert_array_equal(column(table, "topk_scores", np.float32), expected_scores)


# ---- bad input: refused when the dataset is built, before any work -----------------------------
def test_refused_before_any_work(cluster, data):
    folder, ads, users, metric = data
    dataset = ray.data.from_arrow(pa.table({"user_id": np.arange(10), "embedding": fixed_lists(users[:10, :-1])}))
    with pytest.raises(ValueError, match=f"user_column: column 'embedding' holds embeddings of dimension {DIM - 1}"):
        skd.topk_dataset(dataset, str(folder / "ads.skc"), k=5)
    with pytest.raises(ValueError, match="metric has dimension 7"):
        skd.topk_dataset(dataset, str(folder / "ads.skc"), k=5, metric=sk.Metric.dot(7))
    with pytest.raises(FileNotFoundError, match="candidates: no candidate file"):
        skd.topk_dataset(dataset, str(folder / "missing.skc"), k=5)
    with pytest.raises(TypeError, match="user_column: column 'user_id' has type int64"):
        skd.topk_dataset(dataset, str(folder / "ads.skc"), k=5, user_column="user_id")


def test_unreachable_address_is_an_error_not_a_hang(data, tmp_path, capsys):
    folder, *_ = data
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli.main(["offline", "--engine", "ray", "--address", f"127.0.0.1:{port}", "--users", str(folder / "users"),
                     "--candidates", str(folder / "ads.skc"), "--k", "5", "--out", str(tmp_path / "top.parquet")]) == 2
    assert f"cannot reach a Ray cluster at '127.0.0.1:{port}'" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "top.parquet")
