"""Jobs that die: SIGKILL and SIGTERM at random points, duplicate copies, GPU claims."""
import csv
import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from advss import io
from advss.io import AdvssError, exclusive_lock
from advss.train import train
from conftest import ROOT, train_spec


def _cmd(tmp, data, spec, name):
    d = tmp / name
    return [sys.executable, "-m", "advss", "finetune", "--spec", json.dumps(spec), "--data", str(data),
            "--device", "cpu", "--threads", "1", "--out-model", str(d / "model.pt"),
            "--out-metrics", str(d / "metrics.csv"), "--out-meta", str(d / "meta.json"),
            "--resume-dir", str(d / ".resume")], d


def _metrics(d):
    with open(d / "metrics.csv") as f:
        return [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]


def _spec():
    return train_spec(objective={"kind": "adversarial", "mix": "adv"}, epochs=3, batch_size=16)


@pytest.fixture(scope="module")
def reference(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    cmd, d = _cmd(tmp, tiny_data, _spec(), "ref")
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, timeout=600)
    return d


def _start(cmd):
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(path, proc, timeout=300):
    t0 = time.time()
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout
        time.sleep(0.05)


def test_sigkill_at_a_random_point_then_rerun_gives_identical_metrics(tiny_data, tmp_path, reference):
    cmd, d = _cmd(tmp_path, tiny_data, _spec(), "killed")
    proc = _start(cmd)
    _wait_for(d / ".resume" / "last.pt", proc)           # at least one epoch finished
    time.sleep(random.Random().uniform(0.0, 1.5))        # then anywhere in the next epoch(s)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if proc.returncode == 0:
        pytest.skip("the job finished before the kill landed")
    # Outputs come after the last epoch, the model first: a kill that finds model.pt landed in
    # `finish` or at exit (a loaded machine makes that window wide), never mid-training.
    if not (d / "model.pt").exists():
        assert not (d / "metrics.csv").exists() and not (d / "meta.json").exists()
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming from" in out.stdout
    assert _metrics(d) == _metrics(reference)


def test_sigterm_mid_epoch_leaves_a_resumable_checkpoint(tiny_data, tmp_path, reference):
    cmd, d = _cmd(tmp_path, tiny_data, _spec(), "term")
    proc = _start(cmd)
    _wait_for(d / ".resume" / "last.pt", proc)
    first = (d / ".resume" / "last.pt").stat().st_mtime_ns
    time.sleep(0.3)                                      # inside epoch 2
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the job finished before SIGTERM landed")
    assert proc.returncode == 143, out
    assert "received SIGTERM" in out
    state = torch.load(d / ".resume" / "last.pt", weights_only=True)
    assert state["state"]["epoch"] >= 1
    assert (d / ".resume" / "last.pt").stat().st_mtime_ns >= first
    rerun = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert _metrics(d) == _metrics(reference)


def test_second_copy_of_a_job_refuses_to_run(tiny_data, tmp_path):
    d = tmp_path / "dup"
    with exclusive_lock(d / ".resume"):
        with pytest.raises(AdvssError, match="another process"):
            train(train_spec(epochs=1), tiny_data, d / "model.pt", d / "m.csv", d / "meta.json",
                  resume_dir=d / ".resume", device="cpu", log=lambda m: None)


def test_truncated_resume_state_is_refused_not_retrained_over(tiny_data, tmp_path):
    d = tmp_path / "trunc"
    (d / ".resume").mkdir(parents=True)
    (d / ".resume" / "last.pt").write_bytes(b"PK\x03\x04 truncated")
    cmd, _ = _cmd(tmp_path, tiny_data, train_spec(epochs=1), "trunc")
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 2
    assert "last.pt" in out.stderr and "corrupted or truncated" in out.stderr
    assert not (d / "model.pt").exists()


def test_concurrent_jobs_claim_distinct_gpus(tmp_path, monkeypatch):
    """Local `--resources gpu=K` only counts jobs; each job must pick its own GPU."""
    monkeypatch.setenv("ADVSS_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    held = []
    monkeypatch.setattr(io, "_GPU_LOCK", None)
    first = io._claim_gpu()
    held.append(io._GPU_LOCK)
    second = io._claim_gpu()
    held.append(io._GPU_LOCK)
    assert {first, second} == {0, 1}
    with pytest.raises(AdvssError, match="of each of the 2 GPUs"):
        io._claim_gpu()
    for f in held:
        f.close()
    assert io._claim_gpu() in (0, 1)  # released locks are free again
    io._GPU_LOCK.close()


def test_k_jobs_per_gpu_share_each_gpu_evenly(tmp_path, monkeypatch):
    """ADVSS_JOBS_PER_GPU=2 on 2 GPUs: four jobs land 0, 1, 0, 1 and a fifth is refused."""
    monkeypatch.setenv("ADVSS_GPU_LOCK_DIR", str(tmp_path))
    monkeypatch.setenv("ADVSS_JOBS_PER_GPU", "2")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setattr(io, "_GPU_LOCK", None)
    held, got = [], []
    for _ in range(4):
        got.append(io._claim_gpu(2))
        held.append(io._GPU_LOCK)
    assert got == [0, 1, 0, 1]
    with pytest.raises(AdvssError, match="--resources gpu=4"):
        io._claim_gpu(2)
    for f in held:
        f.close()
    monkeypatch.setenv("ADVSS_JOBS_PER_GPU", "0")
    with pytest.raises(AdvssError, match="positive integer"):
        io._claim_gpu(2)
