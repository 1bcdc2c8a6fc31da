"""The fast path of every job: bf16 autocast, channels-last, torch.compile and CUDA
graphs, chosen per device from the spec's `fast` section (`fast_settings`), and the
device placement that applies them (`apply_fast`). Below the training loop and the
evaluation loops alike, so both read the same settings."""
from __future__ import annotations

import torch

from advss.graphguard import suspended

BF16_NATIVE_CC = (8, 0)   # Ampere on: bf16 tensor cores; below (V100 7.0, T4 7.5) torch emulates bf16 slowly or refuses it
TRITON_MIN_CC = (7, 0)    # inductor's Triton backend refuses devices below Volta (P100 is 6.0)


def device_capability(dev):
    """(major, minor) CUDA compute capability and name of `dev`; (None, 'CPU') on a CPU."""
    if getattr(dev, "type", str(dev)) != "cuda":
        return None, "CPU"
    return tuple(torch.cuda.get_device_capability(dev)), torch.cuda.get_device_name(dev)


def fast_settings(spec: dict, dev) -> dict:
    """bf16 autocast, channels-last, torch.compile and CUDA graphs, from the spec's `fast`
    section: true/false (or precision bf16/fp32) force a choice; 'auto' decides per device:

      precision  bf16 where the GPU runs it natively (compute capability >= 8.0), else fp32
                 (cuDNN's convolutions in TF32 where available, torch's default);
      compile    where inductor's Triton backend supports the device (capability >= 7.0);
      graphs     'cuda' wherever CUDA is; 'off' on a CPU ('fake', the CPU stand-in that
                 tests the plumbing, when forced there);
      channels-last  on CUDA.

    On a CPU each is off (they cost more than they give). `why` holds each decision's reason,
    for meta.json and the log."""
    f = spec.get("fast", {}) or {}
    cc, name = device_capability(dev)
    cuda = cc is not None
    at = f"{name} (compute capability {cc[0]}.{cc[1]})" if cuda else "a CPU"
    why = {}

    def forced(key, value):
        why[key] = f"{value}: forced by the spec (fast.{key}: {f[key]})"
        return value

    prec = f.get("precision", "auto")
    if prec == "auto":
        bf16 = cuda and cc >= BF16_NATIVE_CC
        why["precision"] = ("bf16: native on " + at if bf16 else
                            f"fp32: bf16 is not native below compute capability 8.0, on {at}" if cuda else
                            "fp32: on a CPU bf16 costs more than it gives")
    else:
        bf16 = prec == "bf16"
        forced("precision", prec)
    tf32 = bool(cuda and not bf16 and cc >= BF16_NATIVE_CC and torch.backends.cudnn.allow_tf32)
    if f.get("compile", "auto") == "auto":
        comp = cuda and cc >= TRITON_MIN_CC
        why["compile"] = (f"on: inductor supports {at}" if comp else
                          f"off: inductor's Triton backend needs compute capability 7.0, on {at}" if cuda else
                          "off: on a CPU compilation costs more than it gives")
    else:
        comp = forced("compile", bool(f["compile"]))
    if f.get("channels_last", "auto") == "auto":
        cl = cuda
        why["channels_last"] = "on: CUDA" if cuda else "off: a CPU"
    else:
        cl = forced("channels_last", bool(f["channels_last"]))
    g = f.get("cuda_graphs", "auto")
    graphs = ("cuda" if cuda else "off") if g == "auto" else ("cuda" if cuda else "fake") if g is True else "off"
    why["graphs"] = (f"{graphs}: " + ("CUDA graphs wherever CUDA is" if g == "auto" and cuda else
                                      "none on a CPU" if g == "auto" else
                                      "the CPU stand-in, forced by the spec" if graphs == "fake" else
                                      "forced by the spec"))
    return {"bf16": bf16, "tf32": tf32, "channels_last": cl, "compile": comp,
            "compile_backend": f.get("compile_backend", "inductor"), "graphs": graphs,
            "device": at, "why": why}


def autocast(dev, on: bool):
    return torch.autocast(device_type=getattr(dev, "type", str(dev)), dtype=torch.bfloat16, enabled=on)


def _raise_recompile_limit(n: int = 64):
    """One trunk forward meets several static variants (train/eval BN, crafting with BN
    momentum 0, inputs with/without grad, Selfie's patch shapes): let them all stay cached."""
    import torch._dynamo.config as dc

    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dc, name) and getattr(dc, name) < n:
            setattr(dc, name, n)


class _TrainEvalCompiled:
    """Stands in for `trunk.forward`: one compiled callable for training mode and one for
    eval mode, both with static shapes (`dynamic=False`), so that switching to
    validation and back never throws away or re-specialises the other's graphs. Each call
    runs with the graph guard suspended (`advss.graphguard.suspended`)."""

    def __init__(self, module, backend):
        _raise_recompile_limit()
        self.module = module
        fn = module.forward
        self.train_fn = torch.compile(fn, dynamic=False, backend=backend)
        self.eval_fn = torch.compile(fn, dynamic=False, backend=backend)

    def __call__(self, *args, **kwargs):
        with suspended():
            return (self.train_fn if self.module.training else self.eval_fn)(*args, **kwargs)


def apply_fast(model, dev, fast: dict):
    """Move to the device; compile the trunk's forward in place so state_dict keys stay plain."""
    model.to(dev, memory_format=torch.channels_last if fast["channels_last"] else torch.contiguous_format)
    if fast["compile"]:
        model.trunk.forward = _TrainEvalCompiled(model.trunk, fast.get("compile_backend", "inductor"))
    if dev.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
        torch.backends.cudnn.benchmark = True  # fixed shapes: autotune each conv once
    return model


def graphs_compiled() -> int:
    """Graphs torch.compile has built in this process (a new one after warm-up is a recompile)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
