"""PGD on any differentiable loss, L∞ or L2, and the BN-mode switch used while crafting.

The attack receives the objective's own loss (a pretext loss, cross-entropy, the
ensemble's summed loss), so training and attack can never drift apart.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from fractions import Fraction

import torch

from advss.step import rand_like, rand_n, randn_like


def parse_number(v) -> float:
    """8/255 written as "8/255" in YAML stays exact and readable."""
    if isinstance(v, str):
        try:
            return float(Fraction(v.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"not a number or fraction: {v!r}") from None
    return float(v)


@dataclass(frozen=True)
class Threat:
    norm: str = "linf"        # linf | l2
    eps: float = 8 / 255      # radius of the ball in [0,1] pixel units
    step: float = 2 / 255     # step size per iteration
    steps: int = 10           # iterations
    random_start: bool = True  # uniform start in the ball
    bn_mode: str = "train"    # BatchNorm mode while crafting: train (reference) | eval

    @classmethod
    def from_cfg(cls, cfg: dict, steps_key: str = "train_steps") -> "Threat":
        t = cls(norm=cfg.get("norm", "linf"), eps=parse_number(cfg["eps"]), step=parse_number(cfg["step"]),
                steps=int(cfg[steps_key]), random_start=bool(cfg.get("random_start", True)),
                bn_mode=cfg.get("bn_mode_when_crafting", "train"))
        if t.norm not in ("linf", "l2"):
            raise ValueError(f"threat.norm must be linf or l2, not {t.norm!r}")
        if t.eps <= 0 or t.step <= 0 or t.steps < 0:
            raise ValueError(f"threat model needs eps > 0, step > 0, steps >= 0: {t}")
        return t


def _l2(v):
    return v.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))


def pgd(loss_fn, x: torch.Tensor, threat: Threat, gen: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent on `loss_fn(x_adv) -> per-example losses`.

    Madry et al. 2018. Stays in the threat's ε-ball around x and in [0,1]; no host
    synchronisation inside the loop (a CUDA graph can hold it). `gen` is a
    torch.Generator or the training step's `Draws`. Returns a detached tensor shaped like x.
    """
    x = x.detach()
    if threat.steps == 0:
        return x.clone()
    if threat.random_start:
        if threat.norm == "linf":
            delta = (rand_like(x, gen) * 2 - 1) * threat.eps
        else:
            d = randn_like(x, gen)
            r = rand_n(len(x), x, gen)
            delta = d / _l2(d) * threat.eps * r.view(-1, *([1] * (x.dim() - 1)))
        x_adv = (x + delta).clamp(0, 1)
    else:
        x_adv = x.clone()
    for _ in range(threat.steps):
        x_adv.requires_grad_(True)
        loss = loss_fn(x_adv).sum()
        grad, = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            if threat.norm == "linf":
                x_adv = x_adv + threat.step * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - threat.eps), x + threat.eps)
            else:
                x_adv = x_adv + threat.step * grad / _l2(grad)
                delta = x_adv - x
                delta = delta * (threat.eps / _l2(delta)).clamp(max=1.0)
                x_adv = x + delta
            x_adv = x_adv.clamp(0, 1)
    return x_adv.detach()


@contextlib.contextmanager
def bn_mode(model: torch.nn.Module, mode: str):
    """Craft with BatchNorm in 'train' (reference code) or 'eval' mode, then restore.
    In 'train' mode BN running statistics are left untouched: crafting must not move them."""
    was = {m: m.training for m in model.modules()}
    saved = {}
    if mode == "eval":
        model.eval()
    elif mode == "train":
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training:
                saved[m] = m.momentum
                m.momentum = 0.0  # batch statistics are used, running stats stay put
    else:
        raise ValueError(f"bn mode must be 'train' or 'eval', not {mode!r}")
    try:
        yield
    finally:
        for m, t in was.items():
            m.train(t)
        for m, mom in saved.items():
            m.momentum = mom
