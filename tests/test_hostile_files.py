"""Hostile files and inputs for sk.Candidates (issue 9): saving under a process that maps the file,
values that overflow the storage, tiny int8 rows, damaged and malformed headers, hostile
`allowed` subsets, and int8 rows longer than the kernels take. Issue 22: damaged, crafted and
foreign Metric / ObjectiveMetrics files, and paths that are not regular files (a FIFO)."""

import io
import json
import os
import pathlib
import re
import subprocess
import sys
import threading
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch

import splitnet_kernels as sk
from splitnet_kernels import _candidates

DTYPES = ("float32", "float16", "bfloat16", "int8")


def _child_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pathlib.Path(sk.__file__).resolve().parents[1]),
                                                      env.get("PYTHONPATH")]))
    return env


# ---- 1. save never disturbs a process that maps the file ------------------------------------------
# In a child process: before the fix, save truncated the mapped file in place and the reader died
# of SIGBUS, which must fail this test rather than end the test run.
_MAPPED_READER = """
import os, sys
import numpy as np
import splitnet_kernels as sk
dtype, path = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(3)
users = rng.standard_normal((2, 24)).astype(np.float32)
for new_count in (4000, 10):  # the new file bigger, then smaller, than the mapped one
    sk.Candidates(rng.standard_normal((500, 24)).astype(np.float32), dtype=dtype).save(path)
    mapped = sk.Candidates.load(path, mmap=True)
    copy = sk.Candidates.load(path, mmap=False)
    other = sk.Candidates(rng.standard_normal((new_count, 24)).astype(np.float32), dtype=dtype)
    other.save(path)
    assert np.array_equal(mapped.score(users), copy.score(users)), "the mapped set changed under its reader"
    assert all(np.array_equal(a, b) for a, b in zip(mapped.topk(users, 9), copy.topk(users, 9)))
    assert np.array_equal(sk.Candidates.load(path).score(users), other.score(users)), "the new file is not read"
    mapped.save(path)  # re-saving a mapped set to the very file it reads
    assert np.array_equal(mapped.score(users), copy.score(users))
    assert np.array_equal(sk.Candidates.load(path).score(users), copy.score(users))
    assert os.listdir(os.path.dirname(path)) == [os.path.basename(path)], os.listdir(os.path.dirname(path))
print("survived")
"""


@pytest.mark.parametrize("dtype", DTYPES)
def test_save_never_disturbs_a_mapped_reader(tmp_path, dtype):
    folder = tmp_path / "sets"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", _MAPPED_READER, dtype, str(folder / "cands.bin")],
                          env=_child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "survived", \
        f"exit {done.returncode} (-7 is SIGBUS): {done.stderr.strip()[-1500:]}"


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "cands.bin"
    old = sk.Candidates(np.ones((3, 8), np.float32))
    old.save(path)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        sk.Candidates(np.zeros((5, 8), np.float32)).save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["cands.bin"]


def test_save_writes_through_a_symlink(tmp_path):
    target, link = tmp_path / "target.bin", tmp_path / "link.bin"
    sk.Candidates(np.ones((3, 8), np.float32)).save(target)
    link.symlink_to(target)
    sk.Candidates(np.full((4, 8), 2.0, np.float32)).save(link)
    assert link.is_symlink() and len(sk.Candidates.load(target)) == 4


# ---- 2. finite values that do not fit the storage are refused -------------------------------------
@pytest.mark.parametrize("dtype, value", [
    ("bfloat16", np.float32(3.4e38)),  # finite float32, rounds (to nearest even) to bfloat16 infinity
    ("bfloat16", np.float64(1e39)),
    ("int8", np.float64(1e300)),  # its scale, 1e300 / 127, is beyond float32
    ("int8", np.float64(1e39)),  # the scale fits, but 127 * scale does not
    ("float32", np.float64(1e39)),
    ("float32", np.float64(-1e300)),
    ("float16", np.float32(70000.0)),
])
def test_values_beyond_the_storage_range_are_refused(dtype, value):
    ads = np.ones((3, 5), type(value))
    ads[1, 2] = value
    with pytest.raises(ValueError, match=rf"ads: .*\[1, 2\].*{dtype}"):
        sk.Candidates(ads, dtype=dtype)


@pytest.mark.parametrize("dtype, value", [
    ("bfloat16", np.float32(np.uint32(0x7F7F0000).view(np.float32))),  # the largest finite bfloat16
    ("int8", np.finfo(np.float32).max),
    ("int8", -np.finfo(np.float32).max),
    ("float32", np.float64(np.finfo(np.float32).max)),
    ("float16", np.float32(65504.0)),
])
def test_values_at_the_top_of_the_storage_range_are_kept(dtype, value):
    ads = np.ones((2, 5), type(value))
    ads[0, 3] = value
    rows = sk.Candidates(ads, dtype=dtype).rows()
    assert np.all(np.isfinite(rows))
    np.testing.assert_allclose(rows[0, 3], float(value), rtol=1e-2)


def test_float32_storage_still_takes_nan_and_infinity():
    ads = np.array([[np.nan, 1.0], [np.inf, -np.inf]], np.float32)
    np.testing.assert_array_equal(sk.Candidates(ads).rows(), ads)


# ---- 3. tiny int8 rows keep a usable scale ---------------------------------------------------------
def test_tiny_int8_rows_save_load_and_reconstruct(tmp_path):
    tiny = np.finfo(np.float32).smallest_subnormal
    ads = np.array([[1e-44, -5e-45, 0.0], [tiny, 0.0, -tiny], [1e-300, 0.0, 0.0], [0.0, 0.0, 0.0],
                    [1e-38, 3e-39, 0.0], [1.0, -0.25, 0.5]], np.float64)
    cands = sk.Candidates(ads, dtype="int8")
    path = tmp_path / "tiny.bin"
    cands.save(path)
    for loaded in (sk.Candidates.load(path, mmap=True), sk.Candidates.load(path, mmap=False)):
        scales = loaded._store.scales
        assert scales.dtype == np.float32 and np.all(np.isfinite(scales)) and np.all(scales > 0), scales
        # |row - scale * q| <= scale / 2 (rounding to nearest), plus float32 rounding of the product
        error = np.abs(loaded.rows().astype(np.float64) - ads)
        assert np.all(error <= 0.5 * scales[:, None].astype(np.float64) + 2 * 2.0**-24 * np.abs(ads) + 1e-300), error
        np.testing.assert_array_equal(loaded.rows(), cands.rows())


# ---- 4. the header is inside a checksum ------------------------------------------------------------
def _data_start(raw: bytes) -> int:
    """Where the stored rows begin: after the magic, the header length, the header and its CRC-32."""
    length = int.from_bytes(raw[len(_candidates._MAGIC):len(_candidates._MAGIC) + 8], "little")
    return -(-(len(_candidates._MAGIC) + 8 + length + 4) // 64) * 64


@pytest.mark.parametrize("dtype", ("float32", "int8"))
def test_every_single_bit_flip_in_the_header_is_refused(tmp_path, dtype):
    path = tmp_path / "good.bin"
    sk.Candidates(np.arange(15, dtype=np.float32).reshape(5, 3), dtype=dtype).save(path)
    raw = path.read_bytes()
    assert len(sk.Candidates.load(path)) == 5
    bad = tmp_path / "bad.bin"
    start = _data_start(raw)
    assert 0 < start < len(raw)
    for bit in range(8 * start):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ValueError):
            sk.Candidates.load(bad)
            pytest.fail(f"loaded with bit {bit} of the header flipped")


def test_an_older_format_asks_to_be_saved_again(tmp_path):
    path = tmp_path / "old.bin"
    sk.Candidates(np.ones((2, 4), np.float32)).save(path)
    raw = bytearray(path.read_bytes())
    raw[:len(_candidates._MAGIC)] = b"SPLITNET-CANDIDATES\x00v1\x00"
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="older .*format.*save"):
        sk.Candidates.load(path)


# ---- 5. malformed headers are ValueErrors ----------------------------------------------------------
_GOOD = {"dtype": "float32", "count": 2, "dim": 3, "stored_dim": 64,
         "arrays": {"data": {"offset": 0, "nbytes": 512, "crc32": zlib.crc32(bytes(512))}}}


def _crafted(header: bytes, *, crc_ok: bool = True, length: int | None = None, data: bytes = bytes(1024)) -> bytes:
    """A file of the current format around `header` (JSON bytes), with a header CRC-32 that is
    right (so that the parser is reached) or wrong, and a header length that may lie."""
    length = len(header) if length is None else length
    block = bytearray(-(-(len(_candidates._MAGIC) + 8 + len(header) + 4) // 64) * 64)
    block[:len(_candidates._MAGIC) + 8 + len(header)] = _candidates._MAGIC + length.to_bytes(8, "little") + header
    block[-4:] = (zlib.crc32(bytes(block[:-4])) ^ (0 if crc_ok else 1)).to_bytes(4, "little")
    return bytes(block) + data


def _with(**changes) -> bytes:
    header = json.loads(json.dumps(_GOOD))
    for key, value in changes.items():
        target = header
        *parents, last = key.split(".")
        for parent in parents:
            target = target[parent]
        target[last] = value
    return json.dumps(header).encode()


_MALFORMED = {
    "count 1e400": json.dumps(_GOOD).replace('"count": 2', '"count": 1e400').encode(),
    "dim Infinity": json.dumps(_GOOD).replace('"dim": 3', '"dim": Infinity').encode(),
    "dim -Infinity": json.dumps(_GOOD).replace('"dim": 3', '"dim": -Infinity').encode(),
    "count NaN": json.dumps(_GOOD).replace('"count": 2', '"count": NaN').encode(),
    "offset 1e400": json.dumps(_GOOD).replace('"offset": 0', '"offset": 1e400').encode(),
    "deep nesting": b"[" * 100000 + b"]" * 100000,
    "deep nesting in a field": json.dumps(_GOOD).replace('"count": 2', '"count": ' + "[" * 100000 + "]" * 100000).encode(),
    "size beyond int64": _with(count=2**62, **{"arrays.data.nbytes": 2**62 * 64 * 4}),
    "count beyond int64": _with(count=2**70),
    "count true": _with(count=True),
    "dim true": _with(dim=True),
    "stored_dim true": _with(stored_dim=True),
    "count float": _with(count=2.0),
    "dim string": _with(dim="3"),
    "offset true": _with(**{"arrays.data.offset": True}),
    "offset negative": _with(**{"arrays.data.offset": -64}),
    "offset unaligned": _with(**{"arrays.data.offset": 1}),
    "offset float": _with(**{"arrays.data.offset": 0.0}),
    "nbytes true": _with(**{"arrays.data.nbytes": True}),
    "crc32 string": _with(**{"arrays.data.crc32": "0"}),
    "count negative": _with(count=-1),
    "dim zero": _with(dim=0),
    "stored_dim not the padded dim": _with(stored_dim=128, **{"arrays.data.nbytes": 1024}),
    "dtype a list": _with(dtype=["float32"]),
    "dtype unknown": _with(dtype="float64"),
    "arrays a list": _with(arrays=[]),
    "arrays missing data": _with(arrays={}),
    "data a number": _with(**{"arrays.data": 5}),
    "header a list": b"[1, 2]",
    "header a string": b'"float32"',
    "header a number": b"7",
    "header null": b"null",
    "not json": b"{not json",
    "not utf-8": b'{"dtype": "\xff\xfe"}',
    "empty header": b"",
    "int8 rows longer than the kernels take": _with(dtype="int8", dim=131073, stored_dim=131136),
}


def test_the_crafted_good_header_loads(tmp_path):
    path = tmp_path / "good.bin"
    path.write_bytes(_crafted(json.dumps(_GOOD).encode()))
    loaded = sk.Candidates.load(path)
    assert (len(loaded), loaded.dim, loaded.dtype) == (2, 3, "float32")


@pytest.mark.parametrize("crc_ok", (True, False), ids=("right-crc", "wrong-crc"))
@pytest.mark.parametrize("name", list(_MALFORMED))
def test_malformed_headers_are_value_errors(tmp_path, name, crc_ok):
    path = tmp_path / "bad.bin"
    path.write_bytes(_crafted(_MALFORMED[name], crc_ok=crc_ok))
    with pytest.raises(ValueError, match="header"):
        sk.Candidates.load(path)


@pytest.mark.parametrize("length", (2**64 - 1, 2**63, 10**6, 600))
def test_a_header_length_beyond_the_file_is_refused(tmp_path, length):
    path = tmp_path / "bad.bin"
    path.write_bytes(_crafted(json.dumps(_GOOD).encode(), length=length))
    with pytest.raises(ValueError, match="header"):
        sk.Candidates.load(path)


# ---- 6. hostile `allowed` subsets ------------------------------------------------------------------
@pytest.fixture(params=DTYPES)
def subset_case(request):
    rng = np.random.default_rng(11)
    ads = rng.standard_normal((50, 12)).astype(np.float32)
    return sk.Candidates(ads, dtype=request.param), rng.standard_normal(12).astype(np.float32)


@pytest.mark.parametrize("bad", [
    np.array([2**63], np.uint64), np.array([3, 2**63], np.uint64), np.array([2**64 - 1], np.uint64),
    np.array([50], np.uint8), np.array([-1], np.int8), np.array([5, -(2**63)], np.int64),
    torch.tensor([50]), torch.tensor([-1, 3]),
], ids=lambda x: f"{type(x).__module__.split('.')[0]}-{x.dtype}-{x.tolist()}")
def test_allowed_ids_out_of_range_are_refused(backend, subset_case, bad):
    cands, user = subset_case
    with pytest.raises(ValueError, match=r"allowed: .*\[0, 50\)"):
        cands.topk(user, 7, allowed=bad, backend=backend)


def test_allowed_tensors_keep_their_dtype(backend, subset_case):
    cands, user = subset_case
    mask = np.zeros(50, bool)
    mask[[1, 4, 9, 16, 25, 36, 49, 3, 8]] = True
    expected = np.asarray(cands.topk(user, 7, allowed=np.flatnonzero(mask), backend=backend)[1])
    assert expected.shape == (7,)
    for allowed in (torch.from_numpy(mask), torch.from_numpy(np.flatnonzero(mask)),
                    torch.from_numpy(np.flatnonzero(mask).astype(np.int32)), np.flatnonzero(mask).astype(np.uint64),
                    np.flatnonzero(mask).astype(np.uint8), list(np.flatnonzero(mask))):
        scores, found = cands.topk(user, 7, allowed=allowed, backend=backend)
        np.testing.assert_array_equal(np.asarray(found), expected, err_msg=repr(allowed))


def test_an_empty_allowed_sequence_allows_none(backend, subset_case):
    cands, user = subset_case
    for allowed in ([], (), np.zeros(0, np.int64), torch.zeros(0, dtype=torch.int64), np.zeros(50, bool),
                    torch.zeros(50, dtype=torch.bool)):
        scores, found = cands.topk(user, 7, allowed=allowed, backend=backend)
        assert np.shape(scores) == np.shape(found) == (0,), repr(allowed)


@pytest.mark.parametrize("bad", [torch.tensor([1.0, 2.0]), torch.tensor([1, 2], dtype=torch.bfloat16),
                                 np.array([1.0]), [0.5], [[1, 2]], [[]], "ab", [1, [2, 3]]],
                         ids=repr)
def test_allowed_of_another_type_is_a_type_error(backend, subset_case, bad):
    cands, user = subset_case
    with pytest.raises(TypeError, match="allowed"):
        cands.topk(user, 7, allowed=bad, backend=backend)


# ---- 7. int8 rows longer than the kernels take are refused when the set is built ------------------
def test_int8_rows_longer_than_the_kernels_take_are_refused_when_built():
    with pytest.raises(ValueError, match=r"ads: .*131072.*\(1, 131073\)"):
        sk.Candidates(np.ones((1, 131073), np.float32), dtype="int8")
    longest = sk.Candidates(np.ones((2, 131072), np.float32), dtype="int8")
    scores = longest.score(np.ones(131072, np.float32))
    np.testing.assert_allclose(scores, [131072.0, 131072.0], rtol=1e-2)


# ---- 8. Metric and ObjectiveMetrics files (issue 22): one ValueError naming the file -------------
def _metric() -> sk.Metric:
    rng = np.random.default_rng(5)
    return sk.Metric.low_rank(rng.standard_normal((3, 1)), rng.standard_normal((3, 1)), rng.standard_normal(3),
                              bias=0.5)


def _objective_metrics() -> sk.ObjectiveMetrics:
    return sk.ObjectiveMetrics([sk.Metric.scaled(3, 2.0, bias=-1.0), _metric()], names=["video_view", "app_install"])


def _same_metric(a: sk.Metric, b: sk.Metric) -> bool:
    return (a.kind, a.dim, a.bias) == (b.kind, b.dim, b.bias) and all(
        (x is None and y is None) or (x is not None and y is not None and np.array_equal(x, y))
        for x, y in zip(a.form, b.form))


def _same(a, b) -> bool:
    if isinstance(b, sk.Metric):
        return isinstance(a, sk.Metric) and _same_metric(a, b)
    return a.names == b.names and len(a) == len(b) and all(_same_metric(x, y) for x, y in zip(a, b))


_SAVED = {"metric": (_metric, sk.Metric.load), "objective metrics": (_objective_metrics, sk.ObjectiveMetrics.load)}


@pytest.mark.parametrize("what", list(_SAVED))
def test_a_bit_flip_anywhere_in_a_metric_file_loads_the_same_or_is_refused(tmp_path, what):
    """One bit of every byte (the bit turning with the position): the file loads as the very
    metric saved, or is one ValueError naming it; never another exception, never another metric."""
    make, load = _SAVED[what]
    saved, path, bad = make(), tmp_path / "good.npz", tmp_path / "bad.npz"
    saved.save(path)
    raw = path.read_bytes()
    assert _same(load(path), saved)
    bad.write_bytes(raw)
    refused = 0
    fd = os.open(bad, os.O_WRONLY)
    try:
        for position in range(len(raw)):
            os.pwrite(fd, bytes([raw[position] ^ (1 << (position % 8))]), position)  # in place: fast
            try:
                loaded = load(bad)
            except ValueError as error:
                assert str(bad) in str(error), (position, error)
                refused += 1
            else:
                assert _same(loaded, saved), f"byte {position} flipped: loaded {loaded!r}"
            os.pwrite(fd, raw[position:position + 1], position)
    finally:
        os.close(fd)
    assert refused > len(raw) // 2  # the data and most of the zip structure are checked


def test_a_bit_flip_that_drops_an_entry_from_the_zip_directory_is_refused(tmp_path):
    """The flips in the zip directory that hide d.npy: before, the file loaded as a low_rank
    metric without its diagonal."""
    path, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    _metric().save(path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        names, directory = set(archive.namelist()), archive.start_dir
    dropping = 0
    for bit in range(8 * directory, 8 * len(raw)):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            with zipfile.ZipFile(io.BytesIO(flipped)) as archive:
                if not set(archive.namelist()) < names:
                    continue
        except Exception:  # noqa: BLE001 - zipfile itself sees the damage: not this test's case
            continue
        dropping += 1
        bad.write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            sk.Metric.load(bad)
    assert dropping > 0  # the damage this test is about does happen


@pytest.mark.parametrize("what", list(_SAVED))
def test_every_truncation_of_a_metric_file_is_refused(tmp_path, what):
    make, load = _SAVED[what]
    path, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    make().save(path)
    raw = path.read_bytes()
    bad.write_bytes(raw)
    for length in reversed(range(len(raw))):
        os.truncate(bad, length)
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            load(bad)
            pytest.fail(f"loaded the first {length} of {len(raw)} bytes")


def _npy(header: object, data: bytes) -> bytes:
    """A .npy 1.0 entry whose header says anything (shape and type), followed by `data`."""
    text = repr(header).encode()
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + data


def _npz(path, entries: dict, compression: int = zipfile.ZIP_STORED) -> None:
    """A zip of .npy entries: arrays through numpy's own writer, bytes as given."""
    with zipfile.ZipFile(path, "w", compression) as archive:
        for name, value in entries.items():
            if not isinstance(value, bytes):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=True)
                value = buffer.getvalue()
            archive.writestr(f"{name}.npy", value)


_DIAGONAL = {"kind": np.array("diagonal"), "dim": np.array(3), "bias": np.array(0.0), "s": np.ones(3, np.float32)}
_CRAFTED_METRICS = {
    "dot of dim 2**40": {"kind": np.array("dot"), "dim": np.array(2**40), "bias": np.array(0.0)},
    "scaled of dim 2**40": {"kind": np.array("scaled"), "dim": np.array(2**40), "bias": np.array(0.0),
                            "w": np.array(1.0)},
    "dim 4.7": {**_DIAGONAL, "kind": np.array("dot"), "dim": np.array(4.7)},
    "dim True": {"kind": np.array("dot"), "dim": np.array(True), "bias": np.array(0.0)},
    "dim an array": {**_DIAGONAL, "dim": np.array([3])},
    "dim zero": {"kind": np.array("dot"), "dim": np.array(0), "bias": np.array(0.0)},
    "dim not the parameters'": {**_DIAGONAL, "dim": np.array(4)},
    "kind an integer": {**_DIAGONAL, "kind": np.array(3)},
    "kind unknown": {**_DIAGONAL, "kind": np.array("cubic")},
    "bias True": {**_DIAGONAL, "bias": np.array(True)},
    "bias text": {**_DIAGONAL, "bias": np.array("0.5")},
    "bias infinite": {**_DIAGONAL, "bias": np.array(np.inf)},
    "w an array": {"kind": np.array("scaled"), "dim": np.array(3), "bias": np.array(0.0), "w": np.ones(3)},
    "s of objects": {**_DIAGONAL, "s": np.array([1.0, None, 2.0], object)},
    "s records": {**_DIAGONAL, "s": np.zeros(3, [("a", np.float32)])},
    "s matrix": {**_DIAGONAL, "s": np.ones((3, 3), np.float32)},
    "missing bias": {key: value for key, value in _DIAGONAL.items() if key != "bias"},
    "missing s": {key: value for key, value in _DIAGONAL.items() if key != "s"},
    "an unexpected entry": {**_DIAGONAL, "d": np.ones(3, np.float32)},
    "not .npy": {**_DIAGONAL, "notes.txt": b"hello"},
    ".npy shape beyond its bytes": {**_DIAGONAL, "s": _npy({"descr": "<f4", "fortran_order": False,
                                                             "shape": (2**40,)}, bytes(12))},
    ".npy shape negative": {**_DIAGONAL, "s": _npy({"descr": "<f4", "fortran_order": False,
                                                     "shape": (-1, -3)}, bytes(12))},
    ".npy of objects": {**_DIAGONAL, "s": _npy({"descr": "|O", "fortran_order": False, "shape": (3,)}, bytes(24))},
    ".npy text of 2**40 characters": {**_DIAGONAL, "kind": _npy({"descr": f"<U{2**40}", "fortran_order": False,
                                                                  "shape": ()}, bytes(32))},
    ".npy header not a dict": {**_DIAGONAL, "s": _npy([1, 2], bytes(12))},
    ".npy magic": {**_DIAGONAL, "s": b"\x93NUMPZ" + bytes(100)},
}


@pytest.mark.parametrize("name", list(_CRAFTED_METRICS))
def test_crafted_metric_files_are_value_errors(tmp_path, name):
    path = tmp_path / "crafted.npz"
    _npz(path, _CRAFTED_METRICS[name])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        sk.Metric.load(path)


def test_an_entry_twice_is_refused(tmp_path):
    """zip allows two entries of one name, and np.load would take the last: which is meant is unknown."""
    path = tmp_path / "twice.npz"
    _npz(path, _DIAGONAL)
    with zipfile.ZipFile(path, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile: "Duplicate name"
        archive.writestr("s.npy", _npy({"descr": "<f4", "fortran_order": False, "shape": (3,)},
                                       np.full(3, 2.0, np.float32).tobytes()))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*unique"):
        sk.Metric.load(path)


def test_the_crafted_good_metric_loads(tmp_path):
    path = tmp_path / "crafted.npz"
    _npz(path, _DIAGONAL)
    assert _same(sk.Metric.load(path), sk.Metric.diagonal(np.ones(3)))
    _npz(path, {**_DIAGONAL, "s": np.ones(3, np.float64)})  # another real type: converted, as the constructor does
    assert _same(sk.Metric.load(path), sk.Metric.diagonal(np.ones(3)))


def test_a_compressed_npz_is_refused(tmp_path):
    """np.savez_compressed's entries are deflated: refused rather than inflated (a zip bomb)."""
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, **_DIAGONAL)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*stored"):
        sk.Metric.load(path)


def test_a_dot_metric_beyond_the_file_dim_is_refused_when_saved(tmp_path, monkeypatch):
    """What load refuses, save refuses first (and leaves no file): every saved file loads."""
    from splitnet_kernels import _metric

    assert _metric.FILE_MAX_DIM >= 2**20
    monkeypatch.setattr(_metric, "FILE_MAX_DIM", 8)  # the same rule, without a big diagonal
    for kind, metric in (("dot", sk.Metric.dot(9)), ("scaled", sk.Metric.scaled(9, 2.0))):
        with pytest.raises(ValueError, match=f"dim 9: a {kind} metric's file holds at most dim 8"):
            metric.save(tmp_path / "big.npz")
        with pytest.raises(ValueError, match=f"dim 9: a {kind} metric's file holds at most dim 8"):
            sk.ObjectiveMetrics([metric]).save(tmp_path / "big.npz")
    assert not (tmp_path / "big.npz").exists()
    sk.Metric.dot(8).save(tmp_path / "dot.npz")
    assert sk.Metric.load(tmp_path / "dot.npz").dim == 8
    sk.Metric.diagonal(np.ones(9)).save(tmp_path / "diagonal.npz")  # its file's size bounds its dim
    assert sk.Metric.load(tmp_path / "diagonal.npz").dim == 9


def _objectives_file(**changes) -> dict:
    entries = {"names": np.array(["a", "b"]), "count": np.array(2)}
    for t in range(2):
        entries.update({f"{t}/{key}": value for key, value in _DIAGONAL.items()})
    entries.update(changes)
    return {key: value for key, value in entries.items() if value is not None}


_CRAFTED_OBJECTIVES = {
    "integer names": _objectives_file(names=np.array([7, 8])),
    "one name": _objectives_file(names=np.array("a")),
    "names repeat": _objectives_file(names=np.array(["a", "a"])),
    "count 2**40": _objectives_file(count=np.array(2**40)),
    "count True": _objectives_file(count=np.array(True)),
    "count 1.5": _objectives_file(count=np.array(1.5)),
    "count not the names'": _objectives_file(count=np.array(1)),
    "count zero": _objectives_file(count=np.array(0), names=np.array([], "<U1"), **{
        f"{t}/{key}": None for t in range(2) for key in _DIAGONAL}),
    "an objective beyond count": _objectives_file(**{f"2/{key}": value for key, value in _DIAGONAL.items()}),
    "an unexpected entry": _objectives_file(extra=np.ones(2)),
    "a metric's unexpected entry": _objectives_file(**{"1/d": np.ones(3, np.float32)}),
    "a metric's missing entry": _objectives_file(**{"1/s": None}),
    "dimensions differ": _objectives_file(**{"1/s": np.ones(4, np.float32), "1/dim": np.array(4)}),
}


@pytest.mark.parametrize("name", list(_CRAFTED_OBJECTIVES))
def test_crafted_objective_metrics_files_are_value_errors(tmp_path, name):
    path = tmp_path / "crafted.npz"
    _npz(path, _CRAFTED_OBJECTIVES[name])
    with pytest.raises(ValueError, match=re.escape(str(path))):
        sk.ObjectiveMetrics.load(path)


def test_the_crafted_good_objective_metrics_load(tmp_path):
    path = tmp_path / "crafted.npz"
    _npz(path, _objectives_file())
    loaded = sk.ObjectiveMetrics.load(path)
    assert loaded.names == ("a", "b") and all(_same(m, sk.Metric.diagonal(np.ones(3))) for m in loaded)


def test_metric_files_of_the_other_class_are_value_errors(tmp_path):
    _objective_metrics().save(tmp_path / "om.npz")
    _metric().save(tmp_path / "m.npz")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "om.npz"))):
        sk.Metric.load(tmp_path / "om.npz")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "m.npz"))):
        sk.ObjectiveMetrics.load(tmp_path / "m.npz")
    sk.Candidates(np.ones((2, 3), np.float32)).save(tmp_path / "c.skc")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "c.skc"))):
        sk.Metric.load(tmp_path / "c.skc")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "m.npz"))):
        sk.Candidates.load(tmp_path / "m.npz")


def _users_parquet(path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    users = np.ones((4, 3), np.float32)
    pq.write_table(pa.table({"embedding": pa.FixedSizeListArray.from_arrays(pa.array(users.ravel()), 3)}), path)


@pytest.mark.parametrize("damage", ("truncated", "bit flipped", "directory", "not a zip"))
def test_the_offline_command_refuses_a_damaged_metric_in_one_line(tmp_path, capsys, damage):
    from splitnet_kernels import cli

    _users_parquet(tmp_path / "users.parquet")
    sk.Candidates(np.ones((5, 3), np.float32)).save(tmp_path / "ads.skc")
    metric = tmp_path / "metric.npz"
    _metric().save(metric)
    raw = metric.read_bytes()
    if damage == "truncated":
        metric.write_bytes(raw[:len(raw) // 2])
    elif damage == "bit flipped":
        metric.write_bytes(raw[:200] + bytes([raw[200] ^ 4]) + raw[201:])
    elif damage == "directory":
        metric.unlink()
        metric.mkdir()
    else:
        metric.write_bytes(b"PK\x05\x06" + bytes(18))
    code = cli.main(["offline", "--users", str(tmp_path / "users.parquet"), "--candidates", str(tmp_path / "ads.skc"),
                     "--k", "2", "--metric", str(metric), "--out", str(tmp_path / "top.parquet"), "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "Traceback" not in err and str(metric) in err, err
    assert not (tmp_path / "top.parquet").exists()


# ---- 9. only regular files are read (issue 22): a FIFO must not block the load forever -------------
def _within(seconds: float, call, unblock):
    """call()'s exception (or None) if it returns within `seconds`; else unblocks it and fails."""
    outcome: list = []

    def run():
        try:
            call()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        unblock()
        thread.join(10)
        pytest.fail(f"still waiting after {seconds} s")
    return outcome[0]


_LOADERS = {"Candidates": sk.Candidates.load, "Metric": sk.Metric.load, "ObjectiveMetrics": sk.ObjectiveMetrics.load}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes here")
@pytest.mark.parametrize("loader", list(_LOADERS))
def test_a_fifo_is_refused_without_waiting(tmp_path, loader):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    error = _within(10, lambda: _LOADERS[loader](fifo),
                    lambda: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)))  # the waiting reader sees EOF
    assert isinstance(error, ValueError) and re.search(rf"{re.escape(str(fifo))}: not a regular file.*FIFO",
                                                       str(error)), repr(error)


@pytest.mark.parametrize("loader", list(_LOADERS))
def test_directories_and_devices_are_refused(tmp_path, loader):
    for path, what in ((tmp_path, "directory"), (pathlib.Path(os.devnull), "device")):
        if what == "device" and not os.path.exists(path):
            continue
        with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a regular file.*{what}"):
            _LOADERS[loader](path)


def test_symlinks_to_saved_files_load_and_missing_files_stay_os_errors(tmp_path):
    for name, saved in (("c.skc", sk.Candidates(np.ones((2, 3), np.float32))), ("m.npz", _metric()),
                        ("om.npz", _objective_metrics())):
        saved.save(tmp_path / name)
        (tmp_path / f"link-{name}").symlink_to(tmp_path / name)
    assert len(sk.Candidates.load(tmp_path / "link-c.skc")) == 2
    assert _same(sk.Metric.load(tmp_path / "link-m.npz"), _metric())
    assert _same(sk.ObjectiveMetrics.load(tmp_path / "link-om.npz"), _objective_metrics())
    for loader in _LOADERS.values():
        with pytest.raises(FileNotFoundError):
            loader(tmp_path / "nothing")


@pytest.mark.parametrize("kind", ["Metric", "ObjectiveMetrics"])
def test_metric_saves_replace_the_file_whole(tmp_path, kind):
    """A save is written beside the path and renamed over it (as Candidates.save): a reader that
    opened the old file reads it whole, the new one loads, no temporary file stays behind."""
    first, second = sk.Metric.diagonal(np.arange(1.0, 5.0)), sk.Metric.low_rank(np.ones((4, 2)), np.eye(4, 2), bias=1.0)
    if kind == "ObjectiveMetrics":
        first, second = sk.ObjectiveMetrics([first]), sk.ObjectiveMetrics([first, second], names=["a", "b"])
    path = tmp_path / "m.npz"
    first.save(path)
    before = path.read_bytes()
    with open(path, "rb") as reader:
        second.save(path)
        assert reader.read() == before
    loaded = type(second).load(path)
    assert repr(loaded) == repr(second)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
