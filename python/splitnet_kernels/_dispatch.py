"""Which backend runs a call: the registry, the `auto` policy and the environment overrides.

auto, for each call:
  1. tensors on a GPU (or any non-CPU device) -> torch: the data stays where it lives;
  2. otherwise simd, the compiled kernels, when they load: fastest on the CPU for every call
     (torch CPU tensors are viewed as NumPy arrays without a copy and results come back as
     tensors);
  3. otherwise numba, then torch for tensor input, then numpy.
Both environment variables are read once, at import. SPLITNET_KERNELS_BACKEND replaces
`auto` (an explicit backend= argument still wins); SPLITNET_KERNELS_ISA forces the kernels'
instruction set. A bad value of either is an error at the first call that depends on it, never
a silent fallback. A successful sk.set_isa replaces a bad SPLITNET_KERNELS_ISA: the kernels then
run an ISA that was asked for by name, so the error is over (isa_changed).
"""

from __future__ import annotations

import os

from .backends._numba import NumbaBackend
from .backends._numpy import NumpyBackend
from .backends import _simd
from .backends._simd import SimdBackend
from .backends._torch import TorchBackend

BACKENDS = {b.name: b for b in (SimdBackend(), NumbaBackend(), TorchBackend(), NumpyBackend())}
NAMES = tuple(BACKENDS) + ("auto",)

_status_cache: dict = {}


def _isa_error() -> str:
    """Applies SPLITNET_KERNELS_ISA once, at import; returns the error text or ''."""
    name = os.environ.get("SPLITNET_KERNELS_ISA", "").strip().lower()
    if not name or not _simd.compiled():
        return ""
    try:
        _simd.set_isa(name)
    except ValueError as error:
        return f"SPLITNET_KERNELS_ISA={name!r}: {error}"
    return ""


ISA_ERROR = _isa_error()
ENV_BACKEND = os.environ.get("SPLITNET_KERNELS_BACKEND", "auto").strip().lower() or "auto"


def status(name: str) -> tuple[bool, str]:
    """(available, reason) for a backend, worked out once per process."""
    if name == "simd" and ISA_ERROR:
        return False, ISA_ERROR
    if name not in _status_cache:
        _status_cache[name] = BACKENDS[name].status()
    return _status_cache[name]


def _require(name: str):
    available, reason = status(name)
    if not available:
        raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return BACKENDS[name]


def resolve(backend, on_torch_device: bool):
    """The backend object for a call. on_torch_device: some input is a tensor off the CPU."""
    if not isinstance(backend, str):
        raise TypeError(f"backend: expected a string, got {type(backend).__name__}")
    if backend == "auto":
        backend = ENV_BACKEND
        if backend not in NAMES:
            raise ValueError(f"SPLITNET_KERNELS_BACKEND={backend!r} is not a backend (known: {', '.join(NAMES)})")
    if backend not in NAMES:
        raise ValueError(f"backend: unknown {backend!r} (known: {', '.join(NAMES)})")
    if backend != "auto":
        return _require(backend)
    if on_torch_device:
        return _require("torch")
    if ISA_ERROR:
        raise ValueError(ISA_ERROR)
    for name in ("simd", "numba"):
        if status(name)[0]:
            return BACKENDS[name]
    return BACKENDS["numpy"]


def _fast():
    return BACKENDS["simd"] if (ENV_BACKEND in ("auto", "simd") and not ISA_ERROR and status("simd")[0]) else None


# The simd backend when `auto` resolves to it for CPU data, for the route's fast path (_route);
# None when auto means anything else. Callers read it as _dispatch.FAST at each call,
# so isa_changed can turn it on.
FAST = _fast()


def isa_changed() -> None:
    """Called after every successful set_isa. It clears a bad SPLITNET_KERNELS_ISA's error
    (otherwise `auto` would raise it, and the fast path would stay off, for the rest of the
    process), drops the cached simd status (its reason names the active ISA) and works the
    fast path out again, which SPLITNET_KERNELS_BACKEND may still keep off."""
    global ISA_ERROR, FAST
    ISA_ERROR = ""
    _status_cache.pop("simd", None)
    FAST = _fast()
