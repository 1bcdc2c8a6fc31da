"""Ensemble pretraining's task (paper eq. 2–4, Table 5): Rotation, Jigsaw and Selfie
on one shared trunk, each with its own layer4 + head.

The shared part is stem..layer3. Rotation and Jigsaw each get a copy of layer4 and
their head; Selfie's patch network is stem..layer3 already (as in single-task
Selfie), so its branch is its head alone — a layer4 it never uses would be dead
weights. The trunk's own layer4 is not used here, so fine-tuning transfers
stem..layer3 (`transfer_prefixes`), exactly as it does for Selfie.

Each member builds its own input from the same image (rotated / permuted / the
image itself for Selfie's masking); the three inputs are stacked into one tensor
(N×M×C×H×W) so that PGD perturbs them jointly, one perturbation per task input.
Targets and logits are packed per example into one tensor each, so the training
loop and `evaluate` handle this task like any other.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from advss.pretext.base import Task
from advss.pretext.jigsaw import Jigsaw
from advss.pretext.rotation import Rotation
from advss.pretext.selfie import Selfie

MEMBERS = ("rotation", "jigsaw", "selfie")
MEMBER_TASKS = {"rotation": Rotation, "jigsaw": Jigsaw, "selfie": Selfie}
SHARED = ("trunk.stem.", "trunk.layer1.", "trunk.layer2.", "trunk.layer3.")


class EnsembleHead(nn.Module):
    """One branch per member: {layer4 (or nothing for Selfie), head}."""

    def __init__(self, trunk, tasks: dict):
        super().__init__()
        self.branches = nn.ModuleDict()
        for name, task in tasks.items():
            branch = nn.Module()
            branch.layer4 = nn.Identity() if name == "selfie" else copy.deepcopy(trunk.layer4)
            branch.head = task.build_head(trunk)
            self.branches[name] = branch


class _BranchView:
    """Looks like a `Model` to a member task (features(x, upto), head, __call__),
    so each member's own loss runs unchanged on shared trunk + its branch."""

    def __init__(self, model, name):
        self.model, self.branch = model, model.head.branches[name]
        self.head = self.branch.head

    def features(self, x, upto: int = 4):
        t = self.model.trunk
        h = t.stem(self.model.norm(x))
        for layer in (t.layer1, t.layer2, t.layer3)[:upto]:
            h = layer(h)
        if upto >= 4:
            h = self.branch.layer4(h)
        return F.adaptive_avg_pool2d(h, 1).flatten(1)

    def __call__(self, x):
        return self.head(self.features(x))


class Ensemble(Task):
    """Multi-task pretext: per-example loss = mean of the members' losses."""

    name = "ensemble"
    transfer_prefixes = SHARED

    def __init__(self, members=MEMBERS, pretext: dict | None = None, state=None):
        if len(members) < 2 or len(set(members)) != len(members):
            raise ValueError(f"an ensemble needs at least two distinct members, not {members}")
        state = state or {}
        self.tasks = {}
        for m in members:
            own = {k[len(m) + 1:]: v for k, v in state.items() if k.startswith(m + ".")}
            if m not in MEMBER_TASKS:
                raise ValueError(f"unknown task {m!r}; choose from {sorted(MEMBER_TASKS)} or 'classification'")
            self.tasks[m] = MEMBER_TASKS[m](**(pretext or {}).get(m, {}), state=own)
        self.members = tuple(members)
        # widths of each member's (targets, logits) slice in the packed tensors
        self._t_width = {m: self.tasks[m].n_masked if m == "selfie" else 1 for m in members}
        self._l_width = {m: self.tasks[m].n_masked ** 2 if m == "selfie" else self.tasks[m].n_classes
                         for m in members}
        self.n_classes = sum(self._l_width.values())

    def build_head(self, trunk):
        return EnsembleHead(trunk, self.tasks)

    def make_batch(self, x, y, gen):
        """Member inputs from the same images, drawn in member order from one generator."""
        inputs, targets = [], []
        for m in self.members:
            i, t = self.tasks[m].make_batch(x, y, gen)
            inputs.append(i)
            targets.append(t.reshape(len(x), -1))
        return torch.stack(inputs, 1), torch.cat(targets, 1)

    def _split(self, packed, widths):
        return dict(zip(self.members, packed.split([widths[m] for m in self.members], dim=1)))

    def member_losses(self, model, inputs, targets):
        """N×M per-example losses and the packed N×L logits."""
        tgt = self._split(targets, self._t_width)
        losses, logits = [], []
        for k, m in enumerate(self.members):
            t = tgt[m] if m == "selfie" else tgt[m][:, 0]
            loss, lg = self.tasks[m].loss(_BranchView(model, m), inputs[:, k], t)
            losses.append(loss)
            logits.append(lg.reshape(len(inputs), -1))
        return torch.stack(losses, 1), torch.cat(logits, 1)

    def loss(self, model, inputs, targets):
        losses, logits = self.member_losses(model, inputs, targets)
        return losses.mean(1), logits

    def member_correct(self, logits, targets):
        """N×M accuracy per member (Selfie's is the fraction of locations right)."""
        lg, tgt = self._split(logits, self._l_width), self._split(targets, self._t_width)
        out = []
        for m in self.members:
            if m == "selfie":
                n = self.tasks[m].n_masked
                out.append(self.tasks[m].correct(lg[m].reshape(-1, n, n), tgt[m]).float())
            else:
                out.append(self.tasks[m].correct(lg[m], tgt[m][:, 0]).float())
        return torch.stack(out, 1)

    def correct(self, logits, targets):
        return self.member_correct(logits, targets).mean(1)

    def state(self):
        return {f"{m}.{k}": v for m in self.members for k, v in self.tasks[m].state().items()}
