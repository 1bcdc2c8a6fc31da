"""Provenance: meta.json records the real commit of the checkout (and '-dirty' only when
tracked files changed), the job's effective-config hash, versions, device, wall time and
epochs run; training logs one plain line per epoch (no terminal bar in a log file)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest

from advss import io as I
from conftest import ROOT, train_spec

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def git(cwd, *args):
    return subprocess.run(["git", "-C", str(cwd), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_commit_of_a_checkout_clean_dirty_and_elsewhere(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "a.txt").write_text("one\n")
    git(repo, "add", "a.txt")
    git(repo, "commit", "-q", "-m", "first")
    sha = git(repo, "rev-parse", "HEAD")
    assert I.git_commit(repo) == sha
    (repo / "untracked.txt").write_text("not part of the code\n")
    assert I.git_commit(repo) == sha  # untracked files (results, logs) do not make it dirty
    (repo / "a.txt").write_text("two\n")
    assert I.git_commit(repo) == sha + "-dirty"
    (repo / "sub").mkdir()
    assert I.git_commit(repo / "sub") is None  # an installed copy inside another repository
    assert I.git_commit(tmp_path / "nowhere") is None


def test_git_commit_is_the_real_commit_of_this_checkout():
    if not (ROOT / ".git").exists():
        pytest.skip("not running from a git checkout")
    head = git(ROOT, "rev-parse", "HEAD")
    dirty = bool(git(ROOT, "status", "--porcelain", "--untracked-files=no"))
    assert I.git_commit() == head + ("-dirty" if dirty else "")


def test_training_records_provenance_and_logs_one_line_per_epoch(tiny_data, tmp_path):
    from advss.train import train

    spec = train_spec(epochs=2)
    lines = []
    train(spec, tiny_data, tmp_path / "m.pt", tmp_path / "metrics.csv", tmp_path / "meta.json",
          device="cpu", log=lines.append)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["git_commit"] == I.git_commit() and meta["git_commit"]
    assert meta["spec"] == spec and meta["spec_hash"] == I.spec_hash(spec)
    assert meta["epochs_run"] == 2 and meta["wall_seconds"] > 0
    assert meta["device"] == "cpu" and meta["device_name"]
    for lib in ("torch", "numpy", "torchvision", "python", "advss"):
        assert meta[lib], lib
    epoch_lines = [m for m in lines if re.search(r"epoch\s+\d+/2", m)]
    assert len(epoch_lines) == 2
    for m in epoch_lines:
        assert re.match(r"\d\d:\d\d:\d\d  epoch", m) and re.search(r"ETA \d+:\d\d:\d\d$", m), m
        assert "val TA" in m and "val RA" in m and "lr" in m and "loss" in m and "\r" not in m
    assert epoch_lines[-1].endswith("ETA 0:00:00")
