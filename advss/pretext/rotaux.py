"""The one-shot baseline of Hendrycks et al. 2019 (Section 4.4 of the paper): adversarial
training of the classifier with an auxiliary rotation-prediction loss, same backbone.

Per example: CE(class | x_adv) + w · CE(rotation k | rot_k(x)_adv), w = `rot_weight`
(0.5 in Hendrycks et al.). The batch holds each image upright and once rotated by a
balanced random k (the reference `ss-ood/adversarial` uses all four rotations of every
image; one rotation per image is an unbiased estimate of the same mean at half the
compute, as advss's Rotation task does). The two views are perturbed independently and
PGD maximises the same joint loss, as in the reference attack. With BatchNorm in eval
mode the examples are independent, so the class term's attack is plain PGD on CE and
the validation RA the loop reports is the classifier's RA.

Registered as task 'rotaux' in advss.pretext.TASKS. Its fine-tuning id is `full-adv-rotaux` (src `scratch`): the ordinary `finetune` rule with
the task set by `rotaux_spec` (rules/ablations.smk). The checkpoint keeps only the
classification part (`export`: trunk + linear head), so it loads as a classifier in
`advss.evaluate.load_classifier` and is evaluated like any fine-tuned model.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from advss.models import Model
from advss.pretext.base import Task
from advss.pretext.rotation import rotate


class RotAuxHead(nn.Linear):
    """A linear classifier (its own weight/bias, so the class part has a plain
    classifier's keys) with a 4-way rotation head beside it."""

    def __init__(self, d_in: int, n_classes: int):
        super().__init__(d_in, n_classes)
        self.rot = nn.Linear(d_in, 4)


class RotAux(Task):
    """Classification + rotation prediction; targets are (label, k) pairs."""

    name = "rotaux"
    needs_classes = True  # built as RotAux(num_classes, ...)

    def __init__(self, n_classes: int, rot_weight: float = 0.5, state=None):
        self.n_classes, self.rot_weight = n_classes, float(rot_weight)

    def build_head(self, trunk):
        return RotAuxHead(trunk.out_dim, self.n_classes)

    def make_batch(self, x, y, gen):
        n = len(x)
        k = (torch.arange(n, device=x.device) % 4)[torch.randperm(n, generator=gen, device=gen.device).to(x.device)]
        return torch.cat([x, rotate(x, k)]), torch.stack([y, k], 1)

    def loss(self, model, inputs, targets):
        """Per-example CE(class) + w·CE(rotation); logits = the class logits."""
        n = len(targets)
        feats = model.features(inputs)
        logits = model.head(feats[:n])
        rot_logits = model.head.rot(feats[n:])
        loss = (F.cross_entropy(logits, targets[:, 0], reduction="none")
                + self.rot_weight * F.cross_entropy(rot_logits, targets[:, 1], reduction="none"))
        return loss, logits

    def correct(self, logits, targets):
        return logits.argmax(-1) == targets[:, 0]

    def export(self, model):
        """The classifier alone: same trunk, a plain linear head with the class weights."""
        head = nn.Linear(model.head.in_features, self.n_classes)
        head.load_state_dict({"weight": model.head.weight, "bias": model.head.bias})
        return Model(model.trunk, head)
