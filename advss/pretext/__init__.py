"""The task registry: every task the training loop can train, by name.

A task (interface: `advss.pretext.base.Task`) turns a batch of images into (inputs,
targets), owns its head and its loss, and keeps any state in the checkpoint. A new
pretext task is one module in this package plus one line in TASKS.
"""
from __future__ import annotations

from advss.models import Model, build_trunk
from advss.pretext.base import Classification, Task
from advss.pretext.contrastive import Contrastive
from advss.pretext.ensemble import Ensemble
from advss.pretext.jigsaw import Jigsaw
from advss.pretext.rotation import Rotation
from advss.pretext.rotaux import RotAux
from advss.pretext.selfie import Selfie

__all__ = ["TASKS", "Task", "Classification", "build_task", "build"]

# name -> task class; each is built as cls(**cfg[name], state=state), or with the
# number of classes first where it classifies (`needs_classes`).
TASKS = {
    "rotation": Rotation,
    "jigsaw": Jigsaw,
    "selfie": Selfie,
    "ensemble": Ensemble,  # Table 5's three-branch task
    "rotaux": RotAux,  # the one-shot AT + rotation baseline (Hendrycks et al. 2019)
    "contrastive": Contrastive,  # SimCLR / ACL / DynACL (the successors; advss/pretext/contrastive.py)
    # --- more tasks register here, one line each: "name": Class, ---
}


def build_task(name: str, cfg: dict, num_classes: int | None = None, state: dict | None = None) -> Task:
    if name == "classification":
        return Classification(num_classes)
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TASKS)} or 'classification'")
    cls = TASKS[name]
    if getattr(cls, "needs_classes", False):
        return cls(num_classes, **cfg.get(name, {}), state=state)
    return cls(**cfg.get(name, {}), state=state)


def build(spec: dict, num_classes: int, task_state=None):
    """The (Model, Task) pair a spec describes: the task first, then the trunk, then the
    task's head on it (this order fixes the random draws of the initialisation)."""
    task = build_task(spec["task"], spec.get("pretext", {}), num_classes, state=task_state)
    trunk = build_trunk(spec["model"])
    return Model(trunk, task.build_head(trunk)), task
