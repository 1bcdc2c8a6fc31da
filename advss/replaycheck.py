"""What a replay must equal: the eager step's result, run from the same state on the same
batch with the same draws. `StepRunner` replays the captured batch, snapshots what the
replay produced (`Outcome`), runs the batch again eagerly from the snapshot before the
replay, and keeps the graph only if `compare` finds every one of these within tolerance:

  loss      the step's scalar loss
  gradient  each parameter's gradient (direction and size)
  update    each parameter's change (the learning rate, weight decay, momentum, the SGD or
            LARS formula: a replay at 0.7× the learning rate is 30 % off here)
  momentum  each momentum buffer's change
  buffer    each model buffer's change (BatchNorm's running mean and variance, its count)

Each as a relative error of the change, ‖Δ_graph − Δ_eager‖ / ‖Δ_eager‖ (0 where both are
zero): per tensor, so that one parameter's lost gradient is an error of 1, not a rounding
error in a vector of millions, and of the change, not of the new value, which the two runs
share.

Tolerances (`RTOL`). On a CPU, or any device with deterministic kernels, the two runs are
bitwise equal. On a GPU they can differ: cuDNN's autotuned convolution backward and
scatter-style kernels add in a nondeterministic order (about 1e-6 relative in fp32, and
TF32 convolutions round to 10 bits), and under bf16 autocast a last-bit difference is 2⁻⁸
≈ 0.4 %, which PGD's sign steps can turn into a different sign at the pixels whose
gradient is near zero. So 2 % in fp32 and 10 % in bf16: an order of magnitude above that
noise, and below every fault the tests inject (30 % for a 0.7× learning rate or gradient,
100 % for a lost gradient). One batch is checked: what a second batch would show (a value
the capture froze) the guard and the stand-in's op record catch by construction.
"""
from __future__ import annotations

import torch

RTOL = {"fp32": 2e-2, "bf16": 1e-1}
KINDS = ("loss", "gradient", "update", "momentum", "buffer")


class Outcome:
    """What one run of the step left, relative to the snapshot `before` (name -> tensor)."""

    @torch.no_grad()
    def __init__(self, loss, model, opt, before: dict):
        self.values = {("loss", "loss"): loss.detach().to(torch.float64, copy=True).sum().reshape(1)}
        if model is None:  # a bare step (the runner's unit tests): the loss is all there is
            return
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            self.values[("gradient", name)] = (p.grad.detach().to(torch.float64, copy=True).flatten()
                                               if p.grad is not None
                                               else torch.zeros(p.numel(), dtype=torch.float64, device=p.device))
            self.values[("update", name)] = _change(p, before[f"param:{name}"])
            buf = opt.state.get(p, {}).get("momentum_buffer") if opt is not None else None
            if buf is not None:
                self.values[("momentum", name)] = _change(buf, before[f"momentum:{name}"])
        for name, b in model.named_buffers():
            if f"buffer:{name}" in before:
                self.values[("buffer", name)] = _change(b, before[f"buffer:{name}"])


def _change(t, old):
    return (t.detach().double() - old.detach().double()).flatten()


def state_names(model, opt):
    """The tensors a step mutates, by the names `Outcome` reads them under."""
    if model is None:
        return {}
    out = {f"param:{n}": p for n, p in model.named_parameters()}
    out.update({f"buffer:{n}": b for n, b in model.named_buffers() if b.is_floating_point() or b.dtype == torch.long})
    if opt is not None:
        for n, p in model.named_parameters():
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                out[f"momentum:{n}"] = buf
    return out


@torch.no_grad()
def compare(graph: Outcome, eager: Outcome, precision: str) -> dict:
    """The check's figures: the worst relative error per kind, the worst tensor overall, and
    whether all are within `RTOL[precision]` (NaN fails)."""
    rtol = RTOL[precision]
    worst = {k: 0.0 for k in KINDS}
    where, top = None, -1.0
    for key, e in eager.values.items():
        g = graph.values.get(key)
        if g is None:
            err = float("inf")
        else:
            ne, d = e.norm(), (g - e).norm()
            err = 0.0 if float(d) == 0.0 else float(d / ne) if float(ne) > 0 else float("inf")
        kind = key[0]
        if not err <= worst[kind]:
            worst[kind] = err
        if not err <= top:
            top, where = err, key
    ug = torch.cat([v for (k, _), v in graph.values.items() if k == "update"] or [torch.zeros(1, dtype=torch.float64)])
    ue = torch.cat([v for (k, _), v in eager.values.items() if k == "update"] or [torch.zeros(1, dtype=torch.float64)])
    cos = 1.0 if float(ug.norm()) == 0 and float(ue.norm()) == 0 else float(ug @ ue / (ug.norm() * ue.norm()).clamp_min(1e-300))
    lg, le = float(graph.values[("loss", "loss")]), float(eager.values[("loss", "loss")])
    return {"passed": all(v <= rtol for v in worst.values()), "rtol": rtol, "precision": precision,
            "max_rel_err": worst, "worst": f"{where[0]} {where[1]}: {top:.2e}" if where else None,
            "tensors": len(eager.values), "loss_graph": lg, "loss_eager": le, "loss_rel_diff": worst["loss"],
            "update_cosine": cos}


def summary(check: dict) -> str:
    errs = ", ".join(f"{k} {v:.1e}" for k, v in check["max_rel_err"].items())
    return (f"loss {check['loss_graph']:.6g} vs eager {check['loss_eager']:.6g}; worst relative error per kind: "
            f"{errs} (tolerance {check['rtol']:g}, {check['precision']}; worst: {check['worst']})")
