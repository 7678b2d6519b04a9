"""Conversions between NumPy arrays, torch tensors and the kernels' layouts, and what a tensor
lets a call read: the package's lowest layer (as FAISS's array_conversions.py). It imports
NumPy only; torch is imported where a tensor is met, so it is already loaded."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_tensor(x) -> bool:
    return type(x).__module__.startswith("torch")


def shape(x) -> tuple:
    """x's shape as a plain tuple (a tensor's torch.Size prints as one too)."""
    return tuple(x.shape)


def host(x) -> np.ndarray:
    """A numpy view (or host copy) of an array or tensor, keeping its dtype."""
    return x.detach().cpu().numpy() if is_tensor(x) else np.asarray(x)


_NUMPY_FLOATS = ("torch.float16", "torch.float32", "torch.float64")


def numpy_floats(x):
    """A tensor in a type NumPy has: float types that it lacks (bfloat16, float8) widened to
    float32, which holds them exactly; other tensors (and anything else) as they are."""
    if is_tensor(x) and x.dtype.is_floating_point and str(x.dtype) not in _NUMPY_FLOATS:
        return x.float()
    return x


def check_tensor(x, name: str, meta: bool = False):
    """x, refused by name where it is a tensor whose values cannot be read on the host: not dense
    (sparse: a TypeError) or, unless `meta` lets it go on (to the custom ops, which give meta
    results), holding no values (a meta tensor: a ValueError)."""
    if is_tensor(x):
        if str(x.layout) != "torch.strided":
            raise TypeError(f"{name}: expected a dense tensor, got layout {x.layout} (call .to_dense())")
        if x.device.type == "meta" and not meta:
            raise ValueError(f"{name}: a meta tensor holds no values (shape {tuple(x.shape)})")
    return x


def to_numpy(x):
    """Float embeddings as NumPy: arrays as they are, tensors viewed (CPU) or copied to the host,
    float types NumPy lacks widened to float32."""
    if not is_tensor(x):
        return x
    import torch

    x = x.detach()
    if x.dtype not in (torch.float16, torch.float32, torch.float64):
        x = x.to(torch.float32)
    return x.cpu().numpy()


def to_torch(x, device):
    """x as a tensor on device: a tensor moved, an array viewed (a read-only one copied)."""
    import torch

    if is_tensor(x):
        return x.to(device)
    x = np.ascontiguousarray(x)
    return torch.as_tensor(x if x.flags.writeable else x.copy(), device=device)


def result_for(x, torch_input: bool, device):
    """A result in the type the call was given: a tensor on `device` for tensor input, else NumPy."""
    if torch_input and not is_tensor(x):
        import torch

        return torch.from_numpy(x).to(device)
    if not torch_input and is_tensor(x):
        return x.cpu().numpy()
    return x


def device_of(*arrays):
    """The device of the first tensor among the arrays, or None when none is one."""
    for x in arrays:
        if is_tensor(x):
            return x.device
    return None


def kernel_rows(x) -> np.ndarray:
    """x as float32 whose rows are contiguous and float-aligned, the layout the compiled kernels
    read; copies only when it must."""
    x = np.asarray(x, dtype=np.float32)
    if x.shape[-1] > 1 and x.strides[-1] != 4 or not x.flags.aligned or (x.ndim == 2 and x.strides[0] % 4):
        x = np.array(x, order="C")  # a fresh, aligned copy (ascontiguousarray keeps misalignment)
    return x


# ---- memory ---------------------------------------------------------------------------------------
_byte_bounds = getattr(np, "byte_bounds", None) or np.lib.array_utils.byte_bounds


def memory_range(x):
    """(device, first byte, end byte) that an array or tensor spans, whatever its type."""
    if is_tensor(x):
        start, size = x.data_ptr(), x.element_size()
        low = start + size * sum((n - 1) * s for n, s in zip(x.shape, x.stride()) if s < 0)
        high = start + size * (1 + sum((n - 1) * s for n, s in zip(x.shape, x.stride()) if s > 0))
        return str(x.device), low, high if x.numel() else low
    x = np.asarray(x)
    low, high = _byte_bounds(x)
    return "cpu", low, high if x.size else low


def may_share_memory(a, b) -> bool:
    """Whether a and b may overlap in memory, decided from their byte ranges (numpy arrays,
    tensors, torch.from_numpy views and any mix of them alike)."""
    device_a, low_a, high_a = memory_range(a)
    device_b, low_b, high_b = memory_range(b)
    return device_a == device_b and low_a < high_b and low_b < high_a


# ---- what a tensor lets a call do now ---------------------------------------------------------------
# torch's probes, bound when a tensor first asks (torch is then loaded): this module imports
# without torch, and a call on arrays never pays for them. Module globals: W6 through the ops
# asks watched() on every call.
_tensor: Any = None
_compiling: Any = None
_tracing: Any = None
_function_mode: Any = None
_dispatch_modes: Any = None
_grad_enabled: Any = None


def _bind_probes() -> None:
    global _tensor, _compiling, _tracing, _function_mode, _dispatch_modes, _grad_enabled
    import torch

    _tensor, _compiling, _tracing = torch.Tensor, torch.compiler.is_compiling, torch._C._get_tracing_state
    _function_mode, _dispatch_modes = torch._C._is_torch_function_mode_enabled, torch._C._len_torch_dispatch_stack
    _grad_enabled = torch.is_grad_enabled


def constant_when_compiled(fn):
    """fn, marked as torch.compiler.assume_constant_result marks it (dynamo runs it once while
    tracing and keeps its result as a constant of the graph), without importing torch._dynamo,
    which takes seconds, with the package."""
    fn._dynamo_marked_constant = True
    return fn


def watched() -> bool:
    """Whether a compiler, the JIT tracer or a torch function / dispatch mode looks on (then a
    kernel may not read tensors directly). dynamo reads the first call as True and stops there."""
    if _compiling is None:
        _bind_probes()
    return _compiling() or _tracing() is not None or _function_mode() or _dispatch_modes() != 0


def holds_values(*tensors) -> bool:
    """Whether the tensors hold their values here and now: plain tensors off the meta device,
    with no compiler, tracer or mode looking on (then a kernel may read them directly)."""
    if _tensor is None:
        _bind_probes()
    for x in tensors:
        if type(x) is not _tensor or x.is_meta:
            return False
    return not watched()


def wanting_gradients(*arrays) -> list:
    """The tensors among the arguments that ask for a gradient, where autograd records (else none)."""
    if not any(is_tensor(x) for x in arrays):
        return []
    if _grad_enabled is None:
        _bind_probes()
    if not _grad_enabled():
        return []
    return [x for x in arrays if isinstance(x, _tensor) and x.requires_grad]
