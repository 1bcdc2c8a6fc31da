"""The training loop: partial fine-tuning, resume, checkpoints, bad input."""
import csv
import os
import signal

import pytest
import torch

from advss import objectives
from advss.io import AdvssError, CheckpointError
from advss.models import classifier, load_checkpoint, save_checkpoint
from advss.train import METRIC_COLUMNS, train
from conftest import TINY_MODEL, train_spec


def _run(tmp, data, spec, name="run", **kw):
    d = tmp / name
    state = train(spec, data, d / "model.pt", d / "metrics.csv", d / "meta.json", resume_dir=d / ".resume",
                  device="cpu", log=lambda m: None, **kw)
    return d, state


def _metrics(d):
    with open(d / "metrics.csv") as f:
        return [{k: r[k] for k in METRIC_COLUMNS if k != "seconds"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pre")
    spec = train_spec(stage="pretrain", task="rotation", epochs=1, select_by="last", eval_ra=False)
    d, _ = _run(tmp, tiny_data, spec)
    return d / "model.pt"


def test_partial_finetune_leaves_trunk_bit_identical(tiny_data, tmp_path, pretrained):
    spec = train_spec(partial=True, objective={"kind": "adversarial", "mix": "adv"}, epochs=1)
    d, _ = _run(tmp_path, tiny_data, spec, init=pretrained)
    before = load_checkpoint(pretrained)["state_dict"]
    after = load_checkpoint(d / "model.pt")["state_dict"]
    trunk = [k for k in before if k.startswith("trunk.")]
    assert trunk and all(torch.equal(before[k], after[k]) for k in trunk)  # BN running stats included


def test_full_finetune_starts_from_pretrained_trunk(tiny_data, tmp_path, pretrained):
    import json

    d, _ = _run(tmp_path, tiny_data, train_spec(epochs=1), init=pretrained)
    meta = json.loads((d / "meta.json").read_text())
    assert meta["transfer"]["loaded"] > 0 and meta["transfer"]["kept_at_init"] == []
    before = load_checkpoint(pretrained)["state_dict"]["trunk.stem.0.weight"]
    after = load_checkpoint(d / "model.pt")["state_dict"]["trunk.stem.0.weight"]
    fresh = classifier(TINY_MODEL, 10).state_dict()["trunk.stem.0.weight"]
    assert (after - before).norm() < (after - fresh).norm()  # moved from the pretrained weights


def test_resume_after_sigterm_mid_epoch_matches_uninterrupted(tiny_data, tmp_path, monkeypatch):
    spec = train_spec(objective={"kind": "adversarial", "mix": "adv"}, epochs=2, batch_size=32)
    ref, _ = _run(tmp_path, tiny_data, spec, name="ref")

    calls = {"n": 0}
    real = objectives.OBJECTIVES["adversarial"]

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 12:  # epoch 2, batch 3 of 9: SLURM's warning arrives
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    monkeypatch.setitem(objectives.OBJECTIVES, "adversarial", interrupted)
    with pytest.raises(SystemExit) as e:
        _run(tmp_path, tiny_data, spec, name="cut")
    assert e.value.code == 143
    resume = tmp_path / "cut" / ".resume" / "last.pt"
    assert resume.exists() and not (tmp_path / "cut" / "model.pt").exists()
    monkeypatch.setitem(objectives.OBJECTIVES, "adversarial", real)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    cut, _ = _run(tmp_path, tiny_data, spec, name="cut")
    assert _metrics(cut) == _metrics(ref)
    a, b = load_checkpoint(ref / "model.pt")["state_dict"], load_checkpoint(cut / "model.pt")["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not resume.exists()  # cleaned up after success


def test_resume_refuses_state_of_another_spec(tiny_data, tmp_path):
    d = tmp_path / "run"
    (d / ".resume").mkdir(parents=True)
    torch.save({"spec_hash": "0123456789abcdef", "model": {}, "optim": {}, "state": {}}, d / ".resume" / "last.pt")
    with pytest.raises(AdvssError, match="different job spec"):
        _run(tmp_path, tiny_data, train_spec(epochs=1))


def test_diverging_loss_stops_with_clear_error(tiny_data, tmp_path):
    spec = train_spec(optim={"lr": 1e6, "momentum": 0.9, "weight_decay": 0, "schedule": "constant"}, epochs=2)
    with pytest.raises(AdvssError, match="diverged"):
        _run(tmp_path, tiny_data, spec)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_checkpoint_of_other_architecture_is_refused(tmp_path, tiny_data):
    path = tmp_path / "r18.pt"
    save_checkpoint(path, classifier({"arch": "resnet18", "width": 8}, 10), {"arch": "resnet18", "width": 8})
    with pytest.raises(CheckpointError, match="r18.pt"):
        load_checkpoint(path, TINY_MODEL)
    with pytest.raises(CheckpointError, match="r18.pt"):
        _run(tmp_path, tiny_data, train_spec(epochs=1), init=path)


def test_truncated_or_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(path, classifier(TINY_MODEL, 10), TINY_MODEL)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(CheckpointError, match="not an advss checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
