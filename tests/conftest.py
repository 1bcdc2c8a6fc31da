"""Shared fixtures: tiny procedural datasets and small models, all on CPU."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(int(os.environ.get("ADVSS_TEST_THREADS", "1")))

TINY_MODEL = {"arch": "resnet-tiny", "width": 8, "stem": "cifar"}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A 300-image procedural dataset file (270 fit / 30 val / 100 test)."""
    from advss.data import prepare

    path = tmp_path_factory.mktemp("data") / "dataset.pt"
    prepare({"name": "procedural", "procedural": {"n_per_class": 30, "n_test_per_class": 10, "seed": 0},
             "val_fraction": 0.1, "split_seed": 0}, path)
    return path


def train_spec(**over):
    spec = {"stage": "finetune", "task": "classification", "model": dict(TINY_MODEL),
            "objective": {"kind": "standard"},
            "threat": {"eps": "8/255", "step": "2/255", "train_steps": 2, "eval_steps": 2},
            "epochs": 2, "batch_size": 64, "seed": 0, "deterministic": True, "augment": True,
            "optim": {"lr": 0.05, "momentum": 0.9, "weight_decay": 3e-4, "schedule": "step", "milestones": [1]}}
    spec.update(over)
    return spec
