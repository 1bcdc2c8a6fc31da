"""The task interface (`Task`) and the downstream `Classification` task. Tasks are plug-ins: each turns a batch of images into (inputs, targets) on the
device, owns its head and its loss, and keeps any state (jigsaw's permutation
table) in the checkpoint.

Interface of a task:
    name, n_classes
    make_batch(x, y, gen) -> (inputs, targets)    inputs are images in [0,1]
    build_head(trunk) -> nn.Module
    loss(model, inputs, targets) -> (per-example loss, logits)
    correct(logits, targets) -> bool per example
    state() -> dict of tensors/ints stored in the checkpoint
    transfer_prefixes: the trunk keys this task trains (Selfie leaves layer4 alone)
    set_epoch(epoch, epochs, device)   called before each epoch (DynACL's schedule)
    adversarial(model) -> context in which forward passes see adversarial inputs
                          (ACL's dual BN routes them through its adversarial BN)
A task's per-example loss may depend on the whole batch (NT-Xent: each image's loss
is over all the batch's views), as long as its mean is the batch's loss; a task may
also adapt the trunk it is given in build_head (ACL's dual BN).
Classification is one more task, so one training loop serves pretraining and
fine-tuning alike.
"""
from __future__ import annotations

import contextlib

import torch.nn as nn
import torch.nn.functional as F


class Task:
    name = "task"
    n_classes = 0
    transfer_prefixes = ("trunk.",)

    def make_batch(self, x, y, gen):
        raise NotImplementedError

    def build_head(self, trunk) -> nn.Module:
        return nn.Linear(trunk.out_dim, self.n_classes)

    def loss(self, model, inputs, targets):
        logits = model(inputs)
        return F.cross_entropy(logits, targets, reduction="none"), logits

    def correct(self, logits, targets):
        return logits.argmax(-1) == targets

    def state(self) -> dict:
        return {}

    def set_epoch(self, epoch: int, epochs: int, device=None):
        pass

    def adversarial(self, model):
        return contextlib.nullcontext()

    def export(self, model):
        """The model a checkpoint holds; a task may drop parts that only serve training."""
        return model


class Classification(Task):
    """The downstream task: labels are given, inputs are the images themselves."""

    name = "classification"

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    def make_batch(self, x, y, gen):
        return x, y
