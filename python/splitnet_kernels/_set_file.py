"""The file format of a candidate set (Candidates.save / Candidates.load): a magic, the
header's length, a JSON header and its CRC-32, then every array 64-byte aligned, each under a
CRC-32 of its own. Every field of a file is checked for type and range before it is used."""

from __future__ import annotations

import json
import os
import zlib

import numpy as np

from ._files import open_regular, writing_beside
from ._objectives import Grouping
from ._storage import ALIGN, HEAD_BLOCK, TYPES, ExactStorage, Levels, Storage, stored_width

# v2: the header has its own CRC-32. v1 (no header CRC) files are refused with a word to re-save.
MAGIC, V1_MAGIC = b"SPLITNET-CANDIDATES\x00v2\x00", b"SPLITNET-CANDIDATES\x00v1\x00"


def _data_start(header_length: int) -> int:
    """File offset of the arrays: after the magic, the 8-byte header length, the JSON header and
    the 4-byte CRC-32 that ends the header block (it covers every byte before it)."""
    return -(-(len(MAGIC) + 8 + header_length + 4) // ALIGN) * ALIGN


def _refuse_number_constant(name: str):
    raise ValueError(f"{name} is not a number allowed in the header")


def _is_int(x) -> bool:
    return type(x) is int  # not bool, not float


def _parse_header(path, blob: bytes):
    """(dtype, count, dim, arrays) from the JSON header, each field checked for type and range;
    sizes are Python ints, so no product overflows. Anything else raises ValueError."""
    try:
        header = json.loads(blob, parse_constant=_refuse_number_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"{path}: damaged header ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: damaged header (not a JSON object)")
    for key in ("count", "dim", "stored_dim"):
        if not _is_int(header.get(key)):
            raise ValueError(f"{path}: damaged header ({key} is not an integer)")
    dtype, specs = header.get("dtype"), header.get("arrays")
    count, dim, stored = int(header["count"]), int(header["dim"]), int(header["stored_dim"])
    record = TYPES.get(dtype) if isinstance(dtype, str) else None
    if record is None or count < 0 or dim < 1 or stored != stored_width(dim) or not isinstance(specs, dict) \
            or (record.max_width is not None and stored > record.max_width):
        raise ValueError(f"{path}: damaged header (dtype {str(dtype)[:40]!r}, count {count}, dim {dim}/{stored})")
    return dtype, count, dim, specs


def write(path, store: Storage, grouping: Grouping | None, count: int, external_ids=None) -> None:
    """Writes a set's packed store (and its packing by objective, and a live set's ad ids:
    external_ids, ascending, one per row in the order given) to `path`, beside it first and
    renamed over it (writing_beside)."""
    if isinstance(store, ExactStorage):  # the reduced rows as data, and what the re-score needs
        scan = store.scan
        arrays = {"data": scan.data} if scan.scales is None else {"data": scan.data, "scales": scan.scales}
        arrays.update(exact_rows=store.data, norms=store.norms, residuals=store.residuals)
        if store.levels is not None:  # the heads of the progressive scan, and their width (below)
            arrays.update(zip(("rotation", "heads", "head_residuals"), store.levels))
            head_width = store.levels.width
        store = scan
    else:
        arrays = {"data": store.data} if store.scales is None else {"data": store.data, "scales": store.scales}
    if grouping is not None:  # the packing by objective travels with the rows
        arrays.update(order=grouping.order, objectives=grouping.objectives, bids=grouping.bids)
    if external_ids is not None:
        arrays["external_ids"] = external_ids
    header: dict = {"dtype": store.dtype, "count": count, "dim": store.dim, "stored_dim": int(store.data.shape[1]),
              "arrays": {}}
    offset = 0
    for name, array in arrays.items():
        header["arrays"][name] = {"offset": offset, "nbytes": int(array.nbytes),
                                  "crc32": zlib.crc32(np.ascontiguousarray(array).view(np.uint8).data)}
        if name == "heads":  # the heads' width (an empty array cannot tell it)
            header["arrays"][name]["width"] = head_width
        offset += -(-array.nbytes // ALIGN) * ALIGN
    blob = json.dumps(header).encode()
    start = _data_start(len(blob))
    head = bytearray(start)
    head[:len(MAGIC) + 8 + len(blob)] = MAGIC + len(blob).to_bytes(8, "little") + blob
    head[-4:] = zlib.crc32(head[:-4]).to_bytes(4, "little")
    with writing_beside(path) as f:
        f.write(head)
        for name, array in arrays.items():
            f.seek(start + header["arrays"][name]["offset"])
            f.write(np.ascontiguousarray(array).tobytes())
        f.truncate(start + offset)


def _read_header(f, path):
    """(file size, start of the arrays, dtype, count, dim, arrays) of the open set file f, its
    magic and header checksum checked; anything else raises ValueError."""
    size = os.fstat(f.fileno()).st_size
    head = f.read(len(MAGIC) + 8)
    if head[:len(V1_MAGIC)] == V1_MAGIC:
        raise ValueError(f"{path}: an older splitnet_kernels candidate file format (v1, without a header "
                         f"checksum); load it with the version that wrote it and save it again")
    if len(head) < len(MAGIC) + 8 or head[:len(MAGIC)] != MAGIC:
        raise ValueError(f"{path}: not a splitnet_kernels candidate file")
    length = int.from_bytes(head[len(MAGIC):], "little")
    start = _data_start(length)
    if start > size:
        raise ValueError(f"{path}: truncated or damaged header (header length {length}, file size {size})")
    block = head + f.read(start - len(head))
    if len(block) != start or zlib.crc32(block[:-4]) != int.from_bytes(block[-4:], "little"):
        raise ValueError(f"{path}: the header fails its checksum (the file is damaged)")
    return (size, start) + _parse_header(path, block[len(head):len(head) + length])


def _head_width(path, specs: dict, dim: int) -> int:
    """The heads' width, as the head array's entry records it: a multiple of 4 below dim."""
    entry = specs.get("heads")
    width = entry.get("width") if isinstance(entry, dict) else None
    if not (isinstance(width, int) and _is_int(width) and 4 <= width < dim and width % 4 == 0):
        raise ValueError(f"{path}: damaged header (heads of width {str(width)[:40]} for rows of {dim})")
    return width


def _is_live(specs: dict) -> bool:
    """Whether a header's arrays are a live set's: they carry its ad ids."""
    return "external_ids" in specs


def is_live(path) -> bool:
    """Whether the set file at `path` holds a live set (LiveCandidates.save) rather than a
    Candidates, from its header alone (checked, as read() checks it; no array is read)."""
    with open_regular(path) as f:
        *_, specs = _read_header(f, path)
    return _is_live(specs)


def read(path, mmap: bool, verify: bool) -> tuple[Storage, Grouping | None, np.ndarray | None]:
    """The store, the packing by objective and a live set's ad ids that write() wrote to `path`
    (see Candidates.load); the ids are checked (ascending, >= 0) whatever `verify` says."""
    with open_regular(path) as f:  # one open file throughout: a concurrent save cannot mix two files
        size, start, dtype, count, dim, specs = _read_header(f, path)
        stored = stored_width(dim)
        wanted: dict = {"data": (np.dtype(TYPES[dtype].numpy), (count, stored))}
        if TYPES[dtype].scaled:
            wanted["scales"] = (np.dtype(np.float32), (count,))
        if "exact_rows" in specs:  # an exact set
            wanted.update(exact_rows=(np.dtype(np.float32), (count, stored)),
                          norms=(np.dtype(np.float32), (count,)), residuals=(np.dtype(np.float32), (count,)))
        if "rotation" in specs:  # an exact set's heads
            width = _head_width(path, specs, dim)
            wanted.update(rotation=(np.dtype(np.float64), (dim, dim)),
                          heads=(np.dtype(np.int8), (-(-count // HEAD_BLOCK), HEAD_BLOCK * (width + 8))),
                          head_residuals=(np.dtype(np.float32), (count,)))
        if "order" in specs:  # a set with objectives
            wanted.update(order=(np.dtype(np.int64), (count,)), objectives=(np.dtype(np.int64), (count,)),
                          bids=(np.dtype(np.float32), (count,)))
        if _is_live(specs):
            wanted["external_ids"] = (np.dtype(np.int64), (count,))
        arrays, end = {}, 0
        for name, (item, shape) in wanted.items():
            spec = specs.get(name)
            nbytes = int(np.prod(shape, dtype=object)) * item.itemsize  # Python ints
            if not isinstance(spec, dict) or not all(_is_int(spec.get(key)) for key in ("offset", "nbytes", "crc32")) \
                    or spec["nbytes"] != nbytes or spec["offset"] < 0 or spec["offset"] % ALIGN:
                raise ValueError(f"{path}: damaged header (the entry for {name}, {nbytes} bytes, is {str(spec)[:200]})")
            if start + spec["offset"] + nbytes > size:
                raise ValueError(f"{path}: truncated, or damaged header ({name}: {nbytes} bytes at "
                                 f"{start + spec['offset']} do not fit the {size}-byte file)")
            if mmap and nbytes:
                array = np.memmap(f, dtype=item, mode="r", offset=start + spec["offset"], shape=shape)
            else:
                f.seek(start + spec["offset"])
                array = np.frombuffer(f.read(nbytes), dtype=item).reshape(shape).copy()
            if verify and zlib.crc32(np.ascontiguousarray(array).view(np.uint8).data) != spec["crc32"]:
                raise ValueError(f"{path}: {name} fails its checksum (the file is damaged)")
            arrays[name] = array
            end = max(end, spec["offset"] + -(-nbytes // ALIGN) * ALIGN)
        if size < start + end:  # write() ends the file after its last array's padding
            raise ValueError(f"{path}: truncated ({size} bytes, the header describes {start + end})")
    scales = arrays.get("scales")
    if scales is not None and not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
        raise ValueError(f"{path}: damaged scales")
    store: Storage = Storage(dtype, dim, arrays["data"], scales)
    if "exact_rows" in arrays:
        if dtype == "float32" or np.any(np.isnan(arrays["norms"])) or np.any(np.isnan(arrays["residuals"])):
            raise ValueError(f"{path}: damaged exact set")
        levels = None
        if "rotation" in arrays:
            levels = Levels(arrays["rotation"], arrays["heads"], arrays["head_residuals"])
            head_scales, rest_norms = levels.floats()
            if not (np.all(np.isfinite(levels.rotation)) and np.all(head_scales > 0)) or np.any(np.isnan(rest_norms)) \
                    or np.any(np.isnan(levels.head_residuals)):
                raise ValueError(f"{path}: damaged heads")
        try:
            store = ExactStorage(Storage("float32", dim, arrays["exact_rows"], None), store, arrays["norms"],
                                 arrays["residuals"], levels)
        except ValueError as error:  # a rotation that is not orthogonal
            raise ValueError(f"{path}: damaged heads ({error})") from None
    grouping = None
    if "order" in arrays:
        grouping = Grouping(arrays["order"], arrays["objectives"], arrays["bids"])
        if verify:
            grouping.check(path)
    external_ids = arrays.get("external_ids")
    if external_ids is not None and count and (external_ids[0] < 0 or np.any(np.diff(external_ids) <= 0)):
        raise ValueError(f"{path}: damaged ad ids (not ascending, or negative)")
    return store, grouping, external_ids
