"""The CPU stand-in for a CUDA graph, at least as strict as a graph, so that the runner's
plumbing, its failure paths and its replay check are tested without CUDA.

`FakeGraph.capture` runs the step under the guard (`advss.graphguard`), records every aten op
it issues with its non-tensor arguments (a graph freezes those), keeps its outputs, then
undoes everything the step changed (CUDA capture executes no kernel, so nothing persists).
`replay` runs the step's Python again and fails, before the first differing op runs, if it
issues anything else: another op, or the same op with another Python value (a learning rate
read to the host at capture, say). It writes the replay's outputs into the capture-time
output tensors and returns those, as a real graph does.

`RNG` models what torch 2.4–2.12 (2.11 is the device machine's) do to the default CUDA
generator around a capture (CUDAGeneratorImpl.cpp, CUDAGraph.cpp): capture_begin's prologue
marks the generator's state as capturing, capture_end's epilogue clears it, and the
epilogue never runs when cudaStreamEndCapture fails; then every eager draw fails ("Offset
increment outside graph capture encountered unexpectedly") and set_state does not help.
The stand-in's capture ends that way whenever the step issued an op a real capture cannot
hold (the guard's `GraphUnsafe`: it would have invalidated the stream), or when told to
(`fail=('end', ...)`), so the runner's reset (`advss.capture.reset_generator`) is tested here.
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from advss.graphguard import GraphUnsafe, guarded


class StandInMismatch(RuntimeError):
    """A stand-in replay that issued something its capture did not."""


def _sig(x):
    """What a graph freezes of an op argument: a tensor's dtype and shape (its memory is the
    graph's), every other value as it was."""
    if isinstance(x, torch.Tensor):
        return _Tensor(f"{str(x.dtype).removeprefix('torch.')}{list(x.shape)}")
    if isinstance(x, (list, tuple)):
        return tuple(_sig(v) for v in x)
    if isinstance(x, (bool, int, float, str, type(None))):
        return x
    if isinstance(x, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
        return str(x)
    return type(x).__name__


class Recorder(TorchDispatchMode):
    """Records each op as (name, non-tensor arguments); with `expect`, fails at the first op
    that differs from the capture's."""

    def __init__(self, expect=None):
        super().__init__()
        self.ops, self.expect = [], expect

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        op = (str(func), _sig(args), _sig(sorted(kwargs.items())))
        if self.expect is not None:
            i = len(self.ops)
            want = self.expect[i] if i < len(self.expect) else None
            if op != want:
                raise StandInMismatch(f"the replay issued {_show(op)} as op {i + 1}, where the capture issued "
                                      f"{_show(want) if want else 'nothing more'}: a CUDA graph would replay "
                                      "what its capture saw")
        self.ops.append(op)
        return func(*args, **kwargs)


class _Tensor(str):
    """A tensor argument as the record keeps it (shown without quotes)."""

    def __repr__(self):
        return str(self)


def _show(op):
    name, args, kwargs = op
    return f"{name}({', '.join(map(repr, args))}" + "".join(f", {k}={v!r}" for k, v in kwargs) + ")"


class RNG:
    """The default CUDA generator's capture bookkeeping in torch 2.4–2.12 (see the module
    docstring), with the two calls the runner's reset uses: graphsafe_get_state and
    graphsafe_set_state (which swaps the state object, as CUDAGeneratorImpl does)."""

    class State:
        capturing = False

    def __init__(self):
        self.state = RNG.State()

    def graphsafe_get_state(self):
        g = RNG()
        g.state = self.state
        return g

    def graphsafe_set_state(self, other):
        self.state = other.state

    def capture_prologue(self):
        self.state.capturing = True

    def capture_epilogue(self):
        self.state.capturing = False

    def draw(self):
        if self.state.capturing:
            raise RuntimeError("Offset increment outside graph capture encountered unexpectedly.")


DEFAULT_RNG = RNG()  # what `torch.cuda.default_generators[i]` is to a real capture
_capturing = False


def capturing() -> bool:
    """Whether a stand-in capture is under way (torch.cuda.is_current_stream_capturing's twin)."""
    return _capturing


class FakeGraph:
    """See the module docstring. `fail=(where, message, halfway)` injects a failure for the
    tests: at 'capture' (a Python error in the step), at 'end' (cudaStreamEndCapture fails:
    the epilogue is skipped) or at the first 'replay', with that message ('' for an empty
    one), raised before the step runs or, with halfway, after it has changed weights, BN
    statistics and momentum."""

    def __init__(self, undo=None, fail=None):
        self.fn, self.undo, self.fail, self.replays = None, undo, fail, 0
        self.ops, self.outputs = None, None

    def _injected(self, where):
        return self.fail and self.fail[0] == where and (where != "replay" or self.replays == 1)

    def capture(self, fn):
        global _capturing
        self.fn = fn
        DEFAULT_RNG.capture_prologue()
        rec, _capturing = Recorder(), True
        try:
            if self._injected("capture") and not self.fail[2]:
                raise RuntimeError(self.fail[1])
            with guarded("cpu"), rec:
                self.outputs = fn()
            if self._injected("capture"):
                raise RuntimeError(self.fail[1])
        except GraphUnsafe:
            raise  # a real capture is invalidated by such an op: cudaStreamEndCapture fails, no epilogue
        except BaseException:
            DEFAULT_RNG.capture_epilogue()  # a Python error: capture_end still succeeds
            raise
        finally:
            _capturing = False
            if self.undo is not None:
                self.undo()
        if self._injected("end"):
            raise RuntimeError(self.fail[1])
        DEFAULT_RNG.capture_epilogue()
        self.ops = rec.ops
        return self.outputs

    def replay(self):
        self.replays += 1
        if self._injected("replay") and not self.fail[2]:
            raise RuntimeError(self.fail[1])
        with Recorder(expect=self.ops) as rec:
            new = self.fn()
        if len(rec.ops) != len(self.ops):
            raise StandInMismatch(f"the replay issued {len(rec.ops)} ops, its capture {len(self.ops)}")
        if self._injected("replay"):
            raise RuntimeError(self.fail[1])
        with torch.no_grad():
            for o, n in zip(_flat(self.outputs), _flat(new)):
                o.copy_(n)
        return self.outputs


def _flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for v in x for t in _flat(v)] if isinstance(x, (list, tuple)) else []
