"""Dual BatchNorm (ACL's: Jiang et al. NeurIPS 2020): every BatchNorm keeps a clean and an
adversarial copy, and a forward pass goes through one of them. A property of the model, not
of a task: ACL's pretraining routes its adversarial views through it, and a dual-BN fine-tuning
(RobustSSL_Benchmark's AFF, `trades_loss_dual`) and the pseudo-label stages load, route and export
the copies, so the loop and the objectives take it from here."""
from __future__ import annotations

import contextlib

import torch.nn as nn


class DualBatchNorm(nn.Module):
    """ACL's dual BN: a clean and an adversarial BatchNorm of the same shape, picked
    by `route_adv` (set by `bn_route`), each with its own running statistics."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm):
        super().__init__()
        self.clean, self.adv = bn, type(bn)(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        self.adv.load_state_dict(bn.state_dict())
        self.route_adv = False

    def forward(self, x):
        return self.adv(x) if self.route_adv else self.clean(x)


@contextlib.contextmanager
def bn_route(model: nn.Module, copy: str):
    """Forward passes inside go through each DualBatchNorm's `copy` ('clean' or 'adv'),
    the previous routing restored after; a model without dual BN is left as it is. ACL's
    pretraining routes its adversarial views so, and RSB's dual-BN AFF (`trades_loss_dual`)
    its clean input through the clean copy and the adversarial one through the other."""
    if copy not in ("clean", "adv"):
        raise ValueError(f"BN copy must be 'clean' or 'adv', not {copy!r}")
    duals = [m for m in model.modules() if isinstance(m, DualBatchNorm)]
    was = [m.route_adv for m in duals]
    for m in duals:
        m.route_adv = copy == "adv"
    try:
        yield
    finally:
        for m, w in zip(duals, was):
            m.route_adv = w


def dualize(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm under `module` by a DualBatchNorm, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, DualBatchNorm(child))
        else:
            dualize(child)
    return module


def single_bn_state(state: dict, keep: str) -> dict:
    """A dual-BN state dict as a plain one: each DualBatchNorm's `keep` copy under the plain BN keys."""
    out = {}
    for k, v in state.items():
        for part in (".clean.", ".adv."):
            if part in k:
                if part == f".{keep}.":
                    out[k.replace(part, ".")] = v
                break
        else:
            out[k] = v
    return out


def bn_copies(state: dict) -> dict:
    """{'clean': …, 'adv': …}: each copy's BatchNorm tensors of a dual-BN state dict under
    the plain keys, which a pretraining's checkpoint keeps beside its one-copy weights so
    that a dual-BN fine-tuning (RSB's AFF) can start from both copies."""
    return {c: {k.replace(f".{c}.", "."): v for k, v in state.items() if f".{c}." in k} for c in ("clean", "adv")}


def dual_bn_state(plain: dict, copies: dict, keys) -> dict:
    """The inverse of `single_bn_state`: a plain state dict (`plain`) and the two BN copies
    (`bn_copies`) as the state of a dualized model with these `keys`."""
    out = {}
    for k in keys:
        for c in ("clean", "adv"):
            if f".{c}." in k:
                src = k.replace(f".{c}.", ".")
                if src in copies[c]:
                    out[k] = copies[c][src]
                break
        else:
            if k in plain:
                out[k] = plain[k]
    return out


def dual_bn_finetune(model: nn.Module, ck: dict, path="checkpoint") -> dict:
    """Dual-BN fine-tuning (RSB's AFF after a dual-BN pretraining, `get_model` with bn_names
    ['normal', 'pgd']): dualize the model's trunk in place, route every forward pass through
    the adversarial copy unless `bn_route` says otherwise (validation, test and the exported
    model are the adversarial copy, as RSB's `cvt_state_dict_AFF` keeps), and return `ck`
    with its weights as the dualized trunk's keys, both BN copies from the pretraining."""
    copies = ck.get("bn_copies")
    if not copies:
        raise ValueError(f"{path} keeps one BatchNorm copy; dual-BN fine-tuning needs a dual-BN pretraining "
                         "(ACL's) saved with both copies (bn_copies)")
    dualize(model.trunk)
    for m in model.modules():
        if isinstance(m, DualBatchNorm):
            m.route_adv = True
    return {**ck, "state_dict": dual_bn_state(ck["state_dict"], copies, model.state_dict().keys())}


class _Exported:
    """What `save_checkpoint` needs of a model: its (plain-BN) state dict."""

    def __init__(self, state, **extra):
        self._state = state
        self.extra = extra  # more checkpoint entries (a dual-BN pretraining's bn_copies)

    def state_dict(self):
        return self._state


def adv_copy(model: nn.Module) -> _Exported:
    """A dual-BN model as a plain one with its adversarial BN copy (RSB's AFF evaluates and
    saves that copy: `cvt_state_dict_AFF`)."""
    return _Exported(single_bn_state(model.state_dict(), "adv"))
