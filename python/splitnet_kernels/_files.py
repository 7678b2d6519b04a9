"""Files, safely: opened only when regular (a FIFO would block), written beside their path and
renamed over it, and NumPy .npz files read without np.load (checked entry by entry, nothing
allocated by a size that the file states). Metric, ObjectiveMetrics and the candidate set file
read and write through these."""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import zipfile

import numpy as np

_FILE_TYPES = {"d": "a directory", "p": "a named pipe (FIFO)", "c": "a character device", "b": "a block device",
               "s": "a socket"}
# What zipfile and the .npy header parser raise on bytes that are no .npz of ours (OverflowError:
# an offset beyond any seek); the bytes are read into memory first, so none of these is an I/O
# error of the file system.
_NPZ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, RuntimeError, ValueError, OverflowError)


def open_regular(path):
    """`path` opened for binary reading, or a ValueError naming it unless it is a regular file:
    checked before opening (a FIFO would block the open forever, a device may act on it), and
    again on the open file, should the path have been replaced in between."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            return open(fd, "rb")
        os.close(fd)
    kind = _FILE_TYPES.get(stat.filemode(mode)[0], "another kind of file")
    raise ValueError(f"{path}: not a regular file but {kind}")


@contextlib.contextmanager
def writing_beside(path):
    """A binary file to write what goes to `path`: written beside it and renamed over it once
    complete and on disk, never rewritten in place, so that a reader sees the old file or the new
    one (a process that maps the old one keeps its bytes) and a crash leaves the old file whole.
    Through a symlink to its target, as open(path, "wb") writes, rather than over the link."""
    path = os.path.realpath(path)
    temp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"  # same directory: the rename is atomic
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with open(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the name points at it
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    _fsync_directory(os.path.dirname(path))


def _fsync_directory(directory: str) -> None:
    """Makes a rename in `directory` durable, where the system allows opening a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_npz(path, what: str) -> dict:
    """The arrays of the NumPy .npz at `path` by entry name (without .npy), as read-only views of
    its bytes, never through np.load or pickle: a ValueError naming `path` and `what` it should be
    unless it is a regular file whose zip entries are stored .npy arrays that account for every
    byte before the zip directory (a damaged directory that drops an entry leaves a gap), each
    entry matching its zip CRC-32 and its .npy header matching its size. Nothing is allocated by
    a size that the file states, only by the bytes it has."""
    with open_regular(path) as f:
        raw = f.read()
    arrays: dict = {}
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            end = 0  # where the next entry's local header must start
            for info in sorted(archive.infolist(), key=lambda info: info.header_offset):
                name = info.filename.removesuffix(".npy")
                if name == info.filename or name in arrays or info.compress_type != zipfile.ZIP_STORED \
                        or info.flag_bits & 1:
                    raise ValueError(f"the entry {info.filename[:80]!r} is no stored, unencrypted, unique .npy array")
                if info.header_offset != end:
                    raise ValueError(f"the entry {name[:80]!r} starts at byte {info.header_offset}, expected {end}")
                blob = archive.read(info)  # checks the local header, its name and the CRC-32
                lengths = raw[end + 26:end + 30]  # the local header's name and extra field lengths
                end += 30 + int.from_bytes(lengths[:2], "little") + int.from_bytes(lengths[2:], "little") \
                    + info.compress_size
                arrays[name] = _npy(blob)
            if end != archive.start_dir:
                raise ValueError(f"bytes {end} to {archive.start_dir} belong to no entry of the zip directory")
    except _NPZ_ERRORS as error:
        raise ValueError(f"{path}: not a {what} file, or a damaged one ({type(error).__name__}: "
                         f"{str(error)[:200]})") from None
    return arrays


def _npy(blob: bytes) -> np.ndarray:
    """The array in a .npy entry, once its header's type (numbers or text: no objects, no
    records) and shape are found to describe exactly the bytes that follow it."""
    stream = io.BytesIO(blob)
    version = np.lib.format.read_magic(stream)
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f".npy format version {version} (written are 1.0 and 2.0)")
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    start, count = stream.tell(), math.prod(shape)
    if dtype.kind not in "biufU" or dtype.fields is not None or dtype.subdtype is not None or dtype.itemsize == 0 \
            or min(shape, default=0) < 0 or count * dtype.itemsize != len(blob) - start:
        raise ValueError(f"a .npy header ({str(dtype)[:40]}, shape {str(shape)[:80]}) that does not describe "
                         f"its {len(blob) - start} bytes")
    return np.frombuffer(blob, dtype, count, start).reshape(shape, order="F" if fortran_order else "C")


def npz_entry(arrays, key: str, kinds: str, scalar: bool = True):
    """arrays[key] if its dtype is of one of `kinds` (numpy's letters), as a scalar when `scalar`
    (then it must hold one value, ndim 0); else a ValueError (a KeyError if it is missing)."""
    value = arrays[key]
    if value.dtype.kind not in kinds or (scalar and value.ndim):
        raise ValueError(f"{key} is {str(value.dtype)[:40]} of shape {str(value.shape)[:80]}")
    return value[()] if scalar else value
