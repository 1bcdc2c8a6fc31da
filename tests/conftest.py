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


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory):
    """The whole workflow (`all`) on tests/configs/mini.yaml, run once per test session;
    the slow end-to-end tests read its outputs (and copy it before changing anything)."""
    import subprocess

    work = tmp_path_factory.mktemp("mini")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "workflow" / "Snakefile"), "-d", str(work), "all",
           "-c2", "--configfile", str(ROOT / "tests" / "configs" / "mini.yaml")]
    p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return work
