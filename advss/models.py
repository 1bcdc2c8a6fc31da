"""ResNets with a CIFAR (or ImageNet) stem, normalisation inside, a trunk/head split,
and strict, checked checkpoints.

One model class serves every stage: `Model(norm, trunk, head)`. Pretext tasks and
the classifier differ only in the head; weights move between stages by trunk keys.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from advss.io import CheckpointError, torch_load, torch_save

# ImageNet statistics, as the reference code's normalisation layer uses.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

ARCHS = {
    # name: (block, blocks per stage)
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet-tiny": ("basic", (1, 1, 1, 1)),
}


class Normalize(nn.Module):
    def __init__(self, mean=MEAN, std=STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x):
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.short = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                      if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.short(x))


class Trunk(nn.Module):
    """Stem + layer1..layer4. `forward(x, upto=k)` stops after layer k and pools,
    which Selfie's patch network (stem..layer3) needs."""

    def __init__(self, arch="resnet50", width=64, stem="cifar"):
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
        kind, blocks = ARCHS[arch]
        block = Bottleneck if kind == "bottleneck" else BasicBlock
        if stem == "cifar":  # one 3×3 conv, stride 1, no max-pool
            self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        elif stem == "imagenet":  # 7×7 stride-2 conv + max-pool, for 224-px inputs
            self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            raise ValueError(f"unknown stem {stem!r}; choose 'cifar' or 'imagenet'")
        self.dims = []
        cin = width
        layers = []
        for i, n in enumerate(blocks):
            w = width * 2 ** i
            stage = []
            for j in range(n):
                stage.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w * block.expansion
            layers.append(nn.Sequential(*stage))
            self.dims.append(cin)
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.out_dim = cin

    def forward(self, x, upto: int = 4):
        x = self.stem(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4)[:upto]:
            x = layer(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class Model(nn.Module):
    """normalise → trunk → head. Inputs are images in [0,1]."""

    def __init__(self, trunk: Trunk, head: nn.Module):
        super().__init__()
        self.norm = Normalize()
        self.trunk = trunk
        self.head = head

    def features(self, x, upto: int = 4):
        return self.trunk(self.norm(x), upto)

    def forward(self, x):
        return self.head(self.features(x))


def build_trunk(model_cfg: dict) -> Trunk:
    return Trunk(model_cfg.get("arch", "resnet50"), model_cfg.get("width", 64), model_cfg.get("stem", "cifar"))


def classifier(model_cfg: dict, num_classes: int) -> Model:
    trunk = build_trunk(model_cfg)
    return Model(trunk, nn.Linear(trunk.out_dim, num_classes))


WEIGHT_INITS = ("default", "kaiming_fan_out")


def init_weights(model: nn.Module, scheme: str = "default") -> nn.Module:
    """'default': PyTorch's own initialisation, as built. 'kaiming_fan_out': every
    convolution He-normal with fan_out and ReLU gain, as ACL's and DynACL's ResNets (and
    torchvision's) initialise theirs; BN and linear layers keep PyTorch's."""
    if scheme not in WEIGHT_INITS:
        raise ValueError(f"weight_init must be one of {WEIGHT_INITS}, not {scheme!r}")
    if scheme == "kaiming_fan_out":
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def zero_head(model: Model) -> Model:
    """Zero the linear classifier (weight and bias) before fine-tuning, as RSB's `get_model`
    and DynACL's fine-tuning scripts do: the first steps then train the head from logits of
    0 rather than from a random readout of the pretrained features."""
    if not isinstance(model.head, nn.Linear):
        raise ValueError(f"head_init 'zero' needs a linear head, not {type(model.head).__name__}")
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


# ---------------------------------------------------------------- checkpoints
def save_checkpoint(path, model: Model, model_cfg: dict, **extra):
    """Atomic save of weights + what is needed to rebuild and check them."""
    torch_save(path, {"format": "advss-1", "model_cfg": dict(model_cfg),
                      "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra})


def load_checkpoint(path, model_cfg: dict | None = None) -> dict:
    """Load a checkpoint and check that it is one of ours and of the expected architecture."""
    ck = torch_load(path)
    if not isinstance(ck, dict) or ck.get("format") != "advss-1" or "state_dict" not in ck:
        raise CheckpointError(f"{path} is not an advss checkpoint")
    if model_cfg is not None:
        want = {k: model_cfg.get(k) for k in ("arch", "width", "stem")}
        have = {k: ck["model_cfg"].get(k) for k in ("arch", "width", "stem")}
        if want != have:
            raise CheckpointError(f"{path} holds a {have} model, but this job builds {want}")
    return ck


def load_classifier(path, model_cfg: dict, num_classes: int, device="cpu") -> Model:
    """A saved classifier (trunk + linear head), its architecture checked and every key
    loaded strictly, in eval mode: what the jobs evaluate and what a card exports."""
    ck = load_checkpoint(path, model_cfg)
    model = classifier(model_cfg, num_classes)
    model.load_state_dict(ck["state_dict"])
    return model.to(device).eval()


def load_trunk(model: Model, ck: dict, prefixes=("trunk.",), path="checkpoint") -> dict:
    """Copy pretrained trunk weights strictly: every transferred key must exist with
    the same shape. Returns a report of loaded / kept-at-init keys."""
    src = {k: v for k, v in ck["state_dict"].items() if k.startswith(tuple(prefixes))}
    if not src:
        raise CheckpointError(f"{path}: no weights under {prefixes} to transfer")
    own = model.state_dict()
    bad = [k for k in src if k not in own or own[k].shape != src[k].shape]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weights do not fit this model, e.g. {bad[:3]}")
    model.load_state_dict(src, strict=False)
    kept = sorted(k for k in own if k.startswith("trunk.") and k not in src)
    return {"loaded": len(src), "kept_at_init": kept}
