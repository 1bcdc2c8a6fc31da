"""Scientific-fidelity fixes: partial fine-tuning freezes exactly what was transferred, and
reported test numbers are computed in fp32 whatever the training precision."""
import json

import numpy as np
import pytest
import torch

from advss.models import Model, classifier, load_checkpoint, save_checkpoint
from advss.train import train
from conftest import TINY_MODEL, train_spec

SELFIE_SMALL = {"layers": 1, "heads": 2, "d_ff": 32}
PRETRAIN = {
    "rotation": {"task": "rotation"},
    "jigsaw": {"task": "jigsaw"},
    "selfie": {"task": "selfie", "pretext": {"selfie": SELFIE_SMALL}},
    "ensemble": {"task": "ensemble", "objective": {"kind": "ensemble", "alpha": 0.0, "mix": "clean+adv"},
                 "pretext": {"ensemble": {"members": ["rotation", "jigsaw", "selfie"],
                                          "pretext": {"selfie": SELFIE_SMALL}}}},
}
TRANSFERRED = {"rotation": ("trunk.",), "jigsaw": ("trunk.",),
               "selfie": ("trunk.stem.", "trunk.layer1.", "trunk.layer2.", "trunk.layer3."),
               "ensemble": ("trunk.stem.", "trunk.layer1.", "trunk.layer2.", "trunk.layer3.")}


@pytest.fixture(scope="module")
def pretrained(tiny_data, tmp_path_factory):
    out = {}
    for kind, over in PRETRAIN.items():
        d = tmp_path_factory.mktemp(kind)
        spec = train_spec(stage="pretrain", epochs=1, select_by="last", eval_ra=False, **over)
        if kind == "ensemble":
            spec["eval_ra"] = True
            spec["threat"] = {**spec["threat"], "train_steps": 1, "eval_steps": 1}
        train(spec, tiny_data, d / "model.pt", d / "m.csv", d / "meta.json", device="cpu", log=lambda m: None)
        out[kind] = d / "model.pt"
    return out


@pytest.mark.parametrize("kind", list(PRETRAIN))
def test_partial_finetune_trains_head_and_untransferred_trunk(kind, pretrained, tiny_data, tmp_path):
    """F1 freezes exactly the checkpoint's transfer prefixes (θp, BN statistics included);
    the trunk keys the pretext never trained (Selfie's and the ensemble's layer4) train
    with the head in train mode (θf)."""
    ck = load_checkpoint(pretrained[kind])
    assert tuple(ck["transfer_prefixes"]) == TRANSFERRED[kind]
    d = tmp_path / "f1"
    train(train_spec(partial=True, epochs=1), tiny_data, d / "model.pt", d / "m.csv", d / "meta.json",
          init=pretrained[kind], device="cpu", log=lambda m: None)
    before, after = ck["state_dict"], load_checkpoint(d / "model.pt")["state_dict"]
    fresh = classifier(TINY_MODEL, 10).state_dict()
    frozen = tuple(json.loads((d / "meta.json").read_text())["transfer"]["frozen_prefixes"])
    assert frozen == TRANSFERRED[kind]
    for k, v in after.items():
        moved = not torch.equal(v, before[k]) if k in before and k.startswith(frozen) else not torch.equal(v, fresh[k])
        if k.startswith(frozen):
            assert not moved, f"{kind}: transferred {k} changed"
        elif k.startswith("head.") or (k.startswith("trunk.layer4.") and ("weight" in k or "running_mean" in k)):
            assert moved, f"{kind}: {k} did not train"


def test_f1_after_selfie_changes_layer4(pretrained, tiny_data, tmp_path):
    """The bug: layer4 stayed at its random init, frozen, with BN in eval mode on running_var = 1."""
    d = tmp_path / "f1"
    train(train_spec(partial=True, epochs=1), tiny_data, d / "model.pt", d / "m.csv", d / "meta.json",
          init=pretrained["selfie"], device="cpu", log=lambda m: None)
    after = load_checkpoint(d / "model.pt")["state_dict"]
    torch.manual_seed(0)
    fresh = classifier(TINY_MODEL, 10).state_dict()
    assert not torch.equal(after["trunk.layer4.0.conv1.weight"], fresh["trunk.layer4.0.conv1.weight"])
    assert not torch.equal(after["trunk.layer4.0.bn1.running_var"], torch.ones_like(fresh["trunk.layer4.0.bn1.running_var"]))


@pytest.fixture()
def autocast_spy(monkeypatch):
    """Records whether autocast was on at every model forward."""
    seen = []
    orig = Model.forward

    def forward(self, x):
        seen.append(torch.is_autocast_enabled("cpu"))
        return orig(self, x)

    monkeypatch.setattr(Model, "forward", forward)
    return seen


@pytest.fixture()
def tf32_spy(monkeypatch):
    """Records whether TF32 was allowed (cuDNN convs or CUDA matmuls) at every model
    forward: the flags are plain settings, so a CPU run sees what a GPU run would use."""
    seen = []
    orig = Model.forward

    def forward(self, x):
        seen.append(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)
        return orig(self, x)

    monkeypatch.setattr(Model, "forward", forward)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # torch's default for convs
    return seen


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    save_checkpoint(path, classifier(TINY_MODEL, 10), TINY_MODEL)
    return path


def test_test_evaluation_is_fp32_when_training_is_bf16(tiny_data, tmp_path, autocast_spy):
    from advss.evaluate import run

    spec = {"model": TINY_MODEL, "threat": {"eps": "8/255", "step": "2/255", "eval_steps": 2, "train_steps": 2},
            "seed": 0, "fast": {"precision": "bf16"}, "n_examples": 20, "batch_size": 8}
    res = run(spec, tiny_data, _checkpoint(tmp_path), tmp_path / "t.json", tmp_path / "t.npz", "cpu")
    assert autocast_spy and not any(autocast_spy)
    assert res["eval_precision"] == "fp32"
    assert json.loads((tmp_path / "t.json").read_text())["eval_precision"] == "fp32"


def test_transfer_and_ensemble_evaluation_are_fp32(tiny_data, tmp_path, autocast_spy):
    from advss import ensemble_eval, transfer

    ck = _checkpoint(tmp_path)
    spec = {"model": TINY_MODEL, "threat": {"eps": "8/255", "step": "2/255", "eval_steps": 2, "train_steps": 2},
            "seed": 0, "fast": {"precision": "bf16"}, "n_examples": 16, "batch_size": 8,
            "source": "a", "targets": ["a", "b"], "members": ["a", "b"]}
    transfer.run(spec, tiny_data, ck, [ck, ck], tmp_path / "t.npz", tmp_path / "t.json", "cpu")
    ensemble_eval.run(spec, tiny_data, [ck, ck], tmp_path / "e.json", tmp_path / "e.npz", "cpu")
    assert autocast_spy and not any(autocast_spy)
    for f in ("t.json", "e.json"):
        assert json.loads((tmp_path / f).read_text())["eval_precision"] == "fp32"


def test_smoothing_noise_is_not_clamped():
    """Cohen et al. add N(0, σ²) and do not clip: a black image gets negative inputs."""
    from advss.objectives import smoothing

    seen = {}

    class Task:
        def loss(self, model, x, t):
            seen["x"] = x
            return x.flatten(1).mean(1), x.flatten(1)

    smoothing(None, Task(), torch.zeros(64, 3, 4, 4), None, torch.Generator().manual_seed(0), {"sigma": 0.25}, None)
    x = seen["x"]
    assert x.min() < -0.5 and float(x.std()) == pytest.approx(0.25, rel=0.05)
    assert np.isfinite(x.numpy()).all()


def test_every_test_set_evaluation_turns_tf32_off(tiny_data, tmp_path, tf32_spy):
    """TF32 convs (cuDNN's default) would make 'eval_precision: fp32' untrue on a GPU."""
    from advss import ensemble_eval, evaluate, robustness, transfer

    ck = _checkpoint(tmp_path)
    spec = {"model": TINY_MODEL, "threat": {"eps": "8/255", "step": "2/255", "eval_steps": 2, "train_steps": 2},
            "seed": 0, "subset_seed": 0, "n_examples": 16, "batch_size": 8, "source": "a", "targets": ["a"],
            "members": ["a", "b"], "corruptions": {"root": None, "severities": [1], "corruptions": ["contrast"]}}
    evaluate.run(spec, tiny_data, ck, tmp_path / "v.json", tmp_path / "v.npz", "cpu")
    transfer.run(spec, tiny_data, ck, [ck], tmp_path / "t.npz", tmp_path / "t.json", "cpu")
    ensemble_eval.run(spec, tiny_data, [ck, ck], tmp_path / "e.json", tmp_path / "e.npz", "cpu")
    robustness.run("corruptions", spec, tiny_data, [ck], tmp_path / "c.json", tmp_path / "c.npz", "cpu")
    assert tf32_spy and not any(tf32_spy)
    assert torch.backends.cudnn.allow_tf32  # and the caller's setting is back afterwards


def test_head_only_partial_finetuning_freezes_the_whole_trunk(pretrained, tiny_data, tmp_path):
    """finetune.partial_trains: head. After Selfie, whose checkpoint transfers stem..layer3 only,
    F1 trains the head alone: nothing in the trunk requires grad or moves, its BN included."""
    from advss.io import AdvssError
    from advss.train import setup

    spec = train_spec(partial=True, partial_trains="head", epochs=1)
    job = setup(spec, tiny_data, init=pretrained["selfie"], device="cpu", log=lambda m: None)
    assert job.frozen == ("trunk.",) and job.transfer["frozen_prefixes"] == ["trunk."]
    trainable = [k for k, p in job.model.named_parameters() if p.requires_grad]
    assert trainable and all(k.startswith("head.") for k in trainable)
    d = tmp_path / "f1"
    train(spec, tiny_data, d / "model.pt", d / "m.csv", d / "meta.json", init=pretrained["selfie"], device="cpu",
          log=lambda m: None)
    after = load_checkpoint(d / "model.pt")["state_dict"]
    start = job.model.state_dict()  # the transferred trunk plus layer4 at its (seeded) init
    assert all(torch.equal(v, start[k]) for k, v in after.items() if k.startswith("trunk."))
    assert not torch.equal(after["head.weight"], start["head.weight"])
    with pytest.raises(AdvssError, match="partial_trains"):
        setup(train_spec(partial=True, partial_trains="layer4"), tiny_data, init=pretrained["selfie"], device="cpu",
              log=lambda m: None)


@pytest.mark.parametrize("trains", [None, "head"])
def test_partial_trains_reaches_the_partial_specs_only(tmp_path, trains):
    """The key is in the F1/F2 specs when set to head, and absent by default (the default
    reruns nothing)."""
    import shlex

    import yaml
    from conftest import ROOT
    from test_workflow import snakemake

    cfg = yaml.safe_load((ROOT / "tests/configs/mini.yaml").read_text())
    if trains:
        cfg["finetune"]["partial_trains"] = trains
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    p = snakemake("-n", "-p", f"results/{cfg['run']}/tables/table3.csv", "--configfile", tmp_path / "cfg.yaml",
                  cwd=tmp_path)
    specs = {}
    for line in p.stdout.splitlines():
        if line.startswith("Shell command: python -m advss finetune"):
            args = shlex.split(line.removeprefix("Shell command: ").split(" > ")[0])
            specs[args[args.index("--out-model") + 1]] = json.loads(args[args.index("--spec") + 1])
    partial = {k: v.get("partial_trains") for k, v in specs.items() if "/partial-" in k}
    assert partial and set(partial.values()) == {trains}
    assert all("partial_trains" not in v for k, v in specs.items() if "/partial-" not in k)
