"""Capturing the training step as a CUDA graph, and undoing a capture that failed.

Read against torch 2.11 (the device machine's) and current torch (2.13 on) in
`aten/src/ATen/cuda/CUDAGraph.cpp` and `CUDAGeneratorImpl.cpp`:

  * capture_end calls cudaStreamEndCapture first (AT_CUDA_CHECK: it throws when the capture
    was invalidated: a hidden sync, cuDNN or Triton benchmarking, a copy from pageable
    memory). Everything after it is then skipped: the allocator's `endAllocateToPool`, the
    generators' capture epilogue, and `capture_ended_`, without which the graph's
    destructor never releases its memory pool (and `graph.pool()` refuses to name it:
    `cuda_capture` therefore brings its own pool handle).
  * torch 2.4–2.12: capture_begin's prologue sets the default CUDA generator's state
    `capturing_`; only the skipped epilogue clears it. `set_state`/`set_rng_state` write
    seed and offset into that same state and leave the flag, so the next eager draw
    (dropout) fails: "Offset increment outside graph capture encountered unexpectedly".
    `graphsafe_set_state` replaces the generator's state object: one from a fresh
    generator has the flag clear, and the runner then restores seed and offset.
  * torch 2.13 on keeps capture state per capture id, created on the first RNG op inside a
    capture and removed when the graph is destroyed; no flag survives a failure, and the
    state swap is harmless.
"""
from __future__ import annotations

import gc

import torch


def cuda_capture(fn, dev):
    """Capture `fn` on a side stream; returns (graph, fn's outputs). The stream context always
    exits; a step that raises still ends the capture, and its own error is the one raised;
    a capture that fails to end releases its memory pool (`release_pool`)."""
    torch.cuda.synchronize(dev)
    gc.collect()
    torch.cuda.empty_cache()
    graph, pool = torch.cuda.CUDAGraph(), torch.cuda.graph_pool_handle()
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        graph.capture_begin(pool=pool)
        try:
            out = fn()
        except BaseException:
            _end(graph, pool, dev, quiet=True)
            raise
        _end(graph, pool, dev)
    torch.cuda.current_stream(dev).wait_stream(side)
    return graph, out


def _end(graph, pool, dev, quiet=False):
    try:
        graph.capture_end()
    except Exception:  # noqa: BLE001 - cudaStreamEndCapture failed: see the module docstring
        release_pool(pool, dev)
        if not quiet:
            raise


def release_pool(pool, dev):
    """What capture_end skipped on the allocator's side: stop routing the capture's
    allocations to `pool`, and drop the pool's use count so that its blocks are freed."""
    idx = dev.index if dev.index is not None else torch.cuda.current_device()
    for names in (("_cuda_endAllocateToPool", "_cuda_endAllocateCurrentStreamToPool"), ("_cuda_releasePool",)):
        for name in names:
            fn = getattr(torch._C, name, None)
            if fn is None:
                continue
            try:
                fn(idx, pool)
            except Exception:  # noqa: BLE001 - already done by a capture_end that got further
                pass
            break


def default_generator(dev):
    """The generator dropout draws from on `dev`: torch's default CUDA generator, or the
    stand-in's model of it (`advss.standin.DEFAULT_RNG`) on a CPU."""
    if dev.type == "cuda":
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        return torch.cuda.default_generators[idx]
    from advss import standin

    return standin.DEFAULT_RNG


def reset_generator(gen, dev):
    """Clear a capture flag a failed capture left on `gen` (see the module docstring): give
    it the state of a fresh generator. The caller restores its seed and offset."""
    if dev.type == "cuda":
        gen.graphsafe_set_state(torch.Generator(device=dev))
    else:
        from advss import standin

        gen.graphsafe_set_state(standin.RNG())


def draw(gen, dev):
    """One eager draw from the default generator (it raises where a capture flag is left)."""
    if dev.type == "cuda":
        torch.rand(1, device=dev)
    else:
        gen.draw()
