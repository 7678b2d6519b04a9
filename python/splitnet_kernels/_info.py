"""What is available here: backends, instruction sets, threads, and the C++ header path."""

from __future__ import annotations

import pathlib

from . import _dispatch, _threads
from ._version import __version__
from .backends import _simd


# Which kernels the custom ops torch.ops.splitnet_kernels.* run on the CPU, and why: set by
# _torch_ops when it registers them (at the first call on tensors, or its import).
torch_ops = {"kernels": None, "reason": "not registered yet: the ops register at the first call on tensors"}


def backends() -> dict:
    """{name: {"available": bool, "reason": str}} for every backend."""
    return {name: dict(zip(("available", "reason"), _dispatch.status(name))) for name in _dispatch.BACKENDS}


def set_isa(name: str) -> str:
    """Makes the simd kernels use instruction set `name` (one of info()["isa_supported"]; the old
    name "avx512bf16" is accepted for "avx512vnni", for a while).

    Returns the previous one. For testing and comparison: the detected ISA is the fastest.
    Replaces a bad SPLITNET_KERNELS_ISA: after it succeeds, that error is no longer raised.
    """
    if not _simd.compiled():
        raise RuntimeError(f"the compiled kernels are not available: {_dispatch.status('simd')[1]}")
    previous = _simd.active_isa()
    _simd.set_isa(str(name).lower())  # raises ValueError, changing nothing, for an unknown or unsupported ISA
    _dispatch.isa_changed()
    return previous


def info() -> dict:
    """Version, detected and active ISA, backends, default threads and where that count comes from,
    and which kernels the custom ops run on the CPU (torch_ops: {"kernels": "c++" or "python",
    or None before they are registered, "reason": why}).

    default_threads is what a call with threads=None uses (None while a bad SPLITNET_KERNELS_THREADS
    is in force: threads_error says why); threads_source is where it comes from: "set_threads",
    "SPLITNET_KERNELS_THREADS", "cgroup cpu quota", "cpu affinity" (or "cpu count" where the OS
    has no affinity call).
    """
    compiled = _simd.compiled()
    return {
        "version": __version__,
        "isa_detected": _simd.detected_isa() if compiled else None,
        "isa_active": _simd.active_isa() if compiled else None,
        "isa_supported": _simd.supported_isas() if compiled else [],
        "isa_known": _simd.known_isas() if compiled else [],
        "isa_error": _dispatch.ISA_ERROR or None,
        **_threads.report(),
        "backends": backends(),
        "torch_ops": dict(torch_ops),
    }


def get_include() -> str:
    """The directory holding the header-only C++ kernels (splitnet_kernels/*.h)."""
    installed = pathlib.Path(__file__).parent / "include"
    if installed.is_dir():
        return str(installed)
    return str(pathlib.Path(__file__).resolve().parents[2] / "kernels")  # a source checkout
