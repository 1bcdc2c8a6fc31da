"""The contrastive pretext family, the paper's successors: SimCLR (P2), ACL (P3, Jiang et
al. NeurIPS 2020) and DynACL (Luo et al. ICLR 2023), as one task.

Each image gives two views, augmented on the device with parameters drawn per image
and per view (crop-resize, flip, colour jitter, grayscale: `draw_params`); both pass
the trunk and a projection head, and the per-example loss is NT-Xent's (Chen et al.
2020) mean over the image's two anchors, so its batch mean is the NT-Xent loss.
Views are packed N×2×C×H×W, so PGD perturbs both views of every image within the
same ε-ball, as ACL's `PGD_contrastive` does, and the loop, `evaluate` and the fast
path see one more per-example task. Targets are each image's index in the batch;
`correct` is top-1 retrieval of the positive among the 2N−1 others.

Options (config `pretext.contrastive`):
  temperature  NT-Xent's τ (0.5 in ACL and DynACL)
  dual_bn      ACL's dual BatchNorm: every BN of trunk and head keeps a clean and an
               adversarial copy; `adversarial()` routes through the latter
  finetune_bn  which copy the exported checkpoint keeps ('adv': ACL's `--bnNameCnt 1`), the
               one SLF/ALF fine-tune; the checkpoint also keeps both copies (`bn_copies`),
               from which a dual-BN AFF (RSB's `trades_loss_dual`) starts
  schedule     'dynacl': DynACL's annealed augmentation strength and loss weight
  reload_every DynACL's `reload_frequency` (epochs between strength changes)
  swap         DynACL's `swap_param` (λ of the adversarial weight)
  momentum     DynACL's momentum encoder, its EMA rate m (0.99; 0 = none): `MomentumHead`
  interpolation  the crop's resampling: 'bicubic' (ACL's train_simCLR.py) or 'bilinear'
               (DynACL's train_DynACL.py, torchvision's default)
"""
from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from advss.dualbn import _Exported, bn_copies, bn_route, dualize, single_bn_state
from advss.pretext.base import Task

# ITU-R 601 luma, as torchvision's rgb_to_grayscale; RGB -> YIQ and back for the hue rotation
LUMA = (0.299, 0.587, 0.114)
YIQ = torch.tensor([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
YIQ_INV = torch.linalg.inv(YIQ)
LUMA_T = torch.tensor(LUMA).view(1, 3, 1, 1)
_ON_DEVICE = {}  # (id, device, dtype) -> the constant there, copied once (a per-batch copy is a host round trip)


def _on(const: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A module constant on `like`'s device and dtype, copied there once."""
    key = (id(const), like.device, like.dtype)
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = const.to(like)
    return _ON_DEVICE[key]


# ------------------------------------------------------------------ augmentation
def _u(n, gen, dev):
    return torch.rand(n, generator=gen, device=gen.device if gen is not None else dev).to(dev)


def draw_params(n: int, gen, dev, strength: float = 1.0) -> dict:
    """One view's augmentation parameters, one value per image, at DynACL's strength s
    (1 = SimCLR/ACL's): crop area in [1−0.9s, 1] with aspect ratio in [3/4, 4/3],
    flip with p 0.5, jitter (brightness, contrast, saturation ±0.4s, hue ±0.1s) with
    p 0.8s, grayscale with p 0.2s (torchvision's RandomResizedCrop/ColorJitter/RandomGrayscale)."""
    s = float(strength)
    # torchvision's RandomResizedCrop: up to 10 (area, ratio) tries, the first crop that
    # fits, else the whole (square) image; all 10 are drawn, so the shapes stay static
    area = 1 - 0.9 * s * _u((n, 10), gen, dev)
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * _u((n, 10), gen, dev))
    w, h = (area * ratio).sqrt(), (area / ratio).sqrt()
    fits = (w <= 1) & (h <= 1)
    first = fits.int().argmax(1, keepdim=True)
    any_fit = fits.any(1)
    w = torch.where(any_fit, w.gather(1, first)[:, 0], torch.ones(n, device=dev))
    h = torch.where(any_fit, h.gather(1, first)[:, 0], torch.ones(n, device=dev))
    return {"w": w, "h": h, "cx": (1 - w) * (2 * _u(n, gen, dev) - 1), "cy": (1 - h) * (2 * _u(n, gen, dev) - 1),
            "flip": _u(n, gen, dev) < 0.5, "jitter": _u(n, gen, dev) < 0.8 * s,
            "brightness": 1 + 0.4 * s * (2 * _u(n, gen, dev) - 1), "contrast": 1 + 0.4 * s * (2 * _u(n, gen, dev) - 1),
            "saturation": 1 + 0.4 * s * (2 * _u(n, gen, dev) - 1), "hue": 0.1 * s * (2 * _u(n, gen, dev) - 1),
            "gray": _u(n, gen, dev) < 0.2 * s,
            # torchvision's ColorJitter applies its four ops in a fresh random order on every call (per image)
            "order": torch.argsort(_u((n, 4), gen, dev), dim=1)}


def _gray(x):
    return (x * _on(LUMA_T, x)).sum(1, keepdim=True)


def _hue(x, shift):
    """Hue rotation by shift·2π in YIQ space (a linear stand-in for torchvision's HSV
    hue shift, batched without per-pixel branches)."""
    y = torch.einsum("ij,njhw->nihw", _on(YIQ, x), x)
    a = (2 * math.pi * shift).view(-1, 1, 1)
    i, q = y[:, 1], y[:, 2]
    y = torch.stack([y[:, 0], i * a.cos() - q * a.sin(), i * a.sin() + q * a.cos()], 1)
    return torch.einsum("ij,njhw->nihw", _on(YIQ_INV, x), y).clamp(0, 1)


JITTER_OPS = ("brightness", "contrast", "saturation", "hue")  # the index order of draw_params' "order"


def _jitter_op(j, name, f):
    """One of ColorJitter's ops with per-image factors f (shaped n×1×1×1, hue's n)."""
    if name == "brightness":
        return (j * f).clamp(0, 1)
    if name == "contrast":
        m = _gray(j).mean((2, 3), keepdim=True)
        return ((j - m) * f + m).clamp(0, 1)
    if name == "saturation":
        g = _gray(j)
        return ((j - g) * f + g).clamp(0, 1)
    return _hue(j, f)


def apply_params(x: torch.Tensor, p: dict, interpolation: str = "bilinear") -> torch.Tensor:
    """The view of each image x[i] that p's i-th entries describe; whole-batch tensor ops only.
    The crop is resampled with `interpolation` ('bicubic' as ACL's RandomResizedCrop(...,
    interpolation=3), clipped to [0,1] as PIL's 8-bit result is); the jitter applies its four
    ops in each image's own order (p["order"]): each of the four rounds computes every op and
    keeps, per image, the one its order names."""
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', not {interpolation!r}")
    n = len(x)
    v = lambda t: t.view(n, 1, 1, 1)  # noqa: E731
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = torch.where(p["flip"], -p["w"], p["w"])
    theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = p["cx"], p["h"], p["cy"]
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode=interpolation, padding_mode="border", align_corners=False)
    if interpolation == "bicubic":
        out = out.clamp(0, 1)
    j = out
    for r in range(len(JITTER_OPS)):
        pick = p["order"][:, r]
        new = j
        for k, name in enumerate(JITTER_OPS):
            new = torch.where(v(pick == k), _jitter_op(j, name, p[name] if name == "hue" else v(p[name])), new)
        j = new
    out = torch.where(v(p["jitter"]), j, out)
    return torch.where(v(p["gray"]), _gray(out).expand_as(out), out)


# ------------------------------------------------------------------ the loss
def nt_xent(z: torch.Tensor, temperature: float = 0.5):
    """NT-Xent on N×2×D embeddings: per image, the mean over its two anchors of
    −log softmax of the positive among the 2N−1 others (cosine similarity / τ).
    Returns (N losses, 2N×2N similarity logits with −inf on the diagonal). In fp32
    whatever the autocast: τ = 0.5 logits of bf16 cosines lose the ranking."""
    with torch.autocast(z.device.type, enabled=False):
        n = len(z)
        e = F.normalize(z.flatten(0, 1).float(), dim=1)
        sim = (e @ e.t() / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        pos = torch.arange(2 * n, device=z.device) ^ 1  # view 0 of image i is row 2i, its positive 2i+1
        return F.cross_entropy(sim, pos, reduction="none").view(n, 2).mean(1), sim


# ------------------------------------------------------------------ dual BN
# ------------------------------------------------------------------ the task
def dynacl_strength(epoch: int, epochs: int, reload_every: int = 50) -> float:
    """DynACL's augmentation strength at 0-based `epoch`: 1 − e₀/E, where e₀ is the
    epoch at which the data were last reloaded (every `reload_every` epochs)."""
    return 1 - (epoch // reload_every) * reload_every / epochs


def dynacl_adv_weight(epoch: int, epochs: int, reload_every: int = 50, swap: float = 2 / 3) -> float:
    """DynACL's weight w of the adversarial NT-Xent (the clean one gets 2 − w):
    min(1 + ⌊(e+1)/K⌋·(K/E)·λ, 2) at 0-based epoch e, as train_DynACL.py computes it
    from its 1-based epoch."""
    return min(1 + ((epoch + 1) // reload_every) * (reload_every / epochs) * swap, 2.0)


class ProjectionHead(nn.Sequential):
    """ACL's default (three-layer) projection head: Linear+BN+ReLU, Linear+BN+ReLU, Linear+BN."""

    def __init__(self, d: int, out_dim: int):
        super().__init__(nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(),
                         nn.Linear(d, d, bias=False), nn.BatchNorm1d(d), nn.ReLU(),
                         nn.Linear(d, out_dim, bias=False), nn.BatchNorm1d(out_dim))


class MomentumHead(nn.Module):
    """The projection head with DynACL's momentum encoder beside it (PKU-ML/DYNACL at
    7d143db7f63e699a533df8e262bcf6ed02abe805: models/resnet_multi_bn.py, resnet18_momentum;
    train_DynACL.py). `key_trunk` and `key_proj` are a copy of the online trunk and head
    with no gradient, updated as k ← m·k + (1 − m)·q after each step's forward passes and
    before the optimiser's update (`_momentum_update_encoder_k`): parameters only, the BN
    running statistics being each encoder's own. The first step copies q into k first
    (`_init_encoder_k`), so weights initialised after the build (init_weights) are the
    ones copied. Both updates are foreach ops on the device with a 0-d flag `started`, so a
    CUDA graph holds them and resuming keeps them."""

    def __init__(self, proj: nn.Module, trunk: nn.Module, m: float):
        super().__init__()
        if not 0 < m < 1:
            raise ValueError(f"pretext.contrastive.momentum must be in (0, 1), not {m!r}")
        self.proj, self.m = proj, float(m)
        self.key_trunk, self.key_proj = copy.deepcopy(trunk), copy.deepcopy(proj)
        for p in self.key_params():
            p.requires_grad_(False)
        self.register_buffer("started", torch.zeros(()))

    def forward(self, h):
        return self.proj(h)

    def key(self, model, x):
        """The momentum encoder's embedding of images x (the online model's normalisation)."""
        return self.key_proj(self.key_trunk(model.norm(x)))

    def key_params(self):
        return [*self.key_trunk.parameters(), *self.key_proj.parameters()]

    def pairs(self, model):
        q, k = [*model.trunk.parameters(), *self.proj.parameters()], self.key_params()
        if [t.shape for t in q] != [t.shape for t in k]:
            raise ValueError("momentum encoder: the online and key parameters do not pair up")
        return q, k

    @torch.no_grad()
    def begin_step(self, model):
        """k ← q on the first step only (k·started + q·(1 − started)): DynACL's initial copy."""
        q, k = self.pairs(model)
        torch._foreach_mul_(k, self.started)
        torch._foreach_add_(k, torch._foreach_mul(q, 1 - self.started))

    @torch.no_grad()
    def end_step(self, model):
        """k ← m·k + (1 − m)·q with this step's q (before the optimiser moves it)."""
        q, k = self.pairs(model)
        torch._foreach_lerp_(k, q, 1 - self.m)
        self.started.fill_(1)


def momentum_objective(objective):
    """`objective` inside DynACL's momentum step: the first step's copy, the objective's forward
    passes (through both encoders, `Contrastive.loss`), then the EMA."""
    def step(model, task, *args):
        model.head.begin_step(model)
        out = objective(model, task, *args)
        model.head.end_step(model)
        return out

    return step


class Contrastive(Task):
    name = "contrastive"

    def __init__(self, temperature: float = 0.5, proj_dim: int | None = None, dual_bn: bool = False,
                 finetune_bn: str = "adv", schedule: str = "constant", reload_every: int = 50,
                 swap: float = 2 / 3, interpolation: str = "bilinear", momentum: float = 0.0, state=None):
        if interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"pretext.contrastive.interpolation must be 'bilinear' or 'bicubic', not {interpolation!r}")
        self.interpolation = interpolation
        if schedule not in ("constant", "dynacl"):
            raise ValueError(f"pretext.contrastive.schedule must be 'constant' or 'dynacl', not {schedule!r}")
        if finetune_bn not in ("adv", "clean"):
            raise ValueError(f"pretext.contrastive.finetune_bn must be 'adv' or 'clean', not {finetune_bn!r}")
        if float(temperature) <= 0 or int(reload_every) < 1:
            raise ValueError("pretext.contrastive: temperature must be > 0 and reload_every >= 1")
        self.temperature, self.proj_dim, self.dual_bn = float(temperature), proj_dim, bool(dual_bn)
        self.finetune_bn = finetune_bn if dual_bn else "clean"
        self.schedule, self.reload_every, self.swap = schedule, int(reload_every), float(swap)
        self.momentum = float(momentum)
        self.strength = 1.0
        self.adv_weight = torch.ones(())  # a tensor the step reads: a new value needs no new graph
        self.n_classes = 0

    def build_head(self, trunk):
        d = trunk.out_dim
        head = ProjectionHead(d, self.proj_dim or d)
        if self.dual_bn:  # the trunk too: ACL's encoders share all weights but the BN
            dualize(trunk)
            dualize(head)
        return MomentumHead(head, trunk, self.momentum) if self.momentum else head

    def wrap_objective(self, objective):
        """The training step's objective: with the momentum encoder, its EMA around it."""
        return momentum_objective(objective) if self.momentum else objective

    def set_epoch(self, epoch: int, epochs: int, device=None):
        self.adv_weight = self.adv_weight.to(device)  # the same tensor once it is there (a graph holds it)
        if self.schedule == "dynacl":
            self.strength = dynacl_strength(epoch, epochs, self.reload_every)
            self.adv_weight.fill_(dynacl_adv_weight(epoch, epochs, self.reload_every, self.swap))

    def make_batch(self, x, y, gen):
        views = [apply_params(x, draw_params(len(x), gen, x.device, self.strength), self.interpolation)
                 for _ in range(2)]
        return torch.stack(views, 1), torch.arange(len(x), device=x.device)

    def loss(self, model, inputs, targets):
        n = len(inputs)
        if self.momentum:  # DynACL's swap: view 0 through the online encoder, view 1 through the momentum one
            z = torch.stack([model(inputs[:, 0]), model.head.key(model, inputs[:, 1])], 1)
        else:
            z = model(inputs.flatten(0, 1)).view(n, 2, -1)
        loss, sim = nt_xent(z, self.temperature)
        return loss, sim.view(n, 2 * 2 * n)

    def correct(self, logits, targets):
        n = len(targets)
        hit = logits.view(n, 2, 2 * n).argmax(-1) == (2 * targets[:, None] + 1 - torch.arange(2, device=targets.device))
        return hit.float().mean(1)

    def adversarial(self, model):
        """Forward passes inside are of adversarial views: dual BN uses its adversarial copy."""
        return bn_route(model, "adv")

    def export(self, model):
        """The trunk with one BN per layer (`finetune_bn`'s copy), as a plain ResNet's keys,
        and both copies' BN tensors (`bn_copies`) for a dual-BN fine-tuning. With the momentum
        encoder, that encoder is the one exported (DynACL's model_encoder_k.pt, which its
        assign_label.py, LPAFT.py and the benchmark's fine-tuning load)."""
        if not (self.dual_bn or self.momentum):
            return model
        state = model.state_dict()
        if self.momentum:
            state = {**{k: v for k, v in state.items() if not k.startswith(("trunk.", "head."))},
                     **{f"trunk.{k}": v for k, v in model.head.key_trunk.state_dict().items()},
                     **{f"head.{k}": v for k, v in model.head.key_proj.state_dict().items()}}
        if not self.dual_bn:
            return _Exported(state)
        return _Exported(single_bn_state(state, self.finetune_bn), bn_copies=bn_copies(state))
