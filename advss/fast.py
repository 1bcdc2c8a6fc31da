"""The fast path of every job: bf16 autocast, channels-last, torch.compile and CUDA
graphs, chosen per device from the spec's `fast` section (`fast_settings`), and the
device placement that applies them (`apply_fast`). Below the training loop and the
evaluation loops alike, so both read the same settings."""
from __future__ import annotations

import torch


def fast_settings(spec: dict, dev) -> dict:
    """bf16 autocast, channels-last, torch.compile and CUDA graphs: 'auto' turns each on
    for CUDA only (on a CPU they cost more than they give); true/false force it.
    'graphs' is 'cuda', 'fake' (a CPU stand-in that tests the plumbing) or 'off'."""
    f = spec.get("fast", {}) or {}
    cuda = getattr(dev, "type", str(dev)) == "cuda"
    pick = lambda key: cuda if f.get(key, "auto") == "auto" else bool(f[key])  # noqa: E731
    prec = f.get("precision", "auto")
    bf16 = cuda if prec == "auto" else prec == "bf16"
    graphs = f.get("cuda_graphs", "auto")
    graphs = ("cuda" if cuda else "off") if graphs == "auto" else ("cuda" if cuda else "fake") if graphs is True else "off"
    return {"bf16": bf16, "channels_last": pick("channels_last"), "compile": pick("compile"),
            "compile_backend": f.get("compile_backend", "inductor"), "graphs": graphs}


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
    validation and back never throws away or re-specialises the other's graphs."""

    def __init__(self, module, backend):
        _raise_recompile_limit()
        fn = module.forward
        self.module = module
        self.train_fn = torch.compile(fn, dynamic=False, backend=backend)
        self.eval_fn = torch.compile(fn, dynamic=False, backend=backend)

    def __call__(self, *args, **kwargs):
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
