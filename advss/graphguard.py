"""The guard: what a CUDA graph cannot hold, caught by name on any device, before capture.

A graph replays the kernels its capture issued, on the memory they used. A step that reads a
device value to the host (`.item()`, `float(t)`, `if t:`, `nonzero`, boolean indexing,
`masked_select`) or copies host data in (`torch.tensor`, `x.new_tensor`, `.to(device)` of a
CPU constant) does that once, at capture; every replay keeps the captured value, or the
capture fails. torch's sync-debug mode sees only some of these (inside `memcpy_and_sync` and
`stream_synchronize`), and only on CUDA. `HostGuard`, a TorchDispatchMode, sees every aten op
on a CPU as on a GPU; `StepRunner` runs the eager warm-up steps after the first (the first
compiles) and the stand-in's capture under it, and a caught op is a fallback that names it.

A compiled trunk runs with the guard suspended (`suspended`, called by `advss.fast`): an
active dispatch mode changes every tensor's dispatch keys, so dynamo would miss its cache and
recompile. Its graph holds no host reads (dynamo would have broken it there), and a
recompile after warm-up is caught on its own: `no_recompile` (the stance
"fail_on_recompile") turns it into an error that `reason` names.

On a CPU, `.to(x.device)` of a CPU constant issues no op at all; `ConstantMoves`, a
TorchFunctionMode, stands in for the host-to-device copy it is on a GPU (the per-kind
residency test, `tests/test_graphguard.py`).
"""
from __future__ import annotations

import contextlib

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

# aten ops that read a device value back to the host (a sync, and a value a graph would freeze)
HOST_READS = {
    "_local_scalar_dense": ".item(), float(t), int(t) or `if t:` on a tensor",
    "nonzero": "nonzero / torch.where(cond) (its size is read to the host)",
    "masked_select": "masked_select (its size is read to the host)",
    "is_nonzero": "bool(t) of a one-element tensor",
    "equal": "torch.equal (a host bool)",
    "unique": "unique (its size is read to the host)", "_unique": "unique", "_unique2": "unique",
    "unique_dim": "unique", "unique_consecutive": "unique_consecutive",
}
# aten ops that copy host data into the step
HOST_DATA = {
    "lift_fresh": "a tensor built from host data in the step (torch.tensor, x.new_tensor, torch.as_tensor)",
    "lift_fresh_copy": "a tensor built from host data in the step (torch.tensor, x.new_tensor)",
}
BOOL_INDEX = ("index", "index_put", "index_put_", "_index_put_impl_")
COPIES = ("_to_copy", "copy_", "_copy_from", "_copy_from_and_resize")


class GraphUnsafe(RuntimeError):
    """An op a CUDA graph cannot hold; `op` is its aten name."""

    def __init__(self, op: str, what: str):
        self.op, self.what = op, what
        super().__init__(f"{op}: {what}")


def _tensors(xs):
    for x in xs:
        if isinstance(x, torch.Tensor):
            yield x
        elif isinstance(x, (list, tuple)):
            yield from _tensors(x)


def unsafe(func, args, kwargs) -> str | None:
    """Why this aten op cannot be in a graph, or None."""
    name = func.overloadpacket.__name__
    if name in HOST_READS:
        return HOST_READS[name]
    if name in HOST_DATA:
        return HOST_DATA[name]
    if name == "repeat_interleave" and kwargs.get("output_size") is None and any(
            isinstance(a, torch.Tensor) and a.dtype != torch.bool and not a.is_floating_point() for a in args):
        return "repeat_interleave with tensor repeats and no output_size (its size is read to the host)"
    if name in BOOL_INDEX and len(args) > 1:
        if any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1:2])):
            return "boolean-mask indexing (the number of selected elements is read to the host)"
    if name in COPIES and len(args) >= (1 if name == "_to_copy" else 2):
        if name == "_to_copy":
            src, dst_dev = args[0], kwargs.get("device")
        elif name == "copy_":  # copy_(dst, src)
            src, dst_dev = args[1], args[0].device
        else:  # _copy_from(src, dst)
            src, dst_dev = args[0], args[1].device
        if isinstance(src, torch.Tensor) and dst_dev is not None and torch.device(dst_dev) != src.device:
            if src.device.type == "cpu":
                return f"a host-to-device copy ({src.device} -> {dst_dev}) in the step"
            if torch.device(dst_dev).type == "cpu":
                return f"a device-to-host copy ({src.device} -> cpu) in the step"
    return None


class HostGuard(TorchDispatchMode):
    """Raises `GraphUnsafe` on any op that reads the device to the host or copies host data in."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = unsafe(func, args, kwargs)
        if why is not None:
            raise GraphUnsafe(f"aten::{func.overloadpacket.__name__}", why)
        return func(*args, **kwargs)


class ConstantMoves(TorchFunctionMode):
    """On a CPU, the stand-in for a per-batch host-to-device copy: `.to(<device or tensor>)`
    (or `.cuda()`) of a tensor that this region did not make and that is not `resident`
    (the model's parameters and buffers, the optimiser state, the batch)."""

    def __init__(self, resident=()):
        super().__init__()
        self.made = WeakIdKeyDictionary()
        for t in resident:
            self.made[t] = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cuda) and args and isinstance(args[0], torch.Tensor):
            targets = list(args[1:]) + [kwargs.get("device"), kwargs.get("other")]
            moves = func is torch.Tensor.cuda or any(
                isinstance(a, (torch.device, str, torch.Tensor)) or (isinstance(a, int) and not isinstance(a, bool))
                for a in targets if a is not None)
            if moves and args[0] not in self.made:
                raise GraphUnsafe("Tensor.to", f"a copy of a tensor kept outside the job's device state "
                                               f"({tuple(args[0].shape)}, {args[0].dtype}) on every batch: "
                                               "on a GPU, a host-to-device copy")
        out = func(*args, **kwargs)
        for t in _tensors([out] if isinstance(out, torch.Tensor) else out if isinstance(out, (list, tuple)) else []):
            self.made[t] = True
        return out


@contextlib.contextmanager
def guarded(dev, sync_debug: bool = True):
    """The guard for one eager step or a stand-in capture: `HostGuard`, torch's sync-debug
    mode on CUDA (it also sees syncs inside kernels' host code), and no recompiles."""
    dev = torch.device(dev)
    prev = torch.cuda.get_sync_debug_mode() if dev.type == "cuda" else None
    try:
        with no_recompile(), HostGuard():
            if dev.type == "cuda" and sync_debug:
                torch.cuda.set_sync_debug_mode("error")
            yield
    finally:
        if prev is not None:
            torch.cuda.set_sync_debug_mode(prev)


@contextlib.contextmanager
def no_recompile():
    """After warm-up, a recompile is a failure to report, not a new graph to build silently
    (nor, inside a CUDA capture, a generator error: pytorch/pytorch issue 131782)."""
    stance = getattr(torch.compiler, "set_stance", None)
    with (stance("fail_on_recompile") if stance else contextlib.nullcontext()):
        yield


def suspended():
    """No dispatch mode inside (the compiled trunk's call): see the module docstring."""
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return _disable_current_modes() if _get_current_dispatch_mode_stack() else contextlib.nullcontext()


def describe(e: BaseException) -> str:
    """One line for the log: the exception's first line (its repr when the message is
    empty), and the error it was raised while handling, which is where CUDA's generic
    "operation failed due to a previous error during capture" keeps the real cause."""
    def one(x):
        first = str(x).strip().splitlines()
        return f"{type(x).__name__}: {first[0][:200]}" if first else repr(x)

    ctx = e.__cause__ or e.__context__
    return one(e) + (f" (while handling {one(ctx)})" if ctx is not None else "")


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower() or \
        "can't allocate memory" in str(e)


def reason(e: BaseException, where: str) -> str:
    """The fallback's reason: the op the guard caught, an out-of-memory error or a recompile
    by name, else '<where> failed'; then the error's own line."""
    if isinstance(e, GraphUnsafe):
        return f"{e.op} in the step ({where}): {e.what}"
    if is_oom(e):
        kind = f"out of memory ({where})"
    elif "detected recompile" in str(e).lower():
        kind = f"recompile after warm-up ({where})"
    else:
        kind = f"{where} failed"
    return f"{kind}: {describe(e)}"
